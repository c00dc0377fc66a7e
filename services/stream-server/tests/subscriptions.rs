//! Subscriptions (PROTOCOL §6–7, §12.8–12.10) end to end, over HTTP, with
//! real webhook receivers on loopback:
//!
//! * webhook wakes carry the body of §7.1 and a `Webhook-Signature` that an
//!   independent verifier (ed25519-dalek) accepts with the key the server
//!   publishes at `__ds/jwks.json`, selected by the header's `kid`;
//! * failed deliveries are retried after growing waits (1 s, 2 s, 4 s,
//!   ±20 %) with `status: "failed"` meanwhile, and the schedule (next
//!   attempt time and failure count) outlives a `kill -9` of the binary in
//!   `file-durable` and `acid`;
//! * leases end: an unacked pull-wake claim or an unanswered webhook wake
//!   is woken again with a new generation, and the late worker is fenced;
//! * subscriptions, their links, acked offsets, generation and the signing
//!   key survive a restart of the persistent modes (memory keeps nothing),
//!   and streams created after the subscription, before or after a
//!   restart, are linked from their first byte;
//! * webhook URLs to private, link-local, metadata and IPv6-local targets
//!   are refused (`WEBHOOK_URL_REJECTED`) before any connection;
//! * callbacks, acks and releases are fenced by token, generation and wake
//!   id, need a bearer, fail once the subscription is deleted, and of two
//!   racing `done` acks exactly one wins;
//! * pull-wake writes wake events, wakes again after `done` or a release
//!   that leaves work pending; explicit links outlive the streams they name.
//!
//! Nothing here sends traffic beyond 127.0.0.1: the refused URLs are never
//! delivered to, and the accepted public one covers no stream with data.
//! Timing assertions have tolerant upper bounds (a debug build on a loaded
//! two-core machine) and tight lower bounds (what the protocol promises).

mod common;

use axum::Router;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::response::{IntoResponse, Response as AxumResponse};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use common::{BASE_PATH, TestServer, free_port, header, next_offset, send};
use ed25519_dalek::{Signature, VerifyingKey};
use parking_lot::Mutex;
use reqwest::{Client, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const BINARY: &str = env!("CARGO_BIN_EXE_stream-server");
const TEXT: &str = "text/plain";
const JSON: &str = "application/json";

/// How long a child server may take to answer `GET /readyz`.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a wake, a status change or a retry may take to show up when
/// nothing but the machine's load delays it.
const PROMPTLY: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// A webhook receiver on loopback.
// ---------------------------------------------------------------------------

/// One webhook request the receiver got.
#[derive(Debug)]
struct Hit {
    at: Instant,
    signature: Option<String>,
    content_type: Option<String>,
    body: Bytes,
}

impl Hit {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a webhook body is JSON")
    }

    fn token(&self) -> String {
        self.json()["callback_token"]
            .as_str()
            .expect("the wake carries a callback token")
            .to_owned()
    }
}

/// How the receiver answers every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// 500: the delivery failed.
    Fail,
    /// 200 `{}`: delivered, the work goes on (a callback would end it).
    Accept,
    /// 200 `{"done": true}`: delivered and finished.
    Done,
}

/// A webhook receiver at `http://127.0.0.1:<port>/hook` that logs every
/// request it gets and answers as told.
struct Receiver {
    url: String,
    reply: Arc<Mutex<Reply>>,
    hits: mpsc::UnboundedReceiver<Hit>,
    task: JoinHandle<()>,
}

