//! Shared harness for the integration tests: runs the real server in-process
//! on an ephemeral loopback port, with a shutdown trigger the test controls,
//! plus small helpers for the protocol's requests, headers, error bodies,
//! raw (unnormalised) HTTP requests and Server-Sent Events.
//!
//! Every test binary compiles this module, and each uses only part of it.
#![allow(dead_code)]

use bytes::Bytes;
use ds_load::sse::SseParser;
use futures_util::{Stream, StreamExt};
use reqwest::{Client, RequestBuilder, Response, StatusCode};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;
use stream_server::config::Config;
use stream_server::server::{ServeError, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// URL prefix of streams in the default configuration.
pub const BASE_PATH: &str = "/v1/stream";

/// The `Cache-Control` of cacheable catch-up reads (§10.1).
pub const CACHEABLE: &str = "public, max-age=60, stale-while-revalidate=300";

/// How long any single request may take before the test fails instead of
/// hanging.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// A running server and a client pointed at it.
pub struct TestServer {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub base: String,
    pub client: Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

impl TestServer {
    /// A server with the default configuration (and a short shutdown grace).
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// A server whose configuration `configure` adjusts first.
    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = Config::default();
        config.server.shutdown_grace_secs = 3.0;
        configure(&mut config);

        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
        listener
            .set_nonblocking(true)
            .expect("make the listener non-blocking");
        let addr = listener.local_addr().expect("listener has a local address");
        let (trigger, triggered) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(config, listener, async move {
            // A dropped trigger (the test ended) also shuts the server down.
            let _ = triggered.await;
        }));
        let client = Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("build the HTTP client");
        let server = TestServer {
            addr,
            base: format!("http://{addr}"),
            client,
            shutdown: Some(trigger),
            task: Some(task),
        };
        server.wait_until_healthy().await;
        server
    }

    async fn wait_until_healthy(&self) {
        let url = format!("{}/healthz", self.base);
        for _ in 0..200 {
            if let Ok(response) = self.client.get(&url).send().await
                && response.status() == StatusCode::OK
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("server at {} never answered GET /healthz", self.base);
    }

    /// The URL of the stream at `path` (relative to the stream base path).
    pub fn url(&self, path: &str) -> String {
        format!("{}{BASE_PATH}/{path}", self.base)
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.client.get(self.url(path))
    }

    pub fn head(&self, path: &str) -> RequestBuilder {
        self.client.head(self.url(path))
    }

    pub fn put(&self, path: &str) -> RequestBuilder {
        self.client.put(self.url(path))
    }

    pub fn post(&self, path: &str) -> RequestBuilder {
        self.client.post(self.url(path))
    }

    pub fn delete(&self, path: &str) -> RequestBuilder {
        self.client.delete(self.url(path))
    }

    /// `GET ?offset=<offset>` (a catch-up read).
    pub async fn read_from(&self, path: &str, offset: &str) -> Response {
        send(self.get(path).query(&[("offset", offset)])).await
    }

    /// Creates a stream, asserting `201 Created`; returns its tail offset.
    pub async fn create(&self, path: &str, content_type: &str) -> String {
        let response = send(self.put(path).header("content-type", content_type)).await;
        assert_eq!(response.status(), StatusCode::CREATED, "PUT {path}");
        next_offset(&response)
    }

    /// Appends one body, asserting `204 No Content`; returns the new tail.
    pub async fn append(&self, path: &str, content_type: &str, body: impl Into<Bytes>) -> String {
        let body: Bytes = body.into();
        let response = send(
            self.post(path)
                .header("content-type", content_type)
                .body(body.clone()),
        )
        .await;
        assert_eq!(
            response.status(),
            StatusCode::NO_CONTENT,
            "POST {path} with {body:?}"
        );
        next_offset(&response)
    }

    /// Closes a stream without appending, asserting `204`; returns the tail.
    pub async fn close(&self, path: &str) -> String {
        let response = send(self.post(path).header("stream-closed", "true")).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT, "close {path}");
        assert_eq!(header(&response, "stream-closed").as_deref(), Some("true"));
        next_offset(&response)
    }

    /// Reads the whole stream by catch-up reads from the start, following
    /// `Stream-Next-Offset` until `Stream-Up-To-Date`; returns the bytes and
    /// the final offset.
    pub async fn read_all(&self, path: &str) -> (Vec<u8>, String) {
        let mut offset = "-1".to_owned();
        let mut data = Vec::new();
        for _ in 0..100_000 {
            let response = self.read_from(path, &offset).await;
            assert_eq!(response.status(), StatusCode::OK, "GET {path} at {offset}");
            let up_to_date = header(&response, "stream-up-to-date").is_some();
            offset = next_offset(&response);
            data.extend_from_slice(&body(response).await);
            if up_to_date {
                return (data, offset);
            }
        }
        panic!("reading {path} never reached Stream-Up-To-Date");
    }

    /// Sends raw HTTP/1.1 bytes (nothing normalises the request target) and
    /// reads the answer until the server closes the connection.
    pub async fn raw(&self, method: &str, target: &str) -> RawResponse {
        let mut socket = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect to the server");
        let request = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.addr
        );
        socket
            .write_all(request.as_bytes())
            .await
            .expect("write the raw request");
        let mut answer = Vec::new();
        tokio::time::timeout(REQUEST_TIMEOUT, socket.read_to_end(&mut answer))
            .await
            .expect("raw request timed out")
            .expect("read the raw response");
        RawResponse::parse(&answer)
    }

    /// Fires the shutdown future given to `serve` (once).
    pub fn trigger_shutdown(&mut self) {
        if let Some(trigger) = self.shutdown.take() {
            let _ = trigger.send(());
        }
    }

    /// Waits for `serve` to return, failing the test after `within`.
    pub async fn stopped(&mut self, within: Duration) -> Result<(), ServeError> {
        let task = self.task.take().expect("the server task is awaited once");
        tokio::time::timeout(within, task)
            .await
            .expect("serve() did not return in time after shutdown")
            .expect("the server task panicked")
    }

    /// Triggers shutdown and waits for `serve` to return.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        self.trigger_shutdown();
        self.stopped(Duration::from_secs(5)).await
    }
}

