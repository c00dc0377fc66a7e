//! One stream: its fixed configuration, its mutable protocol state behind a
//! per-stream lock, and the watch channel that wakes its live readers.

use super::error::StreamError;
use crate::protocol::offset::Offset;
use crate::protocol::producer::ProducerState;
use crate::storage::memory::{LogSlice, MemoryLog};
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
    pub log: MemoryLog,
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
}

/// What live readers watch: the tail and whether the stream has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail {
    pub next: Offset,
    pub closed: bool,
    /// Deleted, soft-deleted or expired: readers must stop.
    pub gone: bool,
}

/// A stream in the registry.
#[derive(Debug)]
pub struct Stream {
    pub path: String,
    pub config: StreamConfig,
    pub state: Mutex<StreamState>,
    tail: watch::Sender<Tail>,
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
    pub fn new(path: String, config: StreamConfig, log: MemoryLog, closed: bool) -> Self {
        let next = log.tail();
        Stream {
            path,
            config,
            state: Mutex::new(StreamState {
                log,
                closed,
                closed_by: None,
                producers: HashMap::new(),
                last_seq: None,
                last_access: Instant::now(),
                soft_deleted: false,
                removed: false,
                forks: 0,
            }),
            tail: watch::Sender::new(Tail {
                next,
                closed,
                gone: false,
            }),
        }
    }

    /// Watches the tail; the receiver sees every change after this call.
    pub fn subscribe(&self) -> watch::Receiver<Tail> {
        self.tail.subscribe()
    }

    /// Tells live readers about a new tail or state (call with the state
    /// lock held so notifications follow the order of changes).
    pub fn publish(&self, state: &StreamState) {
        self.tail.send_replace(Tail {
            next: state.log.tail(),
            closed: state.closed,
            gone: state.removed || state.soft_deleted,
        });
    }

    /// Whether the stream has expired at this moment.
    pub fn is_expired(&self, state: &StreamState) -> bool {
        match self.config.expiry {
            Expiry::Never => false,
            Expiry::Ttl(secs) => state.last_access.elapsed() >= Duration::from_secs(secs),
            Expiry::At(at) => OffsetDateTime::now_utc() >= at,
        }
    }

    /// Whether `offset` names a message boundary of this stream, inherited
    /// data and the tail included.
    pub fn has_boundary(&self, offset: Offset) -> bool {
        if let Some(fork) = &self.config.fork
            && offset.bytes < fork.point.bytes
        {
            return fork.source.has_boundary(offset);
        }
        self.state.lock().log.boundary_at(offset.bytes) == Some(offset)
    }

    /// Reads up to `max_bytes` from `from`, stitching inherited fork data
    /// and the stream's own data into one answer.
    pub fn read(&self, from: Offset, max_bytes: usize) -> Result<ReadResult, StreamError> {
        if !self.has_boundary(from) {
            return Err(StreamError::OffsetNotInStream { offset: from });
        }
        let mut slice = match &self.config.fork {
            Some(fork) if from.bytes < fork.point.bytes => {
                fork.source.read_until(from, fork.point.bytes, max_bytes)
            }
            _ => LogSlice {
                data: Vec::new(),
                next: from,
            },
        };
        let mut state = self.state.lock();
        let own_from = slice.next;
        let budget = max_bytes.saturating_sub(slice.len());
        if own_from >= state.log.base() && (slice.is_empty() || budget > 0) {
            let own = state.log.read(own_from, None, budget.max(1));
            if !own.is_empty() {
                slice.data.extend(own.data);
                slice.next = own.next;
            }
        }
        Ok(ReadResult {
            slice,
            tail: state.log.tail(),
            closed: state.closed,
        })
    }

    /// Reads inherited data for a fork, stopping at `limit` (a byte position).
    fn read_until(&self, from: Offset, limit: u64, max_bytes: usize) -> LogSlice {
        match &self.config.fork {
            Some(fork) if from.bytes < fork.point.bytes => {
                let mut slice =
                    fork.source
                        .read_until(from, fork.point.bytes.min(limit), max_bytes);
                let budget = max_bytes.saturating_sub(slice.len());
                if slice.next.bytes == fork.point.bytes && limit > fork.point.bytes && budget > 0 {
                    let own = self.state.lock().log.read(fork.point, Some(limit), budget);
                    if !own.is_empty() {
                        slice.data.extend(own.data);
                        slice.next = own.next;
                    }
                }
                slice
            }
            _ => self.state.lock().log.read(from, Some(limit), max_bytes),
        }
    }
}
