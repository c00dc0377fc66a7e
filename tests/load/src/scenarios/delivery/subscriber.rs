//! One subscriber of a delivery run: follows the stream over SSE (one
//! long response, reopened from the last `streamNextOffset` when the
//! server ends it) or long-poll (one request per batch), and keeps the
//! books: which sequence numbers arrived, how late, and what went wrong.

use super::{ANOMALY_EXAMPLES, DeliveryPlan, LiveMessage, Shared, Transport};
use crate::client::{Connection, HttpError};
use crate::protocol::{self, OpError, ReadMode, START_OFFSET, read_request, status_error};
use crate::sse::{SseEvent, SseParser};
use crate::stats::ErrorTally;
use crate::tracking::{Arrival, SequenceTracker};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio_util::sync::CancellationToken;

/// Extra time a long-poll request may take beyond `--request-timeout`
/// (servers hold it for up to their long-poll timeout, 30 s by default).
const LONG_POLL_ALLOWANCE: Duration = Duration::from_secs(60);

/// Pause after a failed request or connection before trying again.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// How one subscriber session (an SSE response, or one long-poll
/// request) ended.
enum SessionEnd {
    /// The run stopped the subscriber.
    Stopped,
    /// The subscriber holds every message the writer sent.
    Complete,
    /// The server ended an SSE response normally; reconnect.
    ServerEnded,
    /// Long-poll: the request succeeded; send the next.
    Continue,
    /// A connection or request failed; pause, then retry.
    Failed,
}

/// One subscriber's task.
pub(super) struct Subscriber {
    pub(super) index: usize,
    pub(super) connection: Connection,
    pub(super) plan: Arc<DeliveryPlan>,
    pub(super) shared: Arc<Shared>,
    pub(super) cancel: CancellationToken,
    /// The number of messages sent, once the writer has stopped.
    pub(super) final_watch: watch::Receiver<Option<u64>>,
    pub(super) request_timeout: Duration,
}

/// What one subscriber counted.
pub(super) struct SubscriberTally {
    pub(super) tracker: SequenceTracker,
    /// Successful connections (SSE) or, for long-poll, 1 once the first
    /// request succeeded.
    pub(super) sessions: u64,
    pub(super) failures_after_connect: u64,
    pub(super) connected_at_end: bool,
    pub(super) errors: ErrorTally,
    /// The first few duplicated or reordered arrivals, described.
    pub(super) anomalies: Vec<String>,
}

impl SubscriberTally {
    fn new() -> SubscriberTally {
        SubscriberTally {
            tracker: SequenceTracker::new(),
            sessions: 0,
            failures_after_connect: 0,
            connected_at_end: false,
            errors: ErrorTally::default(),
            anomalies: Vec::new(),
        }
    }

    pub(super) fn stayed_connected(&self) -> bool {
        self.sessions > 0 && self.failures_after_connect == 0 && self.connected_at_end
    }
}

/// The mutable state of a subscriber, apart from its connection.
struct Progression {
    offset: String,
    final_sent: Option<u64>,
    tally: SubscriberTally,
    /// Held until the first connection attempt ends.
    first_attempt: Option<OwnedSemaphorePermit>,
    /// Latencies of the event being handled, recorded in one go.
    latency_batch: Vec<u64>,
    /// SSE events received on the current response.
    session_events: u64,
}

impl Progression {
    fn is_complete(&self) -> bool {
        self.final_sent
            .is_some_and(|sent| self.tally.tracker.has_all(sent))
    }

