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

pub mod error;
pub mod stream;

pub use error::StreamError;
pub use stream::{Expiry, ReadResult, Stream, Tail};

use crate::protocol::headers::{ProducerHeaders, has_media_type, media_type};
use crate::protocol::json::{self, JsonContext, JsonMessages};
use crate::protocol::offset::Offset;
use crate::protocol::producer::{self, ProducerCheck, ProducerRejection, ProducerState};
use crate::storage::{
    Commit, Engine, ExpiryRecord, ForkRecord, Mutation, StorageError, StreamMeta,
};
use bytes::Bytes;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;
use stream::{ForkOrigin, StreamConfig, StreamState};
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

/// What a `PUT` asks for.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub content_type: Option<String>,
    pub expiry: Option<Expiry>,
    pub closed: bool,
    pub body: Bytes,
    pub fork: Option<ForkRequest>,
}

/// The fork headers of a `PUT` (§4.2).
#[derive(Debug, Clone)]
pub struct ForkRequest {
    /// Registry path of the source stream.
    pub source: String,
    pub offset: Option<Offset>,
    pub sub_offset: u64,
}

/// Whether a `PUT` made a new stream or found a matching one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    New,
    Existing,
}

/// What a `POST` asks for.
#[derive(Debug, Clone, Default)]
pub struct AppendRequest {
    pub content_type: Option<String>,
    pub body: Bytes,
    pub close: bool,
    pub stream_seq: Option<String>,
    pub producer: Option<ProducerHeaders>,
}

/// The result of a successful `POST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    pub next: Offset,
    pub closed: bool,
    /// The producer's state after the request, when producer headers were sent.
    pub producer: Option<ProducerState>,
    /// Whether this request appended new data (false for duplicates and
    /// close-only requests).
    pub appended: bool,
}

/// A validated `PUT`, not yet stored.
struct Prepared {
    config: StreamConfig,
    base: Offset,
    initial: Vec<JsonMessages>,
    /// Bytes reserved against the memory limit.
    size: u64,
}

impl Prepared {
    /// Gives back what preparing reserved.
    fn abandon(self, streams: &Streams) {
        streams.memory_used.fetch_sub(self.size, Ordering::Relaxed);
    }
}

/// Every stream, by path.
#[derive(Debug)]
pub struct Streams {
    map: DashMap<String, Arc<Stream>>,
    engine: Arc<dyn Engine>,
    limits: StorageLimits,
    memory_used: AtomicU64,
    removals: Removals,
}

/// Buckets of [`Removals`]: 16 KiB, whatever the number of paths.
const REMOVAL_BUCKETS: usize = 4096;

/// How many streams were removed in this process, per bucket of paths. A
/// stream created at a path whose bucket is non-zero takes the count as its
/// [`Stream::recreation`]; counts only grow, so it differs from that of
/// every earlier stream at the path. Paths sharing a bucket only get longer
/// ETags.
struct Removals(Box<[AtomicU32]>);

impl Removals {
    fn new() -> Self {
        Removals((0..REMOVAL_BUCKETS).map(|_| AtomicU32::new(0)).collect())
    }

    fn bucket(&self, path: &str) -> &AtomicU32 {
        let mut hasher = std::hash::DefaultHasher::new();
        path.hash(&mut hasher);
        &self.0[(hasher.finish() % REMOVAL_BUCKETS as u64) as usize]
    }

    fn count(&self, path: &str) -> u32 {
        self.bucket(path).load(Ordering::Relaxed)
    }

