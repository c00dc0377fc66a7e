//! `ds-load`: a load generator for Durable Streams servers.
//!
//! It drives a server through its HTTP API with scenarios that each stress
//! one part of the protocol, and reports throughput, latency percentiles
//! and correctness (errors, lost or duplicated messages, corrupt bytes).
//!
//! # Layout
//!
//! * [`units`] — parsing `1MiB`, `10s` and friends; formatting for tables.
//! * [`target`] — the stream base URL, bearer token and stream paths.
//! * [`client`] — one HTTP/1.1 keep-alive connection per worker.
//! * [`protocol`] — the Durable Streams requests and response headers.
//! * [`control`] — the subscription requests under `__ds`: create, claim,
//!   ack, and the wake events.
//! * [`sse`] — an incremental Server-Sent Events parser (also the one both
//!   services' tests use).
//! * [`pattern`] — the deterministic byte pattern used to verify reads.
//! * [`tracking`] — exactly-once, in-order bookkeeping for subscribers.
//! * [`stats`] — latency histograms, summaries and error tallies.
//! * [`progress`] — the once-a-second progress line on stderr.
//! * [`system`] — open-files limit and a process's resident memory.
//! * [`scenarios`] — `append`, `read`, `live`, `fanout`, `churn`,
//!   `subscriptions`.
//! * [`report`] — the JSON record of a run and its table on stdout.
//! * [`chart`] — the SVG chart and markdown table comparing runs.
//! * [`cli`] — the command line.

// Nothing outside tests may panic on a missing value.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod chart;
pub mod cli;
pub mod client;
pub mod control;
pub mod pattern;
pub mod progress;
pub mod protocol;
pub mod report;
pub mod scenarios;
pub mod sse;
pub mod stats;
pub mod system;
pub mod target;
pub mod tracking;
pub mod units;
