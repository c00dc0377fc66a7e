//! The pull-wake consumer: a reader that follows the wake stream live
//! (SSE, reopened from the last `streamNextOffset` when the server ends
//! the response, or long-poll) and stamps each wake event with its arrival
//! time, and a worker that claims each wake, acks what the claim shows
//! and measures how late the wake came (see [`WakeSample`]).
//!
//! The two are separate tasks so that a wake's arrival is timed when it
//! arrives, not when the worker is done with the wake before it.

use super::ledger::{Ledger, WakeSample};
use crate::client::{Connection, HttpError};
use crate::control::{self, AckBody, AckEntry, Claim, parse_wake_events};
use crate::progress::Counters;
use crate::protocol::{self, OpError, ReadMode, START_OFFSET, read_request, status_error};
use crate::scenarios::delivery::Transport;
use crate::sse::SseParser;
use crate::stats::{ErrorTally, LatencyRecorder, LatencySummary, StatsError};
use http_body_util::BodyExt;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The worker name claims carry.
const WORKER: &str = "w1";

/// Extra time a long-poll request may take beyond `--request-timeout`
/// (servers hold it for up to their long-poll timeout).
const LONG_POLL_ALLOWANCE: Duration = Duration::from_secs(60);

/// Pause after a failed request before trying again.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Which streams of a claim the worker acks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AckScope {
    /// The streams with `has_pending: true`, at their tail: what a worker
    /// that processed the new data acks.
    Pending,
    /// Every stream of the claim's snapshot, at its tail (the snapshot
    /// lists every linked stream).
    All,
}

/// The clock appenders and consumer share: microseconds since the run's
/// origin on this process's monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    pub fn start() -> Clock {
        Clock {
            origin: Instant::now(),
        }
    }

    pub fn now_us(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

/// What the consumer works with.
pub struct ConsumerPlan {
    pub subscription: String,
    pub wake_stream: String,
    /// The stream names, by index in the ledger.
    pub streams: Arc<Vec<String>>,
    pub transport: Transport,
    pub ack_scope: AckScope,
    pub clock: Clock,
    /// Wakes arriving after this time (the end of the load) are handled
    /// but not timed.
    pub load_end_us: watch::Receiver<Option<u64>>,
}

/// What the consumer counted.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumerOutcome {
    /// Wake events read from the wake stream.
    pub wake_events: u64,
    /// Wake events of a generation already claimed, skipped.
    pub stale_wake_events: u64,
    /// Successful claims.
    pub claims: u64,
    /// Claims answered `409`, by code.
    pub claim_conflicts: BTreeMap<String, u64>,
    /// Successful acks (`done: true`).
    pub acks: u64,
    /// Acks answered `409`, by code.
    pub ack_conflicts: BTreeMap<String, u64>,
    /// Acks that said another wake follows.
    pub next_wakes: u64,
    /// Stream offsets acked, summed over acks.
    pub streams_acked: u64,
    /// Streams with pending data per claim, on average.
    pub pending_per_claim: f64,
    /// See [`WakeSample::wake_us`]; wakes that arrived during the load.
    pub wake_latency: LatencySummary,
    /// See [`WakeSample::data_wait_us`].
    pub data_wait: LatencySummary,
    /// Wake-stream connections or requests after the first.
    pub reconnects: u64,
    pub errors: ErrorTally,
}

/// A wake event as it arrived.
struct Arrival {
    generation: u64,
    received_us: u64,
}

/// The running consumer.
pub struct Consumer {
    reader: tokio::task::JoinHandle<ReaderTally>,
    worker: tokio::task::JoinHandle<WorkerTally>,
    cancel: CancellationToken,
}