/// Sends a request, failing the test with context on transport errors.
pub async fn send(request: RequestBuilder) -> Response {
    let described = format!("{request:?}");
    request
        .send()
        .await
        .unwrap_or_else(|e| panic!("request failed: {e} ({described})"))
}

/// A response header as text.
pub fn header(response: &Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().expect("header is visible ASCII").to_owned())
}

/// `Stream-Next-Offset`, which the response must carry.
pub fn next_offset(response: &Response) -> String {
    header(response, "stream-next-offset").unwrap_or_else(|| {
        panic!(
            "{} response without Stream-Next-Offset: {:?}",
            response.status(),
            response.headers()
        )
    })
}

/// The whole response body.
pub async fn body(response: Response) -> Vec<u8> {
    response
        .bytes()
        .await
        .expect("read the response body")
        .to_vec()
}

/// The whole response body as UTF-8 text.
pub async fn text(response: Response) -> String {
    String::from_utf8(body(response).await).expect("body is UTF-8")
}

/// The whole response body as JSON.
pub async fn json_body(response: Response) -> serde_json::Value {
    let bytes = body(response).await;
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&bytes)
        )
    })
}

/// Asserts an RFC 9457 problem response with `status` whose `detail`
/// mentions `mention` (case-insensitively); returns the problem object.
pub async fn assert_problem(
    response: Response,
    status: StatusCode,
    mention: &str,
) -> serde_json::Value {
    assert_eq!(response.status(), status, "{:?}", response.headers());
    assert_eq!(
        header(&response, "content-type").as_deref(),
        Some("application/problem+json")
    );
    let problem = json_body(response).await;
    assert_eq!(problem["status"], status.as_u16(), "{problem}");
    let detail = problem["detail"]
        .as_str()
        .unwrap_or_else(|| panic!("problem without detail: {problem}"));
    assert!(
        detail.to_lowercase().contains(&mention.to_lowercase()),
        "problem detail {detail:?} does not mention {mention:?}"
    );
    problem
}