    fn record(&self, path: &str) {
        self.bucket(path).fetch_add(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Removals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Removals")
    }
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
                producers: recovered.producers.into_iter().collect(),
                closed_by: recovered.closed_by,
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

    /// Creates the stream at `path`, or confirms an identical one (§5.1).
    pub async fn create(
        &self,
        path: &str,
        request: CreateRequest,
    ) -> Result<(Created, Arc<Stream>), StreamError> {
        if let Some(existing) = self.existing(path)? {
            return self.confirmed(existing, &request).await;
        }
        // Validation, framing and fork resolution (which reads the map) come
        // first; storing happens while the path's slot is held, so two
        // racing creations never both reach storage.
        let prepared = self.prepare(&request)?;
        let (stream, commit) = match self.map.entry(path.to_owned()) {
            Entry::Occupied(slot) => {
                let theirs = Arc::clone(slot.get());
                drop(slot);
                prepared.abandon(self);
                return self.confirmed(theirs, &request).await;
            }
            Entry::Vacant(slot) => {
                let (stream, commit) = self.store(path, prepared, request.closed)?;
                let stream = Arc::new(stream);
                slot.insert(Arc::clone(&stream));
                (stream, commit)
            }
        };
        if let Err(e) = commit.wait().await {
            self.fail(&stream, &e);
            return Err(e.into());
        }
        let (tail, closed) = {
            let state = stream.state.lock();
            (state.log.tail(), state.closed)
        };
        stream.publish(tail, closed, false);
        Ok((Created::New, stream))
    }

    /// [`Streams::confirm`], answered once the existing stream's state is
    /// durable.
    async fn confirmed(
        &self,
        existing: Arc<Stream>,
        request: &CreateRequest,
    ) -> Result<(Created, Arc<Stream>), StreamError> {
        let confirmed = self.confirm(existing, request)?;
        confirmed.1.settle_written().await?;
        Ok(confirmed)
    }

    /// The live stream at `path`, if any, reclaiming it if expired.
    fn existing(&self, path: &str) -> Result<Option<Arc<Stream>>, StreamError> {
        match self.get(path, false) {
            Ok(stream) => Ok(Some(stream)),
            Err(StreamError::NotFound) => Ok(None),
            Err(StreamError::Gone) => Err(StreamError::PathRetired),
            Err(other) => Err(other),
        }
    }

    /// Answers a `PUT` on an existing stream: 200 when the configuration
    /// and closure status match, 409 otherwise.
    fn confirm(
        &self,
        existing: Arc<Stream>,
        request: &CreateRequest,
    ) -> Result<(Created, Arc<Stream>), StreamError> {
        let config = &existing.config;
        let wanted_type = match (&request.content_type, &request.fork) {
            (Some(ct), _) => media_type(ct),
            // A fork without Content-Type inherits its source's.
            (None, Some(_)) => config.media_type.clone(),
            (None, None) => DEFAULT_CONTENT_TYPE.to_owned(),
        };
        let fork_matches = match (&request.fork, &config.fork) {
            (None, None) => true,
            (Some(want), Some(have)) => {
                want.source == have.source.path
                    && want.offset.is_none_or(|o| o == have.offset)
                    && want.sub_offset == have.sub_offset
            }
            _ => false,
        };
        let expiry_matches = match request.expiry {
            Some(expiry) => expiry == config.expiry,
            None => config.fork.is_some() || config.expiry == Expiry::Never,
        };
        let closed = existing.state.lock().closed;
        if wanted_type == config.media_type
            && fork_matches
            && expiry_matches
            && closed == request.closed
        {
            Ok((Created::Existing, existing))
        } else {
            Err(StreamError::ConfigMismatch)
        }
    }

    /// Everything a `PUT` needs before it can be stored: the configuration,
    /// the initial messages, and the memory they take (reserved here).
    fn prepare(&self, request: &CreateRequest) -> Result<Prepared, StreamError> {
        let (config, base, prefix) = match &request.fork {
            None => {
                let content_type = request
                    .content_type
                    .clone()
                    .unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_owned());
                let config = StreamConfig {
                    media_type: media_type(&content_type),
                    content_type,
                    expiry: request.expiry.unwrap_or(Expiry::Never),
                    fork: None,
                };
                (config, Offset::ZERO, None)
            }
            Some(fork) => self.fork_config(request, fork)?,
        };
        let initial = if request.body.is_empty() {
            None
        } else if config.is_json() {
            Some(json::frame(
                &request.body,
                JsonContext::Create,
                self.limits.max_json_depth,
            )?)
        } else {
            Some(raw_message(&request.body))
        };
        let initial: Vec<JsonMessages> = [prefix, initial].into_iter().flatten().collect();
        let size: u64 = initial.iter().map(|m| m.encoded.len() as u64).sum();
        self.reserve(0, size)?;
        Ok(Prepared {
            config,
            base,
            initial,
            size,
        })
    }

