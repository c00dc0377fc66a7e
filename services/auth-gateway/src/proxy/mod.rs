//! The reverse proxy to stream-server: bodies stream through in both
//! directions (chunked uploads, long-polls, SSE) without buffering or
//! timeouts, over a pool of keep-alive connections.
//!
//! Dropping the client's request or response drops the upstream one, so a
//! client that disconnects cancels its upstream request. Hop-by-hop headers
//! (RFC 9110 §7.6.1) stay on their hop; gateway credentials never travel
//! upstream (the one bearer that does is stream-server's own, see
//! [`Passage::ServerToken`]); identity and `X-Forwarded-*` headers are the
//! gateway's own; `Location` points at the gateway; and answers to
//! authenticated requests are kept out of shared caches (see
//! [`restrict_caching`]).

pub mod revocation;

use crate::auth::identity::{Identity, X_AUTH_SUBJECT, X_AUTH_TOKEN_ID};
use crate::config::{Config, ConfigError};
use crate::error::GatewayError;
use axum::BoxError;
use axum::body::Body;
use axum::extract::Request;
use bytes::Bytes;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Uri, Version};
use http_body_util::{LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use revocation::GrantEnded;
use service_common::body::BodyTimeout;
use service_common::body::find_cause;
use std::net::IpAddr;
use std::time::Duration;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Connection-specific headers (RFC 9110 §7.6.1) that never cross the gateway.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
];

/// On whose word a request goes upstream, which decides what happens to
/// its credentials and identity headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passage {
    /// A gateway token the gateway checked: its credentials end here and
    /// the identity headers name its holder.
    Token,
    /// A subscription callback, ack or release (PROTOCOL §7): its bearer is
    /// stream-server's own callback or claim token, passed on untouched for
    /// stream-server to verify. No identity headers: the gateway vouches
    /// for no one.
    ServerToken,
    /// Public material (the webhook signing keys, PROTOCOL §6.5): no
    /// credentials or identity go upstream, and the answer keeps upstream's
    /// caching, since it is the same for everyone.
    Public,
}

/// What the handler learned about a request that the proxy needs.
#[derive(Debug)]
pub struct Forwarding {
    pub passage: Passage,
    /// Sent only with [`Passage::Token`].
    pub identity: Option<Identity>,
    /// The query to send upstream (credentials removed).
    pub query: Option<String>,
    /// The address of the connection the request came on, added to
    /// `X-Forwarded-For`.
    pub client_ip: Option<IpAddr>,
}

/// The pooled client for one stream-server.
#[derive(Debug, Clone)]
pub struct Upstream {
    client: Client<HttpConnector, Body>,
    /// `http://host:port`, no trailing slash.
    origin: String,
    /// The parts of `origin` every upstream URI is built from, parsed once.
    scheme: Scheme,
    authority: Authority,
    /// The path of `origin` (no trailing slash), put before every request's.
    path_prefix: String,
    /// The `Host` upstream requests carry: `origin`'s host and non-default
    /// port, as the client would otherwise format per request.
    host: HeaderValue,
    /// `server.public_url` without a trailing slash.
    public_origin: Option<String>,
    /// The authority of `public_origin`, for `X-Forwarded-Host` when a
    /// request names none.
    public_host: Option<HeaderValue>,
    /// Whether shared caches may keep answers (`http.shared_cache`).
    shared_cache: bool,
    max_body_bytes: u64,
}

