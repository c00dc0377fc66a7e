//! The reserved `__ds` control routes under the stream base path
//! (PROTOCOL §6–7): subscriptions, their deliveries and the webhook signing
//! keys. The policy:
//!
//! * `GET`/`HEAD __ds/jwks.json` needs no token: it is public key material
//!   that webhook receivers fetch without any gateway token. Any credentials
//!   sent along are dropped, no identity is asserted, the answer keeps
//!   upstream's caching, and requests are rate limited per client address.
//! * `POST __ds/subscriptions/{id}/callback`, `/ack` and `/release` carry
//!   stream-server's own callback or claim token, which stream-server
//!   verifies: the gateway passes `Authorization` on untouched, asserts no
//!   identity, and rate limits per presented token (a missing or malformed
//!   bearer is still `401`/`400` here, and a valid *gateway* token is
//!   refused rather than handed to stream-server).
//! * Every other route needs a gateway token with the `subscribe` scope
//!   (`admin` alone does not do: it manages tokens, not streams) and then
//!   the reach [`Coverage::within`] describes: `read` on everything the
//!   subscription covers, `read` and `write` on its wake stream.
//!   * Bodies are read whole first (at most [`MAX_JSON_BODY_BYTES`], `413`
//!     above) and exactly those bytes go upstream.
//!   * `PUT __ds/subscriptions/{id}` and `POST .../streams`: the JSON body
//!     is checked before anything is forwarded. A
//!     body the gateway cannot check (not JSON, unknown or repeated fields,
//!     invalid pattern or path) is `400` here.
//!   * `GET`, `DELETE __ds/subscriptions/{id}`, `POST .../claim`,
//!     `POST .../streams` and `DELETE .../streams/{path}` act on a
//!     subscription that may be another tenant's, so the gateway first
//!     reads it from stream-server (`GET __ds/subscriptions/{id}`, the id
//!     encoded so that it decodes to the same one) and requires its
//!     pattern, linked streams and wake
//!     stream within the token. If that read is not `200` (say `404`), its
//!     answer is the answer. A `GET` is answered with that very read, and a
//!     `PUT`'s answer (which shows the stored subscription) is checked the
//!     same way before it is returned.
//!   * A refusal is `403` saying only that the subscription is outside the
//!     token; which streams, perhaps another tenant's, is logged.
//! * Any other `__ds` path is `404` and a known path with another method
//!   `405`, never forwarded.
//!
//! Which paths are control routes, and what they name, is decided by
//! `service_common::stream_path::control_path`, the function stream-server
//! routes them with: the path after the base is percent-decoded once
//! (`%5F%5Fds/...` is a control path too) and held to the stream path rules,
//! so the route, id and stream checked here are the ones stream-server acts
//! on. A path that decodes under `__ds` but breaks those rules is left to
//! the stream route, which refuses it as a reserved path (`400`).
//!
//! Subscription ids are one namespace for all tenants, so a token can tell
//! that an id is taken (`403` rather than `404`, or `409` on `PUT`). A check
//! and the action after it are two requests to stream-server: a
//! subscription deleted and re-created under the same id by someone else in
//! between would be acted on as checked. Bodies are read before the check,
//! so a client cannot stretch that window.

use crate::auth::credentials;
use crate::auth::scope::Scope;
use crate::auth::subscription::{self, Coverage, OutsideReach};
use crate::error::GatewayError;
use crate::http::extract::{Caller, MAX_JSON_BODY_BYTES, authenticate, decide};
use crate::http::state::{Gateway, SharedGateway};
use crate::proxy::{Forwarding, Passage};
use crate::telemetry;
use axum::BoxError;
use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, StatusCode, Uri, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use service_common::body::{BodyTimeout, find_cause};
use service_common::stream_path::{self, PathLimits};
use std::net::IpAddr;
use std::time::Instant;
use tracing::Instrument;

