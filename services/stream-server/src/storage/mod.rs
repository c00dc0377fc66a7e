//! Storage engines: where streams' bytes and durable state live.
//!
//! An [`Engine`] persists what must survive a restart: each stream's
//! configuration, its data, and the protocol state that changes with appends
//! (closure, producer state, `Stream-Seq`). A [`StreamLog`] is one stream's
//! data as the engine holds it, read as byte ranges that end on message
//! boundaries.
//!
//! Contracts every engine keeps:
//! * Offsets only grow; an append is all-or-nothing.
//! * [`Commit::wait`] resolves once the change is as durable as the mode
//!   promises; until then readers must not see it (the registry publishes
//!   the new tail only after the wait).
//! * Mutations of one stream are applied in the order they are submitted.
//!
//! * [`memory`] — nothing on disk; commits are immediate.
//! * [`file`] — `file-fast` and `file-durable`: checksummed log files;
//!   `file-durable` acknowledges through a shared journal. Its modules:
//!   the engine, one stream's log, the record format, the background
//!   syncer, the journal.
//! * [`redb`] — the `acid` mode: every change in one redb transaction with
//!   immediate durability, concurrent requests grouped into one transaction.
//!   Its modules: the engine, tables and formats, row layout, one stream's
//!   log, reads, the writer thread, settling.
//! * [`MessageBatch`] — the messages of one append on their way in.
//! * [`chunk`] — one stored append, and the reads the persistent engines
//!   share.

mod batch;
pub mod chunk;
pub mod file;
pub mod memory;
pub mod redb;

pub use batch::MessageBatch;

use crate::protocol::offset::Offset;
use crate::protocol::producer::ProducerState;
use crate::telemetry::Requester;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Which engine holds stream data (`DS_STORAGE__MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StorageMode {
    /// In memory; lost on restart.
    #[default]
    Memory,
    /// Log files; acknowledged once written to the OS, synced on an interval.
    FileFast,
    /// Log files; acknowledged once synced, concurrent appends sharing syncs.
    FileDurable,
    /// redb with a durable commit per group of requests.
    #[serde(alias = "redb")]
    Acid,
}

impl fmt::Display for StorageMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StorageMode::Memory => "memory",
            StorageMode::FileFast => "file-fast",
            StorageMode::FileDurable => "file-durable",
            StorageMode::Acid => "acid",
        })
    }
}

/// A storage failure. The request that hit it gets a 5xx; nothing is
/// acknowledged that was not stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    #[error("storage I/O failed: {0}")]
    Io(String),
    #[error("storage is corrupt: {0}")]
    Corrupt(String),
    #[error("data directory {dir} holds {found}; this server expects {expected}")]
    IncompatibleDataDir {
        dir: String,
        found: String,
        expected: String,
    },
    #[error("the storage engine has stopped")]
    Stopped,
}

/// How a stream expires, as persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpiryRecord {
    Never,
    TtlSecs(u64),
    /// Unix time in nanoseconds.
    AtUnixNanos(i128),
}

/// Where a fork's inherited data comes from, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkRecord {
    pub source: String,
    pub offset: Offset,
    pub sub_offset: u64,
    pub point: Offset,
}

/// A stream's fixed configuration, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamMeta {
    pub content_type: String,
    pub expiry: ExpiryRecord,
    pub fork: Option<ForkRecord>,
}

/// One producer's state on a stream (§5.2.1), as a mutation stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerEntry {
    /// The `Producer-Id`.
    pub id: String,
    pub state: ProducerState,
}

/// The producer request that closed a stream, kept so that its retry is
/// recognised as a duplicate (§5.2.1).
///
/// Persisted (in the acid engine's `streams` rows) as the JSON array
/// `[id, epoch, seq]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "(String, u64, u64)", into = "(String, u64, u64)")]
pub struct ClosingProducer {
    /// The `Producer-Id`.
    pub id: String,
    pub epoch: u64,
    pub seq: u64,
}

impl From<(String, u64, u64)> for ClosingProducer {
    fn from((id, epoch, seq): (String, u64, u64)) -> Self {
        ClosingProducer { id, epoch, seq }
    }
}

impl From<ClosingProducer> for (String, u64, u64) {
    fn from(producer: ClosingProducer) -> Self {
        (producer.id, producer.epoch, producer.seq)
    }
}

