//! End-to-end runs of every ds-load scenario against the real
//! stream-server, started in-process on an ephemeral loopback port with
//! memory storage. Each run lasts about a second and must see no errors,
//! no lost, duplicated or reordered messages, no corrupt reads, no append
//! a subscription's worker was never woken for, and some throughput. The
//! last test drives the `ds-load` binary itself, then charts its output.

use ds_load::client::Connection;
use ds_load::scenarios::RunContext;
use ds_load::scenarios::append::{self, AppendMode, AppendOptions};
use ds_load::scenarios::churn::{self, ChurnOptions};
use ds_load::scenarios::delivery::{DeliveryOutcome, Transport};
use ds_load::scenarios::fanout::{self, FanoutOptions};
use ds_load::scenarios::live::{self, LiveOptions};
use ds_load::scenarios::read::{self, ReadOptions};
use ds_load::scenarios::subscriptions::consumer::AckScope;
use ds_load::scenarios::subscriptions::{self, SubscriptionsOptions};
use ds_load::target::Target;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use stream_server::config::Config;
use stream_server::server::{ServeError, serve};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Where the server mounts streams by default.
const BASE_PATH: &str = "/v1/stream";

/// The server under test; stops when dropped.
struct Server {
    base_url: String,
    _shutdown: oneshot::Sender<()>,
    _task: JoinHandle<Result<(), ServeError>>,
}

async fn start_server() -> Server {
    let mut config = Config::default();
    config.server.long_poll_timeout_secs = 1.0;
    config.server.shutdown_grace_secs = 1.0;
    // Small read chunks, so full reads must follow Stream-Next-Offset.
    config.http.max_read_bytes = 64 * 1024;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let addr = listener.local_addr().expect("listener address");
    let (shutdown, stop) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(config, listener, async move {
        let _ = stop.await;
    }));
    let base_url = format!("http://{addr}{BASE_PATH}");
    wait_until_healthy(&format!("http://{addr}")).await;
    Server {
        base_url,
        _shutdown: shutdown,
        _task: task,
    }
}