    /// Stores a prepared stream and takes its reference on a fork source.
    fn store(
        &self,
        path: &str,
        prepared: Prepared,
        closed: bool,
    ) -> Result<(Stream, Commit), StreamError> {
        if let Some(fork) = &prepared.config.fork {
            let mut source = fork.source.state.lock();
            if source.soft_deleted || source.removed {
                drop(source);
                prepared.abandon(self);
                return Err(StreamError::ForkSourceGone);
            }
            source.forks += 1;
        }
        let Prepared {
            config,
            base,
            initial,
            size,
        } = prepared;
        let stored = self
            .engine
            .create(path, &meta_of(&config), base, initial, closed);
        let (log, commit) = match stored {
            Ok(stored) => stored,
            Err(e) => {
                self.memory_used.fetch_sub(size, Ordering::Relaxed);
                if let Some(fork) = &config.fork {
                    release_fork_ref(&fork.source);
                }
                return Err(e.into());
            }
        };
        let state = StreamState::new(log, closed);
        let recreation = self.removals.count(path);
        Ok((
            Stream::new(path.to_owned(), config, state, recreation),
            commit,
        ))
    }

    /// Resolves the fork headers: the source, its divergence point, the
    /// inherited content type and expiry, and the sub-offset prefix that
    /// becomes the fork's first own data. The caller takes the reference on
    /// the source once everything has been validated.
    fn fork_config(
        &self,
        request: &CreateRequest,
        fork: &ForkRequest,
    ) -> Result<(StreamConfig, Offset, Option<JsonMessages>), StreamError> {
        let source = match self.get(&fork.source, false) {
            Ok(source) => source,
            Err(StreamError::NotFound) => return Err(StreamError::ForkSourceNotFound),
            Err(StreamError::Gone) => return Err(StreamError::ForkSourceGone),
            Err(other) => return Err(other),
        };
        let (content_type, media) = match &request.content_type {
            Some(ct) if !has_media_type(ct, &source.config.media_type) => {
                return Err(StreamError::ContentTypeMismatch {
                    sent: ct.clone(),
                    expected: source.config.content_type.clone(),
                });
            }
            Some(ct) => (ct.clone(), source.config.media_type.clone()),
            None => (
                source.config.content_type.clone(),
                source.config.media_type.clone(),
            ),
        };
        let tail = source.visible().next;
        let point = match fork.offset {
            None if fork.sub_offset > 0 => {
                return Err(StreamError::ForkSubOffsetOutOfRange {
                    sub_offset: fork.sub_offset,
                });
            }
            None => tail,
            Some(offset) if offset > tail => {
                return Err(StreamError::ForkOffsetBeyondTail { offset, tail });
            }
            Some(offset) if !source.has_boundary(offset)? => {
                return Err(StreamError::OffsetNotInStream { offset });
            }
            Some(offset) => offset,
        };
        let json_mode = media == "application/json";
        let prefix = if fork.sub_offset == 0 {
            None
        } else {
            Some(sub_offset_prefix(
                &source,
                point,
                fork.sub_offset,
                json_mode,
            )?)
        };
        let expiry = request.expiry.unwrap_or(source.config.expiry);
        let config = StreamConfig {
            content_type,
            media_type: media,
            expiry,
            fork: Some(ForkOrigin {
                source,
                offset: fork.offset.unwrap_or(point),
                sub_offset: fork.sub_offset,
                point,
            }),
        };
        Ok((config, point, prefix))
    }

    /// Appends to, and optionally closes, the stream at `path` (§5.2, §5.3).
    pub async fn append(
        &self,
        path: &str,
        request: AppendRequest,
    ) -> Result<AppendOutcome, StreamError> {
        let stream = self.get(path, true)?;
        if request.body.is_empty() && !request.close {
            return Err(StreamError::EmptyAppend);
        }
        let (outcome, commit) = match self.submit_append(&stream, request) {
            Ok(submitted) => submitted,
            // Refusing because of a close another request made: only once
            // that close is durable.
            Err(StreamError::Closed { next }) => {
                stream.settled(next, true).await?;
                return Err(StreamError::Closed { next });
            }
            Err(e) => return Err(e),
        };
        match commit {
            // Acknowledge, and let readers see it, only once it is durable.
            Some(commit) => {
                if let Err(e) = commit.wait().await {
                    self.fail(&stream, &e);
                    return Err(e.into());
                }
                stream.publish(outcome.next, outcome.closed, false);
            }
            // Nothing new to store: the answer rests on earlier requests'
            // changes, so it waits for those to be durable.
            None => stream.settled(outcome.next, outcome.closed).await?,
        }
        Ok(outcome)
    }

