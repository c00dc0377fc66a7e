//! An OTLP receiver for tests: the collector's gRPC trace and metrics
//! services and the OTLP/HTTP endpoints (`/v1/traces`, `/v1/metrics`) on one
//! port, keeping everything it is sent.
//!
//! In process, tests read what arrived through [`Received`]; the
//! `otlp-receiver` binary (the stack test runs it in place of the
//! collector) shows it as JSON at `GET /received/spans` and
//! `GET /received/metrics`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::{get, post};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{Metric, metric};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// One exported span with the service that sent it.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service: String,
    pub span: Span,
}

impl ReceivedSpan {
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    pub fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    /// An attribute's value as text.
    pub fn attribute(&self, key: &str) -> Option<String> {
        attribute(&self.span.attributes, key)
    }

    /// The ids of the spans this one links to.
    pub fn links(&self) -> Vec<String> {
        self.span.links.iter().map(|l| hex(&l.span_id)).collect()
    }

    /// The span as the JSON view shows it.
    pub fn to_json(&self) -> Value {
        let attributes: serde_json::Map<String, Value> = self
            .span
            .attributes
            .iter()
            .filter_map(|kv| Some((kv.key.clone(), Value::String(text(kv.value.as_ref()?)))))
            .collect();
        json!({
            "service": self.service,
            "name": self.span.name,
            "kind": self.span.kind,
            "trace_id": self.trace_id(),
            "span_id": self.span_id(),
            "parent_id": self.parent_id(),
            "attributes": attributes,
            "links": self.links(),
        })
    }
}

/// What the receiver was sent.
#[derive(Default)]
pub struct Received {
    traces: Mutex<Vec<ExportTraceServiceRequest>>,
    metrics: Mutex<Vec<ExportMetricsServiceRequest>>,
    /// Every export's bytes, to search for what must never be exported.
    bytes: Mutex<Vec<u8>>,
}

impl Received {
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        let traces = self.traces.lock().expect("lock");
        let mut spans = Vec::new();
        for request in traces.iter() {
            for resource in &request.resource_spans {
                let service = service_name(resource.resource.as_ref());
                for scope in &resource.scope_spans {
                    for span in &scope.spans {
                        spans.push(ReceivedSpan {
                            service: service.clone(),
                            span: span.clone(),
                        });
                    }
                }
            }
        }
        spans
    }

    /// The attribute keys on the data points of `service`'s metric `name`.
    pub fn metric_attributes(&self, service: &str, name: &str) -> Vec<String> {
        let metrics = self.metrics.lock().expect("lock");
        let mut keys = Vec::new();
        for request in metrics.iter() {
            for resource in &request.resource_metrics {
                if service_name(resource.resource.as_ref()) != service {
                    continue;
                }
                for scope in &resource.scope_metrics {
                    for metric in scope.metrics.iter().filter(|m| m.name == name) {
                        for attributes in point_attributes(metric) {
                            keys.extend(attributes.iter().map(|kv| kv.key.clone()));
                        }
                    }
                }
            }
        }
        keys.sort();
        keys.dedup();
        keys
    }

    /// The histograms a service sent, by name and unit, with the bucket
    /// bounds of their points.
    pub fn histogram_bounds(&self, service: &str) -> Vec<(String, String, Vec<f64>)> {
        let metrics = self.metrics.lock().expect("lock");
        let mut found = Vec::new();
        for request in metrics.iter() {
            for resource in &request.resource_metrics {
                if service_name(resource.resource.as_ref()) != service {
                    continue;
                }
                for scope in &resource.scope_metrics {
                    for metric in &scope.metrics {
                        if let Some(metric::Data::Histogram(histogram)) = &metric.data {
                            for point in &histogram.data_points {
                                found.push((
                                    metric.name.clone(),
                                    metric.unit.clone(),
                                    point.explicit_bounds.clone(),
                                ));
                            }
                        }
                    }
                }
            }
        }
        found
    }

    /// The names of the metrics each service sent.
    pub fn metric_names(&self) -> Vec<(String, String)> {
        let metrics = self.metrics.lock().expect("lock");
        let mut names = Vec::new();
        for request in metrics.iter() {
            for resource in &request.resource_metrics {
                let service = service_name(resource.resource.as_ref());
                for scope in &resource.scope_metrics {
                    for metric in &scope.metrics {
                        names.push((service.clone(), metric.name.clone()));
                    }
                }
            }
        }
        names
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.bytes.lock().expect("lock").clone()
    }

    fn keep_traces(&self, request: ExportTraceServiceRequest) {
        self.bytes
            .lock()
            .expect("lock")
            .extend(request.encode_to_vec());
        self.traces.lock().expect("lock").push(request);
    }

    fn keep_metrics(&self, request: ExportMetricsServiceRequest) {
        self.bytes
            .lock()
            .expect("lock")
            .extend(request.encode_to_vec());
        self.metrics.lock().expect("lock").push(request);
    }
}

