//! Recovery from damaged data directories in the `file-fast` and
//! `file-durable` storage modes, proven against the real `stream-server`
//! executable.
//!
//! Each stream lives in `streams/<id>/`: `meta.json` and an append-only
//! `log` of records framed as `len u32 LE | crc32 u32 LE | body`, one record
//! per request. At startup the server replays every log; a torn or corrupt
//! record at the tail is discarded (the log is truncated there and
//! "damaged log tail discarded" is logged with its `position`,
//! `discarded_bytes` and `reason`), unfinished creations
//! (`streams/<id>.new`) and unfinished deletions (`trash/*`) are removed.
//!
//! These tests run the binary as a child process in both file modes, append
//! known payloads over HTTP, stop it with SIGTERM, damage the newest
//! stream's `log` on disk the way a crash or a bad disk would, start it
//! again and prove that:
//!
//! * a last record cut in its body or in its 8-byte header, or with a
//!   flipped data byte, is dropped whole: the stream serves exactly the data
//!   of every earlier append (byte for byte), its tail is the offset
//!   acknowledged for the second-to-last append, earlier offsets still
//!   resume correctly, and appends continue from there;
//! * garbage after the last record is discarded and every acknowledged
//!   append is served intact;
//! * the log is truncated on disk at the last good record, the warning names
//!   the stream, the position and the number of bytes discarded, and the
//!   next restart is clean (no warning, nothing lost);
//! * other streams are untouched;
//! * leftover staging and trash directories are removed and never surface
//!   as streams;
//! * idempotent-producer state is dropped together with the data of the
//!   record that carried it, so a retry of the dropped request is accepted
//!   as new data (200) and earlier ones remain duplicates (204).
//!
//! Damage is applied at exact record boundaries, computed from the log
//! sizes observed after each acknowledged append and cross-checked by
//! parsing the framing, so every test is deterministic.
//!
//! Two scenarios are `#[ignore]`d because they expose server bugs (see
//! their reasons): a zero-filled tail and a plain file in `trash/` each make
//! the server refuse to start instead of recovering.

mod common;

use common::{BASE_PATH, body, free_port, header, next_offset, send};
use reqwest::{Client, RequestBuilder, Response, StatusCode};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const BINARY: &str = env!("CARGO_BIN_EXE_stream-server");

/// How long a started server may take to answer `GET /readyz` (a debug
/// build on a loaded machine).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a server may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// How long any single request may take before the test fails instead of
/// hanging.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

const OCTET: &str = "application/octet-stream";

/// The warning logged when replay truncates a log.
const DAMAGE_WARNING: &str = "damaged log tail discarded";

/// Record header: body length and CRC-32, both `u32` little-endian.
const HEADER: u64 = 8;

/// The stream whose log the tests damage; always created last, so it is
/// the newest stream directory.
const VICTIM: &str = "victim";

/// A stream created before the victim whose log is never touched.
const CONTROL: &str = "control";

/// The file storage modes under test.
#[derive(Debug, Clone, Copy)]
enum Mode {
    FileFast,
    FileDurable,
}

impl Mode {
    fn env(self) -> &'static str {
        match self {
            Mode::FileFast => "file-fast",
            Mode::FileDurable => "file-durable",
        }
    }
}

