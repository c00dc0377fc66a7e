//! Running the server: state, background expiry sweeps, the listener (plain
//! or TLS), and graceful shutdown. Connections are accepted, bounded and
//! drained by [`service_common::serve`], as the gateway's are.
//!
//! * [`tls`] — loading the certificate and key.

pub mod tls;

use crate::config::Config;
use crate::http::{App, AppState, Settings, Shared};
use crate::shutdown::ShutdownToken;
use crate::storage::{self, StorageError, StorageMode};
use crate::streams::{StorageLimits, Streams};
use crate::subscriptions::{self, Subscriptions, webhook::UrlPolicy};
use service_common::serve::BindError;
use service_common::serve::{BoundedRequest, Options};
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;
use tls::TlsError;

/// How often expired streams are reclaimed in the background (requests
/// also check expiry themselves, to the millisecond).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("cannot load TLS certificate or key: {0}")]
    Tls(#[from] TlsError),
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("subscriptions: {0}")]
    Subscriptions(#[from] subscriptions::OpenError),
}

/// Binds the configured address.
pub fn bind(config: &Config) -> Result<TcpListener, ServeError> {
    let addr = SocketAddr::new(config.server.host, config.server.port);
    Ok(service_common::serve::bind(addr)?)
}

/// Serves on `listener` until `shutdown` resolves, then stops accepting,
/// ends live reads and waits up to the grace period for requests in flight.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let engine = storage::open(
        config.storage.mode,
        &config.storage.data_dir,
        &config.storage_tuning(),
    )?;
    let limits = StorageLimits {
        max_stream_bytes: config.limits.max_stream_bytes,
        // Only in-memory data counts against the memory limit.
        max_memory_bytes: match config.storage.mode {
            StorageMode::Memory => config.limits.max_memory_bytes,
            _ => 0,
        },
        max_json_depth: config.limits.max_json_depth,
    };
    let streams = Arc::new(Streams::open(Arc::clone(&engine), limits)?);
    let tls = match (&config.tls.cert_path, &config.tls.key_path) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let addr = listener.local_addr()?;
    match config.storage.mode {
        StorageMode::Memory => tracing::info!(
            "listening on {scheme}://{addr}{} (storage mode: memory)",
            config.http.stream_base_path
        ),
        mode => tracing::info!(
            "listening on {scheme}://{addr}{} (storage mode: {mode}, data dir {}, {} streams recovered)",
            config.http.stream_base_path,
            config.storage.data_dir.display(),
            streams.len()
        ),
    }
    let held = Arc::downgrade(&streams);
    crate::telemetry::observe(move || held.upgrade().map_or(0, |streams| streams.len() as u64));
    let token = ShutdownToken::new();
    let mut settings = Settings::from_config(&config);
    settings.fallback_origin = format!("{scheme}://{addr}");
    let subscriptions = Subscriptions::open(
        Arc::clone(&streams),
        match config.storage.mode {
            StorageMode::Memory => None,
            _ => Some(config.storage.data_dir.as_path()),
        },
        subscriptions::Settings {
            policy: UrlPolicy {
                allow_insecure_local: config.subscriptions.allow_insecure_local_webhooks,
            },
            webhook_timeout: config.webhook_timeout(),
            base_path: config.http.stream_base_path.clone(),
            path_limits: settings.path_limits,
            public_origin: settings.public_base_url.clone(),
            fallback_origin: settings.fallback_origin.clone(),
        },
        token.child_token(),
    )?;
    let state = AppState::new(Shared {
        streams: Arc::clone(&streams),
        subscriptions,
        settings,
        shutdown: token.clone(),
    });
    let app = App::new(state, config.cors_origins());
    tokio::spawn(sweep_expired(streams, token.clone()));

    let grace = config.shutdown_grace();
    let shutdown = async move {
        shutdown.await;
        tracing::info!("shutting down: ending live reads, draining requests");
        token.cancel();
    };
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let options = Options {
        limits: config.server.connections.clone(),
        tls,
        grace,
        descriptors_per_connection: 1,
    };
    // The connection hands over its own body type; the routes read axum's.
    let for_client = |peer: SocketAddr| {
        tower::ServiceBuilder::new()
            .map_request(|request: BoundedRequest| request.map(axum::body::Body::new))
            .service(app.for_client(Some(peer.ip())))
    };
    service_common::serve::serve(listener, options, for_client, shutdown).await;
    // Requests have drained: make everything acknowledged durable.
    engine.flush()?;
    tracing::info!("server stopped");
    Ok(())
}

/// Frees expired streams until shutdown.
async fn sweep_expired(streams: Arc<Streams>, shutdown: ShutdownToken) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let reclaimed = streams.sweep_expired();
                if reclaimed > 0 {
                    tracing::debug!(reclaimed, "expired streams reclaimed");
                }
            }
            () = shutdown.cancelled() => return,
        }
    }
}
