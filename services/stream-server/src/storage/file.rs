//! The `file-fast` and `file-durable` engines: one directory per stream
//! holding its configuration and an append-only log of checksummed records.
//!
//! Layout under the data directory:
//! * `FORMAT` — the on-disk format; another value refuses to start.
//! * `streams/<id>/meta.json` — path, configuration and start offset,
//!   written before the directory is renamed into place, so a stream is
//!   either fully created or absent.
//! * `streams/<id>/log` — one record per request: `len u32 | crc32 u32 |
//!   body`. A body holds everything the request changed (data, producer
//!   state, `Stream-Seq`, closure) so they persist atomically: a torn or
//!   corrupt record is dropped whole at startup and the log truncated there.
//! * `trash/` — deleted streams, renamed here (atomic) and then removed.
//! * `journal/` — `file-durable`'s shared journal (see [`journal`]).
//!
//! A record is written by the request that makes it, under the stream's
//! writer lock, so records land in order and an append costs one `pwrite`
//! into the page cache (a few microseconds; large records first tell the
//! runtime the thread will block). Every append is thus written to the OS
//! before it is acknowledged and survives a crash of the process.
//! Syncing runs on the engine's own threads, never on the async runtime.
//! `file-durable` also queues each record for the shared journal and
//! acknowledges once it is synced there: the records of all appends waiting
//! together are written to the journal in one `pwrite` and made durable by
//! one `fdatasync` (group commit); the logs themselves are synced when the
//! journal checkpoints. `file-fast`'s I/O thread syncs the logs written
//! since its last pass every `sync_interval`.
//! Reads `pread` only the records they need, found through a sparse index,
//! so memory does not grow with stream size.

mod journal;

use super::chunk::{self, Chunk, RecentChunks};
use super::{
    ClosedBy, Commit, Engine, LogSlice, Mutation, Recovered, StorageError, StreamLog, StreamMeta,
};
use crate::protocol::json::JsonMessages;
use crate::protocol::offset::Offset;
use crate::protocol::producer::ProducerState;
use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;
use tokio::sync::oneshot;

const FORMAT: &str = "durable-streams-rs file v1";
const FORMAT_FILE: &str = "FORMAT";
const META_FILE: &str = "meta.json";
const LOG_FILE: &str = "log";
/// A sparse index entry is kept for every this many bytes of log.
const INDEX_EVERY: u64 = 64 * 1024;
/// Bytes read per `pread` when scanning records.
const READ_BLOCK: usize = 256 * 1024;
/// Record header: body length and its CRC-32.
const HEADER: usize = 8;
/// Larger records are written under `block_in_place`, so the runtime moves
/// the thread's other tasks elsewhere while the copy runs.
const INLINE_WRITE_MAX: usize = 256 * 1024;

const KIND_MUTATION: u8 = 1;
const KIND_SOFT_DELETE: u8 = 2;

const HAS_DATA: u8 = 1;
const HAS_PRODUCER: u8 = 2;
const HAS_SEQ: u8 = 4;
const CLOSES: u8 = 8;
const HAS_CLOSED_BY: u8 = 16;

fn io(e: impl std::fmt::Display) -> StorageError {
    StorageError::Io(e.to_string())
}

/// How appends reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// Synced in a shared journal of `capacity` bytes before acknowledging.
    Journal { capacity: u64 },
    /// `fdatasync` in the background at this interval.
    Interval(Duration),
}

/// The smallest journal `Sync::Journal` accepts.
pub const MIN_JOURNAL_BYTES: u64 = journal::MIN_CAPACITY;

/// A stream's `meta.json`.
#[derive(Debug, Serialize, Deserialize)]
struct MetaFile {
    path: String,
    base: Offset,
    meta: StreamMeta,
}

/// The engine of `file-fast` and `file-durable`.
#[derive(Debug)]
pub struct FileEngine {
    dir: PathBuf,
    next_id: AtomicU64,
    syncer: Syncer,
    /// Bytes of each stream's newest appends kept in memory.
    tail_cache: usize,
}

