//! The `acid` engine (alias `redb`): every change is one redb write
//! transaction committed with `Durability::Immediate`.
//!
//! One writer thread owns all writes. It takes the first waiting request,
//! gathers every other request already queued (from any stream), applies
//! them all in one transaction and commits once: concurrent appends share
//! one fsync (group commit). A request is acknowledged only after its
//! transaction commits, and readers only ever read committed data, so a
//! reader never sees what a crash could roll back.
//!
//! Data, producer state and closure of one request go into the same
//! transaction, so a producer retry after a crash is deduplicated.
//!
//! Small appends are first written to a recent table, keyed in commit
//! order, and moved to their stream's rows in `chunks` in large batches
//! ("settling"). redb copies every B-tree page a transaction changes:
//! written straight to `chunks`, a group of appends to 30 streams changed
//! some 30 leaves, and each 300-byte append cost more than one 4 KiB page
//! write. In a recent table the whole group lands on one or two leaves, and
//! a settle fills each stream's leaves once.
//!
//! There are two recent tables. Appends fill one; when it is full they
//! switch to the other, and the full one is settled a slice per
//! transaction, then dropped whole (dropping frees its pages in one pass;
//! deleting rows one by one rebuilds leaves again and again). So no group
//! of requests waits for a whole settle. Rows are settled stream by
//! stream: a slice then fills the leaves of a few streams, and the whole
//! settle writes each stream's leaves about once, as a single settle did
//! (a slice of rows in commit order would touch every stream's leaf in
//! every transaction). A row being settled is in `chunks` and in its recent
//! table until that table is dropped; reads take it once. Each log keeps
//! the keys of its unsettled appends ([`settle::UnsettledIndex`]) so reads
//! find them; opening the database settles whatever a previous run left in
//! either table.
//!
//! Tables:
//! * `streams`: path → JSON [`tables::StreamRecord`] (configuration and protocol state)
//! * `chunks`: (stream id, end byte) → one append: [`rows::ChunkHeader`] then data
//! * `recent`, `recent-b`: commit sequence → stream id, end byte, then as
//!   in `chunks`
//! * `producers`: (stream id, producer id) → (epoch, last seq)
//! * `meta`: `format` → the on-disk format version
//!
//! Modules:
//! * [`tables`] — the table definitions, the `streams` row, and the format
//!   version checked and upgraded at open.
//! * [`rows`] — the byte layout of `chunks` and `recent` values.
//! * [`log`] — [`RedbLog`], one stream's handle: written tail, tail cache,
//!   submitting changes.
//! * [`reads`] — reading settled and unsettled chunks as one sequence.
//! * [`writer`] — the writer thread and its group commit.
//! * [`settle`] — moving recent rows to `chunks`, and the index of those
//!   not moved yet.

mod log;
mod reads;
mod rows;
mod settle;
mod tables;
#[cfg(test)]
mod tests;
mod writer;

pub use log::RedbLog;
pub use settle::SETTLE_ROWS;

use super::chunk::RecentChunks;
use super::{Commit, Engine, Recovered, StorageError, StreamLog, StreamMeta};
use crate::protocol::offset::Offset;
use crate::protocol::producer::ProducerState;
use crate::storage::MessageBatch;
use ::redb::{Database, ReadableTable};
use rows::ChunkHeader;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use tables::{CHUNKS, DB_FILE, FORMAT, PRODUCERS, RecentTable, STREAMS, StreamRecord};
use writer::{Job, Op, Writer};

fn io(e: impl std::fmt::Display) -> StorageError {
    StorageError::Io(e.to_string())
}

/// The engine of `DS_STORAGE__MODE=acid`.
#[derive(Debug)]
pub struct RedbEngine {
    db: Arc<Database>,
    writer: mpsc::Sender<Job>,
    next_id: AtomicU64,
    /// Bytes of each stream's newest appends kept in memory.
    tail_cache: usize,
}

