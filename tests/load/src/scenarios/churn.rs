//! The `churn` scenario: C connections each run create → append → read →
//! delete cycles on fresh streams for the duration, verifying the bytes
//! read back. Reports cycles per second and the latency of each step.

use super::read::seed_of;
use super::{RunContext, join_workers, per_second, seconds_since};
use crate::pattern::Pattern;
use crate::progress::{Counters, Progress};
use crate::protocol::{
    OCTET_STREAM, OpError, append_to_stream, create_stream, delete_stream, read_to_end,
};
use crate::report::{Headline, Outcome, Row, errors_as_notes, latency_rows, rate_row};
use crate::stats::{ErrorTally, LatencyRecorder, LatencySummary};
use crate::units::{format_count, parse_byte_size};
use anyhow::ensure;
use bytes::Bytes;
use serde::Serialize;
use std::time::Duration;
use tokio::time::Instant;

/// Options of the `churn` scenario.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct ChurnOptions {
    /// Concurrent connections, each running cycles in a loop.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Bytes appended (and read back) per cycle.
    #[arg(long, default_value = "1KiB", value_parser = parse_byte_size)]
    pub body_size: u64,
}

impl ChurnOptions {
    /// A short description, e.g. `8c×1024B`.
    pub fn case(&self) -> String {
        format!("{}c×{}B", self.connections, self.body_size)
    }
}

/// Latency of each step of a cycle.
#[derive(Debug, Clone, Serialize)]
pub struct StepLatencies {
    pub create: LatencySummary,
    pub append: LatencySummary,
    pub read: LatencySummary,
    pub delete: LatencySummary,
}

/// Results of the `churn` scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ChurnOutcome {
    pub elapsed_s: f64,
    /// Complete create → append → read → delete cycles.
    pub cycles: u64,
    pub cycles_per_s: f64,
    /// Time of a whole cycle.
    pub latency: LatencySummary,
    pub steps: StepLatencies,
    /// Cycles whose read-back bytes were wrong.
    pub verification_failures: u64,
    pub errors: ErrorTally,
}

impl Outcome for ChurnOutcome {
    fn rows(&self) -> Vec<Row> {
        let mut rows = vec![
            ("cycles".to_owned(), format_count(self.cycles)),
            rate_row("cycles/s", self.cycles_per_s),
        ];
        rows.extend(latency_rows("cycle", &self.latency));
        for (step, summary) in [
            ("create", &self.steps.create),
            ("append", &self.steps.append),
            ("read", &self.steps.read),
            ("delete", &self.steps.delete),
        ] {
            rows.extend(latency_rows(step, summary).into_iter().take(2));
        }
        rows.push((
            "verification failures".to_owned(),
            format_count(self.verification_failures),
        ));
        rows.push(("errors".to_owned(), self.errors.describe()));
        rows
    }

    fn headline(&self) -> Headline {
        Headline {
            throughput: Some(self.cycles_per_s),
            throughput_unit: Some("churn cycles/s".to_owned()),
            latency_of: Some("cycle".to_owned()),
            latency: Some(self.latency),
            problems: self.errors.total() + self.verification_failures,
        }
    }

    fn notes(&self) -> Vec<String> {
        errors_as_notes(&self.errors)
    }
}

/// What one worker counted.
struct WorkerTally {
    cycles: u64,
    cycle: LatencyRecorder,
    create: LatencyRecorder,
    append: LatencyRecorder,
    read: LatencyRecorder,
    delete: LatencyRecorder,
    verification_failures: u64,
    errors: ErrorTally,
}

impl WorkerTally {
    fn new() -> anyhow::Result<WorkerTally> {
        Ok(WorkerTally {
            cycles: 0,
            cycle: LatencyRecorder::new()?,
            create: LatencyRecorder::new()?,
            append: LatencyRecorder::new()?,
            read: LatencyRecorder::new()?,
            delete: LatencyRecorder::new()?,
            verification_failures: 0,
            errors: ErrorTally::default(),
        })
    }