/// Generates, for each scenario `fn name(mode: Mode)`, a module `name` with
/// one test per file mode: `name::file_fast` and `name::file_durable`.
/// Attributes before the name (such as `#[ignore]`) apply to both.
macro_rules! in_both_file_modes {
    ($($(#[$attr:meta])* $name:ident),* $(,)?) => {$(
        mod $name {
            $(#[$attr])*
            #[tokio::test]
            async fn file_fast() {
                super::$name(super::Mode::FileFast).await;
            }

            $(#[$attr])*
            #[tokio::test]
            async fn file_durable() {
                super::$name(super::Mode::FileDurable).await;
            }
        }
    )*};
}

in_both_file_modes!(
    truncated_inside_last_record,
    garbage_after_last_record,
    zero_filled_tail,
    flipped_byte_in_last_record,
    truncated_inside_last_header,
    leftover_staging_and_trash_removed,
    stray_file_in_trash_removed,
    producer_state_dropped_with_its_record,
);

// ---------------------------------------------------------------------------
// Harness: a scratch directory and the server as a child process.
// ---------------------------------------------------------------------------

/// A fresh directory under the system temp dir, removed on drop. The data
/// directory is `data/` inside it; each server run writes its output to its
/// own `server-<n>.log` beside it (never inside the data directory).
struct Scratch {
    root: TempDir,
    mode: Mode,
    runs: AtomicU32,
}

impl Scratch {
    fn new(name: &str, mode: Mode) -> Scratch {
        let root = tempfile::Builder::new()
            .prefix(&format!("ds-corruption-{name}-{}-", mode.env()))
            .tempdir()
            .expect("create the scratch directory");
        Scratch {
            root,
            mode,
            runs: AtomicU32::new(0),
        }
    }

    fn root(&self) -> &Path {
        self.root.path()
    }

    fn data_dir(&self) -> PathBuf {
        self.root().join("data")
    }

    fn streams_dir(&self) -> PathBuf {
        self.data_dir().join("streams")
    }

    fn trash_dir(&self) -> PathBuf {
        self.data_dir().join("trash")
    }

    fn next_log(&self) -> PathBuf {
        let n = self.runs.fetch_add(1, Ordering::Relaxed);
        self.root().join(format!("server-{n:02}.log"))
    }
}

/// A server run's output, with any terminal colour codes removed.
fn read_output(path: &Path) -> String {
    let raw = fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()));
    strip_ansi(&raw)
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC '[' parameters, ending with a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The binary running as a child process. Dropping it kills the child
/// (SIGKILL) if it still runs, so no server outlives a failed assertion;
/// when dropped during a panic it prints the child's output.
struct Server {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    base: String,
    client: Client,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- stream-server output ({}) ---\n{}",
                self.log.display(),
                read_output(&self.log)
            );
        }
    }
}

impl Server {
    /// Starts the binary over the scratch data directory on a free port
    /// and waits until `GET /readyz` answers 200.
    async fn start(scratch: &Scratch) -> Server {
        match Server::try_start(scratch).await {
            Ok(server) => server,
            Err((failure, output)) => {
                panic!("stream-server did not become ready: {failure}; its output:\n{output}")
            }
        }
    }

    /// Like `start`, but returns why the server did not become ready and
    /// its output instead of failing.
    async fn try_start(scratch: &Scratch) -> Result<Server, (String, String)> {
        let probe = Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("build the probe client");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port();
            let log = scratch.next_log();
            let mut server = Server {
                child: spawn(scratch, port, &log),
                base: format!("http://127.0.0.1:{port}"),
                client: Client::builder()
                    .timeout(REQUEST_TIMEOUT)
                    .build()
                    .expect("build the HTTP client"),
                log,
            };
            let failure = match server.wait_ready(&probe).await {
                Ok(()) => return Ok(server),
                Err(failure) => failure,
            };
            let log = server.log.clone();
            drop(server);
            let output = read_output(&log);
            // The port can be taken between picking it and the server's bind.
            if output.contains("cannot listen") && attempt < 5 {
                continue;
            }
            return Err((failure, output));
        }
    }

    async fn wait_ready(&mut self, probe: &Client) -> Result<(), String> {
        common::wait_child_ready(&mut self.child, &self.base, probe, STARTUP_TIMEOUT).await
    }

    /// Stops the server cleanly (SIGTERM), asserts it exited successfully
    /// without panicking, and returns its output.
    async fn stop(mut self) -> String {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill -TERM");
        assert!(sent.success(), "kill -TERM {pid} failed: {sent}");
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("poll the server") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not exit within {STOP_TIMEOUT:?} of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let output = read_output(&self.log);
        assert!(
            status.success(),
            "the server exited with {status} after SIGTERM:\n{output}"
        );
        assert!(
            !output.contains("panicked"),
            "the server panicked:\n{output}"
        );
        output
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

    /// Creates an empty `application/octet-stream` stream, asserting `201`.
    async fn create(&self, path: &str) -> String {
        let response = send(self.put(path).header("content-type", OCTET)).await;
        assert_eq!(response.status(), StatusCode::CREATED, "PUT {path}");
        next_offset(&response)
    }

    /// Appends `data`, asserting `204 No Content`; returns the new tail.
    async fn append(&self, path: &str, data: &[u8]) -> String {
        let response = send(
            self.post(path)
                .header("content-type", OCTET)
                .body(data.to_vec()),
        )
        .await;
        assert_eq!(
            response.status(),
            StatusCode::NO_CONTENT,
            "POST {path} ({} bytes)",
            data.len()
        );
        next_offset(&response)
    }

    /// `POST` of `data` as idempotent producer `(id, epoch, seq)`.
    async fn produce(&self, path: &str, id: &str, epoch: u64, seq: u64, data: &[u8]) -> Response {
        send(
            self.post(path)
                .header("content-type", OCTET)
                .header("producer-id", id)
                .header("producer-epoch", epoch.to_string())
                .header("producer-seq", seq.to_string())
                .body(data.to_vec()),
        )
        .await
    }

    /// The stream's tail offset, from `HEAD`.
    async fn tail(&self, path: &str) -> String {
        let response = send(self.head(path)).await;
        assert_eq!(response.status(), StatusCode::OK, "HEAD {path}");
        next_offset(&response)
    }

    /// A catch-up read from `offset`: its body, `Stream-Next-Offset` and
    /// whether it was up to date.
    async fn read_from(&self, path: &str, offset: &str) -> (Vec<u8>, String, bool) {
        let response = send(self.get(path).query(&[("offset", offset)])).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "GET {path}?offset={offset}"
        );
        let up_to_date = header(&response, "stream-up-to-date").is_some();
        let next = next_offset(&response);
        (body(response).await, next, up_to_date)
    }

    /// Everything from `offset` to the tail, following `Stream-Next-Offset`
    /// until `Stream-Up-To-Date`; returns the bytes and the final offset.
    async fn read_rest(&self, path: &str, offset: &str) -> (Vec<u8>, String) {
        let mut offset = offset.to_owned();
        let mut data = Vec::new();
        for _ in 0..10_000 {
            let (chunk, next, up_to_date) = self.read_from(path, &offset).await;
            data.extend_from_slice(&chunk);
            offset = next;
            if up_to_date {
                return (data, offset);
            }
        }
        panic!("reading {path} never reached Stream-Up-To-Date");
    }

    async fn read_all(&self, path: &str) -> (Vec<u8>, String) {
        self.read_rest(path, "-1").await
    }

    async fn status_of(&self, request: RequestBuilder) -> StatusCode {
        send(request).await.status()
    }
}

