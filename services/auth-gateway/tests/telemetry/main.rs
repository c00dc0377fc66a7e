//! OpenTelemetry end to end: both service binaries export to a real OTLP
//! receiver (the gateway over gRPC, stream-server over OTLP/HTTP), and one
//! request sent with a known `traceparent` must come back as one trace:
//! gateway server span → auth → Postgres → proxy client span →
//! stream-server server span → storage, with the attributes operators
//! search by, and no token material anywhere in what was exported. The
//! storage engine's group commit is a span of its own, linked to the
//! requests it made durable.

#[path = "../common/mod.rs"]
mod common;

use common::ScratchDb;
use otlp_receiver::{ReceivedSpan, wait_for};
use reqwest::StatusCode;
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN_ID: &str = "00f067aa0ba902b7";

/// A service binary running with its stderr collected line by line.
struct Service {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    origin: String,
}

impl Service {
    async fn start(binary: &PathBuf, env: &[(&str, String)]) -> Service {
        let mut command = Command::new(binary);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let collected = lines.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                collected.lock().expect("lock").push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let origin = loop {
            let found = lines.lock().expect("lock").iter().find_map(|line| {
                let at = line.find("listening on http://")? + "listening on ".len();
                let url = &line[at..];
                let end = url[7..]
                    .find(['/', ' ', '"', '\\'])
                    .map_or(url.len(), |i| i + 7);
                Some(url[..end].to_owned())
            });
            if let Some(origin) = found {
                break origin;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not start: {:#?}",
                binary.display(),
                lines.lock().expect("lock")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Service {
            child,
            lines,
            origin,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lock").clone()
    }

    /// Sends SIGTERM and waits for the exit; returns how long it took.
    async fn terminate(mut self) -> Duration {
        let pid = self.child.id().expect("running");
        let started = Instant::now();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the service exits after SIGTERM")
            .expect("wait");
        started.elapsed()
    }
}

fn gateway_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_auth-gateway"))
}

/// stream-server's binary, built beside the gateway's by a workspace build
/// (`tests/run.sh`); built here if it is missing.
fn stream_server_binary() -> PathBuf {
    let path = gateway_binary().with_file_name("stream-server");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "-p", "stream-server", "--bin", "stream-server"])
            .status()
            .expect("run cargo build -p stream-server");
        assert!(status.success(), "cannot build stream-server");
    }
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        path.display()
    );
    path
}

/// The environment that makes a service export quickly to `endpoint`.
fn exporting_to(endpoint: &str, protocol: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_owned()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "300".to_owned()),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000".to_owned()),
        ("LOG_FORMAT", "json".to_owned()),
    ]
}

/// A scratch database with the gateway's tables, a signing key, and a
/// token for `streams` with read and write access.
struct Credentials {
    db: ScratchDb,
    key_file: tempfile::NamedTempFile,
    token: String,
}

async fn credentials(streams: &str) -> Credentials {
    let db = ScratchDb::create().await;
    let key_file = tempfile::NamedTempFile::new().expect("key file");
    let run = |args: &[&str]| {
        let output = std::process::Command::new(gateway_binary())
            .args(args)
            .env("DATABASE_URL", &db.url)
            .env("GW_JWT__KEY_FILE", key_file.path())
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .output()
            .expect("run auth-gateway");
        assert!(
            output.status.success(),
            "auth-gateway {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8")
    };
    std::fs::write(key_file.path(), run(&["keygen"])).expect("write key");
    run(&["migrate"]);
    let token = run(&[
        "token",
        "create",
        "--subject",
        "alice",
        "--scope",
        "read",
        "--scope",
        "write",
        "--stream",
        streams,
        "--ttl",
        "1h",
    ]);
    Credentials {
        db,
        key_file,
        token: token.trim().to_owned(),
    }
}

