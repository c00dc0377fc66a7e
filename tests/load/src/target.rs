//! Where the load goes: the stream base URL given with `--url` (host, port
//! and base path, resolved once), the optional bearer token sent with every
//! request, and the URL path of each stream under the base.

use http::header::{AUTHORIZATION, HOST};
use http::{HeaderValue, Method};
use std::net::{SocketAddr, ToSocketAddrs};

/// Why `--url` or `--token` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(
        "--url must start with http:// (got {0:?}); ds-load speaks plain HTTP/1.1 only, \
         so point it at a plain-HTTP listener"
    )]
    Scheme(String),
    #[error("--url {0:?} has no host")]
    NoHost(String),
    #[error("--url {0:?} has an invalid port")]
    Port(String),
    #[error("--url {0:?} has a query, fragment or user name; give the stream base URL only")]
    Extra(String),
    #[error("cannot resolve {authority}: {cause}")]
    Resolve {
        authority: String,
        cause: std::io::Error,
    },
    #[error("{0} resolves to no address")]
    NoAddress(String),
    #[error("--token contains characters that cannot go in an HTTP header")]
    Token,
}

/// A parsed, resolved stream base URL plus credentials.
#[derive(Debug, Clone)]
pub struct Target {
    /// The base URL as given, without a trailing slash.
    url: String,
    /// `host:port` as it goes in the `Host` header.
    host_header: HeaderValue,
    /// Where connections go.
    address: SocketAddr,
    /// The path prefix of streams: `""` or, say, `"/v1/stream"`.
    base_path: String,
    /// `Bearer <token>`, when a token was given.
    authorization: Option<HeaderValue>,
}

impl Target {
    /// Parses `http://host[:port][/base/path]` and resolves the host.
    pub fn new(url: &str, token: Option<&str>) -> Result<Target, TargetError> {
        let trimmed = url.trim().trim_end_matches('/');
        let rest = trimmed
            .strip_prefix("http://")
            .ok_or_else(|| TargetError::Scheme(url.to_owned()))?;
        if rest.contains(['?', '#', '@']) {
            return Err(TargetError::Extra(url.to_owned()));
        }
        let (authority, base_path) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => (rest, ""),
        };
        let (host, port) = split_host_port(authority).ok_or_else(|| {
            if authority.is_empty() {
                TargetError::NoHost(url.to_owned())
            } else {
                TargetError::Port(url.to_owned())
            }
        })?;
        if host.is_empty() {
            return Err(TargetError::NoHost(url.to_owned()));
        }
        let host_for_lookup = host.trim_start_matches('[').trim_end_matches(']');
        let address = (host_for_lookup, port)
            .to_socket_addrs()
            .map_err(|cause| TargetError::Resolve {
                authority: authority.to_owned(),
                cause,
            })?
            .next()
            .ok_or_else(|| TargetError::NoAddress(authority.to_owned()))?;
        let host_header =
            HeaderValue::from_str(authority).map_err(|_| TargetError::NoHost(url.to_owned()))?;
        let authorization = match token {
            Some(token) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| TargetError::Token)?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(Target {
            url: trimmed.to_owned(),
            host_header,
            address,
            base_path: base_path.to_owned(),
            authorization,
        })
    }

    /// The base URL, without a trailing slash.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The socket address connections go to.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The request path of the stream `name`.
    pub fn stream_path(&self, name: &str) -> String {
        format!("{}/{name}", self.base_path)
    }

    /// A request to `path_and_query` carrying `Host` and, when a token was
    /// given, `Authorization`.
    pub fn request(&self, method: Method, path_and_query: &str) -> http::request::Builder {
        let builder = http::Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(HOST, self.host_header.clone());
        match &self.authorization {
            Some(value) => builder.header(AUTHORIZATION, value.clone()),
            None => builder,
        }
    }
}

/// `"host:port"`, `"host"` (port 80) or `"[::1]:port"`.
fn split_host_port(authority: &str) -> Option<(&str, u16)> {
    let port_separator = match authority.rfind(':') {
        // A colon inside an IPv6 literal is not a port separator.
        Some(colon) if !authority[colon..].contains(']') => Some(colon),
        _ => None,
    };
    match port_separator {
        Some(colon) => {
            let port = authority[colon + 1..].parse().ok()?;
            Some((&authority[..colon], port))
        }
        None => Some((authority, 80)),
    }
}

/// Percent-encodes a query parameter value (offsets are opaque and may
/// hold any character); unreserved characters stay as they are.
pub fn encode_query_value(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_base_url_with_path() {
        let target = Target::new("http://127.0.0.1:4437/v1/stream/", None).unwrap();
        assert_eq!(target.url(), "http://127.0.0.1:4437/v1/stream");
        assert_eq!(target.address().port(), 4437);
        assert_eq!(target.stream_path("a-b"), "/v1/stream/a-b");
    }

    #[test]
    fn parses_root_base_url_and_default_port() {
        let target = Target::new("http://127.0.0.1", None).unwrap();
        assert_eq!(target.address().port(), 80);
        assert_eq!(target.stream_path("s"), "/s");
    }

    #[test]
    fn parses_ipv6_literal() {
        let target = Target::new("http://[::1]:9000/streams", None).unwrap();
        assert_eq!(target.address().port(), 9000);
        assert!(target.address().is_ipv6());
        assert_eq!(target.stream_path("x"), "/streams/x");
    }

    #[test]
    fn rejects_unusable_urls() {
        assert!(matches!(
            Target::new("https://example.test", None),
            Err(TargetError::Scheme(_))
        ));
        assert!(matches!(
            Target::new("http://127.0.0.1:notaport", None),
            Err(TargetError::Port(_))
        ));
        assert!(matches!(
            Target::new("http://127.0.0.1/x?y=1", None),
            Err(TargetError::Extra(_))
        ));
        assert!(matches!(
            Target::new("http:///x", None),
            Err(TargetError::NoHost(_))
        ));
        assert!(matches!(
            Target::new("http://127.0.0.1", Some("bad\ntoken")),
            Err(TargetError::Token)
        ));
    }

    #[test]
    fn requests_carry_host_and_bearer_token() {
        let target = Target::new("http://127.0.0.1:1/v1/stream", Some("secret")).unwrap();
        let request = target
            .request(Method::GET, "/v1/stream/s?offset=-1")
            .body(())
            .unwrap();
        assert_eq!(request.headers()[HOST], "127.0.0.1:1");
        assert_eq!(request.headers()[AUTHORIZATION], "Bearer secret");
        assert_eq!(request.uri().path(), "/v1/stream/s");
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode_query_value("-1"), "-1");
        assert_eq!(encode_query_value("0000_0010"), "0000_0010");
        assert_eq!(encode_query_value("a b/c+d"), "a%20b%2Fc%2Bd");
    }
}
