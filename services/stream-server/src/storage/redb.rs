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
//! Tables:
//! * `streams`: path → JSON [`StreamRecord`] (configuration and protocol state)
//! * `chunks`: (stream id, end byte) → one append: [`ChunkHeader`] then data
//! * `producers`: (stream id, producer id) → (epoch, last seq)
//! * `meta`: `format` → the on-disk format version

use super::chunk::{self, Chunk, RecentChunks};
use super::{
    ClosedBy, Commit, Engine, LogSlice, Mutation, Recovered, StorageError, StreamLog, StreamMeta,
};
use crate::protocol::json::JsonMessages;
use crate::protocol::offset::Offset;
use crate::protocol::producer::ProducerState;
use ::redb::{Database, Durability, ReadableTable, TableDefinition};
use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use tokio::sync::oneshot;

const STREAMS: TableDefinition<&str, &[u8]> = TableDefinition::new("streams");
const CHUNKS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("chunks");
const PRODUCERS: TableDefinition<(u64, &str), (u64, u64)> = TableDefinition::new("producers");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");

/// Written to `meta.format`; a different value refuses to start.
const FORMAT: &str = "durable-streams-rs acid v1";
const DB_FILE: &str = "streams.redb";

/// Most requests folded into one transaction.
const MAX_GROUP: usize = 1024;

