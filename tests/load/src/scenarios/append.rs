//! The `append` scenario: C keep-alive connections append fixed-size
//! bodies to N streams as fast as the server answers, for the run's
//! duration — plain bytes, idempotent-producer appends, or JSON batches.
//!
//! Request `i` of connection `c` goes to stream `(c + i·C) mod N`, so with
//! C = N every stream has exactly one writer, and with N > C each
//! connection cycles over its own share of streams.

use super::{RunContext, per_second, run_workers};
use crate::pattern::Pattern;
use crate::progress::{Counters, Progress};
use crate::protocol::{self, JSON, OCTET_STREAM, Producer, append_to_stream, create_stream};
use crate::report::{Headline, Outcome, Row, errors_as_notes, latency_rows, rate_row};
use crate::stats::{ErrorTally, LatencyRecorder, LatencySummary};
use crate::system::{CpuTime, cpu_time};
use crate::units::{format_count, parse_byte_size};
use anyhow::{Context, ensure};
use bytes::Bytes;
use http::StatusCode;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// What an append carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AppendMode {
    /// `application/octet-stream` bodies.
    Plain,
    /// Byte bodies with `Producer-Id`/`-Epoch`/`-Seq` headers.
    Producer,
    /// `application/json` arrays of `--batch` messages.
    Json,
}

impl AppendMode {
    fn name(self) -> &'static str {
        match self {
            AppendMode::Plain => "plain",
            AppendMode::Producer => "producer",
            AppendMode::Json => "json",
        }
    }
}

/// Options of the `append` scenario.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct AppendOptions {
    /// Concurrent keep-alive connections, each appending in a loop.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Streams the appends are spread over.
    #[arg(long, default_value_t = 16)]
    pub streams: usize,
    /// Bytes per append (per message in json mode), e.g. 256 or 4KiB.
    #[arg(long, default_value = "256", value_parser = parse_byte_size)]
    pub body_size: u64,
    /// plain, producer (idempotent producer headers) or json.
    #[arg(long, value_enum, default_value_t = AppendMode::Plain)]
    pub mode: AppendMode,
    /// Messages per append in json mode.
    #[arg(long, default_value_t = 10)]
    pub batch: usize,
    /// The server's process id, to report its CPU time per append
    /// (Linux; the server must run on this machine).
    #[arg(long)]
    pub server_pid: Option<u32>,
}

impl AppendOptions {
    /// A short description, e.g. `16c×16s×256B plain`.
    pub fn case(&self) -> String {
        let mut case = format!(
            "{}c×{}s×{}B {}",
            self.connections,
            self.streams,
            self.body_size,
            self.mode.name()
        );
        if self.mode == AppendMode::Json {
            case.push_str(&format!("×{}", self.batch));
        }
        case
    }

    fn messages_per_append(&self) -> u64 {
        match self.mode {
            AppendMode::Json => self.batch as u64,
            AppendMode::Plain | AppendMode::Producer => 1,
        }
    }
}

/// Results of the `append` scenario.
#[derive(Debug, Clone, Serialize)]
pub struct AppendOutcome {
    pub elapsed_s: f64,
    /// Successful appends (requests).
    pub appends: u64,
    pub appends_per_s: f64,
    /// Messages appended (appends × batch in json mode).
    pub messages: u64,
    pub messages_per_s: f64,
    /// Request body bytes of successful appends.
    pub bytes: u64,
    /// Megabytes (10^6 bytes) per second.
    pub mb_per_s: f64,
    pub latency: LatencySummary,
    pub errors: ErrorTally,
    /// Producer mode: appends answered as duplicates (`204`), which a run
    /// without retries should not see.
    pub producer_duplicates: u64,
    /// TCP connections opened (C unless the server closed some).
    pub connections_opened: u64,
    /// The server's CPU time per successful append, when `--server-pid`
    /// was given.
    pub server_cpu: Option<ServerCpu>,
}

/// CPU time the server spent per successful append while the load ran.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ServerCpu {
    pub user_us_per_append: f64,
    pub system_us_per_append: f64,
    pub total_us_per_append: f64,
}

impl ServerCpu {
    pub fn between(before: CpuTime, after: CpuTime, appends: u64) -> Option<Self> {
        if appends == 0 {
            return None;
        }
        let per_append = |seconds: f64| seconds * 1e6 / appends as f64;
        let user = per_append(after.user_s - before.user_s);
        let system = per_append(after.system_s - before.system_s);
        Some(ServerCpu {
            user_us_per_append: user,
            system_us_per_append: system,
            total_us_per_append: user + system,
        })
    }
}

