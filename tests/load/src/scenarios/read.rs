//! The `read` scenario: prepares one stream of a given size filled with
//! the deterministic [`Pattern`], then C connections repeatedly read it
//! whole by catch-up reads (following `Stream-Next-Offset` until
//! `Stream-Up-To-Date`), checking every byte and the total length.

use super::{RunContext, join_workers, per_second, seconds_since};
use crate::pattern::Pattern;
use crate::progress::{Counters, Progress};
use crate::protocol::{OCTET_STREAM, OpError, append_to_stream, create_stream, read_to_end};
use crate::report::{Headline, Outcome, Row, errors_as_notes, latency_rows, rate_row};
use crate::stats::{ErrorTally, LatencyRecorder, LatencySummary};
use crate::units::{format_bytes, format_count, format_real, parse_byte_size};
use anyhow::{Context, ensure};
use bytes::Bytes;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How many verification failures are described in the results.
const VERIFICATION_EXAMPLES: usize = 5;

/// Options of the `read` scenario.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct ReadOptions {
    /// Size of the stream that every full read fetches, e.g. 1MiB.
    #[arg(long, default_value = "1MiB", value_parser = parse_byte_size)]
    pub stream_size: u64,
    /// Concurrent connections, each reading the whole stream in a loop.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Bytes per append while preparing the stream.
    #[arg(long, default_value = "64KiB", value_parser = parse_byte_size)]
    pub append_size: u64,
}

impl ReadOptions {
    /// A short description, e.g. `1.00 MiB ×8c`.
    pub fn case(&self) -> String {
        format!("{} ×{}c", format_bytes(self.stream_size), self.connections)
    }
}

/// Results of the `read` scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ReadOutcome {
    pub elapsed_s: f64,
    /// Seconds spent writing the stream before the reads.
    pub prepare_s: f64,
    /// Complete reads of the whole stream.
    pub full_reads: u64,
    pub full_reads_per_s: f64,
    /// Catch-up requests made.
    pub requests: u64,
    pub requests_per_full_read: f64,
    /// Body bytes received by complete reads.
    pub bytes: u64,
    /// Megabytes (10^6 bytes) per second.
    pub mb_per_s: f64,
    /// Time of one complete read.
    pub latency: LatencySummary,
    /// Complete reads whose bytes or length were wrong.
    pub verification_failures: u64,
    pub verification_examples: Vec<String>,
    pub errors: ErrorTally,
}

impl Outcome for ReadOutcome {
    fn rows(&self) -> Vec<Row> {
        let mut rows = vec![
            ("full reads".to_owned(), format_count(self.full_reads)),
            rate_row("full reads/s", self.full_reads_per_s),
            rate_row("MB/s", self.mb_per_s),
            (
                "requests per read".to_owned(),
                format_real(self.requests_per_full_read),
            ),
        ];
        rows.extend(latency_rows("full read", &self.latency));
        rows.push((
            "verification failures".to_owned(),
            format_count(self.verification_failures),
        ));
        rows.push(("errors".to_owned(), self.errors.describe()));
        rows
    }

    fn headline(&self) -> Headline {
        Headline {
            throughput: Some(self.mb_per_s),
            throughput_unit: Some("read MB/s".to_owned()),
            latency_of: Some("full read".to_owned()),
            latency: Some(self.latency),
            problems: self.errors.total() + self.verification_failures,
        }
    }

    fn notes(&self) -> Vec<String> {
        let corrupt = self
            .verification_examples
            .iter()
            .map(|example| format!("corrupt read: {example}"));
        corrupt.chain(errors_as_notes(&self.errors)).collect()
    }
}

/// What one reader counted.
struct ReaderTally {
    full_reads: u64,
    requests: u64,
    bytes: u64,
    latency: LatencyRecorder,
    verification_failures: u64,
    verification_examples: Vec<String>,
    errors: ErrorTally,
}

