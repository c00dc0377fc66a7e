//! The live-delivery engine behind the `live` and `fanout` scenarios: one
//! writer appends numbered, time-stamped JSON messages to one stream at a
//! fixed rate; subscribers follow the stream over SSE or long-poll. Each
//! subscriber checks that it sees every message exactly once and in order,
//! and records each message's delivery latency (append sent → message
//! parsed), both clocks being the same monotonic clock of this process.
//!
//! A run has two steps, so the fan-out scenario can measure the server in
//! between: [`Delivery::connect`] starts the subscribers and waits until
//! each has tried its first connection; [`Delivery::run`] writes for the
//! duration, lets subscribers drain, stops them and sums up.
//!
//! * `writer` — the writer's loop.
//! * `subscriber` — one subscriber: SSE sessions, long-poll requests,
//!   and its bookkeeping.

mod subscriber;
mod writer;

use super::{RunContext, join_workers, per_second, seconds_since};
use crate::progress::{Counters, Progress};
use crate::stats::{ErrorTally, LatencySummary, ShardedLatency};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use subscriber::{Subscriber, SubscriberTally};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use writer::write_messages;

/// Latency shards: enough that thousands of subscribers rarely meet.
const LATENCY_SHARDS: usize = 64;

/// How many examples of lost, duplicated or reordered messages a run
/// describes.
const ANOMALY_EXAMPLES: usize = 5;

/// How subscribers follow the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// `live=sse`: one long response of Server-Sent Events.
    Sse,
    /// `live=long-poll`: one request per batch of new messages.
    LongPoll,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::LongPoll => "long-poll",
        }
    }
}

/// The message the writer appends and subscribers parse.
#[derive(Debug, Serialize, Deserialize)]
struct LiveMessage {
    seq: u64,
    sent_us: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pad: String,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct DeliveryPlan {
    /// The JSON stream, which must exist and be empty.
    pub stream: String,
    /// Messages per second from the writer.
    pub rate: f64,
    pub subscribers: usize,
    pub transport: Transport,
    /// Approximate bytes per message.
    pub message_size: usize,
    /// Subscribers opening their first connection at the same time.
    pub connect_concurrency: usize,
    /// How long to wait for every subscriber's first connection.
    pub connect_timeout: Duration,
    /// How long subscribers may take to catch up after the writer stops.
    pub drain: Duration,
    /// The progress line's scenario name.
    pub scenario: &'static str,
}

/// What the writer did.
#[derive(Debug, Clone, Serialize)]
pub struct WriterOutcome {
    /// Messages appended successfully.
    pub sent: u64,
    /// Messages per second asked for.
    pub requested_rate: f64,
    /// Messages per second actually achieved (one append at a time, so
    /// slow appends lower it).
    pub rate: f64,
    /// Append latency.
    pub latency: LatencySummary,
    pub errors: ErrorTally,
}

/// What the subscribers saw.
#[derive(Debug, Clone, Serialize)]
pub struct SubscribersOutcome {
    pub subscribers: usize,
    /// Subscribers connected when the writer started.
    pub connected_before_writing: usize,
    /// Subscribers that never got a connection.
    pub never_connected: usize,
    /// Most subscribers connected at one time.
    pub peak_connected: usize,
    /// Subscribers connected from their first connection to the end with
    /// no failed connection or request in between.
    pub stayed_connected: usize,
    /// Subscribers that received every message.
    pub complete: usize,
    /// Distinct messages received, summed over subscribers.
    pub deliveries: u64,
    pub deliveries_per_s: f64,
    /// Messages sent but never received, summed over subscribers.
    pub lost: u64,
    /// Messages received more than once.
    pub duplicates: u64,
    /// Messages received after a later one.
    pub reordered: u64,
    /// Connections opened after a subscriber's first (SSE responses the
    /// server ended, or failures).
    pub reconnects: u64,
    /// Connections or requests that failed after the first connection.
    pub failures_after_connect: u64,
    /// Append → arrival.
    pub latency: LatencySummary,
    pub errors: ErrorTally,
    /// The first few lost, duplicated or reordered messages, described.
    pub anomaly_examples: Vec<String>,
}

/// The result of a delivery run.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryOutcome {
    /// Seconds the writer wrote.
    pub writing_s: f64,
    /// Seconds from the writer's stop until subscribers were stopped.
    pub drain_s: f64,
    pub writer: WriterOutcome,
    pub subscribers: SubscribersOutcome,
}

impl DeliveryOutcome {
    /// Errors, losses, duplicates and reorders, summed.
    pub fn problems(&self) -> u64 {
        let subscribers = &self.subscribers;
        self.writer.errors.total()
            + subscribers.errors.total()
            + subscribers.lost
            + subscribers.duplicates
            + subscribers.reordered
    }
}

/// State every subscriber shares.
struct Shared {
    origin: Instant,
    latency: ShardedLatency,
    counters: Counters,
    connected_now: AtomicUsize,
    peak_connected: AtomicUsize,
    first_attempts: AtomicUsize,
    first_successes: AtomicUsize,
    connect_gate: Arc<Semaphore>,
}

impl Shared {
    fn connected(&self) {
        let now = self.connected_now.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_connected.fetch_max(now, Ordering::Relaxed);
    }

    fn disconnected(&self) {
        self.connected_now.fetch_sub(1, Ordering::Relaxed);
    }