impl Receiver {
    async fn start(reply: Reply) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("receiver address");
        let (sender, hits) = mpsc::unbounded_channel();
        let reply = Arc::new(Mutex::new(reply));
        let answer = Arc::clone(&reply);
        let hook = move |headers: HeaderMap, body: Bytes| {
            let at = Instant::now();
            let text = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            // Read before the hit is reported: a test that changes the
            // reply on seeing this request means the next one.
            let reply = *answer.lock();
            let _ = sender.send(Hit {
                at,
                signature: text("webhook-signature"),
                content_type: text("content-type"),
                body,
            });
            async move { respond(reply) }
        };
        let app = Router::new().route("/hook", post(hook));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url: format!("http://{addr}/hook"),
            reply,
            hits,
            task,
        }
    }

    fn set(&self, reply: Reply) {
        *self.reply.lock() = reply;
    }

    /// The next request, which must arrive within `within`.
    async fn next(&mut self, within: Duration) -> Hit {
        tokio::time::timeout(within, self.hits.recv())
            .await
            .unwrap_or_else(|_| panic!("no webhook request within {within:?}"))
            .expect("the receiver runs")
    }

    /// Fails if a request arrives within `within`.
    async fn quiet(&mut self, within: Duration) {
        if let Ok(hit) = tokio::time::timeout(within, self.hits.recv()).await {
            panic!("unexpected webhook request: {hit:?}");
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn respond(reply: Reply) -> AxumResponse {
    match reply {
        Reply::Fail => (AxumStatus::INTERNAL_SERVER_ERROR, "failing on purpose").into_response(),
        Reply::Accept => axum::Json(json!({})).into_response(),
        Reply::Done => axum::Json(json!({ "done": true })).into_response(),
    }
}

// ---------------------------------------------------------------------------
// The subscription API, against an in-process or a child server.
// ---------------------------------------------------------------------------

/// A client of one server (`base` is its origin).
#[derive(Clone)]
struct Api {
    base: String,
    client: Client,
}

impl Api {
    fn of(server: &TestServer) -> Api {
        Api {
            base: server.base.clone(),
            client: server.client.clone(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{BASE_PATH}/{path}", self.base)
    }

    fn control(&self, rest: &str) -> String {
        format!("{}{BASE_PATH}/__ds/{rest}", self.base)
    }

    fn sub_url(&self, id: &str, rest: &str) -> String {
        let rest = if rest.is_empty() {
            String::new()
        } else {
            format!("/{rest}")
        };
        self.control(&format!("subscriptions/{id}{rest}"))
    }

    /// Creates a stream; returns its tail (its start, when empty).
    async fn create(&self, path: &str, content_type: &str) -> String {
        let response = send(
            self.client
                .put(self.url(path))
                .header("content-type", content_type),
        )
        .await;
        assert_eq!(response.status(), StatusCode::CREATED, "PUT {path}");
        next_offset(&response)
    }

    /// Appends text; returns the new tail.
    async fn append(&self, path: &str, body: &str) -> String {
        let response = send(
            self.client
                .post(self.url(path))
                .header("content-type", TEXT)
                .body(body.to_owned()),
        )
        .await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT, "POST {path}");
        next_offset(&response)
    }

    async fn delete_stream(&self, path: &str) {
        let response = send(self.client.delete(self.url(path))).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT, "DELETE {path}");
    }

    async fn put_sub(&self, id: &str, spec: &Value) -> Response {
        send(self.client.put(self.sub_url(id, "")).json_body(spec)).await
    }

    /// Creates a subscription, asserting `201`; returns its view.
    async fn subscribe(&self, id: &str, spec: &Value) -> Value {
        let response = self.put_sub(id, spec).await;
        let status = response.status();
        let view = json_of(response).await;
        assert_eq!(status, StatusCode::CREATED, "PUT subscription {id}: {view}");
        view
    }

    async fn get_sub(&self, id: &str) -> Response {
        send(self.client.get(self.sub_url(id, ""))).await
    }

    /// `GET` of a subscription that must exist.
    async fn view(&self, id: &str) -> Value {
        let response = self.get_sub(id).await;
        assert_eq!(response.status(), StatusCode::OK, "GET subscription {id}");
        json_of(response).await
    }

    async fn add_streams(&self, id: &str, streams: &[&str]) -> Response {
        send(
            self.client
                .post(self.sub_url(id, "streams"))
                .json_body(&json!({ "streams": streams })),
        )
        .await
    }

    async fn claim(&self, id: &str, worker: &str) -> Response {
        send(
            self.client
                .post(self.sub_url(id, "claim"))
                .json_body(&json!({ "worker": worker })),
        )
        .await
    }

    /// A claim that must succeed.
    async fn claimed(&self, id: &str, worker: &str) -> Value {
        let response = self.claim(id, worker).await;
        let status = response.status();
        let body = json_of(response).await;
        assert_eq!(status, StatusCode::OK, "claim {id} by {worker}: {body}");
        body
    }

    /// A `callback`, `ack` or `release` with `token` as the bearer (none if
    /// `None`).
    fn wake_request(
        &self,
        id: &str,
        kind: &str,
        token: Option<&str>,
        body: &Value,
    ) -> RequestBuilder {
        let request = self.client.post(self.sub_url(id, kind)).json_body(body);
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn ack(&self, id: &str, token: &str, body: &Value) -> Response {
        send(self.wake_request(id, "ack", Some(token), body)).await
    }

    async fn callback(&self, id: &str, token: &str, body: &Value) -> Response {
        send(self.wake_request(id, "callback", Some(token), body)).await
    }

    async fn release(&self, id: &str, token: &str, body: &Value) -> Response {
        send(self.wake_request(id, "release", Some(token), body)).await
    }

    /// Every wake event of a JSON wake stream.
    async fn wake_events(&self, wake_stream: &str) -> Vec<Value> {
        let response = send(
            self.client
                .get(self.url(wake_stream))
                .query(&[("offset", "-1")]),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK, "read {wake_stream}");
        match json_of(response).await {
            Value::Array(events) => events,
            other => panic!("a JSON stream reads as an array: {other}"),
        }
    }

    /// Waits for the wake event of `generation` in `wake_stream`.
    async fn wake_event(&self, wake_stream: &str, generation: u64) -> Value {
        eventually(&format!("wake event {generation}"), PROMPTLY, || async {
            self.wake_events(wake_stream)
                .await
                .into_iter()
                .find(|e| e["generation"] == generation)
        })
        .await
    }

    async fn jwks(&self) -> Value {
        let response = send(self.client.get(self.control("jwks.json"))).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            header(&response, "content-type").as_deref(),
            Some("application/jwk-set+json")
        );
        json_of(response).await
    }

    /// The `kid` of the only key published.
    async fn kid(&self) -> String {
        let jwks = self.jwks().await;
        let keys = jwks["keys"].as_array().expect("keys");
        assert_eq!(keys.len(), 1, "{jwks}");
        keys[0]["kid"].as_str().expect("kid").to_owned()
    }

    /// Waits until the subscription's `status` is `status`.
    async fn status_becomes(&self, id: &str, status: &str) -> Value {
        eventually(&format!("status {status}"), PROMPTLY, || async {
            let view = self.view(id).await;
            (view["status"] == status).then_some(view)
        })
        .await
    }

    /// Waits until `path`'s acked offset in the subscription is `offset`.
    async fn acked_becomes(&self, id: &str, path: &str, offset: &str) {
        eventually(&format!("{path} acked at {offset}"), PROMPTLY, || async {
            (acked(&self.view(id).await, path) == offset).then_some(())
        })
        .await;
    }
}

/// A JSON request body (this reqwest is built without its `json` feature).
trait JsonBody {
    fn json_body(self, body: &Value) -> Self;
}

impl JsonBody for RequestBuilder {
    fn json_body(self, body: &Value) -> Self {
        self.header("content-type", JSON).body(body.to_string())
    }
}

async fn json_of(response: Response) -> Value {
    let bytes = response.bytes().await.expect("read the body");
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&bytes)))
}

/// Asserts a refusal of the subscription API: `status` with
/// `{"error": {"code": code}}`; returns the error object.
async fn assert_error(response: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(
        header(&response, "content-type").as_deref(),
        Some(JSON),
        "{response:?}"
    );
    let actual = response.status();
    let body = json_of(response).await;
    assert_eq!(actual, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    body["error"].clone()
}

/// Polls `probe` until it returns something, failing after `within`.
async fn eventually<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The link to `path` in a subscription view, if any.
fn link<'a>(view: &'a Value, path: &str) -> Option<&'a Value> {
    view["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .find(|l| l["path"] == path)
}

fn acked(view: &Value, path: &str) -> String {
    link(view, path).unwrap_or_else(|| panic!("{path} is not linked: {view}"))["acked_offset"]
        .as_str()
        .expect("acked_offset")
        .to_owned()
}

/// The stream `path` in a wake's (webhook body's or claim's) streams.
fn wake_stream<'a>(wake: &'a Value, path: &str) -> &'a Value {
    wake["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .find(|s| s["path"] == path)
        .unwrap_or_else(|| panic!("{path} is not in the wake: {wake}"))
}

fn webhook_spec(url: &str, pattern: &str) -> Value {
    json!({ "type": "webhook", "pattern": pattern, "webhook": { "url": url } })
}

fn pull_spec(wake_stream: &str, pattern: &str, lease_ttl_ms: u64) -> Value {
    json!({
        "type": "pull-wake",
        "pattern": pattern,
        "wake_stream": wake_stream,
        "lease_ttl_ms": lease_ttl_ms,
    })
}

/// The body of an ack or callback for `wake` (a claim or webhook body).
fn ack_body(wake: &Value, acks: &[(&str, &str)], done: bool) -> Value {
    json!({
        "wake_id": wake["wake_id"],
        "generation": wake["generation"],
        "acks": acks
            .iter()
            .map(|(stream, offset)| json!({ "stream": stream, "offset": offset }))
            .collect::<Vec<_>>(),
        "done": done,
    })
}

