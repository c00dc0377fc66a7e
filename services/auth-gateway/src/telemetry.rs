//! What the gateway reports beyond the shared server span: the auth span
//! and its decision, token cache use, and the upstream hop, as spans and
//! metrics (see `service_common::telemetry`).
//!
//! The token itself never appears: spans carry its id and subject, and the
//! refusal reason that clients are not told.

use crate::auth::grant::Grant;
use crate::error::GatewayError;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram};
use service_common::telemetry::{self, TARGET, metrics};
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tracing::field::Empty;
use tracing::{Instrument, Span};

struct Instruments {
    db_duration: Histogram<f64>,
    decisions: Counter<u64>,
    cache: Counter<u64>,
    upstream_duration: Histogram<f64>,
    upstream_errors: Counter<u64>,
}

fn instruments() -> &'static Instruments {
    static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        let meter = metrics::meter();
        Instruments {
            db_duration: metrics::seconds_histogram(
                "db.client.operation.duration",
                "Duration of Postgres queries",
            ),
            decisions: meter
                .u64_counter("ds.gateway.auth.decisions")
                .with_description("Requests decided by the gateway, by outcome")
                .build(),
            cache: meter
                .u64_counter("ds.gateway.token_cache.lookups")
                .with_description("Token row lookups, by whether the cache answered")
                .build(),
            upstream_duration: metrics::seconds_histogram(
                "ds.gateway.upstream.duration",
                "Time to stream-server's response head",
            ),
            upstream_errors: meter
                .u64_counter("ds.gateway.upstream.errors")
                .with_description("Requests stream-server did not answer")
                .build(),
        }
    })
}

/// The span of authenticating and authorising one request.
pub fn auth_span() -> Span {
    if !telemetry::tracing_enabled() {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "auth",
        otel.kind = "internal",
        enduser.id = Empty,
        ds.token_id = Empty,
        ds.scope = Empty,
        ds.auth.cache = Empty,
        ds.auth.outcome = Empty,
        ds.auth.refusal = Empty,
    )
}

/// Records the decision on the auth span, the request's span and the
/// decision counter: `allowed`, or the status of the refusal.
pub fn record_decision(auth: &Span, decision: Result<&Arc<Grant>, &GatewayError>) {
    let outcome = match decision {
        Ok(_) => "allowed",
        Err(e) => match e.status().as_u16() {
            400 => "400",
            401 => "401",
            403 => "403",
            405 => "405",
            429 => "429",
            503 => "503",
            _ => "other",
        },
    };
    if metrics::enabled() {
        instruments()
            .decisions
            .add(1, &[KeyValue::new("ds.auth.outcome", outcome)]);
    }
    if auth.is_disabled() {
        return;
    }
    auth.record("ds.auth.outcome", outcome);
    match decision {
        Ok(grant) => {
            for span in [auth, &Span::current()] {
                span.record("enduser.id", grant.subject.as_str());
                span.record("ds.token_id", &*grant.token_id);
            }
        }
        Err(e) => {
            auth.record("ds.auth.refusal", tracing::field::display(e));
        }
    }
}

/// Records whether the token cache answered a lookup.
pub fn record_cache(hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    if metrics::enabled() {
        // Labelled as on the auth span, so a dashboard and a trace search
        // use one name.
        instruments()
            .cache
            .add(1, &[KeyValue::new("ds.auth.cache", result)]);
    }
    if let Some(span) = telemetry::current_span() {
        span.record("ds.auth.cache", result);
    }
}

/// Runs one Postgres query (`operation` on `collection`, e.g. `SELECT` on
/// `tokens`) with `run`, inside a database client span that shows its
/// text (placeholders, never values), and measures it.
pub async fn db_query<'q, Q, F, T, E>(
    operation: &'static str,
    collection: &'static str,
    query: Q,
    run: impl FnOnce(Q) -> F,
) -> Result<T, E>
where
    Q: sqlx::Execute<'q, sqlx::Postgres>,
    F: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let span = if telemetry::tracing_enabled() {
        tracing::info_span!(
            target: TARGET,
            "db",
            otel.name = format!("{operation} {collection}"),
            otel.kind = "client",
            otel.status_code = Empty,
            db.system.name = "postgresql",
            db.operation.name = operation,
            db.collection.name = collection,
            db.query.text = query.sql(),
            error.type = Empty,
        )
    } else {
        Span::none()
    };
    let started = metrics::enabled().then(Instant::now);
    let result = run(query).instrument(span.clone()).await;
    if let Some(started) = started {
        instruments().db_duration.record(
            started.elapsed().as_secs_f64(),
            &[
                KeyValue::new("db.system.name", "postgresql"),
                KeyValue::new("db.operation.name", operation),
            ],
        );
    }
    if let Err(e) = &result
        && !span.is_disabled()
    {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", tracing::field::display(e));
    }
    result
}

/// The client span of the request sent on to stream-server.
pub fn proxy_span(method: &http::Method, upstream: &str) -> Span {
    if !telemetry::tracing_enabled() {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "proxy",
        otel.name = method.as_str(),
        otel.kind = "client",
        otel.status_code = Empty,
        http.request.method = method.as_str(),
        server.address = upstream,
        url.full = Empty,
        http.response.status_code = Empty,
        error.type = Empty,
    )
}

/// Records how the upstream request went.
pub fn record_upstream(
    span: &Span,
    took: Duration,
    status: Result<http::StatusCode, &GatewayError>,
) {
    if metrics::enabled() {
        let instruments = instruments();
        match status {
            Ok(status) => instruments.upstream_duration.record(
                took.as_secs_f64(),
                &[KeyValue::new(
                    "http.response.status_code",
                    i64::from(status.as_u16()),
                )],
            ),
            Err(_) => instruments.upstream_errors.add(1, &[]),
        }
    }
    if span.is_disabled() {
        return;
    }
    match status {
        Ok(status) => {
            span.record("http.response.status_code", status.as_u16());
            if status.is_server_error() {
                span.record("otel.status_code", "ERROR");
            }
        }
        Err(e) => {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", tracing::field::display(e));
        }
    }
}
