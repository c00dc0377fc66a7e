//! Serving connections: the accept loop, a task per connection (HTTP/1.1 or
//! HTTP/2, as the client speaks), and the drain at shutdown.
//!
//! Each connection is served by its own service from [`App::for_client`],
//! which knows the client's address: requests do not carry it in their
//! extensions, and responses go out in the application's body type rather
//! than boxed once more for a server that takes only its own.

use crate::http::App;
use crate::proxy::ClientIp;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// How long to wait before accepting again after `accept` failed for want
/// of a resource (file descriptors, say): retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Accepts connections on `listener` and serves `app` on each until
/// `shutdown` resolves. Then it stops accepting and returns once every
/// connection has finished the request in flight and closed. Dropping the
/// returned future closes the connections still open.
pub async fn serve(listener: TcpListener, app: App, shutdown: impl Future<Output = ()>) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::warn!("cannot accept a connection, retrying: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Reap finished connections so the set holds only open ones.
        while connections.try_join_next().is_some() {}
        service_common::accept::prepare(&stream);
        let service = TowerToHyperService::new(app.for_client(Some(ClientIp::new(peer.ip()))));
        let builder = Arc::clone(&builder);
        let watcher = graceful.watcher();
        connections.spawn(async move {
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(connection).await {
                // Clients going away mid-request are ordinary.
                tracing::debug!("connection ended with an error: {e}");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// An error of one connection attempt, not of the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