impl Consumer {
    /// Starts reader and worker; returns once the reader's first request
    /// got its answer (or failed), so no wake is missed by connecting late.
    pub async fn start(
        plan: ConsumerPlan,
        reader_connection: Connection,
        worker_connection: Connection,
        ledger: Arc<Ledger>,
        counters: Counters,
        request_timeout: Duration,
    ) -> Result<Consumer, StatsError> {
        let plan = Arc::new(plan);
        let cancel = CancellationToken::new();
        let (arrivals, inbox) = mpsc::unbounded_channel();
        let (connected, mut first_answer) = watch::channel(false);
        let reader = Reader {
            plan: Arc::clone(&plan),
            connection: reader_connection,
            arrivals,
            connected,
            counters: counters.clone(),
            cancel: cancel.clone(),
            request_timeout,
            offset: START_OFFSET.to_owned(),
            tally: ReaderTally::default(),
        };
        let worker = Worker {
            plan,
            connection: worker_connection,
            ledger,
            counters,
            cancel: cancel.clone(),
            idle_since_us: 0,
            last_generation: 0,
            tally: WorkerTally::new()?,
        };
        let reader = tokio::spawn(reader.run());
        let worker = tokio::spawn(worker.run(inbox));
        let _ = first_answer.wait_for(|answered| *answered).await;
        Ok(Consumer {
            reader,
            worker,
            cancel,
        })
    }

    /// Stops both tasks and sums up.
    pub async fn stop(self) -> anyhow::Result<ConsumerOutcome> {
        self.cancel.cancel();
        let reader = self.reader.await?;
        let worker = self.worker.await?;
        let mut errors = reader.errors;
        errors.merge(&worker.errors);
        let claims = worker.claims;
        Ok(ConsumerOutcome {
            wake_events: reader.wake_events,
            stale_wake_events: worker.stale,
            claims,
            claim_conflicts: worker.claim_conflicts,
            acks: worker.acks,
            ack_conflicts: worker.ack_conflicts,
            next_wakes: worker.next_wakes,
            streams_acked: worker.streams_acked,
            pending_per_claim: if claims > 0 {
                worker.pending as f64 / claims as f64
            } else {
                0.0
            },
            wake_latency: worker.wake_latency.summary(),
            data_wait: worker.data_wait.summary(),
            reconnects: reader.requests.saturating_sub(1),
            errors,
        })
    }
}

#[derive(Debug, Default)]
struct ReaderTally {
    wake_events: u64,
    /// SSE responses opened, or long-poll requests answered.
    requests: u64,
    errors: ErrorTally,
}

/// Follows the wake stream.
struct Reader {
    plan: Arc<ConsumerPlan>,
    connection: Connection,
    arrivals: mpsc::UnboundedSender<Arrival>,
    /// Set once the first request was answered or failed.
    connected: watch::Sender<bool>,
    counters: Counters,
    cancel: CancellationToken,
    request_timeout: Duration,
    offset: String,
    tally: ReaderTally,
}

impl Reader {
    async fn run(mut self) -> ReaderTally {
        while !self.cancel.is_cancelled() {
            let outcome = match self.plan.transport {
                Transport::Sse => self.sse_session().await,
                Transport::LongPoll => self.long_poll().await,
            };
            self.connected.send_replace(true);
            if let Err(error) = outcome {
                self.counters.add_error();
                self.tally.errors.record(&error);
                tokio::select! {
                    () = tokio::time::sleep(RETRY_PAUSE) => {}
                    () = self.cancel.cancelled() => {}
                }
            }
        }
        self.tally
    }