/// How a mutation closes its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Close {
    /// A close without producer headers.
    Plain,
    /// A close by an idempotent producer's request, remembered with it.
    By(ClosingProducer),
}

impl Close {
    /// The request that closed the stream, if a producer's.
    pub fn producer(&self) -> Option<&ClosingProducer> {
        match self {
            Close::Plain => None,
            Close::By(producer) => Some(producer),
        }
    }

    pub fn into_producer(self) -> Option<ClosingProducer> {
        match self {
            Close::Plain => None,
            Close::By(producer) => Some(producer),
        }
    }
}

/// One request's changes to a stream, applied atomically.
#[derive(Debug, Default)]
pub struct Mutation {
    pub data: Option<MessageBatch>,
    pub producer: Option<ProducerEntry>,
    pub stream_seq: Option<String>,
    /// `Some` closes the stream.
    pub close: Option<Close>,
}

/// Everything an engine recovered about one stream at startup.
#[derive(Debug)]
pub struct Recovered {
    pub path: String,
    pub meta: StreamMeta,
    pub log: Arc<dyn StreamLog>,
    pub closed: bool,
    pub closed_by: Option<ClosingProducer>,
    /// Each producer's state, by `Producer-Id`.
    pub producers: HashMap<String, ProducerState>,
    pub last_seq: Option<String>,
    pub soft_deleted: bool,
}

/// A stored change on its way to durability.
#[derive(Debug)]
pub struct Commit(Option<oneshot::Receiver<Result<(), StorageError>>>);

impl Commit {
    /// A change that is already as durable as it will be.
    pub fn done() -> Self {
        Commit(None)
    }

    /// A change a storage thread makes durable later, reporting through
    /// the returned [`Reply`]. Call on the request's task: the reply
    /// remembers the request for tracing.
    pub fn pending() -> (Reply, Commit) {
        let (sender, receiver) = oneshot::channel();
        let reply = Reply {
            sender,
            requester: Requester::current(),
        };
        (reply, Commit(Some(receiver)))
    }

    /// Whether there is anything to wait for.
    pub fn is_pending(&self) -> bool {
        self.0.is_some()
    }

    /// Resolves when the change is durable.
    pub async fn wait(self) -> Result<(), StorageError> {
        match self.0 {
            None => Ok(()),
            Some(receiver) => receiver.await.unwrap_or(Err(StorageError::Stopped)),
        }
    }
}

/// Where a storage thread reports whether a change became durable.
#[derive(Debug)]
pub struct Reply {
    sender: oneshot::Sender<Result<(), StorageError>>,
    /// The request waiting for it, which the group commit links to.
    pub requester: Requester,
}

impl Reply {
    /// Reports the outcome; a request that stopped waiting is no error.
    pub fn send(self, outcome: Result<(), StorageError>) {
        let _ = self.sender.send(outcome);
    }
}

/// A range of stream data ending on a message boundary.
#[derive(Debug, Default)]
pub struct LogSlice {
    pub data: Vec<Bytes>,
    /// Stream byte position just past each message in `data`, in order;
    /// the last is `next.bytes`.
    pub ends: Vec<u64>,
    /// The offset just past the returned data.
    pub next: Offset,
}

impl LogSlice {
    pub fn empty(at: Offset) -> Self {
        LogSlice {
            data: Vec::new(),
            ends: Vec::new(),
            next: at,
        }
    }

    /// Adds `later`, which starts where this slice ends.
    pub fn extend(&mut self, later: LogSlice) {
        if !later.is_empty() {
            self.data.extend(later.data);
            self.ends.extend(later.ends);
            self.next = later.next;
        }
    }

    /// The data of each message, in order: slices of `data`, no copies.
    pub fn messages(&self) -> Vec<Vec<Bytes>> {
        let mut pos = self.next.bytes - self.len() as u64;
        let mut ends = self.ends.iter().copied().peekable();
        let mut messages = Vec::with_capacity(self.ends.len());
        let mut current = Vec::new();
        for piece in &self.data {
            let mut at = 0;
            while at < piece.len() {
                let Some(&end) = ends.peek() else { break };
                let take = ((end - pos) as usize).min(piece.len() - at);
                current.push(piece.slice(at..at + take));
                at += take;
                pos += take as u64;
                if pos == end {
                    messages.push(std::mem::take(&mut current));
                    ends.next();
                }
            }
        }
        messages
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn len(&self) -> usize {
        self.data.iter().map(Bytes::len).sum()
    }
}

/// One stream's data. Appends are serialised by the caller (the stream's
/// lock); reads may run concurrently with them.
pub trait StreamLog: Send + Sync + fmt::Debug {
    /// Where this log begins: zero, or a fork's divergence point.
    fn base(&self) -> Offset;