async fn gateway(
    credentials: &Credentials,
    upstream: &str,
    extra: Vec<(&'static str, String)>,
) -> Service {
    let mut env = vec![
        ("DATABASE_URL", credentials.db.url.clone()),
        (
            "GW_JWT__KEY_FILE",
            credentials.key_file.path().display().to_string(),
        ),
        ("GW_SERVER__PORT", "0".to_owned()),
        ("GW_UPSTREAM__URL", upstream.to_owned()),
        (
            "RUST_LOG",
            "auth_gateway=debug,service_common=debug".to_owned(),
        ),
    ];
    env.extend(extra);
    Service::start(&gateway_binary(), &env).await
}

async fn stream_server(extra: Vec<(&'static str, String)>) -> Service {
    let mut env = vec![
        ("DS_SERVER__PORT", "0".to_owned()),
        ("DS_STORAGE__MODE", "memory".to_owned()),
        (
            "RUST_LOG",
            "stream_server=info,service_common=debug".to_owned(),
        ),
    ];
    env.extend(extra);
    Service::start(&stream_server_binary(), &env).await
}

fn by_id(spans: &[ReceivedSpan]) -> HashMap<String, &ReceivedSpan> {
    spans.iter().map(|s| (s.span_id(), s)).collect()
}

/// The one span of `service` named `name` whose parent is `parent`.
fn child<'a>(
    spans: &'a [ReceivedSpan],
    service: &str,
    parent: &str,
    name: impl Fn(&str) -> bool,
) -> &'a ReceivedSpan {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.service == service && s.parent_id() == parent && name(&s.span.name))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one such {service} span under {parent}: {:#?}",
        spans
            .iter()
            .map(|s| (&s.service, &s.span.name, s.span_id(), s.parent_id()))
            .collect::<Vec<_>>()
    );
    found[0]
}

