//! The one place where gateway refusals become HTTP responses.
//!
//! Bodies use stream-server's format (RFC 9457 `application/problem+json`),
//! so a client handles a refusal the same way whichever service sent it.
//! Authentication failures also carry RFC 6750 `WWW-Authenticate`
//! challenges.

use crate::auth::scope::Scope;
use crate::auth::subscription::{BodyError, OutsideReach};
use crate::tokens::issuer::IssueError;
use crate::tokens::store::StoreError;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use service_common::stream_path::PathError;
use std::time::Duration;

/// Realm named in every bearer challenge.
const REALM: &str = "durable-streams";

/// All a client learns of why its token was refused; the reason is logged.
const INVALID_TOKEN: &str = "the bearer token is invalid";

/// All a client learns of why a subscription was refused: the streams it
/// names may be another tenant's.
const OUTSIDE_REACH: &str = "the subscription reaches streams outside this token";

/// Why the gateway refused or could not serve a request.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// 401: no credentials at all.
    #[error("a bearer token is required")]
    MissingToken,
    /// 401: credentials that do not authenticate (bad signature, expired,
    /// revoked, unknown, malformed). The reason is logged; the client is
    /// told only that the token is invalid.
    #[error("invalid bearer token: {0}")]
    InvalidToken(&'static str),
    /// 400: the token was sent in more than one way (RFC 6750 §2).
    #[error("send the bearer token in one place only: {0}")]
    InvalidRequest(&'static str),
    /// 403: the token is valid but lacks the scope on this stream.
    #[error("token lacks the {scope} scope on {target}")]
    InsufficientScope { scope: Scope, target: String },
    /// 403: the subscription asked for or acted on reaches streams outside
    /// the token (see `auth::subscription`). The reason is logged; the
    /// client is told only that.
    #[error("subscription outside the token: {0}")]
    OutsideReach(#[from] OutsideReach),
    /// 403: an admin token asked for a token with more rights than its own.
    #[error("the new token would exceed the rights of the token issuing it")]
    ExceedsIssuer,
    /// 429: the token's request budget is spent.
    #[error("too many requests for this token; retry in {}s", retry_after_secs(*.retry_after))]
    RateLimited { retry_after: Duration },
    /// 413: the body is larger than the configured limit.
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    /// 408: the client's body stalled or trickled in too slowly
    /// (`server.body_idle_timeout_secs`, `server.body_timeout_secs`).
    #[error(transparent)]
    BodyTimeout(#[from] service_common::body::BodyTimeout),
    /// 400: the request is malformed (bad admin input).
    #[error("{0}")]
    BadRequest(String),
    /// 400: a subscription body the gateway cannot check, so it does not
    /// forward it.
    #[error(transparent)]
    SubscriptionBody(#[from] BodyError),
    /// 400: the stream path or fork source cannot name a stream.
    #[error(transparent)]
    Path(#[from] PathError),
    /// 405: the URL does not support this method.
    #[error("method not allowed here")]
    MethodNotAllowed,
    /// 404: nothing is served at this URL.
    #[error("{0}")]
    NotFound(String),
    /// 503: tokens cannot be checked, so nothing is let through.
    #[error("token store unavailable")]
    AuthUnavailable,
    /// 503: the token table could not be read or written.
    #[error("token store: {0}")]
    Store(#[from] StoreError),
    /// 502: stream-server could not be reached or failed mid-request.
    #[error("upstream stream-server unavailable")]
    Upstream,
    /// 500: an operation the gateway itself failed.
    #[error("internal error")]
    Internal,
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::MissingToken | GatewayError::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            GatewayError::InvalidRequest(_)
            | GatewayError::BadRequest(_)
            | GatewayError::SubscriptionBody(_)
            | GatewayError::Path(_) => StatusCode::BAD_REQUEST,
            GatewayError::InsufficientScope { .. }
            | GatewayError::OutsideReach(_)
            | GatewayError::ExceedsIssuer => StatusCode::FORBIDDEN,
            GatewayError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            GatewayError::NotFound(_) => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::AuthUnavailable | GatewayError::Store(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GatewayError::Upstream => StatusCode::BAD_GATEWAY,
            GatewayError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the client is told: the message, except where it would say
    /// more than the client should learn (why a token failed, what the
    /// database said).
    fn detail(&self) -> std::borrow::Cow<'_, str> {
        match self {
            GatewayError::InvalidToken(_) => INVALID_TOKEN.into(),
            GatewayError::OutsideReach(_) => OUTSIDE_REACH.into(),
            GatewayError::Store(_) => GatewayError::AuthUnavailable.to_string().into(),
            other => other.to_string().into(),
        }
    }

    /// The RFC 6750 §3 challenge, for refusals that have one.
    fn challenge(&self) -> Option<String> {
        let (error, description, scope) = match self {
            GatewayError::MissingToken => ("invalid_token", "a bearer token is required", None),
            GatewayError::InvalidToken(_) => ("invalid_token", INVALID_TOKEN, None),
            GatewayError::InvalidRequest(reason) => ("invalid_request", *reason, None),
            GatewayError::InsufficientScope { scope, .. } => (
                "insufficient_scope",
                "the token lacks the scope for this request",
                Some(scope.as_str()),
            ),
            GatewayError::OutsideReach(_) => ("insufficient_scope", OUTSIDE_REACH, None),
            _ => return None,
        };
        let mut challenge = format!(
            r#"Bearer realm="{REALM}", error="{error}", error_description="{description}""#
        );
        if let Some(scope) = scope {
            challenge.push_str(&format!(r#", scope="{scope}""#));
        }
        Some(challenge)
    }
}

/// `Retry-After` is whole seconds; never advise retrying at once.
fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

impl From<IssueError> for GatewayError {
    fn from(e: IssueError) -> Self {
        match e {
            IssueError::Invalid(reason) => GatewayError::BadRequest(reason),
            IssueError::ExceedsIssuer(_) => GatewayError::ExceedsIssuer,
            IssueError::IssuerInactive => {
                GatewayError::InvalidToken("issuing token revoked or expired")
            }
            IssueError::Store(e) => GatewayError::Store(e),
            IssueError::Signing(_) => GatewayError::Internal,
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let mut response = service_common::problem::response(self.status(), &self.detail(), &self);
        let headers = response.headers_mut();
        if let Some(value) = self
            .challenge()
            .and_then(|c| HeaderValue::from_str(&c).ok())
        {
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
        if let GatewayError::RateLimited { retry_after } = self {
            headers.insert(header::RETRY_AFTER, retry_after_secs(retry_after).into());
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(response: &Response, name: header::HeaderName) -> String {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn authentication_failures_carry_bearer_challenges() {
        let response = GatewayError::InvalidToken("token expired").into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            header(&response, header::WWW_AUTHENTICATE),
            r#"Bearer realm="durable-streams", error="invalid_token", error_description="the bearer token is invalid""#
        );
        // The reason is for the log only.
        assert_eq!(
            response
                .extensions()
                .get::<service_common::problem::Refusal>()
                .expect("refusal")
                .reason,
            "invalid bearer token: token expired"
        );
        assert_eq!(
            header(&response, header::CONTENT_TYPE),
            "application/problem+json"
        );
        let response = GatewayError::InsufficientScope {
            scope: Scope::Write,
            target: "chat/a".into(),
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let challenge = header(&response, header::WWW_AUTHENTICATE);
        assert!(challenge.contains(r#"error="insufficient_scope""#));
        assert!(challenge.contains(r#"scope="write""#));
    }

    #[test]
    fn subscription_refusals_name_no_streams() {
        let response = GatewayError::OutsideReach(OutsideReach::Stream("tenant-b/payroll".into()))
            .into_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(header(&response, header::WWW_AUTHENTICATE).contains("insufficient_scope"));
        let reason = &response
            .extensions()
            .get::<service_common::problem::Refusal>()
            .expect("refusal")
            .reason;
        assert!(reason.contains("tenant-b/payroll"), "the log says why");
        assert!(
            !GatewayError::OutsideReach(OutsideReach::Stream("tenant-b/payroll".into()))
                .detail()
                .contains("tenant-b")
        );
    }

    #[test]
    fn rate_limits_round_retry_after_up() {
        let response = GatewayError::RateLimited {
            retry_after: Duration::from_millis(1200),
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&response, header::RETRY_AFTER), "2");
        let response = GatewayError::RateLimited {
            retry_after: Duration::from_millis(3),
        }
        .into_response();
        assert_eq!(header(&response, header::RETRY_AFTER), "1");
    }

    #[test]
    fn server_side_failures_have_no_challenge() {
        let response = GatewayError::AuthUnavailable.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().get(header::WWW_AUTHENTICATE).is_none());
    }
}
