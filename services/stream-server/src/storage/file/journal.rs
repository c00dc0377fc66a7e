//! The shared journal of `file-durable`: a few preallocated files that
//! make every stream's appends durable with one `fdatasync` per group.
//!
//! Syncing the logs themselves costs a filesystem journal commit per group
//! (a `syncfs` over every dirty log); writing the group's records once more,
//! side by side, into one file whose blocks already exist costs a single
//! data flush. The logs still receive every record first (into the page
//! cache), so reads never touch the journal.
//!
//! * The journal is one file per core (at most [`MAX_SHARDS`]), `journal/0`
//!   and on, each written by its own thread: a stream always uses the shard
//!   of its id, so its records and syncs stay in order, while the shards'
//!   flushes run in parallel (a device answers several at once sooner than
//!   in turn).
//! * An entry is framed like a log record (`len u32 | crc32 u32 | body`);
//!   its body is `generation u64 | stream id u64 | log position u64 |
//!   the log record`.
//! * A shard is zero-filled to its capacity when created, so writing an
//!   entry never allocates blocks or changes the file size.
//! * When a group does not fit in the space left, the shard checkpoints:
//!   one `syncfs` makes every log durable (each record reached its log
//!   before its entry was queued, this group's included), and writing
//!   starts over at the beginning with the next generation, first zeroing
//!   the header there. Replay stops at the first invalid entry or the first
//!   of another generation, so retired entries are never applied.
//! * At startup, before the logs are read, every valid entry is written
//!   back into its log at its position (rewriting bytes the log may already
//!   hold); then the logs are synced and the journal is replaced by a fresh
//!   one, so entries from before a restart never replay again.

use super::{HEADER, LOG_FILE, Records, Reply, io, sync_all, sync_dir};
use crate::storage::StorageError;
use bytes::Bytes;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, mpsc};

const JOURNAL_DIR: &str = "journal";
/// Most journal files, each with its own writer thread. On the development
/// machine's virtual disk two parallel flushes gave 1.6 times the syncs per
/// second of one, four gave 2.5 times; but each thread's wake-ups cost CPU
/// the requests need, so there is one per core.
pub const MAX_SHARDS: usize = 8;
/// Entry body fields before the log record: generation, stream id and log
/// position.
const ENTRY_FIELDS: usize = 24;
/// The smallest journal accepted, all shards together.
pub const MIN_CAPACITY: u64 = MAX_SHARDS as u64 * 128 * 1024;
/// Records larger than this (or than a quarter of a shard) skip the
/// journal and are synced in their log: copying them twice would cost more
/// than the filesystem commit it saves.
const MAX_ENTRY_RECORD: usize = 1024 * 1024;
/// Zeros written per call when creating a shard.
const ZERO_CHUNK: usize = 1024 * 1024;

/// The journal's writer threads, one channel each.
#[derive(Debug, Clone)]
pub struct Shards {
    senders: Arc<[mpsc::Sender<Request>]>,
    shard_capacity: u64,
}

/// Work for a shard's thread.
pub enum Request {
    /// Journal this record; reply once it is durable.
    Append(Entry, Reply),
    /// Sync this log (its record was too large for the journal); reply
    /// once done. Sent to the stream's shard so it stays in order with the
    /// stream's journaled records.
    SyncLog(Arc<File>, Reply),
    /// Checkpoint, then reply.
    Checkpoint(mpsc::Sender<Result<(), StorageError>>),
}

