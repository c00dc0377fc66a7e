//! The CORS policy: preflights answered for every route, the given request
//! headers allowed, the given response headers readable by scripts.

use http::{HeaderName, HeaderValue, Method};
use std::time::Duration;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Protocol request headers a browser may send (answered in preflights).
pub const PROTOCOL_REQUEST_HEADERS: [HeaderName; 13] = [
    http::header::CONTENT_TYPE,
    http::header::IF_NONE_MATCH,
    http::header::AUTHORIZATION,
    HeaderName::from_static("stream-seq"),
    HeaderName::from_static("stream-ttl"),
    HeaderName::from_static("stream-expires-at"),
    HeaderName::from_static("stream-closed"),
    HeaderName::from_static("stream-forked-from"),
    HeaderName::from_static("stream-fork-offset"),
    HeaderName::from_static("stream-fork-sub-offset"),
    HeaderName::from_static("producer-id"),
    HeaderName::from_static("producer-epoch"),
    HeaderName::from_static("producer-seq"),
];

/// Protocol response headers a browser client may need to read.
pub const PROTOCOL_RESPONSE_HEADERS: [HeaderName; 14] = [
    HeaderName::from_static("stream-next-offset"),
    HeaderName::from_static("stream-up-to-date"),
    HeaderName::from_static("stream-cursor"),
    HeaderName::from_static("stream-closed"),
    HeaderName::from_static("stream-ttl"),
    HeaderName::from_static("stream-expires-at"),
    HeaderName::from_static("stream-sse-data-encoding"),
    HeaderName::from_static("producer-epoch"),
    HeaderName::from_static("producer-seq"),
    HeaderName::from_static("producer-expected-seq"),
    HeaderName::from_static("producer-received-seq"),
    http::header::ETAG,
    http::header::LOCATION,
    http::header::CONTENT_TYPE,
];

/// Parses a `CORS_ORIGINS` setting: `*` (any origin, `None`) or a
/// comma-separated list.
pub fn parse_origins(setting: &str) -> Option<Vec<String>> {
    let origins = setting.trim();
    if origins == "*" {
        return None;
    }
    Some(
        origins
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(String::from)
            .collect(),
    )
}

/// The layer for `origins` (`None` = any).
pub fn layer(
    origins: Option<Vec<String>>,
    allowed: impl IntoIterator<Item = HeaderName>,
    exposed: impl IntoIterator<Item = HeaderName>,
) -> CorsLayer {
    let allow_origin = match origins {
        None => AllowOrigin::any(),
        Some(list) => AllowOrigin::list(
            list.iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        ),
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::POST,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers(allowed.into_iter().collect::<Vec<_>>())
        .expose_headers(exposed.into_iter().collect::<Vec<_>>())
        .max_age(Duration::from_secs(86_400))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse() {
        assert_eq!(parse_origins(" * "), None);
        assert_eq!(
            parse_origins("https://a.example, https://b.example,"),
            Some(vec!["https://a.example".into(), "https://b.example".into()])
        );
    }
}