#[tokio::test]
async fn one_request_is_one_trace_across_both_services() {
    let (collector, received) = otlp_receiver::start().await;
    let credentials = credentials("chat/**").await;
    let data_dir = tempfile::tempdir().expect("a data dir");
    let mut server_env = exporting_to(&collector, "http/protobuf");
    server_env.push(("DS_STORAGE__MODE", "acid".to_owned()));
    server_env.push((
        "DS_STORAGE__DATA_DIR",
        data_dir.path().display().to_string(),
    ));
    let server = stream_server(server_env).await;
    let gateway = gateway(
        &credentials,
        &server.origin,
        exporting_to(&collector, "grpc"),
    )
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/stream/chat/room-1", gateway.origin);
    let traceparent = format!("00-{TRACE_ID}-{CLIENT_SPAN_ID}-01");

    let created = client
        .put(&url)
        .bearer_auth(&credentials.token)
        .header("content-type", "text/plain")
        .header("traceparent", &traceparent)
        .send()
        .await
        .expect("PUT");
    assert_eq!(created.status(), StatusCode::CREATED);
    let traceresponse = created
        .headers()
        .get("traceresponse")
        .and_then(|v| v.to_str().ok())
        .expect("a traceresponse header")
        .to_owned();
    let parts: Vec<&str> = traceresponse.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceresponse}");
    assert_eq!((parts[0], parts[1], parts[3]), ("00", TRACE_ID, "01"));
    let gateway_span_id = parts[2].to_owned();
    let exposed = created
        .headers()
        .get("access-control-expose-headers")
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    // CORS answers only requests with Origin; checked below.
    let _ = exposed;

    // A traced append, and a refused request for the JSON logs.
    let appended = client
        .post(&url)
        .bearer_auth(&credentials.token)
        .header("content-type", "text/plain")
        .header("traceparent", &traceparent)
        .body("hello")
        .send()
        .await
        .expect("POST");
    assert_eq!(appended.status(), StatusCode::NO_CONTENT);
    let refused = client
        .put(format!("{}/v1/stream/other/x", gateway.origin))
        .bearer_auth(&credentials.token)
        .header("traceparent", &traceparent)
        .send()
        .await
        .expect("PUT outside the token's streams");
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    // A live read: its span ends with the connection and says what it
    // delivered.
    let mut live = client
        .get(format!("{url}?offset=-1&live=sse"))
        .bearer_auth(&credentials.token)
        .header("traceparent", &traceparent)
        .send()
        .await
        .expect("GET live=sse");
    assert_eq!(live.status(), StatusCode::OK);
    let first = live.chunk().await.expect("SSE bytes").expect("an event");
    assert!(
        String::from_utf8_lossy(&first).contains("hello"),
        "{first:?}"
    );
    drop(live);

    // Browsers may read the header.
    let preflight = client
        .request(reqwest::Method::GET, &url)
        .header("origin", "https://app.example")
        .bearer_auth(&credentials.token)
        .send()
        .await
        .expect("GET with Origin");
    let exposed = preflight
        .headers()
        .get("access-control-expose-headers")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(exposed.contains("traceresponse"), "{exposed}");

    wait_for(
        &received,
        Duration::from_secs(15),
        "both services' spans",
        |r| {
            let spans = r.spans();
            let of = |service: &str, name: &str| {
                spans.iter().any(|s| {
                    s.service == service
                        && s.trace_id() == TRACE_ID
                        && s.span.name.starts_with(name)
                })
            };
            let sse_ended = spans.iter().any(|s| {
                s.service == "stream-server"
                    && s.attribute("ds.operation").as_deref() == Some("sse")
            });
            let group_commit = spans
                .iter()
                .any(|s| s.service == "stream-server" && s.span.name == "redb commit");
            // The refused request ends late; its span may come in a later
            // export batch than the others.
            let refused = spans.iter().any(|s| {
                s.service == "auth-gateway"
                    && s.trace_id() == TRACE_ID
                    && s.attribute("http.response.status_code").as_deref() == Some("403")
            });
            refused
                && sse_ended
                && group_commit
                && of("auth-gateway", "PUT")
                && of("auth-gateway", "POST")
                && of("stream-server", "storage commit")
                && spans
                    .iter()
                    .filter(|s| s.service == "stream-server" && s.span.name.starts_with("POST"))
                    .count()
                    >= 1
        },
    )
    .await;

    let spans: Vec<ReceivedSpan> = received
        .spans()
        .into_iter()
        .filter(|s| s.trace_id() == TRACE_ID)
        .collect();
    let ids = by_id(&spans);

    // The creating request, as one tree.
    let put = ids
        .get(&gateway_span_id)
        .copied()
        .expect("the span traceresponse names");
    assert_eq!(put.service, "auth-gateway");
    assert_eq!(
        put.parent_id(),
        CLIENT_SPAN_ID,
        "continues the caller's trace"
    );
    assert_eq!(put.span.name, "PUT /v1/stream/{*path}");
    assert_eq!(put.span.kind, 2, "server");
    assert_eq!(put.attribute("http.request.method").as_deref(), Some("PUT"));
    assert_eq!(
        put.attribute("http.route").as_deref(),
        Some("/v1/stream/{*path}")
    );
    assert_eq!(
        put.attribute("http.response.status_code").as_deref(),
        Some("201")
    );
    assert_eq!(
        put.attribute("url.path").as_deref(),
        Some("/v1/stream/chat/room-1")
    );
    assert_eq!(put.attribute("enduser.id").as_deref(), Some("alice"));
    assert!(put.attribute("ds.token_id").is_some());
    assert_eq!(
        put.attribute("client.address").as_deref(),
        Some("127.0.0.1")
    );
    assert!(put.attribute("network.protocol.version").is_some());

    let auth = child(&spans, "auth-gateway", &put.span_id(), |n| n == "auth");
    assert_eq!(
        auth.attribute("ds.auth.outcome").as_deref(),
        Some("allowed")
    );
    assert_eq!(auth.attribute("ds.auth.cache").as_deref(), Some("miss"));
    assert_eq!(auth.attribute("ds.scope").as_deref(), Some("write"));
    let db = child(&spans, "auth-gateway", &auth.span_id(), |n| {
        n == "SELECT tokens"
    });
    assert_eq!(db.span.kind, 3, "client");
    assert_eq!(
        db.attribute("db.system.name").as_deref(),
        Some("postgresql")
    );
    assert_eq!(db.attribute("db.operation.name").as_deref(), Some("SELECT"));
    let text = db.attribute("db.query.text").unwrap_or_default();
    assert!(text.contains("FROM tokens WHERE id = $1"), "{text}");
    let proxy = child(&spans, "auth-gateway", &put.span_id(), |n| n == "PUT");
    assert_eq!(proxy.span.kind, 3, "client");
    assert_eq!(
        proxy.attribute("http.response.status_code").as_deref(),
        Some("201")
    );
    let served = child(&spans, "stream-server", &proxy.span_id(), |n| {
        n.starts_with("PUT")
    });
    assert_eq!(served.span.kind, 2, "server");
    assert_eq!(
        served.attribute("ds.stream").as_deref(),
        Some("chat/room-1")
    );
    assert_eq!(served.attribute("ds.operation").as_deref(), Some("create"));
    assert_eq!(
        served.attribute("ds.content_type").as_deref(),
        Some("text/plain")
    );
    assert!(served.attribute("ds.next_offset").is_some());
    child(&spans, "stream-server", &served.span_id(), |n| {
        n == "storage commit"
    });

    // The append: the cache answered, storage made it durable.
    let post = spans
        .iter()
        .find(|s| s.service == "auth-gateway" && s.span.name == "POST /v1/stream/{*path}")
        .expect("the append's gateway span");
    let auth = child(&spans, "auth-gateway", &post.span_id(), |n| n == "auth");
    assert_eq!(auth.attribute("ds.auth.cache").as_deref(), Some("hit"));
    let proxy = child(&spans, "auth-gateway", &post.span_id(), |n| n == "POST");
    let served = child(&spans, "stream-server", &proxy.span_id(), |n| {
        n.starts_with("POST")
    });
    assert_eq!(served.attribute("ds.operation").as_deref(), Some("append"));
    assert_eq!(
        served.attribute("http.request.body.size").as_deref(),
        Some("5")
    );
    let commit = child(&spans, "stream-server", &served.span_id(), |n| {
        n == "storage commit"
    });
    assert_eq!(commit.attribute("ds.bytes").as_deref(), Some("5"));
    // The redb transaction that made it durable: a trace of its own (it
    // may serve many requests), linked to each request it served.
    let every_span = received.spans();
    let group = every_span
        .iter()
        .find(|s| s.span.name == "redb commit" && s.links().contains(&served.span_id()))
        .expect("a group commit linked to the append");
    assert_eq!(group.service, "stream-server");
    assert_eq!(group.attribute("ds.storage.mode").as_deref(), Some("acid"));
    let group_size: u64 = group
        .attribute("ds.storage.group_size")
        .and_then(|n| n.parse().ok())
        .expect("a group size");
    assert!(group_size >= 1);
    assert_ne!(group.trace_id(), TRACE_ID, "not inside any one request");

    // The live read: what it delivered, recorded when it ended.
    let sse = spans
        .iter()
        .find(|s| {
            s.service == "stream-server" && s.attribute("ds.operation").as_deref() == Some("sse")
        })
        .expect("the SSE read's span");
    assert_eq!(sse.attribute("ds.live").as_deref(), Some("sse"));
    assert_eq!(sse.attribute("ds.delivered.messages").as_deref(), Some("1"));
    let events: u64 = sse
        .attribute("ds.sse.events")
        .and_then(|n| n.parse().ok())
        .expect("ds.sse.events");
    assert!(events >= 2, "a data event and a control event: {events}");
    let bytes: u64 = sse
        .attribute("ds.delivered.bytes")
        .and_then(|n| n.parse().ok())
        .expect("ds.delivered.bytes");
    assert!(bytes > 5, "{bytes}");

    // The refusal: its reason is in the auth span, not in the response.
    let refused = spans
        .iter()
        .find(|s| {
            s.service == "auth-gateway"
                && s.attribute("http.response.status_code").as_deref() == Some("403")
        })
        .expect("the refused request's span");
    let auth = child(&spans, "auth-gateway", &refused.span_id(), |n| n == "auth");
    assert_eq!(auth.attribute("ds.auth.outcome").as_deref(), Some("403"));
    assert!(auth.attribute("ds.auth.refusal").is_some());
    assert_eq!(
        refused.span.status.as_ref().map_or(0, |s| s.code),
        0,
        "a 4xx is not an error"
    );

    // Metrics from both services.
    wait_for(&received, Duration::from_secs(15), "request metrics", |r| {
        let names = r.metric_names();
        let has = |service: &str, name: &str| names.iter().any(|(s, n)| s == service && n == name);
        has("auth-gateway", "http.server.request.duration")
            && has("stream-server", "http.server.request.duration")
            && has("auth-gateway", "ds.gateway.auth.decisions")
            && has("auth-gateway", "ds.gateway.token_cache.lookups")
            && has("auth-gateway", "db.client.operation.duration")
            && has("stream-server", "ds.streams")
            && has("stream-server", "ds.appended.bytes")
            && has("stream-server", "ds.appended.messages")
            && has("stream-server", "ds.live.connections")
            && has("stream-server", "ds.storage.commit.duration")
            && has("stream-server", "ds.storage.commit.group_size")
    })
    .await;

    // Labelled with the names the dashboard queries (and the spans use).
    for (service, metric, key) in [
        ("auth-gateway", "http.server.request.duration", "http.route"),
        (
            "auth-gateway",
            "http.server.request.duration",
            "http.response.status_code",
        ),
        (
            "auth-gateway",
            "ds.gateway.auth.decisions",
            "ds.auth.outcome",
        ),
        (
            "auth-gateway",
            "ds.gateway.token_cache.lookups",
            "ds.auth.cache",
        ),
        (
            "auth-gateway",
            "db.client.operation.duration",
            "db.operation.name",
        ),
        (
            "stream-server",
            "http.server.request.duration",
            "http.request.method",
        ),
        ("stream-server", "ds.live.connections", "ds.live"),
        (
            "stream-server",
            "ds.storage.commit.duration",
            "ds.storage.mode",
        ),
        (
            "stream-server",
            "ds.storage.commit.group_size",
            "ds.storage.mode",
        ),
    ] {
        let keys = received.metric_attributes(service, metric);
        assert!(
            keys.iter().any(|k| k == key),
            "{service} {metric} lacks {key}: {keys:?}"
        );
    }

    // Durations are bucketed for seconds: sub-millisecond bounds, none past
    // a few minutes (the SDK's defaults assume milliseconds).
    for service in ["auth-gateway", "stream-server"] {
        let histograms = received.histogram_bounds(service);
        let in_seconds: Vec<_> = histograms
            .iter()
            .filter(|(_, unit, _)| unit == "s")
            .collect();
        assert!(
            !in_seconds.is_empty(),
            "{service} sent no duration histogram"
        );
        for (name, _, bounds) in in_seconds {
            let (first, last) = (bounds.first().copied(), bounds.last().copied());
            assert!(
                first.is_some_and(|b| b <= 0.001) && last.is_some_and(|b| b <= 300.0),
                "{service} {name} has bounds {bounds:?}, not meant for seconds"
            );
        }
    }

    // JSON log lines parse, and those written inside the traced requests
    // carry the trace.
    let gateway_lines = gateway.lines();
    let mut traced = 0;
    for line in &gateway_lines {
        let object: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(object["level"].is_string() && object["timestamp"].is_string());
        if object["trace_id"] == TRACE_ID {
            assert!(object["span_id"].as_str().is_some_and(|id| id.len() == 16));
            traced += 1;
        }
    }
    assert!(
        traced >= 1,
        "no log line carries the trace: {gateway_lines:#?}"
    );

    // Nothing exported holds the token or its signature.
    let exported = received.bytes();
    let signature = credentials.token.rsplit('.').next().expect("a JWT");
    for secret in [credentials.token.as_str(), signature] {
        assert!(
            !exported
                .windows(secret.len())
                .any(|w| w == secret.as_bytes()),
            "token material was exported"
        );
    }
    for line in gateway_lines.iter().chain(server.lines().iter()) {
        assert!(
            !line.contains(signature),
            "token material was logged: {line}"
        );
    }

    gateway.terminate().await;
    server.terminate().await;
    credentials.db.drop_now().await;
}

