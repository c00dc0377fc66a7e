//! A 100 MB upload streams through the real gateway binary while its memory
//! stays flat: the body is never buffered.

mod common;

use auth_gateway::auth::token::{TokenKeys, generate_ed25519_pem};
use auth_gateway::tokens::issuer::{Authority, Issuer, TokenRequest};
use auth_gateway::tokens::store::TokenStore;
use common::{ScratchDb, inspecting_upstream};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

const UPLOAD_BYTES: u64 = 100_000_000;
const CHUNK_BYTES: usize = 64 * 1024;

/// The gateway binary, killed when dropped.
struct GatewayProcess(Child);

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `/proc/<pid>/status` field in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

#[tokio::test]
async fn a_100_mb_upload_passes_with_flat_gateway_memory() {
    let db = ScratchDb::create().await;
    let (upstream, inspection) = inspecting_upstream().await;
    let pem = generate_ed25519_pem().expect("keygen");
    let mut child = Command::new(env!("CARGO_BIN_EXE_auth-gateway"))
        .env("DATABASE_URL", &db.url)
        .env("GW_JWT__KEY", &pem)
        .env("GW_SERVER__PORT", "0")
        .env("GW_UPSTREAM__URL", &upstream.base)
        .env("GW_LIMITS__MAX_REQUEST_BODY_BYTES", "200000000")
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "auth_gateway=info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the gateway binary");
    let stderr = child.stderr.take().expect("stderr");
    let pid = child.id();
    let _process = GatewayProcess(child);
    let (found, address) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some((_, rest)) = line.split_once("listening on ") {
                let _ = found.send(
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
        }
    });
    let base = address
        .recv_timeout(Duration::from_secs(30))
        .expect("the gateway reports its address");

    let store = TokenStore::connect(&db.url).await.expect("connect");
    let keys = TokenKeys::ed25519_from_pem(&pem).expect("key");
    let issued = Issuer {
        store: &store,
        keys: &keys,
        issuer: "durable-streams-gateway",
        audience: "durable-streams",
    }
    .issue(
        TokenRequest {
            subject: "uploader".into(),
            scopes: vec!["write".parse().expect("scope")],
            streams: vec!["**".parse().expect("pattern")],
            ttl: Duration::from_secs(600),
            description: String::new(),
        },
        Authority::Operator,
    )
    .await
    .expect("issue");

    let client = reqwest::Client::new();
    // Warm up: the first request sets up pools and caches.
    let warm = client
        .post(format!("{base}/v1/stream/sink/warm"))
        .bearer_auth(&issued.token)
        .body(vec![0u8; CHUNK_BYTES])
        .send()
        .await
        .expect("warm-up");
    assert!(warm.status().is_success());
    let peak_before = status_kib(pid, "VmHWM:");

    let chunks =
        futures_util::stream::iter((0..UPLOAD_BYTES.div_ceil(CHUNK_BYTES as u64)).map(|i| {
            let remaining = UPLOAD_BYTES - i * CHUNK_BYTES as u64;
            let len = remaining.min(CHUNK_BYTES as u64) as usize;
            Ok::<_, std::io::Error>(bytes::Bytes::from(vec![(i % 251) as u8; len]))
        }));
    let response = client
        .post(format!("{base}/v1/stream/sink/big"))
        .bearer_auth(&issued.token)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .expect("upload");
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(inspection.sunk.load(Ordering::SeqCst), UPLOAD_BYTES);

    let peak_after = status_kib(pid, "VmHWM:");
    let growth_mib = (peak_after.saturating_sub(peak_before)) as f64 / 1024.0;
    eprintln!(
        "gateway peak RSS {:.1} MiB before, {:.1} MiB after a 100 MB upload",
        peak_before as f64 / 1024.0,
        peak_after as f64 / 1024.0
    );
    assert!(
        growth_mib < 16.0,
        "gateway memory grew by {growth_mib:.1} MiB during a 100 MB upload"
    );
    store.pool().close().await;
    db.drop_now().await;
}
