//! Logging setup: `RUST_LOG` filters, falling back to info-level logs for
//! this crate and its HTTP layer. Logs go to stderr, keeping stdout for
//! command output (`TOKEN=$(auth-gateway token create ...)`).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const DEFAULT_FILTER: &str = "auth_gateway=info,tower_http=info";

/// Installs the global subscriber; call once, first thing in `main`.
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
}