/// What a `__ds` request asks for, read from the decoded control path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// `GET`, `HEAD __ds/jwks.json`
    Jwks,
    /// `PUT`, `GET`, `DELETE __ds/subscriptions/{id}`
    Subscription(&'a str),
    /// `POST __ds/subscriptions/{id}/streams`
    AddStreams(&'a str),
    /// `DELETE __ds/subscriptions/{id}/streams/{path}`
    RemoveStream { id: &'a str, stream: &'a str },
    /// `POST __ds/subscriptions/{id}/claim`
    Claim(&'a str),
    /// `POST __ds/subscriptions/{id}/callback`, `/ack`, `/release`
    Delivery(&'a str),
}

/// The part after `__ds/` of the raw stream path `raw` (after the base
/// path), decoded, when it is a control route; `None` for stream paths,
/// including those that decode under `__ds` but break the path rules (the
/// stream route refuses them). Only a raw path starting with `_` or an
/// escape can decode to one, so stream requests pay one byte comparison.
pub fn control_rest(raw: &str, limits: PathLimits) -> Option<String> {
    if !raw.starts_with(['_', '%']) {
        return None;
    }
    stream_path::control_path(raw, limits).ok().flatten()
}

/// The route of a control path `rest` (decoded, after `__ds/`), or why
/// there is none: `404` for an unknown path, `405` for a method the path
/// does not take, `400` for a stream that cannot be one.
pub fn route<'a>(
    rest: &'a str,
    method: &Method,
    limits: PathLimits,
) -> Result<Route<'a>, GatewayError> {
    use stream_path::ControlRoute as Shared;
    let allow = |methods: &[Method]| {
        if methods.contains(method) {
            Ok(())
        } else {
            Err(GatewayError::MethodNotAllowed)
        }
    };
    // What the path names is read by the function stream-server routes
    // with; only the methods and the checks are the gateway's.
    let shared =
        Shared::parse(rest).ok_or_else(|| GatewayError::NotFound("no such resource".into()))?;
    Ok(match shared {
        Shared::Jwks => {
            allow(&[Method::GET, Method::HEAD])?;
            Route::Jwks
        }
        Shared::Subscription(id) => {
            allow(&[Method::PUT, Method::GET, Method::DELETE])?;
            Route::Subscription(id)
        }
        Shared::Streams(id) => {
            allow(&[Method::POST])?;
            Route::AddStreams(id)
        }
        Shared::Claim(id) => {
            allow(&[Method::POST])?;
            Route::Claim(id)
        }
        Shared::Callback(id) | Shared::Ack(id) | Shared::Release(id) => {
            allow(&[Method::POST])?;
            Route::Delivery(id)
        }
        Shared::Stream { id, stream } => {
            allow(&[Method::DELETE])?;
            stream_path::validate(stream, limits)?;
            Route::RemoveStream { id, stream }
        }
    })
}

/// The raw path of `GET __ds/subscriptions/{id}` under `base`: the id
/// percent-encoded whole, so that decoding once (as `control_path` does)
/// gives it back exactly.
fn subscription_path(base: &str, id: &str) -> String {
    let id = percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC);
    format!(
        "{base}/{}/subscriptions/{id}",
        stream_path::RESERVED_SEGMENT
    )
}

/// Serves one control request (see the module docs).
/// `rest` is the request's decoded control path ([`control_rest`]).
pub async fn handle<B>(
    gateway: SharedGateway,
    client_ip: Option<IpAddr>,
    request: Request<B>,
    rest: String,
) -> Result<Response, GatewayError>
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let route = route(&rest, &parts.method, gateway.config.path_limits())?;
    match route {
        Route::Jwks => {
            gateway.limiter.check(&public_key(client_ip))?;
            let forwarding = Forwarding {
                passage: Passage::Public,
                identity: None,
                query: None,
                client_ip,
            };
            let response = send(
                &gateway,
                Request::from_parts(parts, Body::empty()),
                forwarding,
            );
            Ok(response.await?.map(Body::new))
        }
        Route::Delivery(_) => deliver(&gateway, client_ip, parts, body).await,
        route => manage(&gateway, client_ip, parts, body, &rest, route).await,
    }
}

/// The rate limit key of requests for public material: per client address.
/// No token id contains a space.
fn public_key(client_ip: Option<IpAddr>) -> std::sync::Arc<str> {
    match client_ip {
        Some(ip) => format!("public {ip}").into(),
        None => "public unknown".into(),
    }
}

/// The rate limit key of a request bearing stream-server's token: a digest
/// of the token, so each wake's worker has its own budget and the keys
/// stay small whatever the token.
fn server_token_key(token: &str) -> std::sync::Arc<str> {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let hex: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("server-token {hex}").into()
}

