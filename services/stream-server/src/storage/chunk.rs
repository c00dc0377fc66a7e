//! One stored append ("chunk") as the persistent engines hold it, and the
//! read logic they share: finding message boundaries inside chunks and
//! cutting a read on a boundary within its budget and limit.

use super::MessageBatch;
use super::{LogSlice, StorageError};
use crate::protocol::offset::Offset;
use bytes::Bytes;
use std::collections::VecDeque;

/// One append's messages.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// Messages in the stream up to the end of this chunk.
    pub messages_end: u64,
    /// Stream byte position where the chunk ends.
    pub end: u64,
    /// End of each message, relative to the chunk's start.
    pub ends: Vec<u32>,
    pub data: Bytes,
}

impl Chunk {
    /// The chunk `messages` become when appended at `tail`, for caches
    /// that outlive the request.
    ///
    /// The data is copied: a binary body can be a slice of the
    /// connection's read buffer, and a cached slice would keep that whole
    /// buffer alive while the cache counts only the slice.
    pub fn appended(messages: &MessageBatch, tail: Offset) -> Chunk {
        Chunk {
            messages_end: tail.messages + messages.count() as u64,
            end: tail.bytes + messages.byte_len() as u64,
            ends: messages.ends().iter().map(|&e| e as u32).collect(),
            data: Bytes::copy_from_slice(messages.data()),
        }
    }

    pub fn start(&self) -> u64 {
        self.end - self.data.len() as u64
    }

    /// The offset of the message boundary at stream byte `bytes`, if one of
    /// this chunk's messages ends there.
    pub fn boundary_at(&self, bytes: u64) -> Option<Offset> {
        let relative = u32::try_from(bytes.checked_sub(self.start())?).ok()?;
        let index = self.ends.binary_search(&relative).ok()?;
        Some(self.offset_after(index))
    }

    /// The offset just past message `index` of this chunk.
    fn offset_after(&self, index: usize) -> Offset {
        let later = (self.ends.len() - 1 - index) as u64;
        Offset::new(
            self.messages_end - later,
            self.start() + u64::from(self.ends[index]),
        )
    }

    /// Data from `from` (a boundary in this chunk) up to the last message
    /// boundary within `budget`; with `at_least_one`, the first message
    /// even when it alone is over budget.
    pub fn slice_from(
        &self,
        from: Offset,
        budget: usize,
        at_least_one: bool,
    ) -> Option<(Bytes, Offset)> {
        let relative_from = from.bytes.checked_sub(self.start())? as usize;
        let first = self
            .ends
            .partition_point(|&e| (e as usize) <= relative_from);
        let mut last = None;
        for (i, &end) in self.ends.iter().enumerate().skip(first) {
            let size = end as usize - relative_from;
            if size > budget && !(at_least_one && last.is_none()) {
                break;
            }
            last = Some(i);
            if size >= budget {
                break;
            }
        }
        let last = last?;
        let end = self.ends[last] as usize;
        Some((self.data.slice(relative_from..end), self.offset_after(last)))
    }
}

/// The newest appends of one stream, kept in memory by the persistent
/// engines so readers at the tail (SSE and long-poll subscribers, above all)
/// are answered without reading storage: with many subscribers, one storage
/// read each per append was the bottleneck of live delivery.
///
/// Holds whole chunks, contiguous up to the stream's written tail, at most
/// its budget of data bytes (`DS_STORAGE__TAIL_CACHE_BYTES`); entries may not
/// be durable yet, so reads must stay within the visible limit, as every
/// read does.
#[derive(Debug)]
pub struct RecentChunks {
    chunks: VecDeque<Chunk>,
    bytes: usize,
    budget: usize,
}

impl RecentChunks {
    /// Data bytes kept per stream unless configured otherwise.
    pub const DEFAULT_BUDGET: usize = 64 * 1024;

    /// A cache keeping at most `budget` bytes; 0 keeps nothing.
    pub fn new(budget: usize) -> Self {
        RecentChunks {
            chunks: VecDeque::new(),
            bytes: 0,
            budget,
        }
    }

    /// Keeps `chunk` (just appended), dropping the oldest beyond the
    /// budget; an append larger than the budget empties the cache.
    pub fn remember(&mut self, chunk: Chunk) {
        if chunk.data.len() > self.budget {
            self.chunks.clear();
            self.bytes = 0;
            return;
        }
        self.bytes += chunk.data.len();
        self.chunks.push_back(chunk);
        while self.bytes > self.budget {
            if let Some(old) = self.chunks.pop_front() {
                self.bytes -= old.data.len();
            }
        }
    }

    /// Whether the kept appends reach back to stream byte `from`.
    pub fn covers(&self, from: u64) -> bool {
        self.chunks.front().is_some_and(|c| c.start() <= from)
    }