/// Runs the scenario.
pub async fn run(context: &RunContext, options: &ReadOptions) -> anyhow::Result<ReadOutcome> {
    ensure!(options.connections > 0, "--connections must be at least 1");
    ensure!(
        options.stream_size > 0,
        "--stream-size must be at least 1 byte"
    );
    ensure!(
        options.append_size > 0,
        "--append-size must be at least 1 byte"
    );
    let name = context.stream_name("read", 0);
    let pattern = Pattern::new(seed_of(&name));

    let prepare_start = Instant::now();
    prepare_stream(context, &name, pattern, options).await?;
    let prepare_s = seconds_since(prepare_start);

    let counters = Counters::default();
    let progress = Progress::start("read", "full reads", counters.clone(), context.quiet);
    let start = Instant::now();
    let deadline = start + context.duration;
    let name = Arc::new(name);
    let workers = (0..options.connections)
        .map(|_| {
            let context = context.clone();
            let counters = counters.clone();
            let name = Arc::clone(&name);
            let expected_size = options.stream_size;
            tokio::spawn(async move {
                reader(&context, &name, pattern, expected_size, deadline, &counters).await
            })
        })
        .collect();
    let tallies = join_workers(workers).await;
    let elapsed_s = seconds_since(start);
    progress.finish();
    context.remove_streams(&[name.to_string()]).await;
    let tallies = tallies?;

    let mut latency = LatencyRecorder::new()?;
    let mut errors = ErrorTally::default();
    let mut examples = Vec::new();
    let (mut full_reads, mut requests, mut bytes, mut failures) = (0, 0, 0, 0);
    for tally in &tallies {
        latency.merge(&tally.latency);
        errors.merge(&tally.errors);
        full_reads += tally.full_reads;
        requests += tally.requests;
        bytes += tally.bytes;
        failures += tally.verification_failures;
        for example in &tally.verification_examples {
            if examples.len() < VERIFICATION_EXAMPLES {
                examples.push(example.clone());
            }
        }
    }
    Ok(ReadOutcome {
        elapsed_s,
        prepare_s,
        full_reads,
        full_reads_per_s: per_second(full_reads, elapsed_s),
        requests,
        requests_per_full_read: if full_reads > 0 {
            requests as f64 / full_reads as f64
        } else {
            0.0
        },
        bytes,
        mb_per_s: per_second(bytes, elapsed_s) / 1e6,
        latency: latency.summary(),
        verification_failures: failures,
        verification_examples: examples,
        errors,
    })
}

/// A seed derived from the stream name, so each run writes other bytes.
pub fn seed_of(name: &str) -> u64 {
    // FNV-1a.
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// Creates the stream and appends the pattern up to the requested size.
async fn prepare_stream(
    context: &RunContext,
    name: &str,
    pattern: Pattern,
    options: &ReadOptions,
) -> anyhow::Result<()> {
    let mut connection = context.connection();
    create_stream(&mut connection, name, OCTET_STREAM)
        .await
        .with_context(|| format!("creating stream {name}"))?;
    let mut position = 0u64;
    while position < options.stream_size {
        let size = options.append_size.min(options.stream_size - position);
        let chunk = pattern.bytes(position, usize::try_from(size)?);
        append_to_stream(
            &mut connection,
            name,
            OCTET_STREAM,
            Bytes::from(chunk),
            None,
        )
        .await
        .with_context(|| format!("preparing stream {name} at byte {position}"))?;
        position += size;
    }
    Ok(())
}

/// One connection reading the whole stream until the deadline.
async fn reader(
    context: &RunContext,
    name: &str,
    pattern: Pattern,
    expected_size: u64,
    deadline: Instant,
    counters: &Counters,
) -> anyhow::Result<ReaderTally> {
    let mut connection = context.connection();
    let mut tally = ReaderTally {
        full_reads: 0,
        requests: 0,
        bytes: 0,
        latency: LatencyRecorder::new()?,
        verification_failures: 0,
        verification_examples: Vec::new(),
        errors: ErrorTally::default(),
    };
    while Instant::now() < deadline {
        let started = Instant::now();
        let mut first_mismatch = None;
        let result = read_to_end(&mut connection, name, |position, chunk| {
            if first_mismatch.is_none()
                && let Err(mismatch) = pattern.verify(position, chunk)
            {
                first_mismatch = Some(mismatch);
            }
        })
        .await;
        match result {
            Ok(read) => {
                tally.latency.record(started.elapsed());
                tally.full_reads += 1;
                tally.requests += read.requests;
                tally.bytes += read.bytes;
                counters.add_ops(1);
                let problem = match first_mismatch {
                    Some(mismatch) => Some(format!(
                        "byte {} is {:#04x}, expected {:#04x}",
                        mismatch.position, mismatch.found, mismatch.expected
                    )),
                    None if read.bytes != expected_size => Some(format!(
                        "read {} bytes, expected {expected_size}",
                        read.bytes
                    )),
                    None => None,
                };
                if let Some(problem) = problem {
                    counters.add_error();
                    tally.verification_failures += 1;
                    if tally.verification_examples.len() < VERIFICATION_EXAMPLES {
                        tally.verification_examples.push(problem);
                    }
                }
            }
            Err(error) => {
                counters.add_error();
                let transport = matches!(error, OpError::Transport { .. });
                tally.errors.record(&error);
                if transport {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_differ_by_name() {
        assert_ne!(seed_of("a"), seed_of("b"));
        assert_eq!(seed_of("a"), seed_of("a"));
    }

    #[test]
    fn case_names_size_and_connections() {
        let options = ReadOptions {
            stream_size: 1 << 20,
            connections: 8,
            append_size: 65536,
        };
        assert_eq!(options.case(), "1.00 MiB ×8c");
    }
}
