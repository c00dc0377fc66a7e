//! The OTLP export pipeline, configured by the standard OpenTelemetry
//! variables so that operators set it up as they would any other service:
//!
//! * `OTEL_EXPORTER_OTLP_ENDPOINT`, or per signal
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `..._METRICS_ENDPOINT`: where to
//!   send. A signal with no endpoint is not exported.
//! * `OTEL_EXPORTER_OTLP_PROTOCOL` (and per signal): `http/protobuf` (the
//!   default) or `grpc`; `OTEL_EXPORTER_OTLP_HEADERS`, `..._TIMEOUT`.
//! * `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`.
//! * `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (the SDK's default is
//!   `parentbased_always_on`), `OTEL_BSP_*` for the span queue,
//!   `OTEL_METRIC_EXPORT_INTERVAL`.
//! * `OTEL_SDK_DISABLED=true` turns everything off, as do
//!   `OTEL_TRACES_EXPORTER=none` / `OTEL_METRICS_EXPORTER=none` per signal.
//!
//! Spans are exported in batches from the SDK's own thread through a
//! bounded queue (`OTEL_BSP_MAX_QUEUE_SIZE`): a full queue drops spans
//! rather than wait, so a slow or unreachable collector never holds up a
//! request. Dropped spans are counted here, since the SDK reports only the
//! first, and logged at most once a minute.

mod queue;

use opentelemetry::global;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{MetricExporter, SpanExporter};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};
use std::time::Duration;

/// Which signals are exported, read from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub service_name: &'static str,
    pub traces: bool,
    pub metrics: bool,
}

impl Settings {
    /// The settings the environment asks for; `None` when nothing is to be
    /// exported.
    pub fn from_env(service_name: &'static str) -> Option<Settings> {
        Settings::from_lookup(service_name, |name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) with the variables looked up by `var`.
    pub fn from_lookup(
        service_name: &'static str,
        var: impl Fn(&str) -> Option<String>,
    ) -> Option<Settings> {
        let set = |name: &str| var(name).is_some_and(|v| !v.trim().is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return None;
        }
        let signal = |name: &str| {
            let exporter = var(&format!("OTEL_{name}_EXPORTER"));
            let off = exporter.is_some_and(|e| e.trim().eq_ignore_ascii_case("none"));
            !off && (set("OTEL_EXPORTER_OTLP_ENDPOINT")
                || set(&format!("OTEL_EXPORTER_OTLP_{name}_ENDPOINT")))
        };
        let settings = Settings {
            service_name,
            traces: signal("TRACES"),
            metrics: signal("METRICS"),
        };
        (settings.traces || settings.metrics).then_some(settings)
    }
}

/// Why the pipeline could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the OTLP {signal} exporter: {source}")]
pub struct ExportError {
    signal: &'static str,
    source: opentelemetry_otlp::ExporterBuildError,
}

/// The running exporters.
pub struct Pipeline {
    traces: Option<SdkTracerProvider>,
    metrics: Option<SdkMeterProvider>,
}

impl Pipeline {
    /// Builds the exporters and installs them as OpenTelemetry's globals,
    /// with W3C trace context as the propagator.
    pub fn start(settings: &Settings) -> Result<Pipeline, ExportError> {
        let resource = resource(settings.service_name);
        let traces = if settings.traces {
            let exporter = SpanExporter::builder()
                .build()
                .map_err(|source| ExportError {
                    signal: "traces",
                    source,
                })?;
            let provider = SdkTracerProvider::builder()
                .with_span_processor(queue::processor(exporter))
                .with_resource(resource.clone())
                .build();
            global::set_tracer_provider(provider.clone());
            global::set_text_map_propagator(TraceContextPropagator::new());
            Some(provider)
        } else {
            None
        };
        let metrics = if settings.metrics {
            let exporter = MetricExporter::builder()
                .build()
                .map_err(|source| ExportError {
                    signal: "metrics",
                    source,
                })?;
            let provider = SdkMeterProvider::builder()
                .with_reader(PeriodicReader::builder(exporter).build())
                .with_resource(resource)
                .build();
            global::set_meter_provider(provider.clone());
            Some(provider)
        } else {
            None
        };
        Ok(Pipeline { traces, metrics })
    }

    /// The tracer spans are exported with, when traces are.
    pub fn tracer(&self) -> Option<Tracer> {
        let provider = self.traces.as_ref()?;
        Some(provider.tracer("durable-streams"))
    }

    /// Whether metrics are exported.
    pub fn has_metrics(&self) -> bool {
        self.metrics.is_some()
    }

    /// One line for the log: what is exported.
    pub fn describe(&self) -> String {
        let signals = match (self.traces.is_some(), self.metrics.is_some()) {
            (true, true) => "traces and metrics",
            (true, false) => "traces",
            _ => "metrics",
        };
        format!("exporting {signals} over OTLP")
    }

    /// Flushes and stops both providers, each within `timeout`.
    pub fn shutdown(self, timeout: Duration) {
        if let Some(traces) = self.traces
            && let Err(e) = traces.shutdown_with_timeout(timeout)
        {
            tracing::warn!("spans not exported at shutdown: {e}");
        }
        if let Some(metrics) = self.metrics
            && let Err(e) = metrics.shutdown_with_timeout(timeout)
        {
            tracing::warn!("metrics not exported at shutdown: {e}");
        }
    }
}

/// The resource every span and metric carries: what the environment says
/// (`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SERVICE_NAME`), with the service's own
/// name unless the environment names it.
fn resource(service_name: &'static str) -> Resource {
    let detected = Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    if named {
        detected
    } else {
        Resource::builder().with_service_name(service_name).build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Option<Settings> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::from_lookup("svc", |name| vars.get(name).cloned())
    }

    #[test]
    fn nothing_is_exported_without_an_endpoint() {
        assert_eq!(settings(&[]), None);
        assert_eq!(settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]), None);
        assert_eq!(settings(&[("OTEL_SERVICE_NAME", "x")]), None);
    }

    #[test]
    fn endpoints_choose_the_signals() {
        let both = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]).expect("on");
        assert!(both.traces && both.metrics);
        let traces = settings(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:4318/v1/traces",
        )])
        .expect("on");
        assert!(traces.traces && !traces.metrics);
        let no_metrics = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_METRICS_EXPORTER", "none"),
        ])
        .expect("on");
        assert!(no_metrics.traces && !no_metrics.metrics);
    }

    #[test]
    fn the_sdk_can_be_disabled() {
        for value in ["true", "TRUE", " true "] {
            let vars = [
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_SDK_DISABLED", value),
            ];
            assert_eq!(settings(&vars), None, "{value}");
        }
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "false"),
        ];
        assert!(settings(&vars).is_some());
    }
}
