//! The parsers for protocol header values (the names themselves are shared
//! with the gateway: `service_common::headers`).
//!
//! Every parser reports failures as a [`HeaderError`] naming the header, so a
//! client sending a malformed value learns which one and why.

use http::{HeaderMap, HeaderName};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub use service_common::headers::{
    PRODUCER_EPOCH, PRODUCER_EXPECTED_SEQ, PRODUCER_ID, PRODUCER_RECEIVED_SEQ, PRODUCER_SEQ,
    STREAM_CLOSED, STREAM_CURSOR, STREAM_EXPIRES_AT, STREAM_FORK_OFFSET, STREAM_FORK_SUB_OFFSET,
    STREAM_FORKED_FROM, STREAM_NEXT_OFFSET, STREAM_SEQ, STREAM_SSE_DATA_ENCODING, STREAM_TTL,
    STREAM_UP_TO_DATE,
};

/// Largest integer a JavaScript client can represent exactly (2^53 - 1).
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// A header value the server cannot accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {header} header: {reason}")]
pub struct HeaderError {
    pub header: String,
    pub reason: String,
}

impl HeaderError {
    pub fn new(header: impl Into<String>, reason: impl Into<String>) -> Self {
        HeaderError {
            header: header.into(),
            reason: reason.into(),
        }
    }
}

/// The value of `name` as text; `Ok(None)` when absent.
pub fn text<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a str>, HeaderError> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| HeaderError::new(name.as_str(), "value is not visible ASCII")),
    }
}

/// `Stream-Closed` counts only when it is exactly `true`, case-insensitively;
/// every other value is ignored (§4.1).
pub fn stream_closed(headers: &HeaderMap) -> bool {
    headers
        .get(&STREAM_CLOSED)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// A non-negative decimal integer without sign, leading zeros, fraction or
/// exponent (the `Stream-TTL` grammar of §5.1).
pub fn strict_decimal(header: &'static str, value: &str) -> Result<u64, HeaderError> {
    let digits_only = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    if !digits_only {
        return Err(HeaderError::new(
            header,
            "expected a non-negative integer in plain decimal notation",
        ));
    }
    if value.len() > 1 && value.starts_with('0') {
        return Err(HeaderError::new(header, "leading zeros are not allowed"));
    }
    value
        .parse()
        .map_err(|_| HeaderError::new(header, "number is too large"))
}

/// `Stream-TTL` in seconds.
pub fn ttl(value: &str) -> Result<u64, HeaderError> {
    strict_decimal("Stream-TTL", value)
}

/// `Stream-Expires-At`, an RFC 3339 timestamp.
pub fn expires_at(value: &str) -> Result<OffsetDateTime, HeaderError> {
    OffsetDateTime::parse(value, &Rfc3339).map_err(|e| {
        HeaderError::new(
            "Stream-Expires-At",
            format!("not an RFC 3339 timestamp ({e})"),
        )
    })
}

/// Renders a timestamp the way `Stream-Expires-At` is echoed back.
pub fn format_timestamp(at: OffsetDateTime) -> String {
    at.format(&Rfc3339)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}

/// The media type of a `Content-Type` value, lowercased and without
/// parameters: the part two content types must share to match (§5.2).
pub fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Whether `content_type` has the media type `media_type` (as
/// [`media_type`] gives it): the comparison every append makes, without
/// building the lowercased copy.
pub fn has_media_type(content_type: &str, media_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .eq_ignore_ascii_case(media_type)
}

/// The producer identity and position sent with an append (§5.2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerHeaders {
    pub id: String,
    pub epoch: u64,
    pub seq: u64,
}

/// Reads the three producer headers: all present, or none (§5.2.1).
pub fn producer(headers: &HeaderMap) -> Result<Option<ProducerHeaders>, HeaderError> {
    let id = text(headers, &PRODUCER_ID)?;
    let epoch = text(headers, &PRODUCER_EPOCH)?;
    let seq = text(headers, &PRODUCER_SEQ)?;
    let (id, epoch, seq) = match (id, epoch, seq) {
        (None, None, None) => return Ok(None),
        (Some(id), Some(epoch), Some(seq)) => (id, epoch, seq),
        _ => {
            return Err(HeaderError::new(
                "Producer-Id",
                "Producer-Id, Producer-Epoch and Producer-Seq must be sent together",
            ));
        }
    };
    if id.is_empty() {
        return Err(HeaderError::new("Producer-Id", "must not be empty"));
    }
    let bounded = |header: &'static str, value: &str| {
        let n = strict_decimal(header, value)?;
        if n > MAX_SAFE_INTEGER {
            return Err(HeaderError::new(header, "must not exceed 2^53-1"));
        }
        Ok(n)
    };
    Ok(Some(ProducerHeaders {
        id: id.to_owned(),
        epoch: bounded("Producer-Epoch", epoch)?,
        seq: bounded("Producer-Seq", seq)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    #[test]
    fn ttl_grammar() {
        assert_eq!(ttl("3600"), Ok(3600));
        assert_eq!(ttl("0"), Ok(0));
        for bad in [
            "+3600", "03600", "3600.0", "3.6e3", "-1", "", " ", "1 0", "0x10",
        ] {
            assert!(ttl(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn closed_header_is_true_only() {
        let mut headers = HeaderMap::new();
        assert!(!stream_closed(&headers));
        for (value, expected) in [
            ("true", true),
            ("TRUE", true),
            ("True", true),
            ("false", false),
            ("1", false),
            ("", false),
            ("yes", false),
        ] {
            headers.insert(STREAM_CLOSED, HeaderValue::from_static(value));
            assert_eq!(stream_closed(&headers), expected, "{value:?}");
        }
    }

    #[test]
    fn media_type_ignores_case_and_parameters() {
        assert_eq!(media_type("Text/Plain; charset=utf-8"), "text/plain");
        assert_eq!(media_type(" application/json "), "application/json");
    }

    proptest! {
        #[test]
        fn has_media_type_agrees_with_media_type(ct in "[ a-zA-Z/;=+.-]{0,24}", other in "[a-zA-Z/+.-]{0,12}") {
            prop_assert!(has_media_type(&ct, &media_type(&ct)));
            prop_assert_eq!(has_media_type(&ct, &other.to_ascii_lowercase()), media_type(&ct) == other.to_ascii_lowercase());
        }
    }

    #[test]
    fn producer_headers_all_or_nothing() {
        let mut headers = HeaderMap::new();
        assert_eq!(producer(&headers), Ok(None));
        headers.insert(PRODUCER_ID, HeaderValue::from_static("p"));
        assert!(producer(&headers).is_err());
        headers.insert(PRODUCER_EPOCH, HeaderValue::from_static("0"));
        headers.insert(PRODUCER_SEQ, HeaderValue::from_static("7"));
        assert_eq!(
            producer(&headers),
            Ok(Some(ProducerHeaders {
                id: "p".into(),
                epoch: 0,
                seq: 7
            }))
        );
        headers.insert(PRODUCER_SEQ, HeaderValue::from_static("9007199254740992"));
        assert!(producer(&headers).is_err());
        headers.insert(PRODUCER_SEQ, HeaderValue::from_static("-1"));
        assert!(producer(&headers).is_err());
    }

    proptest! {
        #[test]
        fn strict_decimal_accepts_exactly_canonical_numbers(n: u64) {
            prop_assert_eq!(strict_decimal("X", &n.to_string()), Ok(n));
        }

        #[test]
        fn strict_decimal_never_panics(s in "\\PC{0,24}") {
            if let Ok(n) = strict_decimal("X", &s) {
                prop_assert_eq!(n.to_string(), s);
            }
        }
    }
}
