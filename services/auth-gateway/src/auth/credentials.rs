//! Finding the bearer token in a request (RFC 6750): the `Authorization`
//! header, or — when enabled for browsers' `EventSource` — the
//! `access_token` query parameter of a GET or HEAD. The query parameter is
//! always removed before the request goes anywhere else.

use crate::error::GatewayError;
use http::{HeaderMap, HeaderValue, Method, header};
use service_common::headers::ACCESS_TOKEN_QUERY as QUERY_PARAMETER;
use std::borrow::Cow;

/// Where a request's token was, and the query to forward without it.
#[derive(Debug, PartialEq, Eq)]
pub struct Credentials<'a> {
    /// Borrowed from the `Authorization` header; decoded from the query.
    pub token: Option<Cow<'a, str>>,
    /// The original query minus `access_token`; `None` when nothing is left.
    pub forward_query: Option<String>,
}

/// Extracts the token. `allow_query` enables RFC 6750 §2.3 for GET/HEAD.
pub fn extract<'a>(
    method: &Method,
    headers: &'a HeaderMap,
    query: Option<&str>,
    allow_query: bool,
) -> Result<Credentials<'a>, GatewayError> {
    let from_header = header_token(headers)?.map(Cow::Borrowed);
    let (from_query, forward_query) = split_query(query);
    let token = match (from_header, from_query) {
        (Some(_), Some(_)) => {
            return Err(GatewayError::InvalidRequest(
                "token in both the Authorization header and the query",
            ));
        }
        (Some(token), None) => Some(token),
        (None, Some(token)) => {
            if !allow_query {
                return Err(GatewayError::InvalidRequest(
                    "access_token in the query is not enabled on this gateway",
                ));
            }
            if method != Method::GET && method != Method::HEAD {
                return Err(GatewayError::InvalidRequest(
                    "access_token in the query is accepted on GET and HEAD only",
                ));
            }
            Some(Cow::Owned(token))
        }
        (None, None) => None,
    };
    Ok(Credentials {
        token,
        forward_query,
    })
}

/// The token of an `Authorization: Bearer <token>` header, if there is one.
fn header_token(headers: &HeaderMap) -> Result<Option<&str>, GatewayError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(GatewayError::InvalidRequest(
            "more than one Authorization header",
        ));
    }
    bearer_token(value).map(Some).map_err(|reason| {
        // A value that is not text is refused as such, whatever else is
        // wrong with it.
        if value.to_str().is_err() {
            GatewayError::InvalidToken("malformed Authorization header")
        } else {
            GatewayError::InvalidToken(reason)
        }
    })
}

/// The token of a `Bearer <token>` value, or why there is none.
///
/// The value is read as bytes: one that checks out is ASCII, so it needs
/// no separate check that it is text (a second pass over the token).
fn bearer_token(value: &HeaderValue) -> Result<&str, &'static str> {
    const NOT_BEARER: &str = "expected Authorization: Bearer <token>";
    let value = value.as_bytes();
    let space = value.iter().position(|&b| b == b' ').ok_or(NOT_BEARER)?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(NOT_BEARER);
    }
    let start = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
    let token = &rest[start..];
    if token.is_empty() || !is_b64token(token) {
        return Err("malformed token");
    }
    std::str::from_utf8(token).map_err(|_| "malformed token")
}

/// Whether every byte is an RFC 6750 `b64token` character.
///
/// Every request's token, a few hundred bytes, is checked here. Folding
/// without an early exit lets the compiler check many bytes per step:
/// under a third of the instructions of a byte-by-byte table lookup.
fn is_b64token(bytes: &[u8]) -> bool {
    bytes.iter().fold(true, |all, &b| all & is_b64token_byte(b))
}

/// RFC 6750 `b64token` characters, without branches (see [`is_b64token`]).
fn is_b64token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        | (b == b'-')
        | (b == b'.')
        | (b == b'_')
        | (b == b'~')
        | (b == b'+')
        | (b == b'/')
        | (b == b'=')
}

