//! The progress line on stderr, once a second while a scenario runs:
//! elapsed time, operations so far, the rate over the last second and the
//! errors so far. On a terminal the line is redrawn in place.

use crate::units::{format_count, format_real};
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Counters the workers bump and the progress line reads.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    ops: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
}

impl Counters {
    pub fn add_ops(&self, count: u64) {
        self.ops.fetch_add(count, Ordering::Relaxed);
    }

    pub fn add_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

/// The running progress line; stops when finished or dropped.
pub struct Progress {
    task: Option<JoinHandle<()>>,
    on_terminal: bool,
}

impl Progress {
    /// Starts printing `scenario`'s progress, counting `unit`s, unless
    /// `quiet`.
    pub fn start(scenario: &str, unit: &str, counters: Counters, quiet: bool) -> Progress {
        let on_terminal = std::io::stderr().is_terminal();
        if quiet {
            return Progress {
                task: None,
                on_terminal,
            };
        }
        let scenario = scenario.to_owned();
        let unit = unit.to_owned();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut ticks =
                tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
            let mut previous = (started, counters.ops());
            loop {
                let now = ticks.tick().await;
                let ops = counters.ops();
                let seconds = now.duration_since(previous.0).as_secs_f64().max(1e-9);
                let rate = (ops - previous.1) as f64 / seconds;
                previous = (now, ops);
                let line = format!(
                    "ds-load {scenario} [{:>5.1}s] {} {unit}, {}/s, {} errors",
                    now.duration_since(started).as_secs_f64(),
                    format_count(ops),
                    format_real(rate),
                    format_count(counters.errors()),
                );
                let mut stderr = std::io::stderr().lock();
                let _ = if on_terminal {
                    write!(stderr, "\r\x1b[K{line}")
                } else {
                    writeln!(stderr, "{line}")
                };
                let _ = stderr.flush();
            }
        });
        Progress {
            task: Some(task),
            on_terminal,
        }
    }

    /// Stops the line (ending it on a terminal).
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            if self.on_terminal {
                let _ = writeln!(std::io::stderr());
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop();
    }
}
