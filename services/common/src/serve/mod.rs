//! The one accept loop both services run: a listener, optional TLS, a
//! service per connection made from the client's address, HTTP/1.1 and
//! HTTP/2 (hyper-util's auto builder), the [`ConnectionLimits`] on slow or
//! numerous clients, and a graceful shutdown after which connections still
//! open get a grace period and are then closed.
//!
//! * [`connection`] — one connection from accept to close;
//! * [`service`] — what wraps each request and response;
//! * [`activity`] — whether a connection is in use;
//! * [`slots`] — how many connections at once, and refusals.
//!
//! The accept loop never waits for anything but the next connection: one
//! over the limit waits for a slot in its own task, and the only pause is
//! after `accept` itself fails (out of descriptors, say), so it never spins.

mod activity;
mod connection;
mod service;
mod slots;

pub use service::BoundedRequest;
pub use slots::SLOT_WAIT;

use crate::body::BodyLimits;
use crate::limits::{ConnectionLimits, MIN_HEADER_BYTES};
use http::Response;
use http_body::Body;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use slots::{Admission, Slots};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long to wait before accepting again after `accept` failed for want
/// of a resource (descriptors, memory): retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Streams one HTTP/2 client may have open at once (hyper's default made
/// explicit): enough for a page's parallel requests and SSE streams, and a
/// bound on what one connection can ask of the server.
const H2_MAX_STREAMS: u32 = 200;

/// How often an HTTP/2 connection is pinged, so a client that vanished
/// (its network gone, no FIN) does not hold a connection and its live
/// reads until TCP gives up.
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);

/// The listening address could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: io::Error,
}

/// Binds `addr` (port 0 picks a free port) for [`serve`]: a non-blocking
/// std listener, which the caller hands to tokio inside its runtime.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, BindError> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| BindError { addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| BindError { addr, source })?;
    Ok(listener)
}

/// How a service is served.
pub struct Options {
    /// Checked already (see [`ConnectionLimits::validate`]).
    pub limits: ConnectionLimits,
    /// Set: every connection is TLS; HTTP/2 is offered by ALPN if the
    /// acceptor's configuration does.
    pub tls: Option<TlsAcceptor>,
    /// After shutdown, how long open connections may finish.
    pub grace: Duration,
    /// Descriptors one connection may take: 1 for a server, 2 for a proxy
    /// (the client's and its upstream connection), to fit the slots to the
    /// open-file limit.
    pub descriptors_per_connection: u64,
}

/// What every connection task shares.
struct Shared {
    builder: auto::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
    body: BodyLimits,
    header_read_timeout: Duration,
    slots: Slots,
}

/// Accepts connections on `listener` and serves each with
/// `make_service(client address)` until `shutdown` resolves. Then it stops
/// accepting, asks every connection to finish the request in flight and
/// close, and after the grace period closes those still open.
///
/// `make_service` runs in the accept loop, so it may borrow from the
/// caller: a service that is `'static` itself can come from a method on a
/// borrowed application (whose returned type names that borrow).
pub async fn serve<M, S, B>(
    listener: TcpListener,
    options: Options,
    make_service: M,
    shutdown: impl Future<Output = ()>,
) where
    M: Fn(SocketAddr) -> S,
    S: tower::Service<BoundedRequest, Response = Response<B>> + Clone + Send + 'static,
    // `'static` follows from `S: 'static`; asking for it outright would
    // refuse a future type that names the borrow `make_service` made.
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let limits = &options.limits;
    let capacity =
        slots::fit_to_descriptors(limits.max_connections, options.descriptors_per_connection);
    let shared = Arc::new(Shared {
        builder: builder(limits),
        tls: options.tls,
        body: limits.body(),
        header_read_timeout: limits.header_read_timeout(),
        slots: Slots::new(capacity),
    });
    // Dropping the sender is the signal: every receiver's `changed` ends.
    let (stop, stopping) = watch::channel(());
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
                    tracing::warn!(error = %e, "cannot accept a connection; retrying");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Reap finished connections so the set holds only open ones.
        while connections.try_join_next().is_some() {}
        match shared.slots.admit() {
            Admission::Serve(slot) => {
                connections.spawn(connection::serve(
                    stream,
                    make_service(peer),
                    peer,
                    slot,
                    Arc::clone(&shared),
                    stopping.clone(),
                ));
            }
            Admission::Wait(place) => {
                connections.spawn(connection::wait_then_serve(
                    stream,
                    make_service(peer),
                    peer,
                    place,
                    Arc::clone(&shared),
                    stopping.clone(),
                ));
            }
            Admission::Refuse => {
                drop(stream);
                shared.slots.refused();
            }
        }
    }
    drop(listener);
    drop(stop);
    let drained = tokio::time::timeout(options.grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "grace period over: closing the connections still open"
        );
        connections.shutdown().await;
    }
}

/// HTTP/1.1 and HTTP/2 held to `limits`.
fn builder(limits: &ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper panics below its minimum; validation refuses such values, this
    // keeps an unvalidated caller from a panic.
    let head_bytes = limits.max_header_bytes.max(MIN_HEADER_BYTES);
    // The header-read timeout needs the timer; without one hyper ignores
    // it. A head that does not fit the buffer gets 431.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout())
        .max_buf_size(head_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(head_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(H2_MAX_STREAMS)
        .keep_alive_interval(H2_PING_INTERVAL)
        // A client gets as long to answer a ping as to send a head.
        .keep_alive_timeout(limits.header_read_timeout());
    builder
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
