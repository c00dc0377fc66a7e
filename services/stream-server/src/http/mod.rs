//! The HTTP surface: application state, the router, and serving.
//!
//! * [`write`] — `PUT` (create, fork), `POST` (append, close), `DELETE`.
//! * [`read`] — `GET` catch-up reads and `HEAD` metadata.
//! * [`long_poll`] — `GET ?live=long-poll`.
//! * [`sse`] — `GET ?live=sse`.
//! * [`subscriptions`] — the reserved `__ds` routes (§6–7).
//! * [`error`] — the one place errors become responses.

pub mod error;
mod long_poll;
mod read;
mod request;
mod response;
mod sse;
mod subscriptions;
mod write;

use crate::config::Config;
use crate::shutdown::ShutdownToken;
use crate::streams::Streams;
use crate::subscriptions::Subscriptions;
use axum::Router;
use axum::extract::Request;
use axum::routing::get;
use bytes::Bytes;
use error::ApiError;
use futures_util::future::Either;
use http::{Method, Response};
use http_body::Body as HttpBody;
use service_common::cors::BrowserCorsLayer;
use service_common::middleware::Middleware;
use service_common::stream_path::{self, PathLimits};
use service_common::telemetry;
use service_common::telemetry::http::RouteNames;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::Service;

/// Request-path settings derived from [`Config`].
#[derive(Debug, Clone)]
pub struct Settings {
    pub base_path: String,
    pub long_poll_timeout: Duration,
    pub sse_reconnect_interval: Duration,
    pub max_read_bytes: usize,
    pub max_body_bytes: usize,
    pub path_limits: PathLimits,
    /// `https` when serving TLS; used to build absolute `Location` URLs.
    pub scheme: &'static str,
    /// Scheme and authority of subscription callback and JWKS URLs, when
    /// configured (`http.public_base_url`).
    pub public_base_url: Option<String>,
    pub trust_forwarded_headers: bool,
    /// The origin used when a request names none (no `Host`).
    pub fallback_origin: String,
}

impl Settings {
    pub fn from_config(config: &Config) -> Self {
        Settings {
            base_path: config.http.stream_base_path.clone(),
            long_poll_timeout: config.long_poll_timeout(),
            sse_reconnect_interval: config.sse_reconnect_interval(),
            max_read_bytes: config.http.max_read_bytes,
            max_body_bytes: config.limits.max_request_body_bytes,
            path_limits: PathLimits {
                max_bytes: config.limits.max_path_bytes,
                max_segments: config.limits.max_path_segments,
            },
            scheme: if config.tls.cert_path.is_some() {
                "https"
            } else {
                "http"
            },
            public_base_url: config
                .http
                .public_base_url
                .as_ref()
                .map(|url| url.trim_end_matches('/').to_owned()),
            trust_forwarded_headers: config.http.trust_forwarded_headers,
            fallback_origin: format!("http://localhost:{}", config.server.port),
        }
    }
}

/// What every handler shares.
#[derive(Debug)]
pub struct Shared {
    pub streams: Arc<Streams>,
    pub subscriptions: Arc<Subscriptions>,
    pub settings: Settings,
    /// Cancelled on shutdown so live reads end promptly.
    pub shutdown: ShutdownToken,
}

/// The router's state: a handle to [`Shared`]. axum clones the state for
/// every request, so it is one reference count rather than several (a
/// cancellation token's clone takes a lock).
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The complete application, put together once: stream routes, health
/// checks, CORS, the security headers every response carries (§12.7), and
/// a traced, measured server span per request (see
/// `service_common::telemetry`). [`App::for_client`] makes the service for
/// each connection.
#[derive(Clone)]
pub struct App {
    state: AppState,
    others: Router,
    middleware: Middleware,
}

impl App {
    pub fn new(state: AppState, cors_origins: Option<Vec<String>>) -> App {
        let others = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(|| async { "ready" }))
            .fallback(|| async { ApiError::NoRoute });
        let names = RouteNames::new(&state.settings.base_path, &["/healthz", "/readyz"]);
        App {
            state,
            others,
            middleware: Middleware::new(names, cors(cors_origins)),
        }
    }

    /// The service for the requests of one connection from `client`.
    ///
    /// Stream URLs go past the axum router, which is measurably cheaper
    /// per request (`tests/load/benchmarks.md`).
    pub fn for_client(
        &self,
        client: Option<IpAddr>,
    ) -> impl Service<
        Request,
        Response = Response<impl HttpBody<Data = Bytes, Error = axum::Error> + Send + 'static>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + Sync
    + 'static {
        let routes = Routes {
            state: self.state.clone(),
            others: self.others.clone(),
        };
        service_common::middleware::wrap(routes, &self.middleware, client)
    }
}

/// Stream URLs go straight to [`dispatch`], everything else to the router.
///
/// Telling them apart is one prefix comparison; a wildcard route in the
/// router would also percent-decode the stream path and store it in the
/// request's extensions on every request, for handlers that parse the URI
/// themselves.
#[derive(Clone)]
struct Routes {
    state: AppState,
    others: Router,
}

impl Service<Request> for Routes {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = Either<
        Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>,
        <Router as Service<Request>>::Future,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Neither side holds back requests: the router is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if stream_path::stream_path_of(&self.state.settings.base_path, request.uri().path())
            .is_some()
        {
            let state = self.state.clone();
            Either::Left(Box::pin(async move { Ok(dispatch(state, request).await) }))
        } else {
            Either::Right(self.others.call(request))
        }
    }
}

/// Lets `record` fill in the attributes of the request's server span that
/// the handlers learn, when spans are exported (`ds.stream`,
/// `ds.operation`, ...; declared in `service_common::telemetry::http`).
fn record_span(record: impl FnOnce(&tracing::Span)) {
    if let Some(span) = telemetry::current_span() {
        record(&span);
    }
}

/// Routes a stream URL: the reserved `__ds` paths first (§6), then
/// streams by method; anything else is 405.
async fn dispatch(state: AppState, request: Request) -> axum::response::Response {
    use axum::response::IntoResponse;
    if let Some(rest) = control_path(&state, request.uri()) {
        return subscriptions::handle(state, &rest, request)
            .await
            .unwrap_or_else(IntoResponse::into_response);
    }
    let result = match *request.method() {
        Method::GET => read::get(state, request).await,
        Method::HEAD => read::head(state, request),
        Method::PUT => write::create(state, request).await,
        Method::POST => write::append(state, request).await,
        Method::DELETE => write::delete(state, request).await,
        _ => Err(ApiError::MethodNotAllowed),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// The part after `__ds/` of a reserved path. Only paths whose raw form
/// starts with `_` or an escape can decode to one, so other requests pay
/// one byte comparison.
fn control_path(state: &AppState, uri: &http::Uri) -> Option<String> {
    let raw = stream_path::stream_path_of(&state.settings.base_path, uri.path())?;
    if !raw.starts_with(['_', '%']) {
        return None;
    }
    // A malformed control path is left to the stream handlers, which
    // refuse it as the malformed path it is.
    stream_path::control_path(raw, state.settings.path_limits)
        .ok()
        .flatten()
}

/// CORS: preflights are answered for any stream URL, every protocol header
/// may be sent, and every protocol header is readable by scripts.
fn cors(origins: Option<Vec<String>>) -> BrowserCorsLayer {
    use service_common::cors::{PROTOCOL_REQUEST_HEADERS, PROTOCOL_RESPONSE_HEADERS};
    service_common::cors::layer(origins, PROTOCOL_REQUEST_HEADERS, PROTOCOL_RESPONSE_HEADERS)
}
