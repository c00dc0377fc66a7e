//! The JSON of the subscription APIs (§6.3, §7): what the server sends
//! (subscription views, webhook bodies, claims, wake events) and the
//! bodies of callbacks, acks, claims and releases it reads.

use super::state::{HandedOut, Link, StreamStatus};
use crate::protocol::offset::Offset;
use serde::Deserialize;
use serde_json::{Value, json};

/// One linked stream as `GET` shows it (§6.3).
pub fn link_view(path: &str, link: &Link) -> Value {
    json!({
        "path": path,
        "link_type": link.link_type().as_str(),
        "acked_offset": link.acked.to_string(),
    })
}

/// One linked stream as a wake shows it (§7.1, §7.2).
pub fn status_view(status: &StreamStatus) -> Value {
    json!({
        "path": status.path,
        "link_type": status.link_type.as_str(),
        "acked_offset": status.acked.to_string(),
        "tail_offset": status.tail.to_string(),
        "has_pending": status.has_pending,
    })
}

/// The body POSTed to a webhook (§7.1).
pub fn webhook_body(id: &str, handed: &HandedOut, callback_url: &str) -> Value {
    let wake = &handed.wake;
    json!({
        "subscription_id": id,
        "wake_id": wake.id,
        "generation": wake.generation,
        "streams": wake.snapshot.iter().map(status_view).collect::<Vec<_>>(),
        "callback_url": callback_url,
        "callback_token": handed.token,
    })
}

/// A successful claim (§7.2).
pub fn claim_view(handed: &HandedOut, lease_ttl_ms: u64) -> Value {
    let wake = &handed.wake;
    json!({
        "wake_id": wake.id,
        "generation": wake.generation,
        "token": handed.token,
        "streams": wake.snapshot.iter().map(status_view).collect::<Vec<_>>(),
        "lease_ttl_ms": lease_ttl_ms,
    })
}

/// The event a pull-wake subscription writes to its wake stream (§7.2).
pub fn wake_event(id: &str, stream: &str, generation: u64, ts_ms: u64) -> Value {
    json!({
        "type": "wake",
        "subscription_id": id,
        "stream": stream,
        "generation": generation,
        "ts": ts_ms,
    })
}

/// Longest worker name a claim may carry.
pub const MAX_WORKER_BYTES: usize = 256;
/// Most acks one callback or ack request may carry.
pub const MAX_ACKS: usize = 10_000;

/// The body of a claim.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimBody {
    pub worker: String,
}

/// The body of a callback, ack or release: the wake it belongs to, and
/// (not for release) the offsets processed and whether the work is done.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    pub wake_id: String,
    pub generation: u64,
    #[serde(default)]
    pub acks: Vec<AckEntry>,
    #[serde(default)]
    pub done: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckEntry {
    pub stream: String,
    pub offset: String,
}

impl AckBody {
    /// The acks with their offsets parsed.
    pub fn offsets(&self) -> Result<Vec<(String, Offset)>, String> {
        if self.acks.len() > MAX_ACKS {
            return Err(format!("more than {MAX_ACKS} acks"));
        }
        self.acks
            .iter()
            .map(|ack| {
                let offset = ack
                    .offset
                    .parse::<Offset>()
                    .map_err(|e| format!("{:?}: {e}", ack.offset))?;
                Ok((ack.stream.clone(), offset))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_bodies_parse_with_defaults_and_refuse_bad_offsets() {
        let body: AckBody = serde_json::from_str(r#"{"wake_id":"w","generation":3}"#).unwrap();
        assert!(!body.done && body.acks.is_empty());
        let offset = Offset::new(1, 2).to_string();
        let body: AckBody = serde_json::from_str(&format!(
            r#"{{"wake_id":"w","generation":3,"acks":[{{"stream":"a","offset":"{offset}"}}],"done":true}}"#
        ))
        .unwrap();
        assert_eq!(
            body.offsets().unwrap(),
            vec![("a".into(), Offset::new(1, 2))]
        );
        let bad: AckBody = serde_json::from_str(
            r#"{"wake_id":"w","generation":3,"acks":[{"stream":"a","offset":"-1"}]}"#,
        )
        .unwrap();
        assert!(bad.offsets().is_err());
        assert!(serde_json::from_str::<AckBody>(r#"{"wake_id":"w"}"#).is_err());
    }
}