impl Outcome for AppendOutcome {
    fn rows(&self) -> Vec<Row> {
        let mut rows = vec![
            ("appends".to_owned(), format_count(self.appends)),
            rate_row("appends/s", self.appends_per_s),
        ];
        if self.messages != self.appends {
            rows.push(rate_row("messages/s", self.messages_per_s));
        }
        rows.push(rate_row("MB/s", self.mb_per_s));
        rows.extend(latency_rows("latency", &self.latency));
        rows.push(("errors".to_owned(), self.errors.describe()));
        if self.producer_duplicates > 0 {
            rows.push((
                "producer duplicates".to_owned(),
                format_count(self.producer_duplicates),
            ));
        }
        rows.push((
            "connections opened".to_owned(),
            format_count(self.connections_opened),
        ));
        if let Some(cpu) = self.server_cpu {
            rows.push((
                "server CPU per append".to_owned(),
                format!(
                    "{:.1} µs (user {:.1}, system {:.1})",
                    cpu.total_us_per_append, cpu.user_us_per_append, cpu.system_us_per_append
                ),
            ));
        }
        rows
    }

    fn headline(&self) -> Headline {
        Headline {
            throughput: Some(self.appends_per_s),
            throughput_unit: Some("appends/s".to_owned()),
            latency_of: Some("append".to_owned()),
            latency: Some(self.latency),
            problems: self.errors.total() + self.producer_duplicates,
        }
    }

    fn notes(&self) -> Vec<String> {
        errors_as_notes(&self.errors)
    }
}

/// What every worker shares.
struct Plan {
    streams: Vec<String>,
    content_type: &'static str,
    body: Bytes,
    mode: AppendMode,
    connections: usize,
    messages_per_append: u64,
}

/// What one worker counted.
struct WorkerTally {
    appends: u64,
    bytes: u64,
    latency: LatencyRecorder,
    errors: ErrorTally,
    producer_duplicates: u64,
    connections_opened: u64,
}

/// Runs the scenario: creates the streams, appends for the duration,
/// deletes the streams.
pub async fn run(context: &RunContext, options: &AppendOptions) -> anyhow::Result<AppendOutcome> {
    ensure!(options.connections > 0, "--connections must be at least 1");
    ensure!(options.streams > 0, "--streams must be at least 1");
    ensure!(options.body_size > 0, "--body-size must be at least 1 byte");
    ensure!(options.batch > 0, "--batch must be at least 1");
    let body_size = usize::try_from(options.body_size).context("--body-size is too large")?;
    if let Some(pid) = options.server_pid {
        // Refuse a wrong pid before creating any stream.
        cpu_time(pid)?;
    }

    let content_type = match options.mode {
        AppendMode::Json => JSON,
        AppendMode::Plain | AppendMode::Producer => OCTET_STREAM,
    };
    let body = match options.mode {
        AppendMode::Json => json_batch(options.batch, body_size),
        AppendMode::Plain | AppendMode::Producer => {
            Bytes::from(Pattern::new(1).bytes(0, body_size))
        }
    };
    let streams: Vec<String> = (0..options.streams)
        .map(|index| context.stream_name("append", index))
        .collect();
    let mut setup = context.connection();
    for name in &streams {
        create_stream(&mut setup, name, content_type)
            .await
            .with_context(|| format!("creating stream {name}"))?;
    }
    drop(setup);

    let plan = Arc::new(Plan {
        streams,
        content_type,
        body,
        mode: options.mode,
        connections: options.connections,
        messages_per_append: options.messages_per_append(),
    });
    let counters = Counters::default();
    let progress = Progress::start("append", "appends", counters.clone(), context.quiet);
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
    progress.finish();
    context.remove_streams(&plan.streams).await;
    let tallies = tallies?;

    let mut latency = LatencyRecorder::new()?;
    let mut errors = ErrorTally::default();
    let (mut appends, mut bytes, mut duplicates, mut opened) = (0, 0, 0, 0);
    for tally in &tallies {
        latency.merge(&tally.latency);
        errors.merge(&tally.errors);
        appends += tally.appends;
        bytes += tally.bytes;
        duplicates += tally.producer_duplicates;
        opened += tally.connections_opened;
    }
    let messages = appends * plan.messages_per_append;
    Ok(AppendOutcome {
        elapsed_s,
        appends,
        appends_per_s: per_second(appends, elapsed_s),
        messages,
        messages_per_s: per_second(messages, elapsed_s),
        bytes,
        mb_per_s: per_second(bytes, elapsed_s) / 1e6,
        latency: latency.summary(),
        errors,
        producer_duplicates: duplicates,
        connections_opened: opened,
        server_cpu: run
            .server_cpu
            .and_then(|(before, after)| ServerCpu::between(before, after, appends)),
    })
}