async fn wait_until_healthy(origin: &str) {
    let target = Arc::new(Target::new(origin, None).expect("origin URL"));
    let mut connection = Connection::new(Arc::clone(&target), Duration::from_secs(1));
    for _ in 0..200 {
        let request = target
            .request(http::Method::GET, "/healthz")
            .body(Default::default())
            .expect("health request");
        if let Ok(reply) = connection.send(request).await
            && reply.status.is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the server at {origin} never became healthy");
}

fn context(server: &Server, duration: Duration) -> RunContext {
    let target = Target::new(&server.base_url, None).expect("base URL");
    let mut context = RunContext::new(
        Arc::new(target),
        duration,
        Duration::from_secs(10),
        "ds-load-test",
    );
    context.quiet = true;
    context
}

fn assert_clean_delivery(outcome: &DeliveryOutcome, subscribers: usize) {
    let subs = &outcome.subscribers;
    assert!(outcome.writer.sent > 0, "{outcome:#?}");
    assert_eq!(outcome.writer.errors.total(), 0, "{outcome:#?}");
    assert_eq!(subs.errors.total(), 0, "{outcome:#?}");
    assert_eq!(subs.lost, 0, "{outcome:#?}");
    assert_eq!(subs.duplicates, 0, "{outcome:#?}");
    assert_eq!(subs.reordered, 0, "{outcome:#?}");
    assert_eq!(subs.complete, subscribers, "{outcome:#?}");
    assert_eq!(subs.connected_before_writing, subscribers, "{outcome:#?}");
    assert_eq!(subs.deliveries, outcome.writer.sent * subscribers as u64);
    assert_eq!(subs.latency.count, subs.deliveries);
    assert!(subs.latency.p99_ms > 0.0);
    assert_eq!(outcome.problems(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_in_every_mode() {
    let server = start_server().await;
    for mode in [AppendMode::Plain, AppendMode::Producer, AppendMode::Json] {
        let options = AppendOptions {
            connections: 4,
            streams: 3,
            body_size: 128,
            mode,
            batch: 5,
            // The server runs in this process: its CPU time is ours.
            server_pid: (mode == AppendMode::Plain).then(std::process::id),
        };
        let outcome = append::run(&context(&server, Duration::from_millis(700)), &options)
            .await
            .expect("append run");
        assert!(outcome.appends > 0, "{mode:?}: {outcome:#?}");
        assert!(outcome.appends_per_s > 0.0);
        assert!(outcome.mb_per_s > 0.0);
        assert_eq!(outcome.errors.total(), 0, "{mode:?}: {outcome:#?}");
        assert_eq!(outcome.producer_duplicates, 0, "{mode:?}");
        assert_eq!(outcome.connections_opened, 4, "{mode:?}");
        assert_eq!(outcome.latency.count, outcome.appends);
        let per_append = if mode == AppendMode::Json { 5 } else { 1 };
        assert_eq!(outcome.messages, outcome.appends * per_append);
        match (mode, outcome.server_cpu) {
            (AppendMode::Plain, Some(cpu)) => {
                assert!(cpu.total_us_per_append > 0.0, "{cpu:?}");
                let parts = cpu.user_us_per_append + cpu.system_us_per_append;
                assert!((cpu.total_us_per_append - parts).abs() < 1e-9, "{cpu:?}");
            }
            (AppendMode::Plain, None) => panic!("no server CPU with --server-pid"),
            (_, cpu) => assert!(cpu.is_none(), "{mode:?}: CPU without --server-pid"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_verifies_every_byte() {
    let server = start_server().await;
    let options = ReadOptions {
        stream_size: 300 * 1024 + 7,
        connections: 3,
        append_size: 10_000,
    };
    let outcome = read::run(&context(&server, Duration::from_secs(1)), &options)
        .await
        .expect("read run");
    assert!(outcome.full_reads > 0, "{outcome:#?}");
    assert_eq!(outcome.verification_failures, 0, "{outcome:#?}");
    assert_eq!(outcome.errors.total(), 0, "{outcome:#?}");
    assert_eq!(outcome.bytes, outcome.full_reads * options.stream_size);
    assert!(outcome.mb_per_s > 0.0);
    // 300 KiB in chunks of at most 64 KiB.
    assert!(outcome.requests_per_full_read >= 5.0, "{outcome:#?}");
}

fn live_options(transport: Transport) -> LiveOptions {
    LiveOptions {
        rate: 200.0,
        subscribers: 20,
        transport,
        message_size: 64,
        connect_concurrency: 8,
        connect_timeout: Duration::from_secs(5),
        drain: Duration::from_secs(5),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_over_sse_delivers_everything_once_in_order() {
    let server = start_server().await;
    let outcome = live::run(
        &context(&server, Duration::from_secs(1)),
        &live_options(Transport::Sse),
    )
    .await
    .expect("live run");
    assert_clean_delivery(&outcome.delivery, 20);
    assert_eq!(outcome.delivery.subscribers.stayed_connected, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_over_long_poll_delivers_everything_once_in_order() {
    let server = start_server().await;
    let outcome = live::run(
        &context(&server, Duration::from_secs(1)),
        &live_options(Transport::LongPoll),
    )
    .await
    .expect("live run");
    assert_clean_delivery(&outcome.delivery, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_keeps_subscribers_connected_and_measures_memory() {
    let server = start_server().await;
    let options = FanoutOptions {
        subscribers: 300,
        rate: 20.0,
        message_size: 64,
        // The server runs in this process.
        server_pid: Some(std::process::id()),
        connect_concurrency: 64,
        connect_timeout: Duration::from_secs(10),
        drain: Duration::from_secs(5),
    };
    let outcome = fanout::run(&context(&server, Duration::from_secs(1)), &options)
        .await
        .expect("fanout run");
    assert_clean_delivery(&outcome.delivery, 300);
    assert_eq!(outcome.delivery.subscribers.stayed_connected, 300);
    assert_eq!(outcome.delivery.subscribers.peak_connected, 300);
    let memory = outcome.server_memory.expect("memory measured");
    assert!(memory.before_bytes > 0 && memory.connected_bytes > 0);
    assert!(memory.peak_bytes >= memory.connected_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_cycles_cleanly() {
    let server = start_server().await;
    let options = ChurnOptions {
        connections: 3,
        body_size: 2048,
    };
    let outcome = churn::run(&context(&server, Duration::from_secs(1)), &options)
        .await
        .expect("churn run");
    assert!(outcome.cycles > 0, "{outcome:#?}");
    assert_eq!(outcome.errors.total(), 0, "{outcome:#?}");
    assert_eq!(outcome.verification_failures, 0, "{outcome:#?}");
    assert_eq!(outcome.steps.delete.count, outcome.cycles);
}

fn subscriptions_options(no_subscription: bool, transport: Transport) -> SubscriptionsOptions {
    SubscriptionsOptions {
        connections: 4,
        streams: 200,
        body_size: 64,
        no_subscription,
        pattern: "**".into(),
        transport,
        ack: AckScope::Pending,
        lease_ttl: Duration::from_secs(30),
        drain: Duration::from_secs(5),
        server_pid: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_wake_the_consumer_for_every_append() {
    let server = start_server().await;
    for transport in [Transport::Sse, Transport::LongPoll] {
        let options = subscriptions_options(false, transport);
        let outcome = subscriptions::run(&context(&server, Duration::from_secs(1)), &options)
            .await
            .expect("subscriptions run");
        assert!(outcome.subscribed);
        assert!(outcome.appends > 0, "{transport:?}: {outcome:#?}");
        assert_eq!(outcome.errors.total(), 0, "{transport:?}: {outcome:#?}");
        let consumer = outcome.consumer.as_ref().expect("a consumer ran");
        assert_eq!(consumer.errors.total(), 0, "{transport:?}: {outcome:#?}");
        assert!(consumer.wake_events > 0, "{transport:?}: {outcome:#?}");
        assert!(consumer.claims > 0 && consumer.acks > 0, "{outcome:#?}");
        assert!(consumer.wake_latency.count > 0, "{outcome:#?}");
        assert!(consumer.data_wait.p99_ms >= consumer.wake_latency.p99_ms);
        // Every append was covered by an ack by the end of the drain.
        assert_eq!(outcome.unacked_appends, 0, "{transport:?}: {outcome:#?}");
        assert_eq!(ds_load::report::Outcome::headline(&outcome).problems, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_baseline_appends_without_a_consumer() {
    let server = start_server().await;
    let options = subscriptions_options(true, Transport::Sse);
    let outcome = subscriptions::run(&context(&server, Duration::from_millis(700)), &options)
        .await
        .expect("subscriptions run");
    assert!(!outcome.subscribed);
    assert!(outcome.consumer.is_none());
    assert!(outcome.appends > 0, "{outcome:#?}");
    assert_eq!(outcome.errors.total(), 0, "{outcome:#?}");
    assert_eq!(outcome.latency.count, outcome.appends);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_writes_json_and_charts_it() {
    let server = start_server().await;
    let dir = tempfile::tempdir().expect("scratch dir");
    let results = dir.path().join("results.jsonl");
    let base_url = server.base_url.clone();
    let results_arg = results.clone();
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ds-load"))
            .args(["append", "--url", &base_url, "--token", "t0ken"])
            .args([
                "--duration",
                "500ms",
                "--connections",
                "2",
                "--streams",
                "2",
            ])
            .args(["--label", "in-process", "--quiet", "--strict", "--json"])
            .arg(&results_arg)
            .output()
            .expect("run ds-load")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("appends/s"), "{stdout}");

    let records = ds_load::report::read_records(&results).expect("records");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].scenario, "append");
    assert_eq!(records[0].label, "in-process");
    assert_eq!(records[0].parameters["connections"], 2);
    assert!(records[0].headline.throughput.unwrap_or(0.0) > 0.0);

    let chart: PathBuf = dir.path().join("chart.svg");
    let table = dir.path().join("table.md");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ds-load"))
        .arg("chart")
        .arg("--out")
        .arg(&chart)
        .arg("--markdown")
        .arg(&table)
        .arg(&results)
        .output()
        .expect("run ds-load chart");
    assert!(output.status.success(), "{output:?}");
    let svg = std::fs::read_to_string(&chart).expect("chart written");
    assert!(svg.contains("<svg") && svg.contains("in-process"));
    let markdown = std::fs::read_to_string(&table).expect("table written");
    assert!(markdown.contains("| append |"));
}
