//! What a client asks a subscription to be (§6.2): the `PUT` body, checked,
//! bounded and normalised, and the hash of that normal form by which a
//! repeated `PUT` is recognised as the same subscription.

use service_common::stream_path::{self, PathLimits};
use service_common::stream_pattern::StreamPattern;
use std::collections::BTreeSet;
use std::time::Duration;

/// Bounds of `lease_ttl_ms` (§6.2) and its default.
pub const MIN_LEASE: Duration = Duration::from_secs(1);
pub const MAX_LEASE: Duration = Duration::from_secs(600);
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// Most explicit streams one request may name.
pub const MAX_STREAMS_PER_REQUEST: usize = 1000;
/// Longest `description`, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 1024;
/// Longest subscription id, in bytes.
pub const MAX_ID_BYTES: usize = 128;

/// Longest webhook URL, in bytes.
pub const MAX_WEBHOOK_URL_BYTES: usize = 2048;

/// A pull-wake subscription linking its own wake stream would wake itself
/// with every wake it writes.
pub const WAKE_STREAM_LINKED: &str = "a pull-wake subscription cannot link its own wake stream";

/// The first segment of every stream path the protocol reserves (§6).
pub const RESERVED_SEGMENT: &str = "__ds";

/// How wakes reach the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// POSTed to this URL (§7.1); checked against the URL policy before
    /// the spec is accepted.
    Webhook { url: String },
    /// Appended to this stream, which the application created (§7.2).
    PullWake { wake_stream: String },
}

/// A subscription's configuration in normal form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub delivery: Delivery,
    pub pattern: Option<StreamPattern>,
    /// Explicit streams, sorted and without repeats.
    pub streams: BTreeSet<String>,
    pub lease_ttl: Duration,
    pub description: Option<String>,
}

/// Why a request body is not a subscription.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("body is not a subscription: {0}")]
    Body(String),
    #[error("type must be \"webhook\" or \"pull-wake\"")]
    UnknownType,
    #[error("a subscription needs a pattern, explicit streams, or both")]
    NothingCovered,
    #[error("{0}")]
    Field(String),
}

/// The body of `PUT {base}/__ds/subscriptions/:id`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    #[serde(rename = "type")]
    kind: String,
    pattern: Option<String>,
    streams: Option<Vec<String>>,
    webhook: Option<WebhookBody>,
    wake_stream: Option<String>,
    lease_ttl_ms: Option<u64>,
    description: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookBody {
    url: String,
}

/// The normal form as stored and hashed: a struct, so its field order is
/// fixed by this declaration whatever serde_json's features are.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Canonical {
    description: Option<String>,
    lease_ttl_ms: u64,
    pattern: Option<String>,
    streams: BTreeSet<String>,
    #[serde(rename = "type")]
    kind: String,
    wake_stream: Option<String>,
    webhook_url: Option<String>,
}

/// The body of `POST {base}/__ds/subscriptions/:id/streams` (§6.4).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamsBody {
    streams: Vec<String>,
}

impl Spec {
    /// Parses and checks a `PUT` body. The webhook URL is only bounded in
    /// length here; its policy is the caller's.
    pub fn parse(body: &[u8], limits: PathLimits) -> Result<Spec, SpecError> {
        let body: Body =
            serde_json::from_slice(body).map_err(|e| SpecError::Body(e.to_string()))?;
        let delivery = match body.kind.as_str() {
            "webhook" => {
                if body.wake_stream.is_some() {
                    return Err(field("wake_stream applies to pull-wake subscriptions only"));
                }
                let url = body
                    .webhook
                    .ok_or_else(|| field("a webhook subscription needs webhook.url"))?
                    .url;
                if url.len() > MAX_WEBHOOK_URL_BYTES {
                    return Err(field("webhook.url is longer than 2048 bytes"));
                }
                Delivery::Webhook { url }
            }
            "pull-wake" => {
                if body.webhook.is_some() {
                    return Err(field("webhook applies to webhook subscriptions only"));
                }
                let wake_stream = body
                    .wake_stream
                    .ok_or_else(|| field("a pull-wake subscription needs wake_stream"))?;
                check_stream_path(&wake_stream, limits)?;
                Delivery::PullWake { wake_stream }
            }
            _ => return Err(SpecError::UnknownType),
        };
        let pattern = match body.pattern {
            None => None,
            Some(text) => Some(parse_pattern(&text, limits)?),
        };
        let streams = normalise_streams(body.streams.unwrap_or_default(), limits)?;
        if let Delivery::PullWake { wake_stream } = &delivery
            && streams.contains(wake_stream)
        {
            return Err(field(WAKE_STREAM_LINKED));
        }
        if pattern.is_none() && streams.is_empty() {
            return Err(SpecError::NothingCovered);
        }
        let lease_ttl = match body.lease_ttl_ms {
            None => DEFAULT_LEASE,
            Some(ms) => {
                let lease = Duration::from_millis(ms);
                if !(MIN_LEASE..=MAX_LEASE).contains(&lease) {
                    return Err(field("lease_ttl_ms must be from 1000 to 600000"));
                }
                lease
            }
        };
        if body
            .description
            .as_ref()
            .is_some_and(|d| d.len() > MAX_DESCRIPTION_BYTES)
        {
            return Err(field("description is longer than 1024 bytes"));
        }
        Ok(Spec {
            delivery,
            pattern,
            streams,
            lease_ttl,
            description: body.description,
        })
    }

