//! The gateway attacked: each finding of the security review reproduced as
//! it was made, and the refusal asserted. Slow-client limits are in
//! `tests/slow_clients.rs`; admin ceilings in `tests/admin.rs`.

mod common;

use bytes::Bytes;
use common::{Stack, inspecting_upstream, send};
use ds_load::sse::SseParser;
use futures_util::StreamExt;
use http::{HeaderValue, StatusCode};
use reqwest::Method;
use std::time::{Duration, Instant};

/// A client that speaks HTTP/2 without upgrade (h2c), as the attack did.
fn h2_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("h2 client")
}

/// Creates `path` directly on stream-server with `body` as its content.
async fn seed(stack: &Stack, path: &str, body: &'static str) {
    let created = send(
        stack
            .client
            .put(stack.upstream_url(path))
            .header("content-type", "text/plain")
            .body(body),
    )
    .await;
    assert_eq!(created.status(), StatusCode::CREATED, "seed {path}");
}

/// Finding 1: a fork source with a leading space, over HTTP/2, was
/// authorised as segments `[" ", "payroll"]` (matched by `*/*`) while the
/// server trimmed it and forked `payroll`.
#[tokio::test]
async fn a_fork_source_spelled_with_spaces_does_not_bypass_read_access() {
    let stack = Stack::start().await;
    seed(&stack, "payroll", "salaries").await;
    let token = stack
        .issue("mallory", &["read", "write"], &["mine/**", "*/*"])
        .await;

    let direct = stack
        .call(Method::GET, &stack.url("payroll"), &token.token)
        .await;
    assert_eq!(direct.status(), StatusCode::FORBIDDEN);

    for (client, protocol) in [(h2_client(), "h2"), (stack.client.clone(), "http/1.1")] {
        for spelling in [
            " /payroll",
            "\t/payroll ",
            " /v1/stream/payroll",
            "/ /payroll",
        ] {
            let target = stack.url(&format!("mine/copy-{}", spelling.len()));
            let fork = send(
                client
                    .put(&target)
                    .bearer_auth(&token.token)
                    .header("content-type", "text/plain")
                    .header(
                        "stream-forked-from",
                        HeaderValue::from_str(spelling).expect("value"),
                    ),
            )
            .await;
            assert!(
                matches!(
                    fork.status(),
                    StatusCode::FORBIDDEN | StatusCode::BAD_REQUEST
                ),
                "{protocol} {spelling:?}: {}",
                fork.status()
            );
            let copy = stack.call(Method::GET, &target, &token.token).await;
            assert_eq!(
                copy.status(),
                StatusCode::NOT_FOUND,
                "{protocol} {spelling:?}: nothing was forked"
            );
        }
    }

    // Two sources in one request: refused, so no reader picks another.
    let twice = send(
        h2_client()
            .put(stack.url("mine/twice"))
            .bearer_auth(&token.token)
            .header("content-type", "text/plain")
            .header("stream-forked-from", "/v1/stream/mine/x")
            .header("stream-forked-from", "/v1/stream/payroll"),
    )
    .await;
    assert_eq!(twice.status(), StatusCode::BAD_REQUEST);
    stack.finish().await;
}

/// Finding 2: an authenticated read answered `public, max-age=60` with no
/// `Vary: Authorization`, so a shared cache could serve it to anyone.
#[tokio::test]
async fn authenticated_reads_are_not_publicly_cacheable() {
    let stack = Stack::start().await;
    seed(&stack, "chat/a", "hello").await;
    let token = stack.issue("alice", &["read"], &["chat/**"]).await;

    let upstream_read = send(
        stack
            .client
            .get(format!("{}?offset=-1", stack.upstream_url("chat/a"))),
    )
    .await;
    let upstream_policy = upstream_read.headers()["cache-control"]
        .to_str()
        .expect("text")
        .to_owned();
    assert!(
        upstream_policy.contains("public"),
        "the server's own: {upstream_policy}"
    );

    let read = stack
        .call(
            Method::GET,
            &format!("{}?offset=-1", stack.url("chat/a")),
            &token.token,
        )
        .await;
    assert_eq!(read.status(), StatusCode::OK);
    let policy = read.headers()["cache-control"].to_str().expect("text");
    assert!(policy.starts_with("private"), "{policy}");
    assert!(!policy.contains("public"), "{policy}");
    assert!(
        policy.contains("max-age"),
        "the browser's cache keeps it: {policy}"
    );
    let vary: Vec<String> = read
        .headers()
        .get_all("vary")
        .iter()
        .map(|v| v.to_str().expect("text").to_ascii_lowercase())
        .collect();
    assert!(vary.iter().any(|v| v.contains("authorization")), "{vary:?}");
    assert_eq!(read.headers()["x-content-type-options"], "nosniff");
    assert!(
        read.headers()["content-security-policy"]
            .to_str()
            .expect("text")
            .contains("sandbox")
    );
    stack.finish().await;

    // An operator who puts a CDN in front on purpose may keep `public`,
    // still keyed by the token.
    let shared = Stack::start_with(|config| config.http.shared_cache = true).await;
    seed(&shared, "chat/a", "hello").await;
    let token = shared.issue("alice", &["read"], &["chat/**"]).await;
    let read = shared
        .call(
            Method::GET,
            &format!("{}?offset=-1", shared.url("chat/a")),
            &token.token,
        )
        .await;
    let policy = read.headers()["cache-control"].to_str().expect("text");
    assert!(policy.contains("public"), "{policy}");
    assert!(
        read.headers()
            .get_all("vary")
            .iter()
            .any(|v| v.to_str().unwrap_or_default().contains("authorization"))
    );
    shared.finish().await;
}

