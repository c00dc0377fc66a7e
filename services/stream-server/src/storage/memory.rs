//! The in-memory engine: nothing on disk, every commit immediate.
//!
//! Appended bytes are copied once into a buffer and never copied again: a
//! read freezes whatever was appended since the last read into an
//! immutable [`Bytes`] piece (same allocation, no copy) and answers with
//! cheap slices of those pieces; a buffer that fills up is frozen the same
//! way and the next append starts a new one. The end position of every
//! message is kept so reads stop on message boundaries and offsets can be
//! checked.

use super::MessageBatch;
use super::{Commit, Engine, LogSlice, Mutation, Recovered, StorageError, StreamLog, StreamMeta};
use crate::protocol::offset::Offset;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use std::sync::Arc;

/// Appends reserve at least this much buffer, so small appends share one
/// allocation and reads return few, large pieces.
const BUFFER_CHUNK: usize = 64 * 1024;
/// Each new buffer of a stream doubles the last, up to this much, so a
/// large stream is held in few pieces without much unused capacity.
const MAX_BUFFER_CHUNK: usize = 1024 * 1024;

/// The engine of `DS_STORAGE__MODE=memory`.
#[derive(Debug, Default)]
pub struct MemoryEngine;

impl Engine for MemoryEngine {
    fn recover(&self) -> Result<Vec<Recovered>, StorageError> {
        Ok(Vec::new())
    }

    fn create(
        &self,
        _path: &str,
        _meta: &StreamMeta,
        base: Offset,
        initial: Vec<MessageBatch>,
        _closed: bool,
    ) -> Result<(Arc<dyn StreamLog>, Commit), StorageError> {
        let log = MemoryLog::new(base);
        for messages in initial {
            log.append(&messages);
        }
        Ok((Arc::new(log), Commit::done()))
    }
}

/// A frozen, immutable run of the log.
#[derive(Debug)]
struct Piece {
    start: u64,
    data: Bytes,
}

/// One stream's bytes and message boundaries.
pub struct MemoryLog {
    base: Offset,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Frozen data, contiguous from `base.bytes`.
    pieces: Vec<Piece>,
    /// Data appended after the last piece, not yet frozen.
    pending: BytesMut,
    /// Byte position just past each message, increasing.
    ends: Vec<u64>,
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
            inner: Mutex::new(Inner {
                pieces: Vec::new(),
                pending: BytesMut::new(),
                ends: Vec::new(),
            }),
        }
    }

    /// Appends validated messages; returns the new tail.
    pub fn append(&self, messages: &MessageBatch) -> Offset {
        let mut inner = self.inner.lock();
        let start = inner.ends.last().copied().unwrap_or(self.base.bytes);
        let data = messages.data();
        if inner.pending.capacity() - inner.pending.len() < data.len() {
            // A full buffer becomes a frozen piece and the append starts a
            // new one: growing the buffer instead would copy everything
            // pending since the last read into a larger allocation.
            let next = (inner.pending.capacity() * 2).clamp(BUFFER_CHUNK, MAX_BUFFER_CHUNK);
            inner.freeze_pending(self.base.bytes);
            inner.pending = BytesMut::with_capacity(next.max(data.len()));
        }
        inner.pending.extend_from_slice(data);
        inner
            .ends
            .extend(messages.ends().iter().map(|&end| start + end as u64));
        self.tail_of(&inner)
    }

    fn tail_of(&self, inner: &Inner) -> Offset {
        Offset::new(
            self.base.messages + inner.ends.len() as u64,
            inner.ends.last().copied().unwrap_or(self.base.bytes),
        )
    }
}

impl StreamLog for MemoryLog {
    fn base(&self) -> Offset {
        self.base
    }

    fn tail(&self) -> Offset {
        self.tail_of(&self.inner.lock())
    }

    fn boundary_at(&self, bytes: u64) -> Result<Option<Offset>, StorageError> {
        if bytes == self.base.bytes {
            return Ok(Some(self.base));
        }
        let inner = self.inner.lock();
        Ok(inner
            .ends
            .binary_search(&bytes)
            .ok()
            .map(|i| Offset::new(self.base.messages + i as u64 + 1, bytes)))
    }

