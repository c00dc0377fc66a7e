//! [`FileLog`]: one stream's log file. Appends are written in order under
//! the stream's writer lock, each as one record at the end of the log, and
//! handed to the syncer (or the journal) for durability. Reads find their
//! first record through a sparse index and read records from there; a
//! replay at startup verifies the whole log and cuts a damaged tail.

use super::record::{
    Decoded, MutationRecord, Records, decode, encode_mutation, soft_delete_record,
};
use super::syncer::{RemoveJob, Syncer};
use super::{FileEngine, LOG_FILE, io, journal};
use crate::protocol::offset::Offset;
use crate::protocol::producer::ProducerState;
use crate::storage::chunk::{self, Chunk, RecentChunks};
use crate::storage::{ClosingProducer, Commit, LogSlice, Mutation, StorageError, StreamLog};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A sparse index entry is kept for every this many bytes of log.
const INDEX_EVERY: u64 = 64 * 1024;
/// Larger records are written under `block_in_place`, so the runtime moves
/// the thread's other tasks elsewhere while the copy runs.
const INLINE_WRITE_MAX: usize = 256 * 1024;

/// One stream's log file.
#[derive(Debug)]
pub struct FileLog {
    id: u64,
    path: String,
    dir: PathBuf,
    trash: PathBuf,
    base: Offset,
    pub(super) file: Arc<File>,
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
pub(super) struct Replayed {
    pub(super) closed: bool,
    pub(super) closed_by: Option<ClosingProducer>,
    pub(super) producers: HashMap<String, ProducerState>,
    pub(super) last_seq: Option<String>,
    pub(super) soft_deleted: bool,
}

impl Replayed {
    /// Applies a mutation record's protocol state (its data is indexed by
    /// the caller).
    fn apply(&mut self, record: MutationRecord) {
        if let Some(producer) = record.producer {
            self.producers.insert(producer.id, producer.state);
        }
        if let Some(seq) = record.stream_seq {
            self.last_seq = Some(seq);
        }
        if let Some(close) = record.close {
            self.closed = true;
            self.closed_by = close.into_producer();
        }
    }
}

impl FileLog {
    /// Opens the log of stream `id` of `engine`, in its directory `dir`;
    /// [`FileLog::replay`] then finds where it ends.
    pub(super) fn open(
        engine: &FileEngine,
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
            trash: engine.dir.join("trash"),
            base,
            file: Arc::new(file),
            writer: Mutex::new(Writer {
                len: 0,
                tail: base,
                index: Vec::new(),
                recent: RecentChunks::new(engine.tail_cache),
                broken: false,
            }),
            written: AtomicU64::new(0),
            unsynced: Arc::new(AtomicBool::new(false)),
            syncer: engine.syncer.clone(),
        })
    }

    /// Reads the whole log once: verifies every record, truncates a torn
    /// or corrupt tail, rebuilds the index and the protocol state.
    pub(super) fn replay(&self) -> Result<Replayed, StorageError> {
        let mut replayed = Replayed::default();
        let mut writer = self.writer.lock();
        let file_len = self.file.metadata().map_err(io)?.len();
        let mut records = Records::new(&self.file, 0, file_len);
        let mut tail = self.base;
        let end = loop {
            let pos = records.pos();
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
                let (reply, commit) = Commit::pending();
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
                Ok(commit)
            }
            None => {
                self.mark_unsynced()?;
                Ok(Commit::done())
            }
        }
    }

    /// Makes sure the next interval sync pass covers this log; only the
    /// first write after a pass tells the I/O thread.
    pub(super) fn mark_unsynced(&self) -> Result<(), StorageError> {
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
        self.write(&mut writer, soft_delete_record())
    }

    fn remove(&self) -> Result<Commit, StorageError> {
        self.syncer.remove(RemoveJob {
            id: self.id,
            dir: self.dir.clone(),
            trash: self.trash.join(self.id.to_string()),
        })
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
