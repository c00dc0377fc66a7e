//! The load scenarios and what they share: the run context (target,
//! duration, timeouts, stream names unique to the run) and clean-up of the
//! streams a run created.
//!
//! * [`append`] — concurrent appends (plain, idempotent producer, JSON).
//! * [`read`] — repeated full catch-up reads of one verified stream.
//! * [`live`] — delivery latency and exactly-once order to subscribers.
//! * [`fanout`] — many SSE subscribers on one stream; server memory.
//! * [`churn`] — create → append → read → delete cycles.
//! * [`subscriptions`] — appends under a pull-wake subscription on every
//!   stream, and the wake latency of its consumer.
//! * [`delivery`] — the writer/subscriber engine `live` and `fanout` use.

pub mod append;
pub mod churn;
pub mod delivery;
pub mod fanout;
pub mod live;
pub mod read;
pub mod subscriptions;

use crate::client::Connection;
use crate::protocol::delete_stream;
use crate::system::{CpuTime, cpu_time};
use crate::target::Target;
use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Everything a scenario needs besides its own options.
#[derive(Debug, Clone)]
pub struct RunContext {
    pub target: Arc<Target>,
    /// How long the load phase lasts.
    pub duration: Duration,
    /// How long one request may take (live requests get longer).
    pub request_timeout: Duration,
    /// No progress line or warnings on stderr.
    pub quiet: bool,
    /// Leave the run's streams on the server afterwards.
    pub keep_streams: bool,
    /// `<prefix>-<run id>`: the start of every stream name of this run.
    stream_prefix: String,
}

impl RunContext {
    pub fn new(
        target: Arc<Target>,
        duration: Duration,
        request_timeout: Duration,
        prefix: &str,
    ) -> RunContext {
        RunContext {
            target,
            duration,
            request_timeout,
            quiet: false,
            keep_streams: false,
            stream_prefix: format!("{prefix}-{}", run_id()),
        }
    }

    /// The name of stream `index` of `kind` in this run, e.g.
    /// `ds-load-m3x9k2-append-7`.
    pub fn stream_name(&self, kind: &str, index: impl Display) -> String {
        format!("{}-{kind}-{index}", self.stream_prefix)
    }

    /// The name prefix of this run's streams.
    pub fn stream_prefix(&self) -> &str {
        &self.stream_prefix
    }

    /// A new (not yet connected) keep-alive connection to the target.
    pub fn connection(&self) -> Connection {
        Connection::new(Arc::clone(&self.target), self.request_timeout)
    }

    /// Deletes the run's streams unless `keep_streams`; failures are only
    /// warned about, since the measurement is done.
    pub async fn remove_streams(&self, names: &[String]) {
        if self.keep_streams {
            return;
        }
        let mut connection = self.connection();
        for name in names {
            if let Err(error) = delete_stream(&mut connection, name).await {
                self.warn(&format!("could not delete stream {name}: {error}"));
            }
        }
    }

    /// A warning on stderr, unless quiet.
    pub fn warn(&self, message: &str) {
        if !self.quiet {
            eprintln!("ds-load: warning: {message}");
        }
    }
}

/// A short id, unique enough per run: milliseconds since the epoch and the
/// process id, in base 36.
fn run_id() -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0);
    format!(
        "{}{}",
        base36(millis),
        base36(u64::from(std::process::id() % 1296))
    )
}

fn base36(mut value: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut digits = Vec::new();
    loop {
        digits.push(DIGITS[(value % 36) as usize]);
        value /= 36;
        if value == 0 {
            break;
        }
    }
    digits.reverse();
    String::from_utf8_lossy(&digits).into_owned()
}

/// Seconds since `start`, for `elapsed_s` fields.
pub fn seconds_since(start: tokio::time::Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

/// `count / seconds`, zero when no time passed.
pub fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// A timed run of workers: each one's result, how long they ran, and the
/// server's CPU time just before and after.
pub struct TimedRun<T> {
    pub results: anyhow::Result<Vec<T>>,
    pub elapsed_s: f64,
    pub server_cpu: Option<(CpuTime, CpuTime)>,
}

/// Runs `connections` workers, each given its index and the run's deadline,
/// and reads the CPU time of `server_pid` around them.
pub async fn run_workers<T, F, Fut>(
    context: &RunContext,
    connections: usize,
    server_pid: Option<u32>,
    worker: F,
) -> anyhow::Result<TimedRun<T>>
where
    T: Send + 'static,
    F: Fn(usize, tokio::time::Instant) -> Fut,
    Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let cpu_before = server_pid.map(cpu_time).transpose()?;
    let start = tokio::time::Instant::now();
    let deadline = start + context.duration;
    let workers = (0..connections)
        .map(|index| tokio::spawn(worker(index, deadline)))
        .collect();
    let results = join_workers(workers).await;
    let elapsed_s = seconds_since(start);
    let cpu_after = server_pid.map(cpu_time).transpose()?;
    Ok(TimedRun {
        results,
        elapsed_s,
        server_cpu: cpu_before.zip(cpu_after),
    })
}

/// Waits for every worker; a worker that panicked or failed fails the run.
pub async fn join_workers<T>(
    workers: Vec<tokio::task::JoinHandle<anyhow::Result<T>>>,
) -> anyhow::Result<Vec<T>> {
    let mut results = Vec::with_capacity(workers.len());
    for worker in workers {
        results.push(worker.await??);
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_digits() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
    }

    #[test]
    fn stream_names_are_unique_to_the_run() {
        let target = Arc::new(Target::new("http://127.0.0.1:1/v1/stream", None).unwrap());
        let context = RunContext::new(target, Duration::from_secs(1), Duration::from_secs(1), "t");
        let name = context.stream_name("append", 3);
        assert!(name.starts_with("t-"));
        assert!(name.ends_with("-append-3"));
        assert!(!name.contains('/'));
    }

    #[test]
    fn rates() {
        assert_eq!(per_second(10, 2.0), 5.0);
        assert_eq!(per_second(10, 0.0), 0.0);
    }
}