impl Upstream {
    pub fn new(config: &Config) -> Result<Upstream, ConfigError> {
        let origin = config.upstream.url.trim_end_matches('/');
        let invalid = |reason: String| ConfigError::Invalid {
            key: "upstream.url",
            reason,
        };
        let uri: Uri = origin
            .parse()
            .map_err(|e| invalid(format!("is not a URL: {e}")))?;
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(invalid(format!("must be http://host:port, got {origin:?}")));
        };
        let host = match authority.port_u16() {
            Some(port) if port != default_port(scheme) => {
                HeaderValue::from_str(&format!("{}:{port}", authority.host()))
            }
            _ => HeaderValue::from_str(authority.host()),
        }
        .map_err(|e| invalid(format!("host is not a header value: {e}")))?;

        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(
            config.upstream.connect_timeout_ms,
        )));
        connector.set_nodelay(true);
        // The timer retires idle connections on time rather than at the
        // next checkout, so stream-server never has to close one.
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.pool_idle_timeout())
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(config.upstream.max_idle_connections)
            .build(connector);
        let public_origin = config
            .server
            .public_url
            .as_deref()
            .map(|url| url.trim_end_matches('/').to_owned());
        let public_host = public_origin
            .as_deref()
            .and_then(|origin| origin.parse::<Uri>().ok())
            .and_then(|uri| uri.authority().map(|a| a.as_str().to_owned()))
            .and_then(|authority| HeaderValue::from_str(&authority).ok());
        Ok(Upstream {
            client,
            scheme: scheme.clone(),
            authority: authority.clone(),
            path_prefix: uri.path().trim_end_matches('/').to_owned(),
            host,
            origin: origin.to_owned(),
            public_origin,
            public_host,
            shared_cache: config.http.shared_cache,
            max_body_bytes: config.limits.max_request_body_bytes,
        })
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Whether stream-server answers its health check.
    pub async fn is_healthy(&self) -> bool {
        let Ok(uri) = format!("{}/healthz", self.origin).parse::<Uri>() else {
            return false;
        };
        let request = match Request::get(uri).body(Body::empty()) {
            Ok(request) => request,
            Err(_) => return false,
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), self.client.request(request)).await,
            Ok(Ok(response)) if response.status().is_success()
        )
    }

    /// Sends `request` upstream and returns stream-server's response with
    /// its body still streaming.
    pub async fn forward<B>(
        &self,
        request: Request<B>,
        forwarding: Forwarding,
    ) -> Result<http::Response<Incoming>, GatewayError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (mut parts, body) = request.into_parts();
        if declared_length(&parts.headers).is_some_and(|n| n > self.max_body_bytes) {
            return Err(GatewayError::PayloadTooLarge {
                limit: self.max_body_bytes,
            });
        }
        let target = self
            .target(&parts.uri, forwarding.query.as_deref())
            .ok_or_else(|| GatewayError::BadRequest("request URL cannot be forwarded".into()))?;
        let client_uri = std::mem::replace(&mut parts.uri, target);
        let cacheable = matches!(parts.method, http::Method::GET | http::Method::HEAD);
        let client_host = prepare_request_headers(
            &mut parts.headers,
            &forwarding,
            &self.host,
            self.forwarded_host(&client_uri),
            self.public_is_https(),
        );
        // The pool speaks HTTP/1.1 to stream-server whatever the client used.
        parts.version = Version::HTTP_11;
        // stream-server continues the trace below this hop's span.
        if let Some(span) = service_common::telemetry::current_span() {
            service_common::telemetry::http::inject(&span, &mut parts.headers);
            span.record("url.full", tracing::field::display(&parts.uri));
        }
        let limit = usize::try_from(self.max_body_bytes).unwrap_or(usize::MAX);
        let upstream_request = Request::from_parts(parts, Body::new(Limited::new(body, limit)));

        let response = self.client.request(upstream_request).await.map_err(|e| {
            if find_cause::<LengthLimitError>(&e).is_some() {
                GatewayError::PayloadTooLarge {
                    limit: self.max_body_bytes,
                }
            } else if find_cause::<GrantEnded>(&e).is_some() {
                GatewayError::InvalidToken("token revoked or expired")
            } else if let Some(timeout) = BodyTimeout::find(&e) {
                // The client's body failed, not stream-server.
                GatewayError::BodyTimeout(timeout.clone())
            } else {
                tracing::warn!("upstream request failed: {e}");
                GatewayError::Upstream
            }
        })?;
        let (mut parts, body) = response.into_parts();
        let public_origin = || self.public_origin_for(client_host.as_ref(), &client_uri);
        prepare_response_headers(&mut parts.headers, &self.origin, public_origin);
        if forwarding.passage != Passage::Public {
            restrict_caching(&mut parts.headers, cacheable, self.shared_cache);
        }
        Ok(http::Response::from_parts(parts, body))
    }

    /// The `X-Forwarded-Host` for a request: the `Host` it was sent to, or
    /// its URI's authority (HTTP/2 `:authority`), or the public URL's.
    fn forwarded_host(&self, client_uri: &Uri) -> Option<HeaderValue> {
        client_uri
            .authority()
            .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok())
            .or_else(|| self.public_host.clone())
    }

    /// The upstream URI for a client's request URI and the query to send.
    /// Most requests keep their path and query as they are: then the
    /// original's (shared) bytes are reused, nothing is parsed again.
    fn target(&self, client_uri: &Uri, query: Option<&str>) -> Option<Uri> {
        let path_and_query = match client_uri.path_and_query() {
            Some(original) if self.path_prefix.is_empty() && original.query() == query => {
                original.clone()
            }
            _ => {
                let mut target = format!("{}{}", self.path_prefix, client_uri.path());
                if let Some(query) = query {
                    target.push('?');
                    target.push_str(query);
                }
                PathAndQuery::try_from(target).ok()?
            }
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .ok()
    }

    /// Scheme and authority clients reach the gateway at: configured, or
    /// the request's own `Host`.
    fn public_origin_for(&self, client_host: Option<&HeaderValue>, client_uri: &Uri) -> String {
        if let Some(origin) = &self.public_origin {
            return origin.clone();
        }
        let host = client_host
            .and_then(|h| h.to_str().ok())
            .or_else(|| client_uri.authority().map(Authority::as_str))
            .unwrap_or("localhost");
        format!("http://{host}")
    }

    /// Whether clients reach the gateway over TLS (`X-Forwarded-Proto`).
    fn public_is_https(&self) -> bool {
        self.public_origin
            .as_deref()
            .is_some_and(|origin| origin.starts_with("https:"))
    }
}