async fn dev_server() -> TestServer {
    TestServer::start_with(|c| c.subscriptions.allow_insecure_local_webhooks = true).await
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// Asserts `gap` is a retry wait of `nominal` with ±20 % jitter: never
/// shorter (but for timer rounding), longer only by `slack` of scheduling.
fn assert_wait(gap: Duration, nominal: Duration, slack: Duration, what: &str) {
    let low = nominal
        .mul_f64(0.8)
        .saturating_sub(Duration::from_millis(30));
    let high = nominal.mul_f64(1.2) + slack;
    assert!(
        (low..=high).contains(&gap),
        "{what}: {gap:?} is not {nominal:?} ±20 % (allowed {low:?}..={high:?})"
    );
}

// ---------------------------------------------------------------------------
// The binary as a child process, for restarts.
// ---------------------------------------------------------------------------

/// A data directory (`data/` in a temp dir, logs next to it), removed on
/// drop.
struct Scratch {
    root: TempDir,
    mode: &'static str,
    starts: u32,
}

impl Scratch {
    fn new(name: &str, mode: &'static str) -> Scratch {
        let root = tempfile::Builder::new()
            .prefix(&format!("ds-subscriptions-{name}-{mode}-"))
            .tempdir()
            .expect("create the scratch directory");
        Scratch {
            root,
            mode,
            starts: 0,
        }
    }
}

/// The server binary running as a child; dropping it kills it, printing
/// its output if the test is failing.
struct Process {
    child: Child,
    api: Api,
    log: PathBuf,
}

impl Process {
    /// Starts the binary over the scratch directory, with webhooks to
    /// loopback allowed, and waits until it is ready.
    async fn start(scratch: &mut Scratch) -> Process {
        let probe = Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("probe client");
        for attempt in 1.. {
            let port = free_port();
            scratch.starts += 1;
            let log = scratch
                .root
                .path()
                .join(format!("server-{}.log", scratch.starts));
            let mut process = Process {
                child: spawn(scratch, port, &log),
                api: Api {
                    base: format!("http://127.0.0.1:{port}"),
                    client: Client::builder()
                        .timeout(Duration::from_secs(15))
                        .build()
                        .expect("client"),
                },
                log,
            };
            let ready = common::wait_child_ready(
                &mut process.child,
                &process.api.base,
                &probe,
                STARTUP_TIMEOUT,
            )
            .await;
            let failure = match ready {
                Ok(()) => return process,
                Err(failure) => failure,
            };
            let output = read_log(&process.log);
            drop(process);
            // Another process can take the port between picking and binding it.
            if output.contains("cannot listen") && attempt < 5 {
                continue;
            }
            panic!("stream-server did not become ready: {failure}\n{output}");
        }
        unreachable!("the loop returns or panics")
    }

    /// `kill -9`: nothing is flushed or finished.
    fn kill9(mut self) {
        self.child.kill().expect("SIGKILL the server");
        self.child.wait().expect("reap the server");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- stream-server output ({}) ---\n{}",
                self.log.display(),
                read_log(&self.log)
            );
        }
    }
}

fn spawn(scratch: &Scratch, port: u16, log: &Path) -> Child {
    let stdout = std::fs::File::create(log).expect("create the server log");
    let stderr = stdout.try_clone().expect("share the server log");
    let mut command = Command::new(BINARY);
    // Only this test's settings: nothing inherited from the environment.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("DS_") {
            command.env_remove(key);
        }
    }
    command
        .current_dir(scratch.root.path())
        .env("DS_STORAGE__MODE", scratch.mode)
        .env("DS_STORAGE__DATA_DIR", scratch.root.path().join("data"))
        .env("DS_SERVER__HOST", "127.0.0.1")
        .env("DS_SERVER__PORT", port.to_string())
        .env("DS_SERVER__SHUTDOWN_GRACE_SECS", "2")
        .env("DS_SUBSCRIPTIONS__ALLOW_INSECURE_LOCAL_WEBHOOKS", "true")
        .env("DS_SUBSCRIPTIONS__WEBHOOK_TIMEOUT_SECS", "5")
        .env("RUST_LOG", "stream_server=info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    command.spawn().expect("spawn the stream-server binary")
}

fn read_log(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()))
}

/// Generates a test per persistent mode from `async fn $name(mode)`.
macro_rules! in_persistent_modes {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn file_durable() {
                super::$name("file-durable").await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn acid() {
                super::$name("acid").await;
            }
        }
    };
}

// ---------------------------------------------------------------------------
// 1. Webhook signatures and bodies.
// ---------------------------------------------------------------------------

/// Checks a `Webhook-Signature` as a receiver would (§7.1, §12.10): the
/// key whose `kid` the header names, from the JWK Set, over `<t>.<body>`.
/// Returns the `kid`.
fn verify_signature(jwks: &Value, hit: &Hit) -> String {
    let header = hit.signature.as_deref().expect("Webhook-Signature header");
    let mut t = None;
    let mut kid = None;
    let mut signature = None;
    for part in header.split(',') {
        let (name, value) = part.split_once('=').expect("name=value");
        match name {
            "t" => t = Some(value),
            "kid" => kid = Some(value),
            "ed25519" => signature = Some(value),
            other => panic!("unknown signature parameter {other:?} in {header:?}"),
        }
    }
    let (t, kid, signature) = (
        t.expect("t="),
        kid.expect("kid="),
        signature.expect("ed25519="),
    );
    let sent: u64 = t.parse().expect("t is decimal Unix seconds");
    assert!(
        sent.abs_diff(unix_secs()) <= 300,
        "t={sent} is outside a five-minute replay window"
    );
    let jwk = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap_or_else(|| panic!("kid {kid} is not in the JWK Set {jwks}"));
    assert_eq!(jwk["kty"], "OKP");
    assert_eq!(jwk["crv"], "Ed25519");
    assert_eq!(jwk["alg"], "EdDSA");
    assert_eq!(jwk["use"], "sig");
    let x: [u8; 32] = URL_SAFE_NO_PAD
        .decode(jwk["x"].as_str().expect("x"))
        .expect("x is unpadded base64url")
        .try_into()
        .expect("an Ed25519 public key is 32 bytes");
    let key = VerifyingKey::from_bytes(&x).expect("a valid Ed25519 point");
    let signature: [u8; 64] = URL_SAFE_NO_PAD
        .decode(signature)
        .expect("the signature is unpadded base64url")
        .try_into()
        .expect("an Ed25519 signature is 64 bytes");
    let signature = Signature::from_bytes(&signature);
    let signed = [format!("{t}.").as_bytes(), &hit.body].concat();
    key.verify_strict(&signed, &signature)
        .unwrap_or_else(|e| panic!("the signature does not verify: {e}"));
    // The verifier is not one that accepts anything.
    let mut tampered = signed.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(key.verify_strict(&tampered, &signature).is_err());
    let other_time = [format!("{}.", sent + 1).as_bytes(), &hit.body].concat();
    assert!(key.verify_strict(&other_time, &signature).is_err());
    kid.to_owned()
}

