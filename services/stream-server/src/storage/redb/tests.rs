//! Tests of the acid engine as a whole: reads across settled and
//! unsettled appends, settling in steps and stream by stream, removal
//! mid-settle, reopening, upgrading older formats, and the `streams` row's
//! stored form.

use super::tables::{
    CHUNKS, DB_FILE, FORMAT, FORMAT_V1, FORMAT_V2, META, RECENT, RECENT_B, StreamRecord,
};
use super::writer::DIRECT_BYTES;
use super::*;
use crate::storage::{ClosingProducer, ExpiryRecord, Mutation};
use ::redb::ReadableTableMetadata;
use tempfile::TempDir;

/// A scratch data directory, removed on drop.
fn scratch(name: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("ds-redb-unit-{name}-"))
        .tempdir()
        .expect("scratch dir")
}

fn meta() -> StreamMeta {
    StreamMeta {
        content_type: "text/plain".into(),
        expiry: ExpiryRecord::TtlSecs(60),
        fork: None,
    }
}

fn message(body: &[u8]) -> MessageBatch {
    MessageBatch::of([body])
}

/// Creates an empty stream at `path` and waits for its commit.
async fn create_stream(engine: &RedbEngine, path: &str) -> Arc<dyn StreamLog> {
    let (log, commit) = engine
        .create(path, &meta(), Offset::ZERO, Vec::new(), false)
        .expect("create");
    commit.wait().await.expect("create commit");
    log
}

/// Appends each body as one message and waits for its commit.
async fn append_all(log: &Arc<dyn StreamLog>, bodies: &[Vec<u8>]) {
    for body in bodies {
        let mutation = Mutation {
            data: Some(message(body)),
            ..Mutation::default()
        };
        log.apply(mutation)
            .expect("apply")
            .wait()
            .await
            .expect("commit");
    }
}

/// Rows in the two recent tables together and in `chunks`.
fn table_rows(db: &Database) -> (u64, u64) {
    let (a, b, chunks) = each_table_rows(db);
    (a + b, chunks)
}

/// Rows in `recent`, `recent-b` and `chunks`.
fn each_table_rows(db: &Database) -> (u64, u64, u64) {
    let txn = db.begin_read().expect("read");
    let count = |definition| {
        txn.open_table(definition)
            .expect("open")
            .len()
            .expect("count")
    };
    (count(RECENT), count(RECENT_B), {
        let chunks = txn.open_table(CHUNKS).expect("chunks");
        chunks.len().expect("count chunks")
    })
}

/// Opens the engine in `dir` again; the last run's writer thread may
/// still hold the file for a moment.
fn reopen(dir: &Path, settle_rows: usize) -> RedbEngine {
    (0..50)
        .find_map(|_| {
            RedbEngine::open(dir, settle_rows).ok().or_else(|| {
                std::thread::sleep(std::time::Duration::from_millis(20));
                None
            })
        })
        .expect("reopen")
}

/// The whole log, read from its start.
fn read_all(log: &Arc<dyn StreamLog>) -> Vec<u8> {
    let tail = log.tail();
    let all = log
        .read(Offset::ZERO, tail.bytes, usize::MAX)
        .expect("read");
    assert_eq!(all.next, tail);
    all.data.concat()
}

fn bodies(count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| format!("message {i:03};").into_bytes())
        .collect()
}

#[tokio::test]
async fn reads_see_settled_and_unsettled_appends_in_order() {
    let scratch = scratch("merge");
    // No tail cache: every read goes to the tables.
    let engine = RedbEngine::open(scratch.path(), 4)
        .expect("open")
        .with_tail_cache(0);
    let log = create_stream(&engine, "s").await;
    let bodies = bodies(11);
    append_all(&log, &bodies).await;

    let (recent, chunks) = table_rows(&engine.db);
    assert!(recent > 0 && chunks > 0, "recent {recent}, chunks {chunks}");
    assert_eq!(recent + chunks, 11);
    let tail = log.tail();
    let all = log
        .read(Offset::ZERO, tail.bytes, usize::MAX)
        .expect("read");
    assert_eq!(all.data.concat(), bodies.concat());
    assert_eq!(all.next, tail);
    // From every boundary, in settled and unsettled rows alike.
    for (i, &end) in all.ends.iter().enumerate() {
        let at = log.boundary_at(end).expect("boundary").expect("a boundary");
        assert_eq!(at, Offset::new(i as u64 + 1, end));
        let rest = log.read(at, tail.bytes, usize::MAX).expect("read");
        assert_eq!(rest.data.concat(), bodies[i + 1..].concat());
    }
}

