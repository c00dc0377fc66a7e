//! Traces of HTTP requests, for both services' routers: a server span per
//! request that continues the caller's W3C trace context, the
//! `traceresponse` header naming it, and context injection for requests
//! the gateway sends on.
//!
//! Attribute names follow the OpenTelemetry semantic conventions for HTTP;
//! the `ds.*` attributes are declared here (empty) for handlers to record
//! as they learn them, since a span's fields are fixed when it is created.

use super::TARGET;
use crate::headers::{STREAM_NEXT_OFFSET, TRACERESPONSE};
use http::header::{CONTENT_LENGTH, HOST, USER_AGENT};
use http::{HeaderMap, HeaderValue, Request, Response, Version};
use opentelemetry::global;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::{MakeSpan, OnResponse, TraceLayer};
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The routes of a service, to name requests in spans and metrics by
/// their route (`/v1/stream/{*path}`) rather than their path, which keeps
/// stream names and ids out of labels.
///
/// Both services send stream URLs past the axum router (a prefix
/// comparison, see `tests/load/benchmarks.md`), so the names come from
/// here rather than from axum's `MatchedPath`.
#[derive(Debug, Clone)]
pub struct RouteNames {
    stream_base: Arc<str>,
    stream_route: Arc<str>,
    /// The service's other routes; a final `{id}` segment matches any one
    /// segment.
    others: &'static [&'static str],
}

impl RouteNames {
    pub fn new(stream_base: &str, others: &'static [&'static str]) -> RouteNames {
        RouteNames {
            stream_base: stream_base.into(),
            stream_route: crate::stream_path::route(stream_base).into(),
            others,
        }
    }

    /// The route `path` falls under, if any.
    pub fn of(&self, path: &str) -> Option<&str> {
        self.name(self.index_of(path)?)
    }

    /// How many routes there are: indexes run from 0 to `len() - 1`.
    pub fn len(&self) -> usize {
        1 + self.others.len()
    }

    /// Always false: the stream route is always there.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The index of the route `path` falls under, if any.
    pub fn index_of(&self, path: &str) -> Option<usize> {
        if crate::stream_path::stream_path_of(&self.stream_base, path).is_some() {
            return Some(0);
        }
        let other = self.others.iter().position(|route| matches(route, path))?;
        Some(1 + other)
    }

    /// The route with index `index`, if there is one.
    pub fn name(&self, index: usize) -> Option<&str> {
        match index {
            0 => Some(&self.stream_route),
            i => self.others.get(i - 1).copied(),
        }
    }
}

fn matches(route: &str, path: &str) -> bool {
    match route.strip_suffix("{id}") {
        Some(prefix) => path
            .strip_prefix(prefix)
            .is_some_and(|id| !id.is_empty() && !id.contains('/')),
        None => route == path,
    }
}

/// The layer that traces the requests of one connection, from `client`.
pub type ServerTraceLayer =
    TraceLayer<SharedClassifier<ServerErrorsAsFailures>, ServerSpan, (), RecordStatus, (), (), ()>;

/// See [`ServerTraceLayer`].
pub fn server_trace_layer(routes: RouteNames, client: Option<IpAddr>) -> ServerTraceLayer {
    TraceLayer::new_for_http()
        .make_span_with(ServerSpan { routes, client })
        .on_request(())
        .on_response(RecordStatus)
        .on_body_chunk(())
        .on_eos(())
        .on_failure(())
}

/// Makes the server span of a request. The span lives until the response
/// body ends, so a long-poll's or an SSE stream's span covers all of it.
#[derive(Debug, Clone)]
pub struct ServerSpan {
    routes: RouteNames,
    client: Option<IpAddr>,
}

impl<B> MakeSpan<B> for ServerSpan {
    fn make_span(&mut self, request: &Request<B>) -> Span {
        if !super::tracing_enabled() {
            return Span::none();
        }
        let method = request.method().as_str();
        let route = self.routes.of(request.uri().path());
        let name = match route {
            Some(route) => format!("{method} {route}"),
            None => method.to_owned(),
        };
        let header = |name| request.headers().get(name).and_then(|v| v.to_str().ok());
        let span = tracing::info_span!(
            target: TARGET,
            "request",
            otel.name = name,
            otel.kind = "server",
            otel.status_code = Empty,
            http.request.method = method,
            http.route = route,
            http.response.status_code = Empty,
            url.path = request.uri().path(),
            url.query = request.uri().query().map(redact_query),
            server.address = header(HOST),
            client.address = self.client.map(|ip| ip.to_string()),
            user_agent.original = header(USER_AGENT),
            network.protocol.version = protocol_version(request.version()),
            http.request.body.size = Empty,
            http.response.body.size = Empty,
            error.type = Empty,
            enduser.id = Empty,
            ds.token_id = Empty,
            ds.stream = Empty,
            ds.operation = Empty,
            ds.content_type = Empty,
            ds.offset = Empty,
            ds.next_offset = Empty,
            ds.live = Empty,
            ds.producer.id = Empty,
            ds.producer.epoch = Empty,
            ds.producer.seq = Empty,
            ds.delivered.messages = Empty,
            ds.delivered.bytes = Empty,
            ds.sse.events = Empty,
        );
        let parent =
            global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(request.headers())));
        // Fails only when the span is not exported, which leaves nothing to do.
        let _ = span.set_parent(parent);
        span
    }
}