#[tokio::test]
async fn webhook_wakes_are_signed_with_the_published_key() {
    let server = dev_server().await;
    let api = Api::of(&server);
    let mut receiver = Receiver::start(Reply::Done).await;
    let start = api.create("signed/a", TEXT).await;
    let view = api
        .subscribe("signed", &webhook_spec(&receiver.url, "signed/*"))
        .await;
    assert_eq!(acked(&view, "signed/a"), start, "linked at its tail");
    let jwks = api.jwks().await;
    assert_eq!(view["webhook"]["signing"]["alg"], "ed25519");
    assert_eq!(view["webhook"]["signing"]["kid"], jwks["keys"][0]["kid"]);
    assert_eq!(
        view["webhook"]["signing"]["jwks_url"],
        api.control("jwks.json")
    );
    assert!(
        !view.to_string().contains("secret"),
        "no shared secret in the view: {view}"
    );

    let tail = api.append("signed/a", "one").await;
    let hit = receiver.next(PROMPTLY).await;
    assert_eq!(hit.content_type.as_deref(), Some(JSON));
    let kid = verify_signature(&jwks, &hit);
    assert_eq!(kid, view["webhook"]["signing"]["kid"]);
    let wake = hit.json();
    assert_eq!(wake["subscription_id"], "signed");
    assert_eq!(wake["generation"], 1);
    let first_wake_id = wake["wake_id"].as_str().expect("wake_id").to_owned();
    assert!(!first_wake_id.is_empty());
    assert_eq!(
        wake["callback_url"],
        format!(
            "{}{BASE_PATH}/__ds/subscriptions/signed/callback",
            server.base
        )
    );
    assert!(!hit.token().is_empty());
    let streams = wake["streams"].as_array().expect("streams");
    assert_eq!(streams.len(), 1, "{wake}");
    assert_eq!(
        streams[0],
        json!({
            "path": "signed/a",
            "link_type": "glob",
            "acked_offset": start,
            "tail_offset": tail,
            "has_pending": true,
        })
    );

    // `{"done": true}` acked the snapshot; the next append is a new wake.
    api.acked_becomes("signed", "signed/a", &tail).await;
    assert_eq!(api.view("signed").await["status"], "active");
    let tail2 = api.append("signed/a", "two").await;
    let hit = receiver.next(PROMPTLY).await;
    assert_eq!(verify_signature(&jwks, &hit), kid);
    let wake = hit.json();
    assert_eq!(wake["generation"], 2);
    assert_ne!(wake["wake_id"], first_wake_id.as_str());
    assert_ne!(hit.token(), "");
    let a = wake_stream(&wake, "signed/a");
    assert_eq!(a["acked_offset"], tail);
    assert_eq!(a["tail_offset"], tail2);
    api.acked_becomes("signed", "signed/a", &tail2).await;
}

#[tokio::test]
async fn callback_and_jwks_urls_follow_the_public_base_url() {
    let server = TestServer::start_with(|c| {
        c.subscriptions.allow_insecure_local_webhooks = true;
        c.http.public_base_url = Some("https://streams.example.com".into());
    })
    .await;
    let api = Api::of(&server);
    let mut receiver = Receiver::start(Reply::Done).await;
    api.create("public/a", TEXT).await;
    let view = api
        .subscribe("public", &webhook_spec(&receiver.url, "public/*"))
        .await;
    assert_eq!(
        view["webhook"]["signing"]["jwks_url"],
        format!("https://streams.example.com{BASE_PATH}/__ds/jwks.json")
    );
    api.append("public/a", "x").await;
    let wake = receiver.next(PROMPTLY).await.json();
    assert_eq!(
        wake["callback_url"],
        format!("https://streams.example.com{BASE_PATH}/__ds/subscriptions/public/callback")
    );
}

// ---------------------------------------------------------------------------
// 2. Retries and their schedule.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_deliveries_are_retried_after_growing_waits() {
    let server = dev_server().await;
    let api = Api::of(&server);
    let mut receiver = Receiver::start(Reply::Fail).await;
    api.create("retry/a", TEXT).await;
    api.subscribe("retry", &webhook_spec(&receiver.url, "retry/*"))
        .await;
    let tail = api.append("retry/a", "x").await;

    let first = receiver.next(PROMPTLY).await;
    api.status_becomes("retry", "failed").await;
    let second = receiver.next(PROMPTLY).await;
    assert_wait(
        second.at - first.at,
        Duration::from_secs(1),
        Duration::from_millis(700),
        "first retry",
    );
    // The wait doubles; the third attempt is answered.
    receiver.set(Reply::Done);
    let third = receiver.next(PROMPTLY).await;
    assert_wait(
        third.at - second.at,
        Duration::from_secs(2),
        Duration::from_millis(700),
        "second retry",
    );
    // Every attempt is a wake of its own, fenced apart from the others.
    let generations: Vec<Value> = [&first, &second, &third]
        .iter()
        .map(|h| h.json()["generation"].clone())
        .collect();
    assert_eq!(generations, [json!(1), json!(2), json!(3)]);
    assert_ne!(first.json()["wake_id"], second.json()["wake_id"]);
    let view = api.status_becomes("retry", "active").await;
    assert_eq!(acked(&view, "retry/a"), tail, "done acked the snapshot");
    receiver.quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn an_unreachable_webhook_makes_the_subscription_failed() {
    let server = dev_server().await;
    let api = Api::of(&server);
    // A loopback port nothing listens on.
    let closed = format!("http://127.0.0.1:{}/hook", free_port());
    api.create("closed/a", TEXT).await;
    let view = api
        .subscribe("closed", &webhook_spec(&closed, "closed/*"))
        .await;
    assert_eq!(view["status"], "active");
    let start = acked(&view, "closed/a");
    api.append("closed/a", "x").await;
    let view = api.status_becomes("closed", "failed").await;
    assert_eq!(acked(&view, "closed/a"), start, "nothing acked");
}

/// The retry schedule outlives `kill -9` (§7.1): after a restart no
/// attempt comes before the stored next attempt time, the failure count
/// goes on doubling the wait, and delivery resumes.
async fn retry_schedule_survives_restart(mode: &'static str) {
    let mut scratch = Scratch::new("retry", mode);
    let mut receiver = Receiver::start(Reply::Fail).await;
    let server = Process::start(&mut scratch).await;
    let api = server.api.clone();
    api.create("retry/a", TEXT).await;
    api.subscribe("retry", &webhook_spec(&receiver.url, "retry/*"))
        .await;
    let tail = api.append("retry/a", "x").await;

    let first = receiver.next(PROMPTLY).await;
    let second = receiver.next(PROMPTLY).await;
    assert_wait(
        second.at - first.at,
        Duration::from_secs(1),
        Duration::from_millis(700),
        "first retry",
    );
    api.status_becomes("retry", "failed").await;
    // The failure is stored right after the receiver's answer, which no
    // request can observe; the next attempt is at least 1.6 s away.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill9();

    let server = Process::start(&mut scratch).await;
    let ready = Instant::now();
    let api = server.api.clone();
    assert_eq!(
        api.view("retry").await["status"],
        "failed",
        "the retry is still scheduled after the restart"
    );
    let third = receiver.next(STARTUP_TIMEOUT).await;
    // Not before its time; late only by the restart, if that took longer.
    let gap = third.at - second.at;
    assert!(
        gap >= Duration::from_millis(1570),
        "the retry scheduled 2 s ±20 % after the second attempt came after {gap:?}"
    );
    let latest = (second.at + Duration::from_millis(3100)).max(ready + Duration::from_millis(1500));
    assert!(
        third.at <= latest,
        "the retry came {gap:?} after the second attempt, {:?} after the restart",
        third.at - ready
    );
    assert_eq!(third.json()["generation"], 3, "the generation was kept");
    // The failure count was kept too: the next wait is 4 s, not 1 s.
    receiver.set(Reply::Done);
    let fourth = receiver.next(Duration::from_secs(10)).await;
    assert_wait(
        fourth.at - third.at,
        Duration::from_secs(4),
        Duration::from_millis(900),
        "the retry after the restart",
    );
    let view = api.status_becomes("retry", "active").await;
    assert_eq!(acked(&view, "retry/a"), tail);
}

