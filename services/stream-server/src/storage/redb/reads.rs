//! Reading a stream's committed chunks in the acid engine: the settled
//! rows of `chunks` merged, by end byte, with the stream's unsettled ones
//! still in a recent table, all from one read snapshot.

use super::io;
use super::rows::{decode_recent, decode_row};
use super::settle::{Unsettled, UnsettledIndex};
use super::tables::{CHUNKS, RecentTable};
use crate::storage::StorageError;
use crate::storage::chunk::Chunk;
use ::redb::Database;
use std::iter::Peekable;

/// Calls `f` with the stored chunks of stream `id` ending at or after
/// `first_end`, in order: settled rows of `chunks` merged with the
/// unsettled ones of the recent tables, listed in `unsettled`.
pub(super) fn with_chunks_from<T>(
    db: &Database,
    id: u64,
    unsettled: &UnsettledIndex,
    first_end: u64,
    f: impl FnOnce(&mut dyn Iterator<Item = Result<Chunk, StorageError>>) -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    // Listed before the snapshot is taken, so an append settled in
    // between is in the snapshot's `chunks`.
    let unsettled: Vec<Unsettled> = unsettled
        .lock()
        .iter()
        .filter(|u| u.end >= first_end)
        .copied()
        .collect();
    let txn = db.begin_read().map_err(io)?;
    let chunks = txn.open_table(CHUNKS).map_err(io)?;
    let settled = chunks
        .range((id, first_end)..=(id, u64::MAX))
        .map_err(io)?
        .map(decode_row);
    if unsettled.is_empty() {
        return f(&mut { settled });
    }
    let recent_a = txn.open_table(RecentTable::A.definition()).map_err(io)?;
    let recent_b = txn.open_table(RecentTable::B.definition()).map_err(io)?;
    let unsettled = unsettled
        .into_iter()
        .filter_map(|u| {
            let table = match u.table {
                RecentTable::A => &recent_a,
                RecentTable::B => &recent_b,
            };
            table.get(u.seq).map_err(io).transpose()
        })
        .map(|row| row.and_then(|value| decode_recent(value.value())));
    f(&mut MergeByEnd::new(settled, unsettled))
}

/// Two streams of chunks, each in order, merged into one by end byte; a
/// chunk in both (a row being settled) comes once, from the first.
struct MergeByEnd<A: Iterator, B: Iterator> {
    a: Peekable<A>,
    b: Peekable<B>,
}

impl<A, B> MergeByEnd<A, B>
where
    A: Iterator<Item = Result<Chunk, StorageError>>,
    B: Iterator<Item = Result<Chunk, StorageError>>,
{
    fn new(a: A, b: B) -> Self {
        MergeByEnd {
            a: a.peekable(),
            b: b.peekable(),
        }
    }
}

impl<A, B> Iterator for MergeByEnd<A, B>
where
    A: Iterator<Item = Result<Chunk, StorageError>>,
    B: Iterator<Item = Result<Chunk, StorageError>>,
{
    type Item = Result<Chunk, StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        // An error goes first, so it is not skipped over.
        let take_a = match (self.a.peek(), self.b.peek()) {
            (None, None) => return None,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(Err(_)), _) => true,
            (_, Some(Err(_))) => false,
            (Some(Ok(a)), Some(Ok(b))) => match a.end.cmp(&b.end) {
                std::cmp::Ordering::Less => true,
                std::cmp::Ordering::Greater => false,
                std::cmp::Ordering::Equal => {
                    self.b.next();
                    true
                }
            },
        };
        if take_a { self.a.next() } else { self.b.next() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn chunk(end: u64) -> Result<Chunk, StorageError> {
        Ok(Chunk {
            messages_end: end,
            end,
            ends: vec![1],
            data: Bytes::from_static(b"x"),
        })
    }

    fn ends(merged: impl Iterator<Item = Result<Chunk, StorageError>>) -> Vec<Option<u64>> {
        merged.map(|c| c.ok().map(|c| c.end)).collect()
    }

    #[test]
    fn merging_orders_by_end_and_yields_a_chunk_in_both_once() {
        let settled = vec![chunk(1), chunk(3), chunk(4)];
        let unsettled = vec![chunk(2), chunk(3), chunk(5)];
        let merged = MergeByEnd::new(settled.into_iter(), unsettled.into_iter());
        assert_eq!(ends(merged), [1, 2, 3, 4, 5].map(Some));
    }

    #[test]
    fn merging_yields_an_error_as_soon_as_it_is_next() {
        let settled = vec![chunk(1), Err(StorageError::Corrupt("bad".into())), chunk(9)];
        let unsettled = vec![chunk(2)];
        let merged = MergeByEnd::new(settled.into_iter(), unsettled.into_iter());
        assert_eq!(ends(merged), [Some(1), None, Some(2), Some(9)]);
    }
}
