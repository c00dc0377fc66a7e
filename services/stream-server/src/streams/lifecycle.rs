//! The end of a stream's life: `DELETE` (§5.4), expiry, and the removal
//! they share, which soft-deletes a stream forks still read from and
//! cascades up the fork chain; and taking a stream out of service when
//! storage fails.

use super::{Stream, StreamError, Streams, log_bytes};
use crate::protocol::offset::Offset;
use crate::storage::{Commit, StorageError};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

impl Streams {
    /// Deletes the stream at `path` (§5.4): soft-deleted while forks read
    /// from it, removed otherwise. Answers once the deletion is durable.
    pub async fn delete(&self, path: &str) -> Result<(), StreamError> {
        let stream = self.get(path, false)?;
        for commit in self.remove(&stream)? {
            commit.wait().await?;
        }
        Ok(())
    }

    /// Removes expired streams; returns how many were reclaimed.
    pub fn sweep_expired(&self) -> usize {
        let expired: Vec<Arc<Stream>> = self
            .map
            .iter()
            .filter(|entry| {
                let state = entry.state.lock();
                !state.soft_deleted && entry.is_expired(&state)
            })
            .map(|entry| Arc::clone(entry.value()))
            .collect();
        expired.iter().for_each(|stream| self.expire(stream));
        expired.len()
    }

    /// Removes an expired stream without waiting for the storage to confirm.
    pub(super) fn expire(&self, stream: &Arc<Stream>) {
        if let Err(e) = self.remove(stream) {
            tracing::error!(stream = %stream.path, error = %e, "cannot remove expired stream");
        }
    }

    /// Ends a stream's life: soft delete while it has forks, otherwise
    /// unregister it and release its source, cascading up the fork chain.
    /// Returns the storage commits to wait for.
    pub(super) fn remove(&self, stream: &Arc<Stream>) -> Result<Vec<Commit>, StorageError> {
        let mut commits = Vec::new();
        let mut current = Arc::clone(stream);
        loop {
            {
                let mut state = current.state.lock();
                if state.removed {
                    return Ok(commits);
                }
                if state.forks > 0 {
                    if !state.soft_deleted {
                        commits.push(state.log.soft_delete()?);
                        state.soft_deleted = true;
                    }
                    current.publish(Offset::ZERO, false, true);
                    return Ok(commits);
                }
                commits.push(state.log.remove()?);
                state.removed = true;
                self.removals.record(&current.path);
                self.memory_used
                    .fetch_sub(log_bytes(&*state.log), Ordering::Relaxed);
                current.publish(Offset::ZERO, false, true);
            }
            self.map
                .remove_if(&current.path, |_, s| Arc::ptr_eq(s, &current));
            if let Some(observer) = self.observer() {
                observer.removed(&current.path);
            }
            let Some(fork) = &current.config.fork else {
                return Ok(commits);
            };
            let source = Arc::clone(&fork.source);
            let cascade = {
                let mut state = source.state.lock();
                state.forks = state.forks.saturating_sub(1);
                state.forks == 0 && state.soft_deleted
            };
            if !cascade {
                return Ok(commits);
            }
            current = source;
        }
    }

    /// Takes a stream whose change could not be stored out of service: its
    /// in-memory state may be ahead of storage, so it is unregistered and
    /// comes back from storage at the next start.
    pub(super) fn fail(&self, stream: &Arc<Stream>, error: &StorageError) {
        tracing::error!(stream = %stream.path, %error, "storage commit failed; stream unavailable until restart");
        stream.state.lock().failed = true;
        stream.publish(Offset::ZERO, false, true);
        self.map
            .remove_if(&stream.path, |_, s| Arc::ptr_eq(s, stream));
    }
}

/// Buckets of [`Removals`]: 16 KiB, whatever the number of paths.
const REMOVAL_BUCKETS: usize = 4096;

/// How many streams were removed in this process, per bucket of paths. A
/// stream created at a path whose bucket is non-zero takes the count as its
/// [`Stream::recreation`]; counts only grow, so it differs from that of
/// every earlier stream at the path. Paths sharing a bucket only get longer
/// ETags.
pub(super) struct Removals(Box<[AtomicU32]>);

impl Removals {
    pub(super) fn new() -> Self {
        Removals((0..REMOVAL_BUCKETS).map(|_| AtomicU32::new(0)).collect())
    }

    fn bucket(&self, path: &str) -> &AtomicU32 {
        let mut hasher = std::hash::DefaultHasher::new();
        path.hash(&mut hasher);
        &self.0[(hasher.finish() % REMOVAL_BUCKETS as u64) as usize]
    }

    pub(super) fn count(&self, path: &str) -> u32 {
        self.bucket(path).load(Ordering::Relaxed)
    }

    pub(super) fn record(&self, path: &str) {
        self.bucket(path).fetch_add(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Removals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Removals")
    }
}