/// Spawns the binary on `port` over the scratch data directory, stdout and
/// stderr going to `log`.
fn spawn(scratch: &Scratch, port: u16, log: &Path) -> Child {
    let stdout = File::create(log).expect("create the server log");
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
        .env("DS_STORAGE__MODE", scratch.mode.env())
        .env("DS_STORAGE__DATA_DIR", scratch.data_dir())
        .env("DS_SERVER__HOST", "127.0.0.1")
        .env("DS_SERVER__PORT", port.to_string())
        .env("DS_SERVER__SHUTDOWN_GRACE_SECS", "2")
        .env("RUST_LOG", "stream_server=warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    command.spawn().expect("spawn the stream-server binary")
}

// ---------------------------------------------------------------------------
// The data directory on disk.
// ---------------------------------------------------------------------------

/// The newest stream directory (highest id), asserting it holds `path`.
fn newest_stream_dir(scratch: &Scratch, path: &str) -> PathBuf {
    let newest = fs::read_dir(scratch.streams_dir())
        .expect("list streams/")
        .map(|entry| entry.expect("read a streams/ entry"))
        .filter_map(|entry| {
            let id: u64 = entry.file_name().to_str()?.parse().ok()?;
            Some((id, entry.path()))
        })
        .max_by_key(|(id, _)| *id)
        .map(|(_, dir)| dir)
        .expect("streams/ holds a stream directory");
    let meta: serde_json::Value = serde_json::from_slice(
        &fs::read(newest.join("meta.json")).expect("read the newest meta.json"),
    )
    .expect("meta.json is JSON");
    assert_eq!(
        meta["path"],
        path,
        "the newest stream directory {} is not {path:?}",
        newest.display()
    );
    newest
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .len()
}

/// The end position of every record of a log, verifying each one's
/// framing and CRC-32 (the test's own reading of the format).
fn record_ends(log: &[u8]) -> Vec<u64> {
    let mut ends = Vec::new();
    let mut pos = 0usize;
    while pos < log.len() {
        let header = log
            .get(pos..pos + HEADER as usize)
            .unwrap_or_else(|| panic!("torn record header at {pos}"));
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        let start = pos + HEADER as usize;
        let body = log
            .get(start..start + len)
            .unwrap_or_else(|| panic!("record at {pos} runs past the end"));
        assert_eq!(
            crc32fast::hash(body),
            crc,
            "checksum of the record at {pos}"
        );
        pos = start + len;
        ends.push(pos as u64);
    }
    ends
}

/// Cuts a file to `len` bytes.
fn truncate(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|file| file.set_len(len))
        .unwrap_or_else(|e| panic!("truncate {}: {e}", path.display()));
}

