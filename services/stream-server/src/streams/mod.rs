//! The stream registry: every stream by path, and the protocol operations
//! (create, append, close, delete, lookup) applied to them.
//!
//! The registry is a sharded concurrent map, so requests on different
//! streams never contend on one lock. Each stream serialises its own
//! appends with a short, synchronous lock that is never held across an
//! `.await`; that lock is also what serialises validation and append per
//! `(stream, producer)` as §5.2.1 requires. Expensive work (JSON validation)
//! happens before the lock is taken, and waiting for durability after it is
//! released, so one stream's fsync never holds up another stream.
//!
//! * [`stream`] — one stream: configuration, state, visible tail.
//! * [`create`] — `PUT`: create, confirm, fork.
//! * [`append`] — `POST`: append, close, producers.
//! * [`read`] — reads of one stream, stitching fork data.
//! * [`lifecycle`] — `DELETE`, expiry, removal, failure.
//! * [`error`] — why an operation was refused.

mod append;
mod create;
pub mod error;
mod lifecycle;
mod read;
pub mod stream;

pub use append::{AppendOutcome, AppendRequest};
pub use create::{CreateRequest, Created, ForkRequest};
pub use error::StreamError;
pub use read::ReadResult;
pub use stream::{Expiry, Stream, Tail};

use crate::protocol::headers::media_type;
use crate::protocol::json;
use crate::protocol::offset::Offset;
use crate::storage::{Commit, Engine, ExpiryRecord, StorageError};
use dashmap::DashMap;
use lifecycle::Removals;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use stream::{ForkOrigin, StreamConfig, StreamState, producer_headers};
use time::OffsetDateTime;

/// Content type of streams created without one (§5.1).
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// Limits enforced on stored data.
#[derive(Debug, Clone, Copy)]
pub struct StorageLimits {
    /// `0` means unlimited.
    pub max_stream_bytes: u64,
    /// `0` means unlimited.
    pub max_memory_bytes: u64,
    /// Deepest nesting of JSON as readers parse it (see [`json::frame`]);
    /// never unlimited, since readers' parsers are not.
    pub max_json_depth: usize,
}

impl Default for StorageLimits {
    fn default() -> Self {
        StorageLimits {
            max_stream_bytes: 0,
            max_memory_bytes: 0,
            max_json_depth: json::DEFAULT_MAX_DEPTH,
        }
    }
}

/// What learns of streams appearing, growing and going away: the
/// subscriptions (`crate::subscriptions`), which link new streams and wake
/// on new data. Called on the request path, so implementations only note
/// what happened and return.
pub trait StreamObserver: Send + Sync + std::fmt::Debug {
    /// `stream` was just created; none of its data is visible yet.
    fn created(&self, stream: &Arc<Stream>);
    /// New data of `stream` became visible.
    fn appended(&self, stream: &Arc<Stream>);
    /// The stream at `path` was removed.
    fn removed(&self, path: &str);
}

/// Every stream, by path.
#[derive(Debug)]
pub struct Streams {
    map: DashMap<String, Arc<Stream>>,
    engine: Arc<dyn Engine>,
    limits: StorageLimits,
    memory_used: AtomicU64,
    removals: Removals,
    observer: OnceLock<Arc<dyn StreamObserver>>,
}

impl Streams {
    /// Opens the registry over `engine`, loading every stream it stored.
    pub fn open(engine: Arc<dyn Engine>, limits: StorageLimits) -> Result<Self, StorageError> {
        let streams = Streams {
            map: DashMap::new(),
            engine,
            limits,
            memory_used: AtomicU64::new(0),
            removals: Removals::new(),
            observer: OnceLock::new(),
        };
        for recovered in streams.engine.recover()? {
            let fork = match &recovered.meta.fork {
                None => None,
                Some(record) => {
                    let source = streams
                        .map
                        .get(&record.source)
                        .map(|s| Arc::clone(&s))
                        .ok_or_else(|| {
                            StorageError::Corrupt(format!(
                                "fork {} refers to missing source {}",
                                recovered.path, record.source
                            ))
                        })?;
                    source.state.lock().forks += 1;
                    Some(ForkOrigin {
                        source,
                        offset: record.offset,
                        sub_offset: record.sub_offset,
                        point: record.point,
                    })
                }
            };
            let content_type = recovered.meta.content_type.clone();
            let config = StreamConfig {
                media_type: media_type(&content_type),
                content_type,
                expiry: expiry_of(recovered.meta.expiry),
                fork,
            };
            let tail = recovered.log.tail();
            let state = StreamState {
                producers: recovered.producers,
                closed_by: recovered.closed_by.map(producer_headers),
                last_seq: recovered.last_seq,
                soft_deleted: recovered.soft_deleted,
                ..StreamState::new(recovered.log, recovered.closed)
            };
            // Nothing was removed yet in this process.
            let stream = Stream::new(recovered.path.clone(), config, state, 0);
            stream.publish(tail, recovered.closed, recovered.soft_deleted);
            streams.map.insert(recovered.path, Arc::new(stream));
        }
        // A crash between a fork's removal and its source's cascaded removal
        // leaves a soft-deleted source nothing reads from: finish the job.
        let orphans: Vec<Arc<Stream>> = streams
            .map
            .iter()
            .filter(|s| {
                let state = s.state.lock();
                state.soft_deleted && state.forks == 0
            })
            .map(|s| Arc::clone(s.value()))
            .collect();
        for orphan in orphans {
            orphan.state.lock().soft_deleted = false;
            streams.remove(&orphan)?;
        }
        Ok(streams)
    }