/// A callback, ack or release: passed on with its own bearer.
async fn deliver<B>(
    gateway: &Gateway,
    client_ip: Option<IpAddr>,
    parts: Parts,
    body: B,
) -> Result<Response, GatewayError>
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let found = credentials::extract(&parts.method, &parts.headers, parts.uri.query(), false)?;
    let token = found.token.ok_or(GatewayError::MissingToken)?;
    // A gateway token here is a client's mistake; stream-server must not
    // receive it (gateway credentials never go upstream).
    let config = &gateway.config.jwt;
    if gateway
        .authenticator
        .keys()
        .verify(&token, &config.issuer, &config.audience)
        .is_ok()
    {
        return Err(GatewayError::InvalidToken(
            "a gateway token was sent where stream-server's callback or claim token belongs",
        ));
    }
    gateway.limiter.check(&server_token_key(&token))?;
    let forwarding = Forwarding {
        passage: Passage::ServerToken,
        identity: None,
        query: found.forward_query,
        client_ip,
    };
    let response = send(gateway, Request::from_parts(parts, body), forwarding).await?;
    Ok(response.map(Body::new))
}

/// A request that needs a gateway token with `subscribe`, and the
/// subscription within its reach.
async fn manage<B>(
    gateway: &Gateway,
    client_ip: Option<IpAddr>,
    parts: Parts,
    body: B,
    rest: &str,
    route: Route<'_>,
) -> Result<Response, GatewayError>
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let decision = decide(async {
        let caller = authenticate(gateway, &parts).await?;
        if let Some(span) = service_common::telemetry::current_span() {
            span.record("ds.scope", Scope::Subscribe.as_str());
        }
        if !caller.grant.has_scope(Scope::Subscribe) {
            return Err(GatewayError::InsufficientScope {
                scope: Scope::Subscribe,
                target: format!("{}/{rest}", stream_path::RESERVED_SEGMENT),
            });
        }
        Ok(caller)
    })
    .await;
    let Caller {
        grant,
        forward_query,
    } = decision?;
    let forwarding = || Forwarding {
        passage: Passage::Token,
        identity: Some(grant.identity.clone()),
        query: forward_query.clone(),
        client_ip,
    };
    let limits = gateway.config.path_limits();
    let body = read_body(body, &parts.headers).await?;
    let view_limit =
        usize::try_from(gateway.config.limits.max_request_body_bytes).unwrap_or(usize::MAX);

    let id = match route {
        Route::Subscription(_) if parts.method == Method::PUT => {
            subscription::create_body(&body, limits)?.within(&grant)?;
            // The answer shows the stored subscription, which may be an
            // existing one (re-confirmed): checked like a read.
            let response = send(
                gateway,
                Request::from_parts(parts, Body::from(body)),
                forwarding(),
            )
            .await?;
            return checked_view(response, view_limit, |coverage| coverage.within(&grant)).await;
        }
        Route::Subscription(_) if parts.method == Method::GET => {
            let response = send(
                gateway,
                Request::from_parts(parts, Body::from(body)),
                forwarding(),
            )
            .await?;
            return checked_view(response, view_limit, |coverage| coverage.within(&grant)).await;
        }
        Route::Subscription(id) | Route::Claim(id) => id,
        Route::AddStreams(id) => {
            subscription::add_streams_body(&body, limits)?.within(&grant)?;
            id
        }
        Route::RemoveStream { id, stream } => {
            let only = Coverage {
                streams: vec![stream.to_owned()],
                ..Coverage::default()
            };
            only.within(&grant)?;
            id
        }
        // Served by `handle` without a gateway token.
        Route::Jwks | Route::Delivery(_) => return Err(GatewayError::Internal),
    };

    // Acting on a subscription that exists: it must be within reach first.
    let path = subscription_path(&gateway.config.http.stream_base_path, id);
    let read = view_request(&parts, path)?;
    let existing = send(
        gateway,
        read,
        Forwarding {
            query: None,
            ..forwarding()
        },
    )
    .await?;
    let (existing, bytes) = buffered(existing, view_limit).await?;
    if existing.status != StatusCode::OK {
        return Ok(Response::from_parts(existing, Body::from(bytes)));
    }
    view_coverage(&bytes)?.within(&grant)?;
    let response = send(
        gateway,
        Request::from_parts(parts, Body::from(body)),
        forwarding(),
    )
    .await?;
    Ok(response.map(Body::new))
}

