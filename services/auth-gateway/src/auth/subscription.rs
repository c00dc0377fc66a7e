//! What a token may do with a subscription (PROTOCOL §6–7): the streams a
//! subscription reaches, read from a request body or from stream-server's
//! answer, and whether they lie within a token's rights.
//!
//! A subscription reveals the streams it covers: a webhook or a wake names
//! each pending stream with its offsets, and a claim hands out the same. A
//! pull-wake subscription also has stream-server append wake events to its
//! wake stream. So a token reaches a subscription only when it
//! * holds `read` and its `pattern` is within one of the token's patterns
//!   ([`StreamPattern::contains`], which is conservative: an equivalent but
//!   differently spelled pattern may be refused, a wider one never passes);
//! * holds `read` on every explicitly linked stream (and, when checking
//!   stream-server's answer, on every linked stream whatever its link);
//! * holds `read` and `write` on the wake stream, which its workers read and
//!   stream-server writes on the token's behalf.
//!
//! Paths in bodies are stream-root-relative and taken literally (PROTOCOL
//! §6): they are checked with `service_common::stream_path::validate`, never
//! percent-decoded. Bodies are parsed strictly (unknown or repeated fields
//! are refused), so nothing the gateway did not read can reach stream-server.
//! Nothing here does I/O; `http::control` applies it to requests.

use crate::auth::grant::Grant;
use crate::auth::scope::Scope;
use serde::Deserialize;
use serde::de::IgnoredAny;
use service_common::stream_path::{self, PathError, PathLimits};
use service_common::stream_pattern::{PatternError, StreamPattern};

/// The streams one subscription reaches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    /// The glob every matching stream is linked by.
    pub pattern: Option<StreamPattern>,
    /// Streams linked by name (or, read from a view, all linked streams).
    pub streams: Vec<String>,
    /// Where a pull-wake subscription writes its wake events.
    pub wake_stream: Option<String>,
}

/// Why a subscription's streams are not within a token's rights. For the
/// logs and spans only: the client is told just that the subscription is
/// outside its token, since the names may be another tenant's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutsideReach {
    #[error("a subscription needs the read scope on the streams it covers")]
    NoRead,
    #[error("pattern {0} is within none of the token's stream patterns")]
    Pattern(StreamPattern),
    #[error("stream {0:?} is outside the token's stream patterns")]
    Stream(String),
    #[error("wake stream {0:?} needs read and write within the token's stream patterns")]
    WakeStream(String),
}

impl Coverage {
    /// Whether `grant` reaches every stream here (see the module docs).
    /// Empty coverage is within every grant: stream-server refuses a
    /// subscription with neither pattern nor streams itself.
    pub fn within(&self, grant: &Grant) -> Result<(), OutsideReach> {
        let covers_anything =
            self.pattern.is_some() || !self.streams.is_empty() || self.wake_stream.is_some();
        if covers_anything && !grant.has_scope(Scope::Read) {
            return Err(OutsideReach::NoRead);
        }
        if let Some(pattern) = &self.pattern
            && !grant.streams.iter().any(|held| held.contains(pattern))
        {
            return Err(OutsideReach::Pattern(pattern.clone()));
        }
        if let Some(stream) = self.streams.iter().find(|s| !grant.allows(Scope::Read, s)) {
            return Err(OutsideReach::Stream(stream.clone()));
        }
        if let Some(wake) = &self.wake_stream
            && !(grant.allows(Scope::Read, wake) && grant.allows(Scope::Write, wake))
        {
            return Err(OutsideReach::WakeStream(wake.clone()));
        }
        Ok(())
    }
}

/// Why a request body does not describe a subscription the gateway can
/// check (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("subscription body: {0}")]
    Json(String),
    #[error("subscription pattern: {0}")]
    Pattern(#[from] PatternError),
    #[error("subscription stream {path:?}: {error}")]
    Path { path: String, error: PathError },
}

/// The body of `PUT __ds/subscriptions/{id}` (§6.2), as far as the gateway
/// needs it. Every field the protocol defines is listed, so that unknown
/// fields can be refused: a field the gateway does not know might name
/// streams.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    #[serde(rename = "type")]
    _kind: Option<IgnoredAny>,
    pattern: Option<String>,
    streams: Option<Vec<String>>,
    #[serde(rename = "webhook")]
    _webhook: Option<IgnoredAny>,
    wake_stream: Option<String>,
    #[serde(rename = "lease_ttl_ms")]
    _lease_ttl_ms: Option<IgnoredAny>,
    #[serde(rename = "description")]
    _description: Option<IgnoredAny>,
}