    /// One SSE response, until the server ends it or the run stops.
    async fn sse_session(&mut self) -> Result<(), OpError> {
        const OP: &str = "wake sse";
        let request = read_request(
            self.connection.target(),
            &self.plan.wake_stream,
            &self.offset,
            ReadMode::Sse,
        )
        .map_err(|cause| OpError::Build { op: OP, cause })?;
        let response = tokio::select! {
            opened = self.connection.open(request) => opened,
            () = self.cancel.cancelled() => return Ok(()),
        }
        .map_err(|cause| OpError::Transport { op: OP, cause })?;
        if !response.status().is_success() {
            return Err(OpError::Status {
                op: OP,
                status: response.status(),
                body: String::new(),
            });
        }
        self.tally.requests += 1;
        self.connected.send_replace(true);
        let mut body = response.into_body();
        let mut parser = SseParser::new();
        loop {
            let frame = tokio::select! {
                frame = body.frame() => frame,
                () = self.cancel.cancelled() => return Ok(()),
            };
            let frame = match frame {
                None => return Ok(()),
                Some(Err(cause)) => {
                    return Err(OpError::Transport {
                        op: OP,
                        cause: HttpError::Body(cause),
                    });
                }
                Some(Ok(frame)) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            // One arrival time for everything in this chunk.
            let received_us = self.plan.clock.now_us();
            for event in parser.feed(&data) {
                let text = event.data();
                match event.event.as_str() {
                    "data" => self.received(&text, received_us),
                    "control" => match control_offset(&text) {
                        Some(offset) => self.offset = offset,
                        None => self.tally.errors.record_protocol(format!(
                            "control event without streamNextOffset: {text:.80}"
                        )),
                    },
                    _ => {}
                }
            }
        }
    }

    /// One long-poll request (a catch-up read first).
    async fn long_poll(&mut self) -> Result<(), OpError> {
        const OP: &str = "wake long-poll";
        let mode = if self.tally.requests == 0 {
            ReadMode::CatchUp
        } else {
            ReadMode::LongPoll
        };
        let request = read_request(
            self.connection.target(),
            &self.plan.wake_stream,
            &self.offset,
            mode,
        )
        .map_err(|cause| OpError::Build { op: OP, cause })?;
        let timeout = self.request_timeout + LONG_POLL_ALLOWANCE;
        let reply = tokio::select! {
            reply = self.connection.send_within(request, timeout) => reply,
            () = self.cancel.cancelled() => return Ok(()),
        }
        .map_err(|cause| OpError::Transport { op: OP, cause })?;
        let received_us = self.plan.clock.now_us();
        if !reply.status.is_success() {
            return Err(status_error(OP, &reply));
        }
        self.tally.requests += 1;
        self.offset = protocol::next_offset(OP, &reply)?;
        if !reply.body.is_empty() {
            self.received(&String::from_utf8_lossy(&reply.body), received_us);
        }
        Ok(())
    }

    fn received(&mut self, text: &str, received_us: u64) {
        match parse_wake_events(text) {
            Ok(events) => {
                for event in events {
                    if event.kind != "wake" || event.subscription_id != self.plan.subscription {
                        continue;
                    }
                    self.tally.wake_events += 1;
                    // The worker stops only after the reader.
                    let _ = self.arrivals.send(Arrival {
                        generation: event.generation,
                        received_us,
                    });
                }
            }
            Err(error) => {
                self.counters.add_error();
                self.tally
                    .errors
                    .record_protocol(format!("unreadable wake events ({error}): {text:.80}"));
            }
        }
    }
}

/// `streamNextOffset` of an SSE control event.
fn control_offset(data: &str) -> Option<String> {
    let control: serde_json::Value = serde_json::from_str(data).ok()?;
    control.get("streamNextOffset")?.as_str().map(str::to_owned)
}

struct WorkerTally {
    stale: u64,
    claims: u64,
    claim_conflicts: BTreeMap<String, u64>,
    acks: u64,
    ack_conflicts: BTreeMap<String, u64>,
    next_wakes: u64,
    streams_acked: u64,
    pending: u64,
    wake_latency: LatencyRecorder,
    data_wait: LatencyRecorder,
    errors: ErrorTally,
}

impl WorkerTally {
    fn new() -> Result<WorkerTally, StatsError> {
        Ok(WorkerTally {
            stale: 0,
            claims: 0,
            claim_conflicts: BTreeMap::new(),
            acks: 0,
            ack_conflicts: BTreeMap::new(),
            next_wakes: 0,
            streams_acked: 0,
            pending: 0,
            wake_latency: LatencyRecorder::new()?,
            data_wait: LatencyRecorder::new()?,
            errors: ErrorTally::default(),
        })
    }
}

/// Claims and acks wakes, one at a time.
struct Worker {
    plan: Arc<ConsumerPlan>,
    connection: Connection,
    ledger: Arc<Ledger>,
    counters: Counters,
    cancel: CancellationToken,
    /// When the previous wake ended (its `done` ack was sent): before
    /// that, the subscription could not wake again.
    idle_since_us: u64,
    /// The generation of the last claim.
    last_generation: u64,
    tally: WorkerTally,
}

impl Worker {
    async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<Arrival>) -> WorkerTally {
        let index: HashMap<String, usize> = self
            .plan
            .streams
            .iter()
            .enumerate()
            .map(|(index, name)| (name.clone(), index))
            .collect();
        loop {
            let arrival = tokio::select! {
                arrival = inbox.recv() => match arrival {
                    Some(arrival) => arrival,
                    None => break,
                },
                () = self.cancel.cancelled() => break,
            };
            if arrival.generation <= self.last_generation {
                // Claiming now could only start a wake no event announced.
                self.tally.stale += 1;
                continue;
            }
            if let Err(error) = self.handle(&arrival, &index).await {
                self.counters.add_error();
                self.tally.errors.record(&error);
            }
        }
        self.tally
    }