impl Shards {
    /// Replaces any journal in `data_dir` by fresh shards sharing
    /// `capacity` bytes, and starts their threads. Call [`replay`] first.
    pub fn start(data_dir: &Path, capacity: u64) -> Result<Shards, StorageError> {
        if capacity < MIN_CAPACITY {
            return Err(StorageError::Io(format!(
                "the journal needs at least {MIN_CAPACITY} bytes, got {capacity}"
            )));
        }
        remove(data_dir)?;
        let staging = data_dir.join(format!("{JOURNAL_DIR}.new"));
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(io)?;
        }
        fs::create_dir(&staging).map_err(io)?;
        let shards = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_SHARDS);
        let shard_capacity = capacity / shards as u64;
        for shard in 0..shards {
            create_zeroed(&staging.join(shard.to_string()), shard_capacity)?;
        }
        let dir = data_dir.join(JOURNAL_DIR);
        fs::rename(&staging, &dir).map_err(io)?;
        sync_dir(data_dir)?;
        let mut senders = Vec::new();
        for shard in 0..shards {
            let file = fs::OpenOptions::new()
                .write(true)
                .open(dir.join(shard.to_string()))
                .map_err(io)?;
            let mut journal = Journal {
                file: Arc::new(file),
                capacity: shard_capacity,
                pos: 0,
                generation: 1,
                batch: Vec::new(),
            };
            let (sender, incoming) = mpsc::channel();
            std::thread::Builder::new()
                .name(format!("journal-{shard}"))
                .spawn(move || journal.serve(&incoming))
                .map_err(io)?;
            senders.push(sender);
        }
        Ok(Shards {
            senders: senders.into(),
            shard_capacity,
        })
    }

    /// Whether a record of `len` bytes goes through the journal rather
    /// than a sync of its own log.
    pub fn takes(&self, len: usize) -> bool {
        len <= MAX_ENTRY_RECORD.min((self.shard_capacity / 4) as usize)
    }

    /// Queues `request` on the shard of `stream`.
    pub fn send(&self, stream: u64, request: Request) -> Result<(), StorageError> {
        self.senders[(stream % self.senders.len() as u64) as usize]
            .send(request)
            .map_err(|_| StorageError::Stopped)
    }

    /// Checkpoints every shard, so a restart has nothing to replay.
    pub fn checkpoint(&self) -> Result<(), StorageError> {
        let mut waits = Vec::new();
        for sender in self.senders.iter() {
            let (reply, done) = mpsc::channel();
            sender
                .send(Request::Checkpoint(reply))
                .map_err(|_| StorageError::Stopped)?;
            waits.push(done);
        }
        for done in waits {
            done.recv().unwrap_or(Err(StorageError::Stopped))?;
        }
        Ok(())
    }
}

/// Writes `len` zeros to a new file at `path`, synced.
fn create_zeroed(path: &Path, len: u64) -> Result<(), StorageError> {
    let zeros = vec![0u8; ZERO_CHUNK];
    let mut file = File::create(path).map_err(io)?;
    let mut left = len;
    while left > 0 {
        let n = left.min(ZERO_CHUNK as u64) as usize;
        file.write_all(&zeros[..n]).map_err(io)?;
        left -= n as u64;
    }
    file.sync_all().map_err(io)
}

/// A log record on its way into the journal.
#[derive(Debug)]
pub struct Entry {
    pub stream: u64,
    /// Where the record starts in the stream's log.
    pub pos: u64,
    pub record: Vec<u8>,
}

impl Entry {
    fn framed_len(&self) -> u64 {
        (HEADER + ENTRY_FIELDS + self.record.len()) as u64
    }
}

/// What writing a group into the journal left to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    /// The entries are in the journal file; sync it.
    SyncJournal,
    /// A checkpoint made every log durable; nothing else to sync.
    Checkpointed,
}

/// One shard, owned by its thread.
#[derive(Debug)]
pub struct Journal {
    file: Arc<File>,
    capacity: u64,
    /// Where the next entry goes.
    pos: u64,
    generation: u64,
    /// Reused for each group's entries.
    batch: Vec<u8>,
}

