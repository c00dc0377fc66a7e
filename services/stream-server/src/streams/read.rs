//! Reading a stream's visible data: checking that an offset is a message
//! boundary, stitching a fork's inherited data to its own, and moving
//! reads that may wait on disk to the blocking pool.

use super::error::StreamError;
use super::stream::Stream;
use crate::protocol::offset::{Offset, ReadFrom};
use crate::storage::{LogSlice, StorageError};
use std::sync::Arc;

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
    /// Resolves a read's `offset` parameter to a concrete position: the
    /// start, the visible tail (`now`), or the offset given.
    pub fn start_of(&self, from: ReadFrom) -> Offset {
        match from {
            ReadFrom::Start => Offset::ZERO,
            ReadFrom::Now => self.visible().next,
            ReadFrom::At(offset) => offset,
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