    /// The kept appends from the one holding stream byte `from` on, when
    /// they reach back that far.
    pub fn from(&self, from: u64) -> Option<Vec<Chunk>> {
        if !self.covers(from) {
            return None;
        }
        let first = self.chunks.partition_point(|c| c.end <= from);
        Some(self.chunks.range(first..).cloned().collect())
    }
}

/// Reads from `from` up to `limit` (a boundary byte position) and at most
/// `max_bytes` (at least one message) out of `chunks`, the stream's chunks
/// in order starting with any chunk at or before `from`.
pub fn read_chunks(
    chunks: impl Iterator<Item = Result<Chunk, StorageError>>,
    from: Offset,
    limit: u64,
    max_bytes: usize,
) -> Result<LogSlice, StorageError> {
    let mut slice = LogSlice::empty(from);
    if from.bytes >= limit {
        return Ok(slice);
    }
    let mut budget = max_bytes;
    for chunk in chunks {
        let chunk = chunk?;
        if chunk.end <= slice.next.bytes {
            continue;
        }
        // The limit is a message boundary, so this never cuts a message.
        let room = budget.min((limit - slice.next.bytes) as usize);
        let Some((data, next)) = chunk.slice_from(slice.next, room, slice.is_empty()) else {
            break;
        };
        budget = budget.saturating_sub(data.len());
        let start = chunk.start();
        slice.ends.extend(
            chunk
                .ends
                .iter()
                .map(|&end| start + u64::from(end))
                .filter(|&end| end > slice.next.bytes && end <= next.bytes),
        );
        slice.data.push(data);
        slice.next = next;
        if next.bytes < chunk.end || budget == 0 || next.bytes >= limit {
            break;
        }
    }
    Ok(slice)
}

/// The boundary at stream byte `bytes`, searched in `chunks` (in order,
/// starting at or before it).
pub fn boundary_in(
    chunks: impl Iterator<Item = Result<Chunk, StorageError>>,
    bytes: u64,
) -> Result<Option<Offset>, StorageError> {
    for chunk in chunks {
        let chunk = chunk?;
        if chunk.end >= bytes {
            return Ok(chunk.boundary_at(bytes));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(start: u64, messages_before: u64, parts: &[&str]) -> Chunk {
        let mut data = Vec::new();
        let mut ends = Vec::new();
        for part in parts {
            data.extend_from_slice(part.as_bytes());
            ends.push(data.len() as u32);
        }
        Chunk {
            messages_end: messages_before + parts.len() as u64,
            end: start + data.len() as u64,
            ends,
            data: Bytes::from(data),
        }
    }

    #[test]
    fn boundaries_inside_a_chunk() {
        let c = chunk(100, 4, &["ab,", "cde,", "f,"]);
        assert_eq!(c.boundary_at(103), Some(Offset::new(5, 103)));
        assert_eq!(c.boundary_at(107), Some(Offset::new(6, 107)));
        assert_eq!(c.boundary_at(109), Some(Offset::new(7, 109)));
        assert_eq!(c.boundary_at(104), None);
        assert_eq!(c.boundary_at(99), None);
    }

    #[test]
    fn slices_stop_on_message_boundaries_within_budget() {
        let c = chunk(100, 4, &["ab,", "cde,", "f,"]);
        let (data, next) = c.slice_from(Offset::new(4, 100), 8, true).expect("slice");
        assert_eq!(&data[..], b"ab,cde,");
        assert_eq!(next, Offset::new(6, 107));
        let (data, next) = c.slice_from(Offset::new(4, 100), 1, true).expect("slice");
        assert_eq!(&data[..], b"ab,", "one message even over budget");
        assert_eq!(next, Offset::new(5, 103));
        assert!(c.slice_from(Offset::new(4, 100), 1, false).is_none());
        let (data, _) = c.slice_from(Offset::new(5, 103), 100, true).expect("slice");
        assert_eq!(&data[..], b"cde,f,");
    }

    #[test]
    fn reads_span_chunks_and_respect_the_limit() {
        let chunks = || {
            vec![
                chunk(0, 0, &["a", "bc"]),
                chunk(3, 2, &["def"]),
                chunk(6, 3, &["g"]),
            ]
            .into_iter()
            .map(Ok)
        };
        let all = read_chunks(chunks(), Offset::ZERO, 7, 100).expect("read");
        assert_eq!(all.data.concat(), b"abcdefg");
        assert_eq!(all.next, Offset::new(4, 7));
        let limited = read_chunks(chunks(), Offset::new(1, 1), 6, 100).expect("read");
        assert_eq!(limited.data.concat(), b"bcdef");
        assert_eq!(limited.next, Offset::new(3, 6));
        let budget = read_chunks(chunks(), Offset::ZERO, 7, 4).expect("read");
        assert_eq!(budget.data.concat(), b"abc");
        assert_eq!(
            boundary_in(chunks(), 3).expect("boundary"),
            Some(Offset::new(2, 3))
        );
        assert_eq!(boundary_in(chunks(), 4).expect("boundary"), None);
    }
}
