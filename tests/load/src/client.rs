//! One HTTP/1.1 keep-alive connection to the target, opened on first use
//! and reopened after the server closes it or a request fails. Every
//! scenario worker owns one, so `--connections C` means C TCP connections.

use crate::target::Target;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// The body type of every request ds-load sends.
pub type RequestBody = Full<Bytes>;

/// Why an exchange with the server failed below the HTTP status level.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot connect to {address}: {cause}")]
    Connect {
        address: SocketAddr,
        cause: std::io::Error,
    },
    #[error("HTTP/1.1 handshake with {address} failed: {}", chain(cause))]
    Handshake {
        address: SocketAddr,
        cause: hyper::Error,
    },
    #[error("request failed: {}", chain(.0))]
    Request(hyper::Error),
    #[error("reading the response body failed: {}", chain(.0))]
    Body(hyper::Error),
    #[error("no complete response within {0:?}")]
    Timeout(Duration),
}

/// An error and its causes, joined with colons (hyper keeps the detail,
/// such as the I/O error, in the causes).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

/// A whole response: status, headers and the collected body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// A header as text, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

/// One keep-alive connection.
pub struct Connection {
    target: Arc<Target>,
    sender: Option<SendRequest<RequestBody>>,
    timeout: Duration,
    opened: u64,
}

impl Connection {
    /// A connection to `target` whose requests fail after `timeout`. Nothing
    /// is connected until the first request.
    pub fn new(target: Arc<Target>, timeout: Duration) -> Connection {
        Connection {
            target,
            sender: None,
            timeout,
            opened: 0,
        }
    }

    /// The target this connection talks to.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// How many TCP connections this has opened so far.
    pub fn times_opened(&self) -> u64 {
        self.opened
    }

    /// Sends a request and collects the whole response, within the
    /// connection's timeout.
    pub async fn send(&mut self, request: Request<RequestBody>) -> Result<Reply, HttpError> {
        self.send_within(request, self.timeout).await
    }

    /// Sends a request and collects the whole response within `timeout`.
    pub async fn send_within(
        &mut self,
        request: Request<RequestBody>,
        timeout: Duration,
    ) -> Result<Reply, HttpError> {
        let outcome = tokio::time::timeout(timeout, self.exchange(request)).await;
        self.settle(outcome, timeout)
    }

    /// Sends a request and returns as soon as the response head arrives
    /// (within the connection's timeout); the caller reads the body as it
    /// streams in. The connection is busy until that body is dropped.
    pub async fn open(
        &mut self,
        request: Request<RequestBody>,
    ) -> Result<Response<Incoming>, HttpError> {
        let timeout = self.timeout;
        let outcome = tokio::time::timeout(timeout, self.start(request)).await;
        self.settle(outcome, timeout)
    }

    /// Forgets a failed or timed-out connection, so the next request opens
    /// a new one.
    fn settle<T>(
        &mut self,
        outcome: Result<Result<T, HttpError>, tokio::time::error::Elapsed>,
        timeout: Duration,
    ) -> Result<T, HttpError> {
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                self.sender = None;
                Err(error)
            }
            Err(_) => {
                self.sender = None;
                Err(HttpError::Timeout(timeout))
            }
        }
    }

    async fn exchange(&mut self, request: Request<RequestBody>) -> Result<Reply, HttpError> {
        let response = self.start(request).await?;
        let (head, body) = response.into_parts();
        let body = body.collect().await.map_err(HttpError::Body)?.to_bytes();
        Ok(Reply {
            status: head.status,
            headers: head.headers,
            body,
        })
    }

    async fn start(
        &mut self,
        request: Request<RequestBody>,
    ) -> Result<Response<Incoming>, HttpError> {
        let sender = self.ready_sender().await?;
        sender
            .send_request(request)
            .await
            .map_err(HttpError::Request)
    }

    /// The current connection if it can take a request, else a new one.
    async fn ready_sender(&mut self) -> Result<&mut SendRequest<RequestBody>, HttpError> {
        let mut reusable = None;
        if let Some(mut sender) = self.sender.take()
            && sender.ready().await.is_ok()
        {
            reusable = Some(sender);
        }
        let sender = match reusable {
            Some(sender) => sender,
            None => self.connect().await?,
        };
        Ok(self.sender.insert(sender))
    }

    async fn connect(&mut self) -> Result<SendRequest<RequestBody>, HttpError> {
        let address = self.target.address();
        let stream = TcpStream::connect(address)
            .await
            .map_err(|cause| HttpError::Connect { address, cause })?;
        stream
            .set_nodelay(true)
            .map_err(|cause| HttpError::Connect { address, cause })?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|cause| HttpError::Handshake { address, cause })?;
        // Drives the socket; ends when the server or ds-load closes it.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        self.opened += 1;
        Ok(sender)
    }
}
