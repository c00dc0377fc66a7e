//! The subscription requests under the reserved `__ds` prefix (PROTOCOL
//! §6–7) that a pull-wake worker sends — create and delete a
//! subscription, claim a wake, ack it — and the JSON they carry: the
//! claim's stream snapshot, the `409` conflict codes and the wake events
//! the server writes to the wake stream.
//!
//! A `409` is part of the protocol's normal flow (another worker holds the
//! lease, nothing is pending, a wake went stale), so claims and acks
//! return it as a [`Conflict`] rather than as an error.

use crate::client::{Connection, Reply};
use crate::protocol::{JSON, OpError, status_error};
use crate::target::Target;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Method, StatusCode};
use http_body_util::Full;
use serde::{Deserialize, Serialize};

/// The request path of subscription `id`'s control URL, plus `rest`
/// (`""`, `"/claim"`, `"/ack"`).
pub fn subscription_path(target: &Target, id: &str, rest: &str) -> String {
    target.stream_path(&format!("__ds/subscriptions/{id}{rest}"))
}

/// The body of a pull-wake subscription's `PUT` (§6.2).
#[derive(Debug, Clone, Serialize)]
pub struct PullWakeSpec<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub pattern: &'a str,
    pub wake_stream: &'a str,
    pub lease_ttl_ms: u64,
}

impl<'a> PullWakeSpec<'a> {
    pub fn new(pattern: &'a str, wake_stream: &'a str, lease_ttl_ms: u64) -> PullWakeSpec<'a> {
        PullWakeSpec {
            kind: "pull-wake",
            pattern,
            wake_stream,
            lease_ttl_ms,
        }
    }
}

/// One linked stream of a claim's snapshot (§7.2); other fields are
/// ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StreamStatus {
    pub path: String,
    pub tail_offset: String,
    pub has_pending: bool,
}

/// A successful claim (§7.2).
#[derive(Debug, Clone, Deserialize)]
pub struct Claim {
    pub wake_id: String,
    pub generation: u64,
    pub token: String,
    pub streams: Vec<StreamStatus>,
}

/// A `409` answer: `ALREADY_CLAIMED`, `NOTHING_PENDING`, `FENCED`, or
/// whatever code the server sent (`unknown` when it sent none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub code: String,
}

impl Conflict {
    /// The conflict a `409` body describes: `{"error":{"code":"…"}}`.
    pub fn from_body(body: &[u8]) -> Conflict {
        #[derive(Deserialize)]
        struct Body {
            error: Inner,
        }
        #[derive(Deserialize)]
        struct Inner {
            code: String,
        }
        let code = serde_json::from_slice::<Body>(body)
            .map(|body| body.error.code)
            .unwrap_or_else(|_| "unknown".to_owned());
        Conflict { code }
    }
}

/// One processed offset of an ack.
#[derive(Debug, Clone, Serialize)]
pub struct AckEntry<'a> {
    pub stream: &'a str,
    pub offset: &'a str,
}

/// The body of an ack (§7.2).
#[derive(Debug, Clone, Serialize)]
pub struct AckBody<'a> {
    pub wake_id: &'a str,
    pub generation: u64,
    pub acks: Vec<AckEntry<'a>>,
    pub done: bool,
}

/// The answer to an ack with `done: true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Acked {
    /// Pending work remained, so another wake follows.
    pub next_wake: bool,
}

/// A wake event as the server appends it to the wake stream (§7.2);
/// other fields are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct WakeEvent {
    #[serde(rename = "type")]
    pub kind: String,
    pub subscription_id: String,
    pub generation: u64,
}

/// The wake events of one read of a JSON wake stream: an array of
/// messages (or a single message).
pub fn parse_wake_events(text: &str) -> Result<Vec<WakeEvent>, serde_json::Error> {
    match serde_json::from_str::<Vec<WakeEvent>>(text) {
        Ok(events) => Ok(events),
        Err(error) => serde_json::from_str::<WakeEvent>(text)
            .map(|event| vec![event])
            .map_err(|_| error),
    }
}

/// Sends a control request with a JSON body (and a bearer token when
/// given, which replaces the target's own).
async fn send_json(
    connection: &mut Connection,
    op: &'static str,
    method: Method,
    path: &str,
    body: Bytes,
    bearer: Option<&str>,
) -> Result<Reply, OpError> {
    let mut builder = connection
        .target()
        .request(method, path)
        .header(CONTENT_TYPE, JSON);
    if let Some(token) = bearer
        && let Some(headers) = builder.headers_mut()
    {
        let value = http::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            OpError::Protocol {
                op,
                message: "the claim token cannot go in an HTTP header".to_owned(),
            }
        })?;
        headers.insert(AUTHORIZATION, value);
    }
    let request = builder
        .body(Full::new(body))
        .map_err(|cause| OpError::Build { op, cause })?;
    connection
        .send(request)
        .await
        .map_err(|cause| OpError::Transport { op, cause })
}

fn to_json(op: &'static str, value: &impl Serialize) -> Result<Bytes, OpError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|error| OpError::Protocol {
            op,
            message: format!("cannot encode the body: {error}"),
        })
}

fn from_json<'a, T: Deserialize<'a>>(op: &'static str, reply: &'a Reply) -> Result<T, OpError> {
    serde_json::from_slice(&reply.body).map_err(|error| OpError::Protocol {
        op,
        message: format!("unreadable {} answer: {error}", reply.status),
    })
}

