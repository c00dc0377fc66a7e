//! The browser security headers every response of both services carries
//! (§12.7), so a stream's bytes are never run as a page of our origin.

use http::{HeaderName, HeaderValue, Response};

/// Each header and its value.
///
/// A writer chooses a stream's content type, `text/html` included, and a
/// browser opening a stream URL would otherwise render it as a page of this
/// origin. `sandbox` gives such a page an opaque origin of its own and no
/// scripts, `default-src 'none'` lets it load nothing (no images or styles
/// that could carry data away), and `nosniff` stops a browser guessing a
/// more dangerous type. A policy binds only documents: `fetch` and
/// `EventSource` readers are unaffected. Resources may be read from any
/// origin (CORS decides what scripts may see).
pub const SECURITY_HEADERS: [(HeaderName, HeaderValue); 3] = [
    (
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static("default-src 'none'; sandbox"),
    ),
    (
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    ),
    (
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("cross-origin"),
    ),
];

/// Sets [`SECURITY_HEADERS`] on `response`, replacing any earlier values
/// (an upstream's, behind the gateway).
pub fn add<B>(mut response: Response<B>) -> Response<B> {
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_header_is_set_once() {
        let mut response = Response::new(());
        response
            .headers_mut()
            .append("content-security-policy", HeaderValue::from_static("x"));
        let response = add(response);
        assert_eq!(
            response
                .headers()
                .get_all("content-security-policy")
                .iter()
                .count(),
            1
        );
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        assert_eq!(
            response.headers()["content-security-policy"],
            "default-src 'none'; sandbox"
        );
    }
}
