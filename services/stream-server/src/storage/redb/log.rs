//! [`RedbLog`]: one stream's handle in the acid engine. It keeps the
//! written tail and the newest appends in memory, encodes each append as
//! a chunk, and hands every change to the writer thread.

use super::RedbEngine;
use super::reads::with_chunks_from;
use super::rows::{ChunkHeader, recent_value};
use super::settle::UnsettledIndex;
use super::writer::{Job, Op, submit};
use crate::protocol::offset::Offset;
use crate::storage::MessageBatch;
use crate::storage::chunk::{self, Chunk, RecentChunks};
use crate::storage::{Commit, LogSlice, Mutation, StorageError, StreamLog};
use ::redb::Database;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::mpsc;

/// One stream's data in redb.
#[derive(Debug)]
pub struct RedbLog {
    id: u64,
    path: String,
    base: Offset,
    /// Written tail: everything submitted, committed or not.
    tail: Mutex<Offset>,
    /// The newest appends, so tail reads skip the database.
    recent: Mutex<RecentChunks>,
    /// This stream's appends in the `recent` table.
    unsettled: Arc<UnsettledIndex>,
    db: Arc<Database>,
    writer: mpsc::Sender<Job>,
}

impl RedbLog {
    /// The log of stream `id` of `engine`, stored at `path`, from `base` to
    /// `tail`.
    pub(super) fn new(
        engine: &RedbEngine,
        id: u64,
        path: &str,
        base: Offset,
        tail: Offset,
    ) -> Arc<RedbLog> {
        Arc::new(RedbLog {
            id,
            path: path.to_owned(),
            base,
            tail: Mutex::new(tail),
            recent: Mutex::new(RecentChunks::new(engine.tail_cache)),
            unsettled: Arc::default(),
            db: Arc::clone(&engine.db),
            writer: engine.writer.clone(),
        })
    }

    /// Encodes `messages` as the next chunk and advances the written tail.
    /// The value starts with the `recent` row's prefix; a `chunks` row is
    /// the rest.
    pub(super) fn next_chunk(&self, messages: &MessageBatch) -> (u64, Vec<u8>) {
        let mut tail = self.tail.lock();
        // Under the tail lock, so the cache follows the log's order.
        self.recent
            .lock()
            .remember(Chunk::appended(messages, *tail));
        let end = tail.bytes + messages.byte_len() as u64;
        let header = ChunkHeader {
            messages_end: tail.messages + messages.count() as u64,
            ends: messages.ends().iter().map(|&e| e as u32).collect(),
        };
        *tail = Offset::new(header.messages_end, end);
        (end, recent_value(self.id, end, &header, messages.data()))
    }

    /// Calls `f` with this stream's stored chunks ending at or after
    /// `first_end`, in order (see [`with_chunks_from`]).
    fn with_chunks_from<T>(
        &self,
        first_end: u64,
        f: impl FnOnce(&mut dyn Iterator<Item = Result<Chunk, StorageError>>) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        with_chunks_from(&self.db, self.id, &self.unsettled, first_end, f)
    }
}

impl StreamLog for RedbLog {
    fn base(&self) -> Offset {
        self.base
    }

    fn tail(&self) -> Offset {
        *self.tail.lock()
    }

    fn boundary_at(&self, bytes: u64) -> Result<Option<Offset>, StorageError> {
        if bytes == self.base.bytes {
            return Ok(Some(self.base));
        }
        if let Some(recent) = self.recent.lock().from(bytes.saturating_sub(1)) {
            return chunk::boundary_in(recent.into_iter().map(Ok), bytes);
        }
        self.with_chunks_from(bytes, |chunks| chunk::boundary_in(chunks, bytes))
    }

    fn read(&self, from: Offset, limit: u64, max_bytes: usize) -> Result<LogSlice, StorageError> {
        if let Some(recent) = self.recent.lock().from(from.bytes) {
            return chunk::read_chunks(recent.into_iter().map(Ok), from, limit, max_bytes);
        }
        self.with_chunks_from(from.bytes + 1, |chunks| {
            chunk::read_chunks(chunks, from, limit, max_bytes)
        })
    }

    fn reads_block(&self) -> bool {
        true
    }

    fn reads_block_from(&self, bytes: u64) -> bool {
        // A read from `bytes` first checks the boundary ending there.
        !self.recent.lock().covers(bytes.saturating_sub(1))
    }

    fn apply(&self, mutation: Mutation) -> Result<Commit, StorageError> {
        let chunk = mutation.data.as_ref().map(|m| self.next_chunk(m));
        submit(
            &self.writer,
            Op::Apply {
                id: self.id,
                path: self.path.clone(),
                unsettled: Arc::clone(&self.unsettled),
                chunk,
                producer: mutation.producer,
                stream_seq: mutation.stream_seq,
                close: mutation.close,
            },
        )
    }

    fn soft_delete(&self) -> Result<Commit, StorageError> {
        submit(
            &self.writer,
            Op::SoftDelete {
                path: self.path.clone(),
            },
        )
    }

    fn remove(&self) -> Result<Commit, StorageError> {
        submit(
            &self.writer,
            Op::Remove {
                id: self.id,
                path: self.path.clone(),
                unsettled: Arc::clone(&self.unsettled),
            },
        )
    }
}
