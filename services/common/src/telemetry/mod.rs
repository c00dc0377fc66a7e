//! Telemetry shared by both services: logs on stderr, human-readable or as
//! JSON lines (`LOG_FORMAT=json`), and, once an OTLP endpoint is configured,
//! traces and metrics exported with OpenTelemetry.
//!
//! Logs go to stderr so stdout stays free for command output
//! (`TOKEN=$(auth-gateway token create ...)`).
//!
//! Spans meant for export use the target [`TARGET`]. Only the exporting
//! layer enables that target, so with no endpoint configured no such span
//! is ever created and the request path pays nothing for tracing.
//!
//! * [`export`] — the OTLP pipeline, configured by the standard `OTEL_*`
//!   variables.
//! * [`http`] — server spans for both services' routers, W3C trace context
//!   in and out, the `traceresponse` header.
//! * [`metrics`] — the instruments both services record.
//! * `logs` — JSON log lines that carry the current trace.

pub mod export;
pub mod http;
mod logs;
pub mod metrics;

use opentelemetry::trace::{SpanContext, TraceContextExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracing::Level;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The target of every span that is exported.
pub const TARGET: &str = "otel";

/// Whether spans are exported: set once by [`init`].
static TRACING: AtomicBool = AtomicBool::new(false);

/// Whether spans are being exported, so code can skip work that only feeds
/// spans (looking up the current span, formatting attributes).
pub fn tracing_enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// The current span when spans are exported: where request handlers
/// record attributes (`Span::record`) that become known as they work.
pub fn current_span() -> Option<tracing::Span> {
    tracing_enabled().then(tracing::Span::current)
}

/// The OpenTelemetry context of the current span, when spans are exported
/// and it is traced: what work done elsewhere on behalf of this request
/// (a storage engine's group commit) links back to.
pub fn current_context() -> Option<SpanContext> {
    if !tracing_enabled() {
        return None;
    }
    let context = tracing::Span::current().context();
    let ids = context.span().span_context().clone();
    ids.is_valid().then_some(ids)
}

/// Links `span` to each of `requests`: for work that serves several
/// requests at once and so has no single parent.
pub fn link_all<'a>(span: &tracing::Span, requests: impl IntoIterator<Item = &'a SpanContext>) {
    if span.is_disabled() {
        return;
    }
    for request in requests {
        span.add_link(request.clone());
    }
}

/// How log lines are written (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event (the default).
    Text,
    /// One JSON object per line, with `trace_id` and `span_id` inside a
    /// traced request.
    Json,
}

impl LogFormat {
    fn from_env() -> Result<LogFormat, String> {
        match std::env::var("LOG_FORMAT") {
            Err(_) => Ok(LogFormat::Text),
            Ok(value) => match value.trim().to_ascii_lowercase().as_str() {
                "" | "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                _ => Err(value),
            },
        }
    }
}

/// What [`init`] started; [`Telemetry::shutdown`] flushes it.
#[must_use = "call shutdown() before exiting, or queued spans are lost"]
pub struct Telemetry {
    pipeline: Option<export::Pipeline>,
}

impl Telemetry {
    /// Whether traces or metrics are being exported.
    pub fn is_exporting(&self) -> bool {
        self.pipeline.is_some()
    }

    /// Exports what is queued and stops the exporters, waiting at most
    /// `timeout` so an unreachable collector cannot hold up the exit.
    pub fn shutdown(self, timeout: Duration) {
        if let Some(pipeline) = self.pipeline {
            pipeline.shutdown(timeout);
        }
    }
}

/// Installs the global subscriber; call once, first thing in `main`, from
/// inside the Tokio runtime (the gRPC exporter starts its connection
/// there).
///
/// `RUST_LOG` filters log lines, falling back to `default_filter` (plus
/// this crate's `info` lines) when it is unset or does not parse. `service_name` is the `service.name` of
/// exported telemetry unless `OTEL_SERVICE_NAME` or
/// `OTEL_RESOURCE_ATTRIBUTES` name the service.
pub fn init(service_name: &'static str, default_filter: &str) -> Telemetry {
    // The shared crate's lines (connections, refusals, export) belong to
    // the service as much as its own.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{default_filter},service_common=info")));
    let format = LogFormat::from_env();
    let settings = export::Settings::from_env(service_name);
    let started = settings.as_ref().map(export::Pipeline::start);
    let (pipeline, export_error) = match started {
        Some(Ok(pipeline)) => (Some(pipeline), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, None),
    };
    let spans = pipeline
        .as_ref()
        .and_then(export::Pipeline::tracer)
        .map(|tracer| {
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                // Each of these adds attributes or clock reads to every
                // span that nothing here uses: the code location, thread,
                // target (always `otel`), busy and idle times. Handlers find
                // their trace through the span (`OpenTelemetrySpanExt`),
                // never through OpenTelemetry's current context, so entering
                // a span need not activate one.
                .with_location(false)
                .with_threads(false)
                .with_target(false)
                .with_tracked_inactivity(false)
                .with_context_activation(false)
                .with_filter(Targets::new().with_target(TARGET, Level::INFO))
        });
    TRACING.store(spans.is_some(), Ordering::Relaxed);
    metrics::set_enabled(pipeline.as_ref().is_some_and(export::Pipeline::has_metrics));
    let lines = match format {
        Ok(LogFormat::Json) => tracing_subscriber::fmt::layer()
            .event_format(logs::JsonLines)
            .with_writer(std::io::stderr)
            .boxed(),
        _ => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(spans)
        .with(lines.with_filter(filter))
        .init();

    if let Err(value) = format {
        tracing::warn!("LOG_FORMAT={value:?} is neither `text` nor `json`; writing text");
    }
    match (&pipeline, export_error) {
        (_, Some(e)) => tracing::error!("OpenTelemetry export is off: {e}"),
        (Some(pipeline), None) => tracing::info!("{}", pipeline.describe()),
        (None, None) => {}
    }
    Telemetry { pipeline }
}
