//! Running the gateway: load keys, connect (lazily) to Postgres, apply
//! migrations, start the revocation listener and housekeeping, then serve
//! until shutdown, giving open connections a bounded grace period.
//! Connections are accepted, bounded and drained by
//! [`service_common::serve`], as stream-server's are.

use crate::auth::authenticator::Authenticator;
use crate::auth::rate_limit::RateLimiter;
use crate::config::{Config, ConfigError};
use crate::http::readiness::Readiness;
use crate::http::{App, Gateway, SharedGateway};
use crate::proxy::Upstream;
use crate::tokens::store::{StoreError, TokenStore};
use service_common::serve::BindError;
use service_common::serve::Options;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long startup waits for Postgres before giving up.
const STARTUP_DATABASE_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("token store: {0}")]
    Store(#[from] StoreError),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

/// Binds the configured address (port 0 picks a free port).
pub async fn bind(config: &Config) -> Result<TcpListener, ServeError> {
    let addr = SocketAddr::new(config.server.host, config.server.port);
    Ok(TcpListener::from_std(service_common::serve::bind(addr)?)?)
}

/// The shared state of a gateway for `config`, without touching the
/// network: Postgres is connected on first use.
pub fn gateway(config: Config) -> Result<SharedGateway, ServeError> {
    let keys = config.jwt.keys()?;
    let store = TokenStore::connect_lazy(config.database_url()?)?;
    let authenticator = Arc::new(Authenticator::new(
        keys,
        config.jwt.issuer.clone(),
        config.jwt.audience.clone(),
        store,
        config.cache_ttl(),
    ));
    let upstream = Upstream::new(&config)?;
    let limiter = RateLimiter::new(config.limits.rate_per_second, config.limits.burst);
    Ok(Arc::new(Gateway {
        config,
        authenticator,
        upstream,
        limiter,
        readiness: Readiness::default(),
    }))
}

/// Applies pending migrations, waiting for Postgres to come up first.
async fn migrate_when_reachable(store: &TokenStore) -> Result<(), ServeError> {
    let deadline = tokio::time::Instant::now() + STARTUP_DATABASE_WAIT;
    loop {
        match store.migrate().await {
            Ok(()) => return Ok(()),
            Err(StoreError::Database(e)) if tokio::time::Instant::now() < deadline => {
                tracing::info!("waiting for Postgres: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Serves the gateway on `listener` until `shutdown` resolves.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let options = config.serve_options();
    let flush_every = config.last_used_flush_interval();
    let gateway = gateway(config)?;
    migrate_when_reachable(gateway.authenticator.store()).await?;

    let listener_task = tokio::spawn(gateway.authenticator.clone().follow_changes());
    let housekeeping = {
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(flush_every);
            loop {
                ticks.tick().await;
                gateway.authenticator.maintain().await;
                gateway.limiter.prune();
            }
        })
    };

    let local = listener.local_addr()?;
    tracing::info!(
        upstream = gateway.upstream.origin(),
        "auth-gateway listening on http://{local}"
    );
    let grace = options.grace;
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down; waiting up to {grace:?} for open requests");
    };
    serve_app(App::new(gateway.clone()), listener, options, signal).await;
    listener_task.abort();
    housekeeping.abort();
    gateway.authenticator.maintain().await;
    Ok(())
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains
/// connections for the grace period of `options`. Each connection's
/// service knows the client's address, for `X-Forwarded-For`.
pub async fn serve_app(
    app: App,
    listener: TcpListener,
    options: Options,
    shutdown: impl Future<Output = ()>,
) {
    let for_client = |peer: SocketAddr| app.for_client(Some(peer.ip()));
    service_common::serve::serve(listener, options, for_client, shutdown).await;
}
