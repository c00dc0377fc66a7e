//! Crash consistency of the persistent storage modes, proven against the real
//! `stream-server` executable.
//!
//! Every persistent mode (`acid`, `file-durable`, `file-fast`) promises that
//! an acknowledged request survives a crash of the process, with everything
//! it changed (data, idempotent-producer state, closure) stored atomically:
//! one redb transaction, or one checksummed log record. These tests hold
//! each mode to that promise the only way it can be held: they run the binary as a child
//! process, kill it with SIGKILL at arbitrary moments (between requests, in
//! the middle of one, during a commit), start it again on the same data
//! directory, and compare what clients were told with what the server now
//! serves:
//!
//! * every acknowledged append is present exactly once, ending at the
//!   `Stream-Next-Offset` it was acknowledged with; the data is a sequence of
//!   whole payloads (nothing torn, duplicated or invented); an append in
//!   flight at the kill is either wholly present or absent; an acknowledged
//!   stream creation exists;
//! * an idempotent producer resumes exactly where its acknowledgements say:
//!   retrying the last acknowledged `(epoch, seq)` is a duplicate (204), and
//!   the next sequence is accepted (200), or is a duplicate when it had been
//!   committed without being acknowledged, but is never a sequence gap (409);
//!   its stream holds each sequence exactly once, in order;
//! * closure (with the closing producer request still recognised), content
//!   type, `Stream-TTL`, `Stream-Expires-At`, fork lineage, soft deletion,
//!   producer state, `Stream-Seq` and JSON framing survive both a kill and a
//!   clean SIGTERM restart;
//! * a data directory of another storage mode or format is refused at
//!   startup, naming the directory;
//! * an answer to a concurrent retry (a producer duplicate, a repeated
//!   close, a repeated create) is as durable as the original's.
//!
//! A kill can land anywhere, so only what the durability contract
//! guarantees is asserted: work that was not acknowledged may or may not
//! have survived, but only whole. `DS_CRASH_CYCLES` sets how many
//! kill/restart cycles the append test runs (default 10).

mod common;

use common::{BASE_PATH, body, free_port, header, next_offset, send, text};
use rand::Rng;
use reqwest::{Client, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const BINARY: &str = env!("CARGO_BIN_EXE_stream-server");

/// How long a started server may take to answer `GET /readyz` (a debug
/// build on a loaded two-core machine, possibly repairing its database).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long any single request may take before the test fails instead of
/// hanging.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

const OCTET: &str = "application/octet-stream";
const TEXT: &str = "text/plain";
const JSON: &str = "application/json";

/// Generates one test per persistent storage mode from `async fn $name(mode)`.
macro_rules! in_every_persistent_mode {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn acid() {
                super::$name("acid").await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn file_durable() {
                super::$name("file-durable").await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn file_fast() {
                super::$name("file-fast").await;
            }
        }
    };
}

// ---------------------------------------------------------------------------
// Harness: a scratch directory and the server as a child process.
// ---------------------------------------------------------------------------

/// A fresh directory under the system temp dir, removed on drop. The data
/// directory is `data/` inside it; each server start logs to its own
/// `server-<n>.log` next to it (never inside the data directory, which the
/// server checks for foreign files).
struct Scratch {
    root: TempDir,
    starts: AtomicU32,
    /// `DS_STORAGE__MODE` of every server started over this directory.
    mode: &'static str,
}

impl Scratch {
    fn new(name: &str, mode: &'static str) -> Scratch {
        let root = tempfile::Builder::new()
            .prefix(&format!("ds-crash-{name}-{mode}-"))
            .tempdir()
            .expect("create the scratch directory");
        Scratch {
            root,
            starts: AtomicU32::new(0),
            mode,
        }
    }

    fn root(&self) -> &Path {
        self.root.path()
    }

    fn data_dir(&self) -> PathBuf {
        self.root().join("data")
    }

    fn next_log(&self) -> PathBuf {
        let n = self.starts.fetch_add(1, Ordering::Relaxed);
        self.root().join(format!("server-{n:03}.log"))
    }

    /// Fails the test if any server run so far panicked.
    fn assert_no_panics(&self) {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.root())
            .expect("list the scratch directory")
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|e| e == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let output = read_log(&log);
            assert!(
                !output.contains("panicked"),
                "the server panicked ({}):\n{output}",
                log.display()
            );
        }
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()))
}

/// Spawns the binary in the scratch's storage mode on `port` over the scratch data
/// directory, its stdout and stderr going to a fresh log file.
fn spawn(scratch: &Scratch, port: u16) -> (Child, PathBuf) {
    let log_path = scratch.next_log();
    let stdout = File::create(&log_path).expect("create the server log");
    let stderr = stdout.try_clone().expect("share the server log");
    let mut command = Command::new(BINARY);
    // Only this test's settings: nothing inherited from the environment.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("DS_") {
            command.env_remove(key);
        }
    }
    command
        .current_dir(scratch.root())
        .env("DS_STORAGE__MODE", scratch.mode)
        .env("DS_STORAGE__DATA_DIR", scratch.data_dir())
        .env("DS_SERVER__HOST", "127.0.0.1")
        .env("DS_SERVER__PORT", port.to_string())
        .env("DS_SERVER__SHUTDOWN_GRACE_SECS", "2")
        // acid: settle every few appends, so kills land while a recent
        // table is being settled, not only while one fills.
        .env("DS_STORAGE__ACID_SETTLE_ROWS", "16")
        .env("RUST_LOG", "stream_server=warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    let child = command.spawn().expect("spawn the stream-server binary");
    (child, log_path)
}

/// The server binary running as a child process. Dropping it kills the
/// child (SIGKILL), so no server outlives a failed assertion; when dropped
/// during a panic it prints the child's output.
struct Server {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    base: String,
    client: Client,
    log: PathBuf,
}

