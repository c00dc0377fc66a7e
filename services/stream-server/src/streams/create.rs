//! `PUT`: creating a stream (§5.1), or confirming an identical one, and
//! forking one from another (§4.2).

use super::stream::{ForkOrigin, StreamConfig, StreamState};
use super::{DEFAULT_CONTENT_TYPE, Expiry, Stream, StreamError, Streams};
use crate::protocol::headers::{has_media_type, media_type};
use crate::protocol::json::{self, JsonContext};
use crate::protocol::offset::Offset;
use crate::storage::{Commit, ExpiryRecord, ForkRecord, MessageBatch, StreamMeta};
use bytes::Bytes;
use dashmap::mapref::entry::Entry;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tracing::Instrument;

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

/// A validated `PUT`, not yet stored.
struct Prepared {
    config: StreamConfig,
    base: Offset,
    initial: Vec<MessageBatch>,
    /// Bytes reserved against the memory limit.
    size: u64,
}

impl Prepared {
    /// Gives back what preparing reserved.
    fn abandon(self, streams: &Streams) {
        streams.memory_used.fetch_sub(self.size, Ordering::Relaxed);
    }
}

impl Streams {
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
                if let Some(observer) = self.observer() {
                    observer.created(&stream);
                }
                (stream, commit)
            }
        };
        let span = super::commit_span(&commit, "create", 0);
        let durable = commit.wait().instrument(span);
        if let Err(e) = durable.await {
            self.fail(&stream, &e);
            return Err(e.into());
        }
        let (tail, closed) = {
            let state = stream.state.lock();
            (state.log.tail(), state.closed)
        };
        stream.publish(tail, closed, false);
        if let Some(observer) = self.observer() {
            observer.appended(&stream);
        }
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
            Some(
                json::frame(
                    &request.body,
                    JsonContext::Create,
                    self.limits.max_json_depth,
                )?
                .into(),
            )
        } else {
            Some(MessageBatch::single(request.body.clone()))
        };
        let initial: Vec<MessageBatch> = [prefix, initial].into_iter().flatten().collect();
        let size: u64 = initial.iter().map(|m| m.byte_len() as u64).sum();
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
    ) -> Result<(StreamConfig, Offset, Option<MessageBatch>), StreamError> {
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
}

/// Gives back the reference a fork took on its source when the fork is
/// abandoned before registration.
fn release_fork_ref(source: &Stream) {
    let mut state = source.state.lock();
    state.forks = state.forks.saturating_sub(1);
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

/// The data a fork inherits past its anchor (`Stream-Fork-Sub-Offset`):
/// `count` bytes of the message at `at`, or `count` JSON messages from it.
fn sub_offset_prefix(
    source: &Stream,
    at: Offset,
    count: u64,
    json_mode: bool,
) -> Result<MessageBatch, StreamError> {
    let out_of_range = StreamError::ForkSubOffsetOutOfRange { sub_offset: count };
    let mut prefix = Vec::new();
    let mut from = at;
    let messages = if json_mode { count } else { 1 };
    for _ in 0..messages {
        // A one-byte budget returns exactly one whole message.
        let read = source.read(from, 1)?;
        if read.slice.is_empty() {
            return Err(out_of_range);
        }
        let mut message: Vec<u8> = read.slice.data.concat();
        if !json_mode {
            let take = usize::try_from(count).map_err(|_| out_of_range.clone())?;
            if take > message.len() {
                return Err(out_of_range);
            }
            message.truncate(take);
        }
        prefix.push(message);
        from = read.slice.next;
    }
    Ok(MessageBatch::of(prefix))
}