    /// Validates an append under the stream's lock and submits it to
    /// storage; the returned commit says when it is durable (`None`: the
    /// request changed nothing).
    fn submit_append(
        &self,
        stream: &Arc<Stream>,
        request: AppendRequest,
    ) -> Result<(AppendOutcome, Option<Commit>), StreamError> {
        let config = &stream.config;
        // Framing reads the whole body: do it before taking the lock, and
        // report its errors only where the protocol ranks them.
        let framed = if request.body.is_empty() {
            None
        } else {
            Some(match &request.content_type {
                None => Err(StreamError::MissingContentType),
                Some(ct) if !has_media_type(ct, &config.media_type) => {
                    Err(StreamError::ContentTypeMismatch {
                        sent: ct.clone(),
                        expected: config.content_type.clone(),
                    })
                }
                Some(_) if config.is_json() => json::frame(
                    &request.body,
                    JsonContext::Append,
                    self.limits.max_json_depth,
                )
                .map_err(StreamError::from),
                Some(_) => Ok(raw_message(&request.body)),
            })
        };

        let mut state = stream.state.lock();
        if state.failed {
            return Err(StreamError::Unavailable);
        }
        if state.removed || state.soft_deleted {
            return Err(if state.soft_deleted {
                StreamError::Gone
            } else {
                StreamError::NotFound
            });
        }
        let mut sequence_gap = None;
        let producer_check = match &request.producer {
            None => None,
            Some(p) => {
                let known = state.producers.get(&p.id).copied();
                match producer::check(known, p.epoch, p.seq) {
                    Ok(ProducerCheck::Duplicate { state: known }) => {
                        let outcome = AppendOutcome {
                            next: state.log.tail(),
                            closed: state.closed,
                            producer: Some(known),
                            appended: false,
                        };
                        return Ok((outcome, None));
                    }
                    Ok(ProducerCheck::Accept { next }) => Some((p, next)),
                    // A gap ranks below closure and content checks (§5.2).
                    Err(gap @ ProducerRejection::SequenceGap { .. }) => {
                        sequence_gap = Some(gap);
                        None
                    }
                    Err(rejection) => return Err(rejection.into()),
                }
            }
        };
        if state.closed {
            if request.body.is_empty() {
                let outcome = AppendOutcome {
                    next: state.log.tail(),
                    closed: true,
                    producer: producer_check.map(|(_, next)| next),
                    appended: false,
                };
                return Ok((outcome, None));
            }
            return Err(StreamError::Closed {
                next: state.log.tail(),
            });
        }
        let messages = framed.transpose()?;
        if let Some(gap) = sequence_gap {
            return Err(gap.into());
        }
        if let (Some(sent), Some(last)) = (&request.stream_seq, &state.last_seq)
            && sent.as_bytes() <= last.as_bytes()
        {
            return Err(StreamError::SequenceRegression {
                sent: sent.clone(),
                last: last.clone(),
            });
        }
        let added = messages.as_ref().map_or(0, |m| m.encoded.len() as u64);
        self.reserve(log_bytes(&*state.log), added)?;

        // Every check passed: store the whole request as one mutation.
        let appended = messages.is_some();
        let closed_by = producer_check
            .as_ref()
            .map(|(p, _)| (p.id.clone(), p.epoch, p.seq));
        let mutation = Mutation {
            data: messages,
            producer: producer_check
                .as_ref()
                .map(|(p, next)| (p.id.clone(), *next)),
            stream_seq: request.stream_seq.clone(),
            close: request.close.then(|| closed_by.clone()),
        };
        let commit = match state.log.apply(mutation) {
            Ok(commit) => commit,
            Err(e) => {
                self.memory_used.fetch_sub(added, Ordering::Relaxed);
                return Err(e.into());
            }
        };
        if let Some(seq) = request.stream_seq {
            state.last_seq = Some(seq);
        }
        if let Some((p, next)) = &producer_check {
            state.producers.insert(p.id.clone(), *next);
        }
        if request.close {
            state.closed = true;
            state.closed_by = closed_by;
        }
        let outcome = AppendOutcome {
            next: state.log.tail(),
            closed: state.closed,
            producer: producer_check.map(|(_, next)| next),
            appended,
        };
        Ok((outcome, Some(commit)))
    }

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
    fn expire(&self, stream: &Arc<Stream>) {
        if let Err(e) = self.remove(stream) {
            tracing::error!(stream = %stream.path, error = %e, "cannot remove expired stream");
        }
    }

