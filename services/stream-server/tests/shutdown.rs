//! Graceful shutdown: firing the shutdown future passed to `serve` ends open
//! SSE responses and in-flight long-polls promptly (long before their own
//! timeouts), `serve` returns `Ok`, and no new connections are accepted.

mod common;

use common::{ControlEvent, TestServer, header, next_offset, open_sse, send};
use reqwest::StatusCode;
use std::time::{Duration, Instant};

#[tokio::test]
async fn shutdown_ends_live_reads_and_serve_returns_ok() {
    let mut server = TestServer::start_with(|c| {
        c.server.long_poll_timeout_secs = 60.0;
        c.server.sse_reconnect_interval_secs = 60.0;
        c.server.shutdown_grace_secs = 10.0;
    })
    .await;
    let tail = server.create("s", "text/plain").await;

    let mut events = open_sse(&server, "s", &tail).await;
    assert_eq!(events.expect_event().await.control()["upToDate"], true);

    let poll = tokio::spawn(send(
        server
            .get("s")
            .query(&[("offset", tail.as_str()), ("live", "long-poll")]),
    ));
    // Let the long-poll reach the server and start waiting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!poll.is_finished(), "the long-poll is waiting");

    let started = Instant::now();
    server.trigger_shutdown();

    let end = events.next_within(Duration::from_secs(2)).await;
    assert!(
        end.is_none(),
        "the SSE response ends without more events: {end:?}"
    );

    let poll = tokio::time::timeout(Duration::from_secs(2), poll)
        .await
        .expect("the long-poll ended promptly")
        .expect("the long-poll task panicked");
    assert_eq!(poll.status(), StatusCode::NO_CONTENT);
    assert_eq!(next_offset(&poll), tail);
    assert_eq!(header(&poll, "stream-up-to-date").as_deref(), Some("true"));

    let served = server.stopped(Duration::from_secs(3)).await;
    assert!(served.is_ok(), "serve() failed: {served:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown took {:?} with a 10 s grace period",
        started.elapsed()
    );

    // The listener is gone.
    let after = server
        .client
        .get(format!("{}/healthz", server.base))
        .send()
        .await;
    assert!(
        after.is_err(),
        "a request succeeded after shutdown: {after:?}"
    );
}

#[tokio::test]
async fn an_idle_server_stops_at_once() {
    let server = TestServer::start().await;
    server.create("s", "text/plain").await;
    server.append("s", "text/plain", "x").await;
    let started = Instant::now();
    let served = server.shutdown().await;
    assert!(served.is_ok(), "serve() failed: {served:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

/// A request that never completes (half its body sent) holds a connection
/// open: the drain waits for it only as long as the grace period, then
/// closes it, and `serve` still returns `Ok`.
#[tokio::test]
async fn connections_still_open_after_the_grace_period_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut server = TestServer::start_with(|c| c.server.shutdown_grace_secs = 0.5).await;
    server.create("s", "text/plain").await;
    let mut stalled = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    stalled
        .write_all(
            b"POST /v1/stream/s HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\ncontent-length: 10\r\n\r\nhalf",
        )
        .await
        .expect("send half a request");
    // Let the server start reading the request.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = Instant::now();
    server.trigger_shutdown();
    let served = server.stopped(Duration::from_secs(3)).await;
    assert!(served.is_ok(), "serve() failed: {served:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "the stalled request was given its grace period: {took:?}"
    );
    // Closed (a clean end or a reset), with nothing answered.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), stalled.read_to_end(&mut rest))
        .await
        .expect("the connection was closed");
    assert!(
        rest.is_empty(),
        "the unfinished request got an answer: {:?}",
        String::from_utf8_lossy(&rest)
    );
}
