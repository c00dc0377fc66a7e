//! What names a stream (§4.2, §12.2), decided in one place for both
//! services: the gateway authorises exactly the stream that stream-server
//! then acts on, because both resolve request paths and `Stream-Forked-From`
//! values with these functions.
//!
//! A stream path is the part of the URL path after the stream base path
//! (`/v1/stream/chat/room-1` names `chat/room-1`), percent-decoded once.
//! It must be non-empty, valid UTF-8, within the length and segment limits,
//! free of empty, `.` and `..` segments, control characters and
//! backslashes, and must not start with the reserved `__ds` segment (§6).

use crate::headers::STREAM_FORKED_FROM;
use http::HeaderMap;
use percent_encoding::percent_decode_str;
use std::borrow::Cow;

/// Limits a stream path must respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathLimits {
    pub max_bytes: usize,
    pub max_segments: usize,
}

impl Default for PathLimits {
    /// The defaults of both services, so a gateway left at its defaults
    /// refuses what a server left at its defaults refuses.
    fn default() -> Self {
        PathLimits {
            max_bytes: 1024,
            max_segments: 32,
        }
    }
}

/// Why a path or `Stream-Forked-From` value cannot name a stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("stream path is empty")]
    Empty,
    #[error("stream path is {len} bytes long; the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("stream path has more than {max} segments")]
    TooManySegments { max: usize },
    #[error("stream path contains an empty, '.' or '..' segment")]
    Traversal,
    #[error("stream path contains a control character or backslash")]
    BadCharacter,
    #[error("stream path is not valid UTF-8 once percent-decoded")]
    NotUtf8,
    #[error("paths starting with '__ds' are reserved for Durable Streams control APIs")]
    Reserved,
    #[error("Stream-Forked-From must be a URL path without spaces or control characters")]
    MalformedSource,
    #[error("Stream-Forked-From is repeated")]
    RepeatedSource,
}

/// Why a configured stream base path (`http.stream_base_path`) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "must start with '/', not end with one, and hold only non-empty segments of \
     letters, digits and -._~!$&'()+,;=:@, got {0:?}"
)]
pub struct BaseError(String);

/// Checks a stream base path: `/` followed by segments of URL path
/// characters that need no escaping (and none of the router's pattern
/// syntax), without a trailing `/`. Both services refuse the same bases.
pub fn validate_base(base: &str) -> Result<(), BaseError> {
    let segment_ok = |segment: &str| {
        !matches!(segment, "" | "." | "..")
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()+,;=:@".contains(&b))
    };
    match base.strip_prefix('/') {
        Some(rest) if rest.split('/').all(segment_ok) => Ok(()),
        _ => Err(BaseError(base.to_owned())),
    }
}

/// The router pattern matching every stream URL under `base`; requests
/// report it as their route (`MatchedPath`), which keeps stream names out
/// of route labels.
pub fn route(base: &str) -> String {
    format!("{base}/{{*path}}")
}

/// The undecoded part of the URL path `path` after `{base}/`, when it names
/// a stream (is not empty). `base` starts with `/` and does not end with one.
pub fn stream_path_of<'a>(base: &str, path: &'a str) -> Option<&'a str> {
    path.strip_prefix(base)?
        .strip_prefix('/')
        .filter(|rest| !rest.is_empty())
}

/// Percent-decodes a raw (URL-form) stream path and validates the result.
/// Most paths have nothing to decode and are returned borrowed.
pub fn decode(raw: &str, limits: PathLimits) -> Result<Cow<'_, str>, PathError> {
    // Bounding the raw form first keeps decoding of hostile input cheap;
    // decoding never makes a path longer.
    if raw.len() > limits.max_bytes.saturating_mul(3) {
        return Err(PathError::TooLong {
            len: raw.len(),
            max: limits.max_bytes,
        });
    }
    let decoded = if raw.contains('%') {
        percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| PathError::NotUtf8)?
    } else {
        Cow::Borrowed(raw)
    };
    validate(&decoded, limits)?;
    Ok(decoded)
}

/// The first segment of the paths reserved for control APIs (§6).
pub const RESERVED_SEGMENT: &str = "__ds";

/// The part after `__ds/` of a reserved control path (§6), decoded once as
/// stream paths are and held to the same rules; `None` when `raw` is not
/// under `__ds` (an ordinary stream path, or not a path at all).
pub fn control_path(raw: &str, limits: PathLimits) -> Result<Option<String>, PathError> {
    if raw.len() > limits.max_bytes.saturating_mul(3) {
        return Err(PathError::TooLong {
            len: raw.len(),
            max: limits.max_bytes,
        });
    }
    let decoded = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| PathError::NotUtf8)?;
    let rest = match decoded.strip_prefix(RESERVED_SEGMENT) {
        Some("") => return Ok(Some(String::new())),
        Some(rest) => match rest.strip_prefix('/') {
            Some(rest) => rest,
            None => return Ok(None),
        },
        None => return Ok(None),
    };
    check(rest, limits, false)?;
    Ok(Some(rest.to_owned()))
}