impl Server {
    /// Starts the binary on a free port and waits for `GET /readyz`.
    async fn start(scratch: &Scratch) -> Server {
        let probe = Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("build the probe client");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port();
            let (child, log) = spawn(scratch, port);
            let mut server = Server {
                child,
                base: format!("http://127.0.0.1:{port}"),
                client: Client::builder()
                    .timeout(REQUEST_TIMEOUT)
                    .build()
                    .expect("build the HTTP client"),
                log,
            };
            let failure = match server.wait_ready(&probe).await {
                Ok(()) => return server,
                Err(failure) => failure,
            };
            let log = server.log.clone();
            drop(server);
            let output = read_log(&log);
            // The port can be taken between picking it and the server's bind.
            if output.contains("cannot listen") && attempt < 5 {
                continue;
            }
            panic!(
                "stream-server did not become ready: {failure}; its output ({}):\n{output}",
                log.display()
            );
        }
    }

    async fn wait_ready(&mut self, probe: &Client) -> Result<(), String> {
        common::wait_child_ready(&mut self.child, &self.base, probe, STARTUP_TIMEOUT).await
    }

    /// `kill -9`: no chance to flush, finish requests or clean up.
    fn kill9(mut self) {
        self.child.kill().expect("SIGKILL the server");
        self.child.wait().expect("reap the killed server");
    }

    /// SIGTERM, then waits for the process to exit.
    async fn sigterm(mut self) -> ExitStatus {
        let pid = self.child.id();
        let sent = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -TERM {pid}"))
            .status()
            .expect("run kill -TERM");
        assert!(sent.success(), "kill -TERM {pid} failed: {sent}");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the server process") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not exit within 15 s of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{BASE_PATH}/{path}", self.base)
    }

    fn get(&self, path: &str) -> RequestBuilder {
        self.client.get(self.url(path))
    }

    fn head(&self, path: &str) -> RequestBuilder {
        self.client.head(self.url(path))
    }

    fn put(&self, path: &str) -> RequestBuilder {
        self.client.put(self.url(path))
    }

    fn post(&self, path: &str) -> RequestBuilder {
        self.client.post(self.url(path))
    }

    fn delete(&self, path: &str) -> RequestBuilder {
        self.client.delete(self.url(path))
    }

    /// `POST` as idempotent producer `(id, epoch, seq)`.
    fn produce(&self, path: &str, id: &str, epoch: u64, seq: u64, body: &str) -> RequestBuilder {
        self.post(path)
            .header("content-type", TEXT)
            .header("producer-id", id)
            .header("producer-epoch", epoch.to_string())
            .header("producer-seq", seq.to_string())
            .body(body.to_owned())
    }

    /// Creates a stream, asserting `201 Created`; returns its tail.
    async fn create(&self, path: &str, content_type: &str) -> String {
        let response = send(self.put(path).header("content-type", content_type)).await;
        assert_eq!(response.status(), StatusCode::CREATED, "PUT {path}");
        next_offset(&response)
    }

    /// Appends, asserting `204 No Content`; returns the new tail.
    async fn append(&self, path: &str, content_type: &str, body: &str) -> String {
        let response = send(
            self.post(path)
                .header("content-type", content_type)
                .body(body.to_owned()),
        )
        .await;
        assert_eq!(
            response.status(),
            StatusCode::NO_CONTENT,
            "POST {path} {body:?}"
        );
        next_offset(&response)
    }

    /// `GET ?offset=<offset>`.
    async fn read_from(&self, path: &str, offset: &str) -> Response {
        send(self.get(path).query(&[("offset", offset)])).await
    }

    /// Reads the whole stream by catch-up reads; returns its bytes, the
    /// final `Stream-Next-Offset` and whether the stream is closed.
    async fn read_all(&self, path: &str) -> (Vec<u8>, String, bool) {
        let mut offset = "-1".to_owned();
        let mut data = Vec::new();
        for _ in 0..100_000 {
            let response = self.read_from(path, &offset).await;
            assert_eq!(response.status(), StatusCode::OK, "GET {path} at {offset}");
            let up_to_date = header(&response, "stream-up-to-date").is_some();
            let closed = header(&response, "stream-closed").as_deref() == Some("true");
            offset = next_offset(&response);
            data.extend_from_slice(&body(response).await);
            if up_to_date {
                return (data, offset, closed);
            }
        }
        panic!("reading {path} never reached Stream-Up-To-Date");
    }

    async fn read_text(&self, path: &str) -> String {
        String::from_utf8(self.read_all(path).await.0).expect("stream data is UTF-8")
    }

    /// Reads a whole JSON-mode stream: its messages and final offset.
    async fn read_json(&self, path: &str) -> (Vec<Value>, String) {
        let mut offset = "-1".to_owned();
        let mut messages = Vec::new();
        for _ in 0..100_000 {
            let response = self.read_from(path, &offset).await;
            assert_eq!(response.status(), StatusCode::OK, "GET {path} at {offset}");
            let up_to_date = header(&response, "stream-up-to-date").is_some();
            offset = next_offset(&response);
            messages.extend(json_array(&body(response).await));
            if up_to_date {
                return (messages, offset);
            }
        }
        panic!("reading {path} never reached Stream-Up-To-Date");
    }

    /// The metadata `HEAD` reports, asserting `200 OK`.
    async fn meta(&self, path: &str) -> Meta {
        let response = send(self.head(path)).await;
        assert_eq!(response.status(), StatusCode::OK, "HEAD {path}");
        Meta {
            content_type: header(&response, "content-type"),
            next: header(&response, "stream-next-offset"),
            closed: header(&response, "stream-closed"),
            ttl: header(&response, "stream-ttl"),
            expires_at: header(&response, "stream-expires-at"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- output of the stream-server child ({}) ---\n{}",
                self.log.display(),
                read_log(&self.log)
            );
        }
    }
}

/// Stops the server as `how` says and starts it again on the same data.
async fn restart(server: Server, how: Restart, scratch: &Scratch) -> Server {
    match how {
        Restart::Kill9 => server.kill9(),
        Restart::Sigterm => {
            let status = server.sigterm().await;
            assert!(status.success(), "a SIGTERM shutdown exits 0, got {status}");
        }
    }
    Server::start(scratch).await
}

#[derive(Debug, Clone, Copy)]
enum Restart {
    Sigterm,
    Kill9,
}

/// What `HEAD` says about a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Meta {
    content_type: Option<String>,
    next: Option<String>,
    closed: Option<String>,
    ttl: Option<String>,
    expires_at: Option<String>,
}

/// An offset token split into its two 16-hex-digit halves
/// (`src/protocol/offset.rs`): messages before the position, and the byte
/// position itself.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Off {
    text: String,
    messages: u64,
    bytes: u64,
}

fn parse_offset(text: &str) -> Off {
    let malformed = || panic!("malformed offset {text:?}");
    if text.len() != 33 || text.as_bytes()[16] != b'_' {
        malformed();
    }
    let hex = |part: &str| u64::from_str_radix(part, 16).unwrap_or_else(|_| malformed());
    Off {
        text: text.to_owned(),
        messages: hex(&text[..16]),
        bytes: hex(&text[17..]),
    }
}

fn json_array(bytes: &[u8]) -> Vec<Value> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Array(items)) => items,
        other => panic!(
            "a JSON-mode read is not an array ({other:?}): {:?}",
            String::from_utf8_lossy(bytes)
        ),
    }
}

/// Asserts two byte strings are equal, reporting the first difference
/// rather than both (possibly large) values.
fn assert_same_bytes(actual: &[u8], expected: &[u8], what: &str) {
    if actual == expected {
        return;
    }
    let at = actual
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .unwrap_or(actual.len().min(expected.len()));
    let around = |data: &[u8]| {
        String::from_utf8_lossy(&data[at.saturating_sub(64)..(at + 64).min(data.len())])
            .into_owned()
    };
    panic!(
        "{what}: {} bytes where {} were expected, first difference at byte {at}:\n  actual:   {:?}\n  expected: {:?}",
        actual.len(),
        expected.len(),
        around(actual),
        around(expected)
    );
}

// ---------------------------------------------------------------------------
// 1. Acknowledged appends survive kill -9.
// ---------------------------------------------------------------------------

/// Every payload is this long, so stream data splits into payloads by size.
const PAYLOAD_LEN: usize = 64;

/// Concurrent plain appenders (besides the producer and the creator).
const WRITERS: usize = 8;

/// The streams the plain appenders write to; writer `w` uses `TARGETS[w % 3]`.
const TARGETS: [Target; 3] = [
    Target {
        path: "crash/bytes-a",
        content_type: OCTET,
        json: false,
    },
    Target {
        path: "crash/bytes-b",
        content_type: OCTET,
        json: false,
    },
    Target {
        path: "crash/json",
        content_type: JSON,
        json: true,
    },
];

const PRODUCER_STREAM: &str = "crash/producer";
const PRODUCER_ID: &str = "crash-producer";

struct Target {
    path: &'static str,
    content_type: &'static str,
    json: bool,
}

fn target_of(writer: usize) -> &'static Target {
    &TARGETS[writer % TARGETS.len()]
}

/// Who wrote a payload: writer, kill cycle, and the writer's sequence
/// number within that cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    writer: usize,
    cycle: usize,
    seq: u64,
}

/// `<tag>-w<writer>-c<cycle>-s<seq>|` padded with dots to
/// [`PAYLOAD_LEN`], the last byte a newline.
fn payload(tag: &str, key: Key) -> String {
    let mut text = format!(
        "{tag}-w{:02}-c{:03}-s{:06}|",
        key.writer, key.cycle, key.seq
    );
    assert!(text.len() < PAYLOAD_LEN, "payload header too long");
    while text.len() < PAYLOAD_LEN - 1 {
        text.push('.');
    }
    text.push('\n');
    text
}

