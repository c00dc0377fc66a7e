//! The stream registry: every stream by path, and the protocol operations
//! (create, append, close, delete, lookup) applied to them.
//!
//! The registry is a sharded concurrent map, so requests on different
//! streams never contend on one lock. Each stream serialises its own
//! appends with a short, synchronous lock that is never held across an
//! `.await`; that lock is also what serialises validation and append per
//! `(stream, producer)` as §5.2.1 requires. Expensive work (JSON validation)
//! happens before the lock is taken.

pub mod error;
pub mod stream;

pub use error::StreamError;
pub use stream::{Expiry, ReadResult, Stream, Tail};

use crate::protocol::headers::{ProducerHeaders, media_type};
use crate::protocol::json::{self, JsonContext, JsonMessages};
use crate::protocol::offset::Offset;
use crate::protocol::producer::{self, ProducerCheck, ProducerRejection, ProducerState};
use crate::storage::memory::MemoryLog;
use bytes::Bytes;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use stream::{ForkOrigin, StreamConfig};

/// Content type of streams created without one (§5.1).
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// Size limits enforced on stored data; `0` means unlimited.
#[derive(Debug, Clone, Copy, Default)]
pub struct StorageLimits {
    pub max_stream_bytes: u64,
    pub max_memory_bytes: u64,
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

/// Every stream, by path.
#[derive(Debug, Default)]
pub struct Streams {
    map: DashMap<String, Arc<Stream>>,
    limits: StorageLimits,
    memory_used: AtomicU64,
}

impl Streams {
    pub fn new(limits: StorageLimits) -> Self {
        Streams {
            map: DashMap::new(),
            limits,
            memory_used: AtomicU64::new(0),
        }
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
            self.remove(&stream);
            return Err(StreamError::NotFound);
        }
        Ok(stream)
    }

    /// Creates the stream at `path`, or confirms an identical one (§5.1).
    pub fn create(
        &self,
        path: &str,
        request: CreateRequest,
    ) -> Result<(Created, Arc<Stream>), StreamError> {
        if let Some(existing) = self.existing(path)? {
            return self.confirm(existing, &request);
        }
        let stream = Arc::new(self.build(path, &request)?);
        match self.map.entry(path.to_owned()) {
            Entry::Vacant(slot) => {
                slot.insert(Arc::clone(&stream));
                Ok((Created::New, stream))
            }
            // Another request created it meanwhile: undo ours, compare with theirs.
            Entry::Occupied(slot) => {
                let theirs = Arc::clone(slot.get());
                drop(slot);
                self.discard(&stream);
                self.confirm(theirs, &request)
            }
        }
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

    /// Builds a new stream (not yet registered) from a `PUT`.
    fn build(&self, path: &str, request: &CreateRequest) -> Result<Stream, StreamError> {
        let (config, mut log, prefix) = match &request.fork {
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
                (config, MemoryLog::new(Offset::ZERO), None)
            }
            Some(fork) => self.fork_config(request, fork)?,
        };
        let initial = if request.body.is_empty() {
            None
        } else if config.is_json() {
            Some(json::frame(&request.body, JsonContext::Create)?)
        } else {
            Some(raw_message(&request.body))
        };
        let size = prefix
            .as_ref()
            .map_or(0, |m: &JsonMessages| m.encoded.len())
            + initial.as_ref().map_or(0, |m| m.encoded.len());
        self.reserve(0, size as u64)?;
        if let Some(fork) = &config.fork {
            let mut source = fork.source.state.lock();
            if source.soft_deleted || source.removed {
                drop(source);
                self.memory_used.fetch_sub(size as u64, Ordering::Relaxed);
                return Err(StreamError::ForkSourceGone);
            }
            source.forks += 1;
        }
        for messages in [prefix, initial].into_iter().flatten() {
            log.append(&messages.encoded, messages.ends);
        }
        Ok(Stream::new(path.to_owned(), config, log, request.closed))
    }

