//! Settling: moving small appends from a full recent table to their
//! streams' rows in `chunks`, a slice per writer transaction, then dropping
//! the table whole; and the index each stream keeps of its appends not yet
//! settled, so reads find them meanwhile.

use super::io;
use super::rows::split_recent;
use super::tables::{CHUNKS, RecentTable};
use crate::storage::StorageError;
use ::redb::{ReadableTable, Table, WriteTransaction};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Appends in the filling recent table that make it switch and settle.
pub const SETTLE_ROWS: usize = 4096;
/// Bytes in the filling recent table that make it switch and settle.
pub(super) const SETTLE_BYTES: usize = 4 * 1024 * 1024;
/// A full table is settled in about this many transactions: each moves a
/// share of its rows or of [`SETTLE_BYTES`], and at least twice what its
/// own group adds, so settling always outpaces filling.
const SETTLE_STEPS: usize = 64;

/// One unsettled append of a stream: where it ends, and its key and table.
#[derive(Debug, Clone, Copy)]
pub(super) struct Unsettled {
    pub(super) end: u64,
    pub(super) seq: u64,
    pub(super) table: RecentTable,
}

/// A stream's appends still in a recent table, in order. The writer
/// thread adds each one as it writes it, before its commit, and drops them
/// once their table has been settled and dropped; a reader may hold keys
/// already settled (then found in `chunks`, and maybe in their table too)
/// or not yet committed (then found nowhere and beyond what it may read
/// anyway).
pub(super) type UnsettledIndex = Mutex<VecDeque<Unsettled>>;

/// A recent table being settled.
#[derive(Debug)]
pub(super) struct Drain {
    pub(super) table: RecentTable,
    /// Every row of the table has a smaller key.
    pub(super) end: u64,
    /// The keys of its rows, stream by stream, each stream's in order.
    pub(super) order: Vec<u64>,
    /// How many of `order` have moved into `chunks`.
    pub(super) moved: usize,
}

impl Drain {
    /// `table`, whose rows have the keys from `from` to `end`, as a table
    /// to settle: its keys gathered stream by stream from the indexes in
    /// `touched` (`rows` of them, about).
    pub(super) fn start(
        table: RecentTable,
        from: u64,
        end: u64,
        rows: usize,
        touched: &HashMap<u64, Arc<UnsettledIndex>>,
    ) -> Drain {
        let mut order = Vec::with_capacity(rows);
        for index in touched.values() {
            let index = index.lock();
            order.extend(
                index
                    .iter()
                    .filter(|u| u.seq >= from && u.seq < end)
                    .map(|u| u.seq),
            );
        }
        Drain {
            table,
            end,
            order,
            moved: 0,
        }
    }
}

/// How much one settle step moves at most: it stops after `rows` rows or
/// `bytes` bytes, whichever comes first.
#[derive(Debug, Clone, Copy)]
pub(super) struct Step {
    rows: usize,
    bytes: usize,
}

impl Step {
    /// The step of `drain` taken by a transaction whose own group adds
    /// `rows` small appends of `bytes` in all to the filling table.
    pub(super) fn alongside(drain: &Drain, (rows, bytes): (usize, usize)) -> Step {
        Step {
            rows: drain.order.len().div_ceil(SETTLE_STEPS).max(2 * rows),
            bytes: (SETTLE_BYTES / SETTLE_STEPS).max(2 * bytes),
        }
    }
}

/// Moves the next rows of `drain`'s order to their streams' places in
/// `chunks`, at most `step` of them; returns how many of the order have
/// moved. Once all have, drops the table and creates it again empty.
pub(super) fn settle(
    txn: &WriteTransaction,
    drain: &Drain,
    step: Step,
) -> Result<usize, StorageError> {
    let mut moved = drain.moved;
    {
        let recent = txn.open_table(drain.table.definition()).map_err(io)?;
        let mut chunks = txn.open_table(CHUNKS).map_err(io)?;
        let (mut rows, mut bytes) = (0, 0);
        while moved < drain.order.len() && rows < step.rows && bytes < step.bytes {
            // A row of a stream removed since is gone.
            if let Some(value) = recent.get(drain.order[moved]).map_err(io)? {
                bytes += settle_row(&mut chunks, value.value())?;
                rows += 1;
            }
            moved += 1;
        }
    }
    if moved == drain.order.len() {
        drop_settled(txn, drain.table)?;
    }
    Ok(moved)
}

/// Settles every row of `table` (at startup, whatever a previous run left).
pub(super) fn settle_all(txn: &WriteTransaction, table: RecentTable) -> Result<(), StorageError> {
    {
        let recent = txn.open_table(table.definition()).map_err(io)?;
        let mut chunks = txn.open_table(CHUNKS).map_err(io)?;
        for row in recent.iter().map_err(io)? {
            settle_row(&mut chunks, row.map_err(io)?.1.value())?;
        }
    }
    drop_settled(txn, table)
}

/// Moves one recent row's chunk to its stream's place in `chunks`; returns
/// the row's size.
fn settle_row(chunks: &mut Table<(u64, u64), &[u8]>, value: &[u8]) -> Result<usize, StorageError> {
    let (id, end, chunk) = split_recent(value)?;
    chunks.insert((id, end), chunk).map_err(io)?;
    Ok(value.len())
}

/// Drops a settled recent table, which frees its pages in one pass
/// (removing the rows one by one rebuilt its leaves again and again, half
/// the writer's time in a profile), and creates it again empty.
fn drop_settled(txn: &WriteTransaction, table: RecentTable) -> Result<(), StorageError> {
    txn.delete_table(table.definition()).map_err(io)?;
    txn.open_table(table.definition()).map_err(io)?;
    Ok(())
}

/// Forgets, in every stream's index in `touched`, the appends of a table
/// now settled and dropped (every key below its `end` is in `chunks`), and
/// the streams left with none.
pub(super) fn forget_settled(touched: &mut HashMap<u64, Arc<UnsettledIndex>>, end: u64) {
    for index in touched.values() {
        let mut index = index.lock();
        while index.front().is_some_and(|u| u.seq < end) {
            index.pop_front();
        }
    }
    touched.retain(|_, index| !index.lock().is_empty());
}
