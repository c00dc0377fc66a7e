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
//! table until that table is dropped; reads take it once. Each log keeps the keys of its unsettled appends
//! ([`UnsettledIndex`]) so reads find them; opening the database settles
//! whatever a previous run left in either table.
//!
//! Tables:
//! * `streams`: path → JSON [`StreamRecord`] (configuration and protocol state)
//! * `chunks`: (stream id, end byte) → one append: [`ChunkHeader`] then data
//! * `recent`, `recent-b`: commit sequence → stream id, end byte, then as
//!   in `chunks`
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
use std::collections::{HashMap, VecDeque};
use std::iter::Peekable;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use tokio::sync::oneshot;

const STREAMS: TableDefinition<&str, &[u8]> = TableDefinition::new("streams");
const CHUNKS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("chunks");
const RECENT: TableDefinition<u64, &[u8]> = TableDefinition::new("recent");
const RECENT_B: TableDefinition<u64, &[u8]> = TableDefinition::new("recent-b");
const PRODUCERS: TableDefinition<(u64, &str), (u64, u64)> = TableDefinition::new("producers");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");

/// Written to `meta.format`; a different value refuses to start (so a
/// server that knows one recent table never opens rows left in two).
const FORMAT: &str = "durable-streams-rs acid v3";
/// The formats before: the same tables less `recent-b` (v2) or both recent
/// tables (v1), so they are opened, settled and marked as the current one.
const FORMAT_V2: &str = "durable-streams-rs acid v2";
const FORMAT_V1: &str = "durable-streams-rs acid v1";
const DB_FILE: &str = "streams.redb";

/// Most requests folded into one transaction.
const MAX_GROUP: usize = 1024;

/// Appends in the filling recent table that make it switch and settle.
pub const SETTLE_ROWS: usize = 4096;
/// Bytes in the filling recent table that make it switch and settle.
const SETTLE_BYTES: usize = 4 * 1024 * 1024;
/// A full table is settled in about this many transactions: each moves a
/// share of its rows or of [`SETTLE_BYTES`], and at least twice what its
/// own group adds, so settling always outpaces filling.
const SETTLE_STEPS: usize = 64;
/// Appends this large go straight to `chunks`: they fill pages of their
/// own anyway, and would only be copied twice.
const DIRECT_BYTES: usize = 16 * 1024;
/// Bytes before a chunk value in a `recent` row: stream id and end byte.
const RECENT_PREFIX: usize = 16;

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

/// One of the two recent tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecentTable {
    A,
    B,
}

impl RecentTable {
    fn definition(self) -> TableDefinition<'static, u64, &'static [u8]> {
        match self {
            RecentTable::A => RECENT,
            RecentTable::B => RECENT_B,
        }
    }

    fn other(self) -> RecentTable {
        match self {
            RecentTable::A => RecentTable::B,
            RecentTable::B => RecentTable::A,
        }
    }
}

/// One unsettled append of a stream: where it ends, and its key and table.
#[derive(Debug, Clone, Copy)]
struct Unsettled {
    end: u64,
    seq: u64,
    table: RecentTable,
}

/// A stream's appends still in a recent table, in order. The writer
/// thread adds each one as it writes it, before its commit, and drops them
/// once their table has been settled and dropped; a reader may hold keys
/// already settled (then found in `chunks`, and maybe in their table too)
/// or not yet committed (then found nowhere and beyond what it may read
/// anyway).
type UnsettledIndex = Mutex<VecDeque<Unsettled>>;

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
        {
            let mut meta = txn.open_table(META).map_err(io)?;
            let found = meta
                .get("format")
                .map_err(io)?
                .map(|v| v.value().to_owned());
            match found {
                Some(found) if found == FORMAT => {}
                None => {
                    meta.insert("format", FORMAT).map_err(io)?;
                }
                Some(found) if found == FORMAT_V2 || found == FORMAT_V1 => {
                    tracing::info!(from = found, to = FORMAT, "acid data directory upgraded");
                    meta.insert("format", FORMAT).map_err(io)?;
                }
                Some(found) => {
                    return Err(StorageError::IncompatibleDataDir {
                        dir: data_dir.display().to_string(),
                        found,
                        expected: FORMAT.into(),
                    });
                }
            }
            txn.open_table(STREAMS).map_err(io)?;
            txn.open_table(PRODUCERS).map_err(io)?;
        }
        // Recovery reads `chunks` only: what a previous run left unsettled
        // is settled before anything else.
        for table in [RecentTable::A, RecentTable::B] {
            settle_all(&txn, table)?;
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
            unsettled: Arc::default(),
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
    /// This stream's appends in the `recent` table.
    unsettled: Arc<UnsettledIndex>,
    db: Arc<Database>,
    writer: mpsc::Sender<Job>,
}