/// Adds bytes at the end of a file.
fn append_bytes(path: &Path, bytes: &[u8]) {
    OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(bytes))
        .unwrap_or_else(|e| panic!("append to {}: {e}", path.display()));
}

/// Inverts every bit of the byte at `pos`; returns its old value.
fn flip_byte(path: &Path, pos: u64) -> u8 {
    let mut bytes = fs::read(path).expect("read the log");
    let at = usize::try_from(pos).expect("position fits usize");
    let old = bytes[at];
    bytes[at] = !old;
    fs::write(path, &bytes).expect("rewrite the log");
    old
}

/// Copies a stream directory (flat: `meta.json` and `log`) to `to`,
/// renaming the stream to `path` in its `meta.json`.
fn copy_stream_dir(from: &Path, to: &Path, path: &str) {
    fs::create_dir_all(to).expect("create the copy");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&fs::read(from.join("meta.json")).expect("read meta.json"))
            .expect("meta.json is JSON");
    meta["path"] = path.into();
    fs::write(
        to.join("meta.json"),
        serde_json::to_vec_pretty(&meta).expect("serialise meta.json"),
    )
    .expect("write the copied meta.json");
    fs::copy(from.join("log"), to.join("log")).expect("copy the log");
}

// ---------------------------------------------------------------------------
// Payloads and the seeded data directory.
// ---------------------------------------------------------------------------

/// Deterministic bytes covering every byte value, distinct per `seed`.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

/// The victim's appends: tiny, large enough to cross the log's sparse
/// index interval (64 KiB), and ordinary sizes.
fn victim_payloads() -> Vec<Vec<u8>> {
    [37, 1, 70_000, 4096, 513]
        .iter()
        .enumerate()
        .map(|(i, &len)| pattern(i as u64 + 1, len))
        .collect()
}

fn control_payloads() -> Vec<Vec<u8>> {
    [(100, 300), (101, 5)]
        .iter()
        .map(|&(seed, len)| pattern(seed, len))
        .collect()
}

/// One acknowledged append to the victim.
struct Acked {
    payload: Vec<u8>,
    /// `Stream-Next-Offset` it was acknowledged with.
    offset: String,
    /// The log's length once it was acknowledged (its record's end).
    log_end: u64,
}

/// A stopped server's data directory holding the control stream and the
/// victim, with what the clients were told.
struct Seeded {
    scratch: Scratch,
    /// The victim's `log`.
    log: PathBuf,
    /// The victim's offset at creation.
    created: String,
    appends: Vec<Acked>,
    control: Vec<u8>,
    control_tail: String,
}

impl Seeded {
    /// The data of the first `n` appends to the victim.
    fn data(&self, n: usize) -> Vec<u8> {
        self.appends[..n]
            .iter()
            .flat_map(|a| a.payload.iter().copied())
            .collect()
    }

    /// The tail after the first `n` appends to the victim.
    fn offset_after(&self, n: usize) -> &str {
        match n {
            0 => &self.created,
            n => &self.appends[n - 1].offset,
        }
    }

    /// Where the last record starts in the victim's log.
    fn last_record_start(&self) -> u64 {
        self.appends
            .len()
            .checked_sub(2)
            .map_or(0, |i| self.appends[i].log_end)
    }

    fn last_record_end(&self) -> u64 {
        self.appends.last().expect("appends were made").log_end
    }
}

/// Starts a server on a fresh data directory, creates the control stream
/// and then the victim (the newest stream), appends the known payloads,
/// stops the server with SIGTERM and checks the victim's log on disk.
async fn seed(name: &str, mode: Mode) -> Seeded {
    let scratch = Scratch::new(name, mode);
    let server = Server::start(&scratch).await;

    server.create(CONTROL).await;
    let mut control_tail = String::new();
    for payload in control_payloads() {
        control_tail = server.append(CONTROL, &payload).await;
    }

    let created = server.create(VICTIM).await;
    let dir = newest_stream_dir(&scratch, VICTIM);
    let log = dir.join("log");
    assert_eq!(file_len(&log), 0, "a stream created empty has an empty log");
    let mut appends = Vec::new();
    for payload in victim_payloads() {
        let offset = server.append(VICTIM, &payload).await;
        // Acknowledged appends have been written to the OS.
        let log_end = file_len(&log);
        appends.push(Acked {
            payload,
            offset,
            log_end,
        });
    }
    let output = server.stop().await;
    assert!(
        !output.contains(DAMAGE_WARNING),
        "a fresh data directory reported damage:\n{output}"
    );

    let on_disk = fs::read(&log).expect("read the victim's log");
    let ends: Vec<u64> = appends.iter().map(|a| a.log_end).collect();
    assert_eq!(
        record_ends(&on_disk),
        ends,
        "one record per acknowledged append, nothing after the last"
    );
    Seeded {
        scratch,
        log,
        created,
        appends,
        control: control_payloads().concat(),
        control_tail,
    }
}