/// Records the status on the server span; a 5xx marks the span as an error,
/// a 4xx does not (the client's mistake is not the server's failure).
#[derive(Debug, Clone, Copy)]
pub struct RecordStatus;

impl<B> OnResponse<B> for RecordStatus {
    fn on_response(self, response: &Response<B>, _latency: Duration, span: &Span) {
        if span.is_disabled() {
            return;
        }
        let status = response.status();
        span.record("http.response.status_code", status.as_u16());
        let headers = response.headers();
        let text = |name| {
            headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
        };
        span.record("ds.next_offset", text(STREAM_NEXT_OFFSET));
        span.record("http.response.body.size", text(CONTENT_LENGTH));
        if status.is_server_error() {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", status.as_str());
        }
    }
}

/// Adds `traceresponse` to a response made inside a traced request, for
/// `MapResponseLayer` inside [`server_trace_layer`].
pub fn add_traceresponse<B>(mut response: Response<B>) -> Response<B> {
    if !super::tracing_enabled() {
        return response;
    }
    if let Some(value) = traceresponse(&Span::current()) {
        response.headers_mut().insert(TRACERESPONSE, value);
    }
    response
}

/// The `traceresponse` value naming `span` (version 00), when it is traced.
pub fn traceresponse(span: &Span) -> Option<HeaderValue> {
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    let otel_span = context.span();
    let ids = otel_span.span_context();
    if !ids.is_valid() {
        return None;
    }
    let value = format!(
        "00-{}-{}-{:02x}",
        ids.trace_id(),
        ids.span_id(),
        ids.trace_flags().to_u8()
    );
    HeaderValue::from_str(&value).ok()
}

/// Writes the trace context of `span` into `headers` (`traceparent`,
/// `tracestate`), replacing what the client sent, so the next service
/// continues this trace below `span`.
pub fn inject(span: &Span, headers: &mut HeaderMap) {
    if span.is_disabled() {
        return;
    }
    let context = span.context();
    global::get_text_map_propagator(|p| p.inject_context(&context, &mut HeaderInjector(headers)));
}

fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// The query as spans may show it: `access_token` values replaced, since a
/// query may carry a credential.
pub fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if is_access_token(name) => format!("{name}=REDACTED"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn is_access_token(name: &str) -> bool {
    let decoded = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
    decoded.eq_ignore_ascii_case(crate::headers::ACCESS_TOKEN_QUERY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_tokens_never_reach_a_span() {
        assert_eq!(
            redact_query("offset=-1&access_token=abc.def"),
            "offset=-1&access_token=REDACTED"
        );
        assert_eq!(
            redact_query("access%5Ftoken=abc"),
            "access%5Ftoken=REDACTED"
        );
        assert_eq!(
            redact_query("ACCESS_TOKEN=abc&live=sse"),
            "ACCESS_TOKEN=REDACTED&live=sse"
        );
        assert_eq!(redact_query("offset=now"), "offset=now");
    }

    #[test]
    fn requests_are_named_by_their_route() {
        let routes = RouteNames::new(
            "/v1/stream",
            &["/healthz", "/admin/tokens", "/admin/tokens/{id}"],
        );
        assert_eq!(
            routes.of("/v1/stream/chat/room-1"),
            Some("/v1/stream/{*path}")
        );
        assert_eq!(routes.of("/v1/stream/"), None);
        assert_eq!(routes.of("/v1/streams/x"), None);
        assert_eq!(routes.of("/healthz"), Some("/healthz"));
        assert_eq!(routes.of("/admin/tokens"), Some("/admin/tokens"));
        assert_eq!(routes.of("/admin/tokens/t-1"), Some("/admin/tokens/{id}"));
        assert_eq!(routes.of("/admin/tokens/t-1/x"), None);
        assert_eq!(routes.of("/admin/tokens/"), None);
        assert_eq!(routes.of("/metrics"), None);
    }

    #[test]
    fn untraced_requests_get_no_traceresponse() {
        let response = add_traceresponse(Response::new(()));
        assert!(response.headers().get(TRACERESPONSE).is_none());
    }
}