    /// The offset after the last message written (durable or not).
    fn tail(&self) -> Offset;

    /// The offset of the message boundary at byte position `bytes`, if any
    /// (the base and the tail included).
    fn boundary_at(&self, bytes: u64) -> Result<Option<Offset>, StorageError>;

    /// Reads from `from` (a boundary) to at most `limit` (a boundary byte
    /// position), returning at most `max_bytes` unless the first message
    /// alone is larger.
    fn read(&self, from: Offset, limit: u64, max_bytes: usize) -> Result<LogSlice, StorageError>;

    /// Whether reads may block on disk I/O (and so belong on a blocking
    /// thread).
    fn reads_block(&self) -> bool;

    /// Whether a read starting at stream byte `bytes` may block on disk
    /// I/O; engines that keep recent data in memory can say no for reads
    /// at the tail.
    fn reads_block_from(&self, bytes: u64) -> bool {
        let _ = bytes;
        self.reads_block()
    }

    /// Applies one request's changes (the caller validated them).
    fn apply(&self, mutation: Mutation) -> Result<Commit, StorageError>;

    /// Marks the stream deleted but still read by forks.
    fn soft_delete(&self) -> Result<Commit, StorageError>;

    /// Removes the stream and all its data.
    fn remove(&self) -> Result<Commit, StorageError>;
}

/// A storage engine.
pub trait Engine: Send + Sync + fmt::Debug {
    /// Every stream stored, in creation order (fork sources before forks).
    fn recover(&self) -> Result<Vec<Recovered>, StorageError>;

    /// Stores a new stream with its initial messages.
    fn create(
        &self,
        path: &str,
        meta: &StreamMeta,
        base: Offset,
        initial: Vec<MessageBatch>,
        closed: bool,
    ) -> Result<(Arc<dyn StreamLog>, Commit), StorageError>;

    /// Makes everything acknowledged so far durable (called at shutdown).
    fn flush(&self) -> Result<(), StorageError> {
        Ok(())
    }
}

/// Settings of the persistent engines.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// `file-fast`: how often written logs are synced.
    pub sync_interval: std::time::Duration,
    /// `file-durable`: size of the shared journal.
    pub journal_bytes: u64,
    /// Persistent modes: bytes of each stream's newest appends kept in
    /// memory for reads at the tail.
    pub tail_cache_bytes: usize,
    /// `acid`: unsettled appends that make the writer settle them.
    pub acid_settle_rows: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            sync_interval: std::time::Duration::from_secs(1),
            journal_bytes: 64 * 1024 * 1024,
            tail_cache_bytes: chunk::RecentChunks::DEFAULT_BUDGET,
            acid_settle_rows: redb::SETTLE_ROWS,
        }
    }
}

/// Opens the engine configured by `mode`.
pub fn open(
    mode: StorageMode,
    data_dir: &std::path::Path,
    tuning: &Tuning,
) -> Result<Arc<dyn Engine>, StorageError> {
    Ok(match mode {
        StorageMode::Memory => Arc::new(memory::MemoryEngine),
        StorageMode::FileFast => Arc::new(
            file::FileEngine::open(data_dir, file::SyncPolicy::Interval(tuning.sync_interval))?
                .with_tail_cache(tuning.tail_cache_bytes),
        ),
        StorageMode::FileDurable => Arc::new(
            file::FileEngine::open(
                data_dir,
                file::SyncPolicy::Journal {
                    capacity: tuning.journal_bytes,
                },
            )?
            .with_tail_cache(tuning.tail_cache_bytes),
        ),
        StorageMode::Acid => Arc::new(
            redb::RedbEngine::open(data_dir, tuning.acid_settle_rows)?
                .with_tail_cache(tuning.tail_cache_bytes),
        ),
    })
}