in_persistent_modes!(retry_schedule_survives_restart);

// ---------------------------------------------------------------------------
// 3. Leases.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_pull_wake_lease_goes_to_the_next_worker() {
    let server = TestServer::start().await;
    let api = Api::of(&server);
    api.create("wake/lease", JSON).await;
    api.create("lease/a", TEXT).await;
    api.subscribe("lease", &pull_spec("wake/lease", "lease/*", 1000))
        .await;
    let tail = api.append("lease/a", "x").await;
    api.wake_event("wake/lease", 1).await;

    let first = api.claimed("lease", "worker-1").await;
    let claimed_at = Instant::now();
    assert_eq!(first["generation"], 1);
    assert_eq!(first["lease_ttl_ms"], 1000);
    let busy = assert_error(
        api.claim("lease", "worker-2").await,
        StatusCode::CONFLICT,
        "ALREADY_CLAIMED",
    )
    .await;
    assert_eq!(busy["current_holder"], "worker-1");
    assert_eq!(busy["generation"], 1);

    // The lease runs out unacked: the pending work is woken again.
    let event = api.wake_event("wake/lease", 2).await;
    assert!(
        claimed_at.elapsed() >= Duration::from_millis(950),
        "woken again {:?} into a 1 s lease",
        claimed_at.elapsed()
    );
    assert_eq!(event["stream"], "lease/a");
    let second = api.claimed("lease", "worker-2").await;
    assert_eq!(second["generation"], 2);
    assert_ne!(second["wake_id"], first["wake_id"]);
    assert_eq!(wake_stream(&second, "lease/a")["has_pending"], true);

    // The first worker is fenced out, whatever it sends.
    let token1 = first["token"].as_str().expect("token");
    let late = ack_body(&first, &[("lease/a", &tail)], true);
    assert_error(
        api.ack("lease", token1, &late).await,
        StatusCode::CONFLICT,
        "FENCED",
    )
    .await;
    assert_error(
        api.release(
            "lease",
            token1,
            &json!({"wake_id": first["wake_id"], "generation": 1}),
        )
        .await,
        StatusCode::CONFLICT,
        "FENCED",
    )
    .await;
    assert_ne!(acked(&api.view("lease").await, "lease/a"), tail);

    let token2 = second["token"].as_str().expect("token");
    let response = api
        .ack(
            "lease",
            token2,
            &ack_body(&second, &[("lease/a", &tail)], true),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        json_of(response).await,
        json!({ "ok": true, "next_wake": false })
    );
    assert_eq!(acked(&api.view("lease").await, "lease/a"), tail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_webhook_wake_is_woken_again_after_its_lease() {
    let server = dev_server().await;
    let api = Api::of(&server);
    let mut receiver = Receiver::start(Reply::Accept).await;
    api.create("lapse/a", TEXT).await;
    let mut spec = webhook_spec(&receiver.url, "lapse/*");
    spec["lease_ttl_ms"] = json!(1000);
    api.subscribe("lapse", &spec).await;
    let tail = api.append("lapse/a", "x").await;

    // Accepted without done, and never called back.
    let first = receiver.next(PROMPTLY).await;
    let second = receiver.next(PROMPTLY).await;
    assert!(
        second.at - first.at >= Duration::from_millis(950),
        "woken again after {:?} of a 1 s lease",
        second.at - first.at
    );
    let (first, second) = (first.json(), second.json());
    assert_eq!(first["generation"], 1);
    assert_eq!(second["generation"], 2);
    assert_ne!(first["wake_id"], second["wake_id"]);
    assert_ne!(first["callback_token"], second["callback_token"]);
    assert_eq!(api.view("lapse").await["status"], "active");

    // The first wake's callback is stale; the second's is not.
    let stale = first["callback_token"].as_str().expect("token");
    assert_error(
        api.callback(
            "lapse",
            stale,
            &ack_body(&first, &[("lapse/a", &tail)], true),
        )
        .await,
        StatusCode::CONFLICT,
        "FENCED",
    )
    .await;
    let token = second["callback_token"].as_str().expect("token");
    let response = api
        .callback(
            "lapse",
            token,
            &ack_body(&second, &[("lapse/a", &tail)], true),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(acked(&api.view("lapse").await, "lapse/a"), tail);
}

// ---------------------------------------------------------------------------
// 4. Restarts.
// ---------------------------------------------------------------------------

/// Subscriptions, links, acked offsets, the generation and the signing key
/// survive `kill -9`; streams created after the subscription, before and
/// after the restart, are linked from their first byte.
async fn subscriptions_survive_restart(mode: &'static str) {
    let mut scratch = Scratch::new("restart", mode);
    let server = Process::start(&mut scratch).await;
    let api = server.api.clone();
    api.create("wake/keep", JSON).await;
    api.create("keep/old", TEXT).await;
    let old_tail = api.append("keep/old", "history").await;
    let mut spec = pull_spec("wake/keep", "keep/*", 60_000);
    spec["streams"] = json!(["manual/x", "keep/old"]);
    spec["description"] = json!("kept");
    let created = api.subscribe("keep", &spec).await;
    assert_eq!(
        acked(&created, "keep/old"),
        old_tail,
        "backfilled at its tail"
    );

    // Generation 1: keep/old's new data is processed and acked.
    let new_tail = api.append("keep/old", "new").await;
    let first = api.claimed("keep", "w").await;
    assert_eq!(first["generation"], 1);
    let first_token = first["token"].as_str().expect("token").to_owned();
    let response = api
        .ack(
            "keep",
            &first_token,
            &ack_body(&first, &[("keep/old", &new_tail)], false),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = api
        .ack("keep", &first_token, &ack_body(&first, &[], true))
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    // Created after the subscription, with data from its creation on.
    let born = send(
        api.client
            .put(api.url("keep/born"))
            .header("content-type", TEXT)
            .body("first"),
    )
    .await;
    assert_eq!(born.status(), StatusCode::CREATED);
    let born_tail = next_offset(&born);
    let explicit_start = api.create("manual/x", TEXT).await;
    api.wake_event("wake/keep", 2).await;
    let before = api.view("keep").await;
    let born_start = acked(&before, "keep/born");
    assert_ne!(born_start, born_tail, "keep/born's first data is pending");
    assert_eq!(
        link(&before, "manual/x").expect("manual/x")["link_type"],
        "explicit"
    );
    assert_eq!(acked(&before, "manual/x"), explicit_start);
    assert_eq!(
        link(&before, "keep/old").expect("keep/old")["link_type"],
        "explicit"
    );
    assert!(
        link(&before, "wake/keep").is_none(),
        "the wake stream is never linked"
    );
    let kid = api.kid().await;

    server.kill9();
    let server = Process::start(&mut scratch).await;
    let api = server.api.clone();

    let after = api.view("keep").await;
    assert_eq!(after, before, "the subscription is as it was");
    assert_eq!(api.kid().await, kid, "the signing key is kept");
    // The same configuration is recognised.
    assert_eq!(api.put_sub("keep", &spec).await.status(), StatusCode::OK);

    // A stream created after the restart is linked from its start too.
    let late_start = api.create("keep/late", TEXT).await;
    let late_tail = api.append("keep/late", "late").await;
    assert_eq!(acked(&api.view("keep").await, "keep/late"), late_start);

    // The waiting wake of generation 2 is claimed: nothing was lost.
    let wake = api.claimed("keep", "w").await;
    assert_eq!(wake["generation"], 2, "the generation goes on: {wake}");
    let born = wake_stream(&wake, "keep/born");
    assert_eq!(born["acked_offset"], born_start);
    assert_eq!(born["tail_offset"], born_tail);
    assert_eq!(born["has_pending"], true);
    assert_eq!(wake_stream(&wake, "keep/late")["tail_offset"], late_tail);
    // keep/old has nothing pending, so the wake leaves it out.
    assert!(
        wake["streams"]
            .as_array()
            .expect("streams")
            .iter()
            .all(|s| s["path"] != "keep/old"),
        "{wake}"
    );
    // Generation 1's wake did not come back to life.
    assert_error(
        api.ack("keep", &first_token, &ack_body(&first, &[], true))
            .await,
        StatusCode::CONFLICT,
        "FENCED",
    )
    .await;
    assert_eq!(acked(&api.view("keep").await, "keep/old"), new_tail);

    // Generation 2 is held across another restart: its token still
    // answers, though the data directory never held it.
    let token = wake["token"].as_str().expect("token").to_owned();
    server.kill9();
    let files = files_under(scratch.root.path());
    assert!(!files.is_empty());
    for (path, bytes) in &files {
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "{} holds a wake token",
            path.display()
        );
    }
    let server = Process::start(&mut scratch).await;
    let response = server
        .api
        .ack(
            "keep",
            &token,
            &ack_body(&wake, &[("keep/born", &born_tail)], true),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        acked(&server.api.view("keep").await, "keep/born"),
        born_tail
    );
}

in_persistent_modes!(subscriptions_survive_restart);

/// Every file under `dir`, read whole.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read the scratch directory") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("read a data file");
                files.push((path, bytes));
            }
        }
    }
    files
}

