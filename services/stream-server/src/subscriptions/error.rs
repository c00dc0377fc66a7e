//! Why a subscription request was refused. `http::error` turns each into
//! its status and the `{"error": {"code": ...}}` body of §7.

use super::spec::SpecError;
use super::state::AckError;
use super::store::StoreError;
use super::webhook::UrlRejected;

#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    /// 400: the body is not a valid subscription or request.
    #[error(transparent)]
    Invalid(#[from] SpecError),
    /// 400: a callback, ack, claim or release body is malformed.
    #[error("invalid request: {0}")]
    BadRequest(String),
    /// 400 `WEBHOOK_URL_REJECTED` (§6.2, §12.8); the reason is for logs.
    #[error("webhook URL rejected: {0}")]
    UrlRejected(#[from] UrlRejected),
    /// 400: the operation belongs to the other delivery type.
    #[error("{0} applies to {1} subscriptions only")]
    WrongType(&'static str, &'static str),
    /// 400: an ack names a stream the subscription does not link, or an
    /// offset past the stream's tail.
    #[error("invalid ack: {0}")]
    InvalidAck(String),
    /// 401: a callback, ack or release without a bearer token.
    #[error("a bearer token is required")]
    Unauthorized,
    /// 404: no such subscription (or it was deleted).
    #[error("no such subscription")]
    NotFound,
    /// 409: the id exists with a different configuration (§6.2).
    #[error("a subscription with this id exists with a different configuration")]
    ConfigMismatch,
    /// 409 `FENCED` (§7.3).
    #[error("stale wake: token, generation or wake id is not the current one")]
    Fenced,
    /// 409 `ALREADY_CLAIMED` (§7.2).
    #[error("claimed by {holder} at generation {generation}")]
    AlreadyClaimed { holder: String, generation: u64 },
    /// 409 `NOTHING_PENDING`: a claim with no wake waiting and no work.
    #[error("nothing is pending")]
    NothingPending,
    /// 500: the subscription state could not be stored; the reason is for
    /// logs.
    #[error("subscription store: {0}")]
    Store(#[from] StoreError),
    /// 503: the server is shutting down.
    #[error("shutting down")]
    Unavailable,
}

impl From<AckError> for SubscriptionError {
    fn from(error: AckError) -> Self {
        match error {
            AckError::Fenced => SubscriptionError::Fenced,
            AckError::NotLinked(stream) => {
                SubscriptionError::InvalidAck(format!("{stream:?} is not linked"))
            }
            AckError::PastTail { stream, tail } => {
                SubscriptionError::InvalidAck(format!("{stream:?} ends at {tail}"))
            }
        }
    }
}

impl SubscriptionError {
    /// The machine-readable code of the error body.
    pub fn code(&self) -> &'static str {
        match self {
            SubscriptionError::Invalid(_)
            | SubscriptionError::BadRequest(_)
            | SubscriptionError::WrongType(..) => "INVALID_REQUEST",
            SubscriptionError::InvalidAck(_) => "INVALID_ACK",
            SubscriptionError::UrlRejected(_) => "WEBHOOK_URL_REJECTED",
            SubscriptionError::Unauthorized => "UNAUTHORIZED",
            SubscriptionError::NotFound => "NOT_FOUND",
            SubscriptionError::ConfigMismatch => "CONFIG_MISMATCH",
            SubscriptionError::Fenced => "FENCED",
            SubscriptionError::AlreadyClaimed { .. } => "ALREADY_CLAIMED",
            SubscriptionError::NothingPending => "NOTHING_PENDING",
            SubscriptionError::Store(_) => "INTERNAL",
            SubscriptionError::Unavailable => "UNAVAILABLE",
        }
    }
}
