//! The `fanout` scenario: many SSE subscribers (thousands) on one stream
//! for the duration, with a writer at a modest rate. Reports how many
//! connected and stayed connected, delivery latency and, given the
//! server's process id, the server's resident memory before the
//! subscribers connected and while they were connected, per subscriber.

use super::RunContext;
use super::delivery::{Delivery, DeliveryPlan, Transport};
use super::live::{
    check_delivery_options, delivery_headline, delivery_notes, delivery_rows, serialize_seconds,
};
use crate::protocol::{JSON, create_stream};
use crate::report::{Headline, Outcome, Row};
use crate::system::{raise_open_files_limit, resident_bytes};
use crate::units::{format_bytes, format_count, format_real, parse_byte_size, parse_duration};
use anyhow::Context;
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// File descriptors kept free for everything but subscriber connections.
const SPARE_FILES: u64 = 64;

/// How often the server's memory is sampled while subscribers are
/// connected.
const MEMORY_SAMPLE_INTERVAL: Duration = Duration::from_millis(500);

/// Options of the `fanout` scenario.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct FanoutOptions {
    /// SSE subscribers on the one stream, one connection each.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Messages per second from the writer.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Approximate bytes per message.
    #[arg(long, default_value = "64", value_parser = parse_byte_size)]
    pub message_size: u64,
    /// The server's process id, to report its resident memory (Linux).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Subscribers opening their first connection at the same time.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// How long to wait for all subscribers to connect.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    #[serde(serialize_with = "serialize_seconds")]
    pub connect_timeout: Duration,
    /// How long subscribers may take to receive the last messages after
    /// the writer stops.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    #[serde(serialize_with = "serialize_seconds")]
    pub drain: Duration,
}

impl FanoutOptions {
    /// A short description, e.g. `10000 sse subs @10/s`.
    pub fn case(&self) -> String {
        format!("{} sse subs @{}/s", self.subscribers, self.rate)
    }
}

/// The server's memory, when `--server-pid` was given.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerMemory {
    /// Resident bytes after the stream was created, before subscribers.
    pub before_bytes: u64,
    /// Resident bytes once the subscribers had connected.
    pub connected_bytes: u64,
    /// Highest resident bytes sampled while they were connected.
    pub peak_bytes: u64,
    /// (connected − before) / connected subscribers.
    pub per_subscriber_bytes: f64,
}

/// Results of the `fanout` scenario.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutOutcome {
    #[serde(flatten)]
    pub delivery: super::delivery::DeliveryOutcome,
    pub server_memory: Option<ServerMemory>,
    /// This process's open-files limit during the run.
    pub open_files_limit: Option<u64>,
}

impl Outcome for FanoutOutcome {
    fn rows(&self) -> Vec<Row> {
        let subscribers = &self.delivery.subscribers;
        let mut rows = vec![
            (
                "peak connected".to_owned(),
                format_count(subscribers.peak_connected as u64),
            ),
            (
                "stayed connected".to_owned(),
                format_count(subscribers.stayed_connected as u64),
            ),
            (
                "never connected".to_owned(),
                format_count(subscribers.never_connected as u64),
            ),
        ];
        if let Some(memory) = &self.server_memory {
            rows.extend([
                (
                    "server RSS before".to_owned(),
                    format_bytes(memory.before_bytes),
                ),
                (
                    "server RSS connected".to_owned(),
                    format_bytes(memory.connected_bytes),
                ),
                (
                    "server RSS peak".to_owned(),
                    format_bytes(memory.peak_bytes),
                ),
                (
                    "server bytes/subscriber".to_owned(),
                    format_real(memory.per_subscriber_bytes),
                ),
            ]);
        }
        rows.extend(delivery_rows(&self.delivery));
        rows
    }

    fn headline(&self) -> Headline {
        delivery_headline(&self.delivery)
    }

    fn notes(&self) -> Vec<String> {
        delivery_notes(&self.delivery)
    }
}

/// Raises the open-files limit and warns when it is still too low for
/// `connections`; returns the limit.
pub fn ensure_open_files(context: &RunContext, connections: usize) -> Option<u64> {
    match raise_open_files_limit() {
        Ok(limit) => {
            if limit < connections as u64 + SPARE_FILES {
                context.warn(&format!(
                    "the open-files limit is {limit}, too low for {connections} connections; \
                     raise the hard limit (ulimit -Hn)"
                ));
            }
            Some(limit)
        }
        Err(error) => {
            context.warn(&format!("cannot raise the open-files limit: {error}"));
            None
        }
    }
}

/// Runs the scenario.
pub async fn run(context: &RunContext, options: &FanoutOptions) -> anyhow::Result<FanoutOutcome> {
    check_delivery_options(options.rate, options.subscribers)?;
    let open_files_limit = ensure_open_files(context, options.subscribers);
    let stream = context.stream_name("fanout", 0);
    let mut connection = context.connection();
    create_stream(&mut connection, &stream, JSON)
        .await
        .with_context(|| format!("creating stream {stream}"))?;
    drop(connection);

    let memory_before = match options.server_pid {
        Some(pid) => Some(resident_bytes(pid)?),
        None => None,
    };
    let plan = DeliveryPlan {
        stream: stream.clone(),
        rate: options.rate,
        subscribers: options.subscribers,
        transport: Transport::Sse,
        message_size: usize::try_from(options.message_size)?,
        connect_concurrency: options.connect_concurrency,
        connect_timeout: options.connect_timeout,
        drain: options.drain,
        scenario: "fanout",
    };
    let delivery = Delivery::connect(context, plan).await?;
    let connected = delivery.connected();
    if connected < options.subscribers {
        context.warn(&format!(
            "only {connected} of {} subscribers connected",
            options.subscribers
        ));
    }

    let mut memory = None;
    let mut sampler = None;
    if let (Some(pid), Some(before)) = (options.server_pid, memory_before) {
        // Let the server settle after the connection storm.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let connected_bytes = resident_bytes(pid)?;
        let peak = Arc::new(AtomicU64::new(connected_bytes));
        let sampled_peak = Arc::clone(&peak);
        sampler = Some(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(MEMORY_SAMPLE_INTERVAL);
            loop {
                ticks.tick().await;
                if let Ok(bytes) = resident_bytes(pid) {
                    sampled_peak.fetch_max(bytes, Ordering::Relaxed);
                }
            }
        }));
        memory = Some((before, connected_bytes, peak));
    }

    let outcome = delivery.run(context).await;
    if let Some(sampler) = sampler {
        sampler.abort();
    }
    context.remove_streams(&[stream]).await;
    let delivery = outcome?;

    let server_memory = memory.map(|(before, connected_bytes, peak)| ServerMemory {
        before_bytes: before,
        connected_bytes,
        peak_bytes: peak.load(Ordering::Relaxed),
        per_subscriber_bytes: if connected > 0 {
            connected_bytes.saturating_sub(before) as f64 / connected as f64
        } else {
            0.0
        },
    });
    Ok(FanoutOutcome {
        delivery,
        server_memory,
        open_files_limit,
    })
}
