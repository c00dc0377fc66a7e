//! Readiness (`/readyz`), probed in the background: at most one Postgres
//! query and one upstream health check per [`PROBE_INTERVAL`], whatever the
//! rate of readiness requests, so a flood of them cannot take the pool
//! connections that token lookups need.

use crate::proxy::Upstream;
use crate::store::TokenStore;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often Postgres and stream-server are probed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// A probe older than this no longer counts: the prober is stuck, and the
/// gateway is not known to be ready.
const STALE_AFTER: Duration = Duration::from_secs(5);

/// What the latest probe found.
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
        self.postgres && self.upstream && self.age() < STALE_AFTER
    }
}

/// The latest probe, shared by every readiness request.
#[derive(Debug)]
pub struct Readiness {
    latest: watch::Sender<Probe>,
}

impl Default for Readiness {
    fn default() -> Self {
        // Not ready until the first probe says so.
        let unprobed = Probe {
            postgres: false,
            upstream: false,
            at: Instant::now(),
        };
        Readiness {
            latest: watch::Sender::new(unprobed),
        }
    }
}

impl Readiness {
    pub fn latest(&self) -> Probe {
        *self.latest.borrow()
    }

    /// Probes every [`PROBE_INTERVAL`] for as long as it runs.
    pub async fn keep_probing(&self, store: &TokenStore, upstream: &Upstream) {
        let mut ticks = tokio::time::interval(PROBE_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let (postgres, upstream) = tokio::join!(
                tokio::time::timeout(PROBE_INTERVAL * 2, store.ping()),
                upstream.is_healthy()
            );
            self.latest.send_replace(Probe {
                postgres: matches!(postgres, Ok(Ok(()))),
                upstream,
                at: Instant::now(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unprobed_and_stale_probes_are_not_ready() {
        let readiness = Readiness::default();
        assert!(!readiness.latest().is_ready());
        let fresh = Probe {
            postgres: true,
            upstream: true,
            at: Instant::now(),
        };
        assert!(fresh.is_ready());
        let stale = Probe {
            at: Instant::now() - STALE_AFTER,
            ..fresh
        };
        assert!(!stale.is_ready());
        assert!(
            !Probe {
                upstream: false,
                ..fresh
            }
            .is_ready()
        );
    }
}