    /// Resolves the fork headers: the source, its divergence point, the
    /// inherited content type and expiry, and the sub-offset prefix that
    /// becomes the fork's first own data. The caller takes the reference on
    /// the source once everything has been validated.
    fn fork_config(
        &self,
        request: &CreateRequest,
        fork: &ForkRequest,
    ) -> Result<(StreamConfig, MemoryLog, Option<JsonMessages>), StreamError> {
        let source = match self.get(&fork.source, false) {
            Ok(source) => source,
            Err(StreamError::NotFound) => return Err(StreamError::ForkSourceNotFound),
            Err(StreamError::Gone) => return Err(StreamError::ForkSourceGone),
            Err(other) => return Err(other),
        };
        let (content_type, media) = match &request.content_type {
            Some(ct) if media_type(ct) != source.config.media_type => {
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
        let tail = source.state.lock().log.tail();
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
            Some(offset) if !source.has_boundary(offset) => {
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
        Ok((config, MemoryLog::new(point), prefix))
    }

    /// Appends to, and optionally closes, the stream at `path` (§5.2, §5.3).
    pub fn append(&self, path: &str, request: AppendRequest) -> Result<AppendOutcome, StreamError> {
        let stream = self.get(path, true)?;
        if request.body.is_empty() && !request.close {
            return Err(StreamError::EmptyAppend);
        }
        let config = &stream.config;
        // Framing reads the whole body: do it before taking the lock, and
        // report its errors only where the protocol ranks them.
        let framed = if request.body.is_empty() {
            None
        } else {
            Some(match &request.content_type {
                None => Err(StreamError::MissingContentType),
                Some(ct) if media_type(ct) != config.media_type => {
                    Err(StreamError::ContentTypeMismatch {
                        sent: ct.clone(),
                        expected: config.content_type.clone(),
                    })
                }
                Some(_) if config.is_json() => {
                    json::frame(&request.body, JsonContext::Append).map_err(StreamError::from)
                }
                Some(_) => Ok(raw_message(&request.body)),
            })
        };

        let mut state = stream.state.lock();
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
                        return Ok(AppendOutcome {
                            next: state.log.tail(),
                            closed: state.closed,
                            producer: Some(known),
                            appended: false,
                        });
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
                return Ok(AppendOutcome {
                    next: state.log.tail(),
                    closed: true,
                    producer: producer_check.map(|(_, next)| next),
                    appended: false,
                });
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
        if let Some(messages) = &messages {
            self.reserve(state.log.byte_len(), messages.encoded.len() as u64)?;
        }

        // Every check passed: apply the whole request at once.
        let appended = messages.is_some();
        if let Some(messages) = messages {
            state.log.append(&messages.encoded, messages.ends);
        }
        if let Some(seq) = request.stream_seq {
            state.last_seq = Some(seq);
        }
        if let Some((p, next)) = &producer_check {
            state.producers.insert(p.id.clone(), *next);
        }
        if request.close {
            state.closed = true;
            state.closed_by = producer_check
                .as_ref()
                .map(|(p, _)| (p.id.clone(), p.epoch, p.seq));
        }
        stream.publish(&state);
        Ok(AppendOutcome {
            next: state.log.tail(),
            closed: state.closed,
            producer: producer_check.map(|(_, next)| next),
            appended,
        })
    }

    /// Deletes the stream at `path` (§5.4): soft-deleted while forks read
    /// from it, removed otherwise.
    pub fn delete(&self, path: &str) -> Result<(), StreamError> {
        let stream = self.get(path, false)?;
        self.remove(&stream);
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
        expired.iter().for_each(|stream| self.remove(stream));
        expired.len()
    }

    /// Ends a stream's life: soft delete while it has forks, otherwise
    /// unregister it and release its source, cascading up the fork chain.
    fn remove(&self, stream: &Arc<Stream>) {
        let mut current = Arc::clone(stream);
        loop {
            {
                let mut state = current.state.lock();
                if state.removed {
                    return;
                }
                if state.forks > 0 {
                    state.soft_deleted = true;
                    current.publish(&state);
                    return;
                }
                state.removed = true;
                self.memory_used
                    .fetch_sub(state.log.byte_len(), Ordering::Relaxed);
                current.publish(&state);
            }
            self.map
                .remove_if(&current.path, |_, s| Arc::ptr_eq(s, &current));
            let Some(fork) = &current.config.fork else {
                return;
            };
            let source = Arc::clone(&fork.source);
            let cascade = {
                let mut state = source.state.lock();
                state.forks = state.forks.saturating_sub(1);
                state.forks == 0 && state.soft_deleted
            };
            if !cascade {
                return;
            }
            current = source;
        }
    }

    /// Drops a stream built but never registered (lost a creation race).
    fn discard(&self, stream: &Arc<Stream>) {
        let state = stream.state.lock();
        self.memory_used
            .fetch_sub(state.log.byte_len(), Ordering::Relaxed);
        drop(state);
        if let Some(fork) = &stream.config.fork {
            release_fork_ref(&fork.source);
        }
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