/// The warning replay must log for the victim.
struct ExpectedWarning {
    position: u64,
    discarded_bytes: u64,
    /// Part of the `reason` field.
    reason: String,
}

/// Asserts `output` holds exactly one damage warning and that it is the
/// expected one.
fn assert_damage_warning(output: &str, expected: &ExpectedWarning) {
    let lines: Vec<&str> = output
        .lines()
        .filter(|line| line.contains(DAMAGE_WARNING))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one {DAMAGE_WARNING:?} warning in:\n{output}"
    );
    let line = lines[0];
    for field in [
        "WARN".to_owned(),
        format!("stream={VICTIM}"),
        format!("position={}", expected.position),
        format!("discarded_bytes={}", expected.discarded_bytes),
    ] {
        assert!(line.contains(&field), "the warning lacks {field:?}: {line}");
    }
    let reason = line.split_once("reason=").map_or("", |(_, reason)| reason);
    assert!(
        reason.contains(&expected.reason),
        "the warning's reason is not {:?}: {line}",
        expected.reason
    );
}

/// Restarts the server on the damaged directory and proves it recovered to
/// exactly the first `kept` appends; then appends once more, restarts
/// again and proves that restart is clean.
async fn assert_recovers(seeded: &Seeded, kept: usize, expected: &ExpectedWarning) {
    let server = Server::start(&seeded.scratch).await;

    // The damaged tail is gone from the file itself.
    let good_end = match kept {
        0 => 0,
        n => seeded.appends[n - 1].log_end,
    };
    assert_eq!(
        file_len(&seeded.log),
        good_end,
        "the log is truncated at the end of the last intact record"
    );

    // Exactly the first `kept` appends, byte for byte, ending at the offset
    // acknowledged for the last of them.
    let tail = seeded.offset_after(kept);
    let (data, end) = server.read_all(VICTIM).await;
    assert!(
        data == seeded.data(kept),
        "the victim serves {} bytes, expected exactly the {} bytes of its first {kept} appends",
        data.len(),
        seeded.data(kept).len()
    );
    assert_eq!(end, tail, "the read ends at the acknowledged tail");
    assert_eq!(server.tail(VICTIM).await, tail, "HEAD reports that tail");

    // Every acknowledged offset still resumes at the right data.
    for i in 0..kept {
        let (rest, end) = server.read_rest(VICTIM, seeded.offset_after(i)).await;
        assert!(
            rest == seeded.data(kept)[seeded.data(i).len()..],
            "reading from the offset of append {i} returns the data after it"
        );
        assert_eq!(end, tail);
    }

    // Other streams are untouched.
    let (control, control_end) = server.read_all(CONTROL).await;
    assert!(control == seeded.control, "the control stream is intact");
    assert_eq!(control_end, seeded.control_tail);

    // Appends continue from the recovered tail.
    let extra = pattern(999, 777);
    let extra_tail = server.append(VICTIM, &extra).await;
    assert!(
        extra_tail.as_str() > tail,
        "the new tail {extra_tail} follows {tail}"
    );
    let (after, end) = server.read_rest(VICTIM, tail).await;
    assert!(after == extra, "the new append follows the recovered data");
    assert_eq!(end, extra_tail);
    let ends = record_ends(&fs::read(&seeded.log).expect("read the log"));
    let intact: Vec<u64> = seeded.appends[..kept].iter().map(|a| a.log_end).collect();
    assert_eq!(
        ends[..ends.len() - 1],
        intact,
        "the log holds the intact records, then the new one"
    );

    let output = server.stop().await;
    assert_damage_warning(&output, expected);

    // The repair was complete: the next start finds nothing to discard.
    let server = Server::start(&seeded.scratch).await;
    let mut expected_data = seeded.data(kept);
    expected_data.extend_from_slice(&extra);
    let (data, end) = server.read_all(VICTIM).await;
    assert!(data == expected_data, "the data survives another restart");
    assert_eq!(end, extra_tail);
    let (control, _) = server.read_all(CONTROL).await;
    assert!(control == seeded.control, "the control stream is intact");
    let output = server.stop().await;
    assert!(
        !output.contains(DAMAGE_WARNING),
        "the restart after the repair reported damage again:\n{output}"
    );
}

