//! The reserved `__ds` routes (§6–7): subscriptions, their membership,
//! claims, callbacks, acks and releases, and the webhook signing keys.
//! Stream paths whose first segment is `__ds` are these routes, never
//! streams.

use super::error::ApiError;
use super::{AppState, record_span, request};
use crate::subscriptions::SubscriptionError;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::Value;
use service_common::stream_path::ControlRoute;

/// Largest body of a control request: a subscription naming many streams.
const MAX_CONTROL_BODY_BYTES: usize = 1024 * 1024;

/// Serves a request on the control path `rest` (after `__ds/`).
pub async fn handle(state: AppState, rest: &str, request: Request) -> Result<Response, ApiError> {
    let route = ControlRoute::parse(rest).ok_or(ApiError::NoRoute)?;
    let (parts, body) = request.into_parts();
    let method = parts.method.clone();
    let subscriptions = &state.subscriptions;
    let origin = origin(&state, &parts);
    subscriptions.learn_origin(&origin);
    let body = if matches!(method, Method::PUT | Method::POST) {
        request::body(body, &parts.headers, MAX_CONTROL_BODY_BYTES).await?
    } else {
        bytes::Bytes::new()
    };
    record_span(|span| {
        span.record("ds.operation", operation(route));
    });
    let outcome = match (route, method) {
        (ControlRoute::Jwks, Method::GET | Method::HEAD) => {
            let mut response = subscriptions.jwks().into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/jwk-set+json"),
            );
            headers.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            );
            return Ok(response);
        }
        (ControlRoute::Subscription(id), Method::PUT) => subscriptions
            .put(id, &body, &origin)
            .await
            .map(|(created, view)| {
                let status = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                json(status, &view)
            }),
        (ControlRoute::Subscription(id), Method::GET) => subscriptions
            .describe(id, &origin)
            .map(|view| json(StatusCode::OK, &view)),
        (ControlRoute::Subscription(id), Method::DELETE) => {
            subscriptions.delete(id).await.map(no_content)
        }
        (ControlRoute::Streams(id), Method::POST) => {
            subscriptions.add_streams(id, &body).await.map(no_content)
        }
        (ControlRoute::Stream { id, stream }, Method::DELETE) => subscriptions
            .remove_stream(id, stream)
            .await
            .map(no_content),
        (ControlRoute::Claim(id), Method::POST) => subscriptions
            .claim(id, &body)
            .await
            .map(|view| json(StatusCode::OK, &view)),
        (ControlRoute::Callback(id) | ControlRoute::Ack(id), Method::POST) => {
            match bearer(&parts.headers) {
                Some(token) => subscriptions
                    .ack(id, token, &body)
                    .await
                    .map(|view| json(StatusCode::OK, &view)),
                None => Err(SubscriptionError::Unauthorized),
            }
        }
        (ControlRoute::Release(id), Method::POST) => match bearer(&parts.headers) {
            Some(token) => subscriptions
                .release(id, token, &body)
                .await
                .map(no_content),
            None => Err(SubscriptionError::Unauthorized),
        },
        _ => return Err(ApiError::MethodNotAllowed),
    };
    outcome.map_err(|error| {
        // What the client is not told, the operator reads.
        match &error {
            SubscriptionError::Store(e) => {
                tracing::error!(error = %e, "subscription store failed");
            }
            SubscriptionError::UrlRejected(e) => {
                tracing::info!(reason = %e, "webhook URL rejected");
            }
            _ => {}
        }
        ApiError::Subscription(error)
    })
}

fn operation(route: ControlRoute<'_>) -> &'static str {
    match route {
        ControlRoute::Jwks => "jwks",
        ControlRoute::Subscription(_) => "subscription",
        ControlRoute::Streams(_) | ControlRoute::Stream { .. } => "subscription_streams",
        ControlRoute::Claim(_) => "claim",
        ControlRoute::Callback(_) => "callback",
        ControlRoute::Ack(_) => "ack",
        ControlRoute::Release(_) => "release",
    }
}

fn json(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn no_content((): ()) -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// The bearer token of a callback, ack or release.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The scheme and authority the client addressed: the configured public
/// URL, else the forwarding proxy's headers when trusted, else `Host`.
fn origin(state: &AppState, parts: &http::request::Parts) -> String {
    if let Some(configured) = &state.settings.public_base_url {
        return configured.clone();
    }
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let mut scheme = state.settings.scheme;
    let mut host =
        header(header::HOST.as_str()).or_else(|| parts.uri.authority().map(|a| a.as_str()));
    if state.settings.trust_forwarded_headers {
        if let Some(forwarded) = header("x-forwarded-host") {
            host = Some(forwarded);
        }
        match header("x-forwarded-proto") {
            Some(p) if p.eq_ignore_ascii_case("https") => scheme = "https",
            Some(p) if p.eq_ignore_ascii_case("http") => scheme = "http",
            _ => {}
        }
    }
    match host.filter(|h| is_authority(h)) {
        Some(host) => format!("{scheme}://{host}"),
        None => state.settings.fallback_origin.clone(),
    }
}

/// A host and optional port, nothing that could change a URL's meaning.
fn is_authority(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_and_authorities() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&headers), None);
        assert!(is_authority("example.com:8080"));
        assert!(is_authority("[::1]:4437"));
        assert!(!is_authority("evil.com/path"));
        assert!(!is_authority("a b"));
        assert!(!is_authority(""));
    }
}