/// Takes `access_token` out of the query, keeping every other parameter
/// byte for byte.
fn split_query(query: Option<&str>) -> (Option<String>, Option<String>) {
    let Some(query) = query else {
        return (None, None);
    };
    let mut token = None;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let name = pair.split_once('=').map_or(pair, |(name, _)| name);
        if name == QUERY_PARAMETER {
            let value = pair.split_once('=').map_or("", |(_, v)| v);
            let decoded: String = form_urlencoded::parse(format!("v={value}").as_bytes())
                .map(|(_, v)| v.into_owned())
                .next()
                .unwrap_or_default();
            token = Some(decoded);
        } else if !pair.is_empty() {
            kept.push(pair);
        }
    }
    let forward = (!kept.is_empty()).then(|| kept.join("&"));
    (token, forward)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in authorization {
            map.append(
                header::AUTHORIZATION,
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    #[test]
    fn bearer_header_is_read() {
        let map = headers(&["Bearer abc.def-_~+/="]);
        let found = extract(&Method::POST, &map, None, false).expect("ok");
        assert_eq!(found.token.as_deref(), Some("abc.def-_~+/="));
        let map = headers(&["bearer  x.y.z"]);
        let found = extract(&Method::GET, &map, None, false).expect("ok");
        assert_eq!(found.token.as_deref(), Some("x.y.z"));
        let no_headers = HeaderMap::new();
        let none = extract(&Method::GET, &no_headers, None, false).expect("ok");
        assert_eq!(none.token, None);
    }

    #[test]
    fn tokens_may_use_exactly_the_b64token_characters() {
        let every_allowed = "ABYZabyz0189-._~+/=";
        let map = headers(&[&format!("Bearer {every_allowed}")]);
        let found = extract(&Method::GET, &map, None, false).expect("a b64token");
        assert_eq!(found.token.as_deref(), Some(every_allowed));
        for printable in (b'!'..=b'~').map(char::from) {
            if every_allowed.contains(printable) || printable.is_ascii_alphanumeric() {
                continue;
            }
            let map = headers(&[&format!("Bearer a{printable}b")]);
            let result = extract(&Method::GET, &map, None, false);
            assert!(
                matches!(result, Err(GatewayError::InvalidToken(_))),
                "{printable}: {result:?}"
            );
        }
    }

    #[test]
    fn malformed_headers_are_refused() {
        for bad in [
            "Basic dXNlcjpw",
            "Bearer",
            "Bearer ",
            "Bearer a b",
            "Bearer a\"b",
            "Bearer\tabc",
            "Bearer a\tb",
        ] {
            let map = headers(&[bad]);
            let result = extract(&Method::GET, &map, None, false);
            assert!(
                matches!(result, Err(GatewayError::InvalidToken(_))),
                "{bad}: {result:?}"
            );
        }
        assert!(matches!(
            extract(
                &Method::GET,
                &headers(&["Bearer a", "Bearer b"]),
                None,
                false
            ),
            Err(GatewayError::InvalidRequest(_))
        ));
    }

    #[test]
    fn a_value_that_is_not_text_is_refused_as_such() {
        for bad in [&b"Bearer abc\xff"[..], b"B\xffarer abc", b"\xff"] {
            let mut map = HeaderMap::new();
            map.insert(
                header::AUTHORIZATION,
                HeaderValue::from_bytes(bad).expect("value"),
            );
            let result = extract(&Method::GET, &map, None, false);
            assert!(
                matches!(
                    result,
                    Err(GatewayError::InvalidToken("malformed Authorization header"))
                ),
                "{bad:?}: {result:?}"
            );
        }
        let map = headers(&["Basic abc"]);
        let result = extract(&Method::GET, &map, None, false);
        assert!(matches!(
            result,
            Err(GatewayError::InvalidToken(
                "expected Authorization: Bearer <token>"
            ))
        ));
        let map = headers(&["Bearer a\"b"]);
        let result = extract(&Method::GET, &map, None, false);
        assert!(matches!(
            result,
            Err(GatewayError::InvalidToken("malformed token"))
        ));
    }

    #[test]
    fn query_token_is_opt_in_for_reads_and_always_stripped() {
        let query = Some("offset=-1&access_token=a.b%2Bc&live=sse");
        let no_headers = HeaderMap::new();
        let found = extract(&Method::GET, &no_headers, query, true).expect("ok");
        assert_eq!(found.token.as_deref(), Some("a.b+c"));
        assert_eq!(found.forward_query.as_deref(), Some("offset=-1&live=sse"));
        assert!(matches!(
            extract(&Method::GET, &HeaderMap::new(), query, false),
            Err(GatewayError::InvalidRequest(_))
        ));
        assert!(matches!(
            extract(&Method::POST, &HeaderMap::new(), query, true),
            Err(GatewayError::InvalidRequest(_))
        ));
        assert!(matches!(
            extract(&Method::GET, &headers(&["Bearer x"]), query, true),
            Err(GatewayError::InvalidRequest(_))
        ));
        let only = extract(&Method::HEAD, &no_headers, Some("access_token=t"), true).expect("ok");
        assert_eq!(only.forward_query, None);
    }

    #[test]
    fn other_query_parameters_pass_untouched() {
        let no_headers = HeaderMap::new();
        let found = extract(
            &Method::GET,
            &no_headers,
            Some("offset=0000000000000001_000000000000000b&cursor=a%20b"),
            false,
        )
        .expect("ok");
        assert_eq!(found.token, None);
        assert_eq!(
            found.forward_query.as_deref(),
            Some("offset=0000000000000001_000000000000000b&cursor=a%20b")
        );
    }
}