    fn read(&self, from: Offset, limit: u64, max_bytes: usize) -> Result<LogSlice, StorageError> {
        let mut inner = self.inner.lock();
        let limit = limit.min(self.tail_of(&inner).bytes);
        if from.bytes >= limit {
            return Ok(LogSlice::empty(from));
        }
        // End on the last message boundary within budget, or after the
        // first message when it alone exceeds the budget. The limit is
        // always a boundary.
        let budget_end = from.bytes.saturating_add(max_bytes as u64).min(limit);
        let end = if budget_end == limit {
            limit
        } else {
            let within = inner.ends.partition_point(|&end| end <= budget_end);
            match inner.ends.get(..within).and_then(<[u64]>::last) {
                Some(&last) if last > from.bytes => last,
                _ => {
                    let first = inner.ends.partition_point(|&end| end <= from.bytes);
                    inner.ends.get(first).copied().unwrap_or(limit).min(limit)
                }
            }
        };
        let first = inner.ends.partition_point(|&e| e <= from.bytes);
        let messages = inner.ends.partition_point(|&e| e < end) + 1;
        inner.freeze_pending(self.base.bytes);
        Ok(LogSlice {
            data: inner.slices(from.bytes, end),
            ends: inner.ends[first..messages].to_vec(),
            next: Offset::new(self.base.messages + messages as u64, end),
        })
    }

    fn reads_block(&self) -> bool {
        false
    }

    fn apply(&self, mutation: Mutation) -> Result<Commit, StorageError> {
        if let Some(messages) = &mutation.data {
            self.append(messages);
        }
        Ok(Commit::done())
    }

    fn soft_delete(&self) -> Result<Commit, StorageError> {
        Ok(Commit::done())
    }

    fn remove(&self) -> Result<Commit, StorageError> {
        Ok(Commit::done())
    }
}

impl Inner {
    /// Moves pending bytes into a frozen piece; same allocation, no copy.
    fn freeze_pending(&mut self, base: u64) {
        if !self.pending.is_empty() {
            let start = self
                .pieces
                .last()
                .map_or(base, |p| p.start + p.data.len() as u64);
            let data = self.pending.split().freeze();
            self.pieces.push(Piece { start, data });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: usize, seed: u8) -> MessageBatch {
        let body: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
        MessageBatch::single(body.into())
    }

    /// Appends that overflow one buffer after another, never read in
    /// between, come back whole from every boundary with any budget.
    #[test]
    fn reads_across_buffers_filled_without_reads() {
        let log = MemoryLog::new(Offset::ZERO);
        let mut expected = Vec::new();
        let mut boundaries = vec![0u64];
        let sizes = [
            1000,
            70_000,
            3,
            BUFFER_CHUNK,
            40_000,
            2 * MAX_BUFFER_CHUNK,
            17,
        ];
        for (seed, &len) in sizes.iter().cycle().take(40).enumerate() {
            let appended = message(len, seed as u8);
            expected.extend_from_slice(appended.data());
            let tail = log.append(&appended);
            boundaries.push(tail.bytes);
        }
        let tail = log.tail();
        assert_eq!(tail.bytes, expected.len() as u64);
        for (i, &start) in boundaries.iter().enumerate() {
            for budget in [1, 50_000, 300_000, usize::MAX] {
                let mut at = Offset::new(i as u64, start);
                let mut read = Vec::new();
                while at.bytes < tail.bytes {
                    let slice = log.read(at, tail.bytes, budget).expect("read");
                    assert!(slice.next > at, "a read makes progress");
                    assert!(boundaries.contains(&slice.next.bytes), "ends on a boundary");
                    slice
                        .data
                        .iter()
                        .for_each(|piece| read.extend_from_slice(piece));
                    at = slice.next;
                }
                assert_eq!(at, tail);
                assert!(
                    read == expected[start as usize..],
                    "bytes from {start}, budget {budget}"
                );
            }
        }
    }
}
