//! One stream: its fixed configuration, its mutable protocol state behind a
//! per-stream lock, and the watch channel that wakes its live readers.

use super::error::StreamError;
use crate::protocol::offset::Offset;
use crate::protocol::producer::ProducerState;
use crate::storage::{LogSlice, StorageError, StreamLog};
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

/// The `(producer id, epoch, seq)` of a request.
pub type ProducerTuple = (String, u64, u64);

/// Protocol state that changes with appends; guarded by [`Stream::state`].
#[derive(Debug)]
pub struct StreamState {
    pub log: Arc<dyn StreamLog>,
    pub closed: bool,
    /// The producer request that closed the stream, to recognise its retry.
    pub closed_by: Option<ProducerTuple>,
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
    blocking_reads: bool,
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
    framed: Bytes,
}

/// A read's answer: data ending on a message boundary, and where it ended.
#[derive(Debug)]
pub struct ReadResult {
    pub slice: LogSlice,
    /// The stream's tail when the read was made.
    pub tail: Offset,
    pub closed: bool,
}

impl ReadResult {
    /// The read reached the tail: nothing more is available now.
    pub fn up_to_date(&self) -> bool {
        self.slice.next >= self.tail
    }
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
    pub fn shared_delivery(&self, from: Offset, next: Offset) -> Option<Bytes> {
        match &*self.delivery.lock() {
            Some(kept) if kept.from == from && kept.next == next => Some(kept.framed.clone()),
            _ => None,
        }
    }

    /// Keeps `framed`, the framing of the data from `from` to `next`, for
    /// [`Stream::shared_delivery`], in place of the one kept before; only
    /// while someone else watches the stream, who could use it.
    pub fn share_delivery(&self, from: Offset, next: Offset, framed: Bytes) {
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

    /// Whether `offset` names a visible message boundary of this stream,
    /// inherited data and the tail included.
    pub fn has_boundary(&self, offset: Offset) -> Result<bool, StorageError> {
        if let Some(fork) = &self.config.fork
            && offset.bytes < fork.point.bytes
        {
            return fork.source.has_boundary(offset);
        }
        if offset > self.visible().next {
            return Ok(false);
        }
        let log = Arc::clone(&self.state.lock().log);
        Ok(log.boundary_at(offset.bytes)? == Some(offset))
    }

    /// [`Stream::read`], on the blocking pool when reads touch the disk.
    pub async fn read_async(
        self: &Arc<Self>,
        from: Offset,
        max_bytes: usize,
    ) -> Result<ReadResult, StreamError> {
        self.read_with(Stream::read, from, max_bytes).await
    }

    /// [`Stream::read_async`] from an offset known to be one of this
    /// stream's boundaries (checked before, or the `next` of an earlier
    /// read): a live reader's every wake-up skips the check.
    pub async fn continue_read_async(
        self: &Arc<Self>,
        from: Offset,
        max_bytes: usize,
    ) -> Result<ReadResult, StreamError> {
        self.read_with(Stream::read_from_boundary, from, max_bytes)
            .await
    }

    async fn read_with(
        self: &Arc<Self>,
        read: fn(&Stream, Offset, usize) -> Result<ReadResult, StreamError>,
        from: Offset,
        max_bytes: usize,
    ) -> Result<ReadResult, StreamError> {
        if !self.read_blocks_from(from) {
            return read(self, from, max_bytes);
        }
        self.off_runtime(move |stream| read(stream, from, max_bytes))
            .await
    }

    /// Whether reading from `from` may wait on disk: reads at the tail of
    /// a file-mode stream are served from memory.
    fn read_blocks_from(&self, from: Offset) -> bool {
        if !self.blocking_reads {
            return false;
        }
        if let Some(fork) = &self.config.fork
            && from.bytes < fork.point.bytes
        {
            return true;
        }
        self.state.lock().log.reads_block_from(from.bytes)
    }

    /// [`Stream::has_boundary`], on the blocking pool when it touches the disk.
    pub async fn has_boundary_async(self: &Arc<Self>, offset: Offset) -> Result<bool, StreamError> {
        self.off_runtime(move |stream| Ok(stream.has_boundary(offset)?))
            .await
    }

    /// Runs storage work directly for memory, or on the blocking pool
    /// when it may wait on disk I/O.
    async fn off_runtime<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&Stream) -> Result<T, StreamError> + Send + 'static,
    ) -> Result<T, StreamError> {
        if !self.blocking_reads {
            return work(self);
        }
        let stream = Arc::clone(self);
        tokio::task::spawn_blocking(move || work(&stream))
            .await
            .map_err(|e| StreamError::Storage(StorageError::Io(e.to_string())))?
    }

    /// Reads up to `max_bytes` of visible data from `from`, stitching
    /// inherited fork data and the stream's own data into one answer.
    pub fn read(&self, from: Offset, max_bytes: usize) -> Result<ReadResult, StreamError> {
        if !self.has_boundary(from)? {
            return Err(StreamError::OffsetNotInStream { offset: from });
        }
        self.read_from_boundary(from, max_bytes)
    }

    /// [`Stream::read`] without checking that `from` is a boundary.
    fn read_from_boundary(
        &self,
        from: Offset,
        max_bytes: usize,
    ) -> Result<ReadResult, StreamError> {
        // Snapshot what is visible first: the answer never goes past it.
        let visible = self.visible();
        let mut slice = match &self.config.fork {
            Some(fork) if from.bytes < fork.point.bytes => {
                fork.source.read_until(from, fork.point.bytes, max_bytes)?
            }
            _ => LogSlice::empty(from),
        };
        let log = Arc::clone(&self.state.lock().log);
        let budget = max_bytes.saturating_sub(slice.len());
        if slice.next >= log.base() && (slice.is_empty() || budget > 0) {
            slice.extend(log.read(slice.next, visible.next.bytes, budget.max(1))?);
        }
        Ok(ReadResult {
            slice,
            tail: visible.next,
            closed: visible.closed,
        })
    }

    /// Reads inherited data for a fork, stopping at `limit` (a byte position).
    fn read_until(
        &self,
        from: Offset,
        limit: u64,
        max_bytes: usize,
    ) -> Result<LogSlice, StorageError> {
        let log = Arc::clone(&self.state.lock().log);
        match &self.config.fork {
            Some(fork) if from.bytes < fork.point.bytes => {
                let mut slice =
                    fork.source
                        .read_until(from, fork.point.bytes.min(limit), max_bytes)?;
                let budget = max_bytes.saturating_sub(slice.len());
                if slice.next.bytes == fork.point.bytes && limit > fork.point.bytes && budget > 0 {
                    slice.extend(log.read(fork.point, limit, budget)?);
                }
                Ok(slice)
            }
            _ => log.read(from, limit, max_bytes),
        }
    }
}
