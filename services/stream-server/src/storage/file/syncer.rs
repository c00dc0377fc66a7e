//! The file engines' background I/O, so none of it runs on the async
//! runtime: the I/O thread that syncs `file-fast`'s logs (every
//! `sync_interval`, and on a flush), syncs new streams' directories and
//! removes deleted streams; and, for `file-durable`, the handle to the
//! journal's threads.

use super::{SyncPolicy, io, journal, sync_dir};
use crate::storage::{Commit, Reply, StorageError};
use crate::telemetry::GroupCommit;
use std::collections::HashMap;
use std::fs::{self, File};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

/// The engine's background I/O, so none of it runs on the async runtime:
/// `file-durable`'s journal threads, and the I/O thread that syncs
/// `file-fast`'s logs, new streams' directories and removes deleted
/// streams. The I/O thread takes every request already queued as one
/// group: one sync pass covers all of the group's logs.
#[derive(Debug, Clone)]
pub(super) struct Syncer {
    requests: mpsc::Sender<IoRequest>,
    /// `file-durable` only.
    pub(super) journal: Option<journal::Shards>,
}

/// A stream directory to delete.
pub(super) struct RemoveJob {
    pub(super) id: u64,
    pub(super) dir: PathBuf,
    pub(super) trash: PathBuf,
}

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
    pub(super) fn start(
        sync: SyncPolicy,
        journal: Option<journal::Shards>,
    ) -> Result<Self, StorageError> {
        let durable = journal.is_some();
        let (requests, incoming) = mpsc::channel();
        std::thread::Builder::new()
            .name("log-io".into())
            .spawn(move || io_loop(&incoming, durable))
            .map_err(io)?;
        if let SyncPolicy::Interval(every) = sync {
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
        let (reply, commit) = Commit::pending();
        self.requests
            .send(request(reply))
            .map_err(|_| StorageError::Stopped)?;
        Ok(commit)
    }

    pub(super) fn remove(&self, job: RemoveJob) -> Result<Commit, StorageError> {
        self.send(|reply| IoRequest::Remove(job, reply))
    }

    pub(super) fn sync_filesystem(&self, file: Arc<File>) -> Result<Commit, StorageError> {
        self.send(|reply| IoRequest::Filesystem(file, reply))
    }

    pub(super) fn unsynced(
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
    pub(super) fn flush(&self) -> Result<(), StorageError> {
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
                    reply.send(remove_stream(&job, durable));
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
        // Only syncs someone waits for are traced: file-fast's interval
        // passes serve no request.
        let commit = (!after_sync.is_empty()).then(|| {
            let mode = if durable { "file-durable" } else { "file-fast" };
            GroupCommit::start("fsync", mode, after_sync.iter().map(|r| &r.requester))
        });
        let synced = match &whole_filesystem {
            Some(file) => rustix::fs::syncfs(file.as_ref()).map_err(io),
            None => sync_all(&sync_now),
        };
        if let Some(commit) = commit {
            commit.finish(synced.is_ok());
        }
        if let Err(e) = &synced {
            tracing::error!(error = %e, files = sync_now.len(), "log sync failed");
        }
        for reply in after_sync {
            reply.send(synced.clone());
        }
        for reply in flushes {
            let _ = reply.send(synced.clone());
        }
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
pub(super) fn sync_all(files: &[Arc<File>]) -> Result<(), StorageError> {
    match files {
        [] => Ok(()),
        [file] => file.sync_data().map_err(io),
        [first, ..] => rustix::fs::syncfs(first.as_ref()).map_err(io),
    }
}