/// The key of a payload exactly as [`payload`] renders it; `None` for
/// anything else (a torn, interleaved or foreign payload).
fn parse_payload(tag: &str, text: &str) -> Option<Key> {
    let rest = text.strip_prefix(tag)?.strip_prefix("-w")?;
    let (writer, rest) = rest.split_once("-c")?;
    let (cycle, rest) = rest.split_once("-s")?;
    let (seq, _) = rest.split_once('|')?;
    let key = Key {
        writer: writer.parse().ok()?,
        cycle: cycle.parse().ok()?,
        seq: seq.parse().ok()?,
    };
    (payload(tag, key) == text).then_some(key)
}

fn tag_of(target: &Target) -> &'static str {
    if target.json { "json" } else { "bytes" }
}

/// The producer's payload for `seq`: a function of `seq` alone, so a retry
/// after a crash resends exactly the bytes of the original.
fn producer_payload(seq: u64) -> String {
    payload(
        "prod",
        Key {
            writer: 0,
            cycle: 0,
            seq,
        },
    )
}

/// What one plain appender saw in one cycle.
struct WriterRun {
    writer: usize,
    cycle: usize,
    /// Sequence numbers that got a 2xx, with their `Stream-Next-Offset`.
    acked: Vec<(u64, Off)>,
    /// The append whose outcome the kill hid (it may or may not be stored).
    in_flight: Option<u64>,
    /// A response no kill can explain (e.g. a 5xx before the kill).
    unexpected: Option<String>,
}

/// Appends `payload`s one after another until the server dies.
async fn append_until_killed(
    client: Client,
    url: String,
    writer: usize,
    cycle: usize,
) -> WriterRun {
    let target = target_of(writer);
    let mut run = WriterRun {
        writer,
        cycle,
        acked: Vec::new(),
        in_flight: None,
        unexpected: None,
    };
    for seq in 0.. {
        let rendered = payload(tag_of(target), Key { writer, cycle, seq });
        let body = if target.json {
            serde_json::to_string(&rendered).expect("encode a JSON string")
        } else {
            rendered
        };
        let sent = client
            .post(&url)
            .header("content-type", target.content_type)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => {
                match header(&response, "stream-next-offset") {
                    Some(next) => run.acked.push((seq, parse_offset(&next))),
                    None => {
                        run.unexpected = Some(format!("seq {seq}: 2xx without Stream-Next-Offset"));
                        break;
                    }
                }
            }
            Ok(response) => {
                let status = response.status();
                let detail = response.text().await.unwrap_or_default();
                run.unexpected = Some(format!("seq {seq}: {status} {detail}"));
                break;
            }
            Err(_) => {
                run.in_flight = Some(seq);
                break;
            }
        }
    }
    run
}

/// What the idempotent producer saw in one cycle.
struct ProducerRun {
    acked: Vec<u64>,
    in_flight: Option<u64>,
    unexpected: Option<String>,
}

/// Sends producer sequences from `first` on until the server dies.
async fn produce_until_killed(client: Client, url: String, first: u64) -> ProducerRun {
    let mut run = ProducerRun {
        acked: Vec::new(),
        in_flight: None,
        unexpected: None,
    };
    for seq in first.. {
        let sent = client
            .post(&url)
            .header("content-type", OCTET)
            .header("producer-id", PRODUCER_ID)
            .header("producer-epoch", "0")
            .header("producer-seq", seq.to_string())
            .body(producer_payload(seq))
            .send()
            .await;
        match sent {
            Ok(response) if response.status() == StatusCode::OK => {
                let echoed = header(&response, "producer-seq");
                if echoed != Some(seq.to_string()) {
                    run.unexpected = Some(format!("seq {seq}: 200 with Producer-Seq {echoed:?}"));
                    break;
                }
                run.acked.push(seq);
            }
            Ok(response) => {
                let status = response.status();
                let detail = response.text().await.unwrap_or_default();
                run.unexpected = Some(format!("seq {seq}: {status} {detail}"));
                break;
            }
            Err(_) => {
                run.in_flight = Some(seq);
                break;
            }
        }
    }
    run
}

/// What the stream creator saw in one cycle.
struct CreatorRun {
    acked: Vec<String>,
    in_flight: Option<String>,
    /// The first path never sent: it must not exist.
    never_sent: String,
    unexpected: Option<String>,
}

fn created_path(cycle: usize, n: usize) -> String {
    format!("crash/created/c{cycle:03}-{n:05}")
}

/// Creates streams one after another until the server dies.
async fn create_until_killed(client: Client, base: String, cycle: usize) -> CreatorRun {
    let mut run = CreatorRun {
        acked: Vec::new(),
        in_flight: None,
        never_sent: String::new(),
        unexpected: None,
    };
    for n in 0.. {
        let path = created_path(cycle, n);
        let sent = client
            .put(format!("{base}{BASE_PATH}/{path}"))
            .header("content-type", TEXT)
            .send()
            .await;
        match sent {
            Ok(response) if response.status() == StatusCode::CREATED => run.acked.push(path),
            Ok(response) => {
                run.unexpected = Some(format!("PUT {path}: {}", response.status()));
                break;
            }
            Err(_) => {
                run.in_flight = Some(path);
                run.never_sent = created_path(cycle, n + 1);
                break;
            }
        }
    }
    run
}

/// Everything acknowledged (or left in doubt) across all cycles.
#[derive(Default)]
struct Ledger {
    /// Per stream: every acknowledged append and its offset.
    acked: HashMap<&'static str, Vec<(Key, Off)>>,
    /// Appends in flight at a kill: allowed, but not required, to exist.
    in_flight: HashSet<Key>,
    /// The producer's next sequence; every one below it is confirmed.
    producer_next: u64,
    /// Every acknowledged stream creation.
    created: Vec<String>,
    appends_acked: usize,
}

impl Ledger {
    fn record(&mut self, run: WriterRun) {
        if let Some(unexpected) = run.unexpected {
            panic!(
                "writer {} in cycle {} got a response no kill explains: {unexpected}",
                run.writer, run.cycle
            );
        }
        let path = target_of(run.writer).path;
        self.appends_acked += run.acked.len();
        let acked = self.acked.entry(path).or_default();
        for (seq, offset) in run.acked {
            acked.push((
                Key {
                    writer: run.writer,
                    cycle: run.cycle,
                    seq,
                },
                offset,
            ));
        }
        if let Some(seq) = run.in_flight {
            self.in_flight.insert(Key {
                writer: run.writer,
                cycle: run.cycle,
                seq,
            });
        }
    }
}

fn crash_cycles() -> usize {
    match std::env::var("DS_CRASH_CYCLES") {
        Ok(value) => value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("DS_CRASH_CYCLES must be a whole number, got {value:?}")),
        Err(_) => 10,
    }
}

in_every_persistent_mode!(acknowledged_appends_survive_kill_9);

