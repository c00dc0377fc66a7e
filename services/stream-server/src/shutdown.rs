//! Graceful shutdown: one signal future for SIGINT and SIGTERM, and the token
//! that tells live reads (long-poll, SSE) to finish so draining is bounded.

use tokio_util::sync::CancellationToken;

pub use service_common::shutdown::signal;

/// Cancelled when the server starts shutting down.
pub type ShutdownToken = CancellationToken;