/// Appends `count` times to a fresh stream through `gateway`; returns the
/// slowest request's time.
async fn appends(gateway: &Service, token: &str, count: usize) -> Duration {
    let client = reqwest::Client::new();
    let url = format!("{}/v1/stream/chat/slow-collector", gateway.origin);
    let created = client
        .put(&url)
        .bearer_auth(token)
        .header("content-type", "text/plain")
        .send()
        .await
        .expect("PUT");
    assert!(created.status().is_success(), "{}", created.status());
    let mut slowest = Duration::ZERO;
    for i in 0..count {
        let started = Instant::now();
        let appended = client
            .post(&url)
            .bearer_auth(token)
            .header("content-type", "text/plain")
            .body(format!("message {i}"))
            .send()
            .await
            .expect("POST");
        assert_eq!(appended.status(), StatusCode::NO_CONTENT);
        slowest = slowest.max(started.elapsed());
    }
    slowest
}

/// A collector that is down, and one that accepts connections but never
/// answers: requests go on as usual, and shutdown is not held up past the
/// grace period by spans that cannot be delivered.
#[tokio::test]
async fn an_unreachable_or_silent_collector_never_holds_up_requests() {
    // Nothing listens on the first port; the second accepts and is silent.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", listener.local_addr().expect("address"))
    };
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_origin = format!("http://{}", silent.local_addr().expect("address"));
    let held = Arc::new(Mutex::new(Vec::new()));
    {
        let held = held.clone();
        tokio::spawn(async move {
            while let Ok((connection, _)) = silent.accept().await {
                held.lock().expect("lock").push(connection);
            }
        });
    }
    let credentials = credentials("chat/**").await;
    for (collector, protocol) in [(&closed, "grpc"), (&silent_origin, "http/protobuf")] {
        let mut exporting = exporting_to(collector, protocol);
        // A queue this small fills at once: spans are dropped, not waited on.
        exporting.push(("OTEL_BSP_MAX_QUEUE_SIZE", "16".to_owned()));
        let server = stream_server(exporting.clone()).await;
        let gateway = gateway(&credentials, &server.origin, exporting).await;
        let slowest = appends(&gateway, &credentials.token, 200).await;
        // An export waits up to its timeout (2 s here); a request that
        // waited on one would take at least that long.
        assert!(
            slowest < Duration::from_secs(1),
            "{protocol} to {collector}: slowest append took {slowest:?}"
        );
        let grace = Duration::from_secs(10);
        for service in [gateway, server] {
            let took = service.terminate().await;
            assert!(took < grace, "{protocol}: exit took {took:?}");
        }
    }
    credentials.db.drop_now().await;
}
