//! Latency histograms and their summaries (percentiles in milliseconds),
//! a sharded histogram many subscriber tasks can record into at once, and
//! the error tally every scenario reports.

use crate::protocol::OpError;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// The largest latency a histogram holds exactly; longer ones are
/// recorded as this (ten minutes, in microseconds).
const MAX_TRACKED_MICROS: u64 = 600_000_000;

/// How many error messages a tally keeps as examples.
const ERROR_EXAMPLES: usize = 5;

/// Why a histogram could not be created.
#[derive(Debug, thiserror::Error)]
#[error("cannot create a latency histogram: {0}")]
pub struct StatsError(hdrhistogram::CreationError);

impl From<hdrhistogram::CreationError> for StatsError {
    fn from(error: hdrhistogram::CreationError) -> StatsError {
        StatsError(error)
    }
}

/// Latencies in microseconds, three significant figures.
#[derive(Debug, Clone)]
pub struct LatencyRecorder {
    histogram: Histogram<u64>,
}

impl LatencyRecorder {
    pub fn new() -> Result<LatencyRecorder, StatsError> {
        Ok(LatencyRecorder {
            histogram: Histogram::new_with_bounds(1, MAX_TRACKED_MICROS, 3)?,
        })
    }

    pub fn record(&mut self, latency: Duration) {
        self.record_micros(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn record_micros(&mut self, micros: u64) {
        self.histogram
            .saturating_record(micros.clamp(1, MAX_TRACKED_MICROS));
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &LatencyRecorder) {
        // Both have the same bounds, so adding cannot fail; a failure could
        // only drop samples, which the count in the summary would show.
        let _ = self.histogram.add(&other.histogram);
    }

    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    pub fn summary(&self) -> LatencySummary {
        let ms = |micros: u64| micros as f64 / 1000.0;
        let quantile = |q: f64| ms(self.histogram.value_at_quantile(q));
        if self.histogram.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: self.histogram.len(),
            mean_ms: self.histogram.mean() / 1000.0,
            p50_ms: quantile(0.50),
            p90_ms: quantile(0.90),
            p99_ms: quantile(0.99),
            p999_ms: quantile(0.999),
            max_ms: ms(self.histogram.max()),
        }
    }
}

/// Percentiles of a latency distribution, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// A latency histogram split in shards, each behind its own lock, so
/// thousands of tasks can record without contending on one lock.
#[derive(Debug)]
pub struct ShardedLatency {
    shards: Vec<Mutex<LatencyRecorder>>,
}

impl ShardedLatency {
    pub fn new(shards: usize) -> Result<ShardedLatency, StatsError> {
        let shards = (0..shards.max(1))
            .map(|_| LatencyRecorder::new().map(Mutex::new))
            .collect::<Result<_, _>>()?;
        Ok(ShardedLatency { shards })
    }

    /// Records a batch of samples (microseconds) into the shard `hint`
    /// picks, taking its lock once.
    pub fn record_batch(&self, hint: usize, micros: &[u64]) {
        if micros.is_empty() {
            return;
        }
        let mut shard = lock(&self.shards[hint % self.shards.len()]);
        for &sample in micros {
            shard.record_micros(sample);
        }
    }

    /// All shards merged.
    pub fn merged(&self) -> Result<LatencyRecorder, StatsError> {
        let mut all = LatencyRecorder::new()?;
        for shard in &self.shards {
            all.merge(&lock(shard));
        }
        Ok(all)
    }
}

/// Locks a mutex, taking the data even if a panicking holder poisoned it
/// (a histogram stays consistent whatever happened).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Failed operations by kind, plus a few example messages.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorTally {
    /// Non-success answers by status code.
    pub http_status: BTreeMap<u16, u64>,
    /// Connection, timeout and other transport failures.
    pub transport: u64,
    /// Answers that break the protocol (missing headers, bad bodies).
    pub protocol: u64,
    /// The first few error messages, for diagnosis.
    pub examples: Vec<String>,
}

impl ErrorTally {
    /// Every error counted.
    pub fn total(&self) -> u64 {
        self.http_status.values().sum::<u64>() + self.transport + self.protocol
    }

