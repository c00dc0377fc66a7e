//! Readiness (`/readyz`) from a cached probe: at most one Postgres query and
//! one upstream health check per [`PROBE_INTERVAL`], whatever the rate of
//! readiness requests, so a flood of them cannot take the pool connections
//! that token lookups need.

use crate::proxy::Upstream;
use crate::tokens::store::TokenStore;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// How long a probe's result is reused.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// The longest a probe of Postgres may take before it counts as a failure
/// (the upstream check has its own bound).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a probe found.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub postgres: bool,
    pub upstream: bool,
    at: Instant,
}

impl Probe {
    pub fn age(&self) -> Duration {
        self.at.elapsed()
    }

    pub fn is_ready(&self) -> bool {
        self.postgres && self.upstream
    }
}

/// The latest probe, shared by every readiness request.
#[derive(Debug, Default)]
pub struct Readiness {
    /// Held while probing, so concurrent requests wait for that one probe
    /// instead of starting their own.
    latest: Mutex<Option<Probe>>,
}

impl Readiness {
    /// The latest probe if it is recent, else a new one.
    pub async fn check(&self, store: &TokenStore, upstream: &Upstream) -> Probe {
        let mut latest = self.latest.lock().await;
        if let Some(probe) = *latest
            && probe.age() < PROBE_INTERVAL
        {
            return probe;
        }
        let (postgres, upstream) = tokio::join!(
            tokio::time::timeout(PROBE_TIMEOUT, store.ping()),
            upstream.is_healthy()
        );
        let probe = Probe {
            postgres: matches!(postgres, Ok(Ok(()))),
            upstream,
            at: Instant::now(),
        };
        *latest = Some(probe);
        probe
    }
}