    /// The normal form as canonical JSON: the same for every spelling of the
    /// same configuration (field order, repeated or reordered streams, a
    /// default lease written out or not).
    pub fn canonical_json(&self) -> String {
        let (kind, webhook_url, wake_stream) = match &self.delivery {
            Delivery::Webhook { url } => ("webhook", Some(url.clone()), None),
            Delivery::PullWake { wake_stream } => ("pull-wake", None, Some(wake_stream.clone())),
        };
        let canonical = Canonical {
            description: self.description.clone(),
            lease_ttl_ms: self.lease_ttl_ms(),
            pattern: self.pattern.as_ref().map(|p| p.to_string()),
            streams: self.streams.clone(),
            kind: kind.to_owned(),
            wake_stream,
            webhook_url,
        };
        // Strings, numbers and sets of strings always serialize.
        serde_json::to_string(&canonical).unwrap_or_default()
    }

    /// Reads back what [`Spec::canonical_json`] wrote (a stored
    /// subscription). Only the shape is checked, not the path limits: the
    /// spec was accepted under the limits in force when it was created.
    pub fn from_canonical_json(json: &str) -> Result<Spec, SpecError> {
        let c: Canonical =
            serde_json::from_str(json).map_err(|e| SpecError::Body(e.to_string()))?;
        let delivery = match (c.kind.as_str(), c.webhook_url, c.wake_stream) {
            ("webhook", Some(url), None) => Delivery::Webhook { url },
            ("pull-wake", None, Some(wake_stream)) => Delivery::PullWake { wake_stream },
            ("webhook" | "pull-wake", _, _) => {
                return Err(field(
                    "a stored spec has exactly the delivery field of its type",
                ));
            }
            _ => return Err(SpecError::UnknownType),
        };
        let pattern = c
            .pattern
            .map(|text| text.parse::<StreamPattern>())
            .transpose()
            .map_err(|e| field(&e.to_string()))?;
        Ok(Spec {
            delivery,
            pattern,
            streams: c.streams,
            lease_ttl: Duration::from_millis(c.lease_ttl_ms),
            description: c.description,
        })
    }

