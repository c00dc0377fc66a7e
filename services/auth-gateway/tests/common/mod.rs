//! Shared harness for the gateway's integration tests: a scratch Postgres
//! database per test (from `DATABASE_URL`), stream-server or a small
//! inspecting upstream in-process, and the real gateway in front of it on an
//! ephemeral loopback port.
//!
//! Every test binary compiles this module, and each uses only part of it.
#![allow(dead_code)]

use auth_gateway::auth::token::{TokenKeys, generate_ed25519_pem};
use auth_gateway::config::Config;
use auth_gateway::tokens::issuer::{Authority, Issuer, TokenRequest};
use auth_gateway::tokens::store::TokenStore;
use axum::body::Body;
use axum::extract::Request;
use axum::response::IntoResponse;
use axum::routing::any;
use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::Client;
use sqlx::Connection;
use sqlx::postgres::PgConnection;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::oneshot;

pub const BASE_PATH: &str = "/v1/stream";

/// A scratch database, created from `DATABASE_URL` and dropped by
/// [`ScratchDb::drop_now`].
pub struct ScratchDb {
    admin_url: String,
    name: String,
    pub url: String,
}

impl ScratchDb {
    pub async fn create() -> ScratchDb {
        let admin_url = std::env::var("DATABASE_URL").unwrap_or_else(|_| {
            panic!(
                "DATABASE_URL is not set: these tests need a Postgres server, e.g. \
                 DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres"
            )
        });
        let name = format!(
            "gw_test_{}_{}",
            std::process::id(),
            OffsetDateTime::now_utc().unix_timestamp_nanos() % 1_000_000_000
        );
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to DATABASE_URL={admin_url}: {e}"));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create the scratch database");
        let (base, _) = admin_url
            .rsplit_once('/')
            .expect("DATABASE_URL ends with /<database>");
        let url = format!("{base}/{name}");
        ScratchDb {
            admin_url,
            name,
            url,
        }
    }

    pub async fn drop_now(self) {
        let mut admin = PgConnection::connect(&self.admin_url)
            .await
            .expect("reconnect to drop the scratch database");
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await
        .expect("drop the scratch database");
    }
}

/// A server task stopped when its trigger fires or is dropped.
pub struct Running {
    pub base: String,
    trigger: Option<oneshot::Sender<()>>,
}

impl Running {
    pub fn stop(&mut self) {
        if let Some(trigger) = self.trigger.take() {
            let _ = trigger.send(());
        }
    }
}

/// stream-server (memory mode) in-process.
pub async fn stream_server() -> Running {
    stream_server_with(|_| {}).await
}

/// stream-server (memory mode) in-process, its configuration adjusted by
/// `configure` first.
pub async fn stream_server_with(
    configure: impl FnOnce(&mut stream_server::config::Config),
) -> Running {
    let mut config = stream_server::config::Config::default();
    config.server.long_poll_timeout_secs = 2.0;
    config.server.shutdown_grace_secs = 1.0;
    configure(&mut config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("non-blocking");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (trigger, triggered) = oneshot::channel::<()>();
    tokio::spawn(stream_server::server::serve(config, listener, async move {
        let _ = triggered.await;
    }));
    wait_healthy(&base).await;
    Running {
        base,
        trigger: Some(trigger),
    }
}

/// What the inspecting upstream saw.
#[derive(Default)]
pub struct Inspection {
    /// Bytes received by `/v1/stream/sink/*`.
    pub sunk: AtomicU64,
    /// Set when an `/v1/stream/endless/*` response body was dropped
    /// (the gateway cancelled it).
    pub endless_dropped: AtomicBool,
    /// Set when a `/v1/stream/hang/*` request, which never gets an answer,
    /// was abandoned.
    pub hang_dropped: AtomicBool,
    /// How many health checks reached it.
    pub health_checks: AtomicU64,
}

/// Sets a flag when dropped.
struct DropFlag(Arc<Inspection>, fn(&Inspection) -> &AtomicBool);

impl Drop for DropFlag {
    fn drop(&mut self) {
        (self.1)(&self.0).store(true, Ordering::SeqCst);
    }
}

/// Serves `app` on `listener` (at `base`) until stopped, once it answers
/// `/healthz`: how the tests' stand-ins for stream-server run.
async fn serve_stub(listener: tokio::net::TcpListener, base: String, app: axum::Router) -> Running {
    let (trigger, triggered) = oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = triggered.await;
            })
            .await
    });
    wait_healthy(&base).await;
    Running {
        base,
        trigger: Some(trigger),
    }
}