impl RedbEngine {
    /// Opens (or creates) `data_dir/streams.redb`, refusing a directory of
    /// another mode or format. Unsettled appends are settled whenever
    /// `settle_rows` (normally [`SETTLE_ROWS`]) of them wait.
    pub fn open(data_dir: &Path, settle_rows: usize) -> Result<Self, StorageError> {
        std::fs::create_dir_all(data_dir).map_err(io)?;
        let path = data_dir.join(DB_FILE);
        let fresh = !path.exists();
        if fresh && std::fs::read_dir(data_dir).map_err(io)?.next().is_some() {
            return Err(StorageError::IncompatibleDataDir {
                dir: data_dir.display().to_string(),
                found: "files of another storage mode".into(),
                expected: FORMAT.into(),
            });
        }
        let db = Database::create(&path).map_err(io)?;
        let txn = db.begin_write().map_err(io)?;
        tables::initialise(&txn, data_dir)?;
        // Recovery reads `chunks` only: what a previous run left unsettled
        // is settled before anything else.
        for table in [RecentTable::A, RecentTable::B] {
            settle::settle_all(&txn, table)?;
        }
        txn.commit().map_err(io)?;
        let db = Arc::new(db);
        let (writer, jobs) = mpsc::channel();
        let thread_db = Arc::clone(&db);
        std::thread::Builder::new()
            .name("redb-writer".into())
            .spawn(move || Writer::new(&thread_db, settle_rows.max(1)).run(&jobs))
            .map_err(io)?;
        Ok(RedbEngine {
            db,
            writer,
            next_id: AtomicU64::new(1),
            tail_cache: RecentChunks::DEFAULT_BUDGET,
        })
    }

    /// Keeps up to `bytes` of each stream's newest appends in memory for
    /// reads at the tail (0: none).
    pub fn with_tail_cache(mut self, bytes: usize) -> Self {
        self.tail_cache = bytes;
        self
    }
}

impl Engine for RedbEngine {
    fn recover(&self) -> Result<Vec<Recovered>, StorageError> {
        let txn = self.db.begin_read().map_err(io)?;
        let streams = txn.open_table(STREAMS).map_err(io)?;
        let chunks = txn.open_table(CHUNKS).map_err(io)?;
        let producers = txn.open_table(PRODUCERS).map_err(io)?;
        let mut records = Vec::new();
        for row in streams.iter().map_err(io)? {
            let (path, value) = row.map_err(io)?;
            let record: StreamRecord = serde_json::from_slice(value.value())
                .map_err(|e| StorageError::Corrupt(format!("stream {}: {e}", path.value())))?;
            records.push((path.value().to_owned(), record));
        }
        // Ids grow with creation, so sources come before their forks.
        records.sort_by_key(|(_, r)| r.id);
        let mut recovered = Vec::with_capacity(records.len());
        for (path, record) in records {
            let tail = match chunks
                .range((record.id, 0)..=(record.id, u64::MAX))
                .map_err(io)?
                .next_back()
            {
                Some(row) => {
                    let (key, value) = row.map_err(io)?;
                    let header = ChunkHeader::decode(value.value())?;
                    Offset::new(header.messages_end, key.value().1)
                }
                None => record.base,
            };
            let mut states = HashMap::new();
            for row in producers
                .range((record.id, "")..(record.id + 1, ""))
                .map_err(io)?
            {
                let (key, value) = row.map_err(io)?;
                let (epoch, last_seq) = value.value();
                states.insert(key.value().1.to_owned(), ProducerState { epoch, last_seq });
            }
            self.next_id.fetch_max(record.id + 1, Ordering::Relaxed);
            recovered.push(Recovered {
                log: RedbLog::new(self, record.id, &path, record.base, tail),
                path,
                meta: record.meta,
                closed: record.closed,
                closed_by: record.closed_by,
                producers: states,
                last_seq: record.last_seq,
                soft_deleted: record.soft_deleted,
            });
        }
        Ok(recovered)
    }

    fn create(
        &self,
        path: &str,
        meta: &StreamMeta,
        base: Offset,
        initial: Vec<MessageBatch>,
        closed: bool,
    ) -> Result<(Arc<dyn StreamLog>, Commit), StorageError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let record = StreamRecord {
            id,
            base,
            meta: meta.clone(),
            closed,
            closed_by: None,
            last_seq: None,
            soft_deleted: false,
        };
        let log = RedbLog::new(self, id, path, base, base);
        let mut chunks = Vec::new();
        for messages in initial {
            chunks.push(log.next_chunk(&messages));
        }
        let commit = writer::submit(
            &self.writer,
            Op::Create {
                path: path.to_owned(),
                record,
                chunks,
            },
        )?;
        Ok((log, commit))
    }
}