/// The gateway's own refusals carry the browser security headers too.
#[tokio::test]
async fn refusals_carry_the_security_headers() {
    let stack = Stack::start().await;
    let refused = send(stack.client.get(stack.url("chat/a"))).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(refused.headers()["x-content-type-options"], "nosniff");
    assert_eq!(
        refused.headers()["content-security-policy"],
        "default-src 'none'; sandbox"
    );
    stack.finish().await;
}

/// Finding 4: `**` backtracking over a 30k-segment path (or fork source)
/// held a worker for seconds. Paths beyond the server's limits are refused
/// before any pattern is tried, and patterns match in linear time.
#[tokio::test]
async fn overlong_paths_are_refused_before_matching() {
    let stack = Stack::start().await;
    let token = stack
        .issue("alice", &["read", "write"], &["**/a/**/b", "mine/**"])
        .await;
    // The sizes of the attack: refused by the head size limit (431) or,
    // where the head fits, by the path limits (400).
    let attack = stack.url(&format!("{}c", "a/".repeat(30_000)));
    let refused = stack.call(Method::GET, &attack, &token.token).await;
    let attack_fork = send(
        stack
            .client
            .put(stack.url("mine/x"))
            .bearer_auth(&token.token)
            .header("content-type", "text/plain")
            .header(
                "stream-forked-from",
                format!("/v1/stream/{}", "a/".repeat(36_000)),
            ),
    )
    .await;
    for status in [refused.status(), attack_fork.status()] {
        assert!(
            matches!(
                status,
                StatusCode::BAD_REQUEST | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            ),
            "{status}"
        );
    }
    // Heads that fit, with paths over the segment limit: refused before
    // any pattern is tried.
    let long = stack.url(&format!("{}c", "a/".repeat(5_000)));
    let probe = stack.call(Method::GET, &long, &token.token);
    let fork = send(
        stack
            .client
            .put(stack.url("mine/x"))
            .bearer_auth(&token.token)
            .header("content-type", "text/plain")
            .header(
                "stream-forked-from",
                format!("/v1/stream/{}", "a/".repeat(5_000)),
            ),
    );
    let health = async {
        // Meanwhile the gateway still answers.
        tokio::time::sleep(Duration::from_millis(5)).await;
        send(stack.client.get(format!("{}/healthz", stack.gateway.base))).await
    };
    let (probe, fork, health) = tokio::join!(probe, fork, health);
    assert_eq!(probe.status(), StatusCode::BAD_REQUEST);
    assert_eq!(fork.status(), StatusCode::BAD_REQUEST);
    assert_eq!(health.status(), StatusCode::OK);

    // Within the limits, the pattern still means what it says.
    let within = format!("{}b", "a/".repeat(20));
    let allowed = stack.create(&stack.url(&within), &token.token).await;
    assert_eq!(allowed.status(), StatusCode::CREATED);
    let outside = format!("{}c", "a/".repeat(20));
    let refused = stack.create(&stack.url(&outside), &token.token).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    stack.finish().await;
}

/// Waits until `body` fails or ends; returns how long after `since`.
async fn until_cut(
    mut body: impl futures_util::Stream<Item = reqwest::Result<Bytes>> + Unpin,
    since: &std::sync::Mutex<Option<Instant>>,
) -> Duration {
    loop {
        match body.next().await {
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => {
                let revoked = since.lock().expect("lock").expect("revoked before the cut");
                return revoked.elapsed();
            }
        }
    }
}