/// The body of `POST __ds/subscriptions/{id}/streams` (§6.4).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddStreamsBody {
    streams: Vec<String>,
}

/// What stream-server says a subscription is (§6.3); unknown fields are
/// its own business.
#[derive(Deserialize)]
struct View {
    pattern: Option<String>,
    #[serde(default)]
    streams: Vec<Link>,
    wake_stream: Option<String>,
}

#[derive(Deserialize)]
struct Link {
    path: String,
}

fn json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, BodyError> {
    serde_json::from_slice(body).map_err(|e| BodyError::Json(e.to_string()))
}

fn checked_path(path: String, limits: PathLimits) -> Result<String, BodyError> {
    match stream_path::validate(&path, limits) {
        Ok(()) => Ok(path),
        Err(error) => Err(BodyError::Path { path, error }),
    }
}

fn checked_paths(paths: Vec<String>, limits: PathLimits) -> Result<Vec<String>, BodyError> {
    paths
        .into_iter()
        .map(|path| checked_path(path, limits))
        .collect()
}

/// The streams a subscription-creating body asks for.
pub fn create_body(body: &[u8], limits: PathLimits) -> Result<Coverage, BodyError> {
    let body: CreateBody = json(body)?;
    Ok(Coverage {
        pattern: body.pattern.as_deref().map(str::parse).transpose()?,
        streams: checked_paths(body.streams.unwrap_or_default(), limits)?,
        wake_stream: body
            .wake_stream
            .map(|path| checked_path(path, limits))
            .transpose()?,
    })
}

/// The streams a body adding explicit links asks for.
pub fn add_streams_body(body: &[u8], limits: PathLimits) -> Result<Coverage, BodyError> {
    let body: AddStreamsBody = json(body)?;
    Ok(Coverage {
        streams: checked_paths(body.streams, limits)?,
        ..Coverage::default()
    })
}