async fn acknowledged_appends_survive_kill_9(mode: &'static str) {
    let started = Instant::now();
    let cycles = crash_cycles();
    let scratch = Scratch::new("appends", mode);
    let mut server = Server::start(&scratch).await;
    for target in &TARGETS {
        server.create(target.path, target.content_type).await;
    }
    server.create(PRODUCER_STREAM, OCTET).await;

    let mut ledger = Ledger::default();
    let mut producer_acks = 0;
    // Appends stored although the kill hid their answer (cumulative), and
    // cycles whose in-flight producer request had been committed.
    let mut committed_unacknowledged = 0;
    let mut producer_committed_unacknowledged = 0;
    for cycle in 0..cycles {
        let writers: Vec<_> = (0..WRITERS)
            .map(|writer| {
                tokio::spawn(append_until_killed(
                    server.client.clone(),
                    server.url(target_of(writer).path),
                    writer,
                    cycle,
                ))
            })
            .collect();
        let producer = tokio::spawn(produce_until_killed(
            server.client.clone(),
            server.url(PRODUCER_STREAM),
            ledger.producer_next,
        ));
        let creator = tokio::spawn(create_until_killed(
            server.client.clone(),
            server.base.clone(),
            cycle,
        ));

        let delay = rand::rng().random_range(50..=400);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        server.kill9();

        for writer in writers {
            ledger.record(writer.await.expect("writer task"));
        }
        let producer = producer.await.expect("producer task");
        if let Some(unexpected) = &producer.unexpected {
            panic!("the producer got a response no kill explains in cycle {cycle}: {unexpected}");
        }
        producer_acks += producer.acked.len();
        let creator = creator.await.expect("creator task");
        if let Some(unexpected) = &creator.unexpected {
            panic!("the creator got a response no kill explains in cycle {cycle}: {unexpected}");
        }

        server = Server::start(&scratch).await;
        let mut unacknowledged = 0;
        for target in &TARGETS {
            let acked = ledger.acked.get(target.path).map_or(&[][..], Vec::as_slice);
            unacknowledged += if target.json {
                verify_json_stream(&server, target, acked, &ledger.in_flight, cycle).await
            } else {
                verify_byte_stream(&server, target, acked, &ledger.in_flight, cycle).await
            };
        }
        committed_unacknowledged = unacknowledged;
        if verify_producer(&server, &producer, &mut ledger.producer_next).await {
            producer_committed_unacknowledged += 1;
        }
        verify_creations(&server, &creator).await;
        ledger.created.extend(creator.acked);
    }

    // Every creation acknowledged in any cycle still exists at the end.
    for path in &ledger.created {
        let response = send(server.head(path)).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "the acknowledged creation of {path} was lost"
        );
    }
    drop(server);
    scratch.assert_no_panics();
    eprintln!(
        "{cycles} kill -9 cycles in {:.1?}: {} plain appends, {producer_acks} producer appends and {} creations acknowledged, all present after restarts; \
         {committed_unacknowledged} in-flight appends and {producer_committed_unacknowledged} in-flight producer requests were committed but unacknowledged",
        started.elapsed(),
        ledger.appends_acked,
        ledger.created.len()
    );
}

/// Checks a byte stream after a restart: whole payloads only, each at most
/// once; every acknowledged one ending exactly at its acknowledged offset;
/// anything unacknowledged was in flight at a kill; each writer's payloads
/// in its order. Then reads from the latest acknowledged offsets.
async fn verify_byte_stream(
    server: &Server,
    target: &Target,
    acked: &[(Key, Off)],
    in_flight: &HashSet<Key>,
    cycle: usize,
) -> usize {
    let path = target.path;
    let (data, tail, _) = server.read_all(path).await;
    let tail = parse_offset(&tail);
    assert_eq!(
        tail.bytes,
        data.len() as u64,
        "{path}: the read's final offset is not the data's length"
    );
    assert_eq!(
        server.meta(path).await.next.as_deref(),
        Some(tail.text.as_str()),
        "{path}: HEAD and a full read disagree on the tail"
    );
    assert!(
        data.len() % PAYLOAD_LEN == 0,
        "{path} holds {} bytes: not a whole number of {PAYLOAD_LEN}-byte payloads (a torn append)",
        data.len()
    );
    let mut positions: HashMap<Key, usize> = HashMap::new();
    for (index, chunk) in data.chunks(PAYLOAD_LEN).enumerate() {
        let key = std::str::from_utf8(chunk)
            .ok()
            .and_then(|text| parse_payload("bytes", text))
            .unwrap_or_else(|| {
                panic!(
                    "{path}: torn or interleaved payload at byte {}: {:?}",
                    index * PAYLOAD_LEN,
                    String::from_utf8_lossy(chunk)
                )
            });
        if let Some(earlier) = positions.insert(key, index) {
            panic!("{path}: {key:?} is stored twice, as payloads {earlier} and {index}");
        }
    }
    for (key, offset) in acked {
        let end = usize::try_from(offset.bytes).expect("offset fits in memory");
        assert!(
            end >= PAYLOAD_LEN && end <= data.len(),
            "{path}: acknowledged {key:?} ended at byte {end}, but the stream now holds {} bytes: acknowledged data was lost",
            data.len()
        );
        assert_eq!(
            String::from_utf8_lossy(&data[end - PAYLOAD_LEN..end]),
            payload("bytes", *key),
            "{path}: the bytes before acknowledged offset {} are not {key:?}",
            offset.text
        );
    }
    let unacknowledged = check_unacknowledged(path, &positions, acked, in_flight);
    check_writer_order(path, &positions);

    // Reads from this cycle's latest acknowledged offsets start right after
    // the acknowledged payload.
    for (key, offset) in latest_acks(acked, cycle) {
        let response = server.read_from(path, &offset.text).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{path}: GET from the acknowledged offset {} of {key:?}",
            offset.text
        );
        let read = body(response).await;
        let end = offset.bytes as usize;
        assert_eq!(
            read.is_empty(),
            end == data.len(),
            "{path}: a read from {} returned {} bytes",
            offset.text,
            read.len()
        );
        assert_same_bytes(
            &read,
            &data[end..end + read.len().min(data.len() - end)],
            &format!("{path}: a read from {}", offset.text),
        );
    }
    unacknowledged
}

/// Checks the JSON stream like [`verify_byte_stream`], by message: the
/// messages half of each acknowledged offset counts the messages up to and
/// including the acknowledged one.
async fn verify_json_stream(
    server: &Server,
    target: &Target,
    acked: &[(Key, Off)],
    in_flight: &HashSet<Key>,
    cycle: usize,
) -> usize {
    let path = target.path;
    let (messages, tail) = server.read_json(path).await;
    let tail = parse_offset(&tail);
    assert_eq!(
        tail.messages,
        messages.len() as u64,
        "{path}: the read's final offset does not count the messages read"
    );
    assert_eq!(
        server.meta(path).await.next.as_deref(),
        Some(tail.text.as_str()),
        "{path}: HEAD and a full read disagree on the tail"
    );
    let mut positions: HashMap<Key, usize> = HashMap::new();
    for (index, message) in messages.iter().enumerate() {
        let key = message
            .as_str()
            .and_then(|text| parse_payload("json", text))
            .unwrap_or_else(|| panic!("{path}: message {index} is not a whole payload: {message}"));
        if let Some(earlier) = positions.insert(key, index) {
            panic!("{path}: {key:?} is stored twice, as messages {earlier} and {index}");
        }
    }
    for (key, offset) in acked {
        let count = usize::try_from(offset.messages).expect("count fits in memory");
        assert!(
            count >= 1 && count <= messages.len(),
            "{path}: acknowledged {key:?} was message {count}, but the stream now holds {} messages: acknowledged data was lost",
            messages.len()
        );
        assert_eq!(
            messages[count - 1].as_str(),
            Some(payload("json", *key).as_str()),
            "{path}: the message before acknowledged offset {} is not {key:?}",
            offset.text
        );
    }
    // Byte positions grow with message counts.
    let mut by_count: Vec<&Off> = acked.iter().map(|(_, offset)| offset).collect();
    by_count.sort_by_key(|offset| offset.messages);
    for pair in by_count.windows(2) {
        assert!(
            pair[0].bytes < pair[1].bytes,
            "{path}: offsets {} and {} are out of order",
            pair[0].text,
            pair[1].text
        );
    }
    assert!(
        by_count.last().is_none_or(|last| last.bytes <= tail.bytes),
        "{path}: an acknowledged offset lies beyond the tail {}",
        tail.text
    );
    let unacknowledged = check_unacknowledged(path, &positions, acked, in_flight);
    check_writer_order(path, &positions);

    for (key, offset) in latest_acks(acked, cycle) {
        let response = server.read_from(path, &offset.text).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{path}: GET from the acknowledged offset {} of {key:?}",
            offset.text
        );
        let read = json_array(&body(response).await);
        let from = offset.messages as usize;
        assert_eq!(
            read.is_empty(),
            from == messages.len(),
            "{path}: a read from {} returned {} messages",
            offset.text,
            read.len()
        );
        assert!(
            messages[from..].starts_with(&read),
            "{path}: a read from {} does not continue after {key:?}",
            offset.text
        );
    }
    unacknowledged
}

