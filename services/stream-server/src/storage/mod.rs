//! Storage engines: where a stream's bytes live.
//!
//! A stream's data is an append-only log of messages. The engine stores the
//! bytes and the end position of every message, and hands out byte ranges
//! that end on message boundaries. Everything above it (closure, producers,
//! forks, expiry) is protocol state kept by [`crate::streams`].
//!
//! * [`memory`] — the default: contiguous `Bytes` buffers, nothing on disk.

pub mod memory;

use serde::{Deserialize, Serialize};
use std::fmt;

/// Which engine holds stream data (`DS_STORAGE__MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StorageMode {
    /// In memory; lost on restart.
    #[default]
    Memory,
}

impl fmt::Display for StorageMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageMode::Memory => f.write_str("memory"),
        }
    }
}