    /// Ends the first connection attempt (once).
    fn attempted(&mut self, shared: &Shared, succeeded: bool) {
        if let Some(permit) = self.first_attempt.take() {
            drop(permit);
            if succeeded {
                shared.first_successes.fetch_add(1, Ordering::Relaxed);
            }
            shared.first_attempts.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn fail(&mut self, shared: &Shared, error: &OpError) {
        shared.counters.add_error();
        self.tally.errors.record(error);
        if self.tally.sessions > 0 {
            self.tally.failures_after_connect += 1;
        }
        self.attempted(shared, false);
    }

    /// Takes in a batch of messages (a JSON array, or one object).
    fn receive(&mut self, index: usize, shared: &Shared, text: &str) {
        let messages = match parse_messages(text) {
            Ok(messages) => messages,
            Err(error) => {
                shared.counters.add_error();
                self.tally
                    .errors
                    .record_protocol(format!("unreadable messages ({error}): {text:.80}"));
                return;
            }
        };
        let now_us = shared.now_us();
        self.latency_batch.clear();
        for message in &messages {
            let latency = now_us.saturating_sub(message.sent_us);
            // Latency counts first arrivals only.
            let anomaly = match self.tally.tracker.record(message.seq) {
                Arrival::InOrder => {
                    self.latency_batch.push(latency);
                    continue;
                }
                Arrival::Reordered => {
                    self.latency_batch.push(latency);
                    "after a later one"
                }
                Arrival::Duplicate => "again",
                Arrival::OutOfRange => {
                    self.tally
                        .errors
                        .record_protocol(format!("absurd sequence number {}", message.seq));
                    continue;
                }
            };
            if self.tally.anomalies.len() < ANOMALY_EXAMPLES {
                self.tally.anomalies.push(format!(
                    "subscriber {index} got seq {} {anomaly}, in a batch of {} read from offset {}",
                    message.seq,
                    messages.len(),
                    self.offset
                ));
            }
        }
        shared.latency.record_batch(index, &self.latency_batch);
        shared.counters.add_ops(messages.len() as u64);
    }
}

/// A JSON array of messages, or a single message.
fn parse_messages(text: &str) -> Result<Vec<LiveMessage>, serde_json::Error> {
    match serde_json::from_str::<Vec<LiveMessage>>(text) {
        Ok(messages) => Ok(messages),
        Err(error) => serde_json::from_str::<LiveMessage>(text)
            .map(|message| vec![message])
            .map_err(|_| error),
    }
}

impl Subscriber {
    pub(super) async fn run(mut self) -> anyhow::Result<SubscriberTally> {
        let permit = tokio::select! {
            permit = Arc::clone(&self.shared.connect_gate).acquire_owned() => permit?,
            _ = self.cancel.cancelled() => {
                self.shared.first_attempts.fetch_add(1, Ordering::Relaxed);
                return Ok(SubscriberTally::new());
            }
        };
        let mut state = Progression {
            offset: START_OFFSET.to_owned(),
            final_sent: None,
            tally: SubscriberTally::new(),
            first_attempt: Some(permit),
            latency_batch: Vec::new(),
            session_events: 0,
        };
        loop {
            let end = match self.plan.transport {
                Transport::Sse => self.sse_session(&mut state).await,
                Transport::LongPoll => self.long_poll_request(&mut state).await,
            };
            match end {
                SessionEnd::Stopped | SessionEnd::Complete => break,
                SessionEnd::Continue => {}
                // A server that ends responses at once must not make this
                // a busy loop.
                SessionEnd::ServerEnded if state.session_events > 0 => {}
                SessionEnd::ServerEnded | SessionEnd::Failed => {
                    state.tally.connected_at_end = false;
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY_PAUSE) => {}
                        _ = self.cancel.cancelled() => break,
                    }
                }
            }
        }
        // A subscriber stopped before its first attempt ended.
        state.attempted(&self.shared, false);
        if self.plan.transport == Transport::LongPoll && state.tally.sessions > 0 {
            self.shared.disconnected();
        }
        Ok(state.tally)
    }

    /// Notes that the writer stopped, if it did; `true` when the watch is
    /// gone (the run is over).
    fn observe_final(
        &mut self,
        state: &mut Progression,
        changed: Result<(), watch::error::RecvError>,
    ) -> bool {
        match changed {
            Ok(()) => {
                state.final_sent = *self.final_watch.borrow_and_update();
                false
            }
            Err(_) => true,
        }
    }

    /// One SSE response: open it, then handle events until it ends.
    async fn sse_session(&mut self, state: &mut Progression) -> SessionEnd {
        const OP: &str = "sse";
        let request = match read_request(
            self.connection.target(),
            &self.plan.stream,
            &state.offset,
            ReadMode::Sse,
        ) {
            Ok(request) => request,
            Err(cause) => {
                state.fail(&self.shared, &OpError::Build { op: OP, cause });
                return SessionEnd::Failed;
            }
        };
        let opened = tokio::select! {
            opened = self.connection.open(request) => opened,
            _ = self.cancel.cancelled() => return SessionEnd::Stopped,
        };
        let response = match opened {
            Ok(response) => response,
            Err(cause) => {
                state.fail(&self.shared, &OpError::Transport { op: OP, cause });
                return SessionEnd::Failed;
            }
        };
        if !response.status().is_success() {
            let error = OpError::Status {
                op: OP,
                status: response.status(),
                body: String::new(),
            };
            state.fail(&self.shared, &error);
            return SessionEnd::Failed;
        }
        state.attempted(&self.shared, true);
        state.tally.sessions += 1;
        state.session_events = 0;
        self.shared.connected();
        let end = self.follow_events(state, response.into_body()).await;
        state.tally.connected_at_end = matches!(end, SessionEnd::Stopped | SessionEnd::Complete);
        self.shared.disconnected();
        end
    }

