//! The `subscriptions` scenario: what a pull-wake subscription over every
//! stream (PROTOCOL §6–7) costs the appends it watches, and how soon its
//! wakes reach a worker.
//!
//! It creates N streams and a JSON wake stream, then — unless
//! `--no-subscription`, which measures the baseline — a pull-wake
//! subscription on `--pattern` (`**`) writing to that wake stream. C
//! connections append to random streams for the duration, as fast as the
//! server answers. A consumer follows the wake stream live; on each wake
//! event it claims the wake and acks, with `done: true`, the streams the
//! claim shows pending at their tail offsets.
//!
//! Wake latency runs from the moment the subscription could wake to the
//! wake event's arrival at the consumer: the later of the send time of the
//! oldest append no ack has covered (the append that made the subscription
//! pending) and the send time of the previous wake's `done` ack (before
//! it, the lease held the subscription). The data wait runs from that
//! oldest append's send time alone, so it adds the time a previous wake
//! held the subscription. Both the appenders and the consumer keep the
//! same books in both variants ([`ledger`]), so the client's own work does
//! not differ between them.
//!
//! * [`ledger`] — uncovered appends per stream, and the wake sample.
//! * [`consumer`] — the wake-stream reader and the claiming worker.

pub mod consumer;
pub mod ledger;

use super::append::{ServerCpu, append_failed};
use super::delivery::Transport;
use super::live::serialize_seconds;
use super::{RunContext, join_workers, per_second, run_workers, seconds_since};
use crate::control::{self, PullWakeSpec};
use crate::pattern::Pattern;
use crate::progress::{Counters, Progress};
use crate::protocol::{self, JSON, OCTET_STREAM, append_to_stream, create_stream};
use crate::report::{Headline, Outcome, Row, errors_as_notes, latency_rows, rate_row};
use crate::stats::{ErrorTally, LatencyRecorder, LatencySummary};
use crate::system::cpu_time;
use crate::units::{format_count, format_real, parse_byte_size, parse_duration};
use anyhow::{Context, ensure};
use bytes::Bytes;
use consumer::{AckScope, Clock, Consumer, ConsumerOutcome, ConsumerPlan};
use ledger::Ledger;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Streams created at once during setup, at most.
const CREATE_CONNECTIONS: usize = 16;

/// Options of the `subscriptions` scenario.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct SubscriptionsOptions {
    /// Concurrent keep-alive connections, each appending in a loop.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Streams the subscription watches; each append goes to one at random.
    #[arg(long, default_value_t = 10_000)]
    pub streams: usize,
    /// Bytes per append, e.g. 256 or 4KiB.
    #[arg(long, default_value = "256", value_parser = parse_byte_size)]
    pub body_size: u64,
    /// Measure the baseline: the same streams and appends, no subscription.
    #[arg(long)]
    pub no_subscription: bool,
    /// The subscription's glob over stream paths.
    #[arg(long, default_value = "**")]
    pub pattern: String,
    /// How the consumer follows the wake stream: sse or long-poll.
    #[arg(long, value_enum, default_value_t = Transport::Sse)]
    pub transport: Transport,
    /// Which streams of a claim the consumer acks: pending (those with
    /// new data) or all (every stream the claim lists).
    #[arg(long, value_enum, default_value_t = AckScope::Pending)]
    pub ack: AckScope,
    /// The subscription's lease, from 1s to 10m.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    #[serde(serialize_with = "serialize_seconds")]
    pub lease_ttl: Duration,
    /// How long the consumer may take, after the appends stop, to be woken
    /// for the last of them.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    #[serde(serialize_with = "serialize_seconds")]
    pub drain: Duration,
    /// The server's process id, to report its CPU time per append
    /// (Linux; the server must run on this machine).
    #[arg(long)]
    pub server_pid: Option<u32>,
}

impl SubscriptionsOptions {
    /// A short description, e.g. `16c×10000s×256B pull-wake sse` or
    /// `16c×10000s×256B no subscription`.
    pub fn case(&self) -> String {
        let head = format!(
            "{}c×{}s×{}B",
            self.connections, self.streams, self.body_size
        );
        if self.no_subscription {
            format!("{head} no subscription")
        } else {
            let ack = match self.ack {
                AckScope::Pending => "",
                AckScope::All => " ack-all",
            };
            format!("{head} pull-wake {}{ack}", self.transport.name())
        }
    }
}

