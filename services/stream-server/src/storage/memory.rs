//! The in-memory log of one stream.
//!
//! Appended bytes are copied once into a growing buffer that is shared,
//! never copied again: a read freezes whatever was appended since the last
//! read into an immutable [`Bytes`] piece (same allocation, no copy) and
//! answers with cheap slices of those pieces. The end position of every
//! message is kept so reads can stop on message boundaries and offsets can
//! be checked.

use crate::protocol::offset::Offset;
use bytes::{Bytes, BytesMut};

/// Appends reserve at least this much buffer, so small appends share one
/// allocation and reads return few, large pieces.
const BUFFER_CHUNK: usize = 64 * 1024;

/// A frozen, immutable run of the log.
#[derive(Debug)]
struct Piece {
    start: u64,
    data: Bytes,
}

/// One stream's bytes and message boundaries.
pub struct MemoryLog {
    /// Where this log begins: zero, or a fork's divergence point.
    base: Offset,
    /// Frozen data, contiguous from `base.bytes`.
    pieces: Vec<Piece>,
    /// Data appended after the last piece, not yet frozen.
    pending: BytesMut,
    /// Byte position just past each message, increasing.
    ends: Vec<u64>,
}

/// A byte range of the log, ending on a message boundary.
#[derive(Debug, Default)]
pub struct LogSlice {
    pub data: Vec<Bytes>,
    /// The offset just past the returned data.
    pub next: Offset,
}

impl LogSlice {
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn len(&self) -> usize {
        self.data.iter().map(Bytes::len).sum()
    }
}

impl std::fmt::Debug for MemoryLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLog")
            .field("base", &self.base)
            .field("tail", &self.tail())
            .finish_non_exhaustive()
    }
}

impl MemoryLog {
    pub fn new(base: Offset) -> Self {
        MemoryLog {
            base,
            pieces: Vec::new(),
            pending: BytesMut::new(),
            ends: Vec::new(),
        }
    }

    /// Where this log begins.
    pub fn base(&self) -> Offset {
        self.base
    }

    /// The offset after the last message.
    pub fn tail(&self) -> Offset {
        Offset::new(
            self.base.messages + self.ends.len() as u64,
            self.ends.last().copied().unwrap_or(self.base.bytes),
        )
    }

    /// Bytes held by this log.
    pub fn byte_len(&self) -> u64 {
        self.tail().bytes - self.base.bytes
    }

    /// Appends `data` holding messages that end at the given positions
    /// relative to `data` (increasing, the last equal to `data.len()`).
    pub fn append(&mut self, data: &[u8], message_ends: impl IntoIterator<Item = usize>) -> Offset {
        let start = self.tail().bytes;
        if self.pending.capacity() - self.pending.len() < data.len() {
            self.pending.reserve(data.len().max(BUFFER_CHUNK));
        }
        self.pending.extend_from_slice(data);
        self.ends
            .extend(message_ends.into_iter().map(|end| start + end as u64));
        self.tail()
    }

    /// The offset of the message boundary at byte position `bytes`, if there
    /// is one (the base and the tail included).
    pub fn boundary_at(&self, bytes: u64) -> Option<Offset> {
        if bytes == self.base.bytes {
            return Some(self.base);
        }
        self.ends
            .binary_search(&bytes)
            .ok()
            .map(|i| Offset::new(self.base.messages + i as u64 + 1, bytes))
    }

    /// Reads from `from` (a boundary of this log) up to `limit` (exclusive,
    /// a byte position; the tail when `None`), returning at most `max_bytes`
    /// unless the first message alone is larger.
    pub fn read(&mut self, from: Offset, limit: Option<u64>, max_bytes: usize) -> LogSlice {
        let tail = self.tail();
        let limit = limit.map_or(tail.bytes, |l| l.min(tail.bytes));
        if from.bytes >= limit {
            return LogSlice {
                data: Vec::new(),
                next: from,
            };
        }
        // End on the last message boundary within budget, or after the
        // first message when it alone exceeds the budget. The limit (a fork
        // point) is always a boundary.
        let budget_end = from.bytes.saturating_add(max_bytes as u64).min(limit);
        let end = if budget_end == limit {
            limit
        } else {
            let within = self.ends.partition_point(|&end| end <= budget_end);
            match self.ends.get(..within).and_then(<[u64]>::last) {
                Some(&last) if last > from.bytes => last,
                _ => {
                    let first = self.ends.partition_point(|&end| end <= from.bytes);
                    self.ends.get(first).copied().unwrap_or(limit).min(limit)
                }
            }
        };
        let messages = self.ends.partition_point(|&e| e < end) + 1;
        self.freeze_pending();
        LogSlice {
            data: self.slices(from.bytes, end),
            next: Offset::new(self.base.messages + messages as u64, end),
        }
    }

    /// Moves pending bytes into a frozen piece; same allocation, no copy.
    fn freeze_pending(&mut self) {
        if !self.pending.is_empty() {
            let start = self
                .pieces
                .last()
                .map_or(self.base.bytes, |p| p.start + p.data.len() as u64);
            self.pieces.push(Piece {
                start,
                data: self.pending.split().freeze(),
            });
        }
    }

    /// Slices of frozen pieces covering `[from, to)`.
    fn slices(&self, from: u64, to: u64) -> Vec<Bytes> {
        let mut out = Vec::new();
        let first = self
            .pieces
            .partition_point(|p| p.start + p.data.len() as u64 <= from);
        for piece in &self.pieces[first..] {
            if piece.start >= to {
                break;
            }
            let lo = from.saturating_sub(piece.start) as usize;
            let hi = ((to - piece.start) as usize).min(piece.data.len());
            out.push(piece.data.slice(lo..hi));
        }
        out
    }
}