#[derive(Clone)]
struct Collector(Arc<Received>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.keep_traces(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.keep_metrics(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

async fn http_traces(State(received): State<Arc<Received>>, body: Bytes) -> Vec<u8> {
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => received.keep_traces(request),
        Err(e) => panic!("OTLP/HTTP traces that do not decode: {e}"),
    }
    ExportTraceServiceResponse::default().encode_to_vec()
}

async fn http_metrics(State(received): State<Arc<Received>>, body: Bytes) -> Vec<u8> {
    match ExportMetricsServiceRequest::decode(body) {
        Ok(request) => received.keep_metrics(request),
        Err(e) => panic!("OTLP/HTTP metrics that do not decode: {e}"),
    }
    ExportMetricsServiceResponse::default().encode_to_vec()
}

async fn json_spans(State(received): State<Arc<Received>>) -> axum::Json<Value> {
    axum::Json(received.spans().iter().map(ReceivedSpan::to_json).collect())
}

async fn json_metrics(State(received): State<Arc<Received>>) -> axum::Json<Value> {
    let names = received.metric_names();
    axum::Json(
        names
            .iter()
            .map(|(service, name)| json!({"service": service, "name": name}))
            .collect(),
    )
}

/// The receiver's routes, keeping what they are sent in `received`.
pub fn router(received: Arc<Received>) -> Router {
    let collector = Collector(received.clone());
    let grpc = tonic::service::Routes::new(TraceServiceServer::new(collector.clone()))
        .add_service(MetricsServiceServer::new(collector))
        .into_axum_router();
    Router::new()
        .route("/v1/traces", post(http_traces))
        .route("/v1/metrics", post(http_metrics))
        .route("/received/spans", get(json_spans))
        .route("/received/metrics", get(json_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(received)
        .merge(grpc)
}

/// Serves the receiver on `listener` until the process ends.
pub async fn serve(listener: TcpListener, received: Arc<Received>) -> std::io::Result<()> {
    axum::serve(listener, router(received)).await
}

/// Starts the receiver on a loopback port; returns its `http://` origin.
pub async fn start() -> (String, Arc<Received>) {
    let received = Arc::new(Received::default());
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the receiver");
    let origin = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(serve(listener, received.clone()));
    (origin, received)
}

/// Waits until `ready` holds for what was received, up to `within`.
pub async fn wait_for(
    received: &Received,
    within: Duration,
    what: &str,
    ready: impl Fn(&Received) -> bool,
) {
    let deadline = tokio::time::Instant::now() + within;
    while !ready(received) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not received within {within:?}; spans: {:#?}",
            received
                .spans()
                .iter()
                .map(|s| (&s.service, &s.span.name))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The attributes of each data point of `metric`.
fn point_attributes(metric: &Metric) -> Vec<&[KeyValue]> {
    match &metric.data {
        Some(metric::Data::Sum(sum)) => sum.data_points.iter().map(|p| &p.attributes[..]).collect(),
        Some(metric::Data::Gauge(gauge)) => gauge
            .data_points
            .iter()
            .map(|p| &p.attributes[..])
            .collect(),
        Some(metric::Data::Histogram(histogram)) => histogram
            .data_points
            .iter()
            .map(|p| &p.attributes[..])
            .collect(),
        _ => Vec::new(),
    }
}

/// The `service.name` of an export's resource.
fn service_name(resource: Option<&Resource>) -> String {
    resource
        .and_then(|r| attribute(&r.attributes, "service.name"))
        .unwrap_or_default()
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    Some(text(value))
}

fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