/// A response read from a raw socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    fn parse(answer: &[u8]) -> RawResponse {
        let split = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no header block in {:?}", String::from_utf8_lossy(answer)));
        let head = std::str::from_utf8(&answer[..split]).expect("response head is UTF-8");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("status line");
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        RawResponse {
            status,
            headers,
            body: answer[split + 4..].to_vec(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One Server-Sent Event, as the shared parser (the load tool's) reads it.
pub use ds_load::sse::SseEvent;

/// The data of a `control` event, parsed.
pub trait ControlEvent {
    fn control(&self) -> serde_json::Value;
}

impl ControlEvent for SseEvent {
    fn control(&self) -> serde_json::Value {
        assert_eq!(self.event, "control", "expected a control event: {self:?}");
        serde_json::from_str(&self.data())
            .unwrap_or_else(|e| panic!("control data is not JSON ({e}): {self:?}"))
    }
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// Reads events from a live `text/event-stream` response body.
///
/// This server ends every line with LF only, so a raw CR anywhere in the
/// body fails the test (text data must be split on CR into `data:` lines);
/// so does a body that is not UTF-8.
pub struct SseReader {
    body: ByteStream,
    parser: SseParser,
    /// Events parsed but not yet taken.
    parsed: VecDeque<SseEvent>,
    /// Every byte received, for assertions on the raw framing.
    pub raw: Vec<u8>,
    /// How much of `raw` is known to be UTF-8.
    utf8_checked: usize,
}

impl SseReader {
    pub fn new(response: Response) -> SseReader {
        assert_eq!(response.status(), StatusCode::OK, "SSE response status");
        assert_eq!(
            header(&response, "content-type").as_deref(),
            Some("text/event-stream")
        );
        SseReader {
            body: Box::pin(response.bytes_stream()),
            parser: SseParser::new(),
            parsed: VecDeque::new(),
            raw: Vec::new(),
            utf8_checked: 0,
        }
    }

    /// The next event, or `None` once the server has ended the response.
    /// Fails the test if nothing arrives within `within`.
    pub async fn next_within(&mut self, within: Duration) -> Option<SseEvent> {
        tokio::time::timeout(within, self.next_event())
            .await
            .unwrap_or_else(|_| panic!("no SSE event or end within {within:?}"))
    }

    /// The next event within five seconds; `None` at the end of the body.
    pub async fn next(&mut self) -> Option<SseEvent> {
        self.next_within(Duration::from_secs(5)).await
    }

    /// The next event, which must exist.
    pub async fn expect_event(&mut self) -> SseEvent {
        self.next()
            .await
            .expect("the SSE response ended, but an event was expected")
    }

    async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(event) = self.parsed.pop_front() {
                return Some(event);
            }
            match self.body.next().await {
                Some(Ok(chunk)) => {
                    assert!(
                        !chunk.contains(&b'\r'),
                        "raw CR in the SSE body: {:?}",
                        String::from_utf8_lossy(&chunk)
                    );
                    self.raw.extend_from_slice(&chunk);
                    self.check_utf8();
                    self.parsed.extend(self.parser.feed(&chunk));
                }
                Some(Err(e)) => panic!("SSE body failed: {e}"),
                None => {
                    assert!(
                        self.parser.is_idle(),
                        "SSE body ended inside an event: {:?}",
                        String::from_utf8_lossy(&self.raw)
                    );
                    assert_eq!(
                        self.utf8_checked,
                        self.raw.len(),
                        "SSE body ends inside a UTF-8 character"
                    );
                    return None;
                }
            }
        }
    }

    /// Fails the test unless the body so far is UTF-8, allowing a
    /// character split by the end of the last chunk.
    fn check_utf8(&mut self) {
        match std::str::from_utf8(&self.raw[self.utf8_checked..]) {
            Ok(_) => self.utf8_checked = self.raw.len(),
            Err(e) if e.error_len().is_none() => self.utf8_checked += e.valid_up_to(),
            Err(e) => panic!(
                "SSE body is not UTF-8 ({e}): {:?}",
                String::from_utf8_lossy(&self.raw)
            ),
        }
    }
}

/// Opens `GET ?offset=<offset>&live=sse` and wraps the body.
pub async fn open_sse(server: &TestServer, path: &str, offset: &str) -> SseReader {
    SseReader::new(
        send(
            server
                .get(path)
                .query(&[("offset", offset), ("live", "sse")]),
        )
        .await,
    )
}

/// A free loopback port for a server started as a child process: bound,
/// then released for the child to take.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind an ephemeral loopback port")
        .port()
}

/// Waits until the child server at `base` (its origin) answers
/// `GET /readyz`; fails if the child exits first or `timeout` passes.
pub async fn wait_child_ready(
    child: &mut std::process::Child,
    base: &str,
    probe: &Client,
    timeout: Duration,
) -> Result<(), String> {
    let url = format!("{base}/readyz");
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("poll the server process") {
            return Err(format!("it exited with {status}"));
        }
        if let Ok(response) = probe.get(&url).send().await
            && response.status() == StatusCode::OK
        {
            // Still ours: not another process that took the port.
            if child.try_wait().expect("poll the server process").is_none() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("no 200 from GET /readyz within {timeout:?}"))
}