#[tokio::test]
async fn memory_mode_keeps_nothing_across_a_restart() {
    let mut scratch = Scratch::new("restart", "memory");
    let server = Process::start(&mut scratch).await;
    let api = server.api.clone();
    api.create("mem/a", TEXT).await;
    api.subscribe(
        "mem",
        &json!({"type": "pull-wake", "pattern": "mem/*", "wake_stream": "wake/mem"}),
    )
    .await;
    let kid = api.kid().await;
    server.kill9();
    let server = Process::start(&mut scratch).await;
    assert_error(
        server.api.get_sub("mem").await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    )
    .await;
    assert_ne!(server.api.kid().await, kid, "a new key for a new process");
}

// ---------------------------------------------------------------------------
// 5. Webhook URLs (SSRF).
// ---------------------------------------------------------------------------

/// Targets no webhook may have, even with the development exception on.
const REFUSED_URLS: &[&str] = &[
    "https://10.0.0.1/hook",
    "https://172.16.5.4/hook",
    "https://192.168.1.1/hook",
    "https://169.254.169.254/latest/meta-data/",
    "https://169.254.1.1/hook",
    "https://100.64.0.1/hook",
    "https://0.0.0.0/hook",
    "https://127.1.0.1/hook",
    "https://[fe80::1]/hook",
    "https://[fc00::1]/hook",
    "https://[fd12:3456::1]/hook",
    "https://[::]/hook",
    "https://[::ffff:10.0.0.1]/hook",
    "https://[::ffff:169.254.169.254]/hook",
    "https://0xa9fea9fe/hook",
    "https://2852039166/hook",
    "https://metadata.google.internal/computeMetadata/v1/",
    "https://printer.local/hook",
    "https://intranet/hook",
    "http://example.com/hook",
    "http://93.184.216.34/hook",
    "ftp://example.com/hook",
    "https://user:pass@example.com/hook",
    "not a url",
];

#[tokio::test]
async fn webhook_urls_to_local_networks_are_rejected() {
    let server = dev_server().await;
    let api = Api::of(&server);
    for url in REFUSED_URLS {
        // A pattern nothing matches: even a wrongly accepted URL would
        // never be delivered to.
        let response = api.put_sub("ssrf", &webhook_spec(url, "nothing/*")).await;
        assert_error(response, StatusCode::BAD_REQUEST, "WEBHOOK_URL_REJECTED").await;
        assert_eq!(
            api.get_sub("ssrf").await.status(),
            StatusCode::NOT_FOUND,
            "{url}"
        );
    }
    // The controls: a public https URL, and the development exception.
    for url in [
        "https://hooks.example.com/h",
        "http://127.0.0.1:9/h",
        "http://localhost:9/h",
    ] {
        let response = api.put_sub("ssrf", &webhook_spec(url, "nothing/*")).await;
        assert_eq!(response.status(), StatusCode::CREATED, "{url}");
        let response = send(api.client.delete(api.sub_url("ssrf", ""))).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
    }
}

#[tokio::test]
async fn without_the_development_exception_loopback_is_refused_before_connecting() {
    let server = TestServer::start().await;
    let api = Api::of(&server);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    api.create("strict/a", TEXT).await;
    for url in [
        format!("http://127.0.0.1:{port}/hook"),
        format!("https://127.0.0.1:{port}/hook"),
        format!("http://localhost:{port}/hook"),
        format!("https://localhost:{port}/hook"),
        format!("https://[::1]:{port}/hook"),
    ] {
        let response = api.put_sub("strict", &webhook_spec(&url, "strict/*")).await;
        assert_error(response, StatusCode::BAD_REQUEST, "WEBHOOK_URL_REJECTED").await;
    }
    // Data that an accepted subscription would have been woken for.
    api.append("strict/a", "x").await;
    let connection = tokio::time::timeout(Duration::from_millis(500), listener.accept()).await;
    assert!(
        connection.is_err(),
        "the refused webhook target was connected to"
    );
}

// ---------------------------------------------------------------------------
// 6. Fencing, authorisation and configuration races.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_racing_done_acks_exactly_one_wins() {
    let server = TestServer::start().await;
    let api = Api::of(&server);
    api.create("wake/race", JSON).await;
    api.create("race/a", TEXT).await;
    api.subscribe("race", &pull_spec("wake/race", "race/*", 30_000))
        .await;
    for round in 1..=10 {
        let tail = api.append("race/a", &format!("round {round}")).await;
        let wake = api.claimed("race", "w").await;
        assert_eq!(wake["generation"], round);
        let token = wake["token"].as_str().expect("token");
        let body = ack_body(&wake, &[("race/a", &tail)], true);
        let (one, two) = tokio::join!(api.ack("race", token, &body), api.ack("race", token, &body));
        let mut statuses = [one.status(), two.status()];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::CONFLICT],
            "round {round}"
        );
        let loser = if one.status() == StatusCode::CONFLICT {
            one
        } else {
            two
        };
        assert_error(loser, StatusCode::CONFLICT, "FENCED").await;
        assert_eq!(acked(&api.view("race").await, "race/a"), tail);
    }
}