// ---------------------------------------------------------------------------
// The scenarios.
// ---------------------------------------------------------------------------

/// A log cut in the middle of its last record's body (a torn write): the
/// last append is dropped whole.
async fn truncated_inside_last_record(mode: Mode) {
    let seeded = seed("torn-body", mode).await;
    let start = seeded.last_record_start();
    let body_len = seeded.last_record_end() - start - HEADER;
    let cut = start + HEADER + body_len / 2;
    truncate(&seeded.log, cut);

    let kept = seeded.appends.len() - 1;
    assert_recovers(
        &seeded,
        kept,
        &ExpectedWarning {
            position: start,
            discarded_bytes: cut - start,
            reason: "runs past the end of the log".into(),
        },
    )
    .await;
}

/// Bytes after the last record that are not a record: all acknowledged
/// data stays, the garbage goes. Two kinds: noise, and a well-formed header
/// whose body fails its checksum.
async fn garbage_after_last_record(mode: Mode) {
    let mut forged = Vec::new();
    forged.extend_from_slice(&32u32.to_le_bytes());
    forged.extend_from_slice(&0xdead_beef_u32.to_le_bytes());
    forged.extend_from_slice(&pattern(7, 32));
    let mut noise = pattern(42, 100);
    // A length far beyond the end of the file.
    noise[..4].copy_from_slice(&0x7fff_fff0_u32.to_le_bytes());
    for (garbage, reason) in [
        (noise, "runs past the end of the log"),
        (forged, "checksum mismatch in record at"),
    ] {
        let seeded = seed("garbage", mode).await;
        let end = seeded.last_record_end();
        append_bytes(&seeded.log, &garbage);

        let kept = seeded.appends.len();
        assert_recovers(
            &seeded,
            kept,
            &ExpectedWarning {
                position: end,
                discarded_bytes: garbage.len() as u64,
                reason: reason.to_owned(),
            },
        )
        .await;
    }
}

/// Zeros after the last record, as a filesystem can leave when a crash
/// lands after the file grew but before its data reached the disk: they are
/// not a record, so all acknowledged data stays and the zeros go.
async fn zero_filled_tail(mode: Mode) {
    let seeded = seed("zeros", mode).await;
    let end = seeded.last_record_end();
    append_bytes(&seeded.log, &[0; 4096]);

    let kept = seeded.appends.len();
    assert_recovers(
        &seeded,
        kept,
        &ExpectedWarning {
            position: end,
            discarded_bytes: 4096,
            reason: String::new(),
        },
    )
    .await;
}

/// One byte of the last append's data inverted (bit rot, a misdirected
/// write): the checksum rejects the record and the append is dropped.
async fn flipped_byte_in_last_record(mode: Mode) {
    let seeded = seed("flipped", mode).await;
    let start = seeded.last_record_start();
    let end = seeded.last_record_end();
    let payload = &seeded.appends.last().expect("appends were made").payload;
    // A plain append's body ends with its data.
    let at = end - payload.len() as u64 + payload.len() as u64 / 2;
    let old = flip_byte(&seeded.log, at);
    assert_eq!(
        old,
        payload[payload.len() / 2],
        "the flipped byte is the last append's data"
    );

    let kept = seeded.appends.len() - 1;
    assert_recovers(
        &seeded,
        kept,
        &ExpectedWarning {
            position: start,
            discarded_bytes: end - start,
            reason: format!("checksum mismatch in record at {start}"),
        },
    )
    .await;
}

/// A log cut inside the 8-byte header of its last record (1, 4 and 7 bytes
/// of it left): the last append is dropped whole.
async fn truncated_inside_last_header(mode: Mode) {
    for remnant in [1, 4, 7] {
        let seeded = seed("torn-header", mode).await;
        let start = seeded.last_record_start();
        truncate(&seeded.log, start + remnant);

        let kept = seeded.appends.len() - 1;
        assert_recovers(
            &seeded,
            kept,
            &ExpectedWarning {
                position: start,
                discarded_bytes: remnant,
                reason: format!("torn record header at {start}"),
            },
        )
        .await;
    }
}