impl RedbLog {
    /// Encodes `messages` as the next chunk and advances the written tail.
    /// The value starts with the `recent` row's prefix; a `chunks` row is
    /// the rest.
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
        let mut value =
            Vec::with_capacity(RECENT_PREFIX + 12 + 4 * header.ends.len() + messages.encoded.len());
        value.extend_from_slice(&self.id.to_le_bytes());
        value.extend_from_slice(&end.to_le_bytes());
        header.encode_into(&mut value);
        value.extend_from_slice(&messages.encoded);
        (end, value)
    }

    /// Calls `f` with this stream's stored chunks ending at or after
    /// `first_end`, in order: settled rows of `chunks` merged with the
    /// unsettled ones of the recent tables.
    fn with_chunks_from<T>(
        &self,
        first_end: u64,
        f: impl FnOnce(&mut dyn Iterator<Item = Result<Chunk, StorageError>>) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        // Listed before the snapshot is taken, so an append settled in
        // between is in the snapshot's `chunks`.
        let unsettled: Vec<Unsettled> = self
            .unsettled
            .lock()
            .iter()
            .filter(|u| u.end >= first_end)
            .copied()
            .collect();
        let txn = self.db.begin_read().map_err(io)?;
        let chunks = txn.open_table(CHUNKS).map_err(io)?;
        let settled = chunks
            .range((self.id, first_end)..=(self.id, u64::MAX))
            .map_err(io)?
            .map(decode_row);
        if unsettled.is_empty() {
            return f(&mut { settled });
        }
        let recent_a = txn.open_table(RecentTable::A.definition()).map_err(io)?;
        let recent_b = txn.open_table(RecentTable::B.definition()).map_err(io)?;
        let unsettled = unsettled
            .into_iter()
            .filter_map(|u| {
                let table = match u.table {
                    RecentTable::A => &recent_a,
                    RecentTable::B => &recent_b,
                };
                table.get(u.seq).map_err(io).transpose()
            })
            .map(|row| row.and_then(|value| decode_recent(value.value())));
        f(&mut MergeByEnd::new(settled, unsettled))
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
        self.with_chunks_from(bytes, |chunks| chunk::boundary_in(chunks, bytes))
    }

    fn read(&self, from: Offset, limit: u64, max_bytes: usize) -> Result<LogSlice, StorageError> {
        if let Some(recent) = self.recent.lock().from(from.bytes) {
            return chunk::read_chunks(recent.into_iter().map(Ok), from, limit, max_bytes);
        }
        self.with_chunks_from(from.bytes + 1, |chunks| {
            chunk::read_chunks(chunks, from, limit, max_bytes)
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
                unsettled: Arc::clone(&self.unsettled),
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
                unsettled: Arc::clone(&self.unsettled),
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
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.messages_end.to_le_bytes());
        out.extend_from_slice(&(self.ends.len() as u32).to_le_bytes());
        for end in &self.ends {
            out.extend_from_slice(&end.to_le_bytes());
        }
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
    decode_chunk(key.value().1, value.value())
}

/// Splits a `recent` row into its stream id, end byte and `chunks` value.
fn split_recent(value: &[u8]) -> Result<(u64, u64, &[u8]), StorageError> {
    let corrupt = || StorageError::Corrupt("recent append is truncated".into());
    let (prefix, chunk) = value.split_at_checked(RECENT_PREFIX).ok_or_else(corrupt)?;
    let (id, end) = prefix.split_at(8);
    let id = u64::from_le_bytes(id.try_into().map_err(|_| corrupt())?);
    let end = u64::from_le_bytes(end.try_into().map_err(|_| corrupt())?);
    Ok((id, end, chunk))
}

/// Decodes a `recent` row.
fn decode_recent(value: &[u8]) -> Result<Chunk, StorageError> {
    let (_, end, chunk) = split_recent(value)?;
    decode_chunk(end, chunk)
}

/// Decodes the value of a chunk ending at stream byte `end`.
fn decode_chunk(end: u64, value: &[u8]) -> Result<Chunk, StorageError> {
    let (header, header_len) = ChunkHeader::decode_with_len(value)?;
    let data = Bytes::copy_from_slice(&value[header_len..]);
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

/// Two streams of chunks, each in order, merged into one by end byte; a
/// chunk in both (a row being settled) comes once, from the first.
struct MergeByEnd<A: Iterator, B: Iterator> {
    a: Peekable<A>,
    b: Peekable<B>,
}

impl<A, B> MergeByEnd<A, B>
where
    A: Iterator<Item = Result<Chunk, StorageError>>,
    B: Iterator<Item = Result<Chunk, StorageError>>,
{
    fn new(a: A, b: B) -> Self {
        MergeByEnd {
            a: a.peekable(),
            b: b.peekable(),
        }
    }
}

impl<A, B> Iterator for MergeByEnd<A, B>
where
    A: Iterator<Item = Result<Chunk, StorageError>>,
    B: Iterator<Item = Result<Chunk, StorageError>>,
{
    type Item = Result<Chunk, StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        // An error goes first, so it is not skipped over.
        let take_a = match (self.a.peek(), self.b.peek()) {
            (None, None) => return None,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(Err(_)), _) => true,
            (_, Some(Err(_))) => false,
            (Some(Ok(a)), Some(Ok(b))) => match a.end.cmp(&b.end) {
                std::cmp::Ordering::Less => true,
                std::cmp::Ordering::Greater => false,
                std::cmp::Ordering::Equal => {
                    self.b.next();
                    true
                }
            },
        };
        if take_a { self.a.next() } else { self.b.next() }
    }
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
        unsettled: Arc<UnsettledIndex>,
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
        unsettled: Arc<UnsettledIndex>,
    },
}

