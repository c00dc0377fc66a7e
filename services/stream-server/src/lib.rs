//! A Durable Streams server: append-only byte streams over HTTP, as
//! specified by the Durable Streams protocol.
//!
//! # Layout
//!
//! * [`protocol`] — the protocol's rules as plain types: offsets, headers,
//!   producers, JSON framing, cursors, paths, SSE framing. No I/O.
//! * [`storage`] — storage engines holding each stream's bytes, behind one
//!   trait whose contracts every engine keeps: [`storage::memory`],
//!   [`storage::file`] (`file-fast`, `file-durable`) and [`storage::redb`]
//!   (`acid`), each a directory of modules by concern.
//! * [`streams`] — the registry of streams and the protocol operations on
//!   them, a module each: create, append (and close), read, and the
//!   lifecycle (delete, expiry), with per-stream locking.
//! * [`http`] — axum handlers, one module per route group, and the single
//!   place errors become responses.
//! * [`subscriptions`] — subscriptions over sets of streams and the wakes
//!   they deliver (webhooks, pull-wake).
//! * [`config`] — layered configuration (defaults, TOML, `DS_*`).
//! * [`shutdown`] — signal handling and the token that ends live reads.
//! * [`server`] — binding, serving (plain or TLS) and draining.

// Nothing outside tests may panic on a missing value.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod config;
pub mod http;
pub mod protocol;
pub mod server;
pub mod shutdown;
pub mod storage;
pub mod streams;
pub mod subscriptions;
pub mod telemetry;
