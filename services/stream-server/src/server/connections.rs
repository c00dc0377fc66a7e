//! Serving connections: the accept loop, a task per connection (TLS first
//! when configured, then HTTP/1.1 or HTTP/2), and the drain at shutdown.
//!
//! A connection's task polls one extra future besides the connection: the
//! graceful-shutdown watch, a single atomic check when nothing changed. The
//! hard stop after the grace period aborts the tasks instead of being
//! polled by each of them at every wake-up.

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::Service;

/// How long to wait before accepting again after `accept` failed (out of
/// file descriptors, say): retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Accepts connections on `listener` and serves each with a clone of
/// `service` until `shutdown` resolves. Then it stops accepting, lets every
/// connection finish the request in flight and close, and after `grace`
/// closes those still open.
pub async fn serve<S, B>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    service: S,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection; retrying");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Reap finished connections so the set holds only open ones.
        while connections.try_join_next().is_some() {}
        service_common::accept::prepare(&stream);
        connections.spawn(connection(
            stream,
            tls.clone(),
            Arc::clone(&builder),
            service.clone(),
            graceful.watcher(),
        ));
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(
                open = connections.len(),
                "grace period over: closing the connections still open"
            );
        }
    }
    connections.shutdown().await;
}

/// Serves one connection until it closes or is asked to finish.
async fn connection<S, B>(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    service: S,
    watcher: Watcher,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    match tls {
        None => http(stream, &builder, service, watcher).await,
        Some(acceptor) => match acceptor.accept(stream).await {
            Ok(stream) => http(stream, &builder, service, watcher).await,
            Err(e) => tracing::debug!(error = %e, "TLS handshake failed"),
        },
    }
}

/// Speaks HTTP on an established (plain or TLS) connection.
async fn http<I, S, B>(io: I, builder: &auto::Builder<TokioExecutor>, service: S, watcher: Watcher)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let connection = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    if let Err(e) = watcher.watch(connection).await {
        // Clients going away mid-request are ordinary.
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
