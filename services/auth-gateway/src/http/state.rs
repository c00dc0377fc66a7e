//! The gateway's shared state: configuration, the authenticator, the
//! upstream client, rate limits and readiness, one instance for all
//! requests.

use super::readiness::Readiness;
use crate::auth::authenticator::Authenticator;
use crate::auth::rate_limit::RateLimiter;
use crate::config::Config;
use crate::proxy::Upstream;
use std::sync::Arc;

/// Everything a request handler needs, shared by all of them.
pub struct Gateway {
    pub config: Config,
    pub authenticator: Arc<Authenticator>,
    pub upstream: Upstream,
    pub limiter: RateLimiter,
    pub readiness: Readiness,
}

pub type SharedGateway = Arc<Gateway>;