    fn merge(&mut self, other: &WorkerTally) {
        self.cycles += other.cycles;
        self.cycle.merge(&other.cycle);
        self.create.merge(&other.create);
        self.append.merge(&other.append);
        self.read.merge(&other.read);
        self.delete.merge(&other.delete);
        self.verification_failures += other.verification_failures;
        self.errors.merge(&other.errors);
    }
}

/// Runs the scenario.
pub async fn run(context: &RunContext, options: &ChurnOptions) -> anyhow::Result<ChurnOutcome> {
    ensure!(options.connections > 0, "--connections must be at least 1");
    ensure!(options.body_size > 0, "--body-size must be at least 1 byte");
    let body_size = usize::try_from(options.body_size)?;
    let counters = Counters::default();
    let progress = Progress::start("churn", "cycles", counters.clone(), context.quiet);
    let start = Instant::now();
    let deadline = start + context.duration;
    let workers = (0..options.connections)
        .map(|worker| {
            let context = context.clone();
            let counters = counters.clone();
            tokio::spawn(async move {
                churn_worker(worker, &context, body_size, deadline, &counters).await
            })
        })
        .collect();
    let tallies = join_workers(workers).await;
    let elapsed_s = seconds_since(start);
    progress.finish();
    let mut total = WorkerTally::new()?;
    for tally in &tallies? {
        total.merge(tally);
    }
    Ok(ChurnOutcome {
        elapsed_s,
        cycles: total.cycles,
        cycles_per_s: per_second(total.cycles, elapsed_s),
        latency: total.cycle.summary(),
        steps: StepLatencies {
            create: total.create.summary(),
            append: total.append.summary(),
            read: total.read.summary(),
            delete: total.delete.summary(),
        },
        verification_failures: total.verification_failures,
        errors: total.errors,
    })
}

/// One connection running cycles until the deadline.
async fn churn_worker(
    worker: usize,
    context: &RunContext,
    body_size: usize,
    deadline: Instant,
    counters: &Counters,
) -> anyhow::Result<WorkerTally> {
    let mut connection = context.connection();
    let mut tally = WorkerTally::new()?;
    let mut cycle = 0u64;
    while Instant::now() < deadline {
        let name = context.stream_name("churn", format!("{worker}-{cycle}"));
        cycle += 1;
        let pattern = Pattern::new(seed_of(&name));
        let cycle_start = Instant::now();
        match run_cycle(&mut connection, &name, pattern, body_size, &mut tally).await {
            Ok(verified) => {
                tally.cycle.record(cycle_start.elapsed());
                tally.cycles += 1;
                counters.add_ops(1);
                if !verified {
                    counters.add_error();
                    tally.verification_failures += 1;
                }
            }
            Err(error) => {
                counters.add_error();
                let transport = matches!(error, OpError::Transport { .. });
                tally.errors.record(&error);
                // Best effort: leave no stream behind (it may not exist).
                let _ = delete_stream(&mut connection, &name).await;
                if transport {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    Ok(tally)
}

/// One cycle; `Ok(false)` when the bytes read back were wrong.
async fn run_cycle(
    connection: &mut crate::client::Connection,
    name: &str,
    pattern: Pattern,
    body_size: usize,
    tally: &mut WorkerTally,
) -> Result<bool, OpError> {
    let step = Instant::now();
    create_stream(connection, name, OCTET_STREAM).await?;
    tally.create.record(step.elapsed());

    let step = Instant::now();
    let body = Bytes::from(pattern.bytes(0, body_size));
    append_to_stream(connection, name, OCTET_STREAM, body, None).await?;
    tally.append.record(step.elapsed());

    let step = Instant::now();
    let mut intact = true;
    let read = read_to_end(connection, name, |position, chunk| {
        intact &= pattern.verify(position, chunk).is_ok();
    })
    .await?;
    tally.read.record(step.elapsed());

    let step = Instant::now();
    delete_stream(connection, name).await?;
    tally.delete.record(step.elapsed());
    Ok(intact && read.bytes == body_size as u64)
}