fn default_port(scheme: &Scheme) -> u16 {
    if *scheme == Scheme::HTTPS { 443 } else { 80 }
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
///
/// Most messages carry none, so each name present is compared once with
/// the list rather than every name on the list looked up.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut hops: Vec<HeaderName> = headers
        .keys()
        .filter(|name| HOP_BY_HOP.contains(name))
        .cloned()
        .collect();
    if hops.is_empty() {
        return;
    }
    let named = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok());
    hops.extend(named);
    for name in hops {
        headers.remove(name);
    }
}

/// Makes a client's request headers the upstream request's: `Host` becomes
/// `upstream_host`; the client's is returned. `X-Forwarded-Host` is the
/// client's `Host`, else `fallback_host`, never what the client sent as
/// `X-Forwarded-Host`.
fn prepare_request_headers(
    headers: &mut HeaderMap,
    forwarding: &Forwarding,
    upstream_host: &HeaderValue,
    fallback_host: Option<HeaderValue>,
    public_is_https: bool,
) -> Option<HeaderValue> {
    let client_host = headers.get(header::HOST).cloned();
    strip_hop_by_hop(headers);
    headers.insert(header::HOST, upstream_host.clone());
    // Credentials end at the gateway, but for stream-server's own tokens;
    // identity is the gateway's to assert (inserting replaces whatever the
    // client sent), and only for a token it checked.
    if forwarding.passage != Passage::ServerToken {
        headers.remove(header::AUTHORIZATION);
    }
    headers.remove(header::PROXY_AUTHORIZATION);
    let identity = forwarding
        .identity
        .as_ref()
        .filter(|_| forwarding.passage == Passage::Token);
    for (name, value) in [
        (X_AUTH_SUBJECT, identity.and_then(|i| i.subject.as_ref())),
        (X_AUTH_TOKEN_ID, identity.and_then(|i| i.token_id.as_ref())),
    ] {
        match value {
            Some(value) => headers.insert(name, value.clone()),
            None => headers.remove(name),
        };
    }
    if let Some(client_ip) = forwarding.client_ip {
        let client_ip = client_ip.to_string();
        match headers.entry(X_FORWARDED_FOR) {
            Entry::Vacant(slot) => {
                if let Ok(entry) = HeaderValue::from_str(&client_ip) {
                    slot.insert(entry);
                }
            }
            Entry::Occupied(mut earlier) => {
                // A chain that is not text starts over at this hop.
                let chain = match earlier.get().to_str() {
                    Ok(text) => HeaderValue::from_str(&format!("{text}, {client_ip}")),
                    Err(_) => HeaderValue::from_str(&client_ip),
                };
                if let Ok(chain) = chain {
                    earlier.insert(chain);
                }
            }
        }
    }
    match client_host.clone().or(fallback_host) {
        Some(host) => headers.insert(X_FORWARDED_HOST, host),
        None => headers.remove(X_FORWARDED_HOST),
    };
    let proto = if public_is_https { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    client_host
}

/// Makes upstream's response headers the client's. `public_origin` is
/// only worked out when a `Location` header needs it.
fn prepare_response_headers(
    headers: &mut HeaderMap,
    upstream_origin: &str,
    public_origin: impl FnOnce() -> String,
) {
    strip_hop_by_hop(headers);
    // The gateway's CORS layer answers for itself; upstream's copies would
    // duplicate (and could contradict) them. That includes the CORS part of
    // `Vary`; anything else upstream varies on is kept.
    let cors: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("access-control-"))
        .cloned()
        .collect();
    for name in cors {
        headers.remove(name);
    }
    if let Entry::Occupied(mut vary) = headers.entry(header::VARY) {
        let kept = vary
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|field| !is_cors_vary_field(field))
            .collect::<Vec<_>>()
            .join(", ");
        match HeaderValue::from_str(&kept) {
            Ok(value) if !kept.is_empty() => {
                vary.insert(value);
            }
            _ => {
                vary.remove();
            }
        }
    }
    let rewritten = headers
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|location| location.strip_prefix(upstream_origin))
        .and_then(|rest| HeaderValue::from_str(&format!("{}{rest}", public_origin())).ok());
    if let Some(location) = rewritten {
        headers.insert(header::LOCATION, location);
    }
}

