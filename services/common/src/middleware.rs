//! The middleware both services wrap their routes in, in one place so that
//! what every response carries cannot drift between them. Outermost first:
//! request metrics, the traced server span, `traceresponse`, the refusal
//! log line, the security headers, CORS.
//!
//! It wraps the routes rather than being added with `Router::layer`, which
//! wraps every route in each layer: measurably dearer per request
//! (`tests/load/benchmarks.md`).

use crate::cors::BrowserCorsLayer;
use crate::telemetry::http::{RouteNames, add_traceresponse, server_trace_layer};
use crate::telemetry::metrics::RequestMetricsLayer;
use crate::{problem, security};
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use std::convert::Infallible;
use std::net::IpAddr;
use tower::{Service, ServiceBuilder};

/// What the middleware of every connection of a service shares, made once
/// per service: the route names, the request metrics (with their counts of
/// requests in flight) and the CORS policy.
#[derive(Debug, Clone)]
pub struct Middleware {
    names: RouteNames,
    metrics: RequestMetricsLayer,
    cors: BrowserCorsLayer,
}

impl Middleware {
    pub fn new(names: RouteNames, cors: BrowserCorsLayer) -> Middleware {
        Middleware {
            metrics: RequestMetricsLayer::new(names.clone()),
            names,
            cors,
        }
    }
}

/// `routes` (the service's own) wrapped in the shared middleware, for the
/// requests of one connection from `client`.
pub fn wrap<S, ReqBody>(
    routes: S,
    middleware: &Middleware,
    client: Option<IpAddr>,
) -> impl Service<
    Request<ReqBody>,
    Response = Response<impl Body<Data = Bytes, Error = axum::Error> + Send + 'static>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ Sync
+ 'static
where
    S: Service<Request<ReqBody>, Response = axum::response::Response, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
    ReqBody: Body + Send + 'static,
{
    ServiceBuilder::new()
        .layer(middleware.metrics.clone())
        .layer(server_trace_layer(middleware.names.clone(), client))
        .map_response(add_traceresponse)
        .map_response(problem::log_refusal)
        .map_response(security::add)
        .layer(middleware.cors.clone())
        .service(routes)
}
