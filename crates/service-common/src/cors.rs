//! The CORS policy: preflights answered for every route, the given request
//! headers allowed, the given response headers readable by scripts.

use http::{HeaderName, HeaderValue, Method};
use std::time::Duration;
use tower_http::cors::{AllowOrigin, CorsLayer};

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
