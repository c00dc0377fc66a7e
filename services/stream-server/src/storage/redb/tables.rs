//! The acid engine's redb tables: their definitions, the `streams` row,
//! the two recent tables, and the on-disk format version, checked (and
//! older versions upgraded) when the database is opened.

use super::io;
use crate::protocol::offset::Offset;
use crate::storage::{ClosingProducer, StorageError, StreamMeta};
use ::redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub(super) const STREAMS: TableDefinition<&str, &[u8]> = TableDefinition::new("streams");
pub(super) const CHUNKS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("chunks");
pub(super) const RECENT: TableDefinition<u64, &[u8]> = TableDefinition::new("recent");
pub(super) const RECENT_B: TableDefinition<u64, &[u8]> = TableDefinition::new("recent-b");
pub(super) const PRODUCERS: TableDefinition<(u64, &str), (u64, u64)> =
    TableDefinition::new("producers");
pub(super) const META: TableDefinition<&str, &str> = TableDefinition::new("meta");

/// Written to `meta.format`; a different value refuses to start (so a
/// server that knows one recent table never opens rows left in two).
pub(super) const FORMAT: &str = "durable-streams-rs acid v3";
/// The formats before: the same tables less `recent-b` (v2) or both recent
/// tables (v1), so they are opened, settled and marked as the current one.
pub(super) const FORMAT_V2: &str = "durable-streams-rs acid v2";
pub(super) const FORMAT_V1: &str = "durable-streams-rs acid v1";
pub(super) const DB_FILE: &str = "streams.redb";

/// A stream's row in `streams`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StreamRecord {
    pub(super) id: u64,
    pub(super) base: Offset,
    pub(super) meta: StreamMeta,
    pub(super) closed: bool,
    /// Serialised as `[id, epoch, seq]` (or `null`).
    pub(super) closed_by: Option<ClosingProducer>,
    pub(super) last_seq: Option<String>,
    pub(super) soft_deleted: bool,
}

/// One of the two recent tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RecentTable {
    A,
    B,
}

impl RecentTable {
    pub(super) fn definition(self) -> TableDefinition<'static, u64, &'static [u8]> {
        match self {
            RecentTable::A => RECENT,
            RecentTable::B => RECENT_B,
        }
    }

    pub(super) fn other(self) -> RecentTable {
        match self {
            RecentTable::A => RecentTable::B,
            RecentTable::B => RecentTable::A,
        }
    }
}

/// Checks the format of the database in `data_dir` in `txn`: a new one is
/// marked with [`FORMAT`], an older one upgraded to it, any other refused.
/// Creates the tables recovery reads.
pub(super) fn initialise(txn: &WriteTransaction, data_dir: &Path) -> Result<(), StorageError> {
    let mut meta = txn.open_table(META).map_err(io)?;
    let found = meta
        .get("format")
        .map_err(io)?
        .map(|v| v.value().to_owned());
    match found {
        Some(found) if found == FORMAT => {}
        None => {
            meta.insert("format", FORMAT).map_err(io)?;
        }
        Some(found) if found == FORMAT_V2 || found == FORMAT_V1 => {
            tracing::info!(from = found, to = FORMAT, "acid data directory upgraded");
            meta.insert("format", FORMAT).map_err(io)?;
        }
        Some(found) => {
            return Err(StorageError::IncompatibleDataDir {
                dir: data_dir.display().to_string(),
                found,
                expected: FORMAT.into(),
            });
        }
    }
    txn.open_table(STREAMS).map_err(io)?;
    txn.open_table(PRODUCERS).map_err(io)?;
    Ok(())
}
