//! The `file-fast` and `file-durable` engines: one directory per stream
//! holding its configuration and an append-only log of checksummed records.
//!
//! Layout under the data directory:
//! * `FORMAT` — the on-disk format; another value refuses to start.
//! * `streams/<id>/meta.json` — path, configuration and start offset,
//!   written before the directory is renamed into place, so a stream is
//!   either fully created or absent.
//! * `streams/<id>/log` — one record per request: `len u32 | crc32 u32 |
//!   body` (see [`record`]). A body holds everything the request changed
//!   (data, producer state, `Stream-Seq`, closure) so they persist
//!   atomically: a torn or corrupt record is dropped whole at startup and
//!   the log truncated there.
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
//!
//! Modules:
//! * [`record`] — the record format: framing, checksums, encoding and
//!   decoding, and reading records back verified.
//! * [`log`] — [`FileLog`], one stream's log: appends, reads, replay.
//! * [`syncer`] — the background I/O thread: interval syncs, new streams'
//!   directories, removals.
//! * [`journal`] — `file-durable`'s shared journal.

mod journal;
mod log;
mod record;
mod syncer;

pub use log::FileLog;

use super::chunk::RecentChunks;
use super::{Close, Commit, Engine, Mutation, Recovered, StorageError, StreamLog, StreamMeta};
use crate::protocol::offset::Offset;
use crate::storage::MessageBatch;
use record::encode_mutation;
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use syncer::Syncer;

const FORMAT: &str = "durable-streams-rs file v1";
const FORMAT_FILE: &str = "FORMAT";
const META_FILE: &str = "meta.json";
const LOG_FILE: &str = "log";

fn io(e: impl std::fmt::Display) -> StorageError {
    StorageError::Io(e.to_string())
}

/// How appends reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Synced in a shared journal of `capacity` bytes before acknowledging.
    Journal { capacity: u64 },
    /// `fdatasync` in the background at this interval.
    Interval(Duration),
}

/// The smallest journal `SyncPolicy::Journal` accepts.
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
    pub fn open(data_dir: &Path, sync: SyncPolicy) -> Result<Self, StorageError> {
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
            SyncPolicy::Journal { capacity } => Some(journal::Shards::start(data_dir, capacity)?),
            SyncPolicy::Interval(_) => {
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
            let log = FileLog::open(self, id, dir, &meta.path, meta.base)?;
            let replayed = log.replay()?;
            recovered.push(Recovered {
                path: meta.path,
                meta: meta.meta,
                log: Arc::new(log),
                closed: replayed.closed,
                closed_by: replayed.closed_by,
                producers: replayed.producers,
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
        initial: Vec<MessageBatch>,
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
                close: Some(Close::Plain),
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
        let log = FileLog::open(self, id, dir, path, base)?;
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