impl Journal {
    /// Writes one group's entries after the previous group's, or
    /// checkpoints when they do not fit.
    pub fn write(&mut self, entries: &[Entry]) -> Result<Written, StorageError> {
        let len: u64 = entries.iter().map(Entry::framed_len).sum();
        if self.pos + len > self.capacity {
            // Every entry so far, this group's included, is in its log.
            self.checkpoint()?;
            return Ok(Written::Checkpointed);
        }
        self.batch.clear();
        for entry in entries {
            let start = self.batch.len();
            self.batch.extend_from_slice(&[0; HEADER]);
            self.batch.extend_from_slice(&self.generation.to_le_bytes());
            self.batch.extend_from_slice(&entry.stream.to_le_bytes());
            self.batch.extend_from_slice(&entry.pos.to_le_bytes());
            self.batch.extend_from_slice(&entry.record);
            let body = &self.batch[start + HEADER..];
            let (body_len, crc) = (body.len() as u32, crc32fast::hash(body));
            self.batch[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
            self.batch[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
        }
        self.file.write_all_at(&self.batch, self.pos).map_err(io)?;
        self.pos += len;
        Ok(Written::SyncJournal)
    }

    /// Makes every log durable, which retires every entry written so far,
    /// and starts over at the beginning with the next generation.
    pub fn checkpoint(&mut self) -> Result<(), StorageError> {
        rustix::fs::syncfs(self.file.as_ref()).map_err(io)?;
        // Zeros where the next entry goes end a replay before the retired
        // entries (which would rewrite bytes the logs already hold, or
        // undo damage found in them since).
        self.file.write_all_at(&[0; HEADER], 0).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.pos = 0;
        self.generation += 1;
        tracing::debug!(generation = self.generation, "journal checkpointed");
        Ok(())
    }

    /// The shard's thread: takes every request already queued as one
    /// group, writes its entries with one `pwrite`, makes them durable with
    /// one sync, then replies to all of them (group commit).
    fn serve(&mut self, incoming: &mpsc::Receiver<Request>) {
        let mut entries = Vec::new();
        let mut replies = Vec::new();
        let mut files = Vec::new();
        let mut checkpoints = Vec::new();
        while let Ok(first) = incoming.recv() {
            for request in std::iter::once(first).chain(incoming.try_iter()) {
                match request {
                    Request::Append(entry, reply) => {
                        entries.push(entry);
                        replies.push(reply);
                    }
                    Request::SyncLog(file, reply) => {
                        files.push(file);
                        replies.push(reply);
                    }
                    Request::Checkpoint(reply) => checkpoints.push(reply),
                }
            }
            let mut synced = Ok(());
            if !entries.is_empty() {
                match self.write(&entries) {
                    Ok(Written::SyncJournal) => files.push(Arc::clone(&self.file)),
                    Ok(Written::Checkpointed) => {}
                    Err(e) => synced = Err(e),
                }
            }
            if synced.is_ok() {
                synced = sync_all(&files);
            }
            if !checkpoints.is_empty() && synced.is_ok() {
                synced = self.checkpoint();
            }
            if let Err(e) = &synced {
                tracing::error!(error = %e, entries = entries.len(), "journal write failed");
            }
            for reply in replies.drain(..) {
                let _ = reply.send(synced.clone());
            }
            for reply in checkpoints.drain(..) {
                let _ = reply.send(synced.clone());
            }
            entries.clear();
            files.clear();
        }
    }
}

/// Writes every entry of the journal in `data_dir` (if any) back into its
/// stream's log under `streams_dir`, then syncs the filesystem. Returns the
/// number of entries applied; entries of streams that no longer exist are
/// skipped.
pub fn replay(data_dir: &Path, streams_dir: &Path) -> Result<usize, StorageError> {
    let dir = data_dir.join(JOURNAL_DIR);
    let shards = match fs::read_dir(&dir) {
        Ok(shards) => shards,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(e)),
    };
    let mut logs = HashMap::new();
    let mut applied = 0;
    for shard in shards {
        let path = shard.map_err(io)?.path();
        let file = File::open(&path).map_err(io)?;
        applied += replay_shard(&file, streams_dir, &mut logs)
            .map_err(|e| StorageError::Io(format!("{}: {e}", path.display())))?;
    }
    if applied > 0 {
        rustix::fs::syncfs(File::open(&dir).map_err(io)?).map_err(io)?;
        tracing::info!(entries = applied, "journal replayed into the stream logs");
    }
    Ok(applied)
}

/// Applies one shard's entries, opening logs into `logs` (`None`: the
/// stream no longer exists).
fn replay_shard(
    file: &File,
    streams_dir: &Path,
    logs: &mut HashMap<u64, Option<File>>,
) -> Result<usize, StorageError> {
    let len = file.metadata().map_err(io)?.len();
    let mut records = Records::new(file, 0, len);
    let mut generation = None;
    let mut applied = 0;
    // The first invalid entry (zeros included) ends the journal.
    while let Ok(Some(body)) = records.next_record() {
        let Some((entry_generation, stream, pos, record)) = parse(&body) else {
            break;
        };
        if *generation.get_or_insert(entry_generation) != entry_generation {
            break;
        }
        let log = match logs.entry(stream) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let log_path = streams_dir.join(stream.to_string()).join(LOG_FILE);
                e.insert(match fs::OpenOptions::new().write(true).open(&log_path) {
                    Ok(file) => Some(file),
                    // Deleted after the entry was written.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => {
                        return Err(StorageError::Io(format!("{}: {e}", log_path.display())));
                    }
                })
            }
        };
        if let Some(log) = log {
            log.write_all_at(&record, pos).map_err(io)?;
            applied += 1;
        }
    }
    Ok(applied)
}

/// Removes the journal in `data_dir`, if any (file-fast keeps none). Call
/// [`replay`] first.
pub fn remove(data_dir: &Path) -> Result<(), StorageError> {
    match fs::remove_dir_all(data_dir.join(JOURNAL_DIR)) {
        Ok(()) => sync_dir(data_dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(e)),
    }
}

/// An entry body's generation, stream id, log position and record.
fn parse(body: &Bytes) -> Option<(u64, u64, u64, Bytes)> {
    let field = |i: usize| -> Option<u64> {
        let bytes = body.get(i * 8..i * 8 + 8)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    };
    let record = body.slice(ENTRY_FIELDS.min(body.len())..);
    if record.is_empty() {
        return None;
    }
    Some((field(0)?, field(1)?, field(2)?, record))
}
