//! Request metrics both services record, by the OpenTelemetry HTTP
//! semantic conventions: `http.server.request.duration` (seconds, by
//! method, route and status) and `http.server.active_requests`.
//!
//! Instruments come from the global meter provider, which is a no-op
//! unless metrics are exported; the layer checks that once per request and
//! otherwise stays out of the way.

use super::http::RouteNames;
use http::{Method, Request, Response};
use opentelemetry::metrics::{AsyncInstrument, Histogram, Meter};
use opentelemetry::{KeyValue, StringValue, global};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Instant;
use tower::{Layer, Service};

/// Whether metrics are exported: set once by `telemetry::init`.
static METRICS: AtomicBool = AtomicBool::new(false);

pub(super) fn set_enabled(enabled: bool) {
    METRICS.store(enabled, Ordering::Relaxed);
}

/// Whether metrics are exported; recording code can skip its work if not.
pub fn enabled() -> bool {
    METRICS.load(Ordering::Relaxed)
}

/// The meter every instrument of the project belongs to.
pub fn meter() -> Meter {
    global::meter("durable-streams")
}

/// Bucket bounds, in seconds, of every duration histogram of the project
/// (the SDK's default bounds are meant for milliseconds: every duration
/// under five seconds would share one bucket).
const SECONDS_BOUNDARIES: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// A histogram of durations in seconds, with bounds from a tenth of a
/// millisecond to a minute.
pub fn seconds_histogram(name: &'static str, description: &'static str) -> Histogram<f64> {
    meter()
        .f64_histogram(name)
        .with_unit("s")
        .with_description(description)
        .with_boundaries(SECONDS_BOUNDARIES.to_vec())
        .build()
}

fn request_duration() -> &'static Histogram<f64> {
    static DURATION: OnceLock<Histogram<f64>> = OnceLock::new();
    DURATION.get_or_init(|| {
        seconds_histogram(
            "http.server.request.duration",
            "Time to the response head of HTTP server requests",
        )
    })
}

/// Requests in flight by route and method, as atomics that the request
/// path bumps and `http.server.active_requests` reads at each export: an
/// up-down counter of the SDK would hash the label set twice per request.
#[derive(Debug)]
struct InFlightCounts {
    /// Route labels by route index, the last one for unmatched paths.
    routes: Vec<StringValue>,
    /// One cell per route and method.
    cells: Box<[InFlightCell]>,
}

#[derive(Debug, Default)]
struct InFlightCell {
    count: AtomicI64,
    /// Reported once used, zero included, so the series ends at zero.
    used: AtomicBool,
}

impl InFlightCounts {
    fn new(names: &RouteNames) -> InFlightCounts {
        let routes: Vec<StringValue> = (0..names.len())
            .filter_map(|i| names.name(i))
            .chain(["unmatched"])
            .map(|route| StringValue::from(Arc::<str>::from(route)))
            .collect();
        let cells = (0..routes.len() * METHODS.len())
            .map(|_| InFlightCell::default())
            .collect();
        InFlightCounts { routes, cells }
    }

    fn cell(&self, route: usize, method: usize) -> Option<&InFlightCell> {
        self.cells.get(route * METHODS.len() + method)
    }

    fn observe(&self, observer: &dyn AsyncInstrument<i64>) {
        for (route, label) in self.routes.iter().enumerate() {
            for (method, name) in METHODS.iter().enumerate() {
                let Some(cell) = self.cell(route, method) else {
                    continue;
                };
                if cell.used.load(Ordering::Relaxed) {
                    observer.observe(
                        cell.count.load(Ordering::Relaxed),
                        &[
                            KeyValue::new("http.request.method", *name),
                            KeyValue::new("http.route", label.clone()),
                        ],
                    );
                }
            }
        }
    }
}

/// Records request duration and requests in flight, by route. Make one per
/// service (it holds the in-flight counts) and clone it per connection.
#[derive(Debug, Clone)]
pub struct RequestMetricsLayer {
    routes: RouteNames,
    in_flight: Arc<InFlightCounts>,
}

impl RequestMetricsLayer {
    pub fn new(routes: RouteNames) -> RequestMetricsLayer {
        let in_flight = Arc::new(InFlightCounts::new(&routes));
        if enabled() {
            let observed = Arc::clone(&in_flight);
            meter()
                .i64_observable_up_down_counter("http.server.active_requests")
                .with_unit("{request}")
                .with_description("HTTP server requests in progress")
                .with_callback(move |observer| observed.observe(observer))
                .build();
        }
        RequestMetricsLayer { routes, in_flight }
    }
}

