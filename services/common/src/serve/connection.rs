//! One connection, from accept to close: a slot (waiting briefly for one
//! if need be), the TLS handshake when configured, then HTTP/1.1 or HTTP/2
//! as the client speaks, until it closes, is found idle, or is asked to
//! finish at shutdown.
//!
//! A connection gets [`Shared::header_read_timeout`] from the moment it is
//! served to its first complete request head, TLS handshake and protocol
//! detection included; hyper bounds HTTP/1 heads after that, and an HTTP/2
//! connection that stays without requests as long is sent `GOAWAY`, and
//! closed if it stays so for as long again.

use super::activity::{Activity, Quiet};
use super::service::{Bounded, BoundedRequest};
use super::{BoxError, Shared};
use http::Response;
use http_body::Body;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::time::Instant;

/// Serves a connection that found every slot taken, if one frees up in
/// time; `place` is its place among those waiting.
pub(super) async fn wait_then_serve<S, B>(
    stream: TcpStream,
    service: S,
    peer: SocketAddr,
    place: OwnedSemaphorePermit,
    shared: Arc<Shared>,
    mut stopping: watch::Receiver<()>,
) where
    S: tower::Service<BoundedRequest, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let slot = tokio::select! {
        slot = shared.slots.wait() => slot,
        _ = stopping.changed() => None,
    };
    drop(place);
    match slot {
        Some(slot) => serve(stream, service, peer, slot, shared, stopping).await,
        None => shared.slots.refused(),
    }
}

/// Serves a connection holding `_slot` with `service` until it closes.
pub(super) async fn serve<S, B>(
    stream: TcpStream,
    service: S,
    peer: SocketAddr,
    _slot: OwnedSemaphorePermit,
    shared: Arc<Shared>,
    mut stopping: watch::Receiver<()>,
) where
    S: tower::Service<BoundedRequest, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let deadline = Instant::now() + shared.header_read_timeout;
    crate::accept::prepare(&stream);
    let Some(acceptor) = &shared.tls else {
        return http(stream, service, peer, &shared, deadline, &mut stopping).await;
    };
    let handshake = tokio::select! {
        handshake = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => handshake,
        _ = stopping.changed() => return,
    };
    match handshake {
        Ok(Ok(stream)) => http(stream, service, peer, &shared, deadline, &mut stopping).await,
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake not completed in time; closing"),
    }
}

/// Speaks HTTP on an established (plain or TLS) connection.
async fn http<I, S, B>(
    io: I,
    service: S,
    peer: SocketAddr,
    shared: &Shared,
    deadline: Instant,
    stopping: &mut watch::Receiver<()>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<BoundedRequest, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let activity = Arc::new(Activity::default());
    let service = Bounded::new(service, shared.body, Arc::clone(&activity));
    let connection = shared.builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let period = shared.header_read_timeout;
    let quiet = activity.quiet(deadline, period);
    tokio::pin!(quiet);
    let mut watching = true;
    let mut finishing = false;
    loop {
        tokio::select! {
            biased;
            ended = connection.as_mut() => {
                if let Err(e) = ended {
                    // Clients going away, or cut off by a timeout, are ordinary.
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stopping.changed(), if !finishing => {
                finishing = true;
                connection.as_mut().graceful_shutdown();
            }
            verdict = quiet.as_mut(), if watching => match verdict {
                Quiet::Unused => {
                    tracing::debug!(%peer, "no request head in time; closing");
                    return;
                }
                Quiet::Http1 => watching = false,
                Quiet::Idle if !finishing => {
                    tracing::debug!(%peer, "HTTP/2 connection idle; sending GOAWAY");
                    finishing = true;
                    connection.as_mut().graceful_shutdown();
                    quiet.set(activity.quiet(Instant::now(), period));
                }
                Quiet::Idle => {
                    tracing::debug!(%peer, "HTTP/2 connection still idle after GOAWAY; closing");
                    return;
                }
            },
        }
    }
}
