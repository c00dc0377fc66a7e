//! Throughput of each storage mode over real HTTP against an in-process
//! server: appends per second for 64 writers on 64 streams and on one
//! stream (256-byte bodies), and catch-up read bytes per second from one
//! large stream.
//!
//! `cargo bench -p stream-server --bench throughput`; `BENCH_MODES`
//! (default `memory file-fast file-durable acid`) picks the modes and
//! `BENCH_READ_MIB` (default 1024) the size of the read stream.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::net::TcpListener;
use std::time::{Duration, Instant};
use stream_server::config::Config;
use stream_server::storage::StorageMode;
use tempfile::TempDir;
use tokio::runtime::Runtime;

const WRITERS: usize = 64;
const BODY: [u8; 256] = [b'x'; 256];

struct Server {
    base: String,
    client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Removed after the server is told to stop.
    _data_dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn start(mode: StorageMode) -> Server {
    let data_dir = tempfile::Builder::new()
        .prefix(&format!("ds-bench-{mode}-"))
        .tempdir()
        .expect("scratch dir");
    let mut config = Config::default();
    config.storage.mode = mode;
    config.storage.data_dir = data_dir.path().to_path_buf();
    config.limits.max_memory_bytes = 0;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let base = format!(
        "http://{}/v1/stream",
        listener.local_addr().expect("address")
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(stream_server::server::serve(config, listener, async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if client
            .get(format!("{base}/ready-probe"))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Server {
        base,
        client,
        stop: Some(stop),
        _data_dir: data_dir,
    }
}

impl Server {
    async fn create(&self, name: &str) {
        let response = self
            .client
            .put(format!("{}/{name}", self.base))
            .header("content-type", "application/octet-stream")
            .send()
            .await
            .expect("create");
        assert!(
            response.status().is_success(),
            "create {name}: {}",
            response.status()
        );
    }

    /// `total` appends by `WRITERS` concurrent writers over `streams` streams.
    async fn append_concurrently(&self, streams: usize, total: u64) -> Duration {
        let started = Instant::now();
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let client = self.client.clone();
                let url = format!("{}/bench-{}", self.base, w % streams);
                let count = total / WRITERS as u64 + u64::from((w as u64) < total % WRITERS as u64);
                tokio::spawn(async move {
                    for _ in 0..count {
                        let response = client
                            .post(&url)
                            .header("content-type", "application/octet-stream")
                            .body(&BODY[..])
                            .send()
                            .await
                            .expect("append");
                        assert!(
                            response.status().is_success(),
                            "append: {}",
                            response.status()
                        );
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.expect("writer");
        }
        started.elapsed()
    }

    /// Reads the whole stream, following `Stream-Next-Offset`; returns bytes.
    async fn read_all(&self, name: &str) -> u64 {
        let mut offset = "-1".to_owned();
        let mut total = 0;
        loop {
            let response = self
                .client
                .get(format!("{}/{name}?offset={offset}", self.base))
                .send()
                .await
                .expect("read");
            let up_to_date = response.headers().contains_key("stream-up-to-date");
            offset = response
                .headers()
                .get("stream-next-offset")
                .and_then(|v| v.to_str().ok())
                .expect("next offset")
                .to_owned();
            total += response.bytes().await.expect("body").len() as u64;
            if up_to_date {
                return total;
            }
        }
    }
}

fn modes() -> Vec<StorageMode> {
    let names = std::env::var("BENCH_MODES")
        .unwrap_or_else(|_| "memory file-fast file-durable acid".into());
    names
        .split_whitespace()
        .map(|name| {
            serde_json::from_value(serde_json::Value::String(name.to_owned()))
                .unwrap_or_else(|_| panic!("unknown storage mode {name:?} in BENCH_MODES"))
        })
        .collect()
}

fn throughput(c: &mut Criterion) {
    let runtime = Runtime::new().expect("runtime");
    let read_mib: u64 = std::env::var("BENCH_READ_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    for mode in modes() {
        let server = runtime.block_on(async {
            let server = start(mode).await;
            for i in 0..WRITERS {
                server.create(&format!("bench-{i}")).await;
            }
            server
        });

        let mut appends = c.benchmark_group(format!("append-256B/{mode}"));
        appends.throughput(Throughput::Elements(1));
        appends.sample_size(10);
        appends.measurement_time(Duration::from_secs(8));
        for (label, streams) in [
            ("64-writers-64-streams", WRITERS),
            ("64-writers-1-stream", 1),
        ] {
            appends.bench_function(label, |b| {
                b.to_async(&runtime)
                    .iter_custom(|iters| server.append_concurrently(streams, iters))
            });
        }
        appends.finish();

        let size = runtime.block_on(async {
            server.create("big").await;
            let chunk = vec![b'r'; 1024 * 1024];
            for _ in 0..read_mib {
                server
                    .client
                    .post(format!("{}/big", server.base))
                    .header("content-type", "application/octet-stream")
                    .body(chunk.clone())
                    .send()
                    .await
                    .expect("fill");
            }
            server.read_all("big").await
        });
        let mut reads = c.benchmark_group(format!("catch-up-read/{mode}"));
        reads.throughput(Throughput::Bytes(size));
        reads.sample_size(10);
        reads.bench_function(format!("{read_mib}MiB-stream"), |b| {
            b.to_async(&runtime).iter(|| server.read_all("big"))
        });
        reads.finish();
        runtime.block_on(async { drop(server) });
    }
}

criterion_group!(benches, throughput);
criterion_main!(benches);