/// Finding 6: an SSE response kept delivering after `token revoke`, and a
/// long-poll or slow upload went on too.
#[tokio::test]
async fn revocation_ends_open_live_reads_and_uploads() {
    let stack = Stack::start().await;
    let token = stack.issue("alice", &["read", "write"], &["**"]).await;
    let url = stack.url("live/a");
    assert_eq!(
        stack.create(&url, &token.token).await.status(),
        StatusCode::CREATED
    );
    let appended = send(
        stack
            .client
            .post(&url)
            .bearer_auth(&token.token)
            .header("content-type", "text/plain")
            .body("first"),
    )
    .await;
    assert!(appended.status().is_success());

    // An SSE reader that has its first event.
    let sse = stack
        .call(
            Method::GET,
            &format!("{url}?offset=-1&live=sse"),
            &token.token,
        )
        .await;
    assert_eq!(sse.status(), StatusCode::OK);
    let mut events = sse.bytes_stream();
    let mut parser = SseParser::new();
    let first = loop {
        let chunk = events.next().await.expect("an event").expect("bytes");
        if let Some(event) = parser.feed(&chunk).into_iter().next() {
            break event;
        }
    };
    assert_eq!(first.data(), "first");

    // A long-poll waiting at the tail.
    let tail = send(stack.client.head(&url).bearer_auth(&token.token)).await;
    let offset = tail.headers()["stream-next-offset"]
        .to_str()
        .expect("offset")
        .to_owned();
    let long_poll = {
        let request = stack
            .client
            .get(format!("{url}?offset={offset}&live=long-poll"))
            .bearer_auth(&token.token);
        tokio::spawn(async move { request.send().await.map(|r| r.status()) })
    };

    // An upload sending a byte now and then.
    let (chunks, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    chunks
        .send(Ok(Bytes::from_static(b"slow ")))
        .await
        .expect("first chunk");
    let upload = {
        let request = stack
            .client
            .post(&url)
            .bearer_auth(&token.token)
            .header("content-type", "text/plain")
            .body(reqwest::Body::wrap_stream(tokio_stream_from(receiver)));
        tokio::spawn(async move { request.send().await.map(|r| r.status()) })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!long_poll.is_finished() && !upload.is_finished());

    let revoked = std::sync::Mutex::new(None);
    let cut = until_cut(&mut events, &revoked);
    let revoke = async {
        *revoked.lock().expect("lock") = Some(Instant::now());
        assert!(stack.store.revoke(&token.id).await.expect("revoke"));
    };
    let (sse_cut, ()) = tokio::join!(
        async { tokio::time::timeout(Duration::from_secs(5), cut).await },
        revoke
    );
    let sse_cut = sse_cut.expect("the SSE response ended");
    assert!(
        sse_cut < Duration::from_millis(1500),
        "SSE ended {sse_cut:?} after revocation"
    );

    let long_poll = tokio::time::timeout(Duration::from_secs(2), long_poll)
        .await
        .expect("the long-poll ended")
        .expect("task");
    assert!(
        matches!(long_poll, Ok(StatusCode::UNAUTHORIZED) | Err(_)),
        "long-poll after revocation: {long_poll:?}"
    );
    // The upload's next byte arrives after revocation: refused, not stored.
    let _ = chunks.send(Ok(Bytes::from_static(b"more"))).await;
    let upload = tokio::time::timeout(Duration::from_secs(2), upload)
        .await
        .expect("the upload ended")
        .expect("task");
    drop(chunks);
    assert!(
        matches!(upload, Ok(StatusCode::UNAUTHORIZED) | Err(_)),
        "upload after revocation: {upload:?}"
    );
    let stored = send(
        stack
            .client
            .get(format!("{}?offset=-1", stack.upstream_url("live/a"))),
    )
    .await;
    assert_eq!(
        stored.text().await.expect("text"),
        "first",
        "the slow upload stored nothing"
    );
    stack.finish().await;
}

/// The same bound for a token that simply expires while its SSE response
/// is open.
#[tokio::test]
async fn expiry_ends_an_open_live_read() {
    let stack = Stack::start().await;
    let token = stack
        .issue_for("alice", &["read", "write"], &["**"], Duration::from_secs(3))
        .await;
    let url = stack.url("live/expiring");
    assert_eq!(
        stack.create(&url, &token.token).await.status(),
        StatusCode::CREATED
    );
    let started = Instant::now();
    let sse = stack
        .call(
            Method::GET,
            &format!("{url}?offset=-1&live=sse"),
            &token.token,
        )
        .await;
    assert_eq!(sse.status(), StatusCode::OK);
    let mut events = sse.bytes_stream();
    let ended = tokio::time::timeout(Duration::from_secs(8), async {
        while let Some(Ok(_)) = events.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the SSE response ended");
    // Tokens carry whole seconds; it ends at the row's expiry.
    let lived = started.elapsed();
    assert!(
        lived > Duration::from_millis(1500) && lived < Duration::from_millis(4500),
        "ended after {lived:?}"
    );
    stack.finish().await;
}

/// `/readyz` needs no token: a flood of it must not become a flood of
/// database queries and upstream requests.
#[tokio::test]
async fn readiness_probes_at_most_once_per_interval() {
    let (upstream, inspection) = inspecting_upstream().await;
    let stack = Stack::in_front_of(upstream, |_| {}).await;
    let before = inspection
        .health_checks
        .load(std::sync::atomic::Ordering::SeqCst);
    let started = Instant::now();
    let answers = futures_util::future::join_all(
        (0..200).map(|_| send(stack.client.get(format!("{}/readyz", stack.gateway.base)))),
    )
    .await;
    assert!(answers.iter().all(|a| a.status() == StatusCode::OK));
    let probes = inspection
        .health_checks
        .load(std::sync::atomic::Ordering::SeqCst)
        - before;
    let intervals = started.elapsed().as_secs() + 2;
    assert!(
        probes <= intervals,
        "{probes} upstream probes for 200 readiness requests in {:?}",
        started.elapsed()
    );
    stack.finish().await;
}

/// A `Stream` of the chunks sent into `receiver`.
fn tokio_stream_from(
    receiver: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (chunk, receiver))
    })
}