/// Every stored payload that was not acknowledged must have been in flight
/// when the server was killed.
/// Returns how many were (committed, but the kill hid the answer).
fn check_unacknowledged(
    path: &str,
    positions: &HashMap<Key, usize>,
    acked: &[(Key, Off)],
    in_flight: &HashSet<Key>,
) -> usize {
    let acked: HashSet<Key> = acked.iter().map(|(key, _)| *key).collect();
    let mut unacknowledged = 0;
    for (key, index) in positions {
        if !acked.contains(key) {
            assert!(
                in_flight.contains(key),
                "{path}: {key:?} (payload {index}) is stored, but it was neither acknowledged nor in flight at a kill"
            );
            unacknowledged += 1;
        }
    }
    unacknowledged
}

/// Each writer's payloads of one cycle are stored in the order it sent them.
fn check_writer_order(path: &str, positions: &HashMap<Key, usize>) {
    let sorted: BTreeMap<Key, usize> = positions.iter().map(|(k, i)| (*k, *i)).collect();
    let keys: Vec<(&Key, &usize)> = sorted.iter().collect();
    for pair in keys.windows(2) {
        let ((a, at_a), (b, at_b)) = (pair[0], pair[1]);
        if (a.writer, a.cycle) == (b.writer, b.cycle) {
            assert!(
                at_a < at_b,
                "{path}: {a:?} is stored after {b:?}, which its writer sent later"
            );
        }
    }
}

/// The last acknowledgement of each writer in `cycle`.
fn latest_acks(acked: &[(Key, Off)], cycle: usize) -> Vec<(Key, &Off)> {
    let mut latest: BTreeMap<usize, (Key, &Off)> = BTreeMap::new();
    for (key, offset) in acked.iter().filter(|(key, _)| key.cycle == cycle) {
        latest.insert(key.writer, (*key, offset));
    }
    latest.into_values().collect()
}

/// After a restart the producer resumes where its acknowledgements say:
/// the last acknowledged sequence is a duplicate, the next is new data (or
/// a duplicate if it committed unacknowledged), never a gap; and its stream
/// holds every sequence exactly once, in order. Advances `next`; returns
/// whether the request in flight at the kill had been committed.
async fn verify_producer(server: &Server, run: &ProducerRun, next: &mut u64) -> bool {
    let send_seq = |seq: u64| {
        send(
            server
                .post(PRODUCER_STREAM)
                .header("content-type", OCTET)
                .header("producer-id", PRODUCER_ID)
                .header("producer-epoch", "0")
                .header("producer-seq", seq.to_string())
                .body(producer_payload(seq)),
        )
    };
    let last_acked = run.acked.last().copied().or(next.checked_sub(1));
    if let Some(last) = last_acked {
        let response = send_seq(last).await;
        assert_eq!(
            response.status(),
            StatusCode::NO_CONTENT,
            "retrying the last acknowledged producer request (epoch 0, seq {last}) after kill -9: {:?}",
            response.headers()
        );
        let highest = header(&response, "producer-seq");
        let committed_in_flight = run.in_flight.map(|seq| seq.to_string());
        assert!(
            highest == Some(last.to_string()) || highest == committed_in_flight,
            "the duplicate of seq {last} reports Producer-Seq {highest:?} (in flight at the kill: {:?})",
            run.in_flight
        );
    }
    let resume = last_acked.map_or(0, |last| last + 1);
    let response = send_seq(resume).await;
    let status = response.status();
    let was_in_flight = run.in_flight == Some(resume);
    assert!(
        status == StatusCode::OK || (status == StatusCode::NO_CONTENT && was_in_flight),
        "producer seq {resume} after kill -9 (last acknowledged {last_acked:?}, in flight {:?}) got {status}: {}",
        run.in_flight,
        text(response).await
    );
    *next = resume + 1;

    let (data, _, _) = server.read_all(PRODUCER_STREAM).await;
    let expected: String = (0..*next).map(producer_payload).collect();
    assert_same_bytes(
        &data,
        expected.as_bytes(),
        "the producer's stream after kill -9 (each sequence exactly once, in order)",
    );
    status == StatusCode::NO_CONTENT
}

/// Acknowledged creations exist; the one in flight may; the next never
/// sent must not.
async fn verify_creations(server: &Server, run: &CreatorRun) {
    for path in &run.acked {
        let response = send(server.head(path)).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "the acknowledged creation of {path} was lost"
        );
        assert_eq!(header(&response, "content-type").as_deref(), Some(TEXT));
    }
    if let Some(path) = &run.in_flight {
        let status = send(server.head(path)).await.status();
        assert!(
            status == StatusCode::OK || status == StatusCode::NOT_FOUND,
            "HEAD {path} (created while the server was killed) got {status}"
        );
    }
    if !run.never_sent.is_empty() {
        let status = send(server.head(&run.never_sent)).await.status();
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "{} was never created",
            run.never_sent
        );
    }
}

// ---------------------------------------------------------------------------
// 2. Closure survives kill -9.
// ---------------------------------------------------------------------------

/// The producer request that appends a final message and closes `path`.
fn closing(server: &Server, path: &str) -> RequestBuilder {
    server
        .produce(path, "closer", 0, 2, "final|")
        .header("stream-closed", "true")
}

/// The producer request that closes `path` without appending.
fn close_only(server: &Server, path: &str) -> RequestBuilder {
    server
        .post(path)
        .header("producer-id", "closer")
        .header("producer-epoch", "0")
        .header("producer-seq", "1")
        .header("stream-closed", "true")
}

in_every_persistent_mode!(closure_survives_kill_9);