/// The writer thread: groups queued jobs into one durable transaction
/// each, switches recent tables when the filling one is full, and settles
/// the full one a step per transaction.
struct Writer<'db> {
    db: &'db Database,
    settle_rows: usize,
    /// Key of the next recent row, in either table.
    next_seq: u64,
    /// The table small appends go to, and its first key.
    filling: RecentTable,
    filling_from: u64,
    /// Appends and bytes in the filling table.
    recent_rows: usize,
    recent_bytes: usize,
    /// The other table, while it is being settled.
    draining: Option<Drain>,
    /// The indexes of streams with appends in a recent table, by stream id.
    touched: HashMap<u64, Arc<UnsettledIndex>>,
}

/// A recent table being settled.
#[derive(Debug)]
struct Drain {
    table: RecentTable,
    /// Every row of the table has a smaller key.
    end: u64,
    /// The keys of its rows, stream by stream, each stream's in order.
    order: Vec<u64>,
    /// How many of `order` have moved into `chunks`.
    moved: usize,
}

/// What a group added to the filling table.
#[derive(Debug, Default)]
struct Filled {
    rows: usize,
    bytes: usize,
}

impl<'db> Writer<'db> {
    /// A writer for a database whose recent tables are empty (settled at
    /// open).
    fn new(db: &'db Database, settle_rows: usize) -> Self {
        Writer {
            db,
            settle_rows,
            next_seq: 0,
            filling: RecentTable::A,
            filling_from: 0,
            recent_rows: 0,
            recent_bytes: 0,
            draining: None,
            touched: HashMap::new(),
        }
    }