    /// Reads events off an open SSE response.
    async fn follow_events(&mut self, state: &mut Progression, mut body: Incoming) -> SessionEnd {
        let mut parser = SseParser::new();
        loop {
            if state.is_complete() {
                return SessionEnd::Complete;
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return SessionEnd::Stopped,
                changed = self.final_watch.changed(), if state.final_sent.is_none() => {
                    if self.observe_final(state, changed) {
                        return SessionEnd::Stopped;
                    }
                }
                frame = body.frame() => match frame {
                    None => return SessionEnd::ServerEnded,
                    Some(Err(cause)) => {
                        let error = OpError::Transport { op: "sse", cause: HttpError::Body(cause) };
                        state.fail(&self.shared, &error);
                        return SessionEnd::Failed;
                    }
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            for event in parser.feed(&data) {
                                self.handle_event(state, event);
                            }
                        }
                    }
                },
            }
        }
    }

    fn handle_event(&self, state: &mut Progression, event: SseEvent) {
        state.session_events += 1;
        let data = event.data();
        match event.event.as_str() {
            "data" => state.receive(self.index, &self.shared, &data),
            "control" => match control_offset(&data) {
                Some(offset) => state.offset = offset,
                None => {
                    self.shared.counters.add_error();
                    state.tally.errors.record_protocol(format!(
                        "control event without streamNextOffset: {data:.80}"
                    ));
                }
            },
            _ => {}
        }
    }

    /// One long-poll request (the very first is a plain catch-up read, so
    /// the subscriber knows at once that it is connected).
    async fn long_poll_request(&mut self, state: &mut Progression) -> SessionEnd {
        const OP: &str = "long-poll";
        if state.is_complete() {
            return SessionEnd::Complete;
        }
        let mode = if state.tally.sessions == 0 {
            ReadMode::CatchUp
        } else {
            ReadMode::LongPoll
        };
        let request = match read_request(
            self.connection.target(),
            &self.plan.stream,
            &state.offset,
            mode,
        ) {
            Ok(request) => request,
            Err(cause) => {
                state.fail(&self.shared, &OpError::Build { op: OP, cause });
                return SessionEnd::Failed;
            }
        };
        let timeout = self.request_timeout + LONG_POLL_ALLOWANCE;
        let reply = {
            let exchange = self.connection.send_within(request, timeout);
            tokio::pin!(exchange);
            loop {
                tokio::select! {
                    reply = &mut exchange => break reply,
                    _ = self.cancel.cancelled() => {
                        state.tally.connected_at_end = state.tally.sessions > 0;
                        return SessionEnd::Stopped;
                    }
                    changed = self.final_watch.changed(), if state.final_sent.is_none() => {
                        match changed {
                            Ok(()) => state.final_sent = *self.final_watch.borrow_and_update(),
                            Err(_) => return SessionEnd::Stopped,
                        }
                        if state.is_complete() {
                            state.tally.connected_at_end = true;
                            return SessionEnd::Complete;
                        }
                    }
                }
            }
        };
        let reply = match reply {
            Ok(reply) => reply,
            Err(cause) => {
                state.fail(&self.shared, &OpError::Transport { op: OP, cause });
                return SessionEnd::Failed;
            }
        };
        if !reply.status.is_success() {
            state.fail(&self.shared, &status_error(OP, &reply));
            return SessionEnd::Failed;
        }
        let next = match protocol::next_offset(OP, &reply) {
            Ok(next) => next,
            Err(error) => {
                state.fail(&self.shared, &error);
                return SessionEnd::Failed;
            }
        };
        if state.tally.sessions == 0 {
            state.attempted(&self.shared, true);
            state.tally.sessions = 1;
            self.shared.connected();
        }
        state.tally.connected_at_end = true;
        if reply.status == http::StatusCode::OK && !reply.body.is_empty() {
            match std::str::from_utf8(&reply.body) {
                Ok(text) => state.receive(self.index, &self.shared, text),
                Err(_) => {
                    self.shared.counters.add_error();
                    state
                        .tally
                        .errors
                        .record_protocol("long-poll body is not UTF-8".to_owned());
                }
            }
        }
        state.offset = next;
        SessionEnd::Continue
    }
}

/// `streamNextOffset` of a control event.
fn control_offset(data: &str) -> Option<String> {
    let control: serde_json::Value = serde_json::from_str(data).ok()?;
    control.get("streamNextOffset")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_from_arrays_and_single_objects() {
        let batch = parse_messages(r#"[{"seq":1,"sent_us":10},{"seq":2,"sent_us":20,"pad":"xx"}]"#)
            .unwrap();
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[1].seq, 2);
        let single = parse_messages(r#"{"seq":3,"sent_us":30}"#).unwrap();
        assert_eq!(single[0].sent_us, 30);
        assert!(parse_messages("[]").unwrap().is_empty());
        assert!(parse_messages("nope").is_err());
    }

    #[test]
    fn control_events_give_the_next_offset() {
        assert_eq!(
            control_offset(r#"{"streamNextOffset":"0_42","upToDate":true}"#).as_deref(),
            Some("0_42")
        );
        assert_eq!(control_offset(r#"{"upToDate":true}"#), None);
        assert_eq!(control_offset("garbage"), None);
    }
}
