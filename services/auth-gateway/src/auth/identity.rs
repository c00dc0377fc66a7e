//! How a caller is named to stream-server: the identity headers the gateway
//! sets on every proxied request (client-sent copies are replaced).

use http::{HeaderName, HeaderValue};

/// Subject of the token that authorised the request.
pub const X_AUTH_SUBJECT: HeaderName = HeaderName::from_static("x-auth-subject");
/// Id (`jti`) of the token that authorised the request.
pub const X_AUTH_TOKEN_ID: HeaderName = HeaderName::from_static("x-auth-token-id");

/// Who is calling, as the identity headers carry it: rendered once per
/// token row rather than per request. A value that cannot be a header (a
/// control character in a subject) is left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: Option<HeaderValue>,
    pub token_id: Option<HeaderValue>,
}

impl Identity {
    pub fn new(subject: &str, token_id: &str) -> Identity {
        Identity {
            subject: HeaderValue::from_str(subject).ok(),
            token_id: HeaderValue::from_str(token_id).ok(),
        }
    }
}