async fn closure_survives_kill_9(mode: &'static str) {
    let scratch = Scratch::new("closure", mode);
    let mut server = Server::start(&scratch).await;

    // Append-and-close by a producer.
    let last = "closure/with-final-append";
    server.create(last, TEXT).await;
    for (seq, body) in ["first|", "second|"].into_iter().enumerate() {
        let response = send(server.produce(last, "closer", 0, seq as u64, body)).await;
        assert_eq!(response.status(), StatusCode::OK, "producer seq {seq}");
    }
    let response = send(closing(&server, last)).await;
    assert_eq!(response.status(), StatusCode::OK, "append-and-close");
    assert_eq!(header(&response, "stream-closed").as_deref(), Some("true"));
    let last_final = next_offset(&response);

    // Close-only by a producer.
    let only = "closure/close-only";
    server.create(only, TEXT).await;
    let response = send(server.produce(only, "closer", 0, 0, "only|")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = send(close_only(&server, only)).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT, "close-only");
    assert_eq!(header(&response, "stream-closed").as_deref(), Some("true"));
    let only_final = next_offset(&response);

    // Close-only without producer headers.
    let plain = "closure/plain";
    server.create(plain, TEXT).await;
    server.append(plain, TEXT, "plain|").await;
    let response = send(server.post(plain).header("stream-closed", "true")).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let plain_final = next_offset(&response);

    let streams = [
        (last, last_final.as_str(), "first|second|final|"),
        (only, only_final.as_str(), "only|"),
        (plain, plain_final.as_str(), "plain|"),
    ];
    // Twice: the retries after the first restart must change nothing either.
    for round in 1..=2 {
        server.kill9();
        server = Server::start(&scratch).await;

        for (path, final_offset, data) in streams {
            let meta = server.meta(path).await;
            assert_eq!(
                meta.closed.as_deref(),
                Some("true"),
                "round {round}: HEAD {path} after kill -9 shows the closure"
            );
            assert_eq!(
                meta.next.as_deref(),
                Some(final_offset),
                "round {round}: {path}'s tail is the acknowledged final offset"
            );
            let (read, next, closed) = server.read_all(path).await;
            assert_eq!(
                String::from_utf8_lossy(&read),
                data,
                "round {round}: {path}"
            );
            assert_eq!(next, final_offset, "round {round}: {path}");
            assert!(
                closed,
                "round {round}: reading {path} to the end reports closure"
            );

            // A new append is refused with the closure and the final offset.
            let response = send(server.post(path).header("content-type", TEXT).body("late|")).await;
            assert_eq!(
                response.status(),
                StatusCode::CONFLICT,
                "round {round}: append to {path}"
            );
            assert_eq!(header(&response, "stream-closed").as_deref(), Some("true"));
            assert_eq!(next_offset(&response), final_offset);

            // Closing again is idempotent.
            let response = send(server.post(path).header("stream-closed", "true")).await;
            assert_eq!(
                response.status(),
                StatusCode::NO_CONTENT,
                "round {round}: re-close {path}"
            );
            assert_eq!(header(&response, "stream-closed").as_deref(), Some("true"));
            assert_eq!(next_offset(&response), final_offset);
        }

        // The closing producer requests are still recognised as duplicates.
        let response = send(closing(&server, last)).await;
        assert_eq!(
            response.status(),
            StatusCode::NO_CONTENT,
            "round {round}: retry of the append-and-close"
        );
        assert_eq!(header(&response, "stream-closed").as_deref(), Some("true"));
        assert_eq!(header(&response, "producer-seq").as_deref(), Some("2"));
        assert_eq!(next_offset(&response), last_final);

        let response = send(close_only(&server, only)).await;
        assert_eq!(
            response.status(),
            StatusCode::NO_CONTENT,
            "round {round}: retry of the producer's close-only request"
        );
        assert_eq!(header(&response, "stream-closed").as_deref(), Some("true"));
        assert_eq!(header(&response, "producer-seq").as_deref(), Some("1"));
        assert_eq!(next_offset(&response), only_final);

        // The producer's next sequence is refused: the stream is closed.
        let response = send(server.produce(last, "closer", 0, 3, "more|")).await;
        assert_eq!(
            response.status(),
            StatusCode::CONFLICT,
            "round {round}: seq 3"
        );
        assert_eq!(header(&response, "stream-closed").as_deref(), Some("true"));
    }
    drop(server);
    scratch.assert_no_panics();
}

// ---------------------------------------------------------------------------
// 3. Every stream property survives a restart (SIGTERM and kill -9).
// ---------------------------------------------------------------------------

mod every_stream_property_survives_restart {
    use super::{Restart, every_stream_property_survives};

    #[tokio::test]
    async fn after_sigterm() {
        for mode in ["acid", "file-durable", "file-fast"] {
            every_stream_property_survives(Restart::Sigterm, mode).await;
        }
    }

    #[tokio::test]
    async fn after_kill_9() {
        for mode in ["acid", "file-durable", "file-fast"] {
            every_stream_property_survives(Restart::Kill9, mode).await;
        }
    }
}

const EXPIRES_AT: &str = "2099-01-01T00:00:00Z";

/// `PUT` of a fork of `source`, optionally at `offset`.
fn fork_request(server: &Server, path: &str, source: &str, offset: Option<&str>) -> RequestBuilder {
    let request = server
        .put(path)
        .header("stream-forked-from", format!("{BASE_PATH}/{source}"));
    match offset {
        Some(offset) => request.header("stream-fork-offset", offset),
        None => request,
    }
}

async fn assert_status(request: RequestBuilder, status: StatusCode, what: &str) -> Response {
    let response = send(request).await;
    assert_eq!(response.status(), status, "{what}");
    response
}

