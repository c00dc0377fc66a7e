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
//! * Each group is written as whole [`BLOCK`]s at a block boundary, padded
//!   with a filler entry (a body of zeros) that replay skips. That lets
//!   the shard be opened with `O_DIRECT | O_DSYNC`: one `pwrite` sends the
//!   group to the device and returns once it is durable, without the page
//!   cache's copy and writeback or a separate `fdatasync` (~15 µs less CPU
//!   per group on the development machine's virtual disk). Where the
//!   filesystem refuses `O_DIRECT` (tmpfs, some FUSE mounts), the shard is
//!   written through the page cache and synced with `fdatasync`.
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

use super::record::{HEADER, Records, frame_in_place};
use super::syncer::sync_all;
use super::{LOG_FILE, io, sync_dir};
use crate::storage::{Reply, StorageError};
use crate::telemetry::GroupCommit;
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
/// Unit of journal writes: groups start at multiples of it and fill whole
/// blocks, as direct I/O requires of offsets, lengths and buffers (4 KiB
/// covers every common device's logical block size).
const BLOCK: usize = 4096;

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
        let shard_capacity = capacity / shards as u64 / BLOCK as u64 * BLOCK as u64;
        for shard in 0..shards {
            create_zeroed(&staging.join(shard.to_string()), shard_capacity)?;
        }
        let dir = data_dir.join(JOURNAL_DIR);
        fs::rename(&staging, &dir).map_err(io)?;
        sync_dir(data_dir)?;
        let mut senders = Vec::new();
        for shard in 0..shards {
            let (file, direct) = open_shard(&dir.join(shard.to_string()))?;
            let mut journal = Journal {
                file: Arc::new(file),
                direct,
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

/// Opens a shard for writing, with `O_DIRECT | O_DSYNC` when the
/// filesystem supports it (then `true`).
fn open_shard(path: &Path) -> Result<(File, bool), StorageError> {
    use rustix::fs::OFlags;
    use std::os::unix::fs::OpenOptionsExt;
    let flags = (OFlags::DIRECT | OFlags::DSYNC).bits() as i32;
    match fs::OpenOptions::new()
        .write(true)
        .custom_flags(flags)
        .open(path)
    {
        Ok(file) => Ok((file, true)),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
            tracing::info!(
                path = %path.display(),
                "the filesystem refuses direct I/O; the journal is synced with fdatasync"
            );
            let file = fs::OpenOptions::new().write(true).open(path).map_err(io)?;
            Ok((file, false))
        }
        Err(e) => Err(io(e)),
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
    /// The entries are in the journal file's page cache; sync it.
    SyncJournal,
    /// The entries are durable (a direct, synchronous write), or a
    /// checkpoint made every log durable; nothing else to sync.
    Durable,
}

/// One shard, owned by its thread.
#[derive(Debug)]
pub struct Journal {
    file: Arc<File>,
    /// Opened with `O_DIRECT | O_DSYNC`: a write is durable when it returns.
    direct: bool,
    /// A multiple of [`BLOCK`].
    capacity: u64,
    /// Where the next group goes: a multiple of [`BLOCK`].
    pos: u64,
    generation: u64,
    /// Reused for each group's entries; what is written starts at a
    /// [`BLOCK`]-aligned address inside it.
    batch: Vec<u8>,
}

impl Journal {
    /// Writes one group's entries after the previous group's, or
    /// checkpoints when they do not fit.
    pub fn write(&mut self, entries: &[Entry]) -> Result<Written, StorageError> {
        let len: u64 = entries.iter().map(Entry::framed_len).sum();
        // Room for a filler of at least one byte of body.
        let blocks_len = (len + HEADER as u64 + 1).next_multiple_of(BLOCK as u64);
        if self.pos + blocks_len > self.capacity {
            // Every entry so far, this group's included, is in its log.
            self.checkpoint()?;
            return Ok(Written::Durable);
        }
        let start = self.start_blocks(blocks_len as usize);
        for entry in entries {
            let at = self.batch.len();
            self.batch.extend_from_slice(&[0; HEADER]);
            self.batch.extend_from_slice(&self.generation.to_le_bytes());
            self.batch.extend_from_slice(&entry.stream.to_le_bytes());
            self.batch.extend_from_slice(&entry.pos.to_le_bytes());
            self.batch.extend_from_slice(&entry.record);
            frame_in_place(&mut self.batch[at..]);
        }
        let filler = self.batch.len();
        self.batch.resize(start + blocks_len as usize, 0);
        frame_in_place(&mut self.batch[filler..]);
        self.file
            .write_all_at(&self.batch[start..], self.pos)
            .map_err(io)?;
        self.pos += blocks_len;
        Ok(if self.direct {
            Written::Durable
        } else {
            Written::SyncJournal
        })
    }

    /// Empties the batch and returns where, in it, `len` bytes starting at
    /// a [`BLOCK`]-aligned address begin; reserving them first keeps the
    /// address from moving while they are filled.
    fn start_blocks(&mut self, len: usize) -> usize {
        self.batch.clear();
        self.batch.reserve(len + BLOCK);
        let start = self.batch.as_ptr().align_offset(BLOCK);
        self.batch.resize(start, 0);
        start
    }

    /// Makes every log durable, which retires every entry written so far,
    /// and starts over at the beginning with the next generation.
    pub fn checkpoint(&mut self) -> Result<(), StorageError> {
        rustix::fs::syncfs(self.file.as_ref()).map_err(io)?;
        // Zeros where the next entry goes end a replay before the retired
        // entries (which would rewrite bytes the logs already hold, or
        // undo damage found in them since).
        let start = self.start_blocks(BLOCK);
        self.batch.resize(start + BLOCK, 0);
        self.file
            .write_all_at(&self.batch[start..], 0)
            .map_err(io)?;
        if !self.direct {
            self.file.sync_data().map_err(io)?;
        }
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
            // A checkpoint alone serves no request.
            let commit = (!replies.is_empty()).then(|| {
                GroupCommit::start(
                    "journal write",
                    "file-durable",
                    replies.iter().map(|r: &Reply| &r.requester),
                )
            });
            let mut synced = Ok(());
            if !entries.is_empty() {
                match self.write(&entries) {
                    Ok(Written::SyncJournal) => files.push(Arc::clone(&self.file)),
                    Ok(Written::Durable) => {}
                    Err(e) => synced = Err(e),
                }
            }
            if synced.is_ok() {
                synced = sync_all(&files);
            }
            if !checkpoints.is_empty() && synced.is_ok() {
                synced = self.checkpoint();
            }
            if let Some(commit) = commit {
                commit.finish(synced.is_ok());
            }
            if let Err(e) = &synced {
                tracing::error!(error = %e, entries = entries.len(), "journal write failed");
            }
            for reply in replies.drain(..) {
                reply.send(synced.clone());
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
        if is_filler(&body) {
            continue;
        }
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

/// Whether an entry body is a group's filler: all zeros, which no real
/// entry is (its generation is at least 1).
fn is_filler(body: &[u8]) -> bool {
    body.iter().all(|&b| b == 0)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A data directory with one empty stream log (id 1) and one shard.
    struct Scratch {
        dir: tempfile::TempDir,
    }

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = tempfile::Builder::new()
                .prefix(&format!("ds-journal-unit-{name}-"))
                .tempdir()
                .expect("scratch dir");
            let streams = dir.path().join("streams/1");
            fs::create_dir_all(&streams).expect("stream dir");
            File::create(streams.join(LOG_FILE)).expect("log");
            create_zeroed(&dir.path().join("shard"), 64 * BLOCK as u64).expect("shard");
            Scratch { dir }
        }

        fn journal(&self, direct: bool) -> Journal {
            let path = self.dir.path().join("shard");
            let (file, opened_direct) = if direct {
                open_shard(&path).expect("open")
            } else {
                let file = fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .expect("open");
                (file, false)
            };
            Journal {
                file: Arc::new(file),
                direct: opened_direct,
                capacity: 64 * BLOCK as u64,
                pos: 0,
                generation: 1,
                batch: Vec::new(),
            }
        }

        fn replay(&self) -> (usize, Vec<u8>) {
            let shard = File::open(self.dir.path().join("shard")).expect("shard");
            let applied = replay_shard(
                &shard,
                &self.dir.path().join("streams"),
                &mut HashMap::new(),
            )
            .expect("replay");
            let log = fs::read(self.dir.path().join("streams/1").join(LOG_FILE)).expect("log");
            (applied, log)
        }
    }

    /// Entries for stream 1 whose records fill its log from 0, in order.
    fn entries(sizes: &[usize], first_byte: u8) -> (Vec<Entry>, Vec<u8>) {
        let mut log = Vec::new();
        let mut entries = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let record = vec![first_byte.wrapping_add(i as u8); size];
            entries.push(Entry {
                stream: 1,
                pos: log.len() as u64,
                record: record.clone(),
            });
            log.extend_from_slice(&record);
        }
        (entries, log)
    }

    fn groups_replay_in_order(direct: bool) {
        let scratch = Scratch::new(if direct { "direct" } else { "buffered" });
        let mut journal = scratch.journal(direct);
        // A group that fills a block exactly but for its filler, a small
        // one, and one over several blocks.
        let exact = BLOCK - HEADER - ENTRY_FIELDS - HEADER - 1;
        let (all, log) = entries(&[exact, 10, 9000, 300, 5000], 1);
        for group in [&all[..1], &all[1..2], &all[2..]] {
            let written = journal.write(group).expect("write");
            assert_eq!(written == Written::Durable, journal.direct);
            assert_eq!(
                journal.pos % BLOCK as u64,
                0,
                "groups start at block boundaries"
            );
            if written == Written::SyncJournal {
                journal.file.sync_data().expect("sync");
            }
        }
        assert_eq!(journal.pos, (1 + 1 + 4) * BLOCK as u64);
        assert_eq!(scratch.replay(), (all.len(), log));
    }

    #[test]
    fn groups_written_directly_replay_in_order() {
        groups_replay_in_order(true);
    }

    #[test]
    fn groups_written_through_the_page_cache_replay_in_order() {
        groups_replay_in_order(false);
    }

    #[test]
    fn a_checkpoint_retires_every_entry() {
        let scratch = Scratch::new("checkpoint");
        let mut journal = scratch.journal(true);
        let (group, _) = entries(&[100, 200], 7);
        journal.write(&group).expect("write");
        journal.checkpoint().expect("checkpoint");
        assert_eq!((journal.pos, journal.generation), (0, 2));
        assert_eq!(scratch.replay(), (0, Vec::new()));
    }

    #[test]
    fn a_full_shard_checkpoints_instead_of_writing() {
        let scratch = Scratch::new("full");
        let mut journal = scratch.journal(true);
        let (big, _) = entries(&[20 * BLOCK], 3);
        for _ in 0..3 {
            assert_eq!(journal.write(&big).expect("write"), Written::Durable);
        }
        assert_eq!(journal.pos, 3 * 21 * BLOCK as u64);
        // The fourth does not fit in 64 blocks: it is in its log already, so
        // a checkpoint makes it durable and retires the journal.
        assert_eq!(journal.write(&big).expect("write"), Written::Durable);
        assert_eq!((journal.pos, journal.generation), (0, 2));
    }
}