/// A creation interrupted before its rename (`streams/999.new`) and a
/// deletion interrupted before its removal (`trash/5`), each a complete
/// copy of a real stream under another name: both are removed at startup
/// and neither name exists.
async fn leftover_staging_and_trash_removed(mode: Mode) {
    let seeded = seed("leftovers", mode).await;
    let victim_dir = seeded.log.parent().expect("the log has a directory");
    let staging = seeded.scratch.streams_dir().join("999.new");
    let trashed = seeded.scratch.trash_dir().join("5");
    copy_stream_dir(victim_dir, &staging, "ghost-staged");
    copy_stream_dir(victim_dir, &trashed, "ghost-trashed");
    // A deletion can also be interrupted halfway through removing files.
    let half_removed = seeded.scratch.trash_dir().join("6");
    fs::create_dir_all(&half_removed).expect("create trash/6");
    fs::write(half_removed.join("log"), b"partial").expect("write trash/6/log");

    let server = Server::start(&seeded.scratch).await;
    assert!(!staging.exists(), "streams/999.new was not removed");
    assert!(!trashed.exists(), "trash/5 was not removed");
    assert!(!half_removed.exists(), "trash/6 was not removed");
    let left: Vec<String> = fs::read_dir(seeded.scratch.trash_dir())
        .expect("list trash/")
        .map(|entry| {
            entry
                .expect("read trash/")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert!(left.is_empty(), "trash/ still holds {left:?}");
    let mut streams: Vec<String> = fs::read_dir(seeded.scratch.streams_dir())
        .expect("list streams/")
        .map(|entry| {
            entry
                .expect("read streams/")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    streams.sort();
    assert_eq!(streams, ["1", "2"], "only the two real streams remain");

    for ghost in ["ghost-staged", "ghost-trashed"] {
        assert_eq!(
            server.status_of(server.head(ghost)).await,
            StatusCode::NOT_FOUND,
            "HEAD {ghost}"
        );
        assert_eq!(
            server
                .status_of(server.get(ghost).query(&[("offset", "-1")]))
                .await,
            StatusCode::NOT_FOUND,
            "GET {ghost}"
        );
    }

    // The real streams are whole, and new streams can be created.
    let all = seeded.appends.len();
    let (data, end) = server.read_all(VICTIM).await;
    assert!(data == seeded.data(all), "the victim is intact");
    assert_eq!(end, seeded.offset_after(all));
    let (control, _) = server.read_all(CONTROL).await;
    assert!(control == seeded.control, "the control stream is intact");
    server.create("fresh").await;
    let fresh = pattern(5, 64);
    let fresh_tail = server.append("fresh", &fresh).await;
    let output = server.stop().await;
    assert!(
        !output.contains(DAMAGE_WARNING),
        "no log was damaged:\n{output}"
    );

    // The ghosts stay gone and the new stream stays, across a restart.
    let server = Server::start(&seeded.scratch).await;
    for ghost in ["ghost-staged", "ghost-trashed"] {
        assert_eq!(
            server.status_of(server.head(ghost)).await,
            StatusCode::NOT_FOUND,
            "HEAD {ghost} after another restart"
        );
    }
    let (data, end) = server.read_all("fresh").await;
    assert!(data == fresh, "the stream created after recovery survives");
    assert_eq!(end, fresh_tail);
    server.stop().await;
}

/// Anything in `trash/` is removed at startup, a plain file included (a
/// deletion only ever leaves directories there, but the directory is the
/// server's to clean).
async fn stray_file_in_trash_removed(mode: Mode) {
    let seeded = seed("stray-trash", mode).await;
    let stray = seeded.scratch.trash_dir().join("stray");
    fs::write(&stray, b"not a stream").expect("write trash/stray");

    let server = Server::start(&seeded.scratch).await;
    assert!(!stray.exists(), "trash/stray was not removed");
    let all = seeded.appends.len();
    let (data, end) = server.read_all(VICTIM).await;
    assert!(data == seeded.data(all), "the victim is intact");
    assert_eq!(end, seeded.offset_after(all));
    server.stop().await;
}

/// Producer state lives in the same record as the data it accepted, so
/// dropping a record drops both: after the record of `(p, 0, 2)` is cut, the
/// producer resumes at seq 1 — seq 3 is a gap, seq 1 a duplicate, and a
/// retry of seq 2 is new data again.
async fn producer_state_dropped_with_its_record(mode: Mode) {
    const PRODUCER: &str = "producer-a";
    let scratch = Scratch::new("producer", mode);
    let server = Server::start(&scratch).await;
    server.create(CONTROL).await;
    server.create(VICTIM).await;
    let log = newest_stream_dir(&scratch, VICTIM).join("log");
    let payloads: Vec<Vec<u8>> = [(11, 300), (12, 20), (13, 4000)]
        .iter()
        .map(|&(seed, len)| pattern(seed, len))
        .collect();
    let mut offsets = Vec::new();
    let mut log_ends = Vec::new();
    for (seq, payload) in (0u64..).zip(&payloads) {
        let response = server.produce(VICTIM, PRODUCER, 0, seq, payload).await;
        assert_eq!(response.status(), StatusCode::OK, "seq {seq} is new data");
        assert_eq!(
            header(&response, "producer-seq").as_deref(),
            Some(seq.to_string().as_str())
        );
        offsets.push(next_offset(&response));
        log_ends.push(file_len(&log));
    }
    server.stop().await;
    assert_eq!(
        record_ends(&fs::read(&log).expect("read the log")),
        log_ends,
        "one record per acknowledged producer append"
    );

    // Cut the record of seq 2 (its data and its producer state) in half.
    let start = log_ends[1];
    let cut = start + (log_ends[2] - start) / 2;
    truncate(&log, cut);

    let server = Server::start(&scratch).await;
    assert_eq!(file_len(&log), start, "the log ends after seq 1's record");
    let (data, end) = server.read_all(VICTIM).await;
    assert!(data == payloads[..2].concat(), "seq 0 and 1 are intact");
    assert_eq!(end, offsets[1]);

    // The producer's state is that of seq 1: seq 3 would skip seq 2.
    let response = server.produce(VICTIM, PRODUCER, 0, 3, &payloads[2]).await;
    assert_eq!(response.status(), StatusCode::CONFLICT, "seq 3 is a gap");
    assert_eq!(
        header(&response, "producer-expected-seq").as_deref(),
        Some("2")
    );
    assert_eq!(
        header(&response, "producer-received-seq").as_deref(),
        Some("3")
    );
    // Seq 1 is still known: a duplicate, nothing appended.
    let response = server.produce(VICTIM, PRODUCER, 0, 1, &payloads[1]).await;
    assert_eq!(
        response.status(),
        StatusCode::NO_CONTENT,
        "seq 1 is a duplicate"
    );
    assert_eq!(server.tail(VICTIM).await, offsets[1]);
    // The retry of seq 2 is new data, and lands where seq 2 first did.
    let response = server.produce(VICTIM, PRODUCER, 0, 2, &payloads[2]).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the retried seq 2 is new data"
    );
    assert_eq!(header(&response, "producer-seq").as_deref(), Some("2"));
    assert_eq!(next_offset(&response), offsets[2]);
    // And now it is a duplicate in turn.
    let response = server.produce(VICTIM, PRODUCER, 0, 2, &payloads[2]).await;
    assert_eq!(
        response.status(),
        StatusCode::NO_CONTENT,
        "seq 2 again is a duplicate"
    );
    let (data, end) = server.read_all(VICTIM).await;
    assert!(data == payloads.concat(), "each sequence is stored once");
    assert_eq!(end, offsets[2]);
    let output = server.stop().await;
    assert_damage_warning(
        &output,
        &ExpectedWarning {
            position: start,
            discarded_bytes: cut - start,
            reason: "runs past the end of the log".into(),
        },
    );

    // The accepted retry's producer state persisted with it.
    let server = Server::start(&scratch).await;
    let response = server.produce(VICTIM, PRODUCER, 0, 2, &payloads[2]).await;
    assert_eq!(
        response.status(),
        StatusCode::NO_CONTENT,
        "seq 2 is a duplicate after another restart"
    );
    let next = pattern(14, 10);
    let response = server.produce(VICTIM, PRODUCER, 0, 3, &next).await;
    assert_eq!(response.status(), StatusCode::OK, "seq 3 follows");
    let (data, _) = server.read_all(VICTIM).await;
    assert!(data == [payloads.concat(), next].concat());
    let output = server.stop().await;
    assert!(!output.contains(DAMAGE_WARNING), "clean restart:\n{output}");
}
