//! The auth gateway: the only door to stream-server. It checks bearer
//! tokens (signed JWTs whose rows live in Postgres), enforces per-token
//! scopes and stream path patterns, and proxies `/v1/stream` upstream.
//!
//! # Layout
//!
//! * [`config`] — `GW_*` settings, layered like stream-server's.
//! * [`scope`], [`pattern`] — what a method needs; which streams a token covers.
//! * [`token`] — JWT claims, signing keys, signing and verification.
//! * [`store`] — the token table in Postgres (migrations in `migrations/`).
//! * [`grant`] — one token's rights, checked against each request, and the
//!   ceiling on the tokens it may issue.
//! * [`credentials`] — finding the bearer token in a request.
//! * [`authenticator`] — token → grant, cached, revoked by `LISTEN/NOTIFY`.
//! * [`rate_limit`] — per-token token buckets.
//! * [`revocation`] — proxied bodies that stop when their token's grant ends.
//! * [`readiness`] — `/readyz` from a cached probe.
//! * [`proxy`] — the streaming reverse proxy to stream-server.
//! * [`http`], [`admin`] — routes: streams, `/admin/tokens`, health checks.
//! * [`error`] — every refusal as an HTTP response, in one place.
//! * [`issuer`], [`cli`] — issuing tokens; the command line.
//! * [`server`] — running it: setup, serving (the accept
//!   loop shared with stream-server), logs.

// Nothing outside tests may panic on a missing value.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod authenticator;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod error;
pub mod grant;
pub mod http;
pub mod issuer;
pub mod pattern;
pub mod proxy;
pub mod rate_limit;
pub mod readiness;
pub mod revocation;
pub mod scope;
pub mod server;
pub mod store;
pub mod token;
