//! Refusals as RFC 9457 problem details: `application/problem+json` with a
//! `detail` for the client, never cached.
//!
//! Building a refusal has no side effects: what the operator should know
//! (the internal reason, which may say more than the client is told) rides
//! in the response's extensions as a [`Refusal`], and [`log_refusal`], a
//! response mapper both services install inside their request span, logs
//! it once and takes it out.

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

/// Why a request was refused, for the log.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub reason: String,
}

/// The response for a refusal: `detail` goes to the client, `reason` to
/// the log (see [`log_refusal`]).
pub fn response(status: StatusCode, detail: &str, reason: impl std::fmt::Display) -> Response {
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
    response.extensions_mut().insert(Refusal {
        reason: reason.to_string(),
    });
    response
}

/// Logs the [`Refusal`] a response carries, if any, and removes it:
/// server-side failures as warnings, client mistakes at debug level.
pub fn log_refusal<B>(mut response: http::Response<B>) -> http::Response<B> {
    if let Some(Refusal { reason }) = response.extensions_mut().remove::<Refusal>() {
        let status = response.status();
        if status.is_server_error() {
            tracing::warn!(error = %reason, status = status.as_u16(), "request failed");
        } else {
            tracing::debug!(error = %reason, status = status.as_u16(), "request refused");
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_follow_rfc_9457() {
        let response = response(StatusCode::CONFLICT, "stream is closed", "closed at 3");
        assert_eq!(
            response
                .extensions()
                .get::<Refusal>()
                .expect("refusal")
                .reason,
            "closed at 3"
        );
        let response = log_refusal(response);
        assert!(
            response.extensions().get::<Refusal>().is_none(),
            "logged once"
        );
        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
    }
}
