//! Logging setup shared by both services: `RUST_LOG` filters, falling back
//! to the service's own default; human-readable lines on stderr, so stdout
//! stays free for command output (`TOKEN=$(auth-gateway token create ...)`).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the global subscriber; call once, first thing in `main`.
/// `default_filter` applies when `RUST_LOG` is unset or does not parse.
pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
}
