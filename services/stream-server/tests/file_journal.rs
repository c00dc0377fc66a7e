//! `file-durable`'s shared journal: appends acknowledged through it survive
//! a crash that loses everything the logs had not synced yet.
//!
//! A crash is simulated by dropping the engine without a flush and cutting
//! each log back to the length it had when last made durable (creation, or
//! a flush, which checkpoints); only the journal then holds the appends.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use stream_server::protocol::offset::Offset;
use stream_server::storage::MessageBatch;
use stream_server::storage::file::{FileEngine, MIN_JOURNAL_BYTES, SyncPolicy as Sync};
use stream_server::storage::{Engine, ExpiryRecord, Mutation, StreamLog, StreamMeta};
use tempfile::TempDir;

const DURABLE: Sync = Sync::Journal {
    capacity: MIN_JOURNAL_BYTES,
};

/// A scratch data directory, removed on drop.
struct DataDir(TempDir);

impl DataDir {
    fn new(test: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ds-journal-{test}-"))
            .tempdir()
            .expect("scratch dir");
        DataDir(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    /// The log of the only stream stored.
    fn log_file(&self) -> PathBuf {
        let mut dirs: Vec<PathBuf> = fs::read_dir(self.path().join("streams"))
            .expect("streams dir")
            .map(|e| e.expect("entry").path())
            .collect();
        assert_eq!(dirs.len(), 1, "one stream expected: {dirs:?}");
        dirs.pop().expect("one").join("log")
    }

    fn log_len(&self) -> u64 {
        fs::metadata(self.log_file()).expect("log").len()
    }

    /// Loses what the log holds past `len`, as a crash loses unsynced
    /// page-cache writes.
    fn cut_log(&self, len: u64) {
        let file = OpenOptions::new()
            .write(true)
            .open(self.log_file())
            .expect("open log");
        file.set_len(len).expect("cut log");
    }
}

fn message(i: usize, size: usize) -> String {
    format!("{i:06}:{}", "x".repeat(size.saturating_sub(7)))
}

fn messages(text: &str) -> MessageBatch {
    MessageBatch::of([text])
}

fn meta() -> StreamMeta {
    StreamMeta {
        content_type: "text/plain".into(),
        expiry: ExpiryRecord::Never,
        fork: None,
    }
}

/// Opens an engine; retries briefly while the previous instance's I/O
/// thread lets go of the directory.
fn open(dir: &Path, sync: Sync) -> FileEngine {
    let mut last = None;
    for _ in 0..50 {
        match FileEngine::open(dir, sync) {
            Ok(engine) => return engine,
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("cannot open the engine: {last:?}");
}

async fn create(engine: &FileEngine) -> Arc<dyn StreamLog> {
    let (log, commit) = engine
        .create("s", &meta(), Offset::ZERO, Vec::new(), false)
        .expect("create");
    commit.wait().await.expect("create durable");
    log
}

async fn append(log: &dyn StreamLog, from: usize, count: usize, size: usize) {
    for i in from..from + count {
        let mutation = Mutation {
            data: Some(messages(&message(i, size))),
            ..Mutation::default()
        };
        log.apply(mutation)
            .expect("apply")
            .wait()
            .await
            .expect("durable");
    }
}

/// The stream's whole content after reopening `dir` with `sync`.
fn reopened(dir: &Path, sync: Sync) -> String {
    let engine = open(dir, sync);
    let mut recovered = engine.recover().expect("recover");
    assert_eq!(recovered.len(), 1);
    let log = recovered.pop().expect("one stream").log;
    let slice = log
        .read(Offset::ZERO, log.tail().bytes, usize::MAX)
        .expect("read");
    String::from_utf8(slice.data.concat()).expect("utf-8")
}

/// A file-durable stream with `count` acknowledged appends, then a crash
/// that loses everything its log was given after creation.
async fn crash_after_appends(dir: &DataDir, count: usize, size: usize) {
    {
        let engine = open(dir.path(), DURABLE);
        let log = create(&engine).await;
        append(&*log, 0, count, size).await;
    }
    dir.cut_log(0);
}

fn expected(count: usize, size: usize) -> String {
    (0..count).map(|i| message(i, size)).collect()
}

#[tokio::test]
async fn acknowledged_appends_come_back_from_the_journal() {
    let dir = DataDir::new("restore");
    crash_after_appends(&dir, 40, 100).await;
    assert_eq!(reopened(dir.path(), DURABLE), expected(40, 100));
    // The replayed journal was retired: cut again, nothing comes back.
    dir.cut_log(0);
    assert_eq!(reopened(dir.path(), DURABLE), "");
}

#[tokio::test]
async fn a_torn_journal_entry_ends_the_replay() {
    let dir = DataDir::new("torn");
    crash_after_appends(&dir, 10, 100).await;
    // The stream's entries are in one shard of the journal. Each append
    // was a group of its own, and a group fills whole 4 KiB blocks: the
    // last append's entry starts the last block written.
    let (journal_path, journal) = fs::read_dir(dir.path().join("journal"))
        .expect("journal dir")
        .map(|e| e.expect("entry").path())
        .map(|path| (path.clone(), fs::read(&path).expect("shard")))
        .find(|(_, bytes)| bytes.iter().any(|&b| b != 0))
        .expect("a shard with entries");
    let last_block = journal.iter().rposition(|&b| b != 0).expect("entries") / 4096 * 4096;
    let in_last_entry = last_block + 60;
    let file = OpenOptions::new()
        .write(true)
        .open(&journal_path)
        .expect("open journal");
    file.write_all_at(&[journal[in_last_entry] ^ 0xff], in_last_entry as u64)
        .expect("tear");
    assert_eq!(reopened(dir.path(), DURABLE), expected(9, 100));

    // The stream carries on after the damage.
    {
        let engine = open(dir.path(), DURABLE);
        let log = engine
            .recover()
            .expect("recover")
            .pop()
            .expect("stream")
            .log;
        append(&*log, 9, 1, 100).await;
    }
    assert_eq!(reopened(dir.path(), DURABLE), expected(10, 100));
}

#[tokio::test]
async fn a_flush_leaves_nothing_to_replay() {
    let dir = DataDir::new("flush");
    {
        let engine = open(dir.path(), DURABLE);
        let log = create(&engine).await;
        append(&*log, 0, 10, 100).await;
        engine.flush().expect("flush");
    }
    // Damage found after a clean shutdown is not undone from the journal:
    // the log holds only the first append, and only it is served.
    dir.cut_log(dir.log_len() - 9 * (message(0, 100).len() as u64 + 34));
    assert_eq!(reopened(dir.path(), DURABLE), expected(1, 100));
}

#[tokio::test]
async fn appends_after_checkpoints_replay_and_older_ones_are_durable() {
    let dir = DataDir::new("wrap");
    // Six times the whole journal through one stream's shard: it
    // checkpoints and wraps several times.
    let size = 16 * 1024;
    let before_flush = (6 * MIN_JOURNAL_BYTES) as usize / size;
    // Few enough to fit the smallest shard (a machine's eighth of the
    // smallest journal) without a checkpoint.
    let total = before_flush + 4;
    let synced_len = {
        let engine = open(dir.path(), DURABLE);
        let log = create(&engine).await;
        append(&*log, 0, before_flush, size).await;
        engine.flush().expect("flush checkpoints");
        let synced_len = dir.log_len();
        append(&*log, before_flush, total - before_flush, size).await;
        synced_len
    };
    dir.cut_log(synced_len);
    assert_eq!(reopened(dir.path(), DURABLE), expected(total, size));
}

#[tokio::test]
async fn file_fast_replays_a_journal_left_by_file_durable() {
    let dir = DataDir::new("fast");
    crash_after_appends(&dir, 20, 50).await;
    let fast = Sync::Interval(Duration::from_millis(50));
    assert_eq!(reopened(dir.path(), fast), expected(20, 50));
    assert!(
        !dir.path().join("journal").exists(),
        "file-fast keeps no journal"
    );
}

#[test]
fn a_journal_below_the_minimum_is_refused() {
    let dir = DataDir::new("small");
    let err = FileEngine::open(
        dir.path(),
        Sync::Journal {
            capacity: MIN_JOURNAL_BYTES - 1,
        },
    )
    .expect_err("too small");
    assert!(err.to_string().contains("at least"), "{err}");
}