/// Creates (201) or re-confirms (200) a pull-wake subscription.
pub async fn put_subscription(
    connection: &mut Connection,
    id: &str,
    spec: &PullWakeSpec<'_>,
) -> Result<Reply, OpError> {
    const OP: &str = "create subscription";
    let path = subscription_path(connection.target(), id, "");
    let reply = send_json(connection, OP, Method::PUT, &path, to_json(OP, spec)?, None).await?;
    if reply.status.is_success() {
        Ok(reply)
    } else {
        Err(status_error(OP, &reply))
    }
}

/// Deletes a subscription (204).
pub async fn delete_subscription(connection: &mut Connection, id: &str) -> Result<(), OpError> {
    const OP: &str = "delete subscription";
    let path = subscription_path(connection.target(), id, "");
    let reply = send_json(connection, OP, Method::DELETE, &path, Bytes::new(), None).await?;
    if reply.status.is_success() {
        Ok(())
    } else {
        Err(status_error(OP, &reply))
    }
}

/// Claims the subscription's wake for `worker`.
pub async fn claim(
    connection: &mut Connection,
    id: &str,
    worker: &str,
) -> Result<Result<Claim, Conflict>, OpError> {
    const OP: &str = "claim";
    #[derive(Serialize)]
    struct Body<'a> {
        worker: &'a str,
    }
    let path = subscription_path(connection.target(), id, "/claim");
    let body = to_json(OP, &Body { worker })?;
    let reply = send_json(connection, OP, Method::POST, &path, body, None).await?;
    match reply.status {
        status if status.is_success() => Ok(Ok(from_json(OP, &reply)?)),
        StatusCode::CONFLICT => Ok(Err(Conflict::from_body(&reply.body))),
        _ => Err(status_error(OP, &reply)),
    }
}

/// Acks a claimed wake with the claim's token.
pub async fn ack(
    connection: &mut Connection,
    id: &str,
    token: &str,
    body: &AckBody<'_>,
) -> Result<Result<Acked, Conflict>, OpError> {
    const OP: &str = "ack";
    let path = subscription_path(connection.target(), id, "/ack");
    let body = to_json(OP, body)?;
    let reply = send_json(connection, OP, Method::POST, &path, body, Some(token)).await?;
    match reply.status {
        status if status.is_success() => Ok(Ok(from_json(OP, &reply)?)),
        StatusCode::CONFLICT => Ok(Err(Conflict::from_body(&reply.body))),
        _ => Err(status_error(OP, &reply)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_paths_sit_under_the_stream_base() {
        let target = Target::new("http://127.0.0.1:1/v1/stream", None).unwrap();
        assert_eq!(
            subscription_path(&target, "sub-1", "/claim"),
            "/v1/stream/__ds/subscriptions/sub-1/claim"
        );
        assert_eq!(
            subscription_path(&target, "sub-1", ""),
            "/v1/stream/__ds/subscriptions/sub-1"
        );
    }

    #[test]
    fn specs_and_acks_encode_as_the_protocol_spells_them() {
        let spec = serde_json::to_value(PullWakeSpec::new("**", "wake", 30_000)).unwrap();
        assert_eq!(
            spec,
            serde_json::json!({"type":"pull-wake","pattern":"**","wake_stream":"wake","lease_ttl_ms":30000})
        );
        let ack = AckBody {
            wake_id: "w1",
            generation: 7,
            acks: vec![AckEntry {
                stream: "a",
                offset: "0_5",
            }],
            done: true,
        };
        assert_eq!(
            serde_json::to_value(&ack).unwrap(),
            serde_json::json!({"wake_id":"w1","generation":7,"acks":[{"stream":"a","offset":"0_5"}],"done":true})
        );
    }

    #[test]
    fn claims_parse_and_ignore_extra_fields() {
        let claim: Claim = serde_json::from_str(
            r#"{"wake_id":"w","generation":3,"token":"t","lease_ttl_ms":30000,
                "streams":[{"path":"a","link_type":"glob","acked_offset":"0_1",
                            "tail_offset":"0_9","has_pending":true}]}"#,
        )
        .unwrap();
        assert_eq!(claim.generation, 3);
        assert_eq!(
            claim.streams,
            vec![StreamStatus {
                path: "a".into(),
                tail_offset: "0_9".into(),
                has_pending: true
            }]
        );
    }

    #[test]
    fn conflict_codes_are_read_or_unknown() {
        let body = br#"{"error":{"code":"ALREADY_CLAIMED","current_holder":"w2","generation":7}}"#;
        assert_eq!(Conflict::from_body(body).code, "ALREADY_CLAIMED");
        assert_eq!(Conflict::from_body(b"{}").code, "unknown");
        assert_eq!(Conflict::from_body(b"not json").code, "unknown");
    }

    #[test]
    fn wake_events_parse_from_arrays_and_single_objects() {
        let text = r#"[{"type":"wake","subscription_id":"s","stream":"a","generation":1,"ts":5},
                       {"type":"wake","subscription_id":"s","stream":"b","generation":2,"ts":6}]"#;
        let events = parse_wake_events(text).unwrap();
        assert_eq!(
            events.iter().map(|e| e.generation).collect::<Vec<_>>(),
            [1, 2]
        );
        let single = parse_wake_events(
            r#"{"type":"wake","subscription_id":"s","stream":"a","generation":4,"ts":5}"#,
        )
        .unwrap();
        assert_eq!(single[0].generation, 4);
        assert_eq!(parse_wake_events("[]").unwrap(), vec![]);
        assert!(parse_wake_events(r#"[{"type":"wake"}]"#).is_err());
    }
}