/// An upstream that shows what reached it:
/// * `/v1/stream/echo/*` answers with the method, path, query and headers as JSON,
///   plus a `Location` on its own origin;
/// * `/v1/stream/sink/*` counts the request body's bytes;
/// * `/v1/stream/endless/*` streams chunks until the client goes away;
/// * `/v1/stream/hang/*` never answers (a long-poll that waits forever).
pub async fn inspecting_upstream() -> (Running, Arc<Inspection>) {
    let inspection = Arc::new(Inspection::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let seen = inspection.clone();
    let origin = base.clone();
    let counted = inspection.clone();
    let app = axum::Router::new()
        .route(
            "/healthz",
            any(move || {
                counted.health_checks.fetch_add(1, Ordering::SeqCst);
                async { "ok" }
            }),
        )
        .route(
            "/v1/stream/{*path}",
            any(move |request: Request| {
                let seen = seen.clone();
                let origin = origin.clone();
                async move { inspect(request, seen, origin).await }
            }),
        );
    (serve_stub(listener, base, app).await, inspection)
}

async fn inspect(
    request: Request,
    seen: Arc<Inspection>,
    origin: String,
) -> axum::response::Response {
    let path = request.uri().path().to_owned();
    if path.starts_with("/v1/stream/sink/") {
        let mut body = request.into_body().into_data_stream();
        let mut total = 0u64;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => total += chunk.len() as u64,
                Err(_) => return http::StatusCode::BAD_REQUEST.into_response(),
            }
        }
        seen.sunk.store(total, Ordering::SeqCst);
        return total.to_string().into_response();
    }
    if path.starts_with("/v1/stream/endless/") {
        let flag = DropFlag(seen, |i| &i.endless_dropped);
        let chunks = futures_util::stream::unfold(flag, |flag| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Some((Ok::<_, std::io::Error>(Bytes::from_static(b"tick\n")), flag))
        });
        return Body::from_stream(chunks).into_response();
    }
    if path.starts_with("/v1/stream/hang/") {
        let _flag = DropFlag(seen, |i| &i.hang_dropped);
        std::future::pending::<()>().await;
    }
    let headers: serde_json::Map<String, serde_json::Value> = request
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                serde_json::Value::String(value.to_str().unwrap_or("<binary>").to_owned()),
            )
        })
        .collect();
    let body = serde_json::json!({
        "method": request.method().as_str(),
        "path": path,
        "query": request.uri().query(),
        "headers": headers,
    });
    (
        [
            (http::header::LOCATION, format!("{origin}{path}")),
            (
                http::header::HeaderName::from_static("x-private-hop"),
                "secret".to_owned(),
            ),
            (http::header::CONNECTION, "x-private-hop".to_owned()),
        ],
        axum::Json(body),
    )
        .into_response()
}

/// One request that reached [`subscription_upstream`], as it arrived.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub method: String,
    /// The raw path, percent-encoding as sent.
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// What the subscription upstream holds, and every request it saw.
#[derive(Default)]
pub struct Subscriptions {
    arrivals: Mutex<Vec<Arrival>>,
    /// Subscription views by id, as `GET __ds/subscriptions/{id}` answers.
    views: Mutex<HashMap<String, serde_json::Value>>,
}

impl Subscriptions {
    /// The requests under `/v1/stream/` so far (health checks left out).
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.arrivals.lock().expect("lock").clone()
    }

    /// Stores a subscription, as if another tenant had created it.
    pub fn insert(&self, id: &str, view: serde_json::Value) {
        self.views.lock().expect("lock").insert(id.to_owned(), view);
    }
}

