//! The auth gateway: the only door to stream-server. It checks bearer
//! tokens (signed JWTs whose rows live in Postgres), enforces per-token
//! scopes and stream path patterns, and proxies `/v1/stream` upstream.
//!
//! # Layout
//!
//! * [`auth`] — who is calling and what they may do: credentials, JWTs,
//!   the authenticator and its revocation, grants, scopes, stream patterns,
//!   rate limits, the subscriptions a token reaches.
//! * [`tokens`] — the token table in Postgres and issuing tokens.
//! * [`http`] — the routes: streams, the reserved `__ds` control routes
//!   (subscriptions), `/admin/tokens`, health and readiness; the extractors
//!   that authenticate them.
//! * [`proxy`] — the streaming reverse proxy to stream-server, and bodies
//!   that end when their token does.
//! * [`error`] — every refusal as an HTTP response, in one place.
//! * [`telemetry`] — the auth and upstream spans, and the gateway's metrics.
//! * [`config`], [`cli`], [`server`] — settings, the command line, running
//!   it (the accept loop is shared with stream-server).

// Nothing outside tests may panic on a missing value.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod auth;
pub mod cli;
pub mod config;
pub mod error;
pub mod http;
pub mod proxy;
pub mod server;
pub mod telemetry;
pub mod tokens;
