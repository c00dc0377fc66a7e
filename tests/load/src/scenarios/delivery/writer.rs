//! The writer of a delivery run: appends one numbered, time-stamped
//! message at a time to the stream, at the planned rate, until the
//! deadline.

use super::{DeliveryPlan, LiveMessage, Shared};
use crate::protocol::{JSON, append_to_stream};
use crate::scenarios::RunContext;
use crate::stats::{ErrorTally, LatencyRecorder};
use anyhow::Context;
use bytes::Bytes;
use std::time::Duration;
use tokio::time::Instant;

/// Approximate JSON overhead of a message without padding.
const MESSAGE_OVERHEAD: usize = 48;

/// What the writer counted.
pub(super) struct WriterTally {
    pub(super) sent: u64,
    pub(super) latency: LatencyRecorder,
    pub(super) errors: ErrorTally,
}

/// Appends one message every `1 / rate` seconds until the deadline. A
/// failed append is not retried; its sequence number goes with the next
/// message.
pub(super) async fn write_messages(
    context: &RunContext,
    plan: &DeliveryPlan,
    shared: &Shared,
    deadline: Instant,
) -> anyhow::Result<WriterTally> {
    let mut connection = context.connection();
    let interval = Duration::try_from_secs_f64(1.0 / plan.rate)
        .context("--rate must be a positive number of messages per second")?;
    let pad = "x".repeat(plan.message_size.saturating_sub(MESSAGE_OVERHEAD));
    let mut tally = WriterTally {
        sent: 0,
        latency: LatencyRecorder::new()?,
        errors: ErrorTally::default(),
    };
    let mut next_send = Instant::now();
    loop {
        tokio::time::sleep_until(next_send).await;
        if Instant::now() >= deadline {
            break;
        }
        let message = LiveMessage {
            seq: tally.sent,
            sent_us: shared.now_us(),
            pad: pad.clone(),
        };
        let body = serde_json::to_vec(&[message])?;
        let started = Instant::now();
        match append_to_stream(&mut connection, &plan.stream, JSON, Bytes::from(body), None).await {
            Ok(_) => {
                tally.latency.record(started.elapsed());
                tally.sent += 1;
            }
            Err(error) => {
                shared.counters.add_error();
                tally.errors.record(&error);
            }
        }
        next_send += interval;
        // A writer more than a second behind skips ahead instead of
        // bursting to catch up.
        let now = Instant::now();
        if now > next_send + Duration::from_secs(1) {
            next_send = now;
        }
    }
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_serialize_near_the_requested_size() {
        let message = LiveMessage {
            seq: 123,
            sent_us: 12_345_678,
            pad: "x".repeat(100 - MESSAGE_OVERHEAD),
        };
        let size = serde_json::to_vec(&[message]).unwrap().len();
        assert!((90..=110).contains(&size), "{size}");
    }
}