    /// Microseconds since the run's origin.
    fn now_us(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

/// Subscribers started and connected, waiting for the writer.
pub struct Delivery {
    plan: Arc<DeliveryPlan>,
    shared: Arc<Shared>,
    subscribers: Vec<JoinHandle<anyhow::Result<SubscriberTally>>>,
    final_sent: watch::Sender<Option<u64>>,
    cancel: CancellationToken,
    /// Stops the subscribers if the run is abandoned.
    _stop_on_drop: DropGuard,
}

impl Delivery {
    /// Starts the subscribers and waits until each has tried its first
    /// connection (or the connect timeout passed).
    pub async fn connect(context: &RunContext, plan: DeliveryPlan) -> anyhow::Result<Delivery> {
        let shared = Arc::new(Shared {
            origin: Instant::now(),
            latency: ShardedLatency::new(LATENCY_SHARDS)?,
            counters: Counters::default(),
            connected_now: AtomicUsize::new(0),
            peak_connected: AtomicUsize::new(0),
            first_attempts: AtomicUsize::new(0),
            first_successes: AtomicUsize::new(0),
            connect_gate: Arc::new(Semaphore::new(plan.connect_concurrency.max(1))),
        });
        let plan = Arc::new(plan);
        let cancel = CancellationToken::new();
        let (final_sent, final_watch) = watch::channel(None);
        let subscribers = (0..plan.subscribers)
            .map(|index| {
                let subscriber = Subscriber {
                    index,
                    connection: context.connection(),
                    plan: Arc::clone(&plan),
                    shared: Arc::clone(&shared),
                    cancel: cancel.clone(),
                    final_watch: final_watch.clone(),
                    request_timeout: context.request_timeout,
                };
                tokio::spawn(subscriber.run())
            })
            .collect();
        let deadline = Instant::now() + plan.connect_timeout;
        while shared.first_attempts.load(Ordering::Relaxed) < plan.subscribers
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Delivery {
            plan,
            shared,
            subscribers,
            final_sent,
            _stop_on_drop: cancel.clone().drop_guard(),
            cancel,
        })
    }

    /// Subscribers whose first connection succeeded.
    pub fn connected(&self) -> usize {
        self.shared.first_successes.load(Ordering::Relaxed)
    }

    /// Writes for `context.duration`, drains, stops the subscribers and
    /// sums up.
    pub async fn run(self, context: &RunContext) -> anyhow::Result<DeliveryOutcome> {
        let Delivery {
            plan,
            shared,
            subscribers,
            final_sent,
            cancel,
            _stop_on_drop,
        } = self;
        let connected_before_writing = shared.first_successes.load(Ordering::Relaxed);
        let progress = Progress::start(
            plan.scenario,
            "deliveries",
            shared.counters.clone(),
            context.quiet,
        );
        let start = Instant::now();
        let writer = write_messages(context, &plan, &shared, start + context.duration).await;
        let writing_s = seconds_since(start);
        let writer = writer?;
        // Subscribers finish once they hold every message.
        final_sent.send_replace(Some(writer.sent));
        let drain_start = Instant::now();
        let drain_deadline = drain_start + plan.drain;
        while Instant::now() < drain_deadline && subscribers.iter().any(|s| !s.is_finished()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cancel.cancel();
        let tallies = join_workers(subscribers).await;
        let drain_s = seconds_since(drain_start);
        progress.finish();
        let tallies = tallies?;

        let writer_outcome = WriterOutcome {
            sent: writer.sent,
            requested_rate: plan.rate,
            rate: per_second(writer.sent, writing_s),
            latency: writer.latency.summary(),
            errors: writer.errors,
        };
        let mut errors = ErrorTally::default();
        let mut outcome = SubscribersOutcome {
            subscribers: plan.subscribers,
            connected_before_writing,
            never_connected: 0,
            peak_connected: shared.peak_connected.load(Ordering::Relaxed),
            stayed_connected: 0,
            complete: 0,
            deliveries: 0,
            deliveries_per_s: 0.0,
            lost: 0,
            duplicates: 0,
            reordered: 0,
            reconnects: 0,
            failures_after_connect: 0,
            latency: shared.latency.merged()?.summary(),
            errors: ErrorTally::default(),
            anomaly_examples: Vec::new(),
        };
        for (index, tally) in tallies.iter().enumerate() {
            let lost = tally.tracker.lost(writer.sent);
            let mut examples = tally.anomalies.clone();
            if let Some(first) = tally.tracker.first_missing(writer.sent) {
                examples.push(format!(
                    "subscriber {index} never got {lost} of {} messages, first seq {first}",
                    writer.sent
                ));
            }
            for example in examples {
                if outcome.anomaly_examples.len() < ANOMALY_EXAMPLES {
                    outcome.anomaly_examples.push(example);
                }
            }
            errors.merge(&tally.errors);
            outcome.never_connected += usize::from(tally.sessions == 0);
            outcome.stayed_connected += usize::from(tally.stayed_connected());
            outcome.complete += usize::from(tally.tracker.has_all(writer.sent));
            outcome.deliveries += tally.tracker.unique();
            outcome.lost += lost;
            outcome.duplicates += tally.tracker.duplicates();
            outcome.reordered += tally.tracker.reordered();
            outcome.reconnects += tally.sessions.saturating_sub(1);
            outcome.failures_after_connect += tally.failures_after_connect;
        }
        outcome.deliveries_per_s = per_second(outcome.deliveries, writing_s);
        outcome.errors = errors;
        Ok(DeliveryOutcome {
            writing_s,
            drain_s,
            writer: writer_outcome,
            subscribers: outcome,
        })
    }
}
