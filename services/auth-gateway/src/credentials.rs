//! Finding the bearer token in a request (RFC 6750): the `Authorization`
//! header, or — when enabled for browsers' `EventSource` — the
//! `access_token` query parameter of a GET or HEAD. The query parameter is
//! always removed before the request goes anywhere else.

use crate::error::GatewayError;
use http::{HeaderMap, Method, header};

const QUERY_PARAMETER: &str = "access_token";

/// Where a request's token was, and the query to forward without it.
#[derive(Debug, PartialEq, Eq)]
pub struct Credentials {
    pub token: Option<String>,
    /// The original query minus `access_token`; `None` when nothing is left.
    pub forward_query: Option<String>,
}

/// Extracts the token. `allow_query` enables RFC 6750 §2.3 for GET/HEAD.
pub fn extract(
    method: &Method,
    headers: &HeaderMap,
    query: Option<&str>,
    allow_query: bool,
) -> Result<Credentials, GatewayError> {
    let from_header = header_token(headers)?;
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
            Some(token)
        }
        (None, None) => None,
    };
    Ok(Credentials {
        token,
        forward_query,
    })
}

/// The token of an `Authorization: Bearer <token>` header, if there is one.
fn header_token(headers: &HeaderMap) -> Result<Option<String>, GatewayError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(GatewayError::InvalidRequest(
            "more than one Authorization header",
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| GatewayError::InvalidToken("malformed Authorization header"))?;
    let (scheme, token) = value.split_once(' ').ok_or(GatewayError::InvalidToken(
        "expected Authorization: Bearer <token>",
    ))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(GatewayError::InvalidToken(
            "expected Authorization: Bearer <token>",
        ));
    }
    let token = token.trim_start_matches(' ');
    if token.is_empty() || !token.bytes().all(|b| B64TOKEN[usize::from(b)]) {
        return Err(GatewayError::InvalidToken("malformed token"));
    }
    Ok(Some(token.to_owned()))
}

/// RFC 6750 `b64token` characters.
const fn is_b64token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

/// [`is_b64token_byte`] as a table: every request's token, a few hundred
/// bytes, is checked byte by byte.
const B64TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = is_b64token_byte(byte as u8);
        byte += 1;
    }
    table
};

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
    use http::HeaderValue;

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
        let found = extract(
            &Method::POST,
            &headers(&["Bearer abc.def-_~+/="]),
            None,
            false,
        )
        .expect("ok");
        assert_eq!(found.token.as_deref(), Some("abc.def-_~+/="));
        let found = extract(&Method::GET, &headers(&["bearer  x.y.z"]), None, false).expect("ok");
        assert_eq!(found.token.as_deref(), Some("x.y.z"));
        let none = extract(&Method::GET, &HeaderMap::new(), None, false).expect("ok");
        assert_eq!(none.token, None);
    }

    #[test]
    fn tokens_may_use_exactly_the_b64token_characters() {
        let every_allowed = "ABYZabyz0189-._~+/=";
        let found = extract(
            &Method::GET,
            &headers(&[&format!("Bearer {every_allowed}")]),
            None,
            false,
        )
        .expect("a b64token");
        assert_eq!(found.token.as_deref(), Some(every_allowed));
        for printable in (b'!'..=b'~').map(char::from) {
            if every_allowed.contains(printable) || printable.is_ascii_alphanumeric() {
                continue;
            }
            let result = extract(
                &Method::GET,
                &headers(&[&format!("Bearer a{printable}b")]),
                None,
                false,
            );
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
        ] {
            let result = extract(&Method::GET, &headers(&[bad]), None, false);
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
    fn query_token_is_opt_in_for_reads_and_always_stripped() {
        let query = Some("offset=-1&access_token=a.b%2Bc&live=sse");
        let found = extract(&Method::GET, &HeaderMap::new(), query, true).expect("ok");
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
        let only = extract(
            &Method::HEAD,
            &HeaderMap::new(),
            Some("access_token=t"),
            true,
        )
        .expect("ok");
        assert_eq!(only.forward_query, None);
    }

    #[test]
    fn other_query_parameters_pass_untouched() {
        let found = extract(
            &Method::GET,
            &HeaderMap::new(),
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