/// A stream's row in `streams`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StreamRecord {
    id: u64,
    base: Offset,
    meta: StreamMeta,
    closed: bool,
    closed_by: Option<ClosedBy>,
    last_seq: Option<String>,
    soft_deleted: bool,
}

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
    /// another mode or format.
    pub fn open(data_dir: &Path) -> Result<Self, StorageError> {
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
        {
            let mut meta = txn.open_table(META).map_err(io)?;
            let found = meta
                .get("format")
                .map_err(io)?
                .map(|v| v.value().to_owned());
            match found {
                None => {
                    meta.insert("format", FORMAT).map_err(io)?;
                }
                Some(found) if found == FORMAT => {}
                Some(found) => {
                    return Err(StorageError::IncompatibleDataDir {
                        dir: data_dir.display().to_string(),
                        found,
                        expected: FORMAT.into(),
                    });
                }
            }
            txn.open_table(STREAMS).map_err(io)?;
            txn.open_table(CHUNKS).map_err(io)?;
            txn.open_table(PRODUCERS).map_err(io)?;
        }
        txn.commit().map_err(io)?;
        let db = Arc::new(db);
        let (writer, jobs) = mpsc::channel();
        let thread_db = Arc::clone(&db);
        std::thread::Builder::new()
            .name("redb-writer".into())
            .spawn(move || write_loop(&thread_db, &jobs))
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

    fn submit(writer: &mpsc::Sender<Job>, op: Op) -> Result<Commit, StorageError> {
        let (reply, receiver) = oneshot::channel();
        writer
            .send(Job { op, reply })
            .map_err(|_| StorageError::Stopped)?;
        Ok(Commit::pending(receiver))
    }

    fn log(&self, id: u64, path: &str, base: Offset, tail: Offset) -> Arc<RedbLog> {
        Arc::new(RedbLog {
            id,
            path: path.to_owned(),
            base,
            tail: Mutex::new(tail),
            recent: Mutex::new(RecentChunks::new(self.tail_cache)),
            db: Arc::clone(&self.db),
            writer: self.writer.clone(),
        })
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
            let mut states = Vec::new();
            for row in producers
                .range((record.id, "")..(record.id + 1, ""))
                .map_err(io)?
            {
                let (key, value) = row.map_err(io)?;
                let (epoch, last_seq) = value.value();
                states.push((key.value().1.to_owned(), ProducerState { epoch, last_seq }));
            }
            self.next_id.fetch_max(record.id + 1, Ordering::Relaxed);
            recovered.push(Recovered {
                log: self.log(record.id, &path, record.base, tail),
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
        initial: Vec<JsonMessages>,
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
        let log = self.log(id, path, base, base);
        let mut chunks = Vec::new();
        for messages in initial {
            chunks.push(log.next_chunk(&messages));
        }
        let commit = Self::submit(
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

/// One stream's data in redb.
#[derive(Debug)]
pub struct RedbLog {
    id: u64,
    path: String,
    base: Offset,
    /// Written tail: everything submitted, committed or not.
    tail: Mutex<Offset>,
    /// The newest appends, so tail reads skip the database.
    recent: Mutex<RecentChunks>,
    db: Arc<Database>,
    writer: mpsc::Sender<Job>,
}

impl RedbLog {
    /// Encodes `messages` as the next chunk and advances the written tail.
    fn next_chunk(&self, messages: &JsonMessages) -> (u64, Vec<u8>) {
        let mut tail = self.tail.lock();
        // Under the tail lock, so the cache follows the log's order.
        self.recent
            .lock()
            .remember(Chunk::appended(messages, *tail));
        let end = tail.bytes + messages.encoded.len() as u64;
        let header = ChunkHeader {
            messages_end: tail.messages + messages.ends.len() as u64,
            ends: messages.ends.iter().map(|&e| e as u32).collect(),
        };
        *tail = Offset::new(header.messages_end, end);
        let mut value = header.encode();
        value.extend_from_slice(&messages.encoded);
        (end, value)
    }

    fn read_table<T>(
        &self,
        f: impl FnOnce(&::redb::ReadOnlyTable<(u64, u64), &[u8]>) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let txn = self.db.begin_read().map_err(io)?;
        let chunks = txn.open_table(CHUNKS).map_err(io)?;
        f(&chunks)
    }
}

impl StreamLog for RedbLog {
    fn base(&self) -> Offset {
        self.base
    }

    fn tail(&self) -> Offset {
        *self.tail.lock()
    }

    fn boundary_at(&self, bytes: u64) -> Result<Option<Offset>, StorageError> {
        if bytes == self.base.bytes {
            return Ok(Some(self.base));
        }
        if let Some(recent) = self.recent.lock().from(bytes.saturating_sub(1)) {
            return chunk::boundary_in(recent.into_iter().map(Ok), bytes);
        }
        self.read_table(|chunks| {
            let rows = chunks
                .range((self.id, bytes)..=(self.id, u64::MAX))
                .map_err(io)?;
            chunk::boundary_in(rows.map(decode_row), bytes)
        })
    }

    fn read(&self, from: Offset, limit: u64, max_bytes: usize) -> Result<LogSlice, StorageError> {
        if let Some(recent) = self.recent.lock().from(from.bytes) {
            return chunk::read_chunks(recent.into_iter().map(Ok), from, limit, max_bytes);
        }
        self.read_table(|chunks| {
            let rows = chunks
                .range((self.id, from.bytes + 1)..=(self.id, u64::MAX))
                .map_err(io)?;
            chunk::read_chunks(rows.map(decode_row), from, limit, max_bytes)
        })
    }

    fn reads_block(&self) -> bool {
        true
    }

    fn reads_block_from(&self, bytes: u64) -> bool {
        // A read from `bytes` first checks the boundary ending there.
        !self.recent.lock().covers(bytes.saturating_sub(1))
    }

    fn apply(&self, mutation: Mutation) -> Result<Commit, StorageError> {
        let chunk = mutation.data.as_ref().map(|m| self.next_chunk(m));
        RedbEngine::submit(
            &self.writer,
            Op::Apply {
                id: self.id,
                path: self.path.clone(),
                chunk,
                producer: mutation.producer,
                stream_seq: mutation.stream_seq,
                close: mutation.close,
            },
        )
    }

    fn soft_delete(&self) -> Result<Commit, StorageError> {
        RedbEngine::submit(
            &self.writer,
            Op::SoftDelete {
                path: self.path.clone(),
            },
        )
    }

    fn remove(&self) -> Result<Commit, StorageError> {
        RedbEngine::submit(
            &self.writer,
            Op::Remove {
                id: self.id,
                path: self.path.clone(),
            },
        )
    }
}

/// The fixed part of a chunk value: where its messages end.
#[derive(Debug, PartialEq, Eq)]
struct ChunkHeader {
    /// Messages in the stream up to the end of this chunk.
    messages_end: u64,
    /// End of each message, relative to the chunk's start.
    ends: Vec<u32>,
}

impl ChunkHeader {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + 4 * self.ends.len());
        out.extend_from_slice(&self.messages_end.to_le_bytes());
        out.extend_from_slice(&(self.ends.len() as u32).to_le_bytes());
        for end in &self.ends {
            out.extend_from_slice(&end.to_le_bytes());
        }
        out
    }

    /// Decodes the header; returns it and the length it took.
    fn decode_with_len(value: &[u8]) -> Result<(Self, usize), StorageError> {
        let corrupt = || StorageError::Corrupt("chunk header is truncated".into());
        let messages_end = u64::from_le_bytes(
            value
                .get(..8)
                .ok_or_else(corrupt)?
                .try_into()
                .map_err(|_| corrupt())?,
        );
        let count = u32::from_le_bytes(
            value
                .get(8..12)
                .ok_or_else(corrupt)?
                .try_into()
                .map_err(|_| corrupt())?,
        ) as usize;
        let header_len = 12 + 4 * count;
        let raw = value.get(12..header_len).ok_or_else(corrupt)?;
        let ends = raw
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok((ChunkHeader { messages_end, ends }, header_len))
    }

    fn decode(value: &[u8]) -> Result<Self, StorageError> {
        Self::decode_with_len(value).map(|(header, _)| header)
    }
}

/// A row of `chunks` as a range scan yields it.
type ChunkRow<'a> = Result<
    (
        ::redb::AccessGuard<'a, (u64, u64)>,
        ::redb::AccessGuard<'a, &'static [u8]>,
    ),
    ::redb::StorageError,
>;

/// Decodes a `chunks` row.
fn decode_row(row: ChunkRow<'_>) -> Result<Chunk, StorageError> {
    let (key, value) = row.map_err(io)?;
    let (header, header_len) = ChunkHeader::decode_with_len(value.value())?;
    let end = key.value().1;
    let data = Bytes::copy_from_slice(&value.value()[header_len..]);
    if header.ends.last().map(|&e| e as usize) != Some(data.len()) {
        return Err(StorageError::Corrupt(format!(
            "chunk ending at byte {end} does not match its message index"
        )));
    }
    Ok(Chunk {
        messages_end: header.messages_end,
        end,
        ends: header.ends,
        data,
    })
}

/// A write for the writer thread, with where to report its outcome.
struct Job {
    op: Op,
    reply: oneshot::Sender<Result<(), StorageError>>,
}

enum Op {
    Create {
        path: String,
        record: StreamRecord,
        chunks: Vec<(u64, Vec<u8>)>,
    },
    Apply {
        id: u64,
        path: String,
        chunk: Option<(u64, Vec<u8>)>,
        producer: Option<(String, ProducerState)>,
        stream_seq: Option<String>,
        close: Option<Option<ClosedBy>>,
    },
    SoftDelete {
        path: String,
    },
    Remove {
        id: u64,
        path: String,
    },
}

/// The writer thread: group queued jobs into one durable transaction each.
fn write_loop(db: &Database, jobs: &mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let outcome = commit_group(db, &group);
        if let Err(e) = &outcome {
            tracing::error!(error = %e, requests = group.len(), "acid commit failed");
        }
        for job in group {
            let _ = job.reply.send(outcome.clone());
        }
    }
}

fn commit_group(db: &Database, group: &[Job]) -> Result<(), StorageError> {
    let mut txn = db.begin_write().map_err(io)?;
    txn.set_durability(Durability::Immediate);
    {
        let mut streams = txn.open_table(STREAMS).map_err(io)?;
        let mut chunks = txn.open_table(CHUNKS).map_err(io)?;
        let mut producers = txn.open_table(PRODUCERS).map_err(io)?;
        let encode = |record: &StreamRecord| serde_json::to_vec(record).map_err(io);
        let load = |streams: &::redb::Table<&str, &[u8]>,
                    path: &str|
         -> Result<StreamRecord, StorageError> {
            let value = streams
                .get(path)
                .map_err(io)?
                .ok_or_else(|| StorageError::Corrupt(format!("stream {path} has no record")))?;
            serde_json::from_slice(value.value()).map_err(io)
        };
        for job in group {
            match &job.op {
                Op::Create {
                    path,
                    record,
                    chunks: initial,
                } => {
                    streams
                        .insert(path.as_str(), encode(record)?.as_slice())
                        .map_err(io)?;
                    for (end, value) in initial {
                        chunks
                            .insert((record.id, *end), value.as_slice())
                            .map_err(io)?;
                    }
                }
                Op::Apply {
                    id,
                    path,
                    chunk,
                    producer,
                    stream_seq,
                    close,
                } => {
                    if let Some((end, value)) = chunk {
                        chunks.insert((*id, *end), value.as_slice()).map_err(io)?;
                    }
                    if let Some((producer_id, state)) = producer {
                        producers
                            .insert((*id, producer_id.as_str()), (state.epoch, state.last_seq))
                            .map_err(io)?;
                    }
                    if stream_seq.is_some() || close.is_some() {
                        let mut record = load(&streams, path)?;
                        if let Some(seq) = stream_seq {
                            record.last_seq = Some(seq.clone());
                        }
                        if let Some(closed_by) = close {
                            record.closed = true;
                            record.closed_by = closed_by.clone();
                        }
                        streams
                            .insert(path.as_str(), encode(&record)?.as_slice())
                            .map_err(io)?;
                    }
                }
                Op::SoftDelete { path } => {
                    let mut record = load(&streams, path)?;
                    record.soft_deleted = true;
                    streams
                        .insert(path.as_str(), encode(&record)?.as_slice())
                        .map_err(io)?;
                }
                Op::Remove { id, path } => {
                    // Only remove the row if it is still this stream's (the
                    // path may have been re-created since).
                    if load(&streams, path).is_ok_and(|r| r.id == *id) {
                        streams.remove(path.as_str()).map_err(io)?;
                    }
                    chunks
                        .retain_in((*id, 0)..=(*id, u64::MAX), |_, _| false)
                        .map_err(io)?;
                    producers
                        .retain_in((*id, "")..(*id + 1, ""), |_, _| false)
                        .map_err(io)?;
                }
            }
        }
    }
    txn.commit().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_detects_truncation() {
        let header = ChunkHeader {
            messages_end: 7,
            ends: vec![3, 9],
        };
        assert_eq!(
            ChunkHeader::decode(&header.encode()).expect("decode"),
            header
        );
        assert!(ChunkHeader::decode(&header.encode()[..10]).is_err());
    }
}
