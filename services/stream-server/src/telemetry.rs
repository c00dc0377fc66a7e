//! What stream-server reports beyond the shared server span (see
//! `service_common::telemetry`): storage group commits as spans linked to
//! every request they made durable, what live reads delivered, and the
//! server's counts: appended bytes and messages, live connections, streams
//! held, commit durations and group sizes.
//!
//! Counts bumped on the request path are atomics that OpenTelemetry reads
//! at each export (observable instruments): an append pays an atomic add,
//! not an attribute-set lookup in the SDK. Nothing here does any work
//! unless the matching signal is exported.

use opentelemetry::KeyValue;
use opentelemetry::metrics::Histogram;
use opentelemetry::trace::SpanContext;
use service_common::telemetry::{self, TARGET, metrics};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;
use tracing::Span;

static APPENDED_BYTES: AtomicU64 = AtomicU64::new(0);
static APPENDED_MESSAGES: AtomicU64 = AtomicU64::new(0);
static LIVE_SSE: AtomicI64 = AtomicI64::new(0);
static LIVE_LONG_POLL: AtomicI64 = AtomicI64::new(0);

struct Instruments {
    commit_duration: Histogram<f64>,
    group_size: Histogram<u64>,
}

fn instruments() -> &'static Instruments {
    static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        let meter = metrics::meter();
        Instruments {
            commit_duration: metrics::seconds_histogram(
                "ds.storage.commit.duration",
                "Time to make a group of changes durable",
            ),
            group_size: meter
                .u64_histogram("ds.storage.commit.group_size")
                .with_unit("{request}")
                .with_description("Requests made durable by one commit")
                .with_boundaries(vec![
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0,
                ])
                .build(),
        }
    })
}

/// Registers the instruments OpenTelemetry reads at each export;
/// `streams_held` counts the streams the server holds. Call once at
/// startup; does nothing unless metrics are exported.
pub fn observe(streams_held: impl Fn() -> u64 + Send + Sync + 'static) {
    if !metrics::enabled() {
        return;
    }
    let meter = metrics::meter();
    meter
        .u64_observable_gauge("ds.streams")
        .with_unit("{stream}")
        .with_description("Streams the server holds")
        .with_callback(move |observer| observer.observe(streams_held(), &[]))
        .build();
    meter
        .u64_observable_counter("ds.appended.bytes")
        .with_unit("By")
        .with_description("Bytes appended to streams")
        .with_callback(|observer| observer.observe(APPENDED_BYTES.load(Ordering::Relaxed), &[]))
        .build();
    meter
        .u64_observable_counter("ds.appended.messages")
        .with_unit("{message}")
        .with_description("Messages appended to streams")
        .with_callback(|observer| {
            observer.observe(APPENDED_MESSAGES.load(Ordering::Relaxed), &[]);
        })
        .build();
    meter
        .i64_observable_up_down_counter("ds.live.connections")
        .with_unit("{connection}")
        .with_description("Open live reads, by mode")
        .with_callback(|observer| {
            observer.observe(
                LIVE_SSE.load(Ordering::Relaxed),
                &[KeyValue::new("ds.live", "sse")],
            );
            observer.observe(
                LIVE_LONG_POLL.load(Ordering::Relaxed),
                &[KeyValue::new("ds.live", "long-poll")],
            );
        })
        .build();
}

/// Counts an append of `bytes` in `messages` messages.
pub fn appended(bytes: usize, messages: usize) {
    if metrics::enabled() {
        APPENDED_BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
        APPENDED_MESSAGES.fetch_add(messages as u64, Ordering::Relaxed);
    }
}

/// The request a storage change is made for, so that the group commit
/// which makes it durable can link back to it.
#[derive(Debug, Clone, Default)]
pub struct Requester(Option<SpanContext>);

impl Requester {
    /// The request whose span is current, if it is traced.
    pub fn current() -> Requester {
        Requester(telemetry::current_context())
    }
}

/// One group commit of a storage engine, from start to [`finish`]: a
/// span linked to every request in the group, and the commit duration and
/// group size metrics by storage mode.
///
/// [`finish`]: GroupCommit::finish
#[derive(Debug)]
pub struct GroupCommit {
    span: Span,
    started: Option<Instant>,
    mode: &'static str,
    requests: usize,
}

impl GroupCommit {
    /// Starts timing the commit that `name`s what makes the group durable
    /// (`redb commit`, `journal write`, `fsync`), for `requesters`.
    pub fn start<'a>(
        name: &'static str,
        mode: &'static str,
        requesters: impl ExactSizeIterator<Item = &'a Requester>,
    ) -> GroupCommit {
        let requests = requesters.len();
        let span = if telemetry::tracing_enabled() {
            // A commit serves many requests, so it has no parent: it is
            // a trace of its own, linked to each of them.
            let span = tracing::info_span!(
                target: TARGET,
                parent: None,
                "storage group commit",
                otel.name = name,
                otel.kind = "internal",
                otel.status_code = tracing::field::Empty,
                ds.storage.mode = mode,
                ds.storage.group_size = requests,
            );
            telemetry::link_all(&span, requesters.filter_map(|r| r.0.as_ref()));
            span
        } else {
            Span::none()
        };
        GroupCommit {
            span,
            started: metrics::enabled().then(Instant::now),
            mode,
            requests,
        }
    }

    /// Ends the span and records the metrics; `durable` says whether the
    /// commit succeeded.
    pub fn finish(self, durable: bool) {
        if !durable {
            self.span.record("otel.status_code", "ERROR");
        }
        if let Some(started) = self.started {
            let instruments = instruments();
            let mode = [KeyValue::new("ds.storage.mode", self.mode)];
            instruments
                .commit_duration
                .record(started.elapsed().as_secs_f64(), &mode);
            instruments.group_size.record(self.requests as u64, &mode);
        }
    }
}

/// Which live read a [`LiveRead`] is.
#[derive(Debug, Clone, Copy)]
pub enum Live {
    LongPoll,
    Sse,
}

/// One live read (long-poll or SSE) while it lasts: counted as a live
/// connection, and what it delivered recorded on its request's span when
/// it ends (dropped).
#[derive(Debug)]
pub struct LiveRead {
    span: Option<Span>,
    open: Option<&'static AtomicI64>,
    messages: u64,
    events: u64,
    bytes: u64,
}

impl LiveRead {
    /// Starts a live read; call inside the request's span.
    pub fn start(live: Live) -> LiveRead {
        let open = metrics::enabled().then(|| {
            let open = match live {
                Live::LongPoll => &LIVE_LONG_POLL,
                Live::Sse => &LIVE_SSE,
            };
            open.fetch_add(1, Ordering::Relaxed);
            open
        });
        LiveRead {
            span: telemetry::current_span(),
            open,
            messages: 0,
            events: 0,
            bytes: 0,
        }
    }

    /// Counts a delivery of `messages` messages in `events` SSE events (0
    /// for long-poll) and `bytes` bytes.
    pub fn delivered(&mut self, messages: usize, events: usize, bytes: usize) {
        self.messages += messages as u64;
        self.events += events as u64;
        self.bytes += bytes as u64;
    }
}

impl Drop for LiveRead {
    fn drop(&mut self) {
        if let Some(open) = self.open {
            open.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(span) = &self.span {
            span.record("ds.delivered.messages", self.messages);
            span.record("ds.delivered.bytes", self.bytes);
            if self.events > 0 {
                span.record("ds.sse.events", self.events);
            }
        }
    }
}