#[tokio::test]
async fn opening_settles_what_a_previous_run_left_in_recent() {
    let scratch = scratch("reopen");
    let bodies = bodies(6);
    let tail = {
        let engine = RedbEngine::open(scratch.path(), 1000).expect("open");
        let log = create_stream(&engine, "s").await;
        append_all(&log, &bodies).await;
        assert_eq!(table_rows(&engine.db), (6, 0));
        log.tail()
    };
    let engine = reopen(scratch.path(), 1000);
    assert_eq!(table_rows(&engine.db), (0, 6));
    let recovered = engine.recover().expect("recover");
    let log = &recovered[0].log;
    assert_eq!(log.tail(), tail);
    let all = log
        .read(Offset::ZERO, tail.bytes, usize::MAX)
        .expect("read");
    assert_eq!(all.data.concat(), bodies.concat());
}

#[tokio::test]
async fn a_full_table_is_settled_a_step_per_transaction_while_the_other_fills() {
    let scratch = scratch("steps");
    let bodies = bodies(18);
    {
        // Eight rows fill a table; one-append groups then settle two
        // rows each (a share of eight rounds up to one; twice the
        // group's one row is two).
        let engine = RedbEngine::open(scratch.path(), 8)
            .expect("open")
            .with_tail_cache(0);
        let log = create_stream(&engine, "s").await;
        append_all(&log, &bodies[..8]).await;
        assert_eq!(each_table_rows(&engine.db), (8, 0, 0));

        // The ninth switches tables and moves the first two rows; they
        // stay in their table until it is dropped, and reads take them
        // once.
        append_all(&log, &bodies[8..9]).await;
        assert_eq!(each_table_rows(&engine.db), (8, 1, 2));
        assert_eq!(read_all(&log), bodies[..9].concat());

        append_all(&log, &bodies[9..11]).await;
        assert_eq!(each_table_rows(&engine.db), (8, 3, 6));
        assert_eq!(read_all(&log), bodies[..11].concat());

        // The fourth step moves the last two and drops the table.
        append_all(&log, &bodies[11..12]).await;
        assert_eq!(each_table_rows(&engine.db), (0, 4, 8));
        assert_eq!(read_all(&log), bodies[..12].concat());

        // The other table fills up in turn and switches back; a restart
        // then meets both tables holding rows, one partly settled.
        append_all(&log, &bodies[12..17]).await;
        assert_eq!(each_table_rows(&engine.db), (1, 8, 10));
        append_all(&log, &bodies[17..]).await;
        assert_eq!(each_table_rows(&engine.db), (2, 8, 12));
        assert_eq!(read_all(&log), bodies.concat());
    }
    let engine = reopen(scratch.path(), 8);
    assert_eq!(each_table_rows(&engine.db), (0, 0, 18));
    let recovered = engine.recover().expect("recover");
    assert_eq!(read_all(&recovered[0].log), bodies.concat());
}

#[tokio::test]
async fn a_settle_moves_rows_stream_by_stream() {
    let scratch = scratch("by-stream");
    let engine = RedbEngine::open(scratch.path(), 8)
        .expect("open")
        .with_tail_cache(0);
    let mut logs = Vec::new();
    for path in ["a", "b"] {
        logs.push(create_stream(&engine, path).await);
    }
    // The streams take turns: `a` gets the even bodies, `b` the odd.
    let bodies = bodies(9);
    for (i, body) in bodies.iter().enumerate() {
        append_all(&logs[i % 2], std::slice::from_ref(body)).await;
    }
    // The ninth append switched tables and settled a slice of two rows:
    // the first two of one stream, not the first two in commit order.
    let txn = engine.db.begin_read().expect("read");
    let chunks = txn.open_table(CHUNKS).expect("chunks");
    let streams: Vec<u64> = chunks
        .iter()
        .expect("iterate")
        .map(|row| row.expect("row").0.value().0)
        .collect();
    assert_eq!(streams.len(), 2);
    assert_eq!(streams[0], streams[1], "{streams:?}");
    for (parity, log) in logs.iter().enumerate() {
        let expected: Vec<u8> = bodies
            .iter()
            .skip(parity)
            .step_by(2)
            .flatten()
            .copied()
            .collect();
        assert_eq!(read_all(log), expected);
    }
}