#[tokio::test]
async fn callbacks_for_another_wake_are_fenced() {
    let server = dev_server().await;
    let api = Api::of(&server);
    let mut receiver = Receiver::start(Reply::Accept).await;
    api.create("fence/a", TEXT).await;
    let start = acked(
        &api.subscribe("fence", &webhook_spec(&receiver.url, "fence/*"))
            .await,
        "fence/a",
    );
    let tail = api.append("fence/a", "x").await;
    let hit = receiver.next(PROMPTLY).await;
    let wake = hit.json();
    let token = hit.token();
    let good = ack_body(&wake, &[("fence/a", &tail)], true);

    let mut wrong_generation = good.clone();
    wrong_generation["generation"] = json!(2);
    let mut wrong_wake = good.clone();
    wrong_wake["wake_id"] = json!("w_forged");
    let forged = format!("{token}x");
    for (what, token, body) in [
        ("another token", forged.as_str(), &good),
        ("another generation", token.as_str(), &wrong_generation),
        ("another wake id", token.as_str(), &wrong_wake),
    ] {
        let response = api.callback("fence", token, body).await;
        assert_eq!(response.status(), StatusCode::CONFLICT, "{what}");
        assert_error(response, StatusCode::CONFLICT, "FENCED").await;
        // `/ack` is fenced alike.
        assert_error(
            api.ack("fence", token, body).await,
            StatusCode::CONFLICT,
            "FENCED",
        )
        .await;
        assert_eq!(acked(&api.view("fence").await, "fence/a"), start, "{what}");
    }
    let response = api.callback("fence", &token, &good).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        json_of(response).await,
        json!({ "ok": true, "next_wake": false })
    );
    assert_eq!(acked(&api.view("fence").await, "fence/a"), tail);
    // The same callback again is stale.
    assert_error(
        api.callback("fence", &token, &good).await,
        StatusCode::CONFLICT,
        "FENCED",
    )
    .await;
}

