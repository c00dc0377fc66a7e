//! What both services share, so a client sees one behaviour whichever of
//! them answers:
//!
//! * [`serve`] — the accept loop: TLS, HTTP/1.1 and HTTP/2, connection
//!   limits, graceful shutdown;
//! * [`limits`] — the settings that bound slow or numerous clients;
//! * [`body`] — request bodies held to a pace;
//! * [`accept`] — what an accepted connection gets before HTTP;
//! * [`problem`] — RFC 9457 `application/problem+json` refusals;
//! * [`headers`] — the protocol's header names;
//! * [`cors`] — the CORS policy (origins from configuration);
//! * [`security`] — the browser security headers on every response;
//! * [`shutdown`] — the SIGINT / SIGTERM signal;
//! * [`config`] — loading settings (defaults, TOML, environment);
//! * [`settings`] — checks shared by both configurations;
//! * [`middleware`] — what both services wrap their routes in;
//! * [`telemetry`] — logs, and traces and metrics over OTLP;
//! * [`stream_path`] — what names a stream: URL paths and fork sources,
//!   resolved the same way by the gateway that authorises and the server
//!   that acts;
//! * [`stream_pattern`] — globs over stream paths (`*`, `**`): the streams
//!   a token may touch, and the streams a subscription covers.

// Nothing outside tests may panic on a missing value.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod accept;
pub mod body;
pub mod config;
pub mod cors;
pub mod headers;
pub mod healthcheck;
pub mod limits;
pub mod middleware;
pub mod problem;
pub mod security;
pub mod serve;
pub mod settings;
pub mod shutdown;
pub mod stream_path;
pub mod stream_pattern;
pub mod telemetry;
