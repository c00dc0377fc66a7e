//! The `live` scenario: one writer appends at `--rate` messages per second
//! to a JSON stream that `--subscribers` subscribers follow over SSE or
//! long-poll; reports delivery latency (append sent → message received)
//! and whether every subscriber got every message exactly once, in order.

use super::RunContext;
use super::delivery::{Delivery, DeliveryOutcome, DeliveryPlan, Transport};
use crate::protocol::{JSON, create_stream};
use crate::report::{Headline, Outcome, Row, latency_rows, rate_row};
use crate::units::{format_count, format_real, parse_byte_size, parse_duration};
use anyhow::{Context, ensure};
use serde::Serialize;
use std::time::Duration;

/// Options of the `live` scenario.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct LiveOptions {
    /// Messages per second from the single writer.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Subscribers following the stream, one connection each.
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// sse or long-poll.
    #[arg(long, value_enum, default_value_t = Transport::Sse)]
    pub transport: Transport,
    /// Approximate bytes per message.
    #[arg(long, default_value = "64", value_parser = parse_byte_size)]
    pub message_size: u64,
    /// Subscribers opening their first connection at the same time.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// How long to wait for all subscribers to connect.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    #[serde(serialize_with = "serialize_seconds")]
    pub connect_timeout: Duration,
    /// How long subscribers may take to receive the last messages after
    /// the writer stops.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    #[serde(serialize_with = "serialize_seconds")]
    pub drain: Duration,
}

/// Durations in parameters are written as seconds.
pub fn serialize_seconds<S: serde::Serializer>(
    duration: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

impl LiveOptions {
    /// A short description, e.g. `sse 100 subs @100/s`.
    pub fn case(&self) -> String {
        format!(
            "{} {} subs @{}/s",
            self.transport.name(),
            self.subscribers,
            self.rate
        )
    }
}

/// Results of the `live` scenario.
#[derive(Debug, Clone, Serialize)]
pub struct LiveOutcome {
    #[serde(flatten)]
    pub delivery: DeliveryOutcome,
}

impl Outcome for LiveOutcome {
    fn rows(&self) -> Vec<Row> {
        delivery_rows(&self.delivery)
    }

    fn headline(&self) -> Headline {
        delivery_headline(&self.delivery)
    }

    fn notes(&self) -> Vec<String> {
        delivery_notes(&self.delivery)
    }
}

/// Examples of anomalies and errors of a delivery run, shared with
/// `fanout`.
pub fn delivery_notes(delivery: &DeliveryOutcome) -> Vec<String> {
    let subscribers = &delivery.subscribers;
    let writer = &delivery.writer;
    let slow_writer = (writer.rate < 0.9 * writer.requested_rate).then(|| {
        let failed = writer.errors.total();
        if failed > 0 {
            format!(
                "the writer reached {} of the requested {} messages/s; {failed} appends failed",
                format_real(writer.rate),
                writer.requested_rate
            )
        } else {
            format!(
                "the writer reached {} of the requested {} messages/s: it sends one append \
                 at a time, and appends took {} ms at the median",
                format_real(writer.rate),
                writer.requested_rate,
                format_real(writer.latency.p50_ms)
            )
        }
    });
    let errors = subscribers
        .errors
        .examples
        .iter()
        .chain(&delivery.writer.errors.examples)
        .map(|example| format!("error: {example}"));
    subscribers
        .anomaly_examples
        .iter()
        .cloned()
        .chain(errors)
        .chain(slow_writer)
        .collect()
}

/// The table rows of a delivery run, shared with `fanout`.
pub fn delivery_rows(delivery: &DeliveryOutcome) -> Vec<Row> {
    let writer = &delivery.writer;
    let subscribers = &delivery.subscribers;
    let mut rows = vec![
        ("messages sent".to_owned(), format_count(writer.sent)),
        rate_row("send rate /s", writer.rate),
        (
            "subscribers connected".to_owned(),
            format!(
                "{} of {}",
                format_count(subscribers.connected_before_writing as u64),
                format_count(subscribers.subscribers as u64)
            ),
        ),
        (
            "subscribers complete".to_owned(),
            format_count(subscribers.complete as u64),
        ),
        (
            "deliveries".to_owned(),
            format_count(subscribers.deliveries),
        ),
        rate_row("deliveries/s", subscribers.deliveries_per_s),
    ];
    rows.extend(latency_rows("delivery", &subscribers.latency));
    rows.extend([
        ("lost".to_owned(), format_count(subscribers.lost)),
        (
            "duplicates".to_owned(),
            format_count(subscribers.duplicates),
        ),
        ("reordered".to_owned(), format_count(subscribers.reordered)),
        (
            "reconnects".to_owned(),
            format_count(subscribers.reconnects),
        ),
        (
            "subscriber errors".to_owned(),
            subscribers.errors.describe(),
        ),
        ("writer errors".to_owned(), writer.errors.describe()),
    ]);
    rows.extend(latency_rows("append", &writer.latency));
    rows
}

/// The headline of a delivery run: deliveries per second and delivery
/// latency.
pub fn delivery_headline(delivery: &DeliveryOutcome) -> Headline {
    Headline {
        throughput: Some(delivery.subscribers.deliveries_per_s),
        throughput_unit: Some("deliveries/s".to_owned()),
        latency_of: Some("delivery".to_owned()),
        latency: Some(delivery.subscribers.latency),
        problems: delivery.problems(),
    }
}

/// Checks options shared by `live` and `fanout`.
pub fn check_delivery_options(rate: f64, subscribers: usize) -> anyhow::Result<()> {
    ensure!(
        rate.is_finite() && rate > 0.0 && rate <= 1_000_000.0,
        "--rate must be between 0 and 1000000 messages per second"
    );
    ensure!(subscribers > 0, "--subscribers must be at least 1");
    Ok(())
}

/// Runs the scenario.
pub async fn run(context: &RunContext, options: &LiveOptions) -> anyhow::Result<LiveOutcome> {
    check_delivery_options(options.rate, options.subscribers)?;
    super::fanout::ensure_open_files(context, options.subscribers);
    let stream = context.stream_name("live", 0);
    let mut connection = context.connection();
    create_stream(&mut connection, &stream, JSON)
        .await
        .with_context(|| format!("creating stream {stream}"))?;
    drop(connection);
    let plan = DeliveryPlan {
        stream: stream.clone(),
        rate: options.rate,
        subscribers: options.subscribers,
        transport: options.transport,
        message_size: usize::try_from(options.message_size)?,
        connect_concurrency: options.connect_concurrency,
        connect_timeout: options.connect_timeout,
        drain: options.drain,
        scenario: "live",
    };
    let delivery = Delivery::connect(context, plan).await?;
    let outcome = delivery.run(context).await;
    context.remove_streams(&[stream]).await;
    Ok(LiveOutcome { delivery: outcome? })
}
