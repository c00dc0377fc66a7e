//! The gateway's HTTP surface: health checks, the admin API, every stream
//! URL — authenticated, authorised, rate limited, then proxied — and the
//! reserved `__ds` control routes under the stream base path
//! ([`control`]: subscriptions and their deliveries, with their own policy).

pub mod admin;
pub mod control;
pub mod extract;
pub mod readiness;
pub mod state;

use crate::auth::scope::Scope;
use crate::error::GatewayError;
use crate::http::extract::{Caller, authenticate, decide};
pub use crate::http::state::{Gateway, SharedGateway};
use crate::proxy::revocation::UntilRevoked;
use crate::proxy::{Forwarding, Passage};
use crate::telemetry;
use axum::BoxError;
use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures_util::future::Either;
use http::header;
use http::request::Parts;
use http::{Method, StatusCode};
use service_common::cors::BrowserCorsLayer;
use service_common::middleware::Middleware;
use service_common::stream_path;
use service_common::telemetry::http::RouteNames;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;
use tower::Service;
use tracing::Instrument;

/// The application, put together once: every stream URL, the admin API
/// and health checks, with CORS, the security headers, and a traced,
/// measured server span per request (see `service_common::telemetry`).
/// [`App::for_client`] makes the service for each connection.
#[derive(Clone)]
pub struct App {
    gateway: SharedGateway,
    others: Router,
    middleware: Middleware,
}

/// The routes besides stream URLs, for span and metric names.
const OTHER_ROUTES: &[&str] = &["/healthz", "/readyz", "/admin/tokens", "/admin/tokens/{id}"];

impl App {
    pub fn new(gateway: SharedGateway) -> App {
        let others = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .nest("/admin", admin::routes())
            .fallback(|| async { GatewayError::NotFound("no such resource".into()) })
            .with_state(gateway.clone());
        let names = RouteNames::new(&gateway.config.http.stream_base_path, OTHER_ROUTES);
        App {
            middleware: Middleware::new(names, cors(gateway.config.cors_origins())),
            gateway,
            others,
        }
    }

    /// The service for the requests of one connection from `client`
    /// (`None` when unknown): the address is part of the service, so no
    /// request carries it in its extensions.
    ///
    /// Stream URLs go past the axum router, which is measurably cheaper per
    /// request (`tests/load/benchmarks.md`).
    pub fn for_client<B>(
        &self,
        client: Option<IpAddr>,
    ) -> impl Service<
        Request<B>,
        Response = http::Response<
            impl HttpBody<Data = Bytes, Error = axum::Error> + Send + 'static,
        >,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + Sync
    + 'static
    where
        B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let routes = Routes {
            gateway: self.gateway.clone(),
            others: self.others.clone(),
            client,
        };
        service_common::middleware::wrap(routes, &self.middleware, client)
    }
}

/// Stream URLs go straight to [`stream`] (or [`control::handle`] for the
/// reserved `__ds` prefix), everything else to the router.
///
/// Telling them apart is one prefix comparison; a wildcard route in the
/// router would also percent-decode the stream path and store it in the
/// request's extensions on every request, for a handler that reads the URI
/// itself.
#[derive(Clone)]
struct Routes {
    gateway: SharedGateway,
    others: Router,
    /// The connection's address, for `X-Forwarded-For`.
    client: Option<IpAddr>,
}

impl<B> Service<Request<B>> for Routes
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<
        Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>,
        <Router as Service<Request<B>>>::Future,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Neither side holds back requests: the router is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let base = &self.gateway.config.http.stream_base_path;
        if let Some(raw) = stream_path::stream_path_of(base, request.uri().path()) {
            let control = control::control_rest(raw, self.gateway.config.path_limits());
            let gateway = self.gateway.clone();
            let client = self.client;
            Either::Left(Box::pin(async move {
                let answer = if let Some(rest) = control {
                    control::handle(gateway, client, request, rest).await
                } else {
                    stream(gateway, client, request).await
                };
                Ok(answer.unwrap_or_else(IntoResponse::into_response))
            }))
        } else {
            Either::Right(self.others.call(request))
        }
    }
}

