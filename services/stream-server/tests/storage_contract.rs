//! The storage engines' contract, checked the same way for every mode:
//! appends are whole and ordered, offsets only grow, reads end on message
//! boundaries within their budget and limit, and (for the persistent modes)
//! everything a stream is made of comes back after the engine is reopened.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use stream_server::protocol::offset::Offset;
use stream_server::protocol::producer::ProducerState;
use stream_server::storage::MessageBatch;
use stream_server::storage::{
    self, Close, ClosingProducer, Engine, ExpiryRecord, Mutation, ProducerEntry, StorageMode,
    StreamLog, StreamMeta,
};
use tempfile::TempDir;

const MODES: [StorageMode; 4] = [
    StorageMode::Memory,
    StorageMode::FileFast,
    StorageMode::FileDurable,
    StorageMode::Acid,
];

/// A scratch data directory, removed on drop.
struct DataDir(TempDir);

impl DataDir {
    fn new(mode: StorageMode, test: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ds-contract-{test}-{mode}-"))
            .tempdir()
            .expect("scratch dir");
        DataDir(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

/// Fast file-fast syncs and the smallest journal, so tests wrap it.
fn tuning() -> storage::Tuning {
    storage::Tuning {
        sync_interval: Duration::from_millis(50),
        journal_bytes: storage::file::MIN_JOURNAL_BYTES,
        // Settle every few appends, so reads and reopens meet streams
        // partly in each of the acid engine's two tables.
        acid_settle_rows: 3,
        ..storage::Tuning::default()
    }
}

/// Opens an engine; retries briefly because the previous instance's
/// background thread may still be releasing the database file.
fn open(mode: StorageMode, dir: &Path) -> Arc<dyn Engine> {
    open_with(mode, dir, &tuning())
}

fn open_with(mode: StorageMode, dir: &Path, tuning: &storage::Tuning) -> Arc<dyn Engine> {
    let mut last = None;
    for _ in 0..50 {
        match storage::open(mode, dir, tuning) {
            Ok(engine) => return engine,
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("cannot open {mode} engine: {last:?}");
}

/// Messages whose stored form is the given strings.
fn messages(parts: &[&str]) -> MessageBatch {
    MessageBatch::of(parts)
}

fn meta() -> StreamMeta {
    StreamMeta {
        content_type: "text/plain".into(),
        expiry: ExpiryRecord::TtlSecs(60),
        fork: None,
    }
}

fn text(log: &dyn StreamLog, from: Offset, limit: u64, budget: usize) -> (String, Offset) {
    let slice = log.read(from, limit, budget).expect("read");
    // Every message read has its end reported, in order, the last at
    // `next`; split there, the data is the same bytes.
    assert_eq!(
        slice.ends.len() as u64,
        slice.next.messages - from.messages,
        "{slice:?}"
    );
    assert!(slice.ends.windows(2).all(|w| w[0] < w[1]), "{slice:?}");
    assert_eq!(
        slice.ends.last().copied().unwrap_or(from.bytes),
        slice.next.bytes
    );
    let split: Vec<Vec<u8>> = slice.messages().iter().map(|m| m.concat()).collect();
    assert_eq!(split.len(), slice.ends.len());
    assert_eq!(split.concat(), slice.data.concat());
    let mut start = from.bytes;
    for (message, &end) in split.iter().zip(&slice.ends) {
        assert_eq!(message.len() as u64, end - start);
        start = end;
    }
    let bytes: Vec<u8> = slice.data.concat();
    (String::from_utf8(bytes).expect("utf-8"), slice.next)
}

/// A new stream holding one message per body: its log, its whole content
/// and the offset before and after each message.
async fn stream_of(
    engine: &dyn Engine,
    bodies: impl Iterator<Item = String>,
) -> (Arc<dyn StreamLog>, String, Vec<Offset>) {
    let (log, commit) = engine
        .create("s", &meta(), Offset::ZERO, Vec::new(), false)
        .expect("create");
    wait(commit).await;
    let mut expected = String::new();
    let mut boundaries = vec![Offset::ZERO];
    for body in bodies {
        expected.push_str(&body);
        let mutation = Mutation {
            data: Some(messages(&[&body])),
            ..Mutation::default()
        };
        wait(log.apply(mutation).expect("apply")).await;
        boundaries.push(log.tail());
    }
    (log, expected, boundaries)
}

async fn wait(commit: storage::Commit) {
    commit.wait().await.expect("commit");
}

#[tokio::test]
async fn appends_are_ordered_and_reads_end_on_boundaries() {
    for mode in MODES {
        let dir = DataDir::new(mode, "reads");
        let engine = open(mode, dir.path());
        let (log, commit) = engine
            .create(
                "s",
                &meta(),
                Offset::ZERO,
                vec![messages(&["ab", "cde"])],
                false,
            )
            .expect("create");
        wait(commit).await;
        assert_eq!(log.tail(), Offset::new(2, 5), "{mode}");
        let mutation = Mutation {
            data: Some(messages(&["fghi"])),
            ..Mutation::default()
        };
        wait(log.apply(mutation).expect("apply")).await;
        let tail = log.tail();
        assert_eq!(tail, Offset::new(3, 9), "{mode}");

        assert_eq!(
            text(&*log, Offset::ZERO, tail.bytes, 100),
            ("abcdefghi".into(), tail),
            "{mode}"
        );
        // A budget inside the second message stops after the first.
        assert_eq!(
            text(&*log, Offset::ZERO, tail.bytes, 3),
            ("ab".into(), Offset::new(1, 2)),
            "{mode}"
        );
        // A budget smaller than the first message still returns it whole.
        assert_eq!(
            text(&*log, Offset::new(1, 2), tail.bytes, 1),
            ("cde".into(), Offset::new(2, 5)),
            "{mode}"
        );
        // The limit bounds the read.
        assert_eq!(
            text(&*log, Offset::ZERO, 5, 100),
            ("abcde".into(), Offset::new(2, 5)),
            "{mode}"
        );
        assert_eq!(
            text(&*log, tail, tail.bytes, 100),
            (String::new(), tail),
            "{mode}"
        );

        for (bytes, expected) in [
            (0, Some(Offset::ZERO)),
            (2, Some(Offset::new(1, 2))),
            (5, Some(Offset::new(2, 5))),
            (9, Some(tail)),
            (3, None),
            (10, None),
        ] {
            assert_eq!(
                log.boundary_at(bytes).expect("boundary"),
                expected,
                "{mode} at {bytes}"
            );
        }
    }
}

/// Producer `p`'s request (epoch 2, seq 7) that closes a stream.
fn closing_p() -> ClosingProducer {
    ClosingProducer {
        id: "p".into(),
        epoch: 2,
        seq: 7,
    }
}

#[tokio::test]
async fn everything_a_stream_holds_survives_reopening() {
    for mode in MODES.into_iter().filter(|m| *m != StorageMode::Memory) {
        let dir = DataDir::new(mode, "reopen");
        let (tail, plain_tail) = {
            let engine = open(mode, dir.path());
            let (log, commit) = engine
                .create(
                    "kept",
                    &meta(),
                    Offset::ZERO,
                    vec![messages(&["one"])],
                    false,
                )
                .expect("create");
            wait(commit).await;
            let mutation = Mutation {
                data: Some(messages(&["two", "three"])),
                producer: Some(ProducerEntry {
                    id: "p".into(),
                    state: ProducerState {
                        epoch: 2,
                        last_seq: 7,
                    },
                }),
                stream_seq: Some("seq-9".into()),
                close: Some(Close::By(closing_p())),
            };
            wait(log.apply(mutation).expect("apply")).await;
            let (gone, commit) = engine
                .create("gone", &meta(), Offset::ZERO, vec![], false)
                .expect("create");
            wait(commit).await;
            wait(gone.remove().expect("remove")).await;
            let (soft, commit) = engine
                .create("soft", &meta(), Offset::ZERO, vec![messages(&["x"])], true)
                .expect("create");
            wait(commit).await;
            wait(soft.soft_delete().expect("soft delete")).await;
            engine.flush().expect("flush");
            (log.tail(), soft.tail())
        };

        let engine = open(mode, dir.path());
        let recovered = engine.recover().expect("recover");
        let paths: Vec<&str> = recovered.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(
            paths,
            ["kept", "soft"],
            "{mode}: removed streams stay removed, order is creation order"
        );

        let kept = &recovered[0];
        assert_eq!(kept.meta, meta(), "{mode}");
        assert_eq!(kept.log.tail(), tail, "{mode}");
        assert_eq!(
            text(&*kept.log, Offset::ZERO, tail.bytes, 100).0,
            "onetwothree",
            "{mode}"
        );
        assert!(kept.closed, "{mode}");
        assert_eq!(kept.closed_by, Some(closing_p()), "{mode}");
        assert_eq!(
            kept.producers,
            HashMap::from([(
                "p".into(),
                ProducerState {
                    epoch: 2,
                    last_seq: 7
                }
            )]),
            "{mode}"
        );
        assert_eq!(kept.last_seq.as_deref(), Some("seq-9"), "{mode}");
        assert!(!kept.soft_deleted, "{mode}");

        let soft = &recovered[1];
        assert!(soft.soft_deleted && soft.closed, "{mode}");
        assert_eq!(soft.log.tail(), plain_tail, "{mode}");

        // Appends continue where the stream left off.
        let mutation = Mutation {
            data: Some(messages(&["four"])),
            ..Mutation::default()
        };
        wait(kept.log.apply(mutation).expect("apply")).await;
        assert_eq!(
            kept.log.tail(),
            Offset::new(tail.messages + 1, tail.bytes + 4),
            "{mode}"
        );
    }
}

#[tokio::test]
async fn memory_keeps_nothing() {
    let dir = DataDir::new(StorageMode::Memory, "memory");
    let engine = open(StorageMode::Memory, dir.path());
    let (_log, commit) = engine
        .create("s", &meta(), Offset::ZERO, vec![messages(&["a"])], false)
        .expect("create");
    wait(commit).await;
    assert!(
        open(StorageMode::Memory, dir.path())
            .recover()
            .expect("recover")
            .is_empty()
    );
}

#[tokio::test]
async fn a_data_dir_of_another_mode_is_refused() {
    let dir = DataDir::new(StorageMode::Acid, "mismatch");
    {
        let engine = open(StorageMode::FileDurable, dir.path());
        let (_log, commit) = engine
            .create("s", &meta(), Offset::ZERO, vec![], false)
            .expect("create");
        wait(commit).await;
    }
    let err = storage::open(StorageMode::Acid, dir.path(), &tuning())
        .expect_err("acid must refuse a file-mode directory");
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );

    let dir = DataDir::new(StorageMode::FileFast, "mismatch");
    {
        let engine = open(StorageMode::Acid, dir.path());
        let (_log, commit) = engine
            .create("s", &meta(), Offset::ZERO, vec![], false)
            .expect("create");
        wait(commit).await;
    }
    assert!(
        storage::open(StorageMode::FileFast, dir.path(), &tuning()).is_err(),
        "file modes must refuse an acid directory"
    );
}

/// Reads answer the same whether they come from the persistent engines'
/// in-memory cache of recent appends, from storage, or (after reopening)
/// from storage only:
/// every boundary is found and every read from it returns the right bytes.
#[tokio::test]
async fn reads_at_every_boundary_agree_in_memory_and_on_disk() {
    for mode in MODES {
        let dir = DataDir::new(mode, "recent");
        let engine = open(mode, dir.path());
        // 160 appends of 1.5 KiB: more than the file modes keep in memory.
        let bodies = (0..160u32).map(|i| format!("{i:04}").repeat(384));
        let (log, expected, boundaries) = stream_of(&*engine, bodies).await;
        let check = |log: &dyn StreamLog, when: &str| {
            let tail = log.tail();
            for &b in &boundaries {
                assert_eq!(
                    log.boundary_at(b.bytes).expect("boundary"),
                    Some(b),
                    "{mode} {when}: boundary {b:?}"
                );
                let (data, next) = text(log, b, tail.bytes, 1 << 20);
                assert_eq!(
                    data,
                    expected[b.bytes as usize..],
                    "{mode} {when}: from {b:?}"
                );
                assert_eq!(next, tail, "{mode} {when}");
            }
            assert_eq!(
                log.boundary_at(boundaries[1].bytes - 1).expect("boundary"),
                None
            );
        };
        check(&*log, "live");
        if mode != StorageMode::Memory {
            assert!(
                !log.reads_block_from(log.tail().bytes),
                "{mode}: tail reads from memory"
            );
            assert!(log.reads_block_from(0), "{mode}: old data comes from disk");
        }
        drop(log);
        drop(engine);
        if mode == StorageMode::Memory {
            continue;
        }
        let engine = open(mode, dir.path());
        let recovered = engine.recover().expect("recover");
        check(&*recovered[0].log, "reopened");
    }
}

/// With the tail cache turned off, the persistent modes read everything
/// from storage, and read it right.
#[tokio::test]
async fn without_a_tail_cache_reads_come_from_storage() {
    let no_cache = storage::Tuning {
        tail_cache_bytes: 0,
        ..tuning()
    };
    for mode in MODES.into_iter().filter(|m| *m != StorageMode::Memory) {
        let dir = DataDir::new(mode, "nocache");
        let engine = open_with(mode, dir.path(), &no_cache);
        let bodies = (0..20).map(|i| format!("message {i};"));
        let (log, expected, boundaries) = stream_of(&*engine, bodies).await;
        let tail = log.tail();
        assert!(
            log.reads_block_from(tail.bytes),
            "{mode}: nothing is kept in memory"
        );
        for b in &boundaries {
            let (data, next) = text(&*log, *b, tail.bytes, 1 << 20);
            assert_eq!(data, expected[b.bytes as usize..], "{mode} from {b:?}");
            assert_eq!(next, tail, "{mode}");
        }
    }
}

/// Large records (written with the runtime told the thread blocks) and
/// small ones, from concurrent tasks on a multi-threaded runtime, land whole
/// and in order, and come back the same after reopening.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_small_appends_from_many_tasks_survive_reopening() {
    const STREAMS: usize = 4;
    const APPENDS: usize = 12;
    // Every third append is 1 MiB, above the size written inline.
    fn body(stream: usize, append: usize) -> String {
        let len = if append % 3 == 0 { 1 << 20 } else { 100 };
        let fill = char::from(b'a' + ((stream * APPENDS + append) % 26) as u8);
        std::iter::repeat_n(fill, len).collect()
    }
    for mode in MODES.into_iter().filter(|m| *m != StorageMode::Memory) {
        let dir = DataDir::new(mode, "large");
        let expected: Vec<String> = (0..STREAMS)
            .map(|s| (0..APPENDS).map(|a| body(s, a)).collect())
            .collect();
        {
            let engine = open(mode, dir.path());
            let mut tasks = Vec::new();
            for stream in 0..STREAMS {
                let engine = Arc::clone(&engine);
                tasks.push(tokio::spawn(async move {
                    let (log, commit) = engine
                        .create(&format!("s{stream}"), &meta(), Offset::ZERO, vec![], false)
                        .expect("create");
                    commit.wait().await.expect("create commit");
                    for append in 0..APPENDS {
                        let mutation = Mutation {
                            data: Some(messages(&[&body(stream, append)])),
                            ..Mutation::default()
                        };
                        log.apply(mutation)
                            .expect("apply")
                            .wait()
                            .await
                            .expect("commit");
                    }
                }));
            }
            for task in tasks {
                task.await.expect("append task");
            }
            engine.flush().expect("flush");
        }
        let engine = open(mode, dir.path());
        let mut recovered = engine.recover().expect("recover");
        recovered.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(recovered.len(), STREAMS, "{mode}");
        for (stream, r) in recovered.iter().enumerate() {
            let tail = r.log.tail();
            assert_eq!(tail.messages, APPENDS as u64, "{mode} s{stream}");
            let (data, next) = text(&*r.log, Offset::ZERO, tail.bytes, usize::MAX);
            assert_eq!(next, tail, "{mode} s{stream}");
            assert!(data == expected[stream], "{mode} s{stream}: data differs");
        }
    }
}