    /// Ends a stream's life: soft delete while it has forks, otherwise
    /// unregister it and release its source, cascading up the fork chain.
    /// Returns the storage commits to wait for.
    fn remove(&self, stream: &Arc<Stream>) -> Result<Vec<Commit>, StorageError> {
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
    fn fail(&self, stream: &Arc<Stream>, error: &StorageError) {
        tracing::error!(stream = %stream.path, %error, "storage commit failed; stream unavailable until restart");
        stream.state.lock().failed = true;
        stream.publish(Offset::ZERO, false, true);
        self.map
            .remove_if(&stream.path, |_, s| Arc::ptr_eq(s, stream));
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

/// Gives back the reference a fork took on its source when the fork is
/// abandoned before registration.
fn release_fork_ref(source: &Stream) {
    let mut state = source.state.lock();
    state.forks = state.forks.saturating_sub(1);
}

/// Bytes of data a log holds.
fn log_bytes(log: &dyn crate::storage::StreamLog) -> u64 {
    log.tail().bytes - log.base().bytes
}

/// The persisted form of a stream's configuration.
fn meta_of(config: &StreamConfig) -> StreamMeta {
    StreamMeta {
        content_type: config.content_type.clone(),
        expiry: match config.expiry {
            Expiry::Never => ExpiryRecord::Never,
            Expiry::Ttl(secs) => ExpiryRecord::TtlSecs(secs),
            Expiry::At(at) => ExpiryRecord::AtUnixNanos(at.unix_timestamp_nanos()),
        },
        fork: config.fork.as_ref().map(|fork| ForkRecord {
            source: fork.source.path.clone(),
            offset: fork.offset,
            sub_offset: fork.sub_offset,
            point: fork.point,
        }),
    }
}

fn expiry_of(record: ExpiryRecord) -> Expiry {
    match record {
        ExpiryRecord::Never => Expiry::Never,
        ExpiryRecord::TtlSecs(secs) => Expiry::Ttl(secs),
        ExpiryRecord::AtUnixNanos(nanos) => Expiry::At(
            OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH),
        ),
    }
}

/// A non-JSON body is one message.
fn raw_message(body: &Bytes) -> JsonMessages {
    JsonMessages {
        encoded: body.to_vec(),
        ends: vec![body.len()],
    }
}

/// The data a fork inherits past its anchor (`Stream-Fork-Sub-Offset`):
/// `count` bytes of the message at `at`, or `count` JSON messages from it.
fn sub_offset_prefix(
    source: &Stream,
    at: Offset,
    count: u64,
    json_mode: bool,
) -> Result<JsonMessages, StreamError> {
    let out_of_range = StreamError::ForkSubOffsetOutOfRange { sub_offset: count };
    let mut prefix = JsonMessages {
        encoded: Vec::new(),
        ends: Vec::new(),
    };
    let mut from = at;
    let messages = if json_mode { count } else { 1 };
    for _ in 0..messages {
        // A one-byte budget returns exactly one whole message.
        let read = source.read(from, 1)?;
        if read.slice.is_empty() {
            return Err(out_of_range);
        }
        let message: Vec<u8> = read.slice.data.concat();
        if json_mode {
            prefix.encoded.extend_from_slice(&message);
        } else {
            let take = usize::try_from(count).map_err(|_| out_of_range.clone())?;
            if take > message.len() {
                return Err(out_of_range);
            }
            prefix.encoded.extend_from_slice(&message[..take]);
        }
        prefix.ends.push(prefix.encoded.len());
        from = read.slice.next;
    }
    Ok(prefix)
}