/// Keeps an answer to an authenticated request out of shared caches.
///
/// stream-server marks catch-up reads `public` so CDNs can collapse them
/// (PROTOCOL §10.1), but behind the gateway every request carries a token:
/// a shared cache must not hand one token's answer to another client
/// (RFC 9111 §3.5). So `public` becomes `private` (a browser's own cache
/// keeps `max-age` and `stale-while-revalidate`), directives for shared
/// caches go, and `Vary: Authorization` is added to cacheable answers.
/// With `shared_cache` (an operator's opt-in) upstream's `public` stays,
/// still varying on the token.
fn restrict_caching(headers: &mut HeaderMap, cacheable: bool, shared_cache: bool) {
    if cacheable || headers.contains_key(header::CACHE_CONTROL) {
        headers.append(header::VARY, HeaderValue::from_static("authorization"));
    }
    if shared_cache {
        return;
    }
    if !headers.contains_key(header::CACHE_CONTROL) {
        return;
    }
    let texts: Option<Vec<&str>> = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .map(|value| value.to_str().ok())
        .collect();
    // A value that is not text cannot be rewritten: nothing may store it.
    let rewritten = texts.map_or_else(|| "no-store".to_owned(), |texts| private_directives(&texts));
    let value = HeaderValue::from_str(&rewritten).unwrap_or(HeaderValue::from_static("no-store"));
    headers.insert(header::CACHE_CONTROL, value);
}

/// `Cache-Control` directives without those for shared caches, and with
/// `private` unless they already keep every cache out (`private`,
/// `no-store`).
fn private_directives(values: &[&str]) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut private = false;
    for directive in values
        .iter()
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|directive| !directive.is_empty())
    {
        let name = directive.split('=').next().unwrap_or_default().trim();
        if ["public", "s-maxage", "proxy-revalidate"]
            .iter()
            .any(|shared| name.eq_ignore_ascii_case(shared))
        {
            continue;
        }
        private |= name.eq_ignore_ascii_case("private") || name.eq_ignore_ascii_case("no-store");
        kept.push(directive);
    }
    if !private {
        kept.insert(0, "private");
    }
    kept.join(", ")
}