    fn run(mut self, jobs: &mpsc::Receiver<Job>) {
        while let Ok(first) = jobs.recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match jobs.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
            let outcome = self.commit_group(&group);
            if let Err(e) = &outcome {
                tracing::error!(error = %e, requests = group.len(), "acid commit failed");
            }
            for job in group {
                let _ = job.reply.send(outcome.clone());
            }
        }
    }

    fn commit_group(&mut self, group: &[Job]) -> Result<(), StorageError> {
        let full = self.recent_rows >= self.settle_rows || self.recent_bytes >= SETTLE_BYTES;
        // A full table starts settling and appends switch to the other one,
        // unless that one is still settling: then the full one fills on.
        let switching = full && self.draining.is_none();
        let (filling, drain) = if switching {
            (self.filling.other(), Some(self.start_drain()))
        } else {
            (self.filling, self.draining.take())
        };
        let first_seq = self.next_seq;
        let (filled, moved) = match self.write_group(group, filling, drain.as_ref()) {
            Ok(done) => done,
            Err(e) => {
                // What the failed transaction wrote is gone: the state stays
                // as it was (keys it used are skipped; index entries for its
                // rows find nothing, and go with the next settle).
                if !switching {
                    self.draining = drain;
                }
                return Err(e);
            }
        };
        if switching {
            self.filling = filling;
            self.filling_from = first_seq;
            self.recent_rows = 0;
            self.recent_bytes = 0;
        }
        self.recent_rows += filled.rows;
        self.recent_bytes += filled.bytes;
        let Some(mut drain) = drain else {
            return Ok(());
        };
        drain.moved = moved;
        if drain.moved < drain.order.len() {
            self.draining = Some(drain);
            return Ok(());
        }
        // The table is settled and dropped: every key below its end is in
        // `chunks`.
        for index in self.touched.values() {
            let mut index = index.lock();
            while index.front().is_some_and(|u| u.seq < drain.end) {
                index.pop_front();
            }
        }
        self.touched.retain(|_, index| !index.lock().is_empty());
        Ok(())
    }

    /// The filling table, as a table to settle: its keys gathered stream by
    /// stream from the indexes.
    fn start_drain(&self) -> Drain {
        let (from, end) = (self.filling_from, self.next_seq);
        let mut order = Vec::with_capacity(self.recent_rows);
        for index in self.touched.values() {
            let index = index.lock();
            order.extend(
                index
                    .iter()
                    .filter(|u| u.seq >= from && u.seq < end)
                    .map(|u| u.seq),
            );
        }
        Drain {
            table: self.filling,
            end,
            order,
            moved: 0,
        }
    }

    /// Writes `group` in one transaction, small appends into `filling`, and
    /// settles a slice of `drain` first; returns what the group added and
    /// how many of the drain's rows have moved.
    fn write_group(
        &mut self,
        group: &[Job],
        filling: RecentTable,
        drain: Option<&Drain>,
    ) -> Result<(Filled, usize), StorageError> {
        let mut txn = self.db.begin_write().map_err(io)?;
        txn.set_durability(Durability::Immediate);
        let moved = match drain {
            Some(drain) => {
                let (rows, bytes) = small_appends(group);
                let step = Step {
                    rows: drain.order.len().div_ceil(SETTLE_STEPS).max(2 * rows),
                    bytes: (SETTLE_BYTES / SETTLE_STEPS).max(2 * bytes),
                };
                settle(&txn, drain, step)?
            }
            None => 0,
        };
        let mut filled = Filled::default();
        {
            let mut streams = txn.open_table(STREAMS).map_err(io)?;
            let mut chunks = txn.open_table(CHUNKS).map_err(io)?;
            let mut recent = txn.open_table(filling.definition()).map_err(io)?;
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
                                .insert((record.id, *end), &value[RECENT_PREFIX..])
                                .map_err(io)?;
                        }
                    }
                    Op::Apply {
                        id,
                        path,
                        unsettled,
                        chunk,
                        producer,
                        stream_seq,
                        close,
                    } => {
                        if let Some((end, value)) = chunk {
                            if value.len() >= DIRECT_BYTES {
                                chunks
                                    .insert((*id, *end), &value[RECENT_PREFIX..])
                                    .map_err(io)?;
                            } else {
                                let seq = self.next_seq;
                                self.next_seq += 1;
                                recent.insert(seq, value.as_slice()).map_err(io)?;
                                filled.rows += 1;
                                filled.bytes += value.len();
                                unsettled.lock().push_back(Unsettled {
                                    end: *end,
                                    seq,
                                    table: filling,
                                });
                                self.touched
                                    .entry(*id)
                                    .or_insert_with(|| Arc::clone(unsettled));
                            }
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
                    Op::Remove {
                        id,
                        path,
                        unsettled,
                    } => {
                        // Only remove the row if it is still this stream's (the
                        // path may have been re-created since).
                        if load(&streams, path).is_ok_and(|r| r.id == *id) {
                            streams.remove(path.as_str()).map_err(io)?;
                        }
                        chunks
                            .retain_in((*id, 0)..=(*id, u64::MAX), |_, _| false)
                            .map_err(io)?;
                        let mut settling = Vec::new();
                        for entry in unsettled.lock().iter() {
                            if entry.table == filling {
                                recent.remove(entry.seq).map_err(io)?;
                            } else {
                                settling.push(entry.seq);
                            }
                        }
                        // The other table is opened only here: a group
                        // without removals never needs it.
                        if !settling.is_empty() {
                            let mut other =
                                txn.open_table(filling.other().definition()).map_err(io)?;
                            for seq in settling {
                                other.remove(seq).map_err(io)?;
                            }
                        }
                        producers
                            .retain_in((*id, "")..(*id + 1, ""), |_, _| false)
                            .map_err(io)?;
                    }
                }
            }
        }
        txn.commit().map_err(io)?;
        Ok((filled, moved))
    }
}