/// Results of the `subscriptions` scenario.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionsOutcome {
    pub elapsed_s: f64,
    /// Whether a subscription watched the streams.
    pub subscribed: bool,
    /// Successful appends.
    pub appends: u64,
    pub appends_per_s: f64,
    /// Megabytes (10^6 bytes) of request body per second.
    pub mb_per_s: f64,
    /// Append latency.
    pub latency: LatencySummary,
    pub errors: ErrorTally,
    /// TCP connections the appenders opened.
    pub connections_opened: u64,
    pub server_cpu: Option<ServerCpu>,
    /// The consumer, when subscribed.
    pub consumer: Option<ConsumerOutcome>,
    /// Seconds from the end of the appends until every append was acked
    /// (or the drain time ran out).
    pub drain_s: f64,
    /// Successful appends no ack covered by the end of the drain: data
    /// the worker was never woken for.
    pub unacked_appends: u64,
}

impl Outcome for SubscriptionsOutcome {
    fn rows(&self) -> Vec<Row> {
        let mut rows = vec![
            ("appends".to_owned(), format_count(self.appends)),
            rate_row("appends/s", self.appends_per_s),
            rate_row("MB/s", self.mb_per_s),
        ];
        rows.extend(latency_rows("append latency", &self.latency));
        rows.push(("append errors".to_owned(), self.errors.describe()));
        if let Some(cpu) = self.server_cpu {
            rows.push((
                "server CPU per append".to_owned(),
                format!(
                    "{:.1} µs (user {:.1}, system {:.1})",
                    cpu.total_us_per_append, cpu.user_us_per_append, cpu.system_us_per_append
                ),
            ));
        }
        let Some(consumer) = &self.consumer else {
            rows.push(("subscription".to_owned(), "none".to_owned()));
            return rows;
        };
        rows.push(("wake events".to_owned(), format_count(consumer.wake_events)));
        rows.push(("claims".to_owned(), format_count(consumer.claims)));
        rows.push(("acks (done)".to_owned(), format_count(consumer.acks)));
        rows.push(rate_row(
            "pending streams per claim",
            consumer.pending_per_claim,
        ));
        rows.extend(latency_rows("wake latency", &consumer.wake_latency));
        rows.extend(latency_rows("data wait", &consumer.data_wait));
        rows.push(("409 answers".to_owned(), conflicts(consumer)));
        if consumer.stale_wake_events > 0 {
            rows.push((
                "stale wake events".to_owned(),
                format_count(consumer.stale_wake_events),
            ));
        }
        rows.push(("consumer errors".to_owned(), consumer.errors.describe()));
        rows.push((
            "unacked appends".to_owned(),
            format!(
                "{} (drain {} s)",
                format_count(self.unacked_appends),
                format_real(self.drain_s)
            ),
        ));
        rows
    }

    fn headline(&self) -> Headline {
        let consumer_problems = self
            .consumer
            .as_ref()
            .map_or(0, |consumer| consumer.errors.total());
        Headline {
            throughput: Some(self.appends_per_s),
            throughput_unit: Some("appends/s".to_owned()),
            latency_of: Some("append".to_owned()),
            latency: Some(self.latency),
            problems: self.errors.total() + consumer_problems + self.unacked_appends,
        }
    }

    fn notes(&self) -> Vec<String> {
        let mut notes = errors_as_notes(&self.errors);
        if let Some(consumer) = &self.consumer {
            notes.extend(
                consumer
                    .errors
                    .examples
                    .iter()
                    .map(|example| format!("consumer error: {example}")),
            );
        }
        notes
    }
}

/// `"0"`, or e.g. `"claim NOTHING_PENDING×2, ack FENCED×1"`.
fn conflicts(consumer: &ConsumerOutcome) -> String {
    let parts: Vec<String> = consumer
        .claim_conflicts
        .iter()
        .map(|(code, count)| format!("claim {code}×{count}"))
        .chain(
            consumer
                .ack_conflicts
                .iter()
                .map(|(code, count)| format!("ack {code}×{count}")),
        )
        .collect();
    if parts.is_empty() {
        "0".to_owned()
    } else {
        parts.join(", ")
    }
}

/// A small, fast pseudo-random sequence (SplitMix64): which stream each
/// append goes to. Seeded per connection, so runs repeat.
#[derive(Debug, Clone)]
pub struct StreamPicker {
    state: u64,
    streams: u64,
}

impl StreamPicker {
    pub fn new(seed: u64, streams: usize) -> StreamPicker {
        StreamPicker {
            state: seed,
            streams: streams.max(1) as u64,
        }
    }

