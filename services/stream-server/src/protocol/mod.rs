//! The rules of the Durable Streams protocol as plain types, free of HTTP
//! framework and I/O so they can be unit- and property-tested in isolation.
//!
//! * [`offset`] — offset tokens and the `-1` / `now` sentinels (§8).
//! * [`headers`] — protocol header names and their value parsers (§4.1, §5).
//! * [`producer`] — the idempotent producer state machine (§5.2.1).
//! * [`json`] — JSON mode framing: validation and one-level flattening (§9.1).
//! * [`cursor`] — CDN-collapsing cursors (§10.1).
//! * [`sse`] — Server-Sent Events framing of data and control events (§5.8).
//!
//! What names a stream (paths, fork sources) is shared with the gateway and
//! lives in `service_common::stream_path`.

pub mod cursor;
pub mod headers;
pub mod json;
pub mod offset;
pub mod producer;
pub mod sse;
