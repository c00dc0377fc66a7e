//! The gateway's HTTP surface: health checks, the admin API, and every
//! stream URL — authenticated, authorised, rate limited, then proxied.

pub mod admin;
pub mod extract;
pub mod readiness;
pub mod state;

use crate::auth::scope::Scope;
use crate::error::GatewayError;
use crate::http::extract::{Caller, authenticate};
pub use crate::http::state::{Gateway, SharedGateway};
use crate::proxy::revocation::UntilRevoked;
use crate::proxy::{ClientIp, Forwarding};
use axum::BoxError;
use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures_util::future::Either;
use http::header::{self, HeaderValue};
use http::{Method, StatusCode};
use service_common::cors::BrowserCorsLayer;
use service_common::stream_path;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::{Service, ServiceBuilder};
use tower_http::trace::TraceLayer;

/// The application, put together once: [`App::for_client`] makes the
/// service for each connection.
#[derive(Clone)]
pub struct App {
    gateway: SharedGateway,
    others: Router,
    cors: BrowserCorsLayer,
}

impl App {
    pub fn new(gateway: SharedGateway) -> App {
        let others = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .nest("/admin", admin::routes())
            .fallback(|| async { GatewayError::NotFound("no such resource".into()) })
            .with_state(gateway.clone());
        App {
            cors: cors(gateway.config.cors_origins()),
            gateway,
            others,
        }
    }

    /// The service for the requests of one connection from `client`
    /// (`None` when unknown): the client's address is part of the service,
    /// so no request carries it in its extensions.
    ///
    /// The middleware wraps the routes instead of being added with
    /// `Router::layer`, which would wrap every route in each layer
    /// separately: per request, that is a boxed clone and a boxed future
    /// for every layer.
    pub fn for_client<B>(
        &self,
        client: Option<ClientIp>,
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
            client_ip: client.and_then(|client| client.forwarded_for),
        };
        ServiceBuilder::new()
            .layer(
                // Spans name the path only: a query may carry `access_token`.
                // Debug level: a span per request costs several percent of
                // throughput at tens of thousands of requests per second.
                TraceLayer::new_for_http().make_span_with(|request: &Request<B>| {
                    tracing::debug_span!("request", method = %request.method(), path = request.uri().path())
                }),
            )
            .map_response(service_common::problem::log_refusal)
            .map_response(service_common::security::add)
            .layer(self.cors.clone())
            .service(routes)
    }
}

/// Stream URLs go straight to [`stream`], everything else to the router.
///
/// Telling them apart is one prefix comparison; a wildcard route in the
/// router would also percent-decode the stream path and store it in the
/// request's extensions on every request, for a handler that reads the URI
/// itself.
#[derive(Clone)]
struct Routes {
    gateway: SharedGateway,
    others: Router,
    /// The connection's [`ClientIp`] entry for `X-Forwarded-For`.
    client_ip: Option<HeaderValue>,
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
        if stream_path::stream_path_of(base, request.uri().path()).is_some() {
            let gateway = self.gateway.clone();
            let client_ip = self.client_ip.clone();
            Either::Left(Box::pin(async move {
                Ok(stream(gateway, client_ip, request)
                    .await
                    .unwrap_or_else(IntoResponse::into_response))
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
    client_ip: Option<HeaderValue>,
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
    } = authenticate(&gateway, &parts).await?;
    let scope =
        Scope::for_stream_method(parts.method.as_str()).ok_or(GatewayError::MethodNotAllowed)?;
    let base = gateway.config.http.stream_base_path.as_str();
    let limits = gateway.config.path_limits();
    let raw = stream_path::stream_path_of(base, parts.uri.path()).unwrap_or_default();
    let path = stream_path::decode(raw, limits)?;
    if !grant.allows(scope, &path) {
        return Err(GatewayError::InsufficientScope {
            scope,
            target: path.into_owned(),
        });
    }
    // Only a `PUT` creates, so only a `PUT` forks.
    if parts.method == Method::PUT
        && let Some(source) = stream_path::fork_source_of(&parts.headers, base, limits)?
        && !grant.allows(Scope::Read, &source)
    {
        return Err(GatewayError::InsufficientScope {
            scope: Scope::Read,
            target: source.into_owned(),
        });
    }

    let forwarding = Forwarding {
        identity: Some(grant.identity.clone()),
        query: forward_query,
        client_ip,
    };
    let waits_for_news = parts.method == Method::GET;
    let body = UntilRevoked::new(body, grant.clone());
    let forward = gateway
        .upstream
        .forward(Request::from_parts(parts, body), forwarding);
    let response = if waits_for_news {
        // A long-poll's answer may be a long time coming.
        tokio::select! {
            response = forward => response?,
            () = grant.ended() => return Err(GatewayError::InvalidToken("token revoked or expired")),
        }
    } else {
        forward.await?
    };
    Ok(response.map(|body| Body::new(UntilRevoked::new(body, grant))))
}
