//! The one place where errors become HTTP responses.
//!
//! Every refusal is an RFC 9457 `application/problem+json` body naming what
//! was wrong, plus the protocol headers a client needs to react without
//! parsing it (`Stream-Closed`, `Producer-Epoch`, ...).

use super::response::{TRUE, set_next_offset};
use crate::protocol::headers::{self, HeaderError};
use crate::protocol::producer::ProducerRejection;
use crate::streams::StreamError;
use crate::subscriptions::SubscriptionError;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use service_common::stream_path::PathError;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Status depends on the protocol rule that refused the request.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// 400: a header value does not parse.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// 400: a query parameter is missing, repeated or malformed.
    #[error("invalid query: {0}")]
    Query(String),
    /// 400: the path cannot name a stream.
    #[error(transparent)]
    Path(#[from] PathError),
    /// 413: the body is larger than the configured limit.
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// 400: the body could not be read to the end.
    #[error("could not read the request body: {0}")]
    BodyRead(String),
    /// 408: the body stalled or trickled in too slowly
    /// (`server.body_idle_timeout_secs`, `server.body_timeout_secs`).
    #[error(transparent)]
    BodyTimeout(#[from] service_common::body::BodyTimeout),
    /// 405: the stream URL does not support this method.
    #[error("method not allowed on a stream")]
    MethodNotAllowed,
    /// 404: nothing is served at this URL.
    #[error("no such resource")]
    NoRoute,
    /// A subscription request refused (§6–7); answered with the
    /// `{"error": {"code": ...}}` body those APIs use.
    #[error(transparent)]
    Subscription(#[from] SubscriptionError),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Stream(e) => stream_status(e),
            ApiError::Header(_)
            | ApiError::Query(_)
            | ApiError::Path(_)
            | ApiError::BodyRead(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::Subscription(e) => subscription_status(e),
        }
    }

    /// Protocol headers that accompany the refusal.
    fn headers(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        let number = |n: u64| HeaderValue::from(n);
        match self {
            ApiError::Stream(StreamError::Closed { next }) => {
                map.insert(headers::STREAM_CLOSED, TRUE);
                set_next_offset(&mut map, *next);
            }
            ApiError::Stream(StreamError::Producer(ProducerRejection::StaleEpoch {
                current,
                ..
            })) => {
                map.insert(headers::PRODUCER_EPOCH, number(*current));
            }
            ApiError::Stream(StreamError::Producer(ProducerRejection::SequenceGap {
                expected,
                received,
            })) => {
                map.insert(headers::PRODUCER_EXPECTED_SEQ, number(*expected));
                map.insert(headers::PRODUCER_RECEIVED_SEQ, number(*received));
            }
            ApiError::MethodNotAllowed => {
                map.insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, HEAD, PUT, POST, DELETE, OPTIONS"),
                );
            }
            _ => {}
        }
        map
    }
}

fn stream_status(error: &StreamError) -> StatusCode {
    use StreamError as E;
    match error {
        E::NotFound | E::ForkSourceNotFound => StatusCode::NOT_FOUND,
        E::Gone => StatusCode::GONE,
        E::ConfigMismatch
        | E::PathRetired
        | E::Closed { .. }
        | E::ContentTypeMismatch { .. }
        | E::SequenceRegression { .. }
        | E::ForkSourceGone => StatusCode::CONFLICT,
        E::Producer(ProducerRejection::StaleEpoch { .. }) => StatusCode::FORBIDDEN,
        E::Producer(ProducerRejection::SequenceGap { .. }) => StatusCode::CONFLICT,
        E::Producer(ProducerRejection::EpochMustStartAtZero { .. })
        | E::MissingContentType
        | E::EmptyAppend
        | E::Json(_)
        | E::OffsetNotInStream { .. }
        | E::ForkOffsetBeyondTail { .. }
        | E::ForkSubOffsetOutOfRange { .. } => StatusCode::BAD_REQUEST,
        E::StreamTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        E::OutOfMemory { .. } => StatusCode::INSUFFICIENT_STORAGE,
        E::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        E::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn subscription_status(error: &SubscriptionError) -> StatusCode {
    use SubscriptionError as E;
    match error {
        E::Invalid(_)
        | E::BadRequest(_)
        | E::UrlRejected(_)
        | E::WrongType(..)
        | E::InvalidAck(_) => StatusCode::BAD_REQUEST,
        E::Unauthorized => StatusCode::UNAUTHORIZED,
        E::NotFound => StatusCode::NOT_FOUND,
        E::ConfigMismatch | E::Fenced | E::AlreadyClaimed { .. } | E::NothingPending => {
            StatusCode::CONFLICT
        }
        E::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        E::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The body of a refused subscription request: `{"error": {"code",
/// "message", ...}}`, with the holder and generation of a claim that lost
/// (§7.2). Reasons a client is not told (a store failure, why a URL was
/// rejected) stay out of the message.
fn subscription_response(error: &SubscriptionError) -> Response {
    use SubscriptionError as E;
    let message = match error {
        E::Store(_) => "the server could not complete the operation".to_owned(),
        E::UrlRejected(_) => "the webhook URL is not allowed".to_owned(),
        other => other.to_string(),
    };
    let mut body = serde_json::json!({ "code": error.code(), "message": message });
    if let E::AlreadyClaimed { holder, generation } = error {
        body["current_holder"] = holder.as_str().into();
        body["generation"] = (*generation).into();
    }
    let mut response = (
        subscription_status(error),
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "error": body }).to_string(),
    )
        .into_response();
    if matches!(error, E::Unauthorized) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Subscription(error) = &self {
            return subscription_response(error);
        }
        let reason = self.to_string();
        // Storage failures are the operator's to read, in the log.
        let detail = match &self {
            ApiError::Stream(StreamError::Storage(_)) => {
                "the server could not complete the operation"
            }
            _ => reason.as_str(),
        };
        let mut response = service_common::problem::response(self.status(), detail, &reason);
        response.headers_mut().extend(self.headers());
        response
    }
}
