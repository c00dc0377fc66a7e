//! The HTTP surface: application state, the router, and serving.
//!
//! * [`write`] — `PUT` (create, fork), `POST` (append, close), `DELETE`.
//! * [`read`] — `GET` catch-up reads and `HEAD` metadata.
//! * [`long_poll`] — `GET ?live=long-poll`.
//! * [`sse`] — `GET ?live=sse`.
//! * [`error`] — the one place errors become responses.

pub mod error;
mod long_poll;
mod read;
mod request;
mod response;
mod sse;
mod write;

use crate::config::Config;
use crate::shutdown::ShutdownToken;
use crate::streams::Streams;
use axum::Router;
use axum::extract::Request;
use axum::routing::get;
use bytes::Bytes;
use error::ApiError;
use futures_util::future::Either;
use http::Method;
use http::Response;
use http_body::Body as HttpBody;
use service_common::cors::BrowserCorsLayer;
use service_common::stream_path::{PathLimits, stream_path_of};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Service, ServiceBuilder};
use tower_http::trace::TraceLayer;

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
        }
    }
}

/// What every handler shares.
#[derive(Debug)]
pub struct Shared {
    pub streams: Arc<Streams>,
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

/// The complete application: stream routes, health checks, CORS and the
/// security headers every response carries (§12.7).
///
/// The middleware wraps the routes instead of being added with
/// `Router::layer`, which would wrap every route in each layer separately:
/// per request, that is a boxed clone and a boxed future for every layer.
pub fn app(
    state: AppState,
    cors_origins: Option<Vec<String>>,
) -> impl Service<
    Request,
    Response = Response<impl HttpBody<Data = Bytes, Error = axum::Error> + Send + 'static>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ Sync
+ 'static {
    let base_path: Arc<str> = state.settings.base_path.as_str().into();
    let others = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ready" }))
        .fallback(|| async { ApiError::NoRoute });
    let span = move |request: &Request| {
        // Debug level: a span per request is measurable at tens of
        // thousands of requests per second, so it is opt-in (and its
        // fields are worked out only when it is on).
        tracing::debug_span!(
            "request",
            method = %request.method(),
            route = route_of(&base_path, request.uri().path())
        )
    };
    ServiceBuilder::new()
        .layer(TraceLayer::new_for_http().make_span_with(span))
        .map_response(service_common::problem::log_refusal)
        .map_response(service_common::security::add)
        .layer(cors(cors_origins))
        .service(Routes { state, others })
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
        if stream_path_of(&self.state.settings.base_path, request.uri().path()).is_some() {
            let state = self.state.clone();
            Either::Left(Box::pin(async move { Ok(dispatch(state, request).await) }))
        } else {
            Either::Right(self.others.call(request))
        }
    }
}

/// The route a request path falls under, for request spans: the pattern
/// rather than the path keeps stream names out of logs.
fn route_of(base: &str, path: &str) -> String {
    match path {
        "/healthz" | "/readyz" => path.to_owned(),
        _ if stream_path_of(base, path).is_some() => format!("{base}/{{*path}}"),
        _ => "unmatched".to_owned(),
    }
}

/// Routes a stream URL by method; anything else is 405.
async fn dispatch(state: AppState, request: Request) -> axum::response::Response {
    use axum::response::IntoResponse;
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

/// CORS: preflights are answered for any stream URL, every protocol header
/// may be sent, and every protocol header is readable by scripts.
fn cors(origins: Option<Vec<String>>) -> BrowserCorsLayer {
    use service_common::cors::{PROTOCOL_REQUEST_HEADERS, PROTOCOL_RESPONSE_HEADERS};
    service_common::cors::layer(origins, PROTOCOL_REQUEST_HEADERS, PROTOCOL_RESPONSE_HEADERS)
}

#[cfg(test)]
mod tests {
    use super::route_of;

    #[test]
    fn spans_name_the_route_not_the_stream() {
        let base = "/v1/stream";
        assert_eq!(route_of(base, "/v1/stream/orders/eu"), "/v1/stream/{*path}");
        assert_eq!(route_of(base, "/healthz"), "/healthz");
        assert_eq!(route_of(base, "/v1/stream/"), "unmatched");
        assert_eq!(route_of(base, "/v1/streams/x"), "unmatched");
        assert_eq!(route_of(base, "/metrics"), "unmatched");
    }
}