/// Rows and bytes of the small appends (those that go to a recent table)
/// in `group`.
fn small_appends(group: &[Job]) -> (usize, usize) {
    group
        .iter()
        .filter_map(|job| match &job.op {
            Op::Apply {
                chunk: Some((_, value)),
                ..
            } if value.len() < DIRECT_BYTES => Some(value.len()),
            _ => None,
        })
        .fold((0, 0), |(rows, bytes), len| (rows + 1, bytes + len))
}

/// How much one settle step moves at most: it stops after `rows` rows or
/// `bytes` bytes, whichever comes first.
#[derive(Debug, Clone, Copy)]
struct Step {
    rows: usize,
    bytes: usize,
}

/// Moves the next rows of `drain`'s order to their streams' places in
/// `chunks`, at most `step` of them; returns how many of the order have
/// moved. Once all have, drops the table and creates it again empty.
fn settle(
    txn: &::redb::WriteTransaction,
    drain: &Drain,
    step: Step,
) -> Result<usize, StorageError> {
    let mut moved = drain.moved;
    {
        let recent = txn.open_table(drain.table.definition()).map_err(io)?;
        let mut chunks = txn.open_table(CHUNKS).map_err(io)?;
        let (mut rows, mut bytes) = (0, 0);
        while moved < drain.order.len() && rows < step.rows && bytes < step.bytes {
            // A row of a stream removed since is gone.
            if let Some(value) = recent.get(drain.order[moved]).map_err(io)? {
                bytes += settle_row(&mut chunks, value.value())?;
                rows += 1;
            }
            moved += 1;
        }
    }
    if moved == drain.order.len() {
        drop_settled(txn, drain.table)?;
    }
    Ok(moved)
}

/// Settles every row of `table` (at startup, whatever a previous run left).
fn settle_all(txn: &::redb::WriteTransaction, table: RecentTable) -> Result<(), StorageError> {
    {
        let recent = txn.open_table(table.definition()).map_err(io)?;
        let mut chunks = txn.open_table(CHUNKS).map_err(io)?;
        for row in recent.iter().map_err(io)? {
            settle_row(&mut chunks, row.map_err(io)?.1.value())?;
        }
    }
    drop_settled(txn, table)
}

