//! Per-token rate limiting: one token bucket per token id (governor's GCRA,
//! sharded state, no global lock), refilled at `limits.rate_per_second` and
//! holding up to `limits.burst` requests.

use crate::error::GatewayError;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use std::num::NonZeroU32;
use std::sync::Arc;

/// The buckets of all tokens; disabled when the rate is 0.
pub struct RateLimiter {
    buckets: Option<DefaultKeyedRateLimiter<Arc<str>>>,
    clock: DefaultClock,
}

impl RateLimiter {
    pub fn new(rate_per_second: u32, burst: u32) -> RateLimiter {
        let buckets = NonZeroU32::new(rate_per_second).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            DefaultKeyedRateLimiter::dashmap(Quota::per_second(rate).allow_burst(burst))
        });
        RateLimiter {
            buckets,
            clock: DefaultClock::default(),
        }
    }

    /// Takes one request from the token's bucket, or says when to retry.
    pub fn check(&self, token_id: &Arc<str>) -> Result<(), GatewayError> {
        let Some(buckets) = &self.buckets else {
            return Ok(());
        };
        buckets
            .check_key(token_id)
            .map_err(|not_until| GatewayError::RateLimited {
                retry_after: not_until.wait_time_from(self.clock.now()),
            })
    }

    /// Forgets buckets that are full again (tokens idle for a while).
    pub fn prune(&self) {
        if let Some(buckets) = &self.buckets {
            buckets.retain_recent();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_with_a_retry_time() {
        let limiter = RateLimiter::new(1, 3);
        let alice: Arc<str> = "alice".into();
        for _ in 0..3 {
            limiter.check(&alice).expect("within the burst");
        }
        match limiter.check(&alice) {
            Err(GatewayError::RateLimited { retry_after }) => {
                assert!(retry_after.as_millis() > 0 && retry_after.as_secs() <= 1);
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        limiter.check(&"bob".into()).expect("buckets are per token");
    }

    #[test]
    fn zero_rate_disables_limiting() {
        let limiter = RateLimiter::new(0, 0);
        for _ in 0..10_000 {
            limiter.check(&"t".into()).expect("unlimited");
        }
    }
}
