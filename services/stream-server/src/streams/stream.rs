//! One stream: its fixed configuration, its mutable protocol state behind a
//! per-stream lock, and the watch channel that wakes its live readers.
//! Reading its data is in `streams::read`.

use super::error::StreamError;
use crate::protocol::headers::ProducerHeaders;
use crate::protocol::offset::Offset;
use crate::protocol::producer::ProducerState;
use crate::storage::{ClosingProducer, StreamLog};
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::sync::watch;

/// When a stream expires (§5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Never,
    /// Sliding window in seconds, restarted by every read and write.
    Ttl(u64),
    /// Absolute deadline.
    At(OffsetDateTime),
}

/// Where a fork's inherited data comes from (§4.2).
#[derive(Debug)]
pub struct ForkOrigin {
    pub source: Arc<Stream>,
    /// The `Stream-Fork-Offset` the fork was created with (the source tail
    /// when the header was omitted).
    pub offset: Offset,
    pub sub_offset: u64,
    /// The divergence point: inherited data ends here, own data starts here.
    pub point: Offset,
}

/// What a stream was created with; never changes afterwards.
#[derive(Debug)]
pub struct StreamConfig {
    pub content_type: String,
    /// `content_type` lowercased without parameters, for comparisons.
    pub media_type: String,
    pub expiry: Expiry,
    pub fork: Option<ForkOrigin>,
}

impl StreamConfig {
    /// JSON mode (§9.1).
    pub fn is_json(&self) -> bool {
        self.media_type == "application/json"
    }
}

/// Protocol state that changes with appends; guarded by [`Stream::state`].
#[derive(Debug)]
pub struct StreamState {
    pub log: Arc<dyn StreamLog>,
    pub closed: bool,
    /// The producer request that closed the stream, to recognise its retry.
    pub closed_by: Option<ProducerHeaders>,
    pub producers: HashMap<String, ProducerState>,
    /// The last `Stream-Seq` accepted (scoped per stream).
    pub last_seq: Option<String>,
    /// Last read or write, for sliding TTLs.
    pub last_access: Instant,
    /// Deleted while forks still read from it (§4.2 soft delete).
    pub soft_deleted: bool,
    /// Removed from the registry; live readers must stop.
    pub removed: bool,
    /// Forks whose inherited data comes from this stream.
    pub forks: usize,
    /// A change could not be stored; the stream refuses further requests.
    pub failed: bool,
}

impl StreamState {
    /// The state of a stream that was just created or loaded.
    pub fn new(log: Arc<dyn StreamLog>, closed: bool) -> Self {
        StreamState {
            log,
            closed,
            closed_by: None,
            producers: HashMap::new(),
            last_seq: None,
            last_access: Instant::now(),
            soft_deleted: false,
            removed: false,
            forks: 0,
            failed: false,
        }
    }
}

/// A closing producer request as storage remembers it.
pub(super) fn closing_producer(request: &ProducerHeaders) -> ClosingProducer {
    ClosingProducer {
        id: request.id.clone(),
        epoch: request.epoch,
        seq: request.seq,
    }
}

/// The producer request storage remembers as having closed a stream.
pub(super) fn producer_headers(closed_by: ClosingProducer) -> ProducerHeaders {
    let ClosingProducer { id, epoch, seq } = closed_by;
    ProducerHeaders { id, epoch, seq }
}

/// What readers may see: the durable tail and whether the stream has
/// ended. Live readers watch it for changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail {
    pub next: Offset,
    pub closed: bool,
    /// Deleted, soft-deleted or expired: readers must stop.
    pub gone: bool,
    /// The stream's creation is durable.
    pub created: bool,
}

/// A stream in the registry.
#[derive(Debug)]
pub struct Stream {
    pub path: String,
    pub config: StreamConfig,
    pub state: Mutex<StreamState>,
    /// Published only once changes are durable (§ "visibility follows
    /// durability"); reads never go past it.
    visible: watch::Sender<Tail>,
    /// Reads may block on disk I/O and run on the blocking pool.
    pub(super) blocking_reads: bool,
    /// Non-zero when a stream at this path (or one sharing its bucket) was
    /// removed earlier in this process; part of the ETag, so this stream's
    /// tags never match the earlier one's (§ "ETag": the stream id).
    pub recreation: u32,
    /// The newest live delivery as framed for subscribers (see
    /// [`Stream::shared_delivery`]).
    delivery: Mutex<Option<Delivery>>,
}