    /// Tells `observer` of every stream created, appended to or removed
    /// from now on; one observer at most (a second is ignored).
    pub fn observe(&self, observer: Arc<dyn StreamObserver>) {
        let _ = self.observer.set(observer);
    }

    fn observer(&self) -> Option<&Arc<dyn StreamObserver>> {
        self.observer.get()
    }

    /// The paths and visible tails of the live streams (not soft-deleted).
    pub fn tails(&self) -> Vec<(String, Offset)> {
        self.map
            .iter()
            .filter(|s| !s.visible().gone)
            .map(|s| (s.key().clone(), s.visible().next))
            .collect()
    }

    /// The visible tail of the live stream at `path`, without counting as
    /// an access.
    pub fn tail(&self, path: &str) -> Option<Offset> {
        let stream = self.map.get(path)?;
        let tail = stream.visible();
        (!tail.gone).then_some(tail.next)
    }

    /// Number of streams held, soft-deleted ones included.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The stream at `path` for a client request: expired streams are
    /// reclaimed on the spot and soft-deleted ones are `Gone`. With `touch`
    /// the request counts as a read or write for the sliding TTL.
    pub fn get(&self, path: &str, touch: bool) -> Result<Arc<Stream>, StreamError> {
        let stream = self
            .map
            .get(path)
            .map(|s| Arc::clone(&s))
            .ok_or(StreamError::NotFound)?;
        let expired = {
            let mut state = stream.state.lock();
            if state.soft_deleted {
                return Err(StreamError::Gone);
            }
            let expired = stream.is_expired(&state);
            if touch && !expired {
                state.last_access = Instant::now();
            }
            expired
        };
        if expired {
            self.expire(&stream);
            // Expired with forks still reading it: soft-deleted, like a delete.
            return Err(if stream.state.lock().soft_deleted {
                StreamError::Gone
            } else {
                StreamError::NotFound
            });
        }
        Ok(stream)
    }

    /// Accounts for `added` bytes on a stream holding `current` bytes.
    fn reserve(&self, current: u64, added: u64) -> Result<(), StreamError> {
        let max_stream = self.limits.max_stream_bytes;
        if max_stream > 0 && current + added > max_stream {
            return Err(StreamError::StreamTooLarge {
                size: current + added,
                limit: max_stream,
            });
        }
        let max_memory = self.limits.max_memory_bytes;
        let before = self.memory_used.fetch_add(added, Ordering::Relaxed);
        if max_memory > 0 && before + added > max_memory {
            self.memory_used.fetch_sub(added, Ordering::Relaxed);
            return Err(StreamError::OutOfMemory { limit: max_memory });
        }
        Ok(())
    }
}

/// Bytes of data a log holds.
fn log_bytes(log: &dyn crate::storage::StreamLog) -> u64 {
    log.tail().bytes - log.base().bytes
}

/// A persisted expiry as the registry holds it (the inverse of
/// `create::meta_of`'s).
fn expiry_of(record: ExpiryRecord) -> Expiry {
    match record {
        ExpiryRecord::Never => Expiry::Never,
        ExpiryRecord::TtlSecs(secs) => Expiry::Ttl(secs),
        ExpiryRecord::AtUnixNanos(nanos) => Expiry::At(
            OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH),
        ),
    }
}

/// The span of waiting until storage has made a change durable: the
/// fsync, journal write or redb commit, which the engine may share with
/// other requests' changes (group commit; its own span links back to each
/// request). None when the change is durable already (memory, file-fast):
/// there is nothing to wait for.
fn commit_span(commit: &Commit, operation: &'static str, bytes: usize) -> tracing::Span {
    if !service_common::telemetry::tracing_enabled() || !commit.is_pending() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        target: service_common::telemetry::TARGET,
        "storage commit",
        otel.kind = "internal",
        ds.operation = operation,
        ds.bytes = bytes,
    )
}