/// The streams stream-server says an existing subscription reaches: its
/// pattern, every linked stream, and its wake stream.
pub fn view(body: &[u8]) -> Result<Coverage, BodyError> {
    let view: View = json(body)?;
    Ok(Coverage {
        pattern: view.pattern.as_deref().map(str::parse).transpose()?,
        streams: view.streams.into_iter().map(|link| link.path).collect(),
        wake_stream: view.wake_stream,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::store::TokenRow;
    use time::OffsetDateTime;

    fn grant(scopes: &[&str], streams: &[&str]) -> Grant {
        let now = OffsetDateTime::now_utc();
        Grant::from_row(TokenRow {
            id: "t1".into(),
            subject: "alice".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            streams: streams.iter().map(|s| s.to_string()).collect(),
            description: String::new(),
            created_at: now,
            expires_at: now + time::Duration::hours(1),
            revoked_at: None,
            last_used_at: None,
            issued_by: None,
        })
    }

    fn chat_reader() -> Grant {
        grant(&["subscribe", "read", "write"], &["chat/**"])
    }

    fn pattern(text: &str) -> Coverage {
        Coverage {
            pattern: Some(text.parse().expect("pattern")),
            ..Coverage::default()
        }
    }

    fn created(body: &str) -> Coverage {
        create_body(body.as_bytes(), PathLimits::default()).expect("a checkable body")
    }

    #[test]
    fn patterns_must_lie_within_the_tokens() {
        let token = chat_reader();
        assert_eq!(pattern("chat/**").within(&token), Ok(()));
        assert_eq!(pattern("chat/*").within(&token), Ok(()));
        assert_eq!(pattern("chat/room-1/**").within(&token), Ok(()));
        assert_eq!(
            pattern("**").within(&token),
            Err(OutsideReach::Pattern("**".parse().expect("pattern")))
        );
        assert!(pattern("chatroom/**").within(&token).is_err());
        assert!(pattern("*/room").within(&token).is_err());
        let one_level = grant(&["subscribe", "read"], &["chat/*"]);
        assert_eq!(pattern("chat/*").within(&one_level), Ok(()));
        assert!(
            pattern("chat/**").within(&one_level).is_err(),
            "chat/** reaches deeper than chat/*"
        );
        let two = grant(&["subscribe", "read"], &["chat/*", "inbox/**"]);
        assert_eq!(pattern("inbox/alice/*").within(&two), Ok(()));
    }

    #[test]
    fn explicit_streams_must_be_readable() {
        let token = chat_reader();
        let inside = created(r#"{"type":"webhook","streams":["chat/a","chat/b/c"]}"#);
        assert_eq!(inside.within(&token), Ok(()));
        let outside = created(r#"{"type":"webhook","streams":["chat/a","payroll/2024"]}"#);
        assert_eq!(
            outside.within(&token),
            Err(OutsideReach::Stream("payroll/2024".into()))
        );
        let mixed = created(r#"{"type":"webhook","pattern":"chat/*","streams":["secret"]}"#);
        assert!(mixed.within(&token).is_err());
    }

    #[test]
    fn the_wake_stream_needs_read_and_write() {
        let token = chat_reader();
        let inside =
            created(r#"{"type":"pull-wake","pattern":"chat/*","wake_stream":"chat/wake"}"#);
        assert_eq!(inside.within(&token), Ok(()));
        let outside =
            created(r#"{"type":"pull-wake","pattern":"chat/*","wake_stream":"wake/pool"}"#);
        assert_eq!(
            outside.within(&token),
            Err(OutsideReach::WakeStream("wake/pool".into()))
        );
        let read_only = grant(&["subscribe", "read"], &["chat/**"]);
        assert!(
            inside.within(&read_only).is_err(),
            "stream-server would write wake events where the token cannot"
        );
    }

    #[test]
    fn nothing_is_reached_without_read() {
        let no_read = grant(&["subscribe", "write"], &["**"]);
        assert_eq!(
            pattern("chat/*").within(&no_read),
            Err(OutsideReach::NoRead)
        );
        assert_eq!(Coverage::default().within(&no_read), Ok(()));
    }

    #[test]
    fn bodies_are_read_strictly() {
        let limits = PathLimits::default();
        let full = created(
            r#"{"type":"webhook","pattern":"events/*","streams":["events/a"],
                "webhook":{"url":"https://w.example/h"},"wake_stream":null,
                "lease_ttl_ms":30000,"description":"d"}"#,
        );
        assert_eq!(full.streams, ["events/a"]);
        assert_eq!(full.wake_stream, None);
        for bad in [
            // A second pattern the server might read instead of the first.
            r#"{"pattern":"chat/*","pattern":"**"}"#,
            r#"{"pattern":"chat/*","patterns":["**"]}"#,
            r#"{"pattern":"a*"}"#,
            r#"{"streams":["/chat/a"]}"#,
            r#"{"streams":["chat/../payroll"]}"#,
            r#"{"streams":["__ds/subscriptions"]}"#,
            r#"{"wake_stream":"a//b"}"#,
            r#"{"streams":"chat/a"}"#,
            r#"["chat/a"]"#,
            "not json",
        ] {
            assert!(create_body(bad.as_bytes(), limits).is_err(), "{bad}");
        }
        // Taken literally: `%2F` is part of one segment's name.
        let literal = created(r#"{"streams":["chat%2Fa"]}"#);
        assert!(literal.within(&grant(&["read"], &["chat/*"])).is_err());
        assert_eq!(
            add_streams_body(br#"{"streams":["chat/x"]}"#, limits)
                .expect("body")
                .streams,
            ["chat/x"]
        );
        assert!(add_streams_body(br#"{"streams":["chat/x"],"pattern":"**"}"#, limits).is_err());
    }

    #[test]
    fn views_cover_every_linked_stream() {
        let view = view(
            br#"{"id":"s","pattern":"chat/*","streams":[
                {"path":"chat/a","link_type":"glob","acked_offset":"0"},
                {"path":"secret/b","link_type":"explicit","acked_offset":"0"}],
                "wake_stream":null,"status":"active"}"#,
        )
        .expect("view");
        assert_eq!(view.streams, ["chat/a", "secret/b"]);
        assert_eq!(
            view.within(&chat_reader()),
            Err(OutsideReach::Stream("secret/b".into()))
        );
    }
}