impl FileEngine {
    /// Opens (or initialises) `data_dir`, refusing one of another format.
    pub fn open(data_dir: &Path, sync: Sync) -> Result<Self, StorageError> {
        fs::create_dir_all(data_dir).map_err(io)?;
        let format_path = data_dir.join(FORMAT_FILE);
        match fs::read_to_string(&format_path) {
            Ok(found) if found.trim() == FORMAT => {}
            Ok(found) => {
                return Err(StorageError::IncompatibleDataDir {
                    dir: data_dir.display().to_string(),
                    found: found.trim().to_owned(),
                    expected: FORMAT.into(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if fs::read_dir(data_dir).map_err(io)?.next().is_some() {
                    return Err(StorageError::IncompatibleDataDir {
                        dir: data_dir.display().to_string(),
                        found: "files of another storage mode".into(),
                        expected: FORMAT.into(),
                    });
                }
                write_durably(&format_path, format!("{FORMAT}\n").as_bytes())?;
            }
            Err(e) => return Err(io(e)),
        }
        fs::create_dir_all(data_dir.join("streams")).map_err(io)?;
        fs::create_dir_all(data_dir.join("trash")).map_err(io)?;
        // A journal left by file-durable goes into the logs before they are
        // read, whichever mode opens them now.
        journal::replay(data_dir, &data_dir.join("streams"))?;
        let journal = match sync {
            Sync::Journal { capacity } => Some(journal::Shards::start(data_dir, capacity)?),
            Sync::Interval(_) => {
                journal::remove(data_dir)?;
                None
            }
        };
        // Rises towards the hard limit: every stream keeps its log open.
        if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
            tracing::warn!("cannot raise the open file limit: {e}");
        }
        Ok(FileEngine {
            dir: data_dir.to_owned(),
            next_id: AtomicU64::new(1),
            syncer: Syncer::start(sync, journal)?,
            tail_cache: RecentChunks::DEFAULT_BUDGET,
        })
    }

    /// Keeps up to `bytes` of each stream's newest appends in memory for
    /// reads at the tail (0: none).
    pub fn with_tail_cache(mut self, bytes: usize) -> Self {
        self.tail_cache = bytes;
        self
    }

    fn streams_dir(&self) -> PathBuf {
        self.dir.join("streams")
    }

    fn open_log(
        &self,
        id: u64,
        dir: PathBuf,
        path: &str,
        base: Offset,
    ) -> Result<FileLog, StorageError> {
        // Records are written at their reserved positions (pwrite), which
        // O_APPEND would ignore.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join(LOG_FILE))
            .map_err(io)?;
        Ok(FileLog {
            id,
            path: path.to_owned(),
            dir,
            trash: self.dir.join("trash"),
            base,
            file: Arc::new(file),
            writer: Mutex::new(Writer {
                len: 0,
                tail: base,
                index: Vec::new(),
                recent: RecentChunks::new(self.tail_cache),
                broken: false,
            }),
            written: AtomicU64::new(0),
            unsynced: Arc::new(AtomicBool::new(false)),
            syncer: self.syncer.clone(),
        })
    }
}

impl Engine for FileEngine {
    fn recover(&self) -> Result<Vec<Recovered>, StorageError> {
        // Deletions interrupted by a crash finish now.
        for entry in fs::read_dir(self.dir.join("trash")).map_err(io)? {
            let path = entry.map_err(io)?.path();
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(|e| StorageError::Io(format!("{}: {e}", path.display())))?;
        }
        let mut dirs = Vec::new();
        for entry in fs::read_dir(self.streams_dir()).map_err(io)? {
            let path = entry.map_err(io)?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match name.parse::<u64>() {
                Ok(id) if path.is_dir() => dirs.push((id, path)),
                // A creation that never completed: never visible, so drop it.
                _ if name.ends_with(".new") && path.is_dir() => fs::remove_dir_all(&path)
                    .map_err(|e| StorageError::Io(format!("{}: {e}", path.display())))?,
                _ => {
                    tracing::warn!(path = %path.display(), "ignoring a stray entry in the streams directory")
                }
            }
        }
        dirs.sort_by_key(|(id, _)| *id);
        let mut recovered = Vec::with_capacity(dirs.len());
        for (id, dir) in dirs {
            self.next_id.fetch_max(id + 1, Ordering::Relaxed);
            let meta: MetaFile =
                serde_json::from_slice(&fs::read(dir.join(META_FILE)).map_err(io)?)
                    .map_err(|e| StorageError::Corrupt(format!("{}: {e}", dir.display())))?;
            let log = self.open_log(id, dir, &meta.path, meta.base)?;
            let replayed = log.replay()?;
            recovered.push(Recovered {
                path: meta.path,
                meta: meta.meta,
                log: Arc::new(log),
                closed: replayed.closed,
                closed_by: replayed.closed_by,
                producers: replayed.producers.into_iter().collect(),
                last_seq: replayed.last_seq,
                soft_deleted: replayed.soft_deleted,
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
        let staging = self.streams_dir().join(format!("{id}.new"));
        let dir = self.streams_dir().join(id.to_string());
        fs::create_dir_all(&staging).map_err(io)?;
        let meta_file = MetaFile {
            path: path.to_owned(),
            base,
            meta: meta.clone(),
        };
        let meta_json = serde_json::to_vec_pretty(&meta_file).map_err(io)?;
        let durable = self.syncer.journal.is_some();
        let mut records = Vec::new();
        let mut tail = base;
        for messages in &initial {
            let mutation = Mutation {
                data: Some(messages.clone()),
                ..Mutation::default()
            };
            records.extend(encode_mutation(&mutation, &mut tail));
        }
        if closed {
            let mutation = Mutation {
                close: Some(None),
                ..Mutation::default()
            };
            records.extend(encode_mutation(&mutation, &mut tail));
        }
        // Runs while the registry holds the path's slot: page-cache writes
        // only; file-durable makes them durable through the syncer below.
        let written = (|| -> std::io::Result<()> {
            write_file(&staging.join(META_FILE), &meta_json, false)?;
            write_file(&staging.join(LOG_FILE), &records, false)?;
            // The rename makes the stream exist, all at once.
            fs::rename(&staging, &dir)?;
            Ok(())
        })();
        if let Err(e) = written {
            let _ = fs::remove_dir_all(&staging);
            return Err(io(e));
        }
        let log = self.open_log(id, dir, path, base)?;
        log.replay()?;
        let commit = if durable {
            // One filesystem sync covers the new files and the rename.
            self.syncer.sync_filesystem(Arc::clone(&log.file))?
        } else {
            log.mark_unsynced()?;
            Commit::done()
        };
        Ok((Arc::new(log), commit))
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.syncer.flush()
    }
}

/// Writes a new file, optionally synced.
fn write_file(path: &Path, contents: &[u8], sync: bool) -> std::io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(contents)?;
    if sync {
        file.sync_data()?;
    }
    Ok(())
}

/// Writes a small file so it is complete or absent after a crash.
fn write_durably(path: &Path, contents: &[u8]) -> Result<(), StorageError> {
    let staging = path.with_extension("new");
    write_file(&staging, contents, true).map_err(io)?;
    fs::rename(&staging, path).map_err(io)?;
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Makes the entries of directory `dir` (creations, renames, removals)
/// durable.
fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

/// One stream's log file.
#[derive(Debug)]
pub struct FileLog {
    id: u64,
    path: String,
    dir: PathBuf,
    trash: PathBuf,
    base: Offset,
    file: Arc<File>,
    writer: Mutex<Writer>,
    /// Bytes of the log actually written; reads never go past it.
    written: AtomicU64,
    /// file-fast: written since the I/O thread's last sync pass, which
    /// already knows of this log.
    unsynced: Arc<AtomicBool>,
    syncer: Syncer,
}

/// Where the log ends, and the sparse index of its data records.
#[derive(Debug)]
struct Writer {
    /// Bytes of complete records in the log file.
    len: u64,
    tail: Offset,
    index: Vec<IndexEntry>,
    /// The newest appends, so tail reads skip the disk.
    recent: RecentChunks,
    /// A failed write could not be undone: later records would follow
    /// garbage, so the log takes no more until restart (whose replay drops
    /// the damaged tail).
    broken: bool,
}

/// The first data record at or after some log position.
#[derive(Debug, Clone, Copy)]
struct IndexEntry {
    /// Stream position where the record's data starts.
    data_start: u64,
    /// Log file position of the record.
    file_pos: u64,
}

impl Writer {
    fn note_data_record(&mut self, data_start: u64, file_pos: u64) {
        let due = self
            .index
            .last()
            .is_none_or(|last| file_pos >= last.file_pos + INDEX_EVERY);
        if due {
            self.index.push(IndexEntry {
                data_start,
                file_pos,
            });
        }
    }
}

/// State rebuilt by replaying a log.
#[derive(Debug, Default)]
struct Replayed {
    closed: bool,
    closed_by: Option<ClosedBy>,
    producers: HashMap<String, ProducerState>,
    last_seq: Option<String>,
    soft_deleted: bool,
}

impl Replayed {
    /// Applies a mutation record's protocol state (its data is indexed by
    /// the caller).
    fn apply(&mut self, record: MutationRecord) {
        if let Some((id, state)) = record.producer {
            self.producers.insert(id, state);
        }
        if let Some(seq) = record.stream_seq {
            self.last_seq = Some(seq);
        }
        if record.closes {
            self.closed = true;
            self.closed_by = record.closed_by;
        }
    }
}

impl FileLog {
    /// Reads the whole log once: verifies every record, truncates a torn
    /// or corrupt tail, rebuilds the index and the protocol state.
    fn replay(&self) -> Result<Replayed, StorageError> {
        let mut replayed = Replayed::default();
        let mut writer = self.writer.lock();
        let file_len = self.file.metadata().map_err(io)?.len();
        let mut records = Records::new(&self.file, 0, file_len);
        let mut tail = self.base;
        let end = loop {
            let pos = records.pos;
            let damage = match records.next_record() {
                Ok(None) => break pos,
                Err(reason) => reason,
                Ok(Some(body)) => match decode(&body) {
                    Ok(Decoded::SoftDelete) => {
                        replayed.soft_deleted = true;
                        continue;
                    }
                    Ok(Decoded::Mutation(record)) => match &record.chunk {
                        Some(chunk) if chunk.start() != tail.bytes => format!(
                            "record at {pos} starts at byte {}, expected {}",
                            chunk.start(),
                            tail.bytes
                        ),
                        chunk => {
                            if let Some(chunk) = chunk {
                                writer.note_data_record(tail.bytes, pos);
                                tail = Offset::new(chunk.messages_end, chunk.end);
                            }
                            replayed.apply(record);
                            continue;
                        }
                    },
                    Err(e) => format!("record at {pos}: {e}"),
                },
            };
            // Everything from the first bad record on is a torn or corrupt
            // tail: what follows it cannot be trusted to chain on.
            tracing::warn!(
                stream = %self.path,
                position = pos,
                discarded_bytes = file_len - pos,
                reason = %damage,
                "damaged log tail discarded"
            );
            self.file.set_len(pos).map_err(io)?;
            self.file.sync_all().map_err(io)?;
            break pos;
        };
        writer.len = end;
        writer.tail = tail;
        self.written.store(end, Ordering::Release);
        Ok(replayed)
    }

    /// Writes `record` at the end of the log; the returned commit resolves
    /// once it is as durable as the mode promises. The caller holds the
    /// writer lock, which keeps records in order and the log free of holes.
    /// On error nothing was added to the log.
    fn write(&self, writer: &mut Writer, record: Vec<u8>) -> Result<Commit, StorageError> {
        if writer.broken {
            return Err(StorageError::Io(
                "an earlier write to this log failed and could not be undone".into(),
            ));
        }
        let pos = writer.len;
        let written = blocking_if_large(record.len(), || self.file.write_all_at(&record, pos));
        if let Err(e) = written {
            // Never leave half a record behind.
            if let Err(undo) = self.file.set_len(pos) {
                tracing::error!(stream = %self.path, error = %undo, "cannot cut a failed write from the log");
                writer.broken = true;
            }
            return Err(io(e));
        }
        writer.len += record.len() as u64;
        self.written.store(writer.len, Ordering::Release);
        match &self.syncer.journal {
            // Queued while the writer lock is held, so a stream's records
            // reach its journal shard in log order.
            Some(journal) => {
                let (reply, receiver) = oneshot::channel();
                let request = if journal.takes(record.len()) {
                    let entry = journal::Entry {
                        stream: self.id,
                        pos,
                        record,
                    };
                    journal::Request::Append(entry, reply)
                } else {
                    journal::Request::SyncLog(Arc::clone(&self.file), reply)
                };
                journal.send(self.id, request)?;
                Ok(Commit::pending(receiver))
            }
            None => {
                self.mark_unsynced()?;
                Ok(Commit::done())
            }
        }
    }

    /// Makes sure the next interval sync pass covers this log; only the
    /// first write after a pass tells the I/O thread.
    fn mark_unsynced(&self) -> Result<(), StorageError> {
        if self.unsynced.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.syncer
            .unsynced(self.id, Arc::clone(&self.file), Arc::clone(&self.unsynced))
    }

    /// The data records from the last one indexed at or before stream
    /// byte `from` on, decoded, in order.
    fn chunks_from(&self, from: u64) -> impl Iterator<Item = Result<Chunk, StorageError>> + '_ {
        let mut records = self.scan_from(from);
        std::iter::from_fn(move || {
            loop {
                match records.next_record() {
                    Ok(None) => return None,
                    Err(reason) => return Some(Err(StorageError::Corrupt(reason))),
                    Ok(Some(body)) => match decode(&body) {
                        Ok(Decoded::Mutation(MutationRecord {
                            chunk: Some(chunk), ..
                        })) => return Some(Ok(chunk)),
                        Ok(_) => continue,
                        Err(e) => return Some(Err(e)),
                    },
                }
            }
        })
    }

    /// Records from the last indexed data record at or before `from` on.
    fn scan_from(&self, from: u64) -> Records<'_> {
        let (start, len) = {
            let writer = self.writer.lock();
            let i = writer.index.partition_point(|e| e.data_start <= from);
            let start = if i == 0 {
                0
            } else {
                writer.index[i - 1].file_pos
            };
            (start, self.written.load(Ordering::Acquire))
        };
        Records::new(&self.file, start, len)
    }
}

impl StreamLog for FileLog {
    fn base(&self) -> Offset {
        self.base
    }

    fn tail(&self) -> Offset {
        self.writer.lock().tail
    }

    fn boundary_at(&self, bytes: u64) -> Result<Option<Offset>, StorageError> {
        if bytes == self.base.bytes {
            return Ok(Some(self.base));
        }
        let before = bytes.saturating_sub(1);
        if let Some(recent) = self.writer.lock().recent.from(before) {
            return chunk::boundary_in(recent.into_iter().map(Ok), bytes);
        }
        chunk::boundary_in(self.chunks_from(before), bytes)
    }

    fn read(&self, from: Offset, limit: u64, max_bytes: usize) -> Result<LogSlice, StorageError> {
        if let Some(recent) = self.writer.lock().recent.from(from.bytes) {
            return chunk::read_chunks(recent.into_iter().map(Ok), from, limit, max_bytes);
        }
        chunk::read_chunks(self.chunks_from(from.bytes), from, limit, max_bytes)
    }

    fn reads_block(&self) -> bool {
        true
    }

    fn reads_block_from(&self, bytes: u64) -> bool {
        // A read from `bytes` first checks the boundary ending there.
        !self.writer.lock().recent.covers(bytes.saturating_sub(1))
    }

    fn apply(&self, mutation: Mutation) -> Result<Commit, StorageError> {
        let mut writer = self.writer.lock();
        let mut tail = writer.tail;
        let record = encode_mutation(&mutation, &mut tail);
        let (data_start, record_pos) = (writer.tail.bytes, writer.len);
        let commit = self.write(&mut writer, record)?;
        if let Some(messages) = &mutation.data {
            writer.note_data_record(data_start, record_pos);
            let appended = Chunk::appended(messages, writer.tail);
            writer.recent.remember(appended);
        }
        writer.tail = tail;
        Ok(commit)
    }

    fn soft_delete(&self) -> Result<Commit, StorageError> {
        let mut writer = self.writer.lock();
        self.write(&mut writer, frame(&[KIND_SOFT_DELETE]))
    }

    fn remove(&self) -> Result<Commit, StorageError> {
        self.syncer.remove(RemoveJob {
            id: self.id,
            dir: self.dir.clone(),
            trash: self.trash.join(self.id.to_string()),
        })
    }
}

/// Frames a record body: length, CRC-32, body.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(&[0; HEADER]);
    out.extend_from_slice(body);
    frame_in_place(&mut out);
    out
}

/// Writes the length and CRC-32 of `framed[HEADER..]` into its header.
fn frame_in_place(framed: &mut [u8]) {
    let (header, body) = framed.split_at_mut(HEADER);
    header[..4].copy_from_slice(&(body.len() as u32).to_le_bytes());
    header[4..].copy_from_slice(&crc32fast::hash(body).to_le_bytes());
}

/// Encodes one request's changes as a framed record, advancing `tail`.
fn encode_mutation(mutation: &Mutation, tail: &mut Offset) -> Vec<u8> {
    let mut flags = 0;
    // The header is filled in last; the body's fixed parts and the data
    // are sized up front so the record is built in one allocation.
    let data_len = mutation
        .data
        .as_ref()
        .map_or(0, |m| 20 + 4 * m.ends.len() + m.encoded.len());
    let mut body = Vec::with_capacity(HEADER + 2 + data_len + 64);
    body.extend_from_slice(&[0; HEADER]);
    body.extend_from_slice(&[KIND_MUTATION, 0]);
    if let Some(messages) = &mutation.data {
        flags |= HAS_DATA;
        let end = tail.bytes + messages.encoded.len() as u64;
        let messages_end = tail.messages + messages.ends.len() as u64;
        body.extend_from_slice(&messages_end.to_le_bytes());
        body.extend_from_slice(&end.to_le_bytes());
        body.extend_from_slice(&(messages.ends.len() as u32).to_le_bytes());
        for &e in &messages.ends {
            body.extend_from_slice(&(e as u32).to_le_bytes());
        }
        body.extend_from_slice(&messages.encoded);
        *tail = Offset::new(messages_end, end);
    }
    if let Some((id, state)) = &mutation.producer {
        flags |= HAS_PRODUCER;
        body.extend_from_slice(&state.epoch.to_le_bytes());
        body.extend_from_slice(&state.last_seq.to_le_bytes());
        put_str(&mut body, id);
    }
    if let Some(seq) = &mutation.stream_seq {
        flags |= HAS_SEQ;
        put_str(&mut body, seq);
    }
    if let Some(closed_by) = &mutation.close {
        flags |= CLOSES;
        if let Some((id, epoch, seq)) = closed_by {
            flags |= HAS_CLOSED_BY;
            put_str(&mut body, id);
            body.extend_from_slice(&epoch.to_le_bytes());
            body.extend_from_slice(&seq.to_le_bytes());
        }
    }
    body[HEADER + 1] = flags;
    frame_in_place(&mut body);
    body
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

#[derive(Debug, Default)]
struct MutationRecord {
    chunk: Option<Chunk>,
    producer: Option<(String, ProducerState)>,
    stream_seq: Option<String>,
    closes: bool,
    closed_by: Option<ClosedBy>,
}

enum Decoded {
    Mutation(MutationRecord),
    SoftDelete,
}

/// Reads fields from a record body.
struct Cursor<'a> {
    body: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StorageError> {
        let out = self
            .body
            .get(self.pos..self.pos + n)
            .ok_or_else(|| StorageError::Corrupt("record body is truncated".into()))?;
        self.pos += n;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, StorageError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, StorageError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn string(&mut self) -> Result<String, StorageError> {
        let len = self.u32()? as usize;
        String::from_utf8(self.take(len)?.to_vec())
            .map_err(|_| StorageError::Corrupt("record string is not UTF-8".into()))
    }
}

fn decode(body: &Bytes) -> Result<Decoded, StorageError> {
    let mut c = Cursor { body, pos: 0 };
    match c.take(1)?[0] {
        KIND_SOFT_DELETE => Ok(Decoded::SoftDelete),
        KIND_MUTATION => {
            let flags = c.take(1)?[0];
            let mut record = MutationRecord::default();
            if flags & HAS_DATA != 0 {
                let messages_end = c.u64()?;
                let end = c.u64()?;
                let count = c.u32()? as usize;
                let ends = (0..count).map(|_| c.u32()).collect::<Result<Vec<_>, _>>()?;
                let len = ends.last().copied().unwrap_or(0) as usize;
                let start = c.pos;
                c.take(len)?;
                record.chunk = Some(Chunk {
                    messages_end,
                    end,
                    ends,
                    data: body.slice(start..start + len),
                });
            }
            if flags & HAS_PRODUCER != 0 {
                let epoch = c.u64()?;
                let last_seq = c.u64()?;
                record.producer = Some((c.string()?, ProducerState { epoch, last_seq }));
            }
            if flags & HAS_SEQ != 0 {
                record.stream_seq = Some(c.string()?);
            }
            if flags & CLOSES != 0 {
                record.closes = true;
                if flags & HAS_CLOSED_BY != 0 {
                    let id = c.string()?;
                    let epoch = c.u64()?;
                    let seq = c.u64()?;
                    record.closed_by = Some((id, epoch, seq));
                }
            }
            Ok(Decoded::Mutation(record))
        }
        other => Err(StorageError::Corrupt(format!(
            "unknown record kind {other}"
        ))),
    }
}

/// Sequential, checksum-verified reading of records with large `pread`s.
struct Records<'a> {
    file: &'a File,
    /// Log position of the next record.
    pos: u64,
    /// Log length to read up to.
    len: u64,
    buffer: Bytes,
    /// Log position of `buffer[0]`.
    buffer_pos: u64,
}

impl<'a> Records<'a> {
    fn new(file: &'a File, pos: u64, len: u64) -> Self {
        Records {
            file,
            pos,
            len,
            buffer: Bytes::new(),
            buffer_pos: pos,
        }
    }

    /// Bytes `[pos, pos + n)` of the log, reading more when needed.
    fn bytes(&mut self, pos: u64, n: usize) -> Result<Bytes, String> {
        let buffered_end = self.buffer_pos + self.buffer.len() as u64;
        if pos < self.buffer_pos || pos + n as u64 > buffered_end {
            let want = n.max(READ_BLOCK).min((self.len - pos) as usize);
            if want < n {
                return Err(format!(
                    "record at {} runs past the end of the log",
                    self.pos
                ));
            }
            let mut buf = vec![0u8; want];
            self.file
                .read_exact_at(&mut buf, pos)
                .map_err(|e| format!("read at {pos}: {e}"))?;
            self.buffer = Bytes::from(buf);
            self.buffer_pos = pos;
        }
        let at = (pos - self.buffer_pos) as usize;
        Ok(self.buffer.slice(at..at + n))
    }

    /// The next record's verified body; `Ok(None)` at the end of the log;
    /// `Err` with the reason for a torn or corrupt record.
    fn next_record(&mut self) -> Result<Option<Bytes>, String> {
        if self.pos >= self.len {
            return Ok(None);
        }
        if self.len - self.pos < HEADER as u64 {
            return Err(format!("torn record header at {}", self.pos));
        }
        let header = self.bytes(self.pos, HEADER)?;
        let body_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        // Every record has at least a kind byte; zeros are an unwritten tail.
        if body_len == 0 {
            return Err(format!("empty record at {}", self.pos));
        }
        let body = self.bytes(self.pos + HEADER as u64, body_len)?;
        if crc32fast::hash(&body) != crc {
            return Err(format!("checksum mismatch in record at {}", self.pos));
        }
        self.pos += (HEADER + body_len) as u64;
        Ok(Some(body))
    }
}

/// The engine's background I/O, so none of it runs on the async runtime:
/// `file-durable`'s journal threads, and the I/O thread that syncs
/// `file-fast`'s logs, new streams' directories and removes deleted
/// streams. The I/O thread takes every request already queued as one
/// group: one sync pass covers all of the group's logs.
#[derive(Debug, Clone)]
struct Syncer {
    requests: mpsc::Sender<IoRequest>,
    /// `file-durable` only.
    journal: Option<journal::Shards>,
}

/// A stream directory to delete.
struct RemoveJob {
    id: u64,
    dir: PathBuf,
    trash: PathBuf,
}

type Reply = oneshot::Sender<Result<(), StorageError>>;

enum IoRequest {
    Remove(RemoveJob, Reply),
    /// Sync this file's whole filesystem, directory entries included.
    Filesystem(Arc<File>, Reply),
    /// Sync every log written since the last pass (file-fast's interval,
    /// or a flush), then reply if asked.
    Dirty(Option<std::sync::mpsc::Sender<Result<(), StorageError>>>),
    /// A log written since the last pass, with its flag saying so, which
    /// the pass clears before syncing it.
    Unsynced(u64, Arc<File>, Arc<AtomicBool>),
}

impl Syncer {
    fn start(sync: Sync, journal: Option<journal::Shards>) -> Result<Self, StorageError> {
        let durable = journal.is_some();
        let (requests, incoming) = mpsc::channel();
        std::thread::Builder::new()
            .name("log-io".into())
            .spawn(move || io_loop(&incoming, durable))
            .map_err(io)?;
        if let Sync::Interval(every) = sync {
            let ticks = requests.clone();
            std::thread::Builder::new()
                .name("log-sync-timer".into())
                .spawn(move || {
                    while ticks.send(IoRequest::Dirty(None)).is_ok() {
                        std::thread::sleep(every);
                    }
                })
                .map_err(io)?;
        }
        Ok(Syncer { requests, journal })
    }

    fn send(&self, request: impl FnOnce(Reply) -> IoRequest) -> Result<Commit, StorageError> {
        let (reply, receiver) = oneshot::channel();
        self.requests
            .send(request(reply))
            .map_err(|_| StorageError::Stopped)?;
        Ok(Commit::pending(receiver))
    }

    fn remove(&self, job: RemoveJob) -> Result<Commit, StorageError> {
        self.send(|reply| IoRequest::Remove(job, reply))
    }

    fn sync_filesystem(&self, file: Arc<File>) -> Result<Commit, StorageError> {
        self.send(|reply| IoRequest::Filesystem(file, reply))
    }

    fn unsynced(
        &self,
        id: u64,
        file: Arc<File>,
        flag: Arc<AtomicBool>,
    ) -> Result<(), StorageError> {
        self.requests
            .send(IoRequest::Unsynced(id, file, flag))
            .map_err(|_| StorageError::Stopped)
    }

    /// Syncs everything written so far and checkpoints the journal, so a
    /// restart has nothing to replay; waits for it.
    fn flush(&self) -> Result<(), StorageError> {
        let (reply, done) = mpsc::channel();
        self.requests
            .send(IoRequest::Dirty(Some(reply)))
            .map_err(|_| StorageError::Stopped)?;
        done.recv().unwrap_or(Err(StorageError::Stopped))?;
        match &self.journal {
            Some(journal) => journal.checkpoint(),
            None => Ok(()),
        }
    }
}

fn io_loop(incoming: &mpsc::Receiver<IoRequest>, durable: bool) {
    // file-fast: logs written since the last pass, by stream id.
    let mut unsynced: HashMap<u64, (Arc<File>, Arc<AtomicBool>)> = HashMap::new();
    while let Ok(first) = incoming.recv() {
        // Replies that wait for this group's sync.
        let mut after_sync: Vec<Reply> = Vec::new();
        let mut flushes = Vec::new();
        let mut sync_now: Vec<Arc<File>> = Vec::new();
        let mut whole_filesystem = None;
        for request in std::iter::once(first).chain(incoming.try_iter()) {
            match request {
                IoRequest::Remove(job, reply) => {
                    unsynced.remove(&job.id);
                    let _ = reply.send(remove_stream(&job, durable));
                }
                IoRequest::Filesystem(file, reply) => {
                    whole_filesystem = Some(file);
                    after_sync.push(reply);
                }
                IoRequest::Unsynced(id, file, flag) => {
                    unsynced.insert(id, (file, flag));
                }
                IoRequest::Dirty(reply) => {
                    for (file, flag) in unsynced.drain().map(|(_, entry)| entry) {
                        // Cleared first: a write after this point flags the
                        // log again for the next pass.
                        flag.store(false, Ordering::SeqCst);
                        sync_now.push(file);
                    }
                    flushes.extend(reply);
                }
            }
        }
        let synced = match &whole_filesystem {
            Some(file) => rustix::fs::syncfs(file.as_ref()).map_err(io),
            None => sync_all(&sync_now),
        };
        if let Err(e) = &synced {
            tracing::error!(error = %e, files = sync_now.len(), "log sync failed");
        }
        for reply in after_sync {
            let _ = reply.send(synced.clone());
        }
        for reply in flushes {
            let _ = reply.send(synced.clone());
        }
    }
}

/// Runs a blocking write on the calling thread; one of more than
/// [`INLINE_WRITE_MAX`] bytes first hands the thread's other tasks to the
/// runtime (possible only on a multi-threaded runtime).
fn blocking_if_large<T>(len: usize, write: impl FnOnce() -> T) -> T {
    let multi_threaded = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if len > INLINE_WRITE_MAX && multi_threaded {
        tokio::task::block_in_place(write)
    } else {
        write()
    }
}

/// Deletes a stream: an atomic rename into trash, then the removal.
fn remove_stream(job: &RemoveJob, durable: bool) -> Result<(), StorageError> {
    fs::rename(&job.dir, &job.trash).map_err(io)?;
    if durable && let Some(parent) = job.dir.parent() {
        sync_dir(parent)?;
    }
    fs::remove_dir_all(&job.trash).map_err(io)
}

/// Gets `files` to disk with as few journal commits as possible: one
/// `fdatasync` for a single file; for several, one `syncfs` of their
/// filesystem (all logs live under one data directory), which commits them
/// all at once instead of one journal commit per file.
fn sync_all(files: &[Arc<File>]) -> Result<(), StorageError> {
    match files {
        [] => Ok(()),
        [file] => file.sync_data().map_err(io),
        [first, ..] => rustix::fs::syncfs(first.as_ref()).map_err(io),
    }
}