impl<S> Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;

    fn layer(&self, inner: S) -> RequestMetrics<S> {
        RequestMetrics {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`RequestMetricsLayer`].
#[derive(Debug, Clone)]
pub struct RequestMetrics<S> {
    inner: S,
    layer: RequestMetricsLayer,
}

impl<S, B, R> Service<Request<B>> for RequestMetrics<S>
where
    S: Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = RequestMetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let in_flight = enabled().then(|| {
            let counts = &self.layer.in_flight;
            let route = self
                .layer
                .routes
                .index_of(request.uri().path())
                .unwrap_or(counts.routes.len() - 1);
            let method = method_index(request.method());
            if let Some(cell) = counts.cell(route, method) {
                cell.count.fetch_add(1, Ordering::Relaxed);
                cell.used.store(true, Ordering::Relaxed);
            }
            InFlight {
                started: Instant::now(),
                counts: Arc::clone(counts),
                route,
                method,
            }
        });
        RequestMetricsFuture {
            inner: self.inner.call(request),
            in_flight,
        }
    }
}

/// A request being measured.
struct InFlight {
    started: Instant,
    counts: Arc<InFlightCounts>,
    route: usize,
    method: usize,
}

impl InFlight {
    fn end(self, status: Option<u16>) {
        if let Some(cell) = self.counts.cell(self.route, self.method) {
            cell.count.fetch_sub(1, Ordering::Relaxed);
        }
        let method = METHODS.get(self.method).copied().unwrap_or("_OTHER");
        let route = self.counts.routes.get(self.route).cloned();
        let mut labels = Vec::with_capacity(3);
        labels.push(KeyValue::new("http.request.method", method));
        if let Some(route) = route {
            labels.push(KeyValue::new("http.route", route));
        }
        if let Some(status) = status {
            labels.push(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        request_duration().record(self.started.elapsed().as_secs_f64(), &labels);
    }
}

pin_project! {
    /// Ends the measurement when the response head is ready, or when the
    /// request is abandoned (the client went away).
    pub struct RequestMetricsFuture<F> {
        #[pin]
        inner: F,
        in_flight: Option<InFlight>,
    }

    impl<F> PinnedDrop for RequestMetricsFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(in_flight) = this.project().in_flight.take() {
                in_flight.end(None);
            }
        }
    }
}

impl<F, R, E> Future for RequestMetricsFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Some(in_flight) = this.in_flight.take() {
            in_flight.end(result.as_ref().ok().map(|r| r.status().as_u16()));
        }
        Poll::Ready(result)
    }
}

/// Method labels: the known methods by name, anything else as `_OTHER`
/// (the conventions' way to keep label sets bounded).
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "_OTHER",
];

fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::OPTIONS => 5,
        Method::PATCH => 6,
        _ => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Keeps what a callback observes.
    #[derive(Default)]
    struct Observed(Mutex<Vec<(i64, Vec<KeyValue>)>>);

    impl AsyncInstrument<i64> for Observed {
        fn observe(&self, measurement: i64, attributes: &[KeyValue]) {
            if let Ok(mut seen) = self.0.lock() {
                seen.push((measurement, attributes.to_vec()));
            }
        }
    }

    fn observed(counts: &InFlightCounts) -> Vec<(i64, String, String)> {
        let observer = Observed::default();
        counts.observe(&observer);
        let seen = observer.0.into_inner().expect("lock");
        seen.into_iter()
            .map(|(n, labels)| (n, labels[0].value.to_string(), labels[1].value.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn requests_in_flight_are_counted_by_route_and_method_until_answered() {
        set_enabled(true);
        let routes = RouteNames::new("/v1/stream", &["/healthz"]);
        let layer = RequestMetricsLayer::new(routes);
        let counts = Arc::clone(&layer.in_flight);
        let (answer, answered) = tokio::sync::oneshot::channel::<()>();
        let answered = Arc::new(tokio::sync::Mutex::new(Some(answered)));
        let mut service = layer.layer(tower::service_fn(move |_request: Request<()>| {
            let answered = Arc::clone(&answered);
            async move {
                // The first request waits to be answered; later ones do not.
                let wait = answered.lock().await.take();
                if let Some(answered) = wait {
                    let _ = answered.await;
                }
                Ok::<_, std::convert::Infallible>(Response::new(()))
            }
        }));
        assert!(observed(&counts).is_empty(), "nothing used yet");

        let request = Request::post("/v1/stream/chat/a")
            .body(())
            .expect("request");
        let pending = tokio::spawn(service.call(request));
        tokio::task::yield_now().await;
        assert_eq!(
            observed(&counts),
            vec![(1, "POST".into(), "/v1/stream/{*path}".into())]
        );

        let unmatched = Request::get("/nowhere").body(()).expect("request");
        service.call(unmatched).await.expect("answered");
        answer.send(()).expect("waiting");
        pending.await.expect("task").expect("answered");
        assert_eq!(
            observed(&counts),
            vec![
                (0, "POST".into(), "/v1/stream/{*path}".into()),
                (0, "GET".into(), "unmatched".into()),
            ],
            "both ended; their series stay, at zero"
        );
    }
}