    /// SHA-256 of [`Spec::canonical_json`], hex: what a repeated `PUT` is
    /// compared by.
    pub fn hash(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.canonical_json().as_bytes());
        digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn lease_ttl_ms(&self) -> u64 {
        u64::try_from(self.lease_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the subscription covers `path` through its pattern. A
    /// pull-wake subscription never covers its own wake stream: each wake
    /// written there would otherwise be pending work that causes the next.
    pub fn pattern_matches(&self, path: &str) -> bool {
        if let Delivery::PullWake { wake_stream } = &self.delivery
            && wake_stream == path
        {
            return false;
        }
        self.pattern.as_ref().is_some_and(|p| p.matches(path))
    }
}

/// Parses the body of an explicit membership change (§6.4).
pub fn parse_streams(body: &[u8], limits: PathLimits) -> Result<BTreeSet<String>, SpecError> {
    let body: StreamsBody =
        serde_json::from_slice(body).map_err(|e| SpecError::Body(e.to_string()))?;
    let streams = normalise_streams(body.streams, limits)?;
    if streams.is_empty() {
        return Err(field("streams must name at least one stream"));
    }
    Ok(streams)
}

/// Checks a subscription id: what may stand in one URL segment unescaped.
pub fn check_id(id: &str) -> Result<(), SpecError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
        && !matches!(id, "." | "..");
    if ok {
        Ok(())
    } else {
        Err(field(
            "a subscription id is 1 to 128 characters of letters, digits, '-', '_', '.' and '~'",
        ))
    }
}

/// Checks a stream-root-relative path named in a body: a valid stream
/// path, outside the reserved prefix.
pub fn check_stream_path(path: &str, limits: PathLimits) -> Result<(), SpecError> {
    stream_path::validate(path, limits).map_err(|e| field(&format!("{path:?}: {e}")))?;
    if path.split('/').next() == Some(RESERVED_SEGMENT) {
        return Err(field(&format!("{path:?} is under the reserved prefix")));
    }
    Ok(())
}

fn parse_pattern(text: &str, limits: PathLimits) -> Result<StreamPattern, SpecError> {
    if text.len() > limits.max_bytes || text.split('/').count() > limits.max_segments {
        return Err(field("pattern is longer than a stream path may be"));
    }
    text.parse::<StreamPattern>()
        .map_err(|e| field(&e.to_string()))
}

fn normalise_streams(
    streams: Vec<String>,
    limits: PathLimits,
) -> Result<BTreeSet<String>, SpecError> {
    if streams.len() > MAX_STREAMS_PER_REQUEST {
        return Err(field("streams names more than 1000 streams"));
    }
    for path in &streams {
        check_stream_path(path, limits)?;
    }
    Ok(streams.into_iter().collect())
}

fn field(message: &str) -> SpecError {
    SpecError::Field(message.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Spec, SpecError> {
        Spec::parse(body.as_bytes(), PathLimits::default())
    }

    #[test]
    fn a_webhook_subscription_parses_with_defaults() {
        let spec = parse(
            r#"{"type":"webhook","pattern":"events/*","webhook":{"url":"https://w.example/h"}}"#,
        )
        .unwrap();
        assert_eq!(
            spec.delivery,
            Delivery::Webhook {
                url: "https://w.example/h".into()
            }
        );
        assert_eq!(spec.lease_ttl, DEFAULT_LEASE);
        assert!(spec.pattern_matches("events/a"));
        assert!(!spec.pattern_matches("events/a/b"));
    }

    #[test]
    fn the_same_configuration_spelled_differently_has_one_hash() {
        let a = parse(r#"{"type":"pull-wake","wake_stream":"wake/pool","streams":["b","a","b"],"lease_ttl_ms":30000}"#)
            .unwrap();
        let b =
            parse(r#"{"streams":["a","b"],"wake_stream":"wake/pool","type":"pull-wake"}"#).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.hash(), b.hash());
        let c = parse(r#"{"type":"pull-wake","wake_stream":"wake/pool","streams":["a"]}"#).unwrap();
        assert_ne!(a.hash(), c.hash());
        let d = parse(r#"{"type":"pull-wake","wake_stream":"wake/pool","streams":["a","b"],"description":"x"}"#)
            .unwrap();
        assert_ne!(a.hash(), d.hash());
    }

    #[test]
    fn the_canonical_json_reads_back_as_the_same_spec() {
        for body in [
            r#"{"type":"webhook","pattern":"events/**","streams":["b","a"],"webhook":{"url":"https://w.example/h"},"lease_ttl_ms":1000,"description":"d \" q"}"#,
            r#"{"type":"pull-wake","wake_stream":"wake/pool","streams":["a"]}"#,
        ] {
            let spec = parse(body).unwrap();
            let json = spec.canonical_json();
            let back = Spec::from_canonical_json(&json).unwrap();
            assert_eq!(back, spec);
            assert_eq!(back.canonical_json(), json);
        }
        for bad in [
            "{}",
            r#"{"type":"webhook","pattern":null,"streams":["a"],"webhook_url":null,"wake_stream":"w","lease_ttl_ms":1000,"description":null}"#,
            r#"{"type":"other","pattern":null,"streams":["a"],"webhook_url":"https://x","wake_stream":null,"lease_ttl_ms":1000,"description":null}"#,
            r#"{"type":"pull-wake","pattern":"a/**b","streams":[],"webhook_url":null,"wake_stream":"w","lease_ttl_ms":1000,"description":null}"#,
            r#"{"type":"pull-wake","pattern":null,"streams":["a"],"webhook_url":null,"wake_stream":"w","lease_ttl_ms":1000,"description":null,"x":1}"#,
        ] {
            assert!(Spec::from_canonical_json(bad).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn bad_bodies_are_refused_with_a_reason() {
        for body in [
            "",
            "[]",
            r#"{"type":"webhook","pattern":"a/*"}"#,
            r#"{"type":"pull-wake","pattern":"a/*"}"#,
            r#"{"type":"other","pattern":"a/*"}"#,
            r#"{"type":"pull-wake","wake_stream":"w"}"#,
            r#"{"type":"pull-wake","wake_stream":"w","pattern":"a/**b"}"#,
            r#"{"type":"pull-wake","wake_stream":"w","pattern":""}"#,
            r#"{"type":"pull-wake","wake_stream":"w","streams":["a//b"]}"#,
            r#"{"type":"pull-wake","wake_stream":"w","streams":["__ds/x"]}"#,
            r#"{"type":"pull-wake","wake_stream":"__ds/w","streams":["a"]}"#,
            r#"{"type":"pull-wake","wake_stream":"w","streams":["a"],"lease_ttl_ms":999}"#,
            r#"{"type":"pull-wake","wake_stream":"w","streams":["a"],"lease_ttl_ms":600001}"#,
            r#"{"type":"pull-wake","wake_stream":"w","streams":["a"],"webhook":{"url":"https://x"}}"#,
            r#"{"type":"webhook","webhook":{"url":"https://x"},"streams":["a"],"wake_stream":"w"}"#,
            r#"{"type":"pull-wake","wake_stream":"w","streams":["a"],"extra":1}"#,
        ] {
            assert!(parse(body).is_err(), "accepted {body:?}");
        }
        let long = format!(
            r#"{{"type":"pull-wake","wake_stream":"w","streams":["a"],"description":"{}"}}"#,
            "x".repeat(MAX_DESCRIPTION_BYTES + 1)
        );
        assert!(parse(&long).is_err());
    }

    #[test]
    fn the_canonical_form_is_fixed() {
        let spec = parse(r#"{"type":"pull-wake","wake_stream":"w","streams":["b","a"],"pattern":"x/*","description":"d"}"#)
            .unwrap();
        assert_eq!(
            spec.canonical_json(),
            r#"{"description":"d","lease_ttl_ms":30000,"pattern":"x/*","streams":["a","b"],"type":"pull-wake","wake_stream":"w","webhook_url":null}"#
        );
    }

    #[test]
    fn a_pull_wake_subscription_cannot_link_its_wake_stream_explicitly() {
        assert!(parse(r#"{"type":"pull-wake","wake_stream":"w","streams":["w"]}"#).is_err());
        let long = format!(
            r#"{{"type":"webhook","webhook":{{"url":"https://x/{}"}},"streams":["a"]}}"#,
            "a".repeat(MAX_WEBHOOK_URL_BYTES)
        );
        assert!(parse(&long).is_err());
    }

    #[test]
    fn a_pull_wake_pattern_never_covers_its_own_wake_stream() {
        let spec =
            parse(r#"{"type":"pull-wake","wake_stream":"wake/pool","pattern":"**"}"#).unwrap();
        assert!(spec.pattern_matches("wake/other"));
        assert!(!spec.pattern_matches("wake/pool"));
    }

    #[test]
    fn ids_are_single_url_segments() {
        for ok in ["sub-1", "a.b_c~d", &"x".repeat(MAX_ID_BYTES)] {
            assert!(check_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a b",
            "a%2F",
            &"x".repeat(MAX_ID_BYTES + 1),
        ] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn membership_bodies_name_at_least_one_stream() {
        let limits = PathLimits::default();
        assert_eq!(
            parse_streams(br#"{"streams":["b","a","a"]}"#, limits).unwrap(),
            BTreeSet::from(["a".to_owned(), "b".to_owned()])
        );
        assert!(parse_streams(br#"{"streams":[]}"#, limits).is_err());
        assert!(parse_streams(br#"{"streams":["__ds/x"]}"#, limits).is_err());
    }
}