fn cors(origins: Option<Vec<String>>) -> BrowserCorsLayer {
    use service_common::cors::{PROTOCOL_REQUEST_HEADERS, PROTOCOL_RESPONSE_HEADERS};
    // Refusals must be readable too: their challenge and retry time.
    let exposed = PROTOCOL_RESPONSE_HEADERS
        .into_iter()
        .chain([header::WWW_AUTHENTICATE, header::RETRY_AFTER]);
    service_common::cors::layer(origins, PROTOCOL_REQUEST_HEADERS, exposed)
}

/// Ready when Postgres and stream-server both answered the latest probe
/// (see [`Readiness`]).
async fn readyz(State(gateway): State<SharedGateway>) -> Response {
    let probe = gateway
        .readiness
        .check(gateway.authenticator.store(), &gateway.upstream)
        .await;
    let body = serde_json::json!({
        "postgres": if probe.postgres { "ok" } else { "unreachable" },
        "upstream": if probe.upstream { "ok" } else { "unreachable" },
        "revocation_listener": gateway.authenticator.is_listening(),
        "probed_ms_ago": probe.age().as_millis() as u64,
    });
    let status = if probe.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// Any request to a stream URL: authenticated, authorised, then proxied.
///
/// The stream and any fork source are resolved by `service_common`'s
/// [`stream_path`], the same functions stream-server resolves them with, so
/// what is authorised here is what the server acts on.
async fn stream<B>(
    gateway: SharedGateway,
    client_ip: Option<IpAddr>,
    request: Request<B>,
) -> Result<Response, GatewayError>
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let Caller {
        grant,
        forward_query,
    } = decide(authorize(&gateway, &parts)).await?;

    let forwarding = Forwarding {
        passage: Passage::Token,
        identity: Some(grant.identity.clone()),
        query: forward_query,
        client_ip,
    };
    let waits_for_news = parts.method == Method::GET;
    let proxy_span = telemetry::proxy_span(&parts.method, gateway.upstream.origin());
    let body = UntilRevoked::new(body, grant.clone());
    let started = Instant::now();
    let forward = gateway
        .upstream
        .forward(Request::from_parts(parts, body), forwarding)
        .instrument(proxy_span.clone());
    let response = if waits_for_news {
        // A long-poll's answer may be a long time coming.
        tokio::select! {
            response = forward => response,
            () = grant.ended() => return Err(GatewayError::InvalidToken("token revoked or expired")),
        }
    } else {
        forward.await
    };
    let status = response.as_ref().map(http::Response::status);
    telemetry::record_upstream(&proxy_span, started.elapsed(), status);
    Ok(response?.map(|body| Body::new(UntilRevoked::new(body, grant))))
}

/// Authenticates the caller and checks that its token may do this to the
/// stream (and read the stream a `PUT` forks from).
async fn authorize(gateway: &SharedGateway, parts: &Parts) -> Result<Caller, GatewayError> {
    let caller = authenticate(gateway, parts).await?;
    let scope =
        Scope::for_stream_method(parts.method.as_str()).ok_or(GatewayError::MethodNotAllowed)?;
    if let Some(span) = service_common::telemetry::current_span() {
        span.record("ds.scope", scope.as_str());
    }
    let base = gateway.config.http.stream_base_path.as_str();
    let limits = gateway.config.path_limits();
    let raw = stream_path::stream_path_of(base, parts.uri.path()).unwrap_or_default();
    let path = stream_path::decode(raw, limits)?;
    if !caller.grant.allows(scope, &path) {
        return Err(GatewayError::InsufficientScope {
            scope,
            target: path.into_owned(),
        });
    }
    // Only a `PUT` creates, so only a `PUT` forks.
    if parts.method == Method::PUT
        && let Some(source) = stream_path::fork_source_of(&parts.headers, base, limits)?
        && !caller.grant.allows(Scope::Read, &source)
    {
        return Err(GatewayError::InsufficientScope {
            scope: Scope::Read,
            target: source.into_owned(),
        });
    }
    Ok(caller)
}