async fn every_stream_property_survives(how: Restart, mode: &'static str) {
    let scratch = Scratch::new(
        match how {
            Restart::Sigterm => "props-term",
            Restart::Kill9 => "props-kill",
        },
        mode,
    );
    let mut server = Server::start(&scratch).await;

    // Content type, exactly as created.
    let typed = "p/typed";
    let typed_ct = "text/plain; charset=utf-8";
    server.create(typed, typed_ct).await;
    server.append(typed, typed_ct, "hello").await;

    // Expiry: a sliding TTL and an absolute deadline.
    let ttl = "p/ttl";
    assert_status(
        server
            .put(ttl)
            .header("content-type", OCTET)
            .header("stream-ttl", "3600"),
        StatusCode::CREATED,
        "PUT with Stream-TTL",
    )
    .await;
    let expires = "p/expires";
    assert_status(
        server
            .put(expires)
            .header("content-type", TEXT)
            .header("stream-expires-at", EXPIRES_AT),
        StatusCode::CREATED,
        "PUT with Stream-Expires-At",
    )
    .await;

    // Closure: closed later, and closed at creation.
    let closed = "p/closed";
    server.create(closed, TEXT).await;
    server.append(closed, TEXT, "all|").await;
    assert_status(
        server.post(closed).header("stream-closed", "true"),
        StatusCode::NO_CONTENT,
        "close",
    )
    .await;
    let born_closed = "p/born-closed";
    assert_status(
        server
            .put(born_closed)
            .header("content-type", TEXT)
            .header("stream-closed", "true")
            .body("born|"),
        StatusCode::CREATED,
        "PUT closed with a body",
    )
    .await;

    // Fork lineage: the fork inherits "one|" only.
    let src = "p/src";
    server.create(src, TEXT).await;
    let one = server.append(src, TEXT, "one|").await;
    let two = server.append(src, TEXT, "two|").await;
    let fork = "p/fork";
    assert_status(
        fork_request(&server, fork, src, Some(&one)),
        StatusCode::CREATED,
        "fork",
    )
    .await;
    server.append(fork, TEXT, "own|").await;
    server.append(src, TEXT, "three|").await;

    // Soft delete: the source is deleted while its fork reads from it.
    let doomed = "p/doomed";
    let heir = "p/heir";
    server.create(doomed, TEXT).await;
    server.append(doomed, TEXT, "doomed|").await;
    assert_status(
        fork_request(&server, heir, doomed, None),
        StatusCode::CREATED,
        "fork of the doomed stream",
    )
    .await;
    server.append(heir, TEXT, "heir|").await;
    assert_status(
        server.delete(doomed),
        StatusCode::NO_CONTENT,
        "DELETE source",
    )
    .await;
    assert_status(server.head(doomed), StatusCode::GONE, "HEAD soft-deleted").await;

    // Producer state: p1 at (0, 1); p2 moved on to epoch 1.
    let producer = "p/producer";
    server.create(producer, TEXT).await;
    for (id, epoch, seq, body) in [
        ("p1", 0, 0, "a|"),
        ("p1", 0, 1, "b|"),
        ("p2", 0, 0, "x|"),
        ("p2", 1, 0, "y|"),
    ] {
        assert_status(
            server.produce(producer, id, epoch, seq, body),
            StatusCode::OK,
            &format!("producer {id} ({epoch}, {seq})"),
        )
        .await;
    }

    // Stream-Seq: last accepted "0002".
    let seq = "p/seq";
    server.create(seq, TEXT).await;
    for (value, body) in [("0001", "s1|"), ("0002", "s2|")] {
        assert_status(
            server
                .post(seq)
                .header("content-type", TEXT)
                .header("stream-seq", value)
                .body(body),
            StatusCode::NO_CONTENT,
            &format!("Stream-Seq {value}"),
        )
        .await;
    }

    // JSON mode: an initial array flattened into messages, then one more.
    let json_stream = "p/json";
    let response = assert_status(
        server
            .put(json_stream)
            .header("content-type", JSON)
            .body(r#"[{"a":1},{"b":2}]"#),
        StatusCode::CREATED,
        "PUT JSON with initial messages",
    )
    .await;
    let json_mid = next_offset(&response);
    server.append(json_stream, JSON, r#"{"c":3}"#).await;

    let live = [
        typed,
        ttl,
        expires,
        closed,
        born_closed,
        src,
        fork,
        heir,
        producer,
        seq,
        json_stream,
    ];
    let mut before = Vec::new();
    for path in live {
        before.push((path, server.meta(path).await));
    }

    // ---- First restart: everything is as it was. ----
    server = restart(server, how, &scratch).await;
    for (path, meta) in &before {
        assert_eq!(
            &server.meta(path).await,
            meta,
            "HEAD {path} after a {how:?} restart"
        );
    }
    let meta = server.meta(typed).await;
    assert_eq!(meta.content_type.as_deref(), Some(typed_ct));
    assert_eq!(server.read_text(typed).await, "hello");
    assert_eq!(server.meta(ttl).await.ttl.as_deref(), Some("3600"));
    let expires_meta = server.meta(expires).await;
    assert_eq!(expires_meta.expires_at.as_deref(), Some(EXPIRES_AT));
    assert_eq!(expires_meta.ttl, None);

    for (path, data) in [(closed, "all|"), (born_closed, "born|")] {
        let (read, _, is_closed) = server.read_all(path).await;
        assert_eq!(String::from_utf8_lossy(&read), data, "{path}");
        assert!(is_closed, "{path} is still closed");
        let response = assert_status(
            server.post(path).header("content-type", TEXT).body("late|"),
            StatusCode::CONFLICT,
            &format!("append to closed {path}"),
        )
        .await;
        assert_eq!(header(&response, "stream-closed").as_deref(), Some("true"));
    }

    assert_eq!(server.read_text(src).await, "one|two|three|");
    assert_eq!(
        server.read_text(fork).await,
        "one|own|",
        "the fork after restart"
    );
    assert_eq!(
        server.meta(fork).await.content_type.as_deref(),
        Some(TEXT),
        "the fork inherited its source's content type"
    );
    // The recovered lineage matches the original request exactly.
    assert_status(
        fork_request(&server, fork, src, Some(&one)),
        StatusCode::OK,
        "re-PUT of the fork with its original headers",
    )
    .await;
    assert_status(
        fork_request(&server, fork, src, Some(&two)),
        StatusCode::CONFLICT,
        "re-PUT of the fork at another offset",
    )
    .await;
    // And the recovered source can be forked again.
    let fork2 = "p/fork2";
    assert_status(
        fork_request(&server, fork2, src, Some(&two)),
        StatusCode::CREATED,
        "fork after restart",
    )
    .await;
    assert_eq!(server.read_text(fork2).await, "one|two|");

    // The soft-deleted source is still gone, its fork still reads through it.
    assert_status(
        server.get(doomed),
        StatusCode::GONE,
        "GET soft-deleted source",
    )
    .await;
    assert_status(
        server.head(doomed),
        StatusCode::GONE,
        "HEAD soft-deleted source",
    )
    .await;
    assert_status(
        server.post(doomed).header("content-type", TEXT).body("z"),
        StatusCode::GONE,
        "POST soft-deleted source",
    )
    .await;
    assert_status(
        server.delete(doomed),
        StatusCode::GONE,
        "DELETE soft-deleted source",
    )
    .await;
    assert_status(
        server.put(doomed).header("content-type", TEXT),
        StatusCode::CONFLICT,
        "PUT over a soft-deleted source",
    )
    .await;
    assert_status(
        fork_request(&server, "p/late-fork", doomed, None),
        StatusCode::CONFLICT,
        "fork of a soft-deleted source",
    )
    .await;
    assert_eq!(server.read_text(heir).await, "doomed|heir|");

    // Producer state.
    let response = assert_status(
        server.produce(producer, "p1", 0, 1, "b|"),
        StatusCode::NO_CONTENT,
        "retry of p1 (0, 1) after restart",
    )
    .await;
    assert_eq!(header(&response, "producer-seq").as_deref(), Some("1"));
    assert_eq!(header(&response, "producer-epoch").as_deref(), Some("0"));
    let response = assert_status(
        server.produce(producer, "p1", 0, 3, "d|"),
        StatusCode::CONFLICT,
        "p1 (0, 3) skips seq 2",
    )
    .await;
    assert_eq!(
        header(&response, "producer-expected-seq").as_deref(),
        Some("2")
    );
    assert_eq!(
        header(&response, "producer-received-seq").as_deref(),
        Some("3")
    );
    assert_status(
        server.produce(producer, "p1", 0, 2, "c|"),
        StatusCode::OK,
        "p1 (0, 2)",
    )
    .await;
    let response = assert_status(
        server.produce(producer, "p2", 0, 1, "z|"),
        StatusCode::FORBIDDEN,
        "p2 at its fenced epoch 0",
    )
    .await;
    assert_eq!(header(&response, "producer-epoch").as_deref(), Some("1"));
    assert_status(
        server.produce(producer, "p2", 1, 0, "y|"),
        StatusCode::NO_CONTENT,
        "retry of p2 (1, 0)",
    )
    .await;
    assert_eq!(server.read_text(producer).await, "a|b|x|y|c|");

    // Stream-Seq.
    for value in ["0002", "0001"] {
        assert_status(
            server
                .post(seq)
                .header("content-type", TEXT)
                .header("stream-seq", value)
                .body("again|"),
            StatusCode::CONFLICT,
            &format!("Stream-Seq {value} after restart"),
        )
        .await;
    }
    assert_status(
        server
            .post(seq)
            .header("content-type", TEXT)
            .header("stream-seq", "0003")
            .body("s3|"),
        StatusCode::NO_CONTENT,
        "Stream-Seq 0003",
    )
    .await;
    assert_eq!(server.read_text(seq).await, "s1|s2|s3|");

    // JSON mode.
    let (messages, _) = server.read_json(json_stream).await;
    assert_eq!(
        messages,
        [json!({"a": 1}), json!({"b": 2}), json!({"c": 3})]
    );
    let response = server.read_from(json_stream, &json_mid).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(json_array(&body(response).await), [json!({"c": 3})]);
    server
        .append(json_stream, JSON, r#"[{"d":4},{"e":5}]"#)
        .await;

    // Deleting the last fork cleans up the soft-deleted source.
    assert_status(
        server.delete(heir),
        StatusCode::NO_CONTENT,
        "DELETE the fork",
    )
    .await;
    assert_status(
        server.get(heir),
        StatusCode::NOT_FOUND,
        "GET the deleted fork",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = send(server.head(doomed)).await.status();
        if status == StatusCode::NOT_FOUND {
            break;
        }
        assert_eq!(
            status,
            StatusCode::GONE,
            "HEAD of the source being cleaned up"
        );
        assert!(
            Instant::now() < deadline,
            "the soft-deleted source is still there 5 s after its last fork was deleted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let live = [
        typed,
        ttl,
        expires,
        closed,
        born_closed,
        src,
        fork,
        fork2,
        producer,
        seq,
        json_stream,
    ];
    let mut before = Vec::new();
    for path in live {
        before.push((path, server.meta(path).await));
    }

    // ---- Second restart: the changes made after the first one persist. ----
    server = restart(server, how, &scratch).await;
    for (path, meta) in &before {
        assert_eq!(
            &server.meta(path).await,
            meta,
            "HEAD {path} after a second {how:?} restart"
        );
    }
    assert_status(
        server.head(doomed),
        StatusCode::NOT_FOUND,
        "the cleaned-up source",
    )
    .await;
    assert_status(server.head(heir), StatusCode::NOT_FOUND, "the deleted fork").await;
    assert_eq!(server.read_text(src).await, "one|two|three|");
    assert_eq!(server.read_text(fork).await, "one|own|");
    assert_eq!(server.read_text(fork2).await, "one|two|");
    assert_status(
        fork_request(&server, fork2, src, Some(&two)),
        StatusCode::OK,
        "re-PUT of the fork made after the first restart",
    )
    .await;
    assert_status(
        server.produce(producer, "p1", 0, 2, "c|"),
        StatusCode::NO_CONTENT,
        "retry of p1 (0, 2) after the second restart",
    )
    .await;
    assert_status(
        server.produce(producer, "p2", 1, 1, "w|"),
        StatusCode::OK,
        "p2 (1, 1)",
    )
    .await;
    assert_eq!(server.read_text(producer).await, "a|b|x|y|c|w|");
    assert_status(
        server
            .post(seq)
            .header("content-type", TEXT)
            .header("stream-seq", "0003")
            .body("again|"),
        StatusCode::CONFLICT,
        "Stream-Seq 0003 after the second restart",
    )
    .await;
    let (messages, _) = server.read_json(json_stream).await;
    assert_eq!(
        messages,
        [
            json!({"a": 1}),
            json!({"b": 2}),
            json!({"c": 3}),
            json!({"d": 4}),
            json!({"e": 5})
        ]
    );
    let response = server.read_from(json_stream, &json_mid).await;
    assert_eq!(
        json_array(&body(response).await),
        [json!({"c": 3}), json!({"d": 4}), json!({"e": 5})]
    );
    // The cleaned-up path is free again.
    server.create(doomed, TEXT).await;
    assert_eq!(server.read_text(doomed).await, "");

    drop(server);
    scratch.assert_no_panics();
}

// ---------------------------------------------------------------------------
// 4. A data directory of another format is refused.
// ---------------------------------------------------------------------------

/// Starts the binary expecting it to refuse to start; returns its output.
fn expect_refusal(scratch: &Scratch) -> String {
    let (mut child, log) = spawn(scratch, free_port());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll the server process") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the server still runs 15 s after starting over a foreign data directory; its output:\n{}",
                read_log(&log)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = read_log(&log);
    assert!(
        !status.success(),
        "the server exited with {status} over a foreign data directory; its output:\n{output}"
    );
    output
}

#[test]
fn refuses_a_data_dir_of_another_format() {
    // Files of another storage mode, and no streams.redb.
    let scratch = Scratch::new("foreign", "acid");
    let data_dir = scratch.data_dir();
    std::fs::create_dir_all(&data_dir).expect("create the data directory");
    let junk = data_dir.join("segment-000001.log");
    std::fs::write(&junk, b"not a redb database").expect("write the junk file");
    let output = expect_refusal(&scratch);
    let dir = data_dir.display().to_string();
    assert!(
        output.contains(&dir) && output.contains("data directory"),
        "the refusal names the data directory {dir}; the output was:\n{output}"
    );
    assert!(
        !data_dir.join("streams.redb").exists(),
        "nothing is created in a refused data directory"
    );
    assert_eq!(
        std::fs::read(&junk).expect("the junk file is still there"),
        b"not a redb database"
    );

    // A redb database written by another format version.
    let scratch = Scratch::new("foreign-format", "acid");
    let data_dir = scratch.data_dir();
    std::fs::create_dir_all(&data_dir).expect("create the data directory");
    {
        let meta: redb::TableDefinition<&str, &str> = redb::TableDefinition::new("meta");
        let db = redb::Database::create(data_dir.join("streams.redb")).expect("create a database");
        let txn = db.begin_write().expect("begin a write");
        txn.open_table(meta)
            .expect("open the meta table")
            .insert("format", "durable-streams-rs acid v0")
            .expect("write the format");
        txn.commit().expect("commit");
    }
    let output = expect_refusal(&scratch);
    let dir = data_dir.display().to_string();
    assert!(
        output.contains(&dir) && output.contains("durable-streams-rs acid v0"),
        "the refusal names the data directory {dir} and the format found; the output was:\n{output}"
    );
}

// ---------------------------------------------------------------------------
// 5. Answers given from state that is not yet durable.
// ---------------------------------------------------------------------------
//
// Each test below sends the same request twice at once (a client retrying
// on a second connection), kills the server -9 the moment either copy is
// answered with a success, restarts it, and checks that what the answer
// acknowledged survived. On a server that acknowledges only durable state
// this always holds, whichever copy answered first and whenever the kill
// landed. Each repeats the race until something is lost or `RACE_ROUNDS`
// rounds pass.

const RACE_ROUNDS: usize = 100;

/// Sends `request` twice concurrently and kills the server as soon as the
/// first answer arrives; returns that answer's status and the restarted
/// server.
async fn race_then_kill(
    server: Server,
    scratch: &Scratch,
    request: impl Fn(&Server) -> RequestBuilder,
) -> (StatusCode, Server) {
    let (a, b) = (request(&server).send(), request(&server).send());
    let (mut a, mut b) = (std::pin::pin!(a), std::pin::pin!(b));
    let first = tokio::select! {
        answer = &mut a => answer,
        answer = &mut b => answer,
    };
    let status = first.expect("the first of two identical requests").status();
    server.kill9();
    (status, Server::start(scratch).await)
}

in_every_persistent_mode!(producer_duplicate_ack_survives_kill_9);

async fn producer_duplicate_ack_survives_kill_9(mode: &'static str) {
    let scratch = Scratch::new("race-producer", mode);
    let mut server = Server::start(&scratch).await;
    for round in 0..RACE_ROUNDS {
        let path = format!("race/producer-{round}");
        server.create(&path, TEXT).await;
        let (status, restarted) = race_then_kill(server, &scratch, |server| {
            server.produce(&path, "racer", 0, 0, "data|")
        })
        .await;
        server = restarted;
        assert!(
            status.is_success(),
            "round {round}: producer (0, 0) got {status}"
        );
        assert_eq!(
            server.read_text(&path).await,
            "data|",
            "round {round}: producer (0, 0) was acknowledged with {status}, but after kill -9 its data is gone"
        );
    }
    drop(server);
    scratch.assert_no_panics();
}

in_every_persistent_mode!(idempotent_close_ack_survives_kill_9);

async fn idempotent_close_ack_survives_kill_9(mode: &'static str) {
    let scratch = Scratch::new("race-close", mode);
    let mut server = Server::start(&scratch).await;
    for round in 0..RACE_ROUNDS {
        let path = format!("race/close-{round}");
        server.create(&path, TEXT).await;
        let (status, restarted) = race_then_kill(server, &scratch, |server| {
            server.post(&path).header("stream-closed", "true")
        })
        .await;
        server = restarted;
        assert_eq!(status, StatusCode::NO_CONTENT, "round {round}: close");
        assert_eq!(
            server.meta(&path).await.closed.as_deref(),
            Some("true"),
            "round {round}: the close was acknowledged (204, Stream-Closed: true), but after kill -9 the stream is open"
        );
    }
    drop(server);
    scratch.assert_no_panics();
}

in_every_persistent_mode!(idempotent_create_ack_survives_kill_9);

async fn idempotent_create_ack_survives_kill_9(mode: &'static str) {
    let scratch = Scratch::new("race-create", mode);
    let mut server = Server::start(&scratch).await;
    for round in 0..RACE_ROUNDS {
        let path = format!("race/create-{round}");
        let (status, restarted) = race_then_kill(server, &scratch, |server| {
            server.put(&path).header("content-type", TEXT)
        })
        .await;
        server = restarted;
        assert!(
            status == StatusCode::CREATED || status == StatusCode::OK,
            "round {round}: PUT got {status}"
        );
        assert_eq!(
            send(server.head(&path)).await.status(),
            StatusCode::OK,
            "round {round}: PUT {path} was acknowledged with {status}, but after kill -9 the stream does not exist"
        );
    }
    drop(server);
    scratch.assert_no_panics();
}