/// Counts an append that failed; after a transport error, pauses briefly
/// so that a worker does not spin against a server that is down.
pub(super) async fn append_failed(
    error: &protocol::OpError,
    counters: &Counters,
    errors: &mut ErrorTally,
) {
    counters.add_error();
    errors.record(error);
    if matches!(error, protocol::OpError::Transport { .. }) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One connection appending until the deadline.
async fn append_worker(
    worker: usize,
    context: &RunContext,
    plan: &Plan,
    deadline: Instant,
    counters: &Counters,
) -> anyhow::Result<WorkerTally> {
    let mut connection = context.connection();
    let producer_id = format!("{}-producer-{worker}", context.stream_prefix());
    let mut producer_seqs = vec![0u64; plan.streams.len()];
    let mut tally = WorkerTally {
        appends: 0,
        bytes: 0,
        latency: LatencyRecorder::new()?,
        errors: ErrorTally::default(),
        producer_duplicates: 0,
        connections_opened: 0,
    };
    let mut request_index = 0usize;
    while Instant::now() < deadline {
        let stream = (worker + request_index * plan.connections) % plan.streams.len();
        request_index += 1;
        let producer = (plan.mode == AppendMode::Producer).then(|| Producer {
            id: &producer_id,
            epoch: 0,
            seq: producer_seqs[stream],
        });
        let sent = Instant::now();
        let result = append_to_stream(
            &mut connection,
            &plan.streams[stream],
            plan.content_type,
            plan.body.clone(),
            producer,
        )
        .await;
        match result {
            Ok(reply) => {
                tally.latency.record(sent.elapsed());
                tally.appends += 1;
                tally.bytes += plan.body.len() as u64;
                counters.add_ops(1);
                if producer.is_some() {
                    producer_seqs[stream] += 1;
                    if reply.status == StatusCode::NO_CONTENT {
                        tally.producer_duplicates += 1;
                    }
                }
            }
            Err(error) => {
                append_failed(&error, counters, &mut tally.errors).await;
            }
        }
    }
    tally.connections_opened = connection.times_opened();
    Ok(tally)
}

/// A JSON array of `count` messages of about `message_size` bytes each:
/// `{"n":0,"p":"xxxx…"}`.
fn json_batch(count: usize, message_size: usize) -> Bytes {
    let mut body = String::with_capacity(count * (message_size + 1) + 2);
    body.push('[');
    for n in 0..count {
        if n > 0 {
            body.push(',');
        }
        let head = format!("{{\"n\":{n},\"p\":\"");
        let padding = message_size.saturating_sub(head.len() + 2);
        body.push_str(&head);
        body.extend(std::iter::repeat_n('x', padding));
        body.push_str("\"}");
    }
    body.push(']');
    Bytes::from(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_batches_are_arrays_of_sized_messages() {
        let body = json_batch(3, 64);
        let messages: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
        assert_eq!(messages.len(), 3);
        for (n, message) in messages.iter().enumerate() {
            assert_eq!(message["n"], n);
            assert_eq!(serde_json::to_string(message).unwrap().len(), 64);
        }
        // Tiny sizes still give valid JSON.
        let tiny: Vec<serde_json::Value> = serde_json::from_slice(&json_batch(2, 1)).unwrap();
        assert_eq!(tiny.len(), 2);
    }

    #[test]
    fn server_cpu_is_divided_by_successful_appends() {
        let before = CpuTime {
            user_s: 1.0,
            system_s: 2.0,
        };
        let after = CpuTime {
            user_s: 1.5,
            system_s: 2.25,
        };
        let cpu = ServerCpu::between(before, after, 50_000).expect("appends were made");
        assert!((cpu.user_us_per_append - 10.0).abs() < 1e-9, "{cpu:?}");
        assert!((cpu.system_us_per_append - 5.0).abs() < 1e-9, "{cpu:?}");
        assert!((cpu.total_us_per_append - 15.0).abs() < 1e-9, "{cpu:?}");
        assert!(ServerCpu::between(before, after, 0).is_none());
    }

    #[test]
    fn case_names_the_parameters() {
        let options = AppendOptions {
            connections: 16,
            streams: 4,
            body_size: 256,
            mode: AppendMode::Json,
            batch: 10,
            server_pid: None,
        };
        assert_eq!(options.case(), "16c×4s×256B json×10");
        assert_eq!(options.messages_per_append(), 10);
    }
}