/// `GET` of the subscription at `path` as the gateway's own request, on
/// behalf of the client's: same `Host` (and HTTP/2 authority) and
/// forwarding chain, no body, no query.
fn view_request(parts: &Parts, path: String) -> Result<Request<Body>, GatewayError> {
    let path = PathAndQuery::try_from(path).map_err(|_| GatewayError::Internal)?;
    let mut uri = parts.uri.clone().into_parts();
    uri.path_and_query = Some(path);
    let uri = Uri::from_parts(uri).map_err(|_| GatewayError::Internal)?;
    let mut request = Request::get(uri)
        .body(Body::empty())
        .map_err(|_| GatewayError::Internal)?;
    let headers = request.headers_mut();
    for name in [
        header::HOST,
        header::HeaderName::from_static("x-forwarded-for"),
    ] {
        for value in parts.headers.get_all(&name) {
            headers.append(name.clone(), value.clone());
        }
    }
    Ok(request)
}

/// Returns a subscription view from stream-server once `check` accepts
/// it; answers other than success are returned as they are.
async fn checked_view(
    response: http::Response<Incoming>,
    limit: usize,
    check: impl FnOnce(&Coverage) -> Result<(), OutsideReach>,
) -> Result<Response, GatewayError> {
    let (parts, bytes) = buffered(response, limit).await?;
    if parts.status.is_success() {
        check(&view_coverage(&bytes)?)?;
    }
    Ok(Response::from_parts(parts, Body::from(bytes)))
}

/// What stream-server says a subscription covers; an answer the gateway
/// cannot read is stream-server failing, and nothing of it is passed on.
fn view_coverage(bytes: &[u8]) -> Result<Coverage, GatewayError> {
    subscription::view(bytes).map_err(|e| {
        tracing::warn!("unreadable subscription from stream-server: {e}");
        GatewayError::Upstream
    })
}

/// stream-server's answer, read whole (up to `limit` bytes).
async fn buffered(
    response: http::Response<Incoming>,
    limit: usize,
) -> Result<(http::response::Parts, Bytes), GatewayError> {
    let (parts, body) = response.into_parts();
    let bytes = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            tracing::warn!("reading a subscription answer from stream-server failed: {e}");
            GatewayError::Upstream
        })?
        .to_bytes();
    Ok((parts, bytes))
}

/// The client's body, whole: `413` past [`MAX_JSON_BODY_BYTES`] (declared
/// or sent), `408` when it stalls.
async fn read_body<B>(body: B, headers: &HeaderMap) -> Result<Bytes, GatewayError>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let too_large = GatewayError::PayloadTooLarge {
        limit: MAX_JSON_BODY_BYTES as u64,
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_JSON_BODY_BYTES as u64) {
        return Err(too_large);
    }
    match Limited::new(body, MAX_JSON_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => {
            let e: &(dyn std::error::Error + 'static) = &*e;
            if find_cause::<LengthLimitError>(e).is_some() {
                Err(too_large)
            } else if let Some(timeout) = BodyTimeout::find(e) {
                Err(GatewayError::BodyTimeout(timeout.clone()))
            } else {
                Err(GatewayError::BadRequest(format!("request body: {e}")))
            }
        }
    }
}

