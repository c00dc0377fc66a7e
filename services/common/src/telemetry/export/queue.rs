//! The span queue between requests and the exporter, bounded and counted:
//! the SDK's batch processor drops spans when its queue is full and
//! reports only the first. This processor keeps its own count of the spans
//! waiting, drops (and counts) those beyond the queue's size before the
//! SDK would, and the exporter's thread logs how many were dropped at most
//! once a minute, never on a request's path.

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Span, SpanData, SpanExporter, SpanProcessor,
};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Spans the queue holds unless `OTEL_BSP_MAX_QUEUE_SIZE` says otherwise
/// (the SDK's default).
const DEFAULT_QUEUE: usize = 2048;
/// Least time between two log lines about dropped spans.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// A batch processor exporting with `exporter`, its queue counted.
pub fn processor<E: SpanExporter + 'static>(exporter: E) -> impl SpanProcessor {
    let limit = std::env::var("OTEL_BSP_MAX_QUEUE_SIZE")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(DEFAULT_QUEUE);
    bounded(exporter, limit).0
}

fn bounded<E: SpanExporter + 'static>(exporter: E, limit: usize) -> (BoundedProcessor, Arc<Queue>) {
    let queue = Arc::new(Queue::default());
    let exporter = CountingExporter {
        inner: exporter,
        queue: Arc::clone(&queue),
    };
    let config = BatchConfigBuilder::default()
        .with_max_queue_size(limit)
        .build();
    let processor = BoundedProcessor {
        inner: BatchSpanProcessor::builder(exporter)
            .with_batch_config(config)
            .build(),
        queue: Arc::clone(&queue),
        limit,
    };
    (processor, queue)
}

/// Spans waiting for export, and those dropped because too many were.
#[derive(Debug, Default)]
struct Queue {
    waiting: AtomicUsize,
    dropped: AtomicU64,
    /// `dropped` when it was last logged, and when.
    reported: Mutex<(u64, Option<Instant>)>,
}

impl Queue {
    /// Logs the spans dropped since the last report, unless that was less
    /// than [`REPORT_EVERY`] ago (`now`: whenever, as at shutdown).
    /// Returns how many it reported.
    fn report(&self, now: bool) -> u64 {
        let dropped = self.dropped.load(Ordering::Relaxed);
        let Ok(mut reported) = self.reported.lock() else {
            return 0;
        };
        let (before, at) = *reported;
        if dropped == before || (!now && at.is_some_and(|at| at.elapsed() < REPORT_EVERY)) {
            return 0;
        }
        tracing::warn!(
            dropped = dropped - before,
            total = dropped,
            "spans dropped: the export queue was full (is the collector slow or unreachable?)"
        );
        *reported = (dropped, Some(Instant::now()));
        dropped - before
    }
}

#[derive(Debug)]
struct BoundedProcessor {
    inner: BatchSpanProcessor,
    queue: Arc<Queue>,
    limit: usize,
}

impl SpanProcessor for BoundedProcessor {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        let queue = &self.queue;
        if queue.waiting.fetch_add(1, Ordering::Relaxed) >= self.limit {
            queue.waiting.fetch_sub(1, Ordering::Relaxed);
            queue.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let result = self.inner.shutdown_with_timeout(timeout);
        self.queue.report(true);
        result
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The exporter, taking each batch off the count of waiting spans.
#[derive(Debug)]
struct CountingExporter<E> {
    inner: E,
    queue: Arc<Queue>,
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        self.queue.waiting.fetch_sub(batch.len(), Ordering::Relaxed);
        self.queue.report(false);
        self.inner.export(batch)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use std::sync::mpsc;

    /// An exporter whose first export blocks until told to go on, like a
    /// collector that stopped answering.
    #[derive(Debug)]
    struct StuckExporter {
        release: Mutex<Option<mpsc::Receiver<()>>>,
        exported: Arc<AtomicUsize>,
    }

    impl SpanExporter for StuckExporter {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            let waiting = self.release.lock().ok().and_then(|mut r| r.take());
            if let Some(release) = waiting {
                let _ = release.recv();
            }
            self.exported.fetch_add(batch.len(), Ordering::Relaxed);
            Ok(())
        }
    }

    #[test]
    fn spans_beyond_the_queue_are_dropped_counted_and_reported_once() {
        let (release, released) = mpsc::channel();
        let exported = Arc::new(AtomicUsize::new(0));
        let exporter = StuckExporter {
            release: Mutex::new(Some(released)),
            exported: Arc::clone(&exported),
        };
        let limit = 64;
        let (processor, queue) = bounded(exporter, limit);
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .build();
        let tracer = provider.tracer("test");
        let ended = 1000;
        for _ in 0..ended {
            tracer.start("request").end();
        }
        // The exporter holds at most one batch; the queue the rest, up to
        // its size; everything else was dropped and counted.
        let dropped = queue.dropped.load(Ordering::Relaxed) as usize;
        assert!(dropped >= ended - 2 * limit, "{dropped}");
        assert!(queue.waiting.load(Ordering::Relaxed) <= limit);
        // The exporter's thread may have logged some drops already (it
        // reports before each export); whatever it has not, this does.
        queue.report(true);
        let logged = queue.reported.lock().expect("lock").0;
        assert_eq!(logged as usize, dropped, "every drop reported");
        assert_eq!(
            queue.report(false),
            0,
            "nothing is logged again within the minute"
        );
        tracer.start("request").end();
        release.send(()).expect("release the exporter");
        provider.shutdown().expect("shutdown");
        assert_eq!(
            exported.load(Ordering::Relaxed) + queue.dropped.load(Ordering::Relaxed) as usize,
            ended + 1,
            "every span was exported or counted as dropped"
        );
    }
}
