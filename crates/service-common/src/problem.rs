//! Refusals as RFC 9457 problem details: `application/problem+json` with a
//! `detail` naming what was wrong, never cached.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'a str,
    status: u16,
    detail: &'a str,
}

/// The response for a refusal; server-side failures are logged as warnings,
/// client mistakes at debug level.
pub fn response(status: StatusCode, detail: &str) -> Response {
    if status.is_server_error() {
        tracing::warn!(error = %detail, "request refused");
    } else {
        tracing::debug!(error = %detail, status = status.as_u16(), "request refused");
    }
    let problem = Problem {
        kind: "about:blank",
        title: status.canonical_reason().unwrap_or("Error"),
        status: status.as_u16(),
        detail,
    };
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_follow_rfc_9457() {
        let response = response(StatusCode::CONFLICT, "stream is closed");
        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
    }
}