#[tokio::test]
async fn callback_ack_and_release_need_a_bearer_token() {
    let server = TestServer::start().await;
    let api = Api::of(&server);
    api.create("wake/auth", JSON).await;
    api.create("auth/a", TEXT).await;
    api.subscribe("auth", &pull_spec("wake/auth", "auth/*", 30_000))
        .await;
    let tail = api.append("auth/a", "x").await;
    let wake = api.claimed("auth", "w").await;
    let body = ack_body(&wake, &[("auth/a", &tail)], true);
    for kind in ["callback", "ack", "release"] {
        let response = send(api.wake_request("auth", kind, None, &body)).await;
        assert_eq!(
            header(&response, "www-authenticate").as_deref(),
            Some("Bearer"),
            "{kind}"
        );
        assert_error(response, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
        let basic = api
            .client
            .post(api.sub_url("auth", kind))
            .basic_auth("w", Some(wake["token"].as_str().expect("token")))
            .json_body(&body);
        assert_error(send(basic).await, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    }
    assert_ne!(acked(&api.view("auth").await, "auth/a"), tail);
}

#[tokio::test]
async fn a_deleted_subscription_refuses_its_callbacks() {
    let server = dev_server().await;
    let api = Api::of(&server);
    let mut receiver = Receiver::start(Reply::Accept).await;
    api.create("gone/a", TEXT).await;
    api.subscribe("gone", &webhook_spec(&receiver.url, "gone/*"))
        .await;
    let tail = api.append("gone/a", "x").await;
    let hit = receiver.next(PROMPTLY).await;

    let response = send(api.client.delete(api.sub_url("gone", ""))).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let body = ack_body(&hit.json(), &[("gone/a", &tail)], true);
    assert_error(
        api.callback("gone", &hit.token(), &body).await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    )
    .await;
    assert_error(
        api.get_sub("gone").await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    )
    .await;
    let response = send(api.client.delete(api.sub_url("gone", ""))).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    // No more wakes for it.
    api.append("gone/a", "y").await;
    receiver.quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_repeated_put_is_compared_by_configuration() {
    let server = dev_server().await;
    let api = Api::of(&server);
    let spec = json!({
        "type": "webhook",
        "pattern": "conf/*",
        "streams": ["conf-x/b", "conf-x/a"],
        "webhook": { "url": "http://127.0.0.1:9/hook" },
        "lease_ttl_ms": 30000,
        "description": "d",
    });
    api.subscribe("conf", &spec).await;
    // The same configuration, spelled differently.
    let same = json!({
        "description": "d",
        "webhook": { "url": "http://127.0.0.1:9/hook" },
        "streams": ["conf-x/a", "conf-x/b", "conf-x/a"],
        "pattern": "conf/*",
        "type": "webhook",
    });
    let response = api.put_sub("conf", &same).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(json_of(response).await["id"], "conf");
    for (field, value) in [
        ("pattern", json!("conf/**")),
        ("streams", json!(["conf-x/a"])),
        ("lease_ttl_ms", json!(31000)),
        ("description", json!("e")),
        ("webhook", json!({ "url": "http://127.0.0.1:10/hook" })),
    ] {
        let mut changed = spec.clone();
        changed[field] = value;
        assert_error(
            api.put_sub("conf", &changed).await,
            StatusCode::CONFLICT,
            "CONFIG_MISMATCH",
        )
        .await;
    }
    let pull = json!({ "type": "pull-wake", "pattern": "conf/*", "wake_stream": "w" });
    assert_error(
        api.put_sub("conf", &pull).await,
        StatusCode::CONFLICT,
        "CONFIG_MISMATCH",
    )
    .await;
}

// ---------------------------------------------------------------------------
// 7. Pull-wake.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn pull_wake_events_follow_pending_work() {
    let server = TestServer::start().await;
    let api = Api::of(&server);
    api.create("wake/pull", JSON).await;
    api.create("pull/a", TEXT).await;
    api.create("pull/b", TEXT).await;
    api.subscribe("pull", &pull_spec("wake/pull", "pull/*", 30_000))
        .await;
    assert!(
        api.wake_events("wake/pull").await.is_empty(),
        "nothing pending yet"
    );
    assert_error(
        api.claim("pull", "w").await,
        StatusCode::CONFLICT,
        "NOTHING_PENDING",
    )
    .await;

    let a_tail = api.append("pull/a", "a1").await;
    let event = api.wake_event("wake/pull", 1).await;
    assert_eq!(event["type"], "wake");
    assert_eq!(event["subscription_id"], "pull");
    assert_eq!(event["stream"], "pull/a");
    assert!(
        event["ts"]
            .as_u64()
            .is_some_and(|ts| ts / 1000 >= unix_secs() - 60)
    );

    let wake = api.claimed("pull", "w").await;
    assert_eq!(wake["generation"], 1);
    let token = wake["token"].as_str().expect("token").to_owned();
    // A heartbeat: acks without done keep the wake.
    let response = api
        .ack(
            "pull",
            &token,
            &ack_body(&wake, &[("pull/a", &a_tail)], false),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        json_of(response).await,
        json!({ "ok": true, "next_wake": false })
    );
    assert_eq!(acked(&api.view("pull").await, "pull/a"), a_tail);
    // More work arrives while the wake is held: no new event meanwhile.
    let b_tail = api.append("pull/b", "b1").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(api.wake_events("wake/pull").await.len(), 1);

    let response = api
        .ack(
            "pull",
            &token,
            &ack_body(&wake, &[("pull/a", &a_tail)], true),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        json_of(response).await,
        json!({ "ok": true, "next_wake": true })
    );
    let event = api.wake_event("wake/pull", 2).await;
    assert_eq!(event["stream"], "pull/b");
    let wake = api.claimed("pull", "w").await;
    assert_eq!(wake["generation"], 2);
    let b = wake_stream(&wake, "pull/b");
    assert_eq!(b["tail_offset"], b_tail);
    assert_eq!(b["has_pending"], true);
    // A wake lists only the streams with pending work.
    assert!(
        wake["streams"]
            .as_array()
            .expect("streams")
            .iter()
            .all(|s| s["path"] != "pull/a"),
        "{wake}"
    );

    // Released with the work still pending: another wake event.
    let token = wake["token"].as_str().expect("token");
    let release = json!({ "wake_id": wake["wake_id"], "generation": 2 });
    let response = api.release("pull", token, &release).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let event = api.wake_event("wake/pull", 3).await;
    assert_eq!(event["stream"], "pull/b");
    assert_error(
        api.release("pull", token, &release).await,
        StatusCode::CONFLICT,
        "FENCED",
    )
    .await;
    let wake = api.claimed("pull", "w").await;
    assert_eq!(wake["generation"], 3);
    let response = api
        .ack(
            "pull",
            wake["token"].as_str().expect("token"),
            &ack_body(&wake, &[("pull/b", &b_tail)], true),
        )
        .await;
    assert_eq!(
        json_of(response).await,
        json!({ "ok": true, "next_wake": false })
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        api.wake_events("wake/pull").await.len(),
        3,
        "idle: no more events"
    );
}

// ---------------------------------------------------------------------------
// 8. Explicit membership.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_explicit_link_to_a_missing_stream_starts_at_its_first_byte() {
    let server = TestServer::start().await;
    let api = Api::of(&server);
    api.create("wake/explicit", JSON).await;
    api.subscribe("explicit", &pull_spec("wake/explicit", "glob/*", 30_000))
        .await;
    let response = api.add_streams("explicit", &["later/x"]).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    // Idempotent.
    let response = api.add_streams("explicit", &["later/x"]).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let view = api.view("explicit").await;
    assert_eq!(
        link(&view, "later/x").expect("linked")["link_type"],
        "explicit"
    );

    let start = api.create("later/x", TEXT).await;
    let tail = api.append("later/x", "first").await;
    let event = api.wake_event("wake/explicit", 1).await;
    assert_eq!(event["stream"], "later/x");
    let wake = api.claimed("explicit", "w").await;
    let x = wake_stream(&wake, "later/x");
    assert_eq!(x["acked_offset"], start);
    assert_eq!(x["tail_offset"], tail);
    assert_eq!(x["has_pending"], true);
    // Reading from the acked offset yields the first data.
    let response = send(
        api.client
            .get(api.url("later/x"))
            .query(&[("offset", start.as_str())]),
    )
    .await;
    assert_eq!(response.text().await.expect("body"), "first");
}

#[tokio::test]
async fn deleting_a_stream_drops_glob_links_and_keeps_explicit_ones() {
    let server = TestServer::start().await;
    let api = Api::of(&server);
    api.create("wake/members", JSON).await;
    api.create("members/glob", TEXT).await;
    api.create("members/both", TEXT).await;
    api.create("solo/x", TEXT).await;
    let mut spec = pull_spec("wake/members", "members/*", 30_000);
    spec["streams"] = json!(["members/both", "solo/x"]);
    let view = api.subscribe("members", &spec).await;
    assert_eq!(
        link(&view, "members/glob").expect("glob")["link_type"],
        "glob"
    );
    assert_eq!(
        link(&view, "members/both").expect("both")["link_type"],
        "explicit"
    );
    assert_eq!(
        link(&view, "solo/x").expect("solo")["link_type"],
        "explicit"
    );

    // Removing the explicit link of a stream the pattern matches leaves
    // the glob link; an absent explicit link is removed idempotently.
    for _ in 0..2 {
        let response = send(
            api.client
                .delete(api.sub_url("members", "streams/members/both")),
        )
        .await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
    }
    let view = api.view("members").await;
    assert_eq!(
        link(&view, "members/both").expect("both")["link_type"],
        "glob"
    );
    assert_eq!(
        api.add_streams("members", &["members/both"]).await.status(),
        StatusCode::NO_CONTENT
    );

    api.delete_stream("members/glob").await;
    api.delete_stream("members/both").await;
    api.delete_stream("solo/x").await;
    let view = api.view("members").await;
    assert!(
        link(&view, "members/glob").is_none(),
        "the glob link went: {view}"
    );
    assert_eq!(
        link(&view, "members/both").expect("both")["link_type"],
        "explicit"
    );
    assert_eq!(
        link(&view, "solo/x").expect("solo")["link_type"],
        "explicit"
    );

    // Created again, the explicitly linked stream is pending from its start.
    let start = api.create("solo/x", TEXT).await;
    let tail = api.append("solo/x", "again").await;
    assert_eq!(api.wake_event("wake/members", 1).await["stream"], "solo/x");
    let wake = api.claimed("members", "w").await;
    let x = wake_stream(&wake, "solo/x");
    assert_eq!(x["acked_offset"], start);
    assert_eq!(x["tail_offset"], tail);
}

#[tokio::test]
async fn a_pull_wake_subscription_cannot_link_its_wake_stream() {
    let server = TestServer::start().await;
    let api = Api::of(&server);
    api.create("self/wake", JSON).await;
    api.create("self/a", TEXT).await;
    let mut spec =
        json!({ "type": "pull-wake", "streams": ["self/wake"], "wake_stream": "self/wake" });
    assert_error(
        api.put_sub("self", &spec).await,
        StatusCode::BAD_REQUEST,
        "INVALID_REQUEST",
    )
    .await;
    // A pattern covering the wake stream links everything but it.
    spec = json!({ "type": "pull-wake", "pattern": "self/*", "wake_stream": "self/wake" });
    let view = api.subscribe("self", &spec).await;
    assert!(link(&view, "self/wake").is_none(), "{view}");
    assert!(link(&view, "self/a").is_some(), "{view}");
    assert_error(
        api.add_streams("self", &["self/wake"]).await,
        StatusCode::BAD_REQUEST,
        "INVALID_REQUEST",
    )
    .await;
    // Its own wake events do not wake it again.
    api.append("self/a", "x").await;
    api.wake_event("self/wake", 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(api.wake_events("self/wake").await.len(), 1);
    assert!(link(&api.view("self").await, "self/wake").is_none());
}