/// A stand-in for stream-server's control routes that records what
/// reaches it: `GET __ds/jwks.json` answers a (public, cacheable) key set;
/// `PUT`, `GET` and `DELETE __ds/subscriptions/{id}` keep subscriptions in
/// memory (a `PUT` links its `streams` explicitly; unknown ids are `404`);
/// anything else under `/v1/stream/` answers `200 {"ok":true}`.
pub async fn subscription_upstream() -> (Running, Arc<Subscriptions>) {
    let state = Arc::new(Subscriptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let seen = state.clone();
    let app = axum::Router::new()
        .route("/healthz", any(|| async { "ok" }))
        .route(
            "/v1/stream/{*path}",
            any(move |request: Request| {
                let seen = seen.clone();
                async move { control(request, seen).await }
            }),
        );
    (serve_stub(listener, base, app).await, state)
}

async fn control(request: Request, state: Arc<Subscriptions>) -> axum::response::Response {
    use http::{Method, StatusCode};
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .expect("request body");
    let path = parts.uri.path().to_owned();
    state.arrivals.lock().expect("lock").push(Arrival {
        method: parts.method.to_string(),
        path: path.clone(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    if path == "/v1/stream/__ds/jwks.json" {
        return (
            [
                (http::header::CONTENT_TYPE, "application/jwk-set+json"),
                (http::header::CACHE_CONTROL, "public, max-age=300"),
            ],
            r#"{"keys":[]}"#,
        )
            .into_response();
    }
    let Some(rest) = path.strip_prefix("/v1/stream/__ds/subscriptions/") else {
        return axum::Json(serde_json::json!({"ok": true})).into_response();
    };
    if rest.contains('/') {
        return axum::Json(serde_json::json!({"ok": true})).into_response();
    }
    let mut views = state.views.lock().expect("lock");
    match parts.method {
        Method::GET => match views.get(rest) {
            Some(view) => axum::Json(view.clone()).into_response(),
            None => (StatusCode::NOT_FOUND, "no such subscription").into_response(),
        },
        Method::DELETE => match views.remove(rest) {
            Some(_) => StatusCode::NO_CONTENT.into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        },
        Method::PUT => {
            let Ok(asked) = serde_json::from_slice::<serde_json::Value>(&body) else {
                return StatusCode::BAD_REQUEST.into_response();
            };
            let links: Vec<serde_json::Value> = asked["streams"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|path| {
                    serde_json::json!({"path": path, "link_type": "explicit", "acked_offset": "0"})
                })
                .collect();
            let view = serde_json::json!({
                "id": rest,
                "type": asked["type"],
                "pattern": asked["pattern"],
                "streams": links,
                "wake_stream": asked["wake_stream"],
            });
            if let Some(existing) = views.get(rest) {
                // Re-confirmed (the stand-in does not compare configurations).
                return axum::Json(existing.clone()).into_response();
            }
            views.insert(rest.to_owned(), view.clone());
            (StatusCode::CREATED, axum::Json(view)).into_response()
        }
        _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
    }
}

async fn wait_healthy(base: &str) {
    let client = Client::new();
    for _ in 0..300 {
        if let Ok(response) = client.get(format!("{base}/healthz")).send().await
            && response.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{base} never answered /healthz");
}

/// A token handed out by [`Stack::issue`].
pub struct Issued {
    pub id: String,
    pub token: String,
}

/// Postgres scratch database + upstream + gateway, and a client.
pub struct Stack {
    pub db: ScratchDb,
    pub store: TokenStore,
    pub config: Config,
    pub keys: TokenKeys,
    pub upstream: Running,
    pub gateway: Running,
    pub client: Client,
}

/// A gateway configuration for tests: scratch database, fresh key, free
/// port, generous limits.
pub fn test_config(database_url: &str, upstream: &str) -> Config {
    let mut config = Config {
        database_url: database_url.to_owned(),
        ..Config::default()
    };
    config.server.port = 0;
    config.server.shutdown_grace_secs = 1.0;
    config.upstream.url = upstream.to_owned();
    config.jwt.key = Some(generate_ed25519_pem().expect("keygen"));
    config.limits.rate_per_second = 0;
    config
}

impl Stack {
    /// The gateway in front of a real stream-server.
    pub async fn start() -> Stack {
        Stack::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> Stack {
        let upstream = stream_server().await;
        Stack::in_front_of(upstream, configure).await
    }

    /// The gateway in front of `upstream`.
    pub async fn in_front_of(upstream: Running, configure: impl FnOnce(&mut Config)) -> Stack {
        let db = ScratchDb::create().await;
        let mut config = test_config(&db.url, &upstream.base);
        configure(&mut config);
        let keys = config.jwt.keys().expect("keys");
        let listener = auth_gateway::server::bind(&config).await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (trigger, triggered) = oneshot::channel::<()>();
        tokio::spawn(auth_gateway::server::serve(
            config.clone(),
            listener,
            async move {
                let _ = triggered.await;
            },
        ));
        wait_healthy(&base).await;
        let store = TokenStore::connect(&db.url).await.expect("connect");
        let stack = Stack {
            db,
            store,
            config,
            keys,
            upstream,
            gateway: Running {
                base,
                trigger: Some(trigger),
            },
            client: Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("client"),
        };
        stack.wait_listening().await;
        stack
    }

    /// Waits until the gateway reports its revocation listener up, so
    /// timing tests measure the steady state.
    async fn wait_listening(&self) {
        for _ in 0..300 {
            if let Ok(response) = self
                .client
                .get(format!("{}/readyz", self.gateway.base))
                .send()
                .await
                && let Ok(body) = response.json::<serde_json::Value>().await
                && body["revocation_listener"] == true
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the gateway never started listening for token changes");
    }

    /// Issues a token the way the CLI does (no issuing token, no ceiling).
    pub async fn issue(&self, subject: &str, scopes: &[&str], streams: &[&str]) -> Issued {
        self.issue_for(subject, scopes, streams, Duration::from_secs(3600))
            .await
    }

    pub async fn issue_for(
        &self,
        subject: &str,
        scopes: &[&str],
        streams: &[&str],
        ttl: Duration,
    ) -> Issued {
        let issuer = Issuer {
            store: &self.store,
            keys: &self.keys,
            issuer: &self.config.jwt.issuer,
            audience: &self.config.jwt.audience,
        };
        let issued = issuer
            .issue(
                TokenRequest {
                    subject: subject.to_owned(),
                    scopes: scopes.iter().map(|s| s.parse().expect("scope")).collect(),
                    streams: streams
                        .iter()
                        .map(|p| p.parse().expect("pattern"))
                        .collect(),
                    ttl,
                    description: "test".into(),
                },
                Authority::Operator,
            )
            .await
            .expect("issue");
        Issued {
            id: issued.info.id,
            token: issued.token,
        }
    }

    /// Sends `method url` through the gateway as `token`.
    pub async fn call(&self, method: reqwest::Method, url: &str, token: &str) -> reqwest::Response {
        send(self.client.request(method, url).bearer_auth(token)).await
    }

    /// Creates a `text/plain` stream at `url` as `token`.
    pub async fn create(&self, url: &str, token: &str) -> reqwest::Response {
        send(
            self.client
                .put(url)
                .bearer_auth(token)
                .header("content-type", "text/plain"),
        )
        .await
    }

    /// The gateway URL of the stream at `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{BASE_PATH}/{path}", self.gateway.base)
    }

    /// The upstream URL of the stream at `path` (bypassing the gateway).
    pub fn upstream_url(&self, path: &str) -> String {
        format!("{}{BASE_PATH}/{path}", self.upstream.base)
    }

    pub async fn finish(mut self) {
        self.gateway.stop();
        self.upstream.stop();
        self.store.pool().close().await;
        self.db.drop_now().await;
    }
}

/// Sends a request; a transport failure fails the test.
pub async fn send(request: reqwest::RequestBuilder) -> reqwest::Response {
    request.send().await.expect("request failed")
}

/// The `WWW-Authenticate` header of a response, or "".
pub fn challenge(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Waits up to `within` for `flag` to be set; fails the test with `what`
/// otherwise.
pub async fn wait_for_flag(flag: &AtomicBool, within: Duration, what: &str) {
    let deadline = std::time::Instant::now() + within;
    while !flag.load(Ordering::SeqCst) {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