/// What a control path (after `__ds/`, see [`control_path`]) names: one
/// reading for the gateway that authorises and the server that acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlRoute<'a> {
    /// `jwks.json`: the webhook signing keys.
    Jwks,
    /// `subscriptions/{id}`
    Subscription(&'a str),
    /// `subscriptions/{id}/streams`
    Streams(&'a str),
    /// `subscriptions/{id}/streams/{stream}`; the stream may hold `/`.
    Stream { id: &'a str, stream: &'a str },
    /// `subscriptions/{id}/claim`
    Claim(&'a str),
    /// `subscriptions/{id}/callback`
    Callback(&'a str),
    /// `subscriptions/{id}/ack`
    Ack(&'a str),
    /// `subscriptions/{id}/release`
    Release(&'a str),
}

impl<'a> ControlRoute<'a> {
    /// The route `rest` names, if any. Ids are one non-empty segment.
    pub fn parse(rest: &'a str) -> Option<ControlRoute<'a>> {
        if rest == "jwks.json" {
            return Some(ControlRoute::Jwks);
        }
        let rest = rest.strip_prefix("subscriptions/")?;
        let (id, tail) = match rest.split_once('/') {
            Some((id, tail)) => (id, Some(tail)),
            None => (rest, None),
        };
        if id.is_empty() {
            return None;
        }
        Some(match tail {
            None => ControlRoute::Subscription(id),
            Some("streams") => ControlRoute::Streams(id),
            Some("claim") => ControlRoute::Claim(id),
            Some("callback") => ControlRoute::Callback(id),
            Some("ack") => ControlRoute::Ack(id),
            Some("release") => ControlRoute::Release(id),
            Some(tail) => ControlRoute::Stream {
                id,
                stream: tail.strip_prefix("streams/")?,
            },
        })
    }
}

/// The source stream a request's `Stream-Forked-From` header names, if it
/// has one; a repeated header is refused, so no two readers of the request
/// can pick different values.
pub fn fork_source_of<'a>(
    headers: &'a HeaderMap,
    base: &str,
    limits: PathLimits,
) -> Result<Option<Cow<'a, str>>, PathError> {
    let mut values = headers.get_all(STREAM_FORKED_FROM).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(PathError::RepeatedSource);
    }
    fork_source(value.as_bytes(), base, limits).map(Some)
}

/// The stream a `Stream-Forked-From` value names: the source's URL path
/// (`{base}/chat/a`), or its path relative to the stream root with or
/// without a leading `/` (`/chat/a`, `chat/a`).
///
/// The value is taken as bytes, exactly as it arrived: HTTP/1.1 parsers
/// strip surrounding whitespace from field values but HTTP/2 delivers them
/// as sent, so surrounding spaces and tabs (RFC 9110 OWS) are removed here
/// for both, and anything else that cannot appear in a URL path (inner
/// whitespace, controls, non-ASCII) is refused rather than interpreted.
pub fn fork_source<'a>(
    value: &'a [u8],
    base: &str,
    limits: PathLimits,
) -> Result<Cow<'a, str>, PathError> {
    let value = value.trim_ascii_start().trim_ascii_end();
    if value.iter().any(|b| !b.is_ascii_graphic()) {
        return Err(PathError::MalformedSource);
    }
    let value = std::str::from_utf8(value).map_err(|_| PathError::MalformedSource)?;
    let relative = match value.strip_prefix(base).and_then(|r| r.strip_prefix('/')) {
        Some(rest) => rest,
        None => value.strip_prefix('/').unwrap_or(value),
    };
    decode(relative, limits)
}

/// Checks a percent-decoded stream path against the rules above.
pub fn validate(path: &str, limits: PathLimits) -> Result<(), PathError> {
    check(path, limits, true)
}

fn check(path: &str, limits: PathLimits, refuse_reserved: bool) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > limits.max_bytes {
        return Err(PathError::TooLong {
            len: path.len(),
            max: limits.max_bytes,
        });
    }
    let bad_character = if path.is_ascii() {
        path.bytes().any(|b| b.is_ascii_control() || b == b'\\')
    } else {
        path.chars().any(|c| c.is_control() || c == '\\')
    };
    if bad_character {
        return Err(PathError::BadCharacter);
    }
    for (index, segment) in path.split('/').enumerate() {
        if index >= limits.max_segments {
            return Err(PathError::TooManySegments {
                max: limits.max_segments,
            });
        }
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(PathError::Traversal);
        }
        if refuse_reserved && index == 0 && segment == RESERVED_SEGMENT {
            return Err(PathError::Reserved);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn control_routes_are_read_by_segment() {
        use ControlRoute as R;
        for (rest, route) in [
            ("jwks.json", Some(R::Jwks)),
            ("subscriptions/s1", Some(R::Subscription("s1"))),
            ("subscriptions/s1/streams", Some(R::Streams("s1"))),
            (
                "subscriptions/s1/streams/a/b",
                Some(R::Stream {
                    id: "s1",
                    stream: "a/b",
                }),
            ),
            ("subscriptions/s1/claim", Some(R::Claim("s1"))),
            ("subscriptions/s1/callback", Some(R::Callback("s1"))),
            ("subscriptions/s1/ack", Some(R::Ack("s1"))),
            ("subscriptions/s1/release", Some(R::Release("s1"))),
            ("subscriptions/s1/other", None),
            ("subscriptions/", None),
            ("subscriptions", None),
            ("jwks.json/x", None),
            ("other", None),
            ("", None),
        ] {
            assert_eq!(ControlRoute::parse(rest), route, "{rest:?}");
        }
    }

    #[test]
    fn control_paths_are_the_reserved_prefix_decoded_once() {
        let control = |raw| control_path(raw, PathLimits::default());
        assert_eq!(control("__ds/jwks.json"), Ok(Some("jwks.json".into())));
        assert_eq!(
            control("%5F%5Fds/subscriptions/a"),
            Ok(Some("subscriptions/a".into()))
        );
        assert_eq!(
            control("__ds/subscriptions/a/streams/x%2Fy"),
            Ok(Some("subscriptions/a/streams/x/y".into()))
        );
        assert_eq!(control("__ds"), Ok(Some(String::new())));
        assert_eq!(control("__dsx/a"), Ok(None));
        assert_eq!(control("a/__ds"), Ok(None));
        assert_eq!(control("__ds/a/../b"), Err(PathError::Traversal));
        assert_eq!(control("__ds//a"), Err(PathError::Traversal));
        assert_eq!(control("__ds/%ff"), Err(PathError::NotUtf8));
    }

    #[test]
    fn base_paths_are_plain_url_paths() {
        for good in ["/v1/stream", "/s", "/a.b/c-d/~e@f:g"] {
            assert_eq!(validate_base(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "/",
            "v1/stream",
            "/v1/stream/",
            "/v1//stream",
            "/v1/./stream",
            "/v1/..",
            "/v1/{x}",
            "/v1/{*rest}",
            "/v1/*",
            "/v1/a b",
            "/v1/%41",
            "/v1/é",
            "/v1?x",
            "/v1#x",
        ] {
            assert!(validate_base(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(route("/v1/stream"), "/v1/stream/{*path}");
    }

    const LIMITS: PathLimits = PathLimits {
        max_bytes: 64,
        max_segments: 4,
    };
    const BASE: &str = "/v1/stream";

    fn source(value: &str) -> Result<Cow<'_, str>, PathError> {
        fork_source(value.as_bytes(), BASE, LIMITS)
    }

    #[test]
    fn stream_urls_are_the_non_empty_paths_under_the_base() {
        assert_eq!(stream_path_of(BASE, "/v1/stream/a/b"), Some("a/b"));
        assert_eq!(stream_path_of(BASE, "/v1/stream/"), None);
        assert_eq!(stream_path_of(BASE, "/v1/stream"), None);
        assert_eq!(stream_path_of(BASE, "/v1/streamx/a"), None);
        assert_eq!(stream_path_of(BASE, "/healthz"), None);
    }

    #[test]
    fn accepts_ordinary_paths() {
        for ok in [
            "a",
            "chat/room-1",
            "x/y/z/w",
            "émoji-✓",
            "a.b/..c",
            "x/__ds",
        ] {
            assert_eq!(validate(ok, LIMITS), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn rejects_unsafe_paths() {
        assert_eq!(validate("", LIMITS), Err(PathError::Empty));
        assert_eq!(validate("a/../b", LIMITS), Err(PathError::Traversal));
        assert_eq!(validate("./a", LIMITS), Err(PathError::Traversal));
        assert_eq!(validate("a//b", LIMITS), Err(PathError::Traversal));
        assert_eq!(validate("a/", LIMITS), Err(PathError::Traversal));
        assert_eq!(validate("a\\b", LIMITS), Err(PathError::BadCharacter));
        assert_eq!(validate("a\0b", LIMITS), Err(PathError::BadCharacter));
        assert_eq!(validate("a\u{7f}b", LIMITS), Err(PathError::BadCharacter));
        // C1 controls are two bytes in UTF-8.
        assert_eq!(validate("é\u{85}b", LIMITS), Err(PathError::BadCharacter));
        assert_eq!(
            validate("__ds/subscriptions/x", LIMITS),
            Err(PathError::Reserved)
        );
        assert_eq!(
            validate("a/b/c/d/e", LIMITS),
            Err(PathError::TooManySegments { max: 4 })
        );
        assert!(matches!(
            validate(&"a".repeat(65), LIMITS),
            Err(PathError::TooLong { .. })
        ));
    }

    #[test]
    fn decoding_happens_once_and_before_validation() {
        assert_eq!(decode("chat/room%201", LIMITS).unwrap(), "chat/room 1");
        assert_eq!(decode("a%2Fb", LIMITS).unwrap(), "a/b");
        assert!(matches!(
            decode("chat/room-1", LIMITS),
            Ok(Cow::Borrowed("chat/room-1"))
        ));
        // Double encoding decodes once: the stream is literally named "%2E%2E".
        assert_eq!(decode("%252E%252E", LIMITS).unwrap(), "%2E%2E");
        for bad in [
            "", "a//b", "a/../b", "%2E%2E/x", "a/.", "a%2F%2Fb", "%FF", "a%00",
        ] {
            assert!(decode(bad, LIMITS).is_err(), "{bad}");
        }
        assert!(matches!(
            decode(&"%41".repeat(100), LIMITS),
            Err(PathError::TooLong { .. })
        ));
    }

    #[test]
    fn fork_sources_name_the_stream_whatever_the_spelling() {
        for spelling in [
            "/v1/stream/pay/roll",
            "pay/roll",
            "/pay/roll",
            "  /v1/stream/pay/roll\t",
            "\t/pay%2Froll ",
        ] {
            assert_eq!(source(spelling).unwrap(), "pay/roll", "{spelling:?}");
        }
    }

    #[test]
    fn fork_sources_that_are_not_url_paths_are_refused() {
        // The HTTP/2 spelling of the bypass: a space segment in front.
        assert_eq!(source(" /payroll").unwrap(), "payroll");
        assert_eq!(source("/ /payroll"), Err(PathError::MalformedSource));
        assert_eq!(source("a b"), Err(PathError::MalformedSource));
        assert_eq!(source("a\u{0}b"), Err(PathError::MalformedSource));
        assert_eq!(source("pay/rollé"), Err(PathError::MalformedSource));
        assert_eq!(source(""), Err(PathError::Empty));
        assert_eq!(source("   "), Err(PathError::Empty));
        assert_eq!(source("/v1/stream/"), Err(PathError::Empty));
        assert_eq!(source("//payroll"), Err(PathError::Traversal));
        assert_eq!(source("/v1/stream//payroll"), Err(PathError::Traversal));
        assert_eq!(source("/v1/stream/../payroll"), Err(PathError::Traversal));
        assert_eq!(source("x/%2e%2e/payroll"), Err(PathError::Traversal));
        assert_eq!(source("a%09b"), Err(PathError::BadCharacter));
        assert_eq!(
            fork_source(b"pay\xffroll", BASE, LIMITS),
            Err(PathError::MalformedSource)
        );
    }

    #[test]
    fn one_source_header_at_most() {
        let mut headers = HeaderMap::new();
        assert_eq!(fork_source_of(&headers, BASE, LIMITS), Ok(None));
        headers.append(STREAM_FORKED_FROM, "/v1/stream/a".parse().unwrap());
        assert_eq!(
            fork_source_of(&headers, BASE, LIMITS).unwrap().as_deref(),
            Some("a")
        );
        headers.append(STREAM_FORKED_FROM, "/v1/stream/b".parse().unwrap());
        assert_eq!(
            fork_source_of(&headers, BASE, LIMITS),
            Err(PathError::RepeatedSource)
        );
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,80}") {
            let _ = validate(&s, LIMITS);
            let _ = decode(&s, LIMITS);
            let _ = fork_source(s.as_bytes(), BASE, LIMITS);
        }

        #[test]
        fn refuses_exactly_the_control_characters_and_backslash(
            s in "[a-z/\\x00-\\x20\\x7f-\\u{a0}\\\\]{1,20}"
        ) {
            let expected = s.chars().any(|c| c.is_control() || c == '\\');
            prop_assert_eq!(validate(&s, LIMITS) == Err(PathError::BadCharacter), expected);
        }

        /// Whatever resolves is a valid stream path, and resolving its own
        /// encoded form gives it back.
        #[test]
        fn resolved_sources_are_valid_and_stable(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(name) = fork_source(&bytes, BASE, LIMITS) {
                prop_assert_eq!(validate(&name, LIMITS), Ok(()));
                let encoded: String = percent_encoding::utf8_percent_encode(
                    &name,
                    percent_encoding::NON_ALPHANUMERIC,
                )
                .to_string()
                .replace("%2F", "/");
                let again = fork_source(encoded.as_bytes(), BASE, LIMITS);
                prop_assert_eq!(again.as_deref(), Ok(name.as_ref()));
            }
        }
    }
}