/// Moves one recent row's chunk to its stream's place in `chunks`; returns
/// the row's size.
fn settle_row(
    chunks: &mut ::redb::Table<(u64, u64), &[u8]>,
    value: &[u8],
) -> Result<usize, StorageError> {
    let (id, end, chunk) = split_recent(value)?;
    chunks.insert((id, end), chunk).map_err(io)?;
    Ok(value.len())
}

/// Drops a settled recent table, which frees its pages in one pass
/// (removing the rows one by one rebuilt its leaves again and again, half
/// the writer's time in a profile), and creates it again empty.
fn drop_settled(txn: &::redb::WriteTransaction, table: RecentTable) -> Result<(), StorageError> {
    txn.delete_table(table.definition()).map_err(io)?;
    txn.open_table(table.definition()).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{ExpiryRecord, Mutation};
    use ::redb::ReadableTableMetadata;

    /// A scratch data directory, removed on drop.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("ds-redb-unit-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn meta() -> StreamMeta {
        StreamMeta {
            content_type: "text/plain".into(),
            expiry: ExpiryRecord::TtlSecs(60),
            fork: None,
        }
    }

    fn message(body: &[u8]) -> JsonMessages {
        JsonMessages {
            encoded: body.to_vec(),
            ends: vec![body.len()],
        }
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
        let scratch = Scratch::new("merge");
        // No tail cache: every read goes to the tables.
        let engine = RedbEngine::open(&scratch.0, 4)
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
        let scratch = Scratch::new("reopen");
        let bodies = bodies(6);
        let tail = {
            let engine = RedbEngine::open(&scratch.0, 1000).expect("open");
            let log = create_stream(&engine, "s").await;
            append_all(&log, &bodies).await;
            assert_eq!(table_rows(&engine.db), (6, 0));
            log.tail()
        };
        let engine = reopen(&scratch.0, 1000);
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
        let scratch = Scratch::new("steps");
        let bodies = bodies(18);
        {
            // Eight rows fill a table; one-append groups then settle two
            // rows each (a share of eight rounds up to one; twice the
            // group's one row is two).
            let engine = RedbEngine::open(&scratch.0, 8)
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
        let engine = reopen(&scratch.0, 8);
        assert_eq!(each_table_rows(&engine.db), (0, 0, 18));
        let recovered = engine.recover().expect("recover");
        assert_eq!(read_all(&recovered[0].log), bodies.concat());
    }

    #[tokio::test]
    async fn a_settle_moves_rows_stream_by_stream() {
        let scratch = Scratch::new("by-stream");
        let engine = RedbEngine::open(&scratch.0, 8)
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
        let scratch = Scratch::new("remove-mid-settle");
        let engine = RedbEngine::open(&scratch.0, 8)
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
        let scratch = Scratch::new("large");
        let engine = RedbEngine::open(&scratch.0, 1000)
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
            let scratch = Scratch::new("upgrade");
            std::fs::create_dir_all(&scratch.0).expect("create the data directory");
            {
                let db = Database::create(scratch.0.join(DB_FILE)).expect("create");
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
            let engine = RedbEngine::open(&scratch.0, 1000).expect("open an old directory");
            let txn = engine.db.begin_read().expect("read");
            let meta = txn.open_table(META).expect("meta");
            let format = meta.get("format").expect("get").expect("a format");
            assert_eq!(format.value(), FORMAT, "from {old}");
            let settled = u64::from(old == FORMAT_V2);
            assert_eq!(each_table_rows(&engine.db), (0, 0, settled), "from {old}");
        }
    }

    #[test]
    fn header_round_trips_and_detects_truncation() {
        let header = ChunkHeader {
            messages_end: 7,
            ends: vec![3, 9],
        };
        let mut encoded = Vec::new();
        header.encode_into(&mut encoded);
        assert_eq!(ChunkHeader::decode(&encoded).expect("decode"), header);
        assert!(ChunkHeader::decode(&encoded[..10]).is_err());
    }
}
