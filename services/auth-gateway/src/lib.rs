//! The auth gateway: the only door to stream-server. It checks bearer
//! tokens (signed JWTs whose rows live in Postgres), enforces per-token
//! scopes and stream path patterns, and proxies `/v1/stream` upstream.
//!
//! # Layout
//!
//! * [`scope`] — what each HTTP method needs (`read`, `write`, `delete`, `admin`).
//! * [`pattern`] — stream path patterns a token is limited to (`*`, `**`).
//! * [`token`] — JWT claims, signing keys, signing and verification.
//! * [`store`] — the token table in Postgres (migrations in `migrations/`).

pub mod pattern;
pub mod scope;
pub mod store;
pub mod token;