    /// Claims the wake, times it, acks it.
    async fn handle(
        &mut self,
        arrival: &Arrival,
        index: &HashMap<String, usize>,
    ) -> Result<(), OpError> {
        let claim =
            match control::claim(&mut self.connection, &self.plan.subscription, WORKER).await? {
                Ok(claim) => claim,
                Err(conflict) => {
                    *self.tally.claim_conflicts.entry(conflict.code).or_default() += 1;
                    return Ok(());
                }
            };
        self.tally.claims += 1;
        self.last_generation = claim.generation;
        self.time(arrival, &claim, index);
        let acks: Vec<AckEntry<'_>> = claim
            .streams
            .iter()
            .filter(|s| s.has_pending || self.plan.ack_scope == AckScope::All)
            .map(|s| AckEntry {
                stream: &s.path,
                offset: &s.tail_offset,
            })
            .collect();
        let body = AckBody {
            wake_id: &claim.wake_id,
            generation: claim.generation,
            acks,
            done: true,
        };
        let ack_sent_us = self.plan.clock.now_us();
        let answer = control::ack(
            &mut self.connection,
            &self.plan.subscription,
            &claim.token,
            &body,
        )
        .await?;
        match answer {
            Ok(acked) => {
                self.idle_since_us = ack_sent_us;
                self.tally.acks += 1;
                self.tally.next_wakes += u64::from(acked.next_wake);
                self.tally.streams_acked += body.acks.len() as u64;
                for entry in &body.acks {
                    if let Some(&stream) = index.get(entry.stream) {
                        self.ledger.acked(stream, entry.offset);
                    }
                }
            }
            Err(conflict) => {
                *self.tally.ack_conflicts.entry(conflict.code).or_default() += 1;
            }
        }
        Ok(())
    }

    /// Records the wake's latency: the oldest uncovered append among the
    /// streams the claim shows pending is the one that made it pending.
    fn time(&mut self, arrival: &Arrival, claim: &Claim, index: &HashMap<String, usize>) {
        let pending: Vec<usize> = claim
            .streams
            .iter()
            .filter(|s| s.has_pending)
            .filter_map(|s| index.get(&s.path).copied())
            .collect();
        self.tally.pending += pending.len() as u64;
        let during_load = self
            .plan
            .load_end_us
            .borrow()
            .is_none_or(|end| arrival.received_us <= end);
        if !during_load {
            return;
        }
        let oldest = pending
            .iter()
            .filter_map(|&stream| self.ledger.oldest(stream))
            .min();
        if let Some(oldest) = oldest {
            let sample = WakeSample::new(arrival.received_us, oldest, self.idle_since_us);
            self.tally.wake_latency.record_micros(sample.wake_us);
            self.tally.data_wait.record_micros(sample.data_wait_us);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_events_give_the_next_offset() {
        assert_eq!(
            control_offset(r#"{"streamNextOffset":"0_9","upToDate":true}"#).as_deref(),
            Some("0_9")
        );
        assert_eq!(control_offset(r#"{"upToDate":true}"#), None);
    }
}