/// A TCP relay to Postgres that can go silent: bytes stop flowing both ways
/// while every connection stays open, as in a network partition that sends
/// no reset.
struct SilentableRelay {
    addr: std::net::SocketAddr,
    silent: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SilentableRelay {
    async fn to(target: std::net::SocketAddr) -> SilentableRelay {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let silent = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = silent.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                for (mut from, mut to) in [
                    (
                        Box::new(client_read) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                        Box::new(server_write) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                    ),
                    (Box::new(server_read), Box::new(client_write)),
                ] {
                    let flag = flag.clone();
                    tokio::spawn(async move {
                        let mut buffer = vec![0u8; 16 * 1024];
                        loop {
                            let Ok(n) = from.read(&mut buffer).await else {
                                return;
                            };
                            if n == 0 {
                                return;
                            }
                            while flag.load(std::sync::atomic::Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            if to.write_all(&buffer[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        SilentableRelay { addr, silent }
    }

    fn go_silent(&self) {
        self.silent.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The LISTEN connection hung without an error: revocation could take the
/// full cache lifetime. Its heartbeat now notices within about a second, and
/// cached rows then count for one second only.
#[tokio::test]
async fn a_silent_database_partition_is_noticed_within_the_revocation_bound() {
    let database_url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let host_port = database_url
        .split_once('@')
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(host_port, _)| host_port.to_owned())
        .expect("DATABASE_URL is postgres://user@host:port/database");
    let target = tokio::net::lookup_host(host_port.as_str())
        .await
        .expect("resolve")
        .next()
        .expect("an address");
    let relay = SilentableRelay::to(target).await;
    // The gateway reaches Postgres through the relay; the test's own
    // writes go straight to it.
    let stack = Stack::start_with(|config| {
        config.database_url = config
            .database_url
            .replace(&host_port, &relay.addr.to_string());
    })
    .await;
    let token = stack.issue("alice", &["read", "write"], &["**"]).await;
    let url = stack.url("partitioned");
    assert_eq!(
        stack.create(&url, &token.token).await.status(),
        StatusCode::CREATED
    );

    relay.go_silent();
    let revoked = Instant::now();
    assert!(stack.store.revoke(&token.id).await.expect("revoke"));
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client");
    loop {
        let attempt = Instant::now();
        let accepted = matches!(
            quick.head(&url).bearer_auth(&token.token).send().await,
            Ok(response) if response.status() == StatusCode::OK
        );
        if !accepted {
            assert!(
                attempt.duration_since(revoked) < Duration::from_millis(2500),
                "the revoked token was accepted for {:?}",
                attempt.duration_since(revoked)
            );
            break;
        }
        assert!(
            revoked.elapsed() < Duration::from_secs(10),
            "still accepted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready: serde_json::Value = send(stack.client.get(format!("{}/readyz", stack.gateway.base)))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(ready["revocation_listener"], false);
    stack.finish().await;
}