#[tokio::test]
async fn removal_mid_settle_clears_both_recent_tables() {
    let scratch = scratch("remove-mid-settle");
    let engine = RedbEngine::open(scratch.path(), 8)
        .expect("open")
        .with_tail_cache(0);
    let log = create_stream(&engine, "s").await;
    let other = create_stream(&engine, "other").await;
    let bodies = bodies(9);
    append_all(&log, &bodies).await;
    // Eight rows being settled (two moved already), one filling.
    assert_eq!(each_table_rows(&engine.db), (8, 1, 2));
    log.remove()
        .expect("remove")
        .wait()
        .await
        .expect("remove commit");
    assert_eq!(each_table_rows(&engine.db), (0, 0, 0));
    // The settle goes on past the removed rows, and other streams
    // keep working.
    append_all(&other, &bodies[..3]).await;
    assert_eq!(read_all(&other), bodies[..3].concat());
}

#[tokio::test]
async fn large_appends_skip_recent_and_removal_clears_both_tables() {
    let scratch = scratch("large");
    let engine = RedbEngine::open(scratch.path(), 1000)
        .expect("open")
        .with_tail_cache(0);
    let log = create_stream(&engine, "s").await;
    let bodies = vec![
        b"small".to_vec(),
        vec![b'x'; DIRECT_BYTES],
        b"small again".to_vec(),
    ];
    append_all(&log, &bodies).await;
    assert_eq!(table_rows(&engine.db), (2, 1));
    let tail = log.tail();
    let all = log
        .read(Offset::ZERO, tail.bytes, usize::MAX)
        .expect("read");
    assert_eq!(all.data.concat(), bodies.concat());

    log.remove()
        .expect("remove")
        .wait()
        .await
        .expect("remove commit");
    assert_eq!(table_rows(&engine.db), (0, 0));
}

#[tokio::test]
async fn version_1_and_2_databases_are_upgraded_in_place() {
    for old in [FORMAT_V1, FORMAT_V2] {
        let scratch = scratch("upgrade");
        {
            let db = Database::create(scratch.path().join(DB_FILE)).expect("create");
            let txn = db.begin_write().expect("write");
            txn.open_table(META)
                .expect("meta")
                .insert("format", old)
                .expect("format");
            txn.open_table(CHUNKS).expect("chunks");
            if old == FORMAT_V2 {
                // An unsettled append a version 2 server left.
                let mut value = 1u64.to_le_bytes().to_vec();
                value.extend_from_slice(&5u64.to_le_bytes());
                value.extend_from_slice(b"chunk");
                txn.open_table(RECENT)
                    .expect("recent")
                    .insert(0, value.as_slice())
                    .expect("insert");
            }
            txn.commit().expect("commit");
        }
        let engine = RedbEngine::open(scratch.path(), 1000).expect("open an old directory");
        let txn = engine.db.begin_read().expect("read");
        let meta = txn.open_table(META).expect("meta");
        let format = meta.get("format").expect("get").expect("a format");
        assert_eq!(format.value(), FORMAT, "from {old}");
        let settled = u64::from(old == FORMAT_V2);
        assert_eq!(each_table_rows(&engine.db), (0, 0, settled), "from {old}");
    }
}

/// A `streams` row keeps the closing producer request as the array
/// `[id, epoch, seq]` it has always been stored as, and reads it back.
#[test]
fn the_closing_producer_is_stored_as_an_array() {
    let record = StreamRecord {
        id: 1,
        base: Offset::ZERO,
        meta: meta(),
        closed: true,
        closed_by: Some(ClosingProducer {
            id: "p".into(),
            epoch: 2,
            seq: 7,
        }),
        last_seq: None,
        soft_deleted: false,
    };
    let mut row = serde_json::to_value(&record).expect("serialise");
    assert_eq!(row["closed_by"], serde_json::json!(["p", 2, 7]));
    let read: StreamRecord = serde_json::from_value(row.clone()).expect("deserialise");
    assert_eq!(read.closed_by, record.closed_by);

    row["closed_by"] = serde_json::Value::Null;
    let read: StreamRecord = serde_json::from_value(row).expect("deserialise");
    assert_eq!(read.closed_by, None);
    let open = StreamRecord {
        closed_by: None,
        ..record
    };
    assert_eq!(
        serde_json::to_value(&open).expect("serialise")["closed_by"],
        serde_json::Value::Null
    );
}