    pub fn record(&mut self, error: &OpError) {
        match error {
            OpError::Status { status, .. } => {
                *self.http_status.entry(status.as_u16()).or_default() += 1;
            }
            OpError::Transport { .. } => self.transport += 1,
            OpError::Protocol { .. } | OpError::Build { .. } => self.protocol += 1,
        }
        self.remember(error.to_string());
    }

    /// Counts a protocol violation described by `message`.
    pub fn record_protocol(&mut self, message: String) {
        self.protocol += 1;
        self.remember(message);
    }

    fn remember(&mut self, message: String) {
        if self.examples.len() < ERROR_EXAMPLES && !self.examples.contains(&message) {
            self.examples.push(message);
        }
    }

    pub fn merge(&mut self, other: &ErrorTally) {
        for (status, count) in &other.http_status {
            *self.http_status.entry(*status).or_default() += count;
        }
        self.transport += other.transport;
        self.protocol += other.protocol;
        for example in &other.examples {
            self.remember(example.clone());
        }
    }

    /// `"0"`, or for instance `"12 (409×10, transport×2)"`.
    pub fn describe(&self) -> String {
        let total = self.total();
        if total == 0 {
            return "0".to_owned();
        }
        let mut parts: Vec<String> = self
            .http_status
            .iter()
            .map(|(status, count)| format!("{status}×{count}"))
            .collect();
        if self.transport > 0 {
            parts.push(format!("transport×{}", self.transport));
        }
        if self.protocol > 0 {
            parts.push(format!("protocol×{}", self.protocol));
        }
        format!("{total} ({})", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::HttpError;
    use http::StatusCode;

    #[test]
    fn summary_of_uniform_samples() {
        let mut recorder = LatencyRecorder::new().unwrap();
        for ms in 1..=1000u64 {
            recorder.record(Duration::from_millis(ms));
        }
        let summary = recorder.summary();
        assert_eq!(summary.count, 1000);
        assert!((summary.p50_ms - 500.0).abs() < 1.0, "{summary:?}");
        assert!((summary.p99_ms - 990.0).abs() < 1.0, "{summary:?}");
        assert!((summary.p999_ms - 999.0).abs() < 1.0, "{summary:?}");
        assert!((summary.max_ms - 1000.0).abs() < 1.0, "{summary:?}");
        assert!((summary.mean_ms - 500.5).abs() < 1.0, "{summary:?}");
    }

    #[test]
    fn empty_summary_is_zero() {
        assert_eq!(
            LatencyRecorder::new().unwrap().summary(),
            LatencySummary::default()
        );
    }

    #[test]
    fn huge_and_zero_latencies_are_clamped() {
        let mut recorder = LatencyRecorder::new().unwrap();
        recorder.record(Duration::ZERO);
        recorder.record(Duration::from_secs(100_000));
        let summary = recorder.summary();
        assert_eq!(summary.count, 2);
        assert!(summary.max_ms >= 599_000.0);
    }

    #[test]
    fn merge_and_shards_combine_samples() {
        let sharded = ShardedLatency::new(4).unwrap();
        for hint in 0..8 {
            sharded.record_batch(hint, &[1000, 2000]);
        }
        let mut merged = sharded.merged().unwrap();
        assert_eq!(merged.count(), 16);
        let mut other = LatencyRecorder::new().unwrap();
        other.record_micros(5000);
        merged.merge(&other);
        assert_eq!(merged.count(), 17);
        assert!((merged.summary().max_ms - 5.0).abs() < 0.01);
    }

    #[test]
    fn tally_counts_and_describes() {
        let mut tally = ErrorTally::default();
        assert_eq!(tally.describe(), "0");
        for _ in 0..3 {
            tally.record(&OpError::Status {
                op: "append",
                status: StatusCode::CONFLICT,
                body: String::new(),
            });
        }
        tally.record(&OpError::Transport {
            op: "append",
            cause: HttpError::Timeout(Duration::from_secs(1)),
        });
        tally.record_protocol("bad body".into());
        let mut total = ErrorTally::default();
        total.merge(&tally);
        total.merge(&tally);
        assert_eq!(total.total(), 10);
        assert_eq!(total.http_status[&409], 6);
        assert_eq!(total.describe(), "10 (409×6, transport×2, protocol×2)");
        assert_eq!(total.examples.len(), 3);
    }
}