    /// The next stream index, in `0..streams`.
    pub fn next_stream(&mut self) -> usize {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // Multiply-shift maps the 64 random bits onto the range evenly
        // enough for thousands of streams.
        ((u128::from(z) * u128::from(self.streams)) >> 64) as usize
    }
}

/// What every appender shares.
struct Plan {
    streams: Arc<Vec<String>>,
    body: Bytes,
    ledger: Arc<Ledger>,
    clock: Clock,
}

/// What one appender counted.
struct AppenderTally {
    appends: u64,
    latency: LatencyRecorder,
    errors: ErrorTally,
    connections_opened: u64,
}

/// Runs the scenario: creates the streams (and the subscription), appends
/// for the duration while the consumer claims and acks, drains, cleans up.
pub async fn run(
    context: &RunContext,
    options: &SubscriptionsOptions,
) -> anyhow::Result<SubscriptionsOutcome> {
    ensure!(options.connections > 0, "--connections must be at least 1");
    ensure!(options.streams > 0, "--streams must be at least 1");
    ensure!(options.body_size > 0, "--body-size must be at least 1 byte");
    let body_size = usize::try_from(options.body_size).context("--body-size is too large")?;
    let lease_ttl_ms =
        u64::try_from(options.lease_ttl.as_millis()).context("--lease-ttl is too long")?;
    if let Some(pid) = options.server_pid {
        // Refuse a wrong pid before creating any stream.
        cpu_time(pid)?;
    }

    let streams: Arc<Vec<String>> = Arc::new(
        (0..options.streams)
            .map(|index| context.stream_name("subscriptions", index))
            .collect(),
    );
    let wake_stream = context.stream_name("subscriptions", "wake");
    let subscription = context.stream_name("subscriptions", "sub");
    create_streams(context, &streams).await?;
    let mut setup = context.connection();
    create_stream(&mut setup, &wake_stream, JSON)
        .await
        .with_context(|| format!("creating the wake stream {wake_stream}"))?;

    let ledger = Arc::new(Ledger::new(streams.len()));
    let counters = Counters::default();
    let (load_end, load_end_watch) = watch::channel(None);
    let clock = Clock::start();
    let consumer = if options.no_subscription {
        None
    } else {
        let spec = PullWakeSpec::new(&options.pattern, &wake_stream, lease_ttl_ms);
        control::put_subscription(&mut setup, &subscription, &spec)
            .await
            .with_context(|| format!("creating the subscription {subscription}"))?;
        let plan = ConsumerPlan {
            subscription: subscription.clone(),
            wake_stream: wake_stream.clone(),
            streams: Arc::clone(&streams),
            transport: options.transport,
            ack_scope: options.ack,
            clock,
            load_end_us: load_end_watch,
        };
        Some(
            Consumer::start(
                plan,
                context.connection(),
                context.connection(),
                Arc::clone(&ledger),
                counters.clone(),
                context.request_timeout,
            )
            .await?,
        )
    };

    let plan = Arc::new(Plan {
        streams: Arc::clone(&streams),
        body: Bytes::from(Pattern::new(1).bytes(0, body_size)),
        ledger: Arc::clone(&ledger),
        clock,
    });
    let progress = Progress::start("subscriptions", "appends", counters.clone(), context.quiet);
    let run = run_workers(
        context,
        options.connections,
        options.server_pid,
        |worker, deadline| {
            let (context, plan, counters) = (context.clone(), Arc::clone(&plan), counters.clone());
            async move { append_worker(worker, &context, &plan, deadline, &counters).await }
        },
    )
    .await?;
    let (tallies, elapsed_s) = (run.results, run.elapsed_s);
    load_end.send_replace(Some(clock.now_us()));

    // The consumer gets until the drain time ends to be woken for the
    // last appends.
    let drain_start = Instant::now();
    if consumer.is_some() {
        let drain_deadline = drain_start + options.drain;
        while ledger.outstanding() > 0 && Instant::now() < drain_deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let drain_s = seconds_since(drain_start);
    let consumer = match consumer {
        Some(consumer) => Some(consumer.stop().await?),
        None => None,
    };
    progress.finish();
    if consumer.is_some() && !context.keep_streams {
        if let Err(error) = control::delete_subscription(&mut setup, &subscription).await {
            context.warn(&format!(
                "could not delete subscription {subscription}: {error}"
            ));
        }
    }
    drop(setup);
    let mut created: Vec<String> = streams.as_ref().clone();
    created.push(wake_stream);
    context.remove_streams(&created).await;
    let tallies = tallies?;

    let mut latency = LatencyRecorder::new()?;
    let mut errors = ErrorTally::default();
    let (mut appends, mut opened) = (0, 0);
    for tally in &tallies {
        latency.merge(&tally.latency);
        errors.merge(&tally.errors);
        appends += tally.appends;
        opened += tally.connections_opened;
    }
    let bytes = appends * plan.body.len() as u64;
    Ok(SubscriptionsOutcome {
        elapsed_s,
        subscribed: consumer.is_some(),
        appends,
        appends_per_s: per_second(appends, elapsed_s),
        mb_per_s: per_second(bytes, elapsed_s) / 1e6,
        latency: latency.summary(),
        errors,
        connections_opened: opened,
        server_cpu: run
            .server_cpu
            .and_then(|(before, after)| ServerCpu::between(before, after, appends)),
        unacked_appends: if consumer.is_some() {
            ledger.outstanding()
        } else {
            0
        },
        consumer,
        drain_s,
    })
}

/// Creates the streams over a few connections at once (persistent modes
/// commit each creation, so one at a time would take long).
async fn create_streams(context: &RunContext, streams: &Arc<Vec<String>>) -> anyhow::Result<()> {
    let connections = CREATE_CONNECTIONS.min(streams.len());
    let creators = (0..connections)
        .map(|first| {
            let context = context.clone();
            let streams = Arc::clone(streams);
            tokio::spawn(async move {
                let mut connection = context.connection();
                for name in streams.iter().skip(first).step_by(connections) {
                    create_stream(&mut connection, name, OCTET_STREAM)
                        .await
                        .with_context(|| format!("creating stream {name}"))?;
                }
                Ok(())
            })
        })
        .collect();
    join_workers(creators).await?;
    Ok(())
}

/// One connection appending to random streams until the deadline.
async fn append_worker(
    worker: usize,
    context: &RunContext,
    plan: &Plan,
    deadline: Instant,
    counters: &Counters,
) -> anyhow::Result<AppenderTally> {
    let mut connection = context.connection();
    let mut picker = StreamPicker::new(worker as u64, plan.streams.len());
    let mut tally = AppenderTally {
        appends: 0,
        latency: LatencyRecorder::new()?,
        errors: ErrorTally::default(),
        connections_opened: 0,
    };
    while Instant::now() < deadline {
        let stream = picker.next_stream();
        let sent = Instant::now();
        let ticket = plan.ledger.sent(stream, plan.clock.now_us());
        let result = append_to_stream(
            &mut connection,
            &plan.streams[stream],
            OCTET_STREAM,
            plan.body.clone(),
            None,
        )
        .await;
        match result {
            Ok(reply) => {
                tally.latency.record(sent.elapsed());
                tally.appends += 1;
                counters.add_ops(1);
                match protocol::next_offset("append", &reply) {
                    Ok(end) => plan.ledger.landed(stream, ticket, Some(end)),
                    Err(error) => {
                        plan.ledger.landed(stream, ticket, None);
                        counters.add_error();
                        tally.errors.record(&error);
                    }
                }
            }
            Err(error) => {
                plan.ledger.landed(stream, ticket, None);
                append_failed(&error, counters, &mut tally.errors).await;
            }
        }
    }
    tally.connections_opened = connection.times_opened();
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picker_stays_in_range_and_spreads() {
        let mut picker = StreamPicker::new(3, 10);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            seen[picker.next_stream()] += 1;
        }
        // Each of ten streams gets about a thousand.
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
        let again: Vec<usize> = {
            let mut picker = StreamPicker::new(3, 10);
            (0..5).map(|_| picker.next_stream()).collect()
        };
        let mut first = StreamPicker::new(3, 10);
        assert_eq!(
            again,
            (0..5).map(|_| first.next_stream()).collect::<Vec<_>>()
        );
        assert_eq!(StreamPicker::new(1, 1).next_stream(), 0);
    }

    #[test]
    fn case_names_the_variant() {
        let mut options = SubscriptionsOptions {
            connections: 16,
            streams: 10_000,
            body_size: 256,
            no_subscription: true,
            pattern: "**".into(),
            transport: Transport::Sse,
            ack: AckScope::Pending,
            lease_ttl: Duration::from_secs(30),
            drain: Duration::from_secs(5),
            server_pid: None,
        };
        assert_eq!(options.case(), "16c×10000s×256B no subscription");
        options.no_subscription = false;
        assert_eq!(options.case(), "16c×10000s×256B pull-wake sse");
        options.ack = AckScope::All;
        options.transport = Transport::LongPoll;
        assert_eq!(
            options.case(),
            "16c×10000s×256B pull-wake long-poll ack-all"
        );
    }
}