/// Whether a `Vary` field is one the CORS layer varies on.
fn is_cors_vary_field(field: &str) -> bool {
    const REQUEST_HEADERS: &str = "access-control-request-";
    field.eq_ignore_ascii_case("origin")
        || field
            .get(..REQUEST_HEADERS.len())
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case(REQUEST_HEADERS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarding() -> Forwarding {
        Forwarding {
            passage: Passage::Token,
            identity: Some(Identity::new("alice", "t-1")),
            query: None,
            client_ip: Some("10.0.0.7".parse().expect("ip")),
        }
    }

    fn upstream(url: &str, public_url: Option<&str>) -> Upstream {
        let mut config = Config::default();
        config.upstream.url = url.into();
        config.server.public_url = public_url.map(Into::into);
        Upstream::new(&config).expect("upstream")
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        headers
    }

    #[test]
    fn request_headers_lose_hops_credentials_and_spoofed_identity() {
        let mut headers = map(&[
            ("connection", "keep-alive, x-private-hop"),
            ("x-private-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("authorization", "Bearer secret"),
            ("proxy-authorization", "Basic x"),
            ("x-auth-subject", "mallory"),
            ("x-auth-token-id", "forged"),
            ("x-forwarded-for", "192.0.2.1"),
            ("stream-seq", "42"),
            ("producer-id", "p"),
            ("content-type", "text/plain"),
            ("host", "streams.example.com"),
        ]);
        let upstream_host = HeaderValue::from_static("127.0.0.1:4437");
        let client_host =
            prepare_request_headers(&mut headers, &forwarding(), &upstream_host, None, true);
        assert_eq!(client_host.expect("client's host"), "streams.example.com");
        for gone in [
            "connection",
            "x-private-hop",
            "keep-alive",
            "te",
            "upgrade",
            "authorization",
            "proxy-authorization",
        ] {
            assert!(headers.get(gone).is_none(), "{gone} must not be forwarded");
        }
        assert_eq!(headers["host"], "127.0.0.1:4437");
        assert_eq!(headers["x-auth-subject"], "alice");
        assert_eq!(headers["x-auth-token-id"], "t-1");
        assert_eq!(headers.get_all("x-auth-subject").iter().count(), 1);
        assert_eq!(headers["x-forwarded-for"], "192.0.2.1, 10.0.0.7");
        assert_eq!(headers["x-forwarded-host"], "streams.example.com");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["stream-seq"], "42");
        assert_eq!(headers["producer-id"], "p");
    }

    #[test]
    fn identity_headers_the_gateway_cannot_assert_are_still_removed() {
        let mut headers = map(&[
            ("x-auth-subject", "mallory"),
            ("x-auth-token-id", "forged"),
            ("connection", "host"),
            ("host", "gw.example"),
        ]);
        let opaque = HeaderValue::from_bytes(b"\xff").expect("opaque value");
        headers.insert("x-forwarded-for", opaque);
        let forwarding = Forwarding {
            identity: Some(Identity {
                subject: None,
                token_id: None,
            }),
            ..forwarding()
        };
        let upstream_host = HeaderValue::from_static("127.0.0.1:4437");
        prepare_request_headers(&mut headers, &forwarding, &upstream_host, None, false);
        assert!(headers.get("x-auth-subject").is_none());
        assert!(headers.get("x-auth-token-id").is_none());
        assert_eq!(
            headers["x-forwarded-for"], "10.0.0.7",
            "an unreadable chain restarts"
        );
        assert_eq!(headers["host"], "127.0.0.1:4437");
        assert_eq!(headers["x-forwarded-host"], "gw.example");
        assert_eq!(headers["x-forwarded-proto"], "http");
    }

    #[test]
    fn only_server_tokens_keep_their_bearer_and_only_gateway_tokens_name_anyone() {
        let upstream_host = HeaderValue::from_static("127.0.0.1:4437");
        for (passage, keeps_bearer) in [
            (Passage::Token, false),
            (Passage::ServerToken, true),
            (Passage::Public, false),
        ] {
            let mut headers = map(&[
                ("authorization", "Bearer callback-token"),
                ("proxy-authorization", "Basic x"),
                ("x-auth-subject", "mallory"),
                ("x-auth-token-id", "forged"),
            ]);
            let forwarding = Forwarding {
                passage,
                ..forwarding()
            };
            prepare_request_headers(&mut headers, &forwarding, &upstream_host, None, false);
            let bearer = headers.get("authorization").map(|v| v.as_bytes());
            assert_eq!(
                bearer,
                keeps_bearer.then_some(b"Bearer callback-token".as_slice()),
                "{passage:?}"
            );
            assert!(headers.get("proxy-authorization").is_none());
            let named = |name: &str| headers.get(name).map(|v| v.as_bytes().to_vec());
            let token = passage == Passage::Token;
            assert_eq!(
                named("x-auth-subject"),
                token.then(|| b"alice".to_vec()),
                "{passage:?}"
            );
            assert_eq!(
                named("x-auth-token-id"),
                token.then(|| b"t-1".to_vec()),
                "{passage:?}"
            );
        }
    }

    #[test]
    fn response_location_points_at_the_gateway() {
        let mut headers = map(&[
            ("location", "http://127.0.0.1:4437/v1/stream/chat/a"),
            ("access-control-allow-origin", "*"),
            ("vary", "Origin, Access-Control-Request-Method"),
            ("vary", "accept-encoding, access-control-request-headers"),
            ("vary", "accept, access-control-requester"),
            ("stream-next-offset", "0000000000000000_0000000000000000"),
            ("transfer-encoding", "chunked"),
        ]);
        prepare_response_headers(&mut headers, "http://127.0.0.1:4437", || {
            "https://streams.example.com".into()
        });
        assert_eq!(
            headers["location"],
            "https://streams.example.com/v1/stream/chat/a"
        );
        assert!(headers.get("access-control-allow-origin").is_none());
        assert_eq!(
            headers.get_all("vary").iter().collect::<Vec<_>>(),
            ["accept-encoding, accept, access-control-requester"]
        );
        let mut only_cors = map(&[
            ("vary", "origin"),
            ("vary", "access-control-request-method"),
        ]);
        prepare_response_headers(&mut only_cors, "http://127.0.0.1:4437", || {
            panic!("no Location")
        });
        assert!(only_cors.get("vary").is_none());
        assert!(headers.get("transfer-encoding").is_none());
        assert_eq!(
            headers["stream-next-offset"],
            "0000000000000000_0000000000000000"
        );
    }

    #[test]
    fn forwarded_host_is_never_the_clients_own() {
        let upstream_host = HeaderValue::from_static("127.0.0.1:4437");
        // HTTP/2 without `Host`: the authority stands in, the client's
        // claim goes.
        let mut headers = map(&[("x-forwarded-host", "evil.example")]);
        let fallback = Some(HeaderValue::from_static("gw.example:8080"));
        prepare_request_headers(&mut headers, &forwarding(), &upstream_host, fallback, false);
        assert_eq!(headers["x-forwarded-host"], "gw.example:8080");
        let mut headers = map(&[("x-forwarded-host", "evil.example")]);
        prepare_request_headers(&mut headers, &forwarding(), &upstream_host, None, false);
        assert!(headers.get("x-forwarded-host").is_none());
        let upstream = upstream("http://127.0.0.1:4437", Some("https://streams.example"));
        let origin_form: Uri = "/v1/stream/a".parse().expect("uri");
        let absolute: Uri = "http://gw:8080/v1/stream/a".parse().expect("uri");
        assert_eq!(
            upstream.forwarded_host(&origin_form).expect("public"),
            "streams.example"
        );
        assert_eq!(
            upstream.forwarded_host(&absolute).expect("authority"),
            "gw:8080"
        );
    }

    #[test]
    fn authenticated_answers_are_private_and_vary_on_the_token() {
        let rewrite = |value: &str, shared: bool| {
            let mut headers = map(&[("cache-control", value), ("vary", "accept")]);
            restrict_caching(&mut headers, true, shared);
            (
                headers["cache-control"].to_str().expect("text").to_owned(),
                headers.get_all("vary").iter().collect::<Vec<_>>().len(),
            )
        };
        assert_eq!(
            rewrite("public, max-age=60, stale-while-revalidate=300", false).0,
            "private, max-age=60, stale-while-revalidate=300"
        );
        assert_eq!(
            rewrite("Public, s-maxage=600, max-age=5", false).0,
            "private, max-age=5"
        );
        assert_eq!(rewrite("no-store", false).0, "no-store");
        assert_eq!(rewrite("private, max-age=1", false).0, "private, max-age=1");
        assert_eq!(
            rewrite("max-age=1, must-revalidate", false).0,
            "private, max-age=1, must-revalidate"
        );
        assert_eq!(rewrite("public, max-age=60", true).0, "public, max-age=60");
        assert_eq!(
            rewrite("public, max-age=60", true).1,
            2,
            "Vary: Authorization added"
        );

        let mut opaque = HeaderMap::new();
        opaque.insert(
            "cache-control",
            HeaderValue::from_bytes(b"public\xff").expect("value"),
        );
        restrict_caching(&mut opaque, true, false);
        assert_eq!(opaque["cache-control"], "no-store");

        // An append's answer has nothing to cache: nothing added.
        let mut write = HeaderMap::new();
        restrict_caching(&mut write, false, false);
        assert!(write.is_empty());
        let mut read = HeaderMap::new();
        restrict_caching(&mut read, true, false);
        assert_eq!(read["vary"], "authorization");
        assert!(read.get("cache-control").is_none());
    }

    #[test]
    fn public_origin_is_worked_out_only_for_a_location() {
        let mut headers = map(&[("stream-next-offset", "0000000000000000_0000000000000000")]);
        prepare_response_headers(&mut headers, "http://127.0.0.1:4437", || {
            panic!("no Location to rewrite")
        });
    }

    #[test]
    fn upstream_host_is_the_origins_host_and_non_default_port() {
        let host = |url| upstream(url, None).host;
        assert_eq!(host("http://127.0.0.1:4437"), "127.0.0.1:4437");
        assert_eq!(host("http://127.0.0.1:4437/"), "127.0.0.1:4437");
        assert_eq!(host("http://streams:80"), "streams");
        assert_eq!(host("http://streams"), "streams");
        assert_eq!(host("http://user:pw@[::1]:81/base"), "[::1]:81");
        let mut config = Config::default();
        config.upstream.url = "/no/authority".into();
        assert!(Upstream::new(&config).is_err());
    }

    #[test]
    fn targets_keep_path_and_query_under_the_origins_path() {
        let plain = upstream("http://127.0.0.1:4437", None);
        let client: Uri = "/v1/stream/a%20b?offset=-1&live=sse".parse().expect("uri");
        let target = |upstream: &Upstream, query| {
            upstream.target(&client, query).expect("target").to_string()
        };
        assert_eq!(
            target(&plain, Some("offset=-1&live=sse")),
            "http://127.0.0.1:4437/v1/stream/a%20b?offset=-1&live=sse"
        );
        assert_eq!(
            target(&plain, Some("offset=-1")),
            "http://127.0.0.1:4437/v1/stream/a%20b?offset=-1"
        );
        assert_eq!(
            target(&plain, None),
            "http://127.0.0.1:4437/v1/stream/a%20b"
        );
        let prefixed = upstream("http://streams:8000/base/", None);
        assert_eq!(
            target(&prefixed, Some("offset=-1&live=sse")),
            "http://streams:8000/base/v1/stream/a%20b?offset=-1&live=sse"
        );
    }

    #[test]
    fn public_origin_is_configured_or_the_clients_host() {
        let client: Uri = "/v1/stream/a".parse().expect("uri");
        let configured = upstream("http://127.0.0.1:4437", Some("https://streams.example/"));
        assert!(configured.public_is_https());
        assert_eq!(
            configured.public_origin_for(Some(&HeaderValue::from_static("x")), &client),
            "https://streams.example"
        );
        let unconfigured = upstream("http://127.0.0.1:4437", None);
        assert!(!unconfigured.public_is_https());
        assert_eq!(
            unconfigured.public_origin_for(Some(&HeaderValue::from_static("gw:8080")), &client),
            "http://gw:8080"
        );
        let absolute: Uri = "http://gw.example/v1/stream/a".parse().expect("uri");
        assert_eq!(
            unconfigured.public_origin_for(None, &absolute),
            "http://gw.example"
        );
        assert_eq!(
            unconfigured.public_origin_for(None, &client),
            "http://localhost"
        );
    }

    #[test]
    fn declared_lengths_parse() {
        assert_eq!(declared_length(&map(&[("content-length", "12")])), Some(12));
        assert_eq!(declared_length(&map(&[("content-length", "x")])), None);
        assert_eq!(declared_length(&HeaderMap::new()), None);
    }
}