/// Sends a request upstream inside a proxy span.
async fn send<B>(
    gateway: &Gateway,
    request: Request<B>,
    forwarding: Forwarding,
) -> Result<http::Response<Incoming>, GatewayError>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let span = telemetry::proxy_span(request.method(), gateway.upstream.origin());
    let started = Instant::now();
    let response = gateway
        .upstream
        .forward(request, forwarding)
        .instrument(span.clone())
        .await;
    telemetry::record_upstream(
        &span,
        started.elapsed(),
        response.as_ref().map(http::Response::status),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: PathLimits = PathLimits {
        max_bytes: 64,
        max_segments: 4,
    };

    fn parse(rest: &str, method: Method) -> Result<Route<'_>, StatusCode> {
        route(rest, &method, LIMITS).map_err(|e| e.status())
    }

    #[test]
    fn control_paths_are_decoded_once_like_stream_servers() {
        let rest = |raw| control_rest(raw, PathLimits::default());
        assert_eq!(rest("__ds/jwks.json").as_deref(), Some("jwks.json"));
        assert_eq!(rest("%5F%5Fds/jwks.json").as_deref(), Some("jwks.json"));
        assert_eq!(rest("__ds%2Fjwks.json").as_deref(), Some("jwks.json"));
        assert_eq!(
            rest("__ds/subscriptions/s/streams/a%2Fb").as_deref(),
            Some("subscriptions/s/streams/a/b")
        );
        assert_eq!(rest("__ds").as_deref(), Some(""));
        for stream in ["chat/__ds", "__dsx/a", "x", "_a/b"] {
            assert_eq!(rest(stream), None, "{stream}");
        }
        // Under `__ds` but malformed: refused by the stream route instead.
        for malformed in ["__ds/a/../b", "__ds//a", "__ds/%FF", "__ds/subscriptions/"] {
            assert_eq!(rest(malformed), None, "{malformed}");
            assert!(
                stream_path::decode(malformed, LIMITS).is_err(),
                "{malformed}"
            );
        }
    }

    #[test]
    fn known_routes_and_their_methods() {
        assert_eq!(parse("jwks.json", Method::GET), Ok(Route::Jwks));
        assert_eq!(parse("jwks.json", Method::HEAD), Ok(Route::Jwks));
        assert_eq!(
            parse("jwks.json", Method::POST),
            Err(StatusCode::METHOD_NOT_ALLOWED)
        );
        for method in [Method::PUT, Method::GET, Method::DELETE] {
            assert_eq!(
                parse("subscriptions/sub-1", method),
                Ok(Route::Subscription("sub-1"))
            );
        }
        assert_eq!(
            parse("subscriptions/sub-1", Method::POST),
            Err(StatusCode::METHOD_NOT_ALLOWED)
        );
        assert_eq!(
            parse("subscriptions/sub-1/streams", Method::POST),
            Ok(Route::AddStreams("sub-1"))
        );
        assert_eq!(
            parse("subscriptions/sub-1/claim", Method::POST),
            Ok(Route::Claim("sub-1"))
        );
        for action in ["callback", "ack", "release"] {
            let rest = format!("subscriptions/s/{action}");
            assert_eq!(parse(&rest, Method::POST), Ok(Route::Delivery("s")));
            assert_eq!(
                parse(&rest, Method::GET),
                Err(StatusCode::METHOD_NOT_ALLOWED)
            );
        }
        assert_eq!(
            parse("subscriptions/s/streams/manual/b", Method::DELETE),
            Ok(Route::RemoveStream {
                id: "s",
                stream: "manual/b"
            })
        );
        assert_eq!(
            parse("subscriptions/s/streams/__ds/x", Method::DELETE),
            Err(StatusCode::BAD_REQUEST),
            "a reserved path is no stream"
        );
    }

    #[test]
    fn unknown_paths_are_not_found() {
        for unknown in [
            "",
            "jwks",
            "jwks.json/x",
            "subscriptions",
            "subscriptions/s/other",
            "subscriptions/s/claim/x",
            "subscriptions/s/streamsx/a",
            "streams/s",
        ] {
            assert_eq!(
                parse(unknown, Method::GET),
                Err(StatusCode::NOT_FOUND),
                "{unknown}"
            );
        }
    }

    #[test]
    fn the_gateways_own_reads_name_the_same_subscription() {
        for id in ["sub-1", "sub 1", "a%2Fb", "%41", "é", "x.y~z"] {
            let path = subscription_path("/v1/stream", id);
            let raw = stream_path::stream_path_of("/v1/stream", &path).expect("a stream URL");
            assert_eq!(
                control_rest(raw, LIMITS),
                Some(format!("subscriptions/{id}")),
                "{id}"
            );
            assert!(PathAndQuery::try_from(path).is_ok(), "{id}");
        }
    }

    #[test]
    fn server_token_keys_are_short_and_distinct() {
        let a = server_token_key("eyJ.a.b");
        assert_eq!(a.len(), "server-token ".len() + 32);
        assert_ne!(a, server_token_key("eyJ.a.c"));
        assert_eq!(a, server_token_key("eyJ.a.b"));
        assert_eq!(&*public_key(None), "public unknown");
    }
}