/// Framed bytes of the stream's data from `from` to `next`.
#[derive(Debug)]
struct Delivery {
    from: Offset,
    next: Offset,
    framed: SharedFraming,
}

/// SSE events framing some of a stream's data, which subscribers at the
/// same position share (see [`Stream::shared_delivery`]).
#[derive(Debug, Clone)]
pub struct SharedFraming {
    /// The data events and the head of the control event after them.
    pub bytes: Bytes,
    /// Messages in the data events.
    pub messages: usize,
    /// Data events, not counting the control event.
    pub events: usize,
}

impl Stream {
    /// A stream whose state is `state`; nothing is visible to readers until
    /// [`Stream::publish`] says so.
    pub fn new(path: String, config: StreamConfig, state: StreamState, recreation: u32) -> Self {
        let blocking_reads = state.log.reads_block();
        let visible = Tail {
            next: state.log.base(),
            closed: false,
            gone: false,
            created: false,
        };
        Stream {
            path,
            config,
            state: Mutex::new(state),
            visible: watch::Sender::new(visible),
            blocking_reads,
            recreation,
            delivery: Mutex::new(None),
        }
    }

    /// Watches the visible tail; the receiver sees every change after this call.
    pub fn subscribe(&self) -> watch::Receiver<Tail> {
        self.visible.subscribe()
    }

    /// What readers may see now.
    pub fn visible(&self) -> Tail {
        *self.visible.borrow()
    }

    /// Makes durable changes visible and wakes live readers. Merges
    /// monotonically, so commits published out of order never move the
    /// tail back or reopen the stream.
    pub fn publish(&self, next: Offset, closed: bool, gone: bool) {
        self.visible.send_if_modified(|tail| {
            let merged = Tail {
                next: tail.next.max(next),
                closed: tail.closed || closed,
                gone: tail.gone || gone,
                created: true,
            };
            let changed = merged != *tail;
            *tail = merged;
            changed
        });
    }

    /// The framing a live reader kept with [`Stream::share_delivery`] for
    /// the data from `from` to `next`, if that is the newest one kept.
    ///
    /// Every subscriber at the same position wakes for the same append and
    /// would read and frame the same bytes: the first one keeps its
    /// framing here and the others copy it. Stored data never changes, so
    /// the framing of a range stays right for as long as the stream lives.
    pub fn shared_delivery(&self, from: Offset, next: Offset) -> Option<SharedFraming> {
        match &*self.delivery.lock() {
            Some(kept) if kept.from == from && kept.next == next => Some(kept.framed.clone()),
            _ => None,
        }
    }

    /// Keeps `framed`, the framing of the data from `from` to `next`, for
    /// [`Stream::shared_delivery`], in place of the one kept before; only
    /// while someone else watches the stream, who could use it.
    pub fn share_delivery(&self, from: Offset, next: Offset, framed: SharedFraming) {
        if self.visible.receiver_count() > 1 {
            *self.delivery.lock() = Some(Delivery { from, next, framed });
        }
    }

    /// Waits until the stream's durable state has caught up with `next`
    /// and `closed`: an answer derived from state that an earlier request
    /// wrote (a duplicate, an idempotent close or create) is given only
    /// once that state can no longer be lost.
    pub async fn settled(&self, next: Offset, closed: bool) -> Result<(), StreamError> {
        let mut changes = self.visible.subscribe();
        loop {
            let tail = *changes.borrow_and_update();
            if tail.created && tail.next >= next && (tail.closed || !closed) {
                return Ok(());
            }
            if tail.gone {
                return Err(StreamError::Unavailable);
            }
            if changes.changed().await.is_err() {
                return Err(StreamError::Unavailable);
            }
        }
    }

    /// [`Stream::settled`] for everything written to the stream so far.
    pub async fn settle_written(&self) -> Result<(), StreamError> {
        let (next, closed) = {
            let state = self.state.lock();
            (state.log.tail(), state.closed)
        };
        self.settled(next, closed).await
    }

    /// Whether the stream has expired at this moment.
    pub fn is_expired(&self, state: &StreamState) -> bool {
        match self.config.expiry {
            Expiry::Never => false,
            Expiry::Ttl(secs) => state.last_access.elapsed() >= Duration::from_secs(secs),
            Expiry::At(at) => OffsetDateTime::now_utc() >= at,
        }
    }
}
