//! Slow and numerous clients at the gateway, which runs the same accept
//! loop and limits as stream-server (`GW_SERVER__HEADER_READ_TIMEOUT_SECS`
//! and the rest): a half-sent request is closed unanswered while others are
//! served; a body trickling in gets 408, not 502, and reaches no stream;
//! oversized heads get 431; connections over the limit are closed; and the
//! upstream pool never reuses a connection stream-server is closing.
//!
//! Timeouts are set small; each check is "closed within the timeout plus a
//! margin", a bound on behaviour, not a measure of speed.

mod common;

use common::{Stack, send, stream_server_with};
use reqwest::StatusCode;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Slack for scheduling on a busy machine, on top of a timeout.
const MARGIN: Duration = Duration::from_millis(1500);

/// The gateway's address, for raw connections.
fn address(stack: &Stack) -> String {
    stack
        .gateway
        .base
        .strip_prefix("http://")
        .expect("an http:// base")
        .to_owned()
}

/// Reads until the gateway closes the connection; returns what arrived
/// and when it closed. Fails the test if it is open after `within`.
async fn read_until_closed(socket: &mut TcpStream, within: Duration) -> (Vec<u8>, Instant) {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buffer)).await {
            Err(_) => panic!(
                "the connection is still open after {within:?}; received {:?}",
                String::from_utf8_lossy(&received)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return (received, Instant::now()),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

fn status_of(response: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(response);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 response: {text:?}"))
}

/// `GET /healthz` on fresh connections; every one must take far less than
/// `timeout`.
async fn assert_healthz_prompt(stack: &Stack, timeout: Duration) {
    for _ in 0..5 {
        let client = reqwest::Client::new();
        let started = Instant::now();
        let response = send(client.get(format!("{}/healthz", stack.gateway.base))).await;
        assert_eq!(response.status(), StatusCode::OK);
        let took = started.elapsed();
        assert!(
            took < timeout / 3,
            "/healthz took {took:?} beside slow clients"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn half_sent_requests_are_closed_unanswered_while_others_are_served() {
    const SLOW: usize = 200;
    let timeout = Duration::from_secs(2);
    let stack = Stack::start_with(|c| c.server.connections.header_read_timeout_secs = 2.0).await;
    let addr = address(&stack);
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let socket = TcpStream::connect(&addr).await.expect("connect");
        let (mut reader, mut writer) = socket.into_split();
        // An unauthenticated GET /healthz whose head never ends.
        let dribble = tokio::spawn(async move {
            let mut line = b"GET /healthz HTTP/1.1\r\nHost: gw\r\n".to_vec();
            while writer.write_all(&line).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(250)).await;
                line = b"X-Slow: 1\r\n".to_vec();
            }
        });
        slow.push(tokio::spawn(async move {
            let mut received = Vec::new();
            let mut buffer = [0u8; 1024];
            let ended = loop {
                match reader.read(&mut buffer).await {
                    Ok(0) | Err(_) => break Instant::now(),
                    Ok(n) => received.extend_from_slice(&buffer[..n]),
                }
            };
            dribble.abort();
            (received, ended)
        }));
    }
    assert_healthz_prompt(&stack, timeout).await;
    for task in slow {
        let (received, ended) = tokio::time::timeout(timeout + MARGIN * 2, task)
            .await
            .expect("every half-sent request is closed")
            .expect("reader task");
        assert!(
            received.is_empty(),
            "a half-sent request got an answer: {:?}",
            String::from_utf8_lossy(&received)
        );
        assert!(ended - started < timeout + MARGIN, "{:?}", ended - started);
    }
    stack.finish().await;
}

#[tokio::test]
async fn a_body_trickle_gets_408_and_reaches_no_stream() {
    let timeout = Duration::from_secs(1);
    let stack = Stack::start_with(|c| {
        c.server.connections.body_timeout_secs = 1.0;
        c.server.connections.body_min_rate_bytes = 1024;
    })
    .await;
    let writer = stack.issue("writer", &["read", "write"], &["**"]).await;
    let url = stack.url("trickle");
    assert_eq!(
        stack.create(&url, &writer.token).await.status(),
        StatusCode::CREATED
    );
    let mut socket = TcpStream::connect(address(&stack)).await.expect("connect");
    let head = format!(
        "POST /v1/stream/trickle HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\n\
         Content-Type: text/plain\r\nContent-Length: 100\r\n\r\n",
        writer.token
    );
    socket
        .write_all(head.as_bytes())
        .await
        .expect("send the head");
    let started = Instant::now();
    let (mut reader, mut writer_half) = socket.into_split();
    let trickle = tokio::spawn(async move {
        while writer_half.write_all(b"x").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    let ended = loop {
        match tokio::time::timeout(timeout + MARGIN, reader.read(&mut buffer)).await {
            Err(_) => panic!("no answer within {:?}", timeout + MARGIN),
            Ok(Ok(0)) | Ok(Err(_)) => break Instant::now(),
            Ok(Ok(n)) => response.extend_from_slice(&buffer[..n]),
        }
    };
    trickle.abort();
    assert_eq!(
        status_of(&response),
        408,
        "{}",
        String::from_utf8_lossy(&response)
    );
    let took = ended - started;
    assert!(
        took >= timeout * 9 / 10 && took < timeout + MARGIN,
        "{took:?}"
    );
    let stored = send(
        stack
            .client
            .get(stack.upstream_url("trickle"))
            .query(&[("offset", "-1")]),
    )
    .await;
    assert_eq!(stored.status(), StatusCode::OK);
    assert!(
        stored.bytes().await.expect("body").is_empty(),
        "nothing stored"
    );
    stack.finish().await;
}

#[tokio::test]
async fn oversized_request_heads_get_431() {
    let stack = Stack::start_with(|c| c.server.connections.max_header_bytes = 8192).await;
    for (filler, status) in [(4 * 1024, 200), (16 * 1024, 431)] {
        let mut socket = TcpStream::connect(address(&stack)).await.expect("connect");
        let request = format!(
            "GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Filler: {}\r\nConnection: close\r\n\r\n",
            "f".repeat(filler)
        );
        socket.write_all(request.as_bytes()).await.expect("send");
        let (response, _) = read_until_closed(&mut socket, Duration::from_secs(10)).await;
        assert_eq!(status_of(&response), status, "{filler}-byte header");
    }
    stack.finish().await;
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_unanswered() {
    let mut stack = Stack::start_with(|c| c.server.connections.max_connections = 1).await;
    // The harness's client keeps a connection from its readiness checks;
    // a new client lets it close and frees the slot.
    stack.client = reqwest::Client::new();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let request = b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n";
    let mut admitted = TcpStream::connect(address(&stack)).await.expect("connect");
    admitted.write_all(request).await.expect("send");
    let mut buffer = [0u8; 1024];
    let n = admitted.read(&mut buffer).await.expect("an answer");
    assert_eq!(status_of(&buffer[..n]), 200);

    let mut extra = TcpStream::connect(address(&stack)).await.expect("connect");
    extra.write_all(request).await.expect("send");
    let wait = service_common::serve::SLOT_WAIT;
    let (received, _) = read_until_closed(&mut extra, wait + MARGIN).await;
    assert!(
        received.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&received)
    );

    admitted.write_all(request).await.expect("send again");
    let n = admitted.read(&mut buffer).await.expect("an answer");
    assert_eq!(status_of(&buffer[..n]), 200, "the admitted one still works");
    stack.finish().await;
}

#[tokio::test]
async fn pooled_upstream_connections_are_retired_before_the_server_closes_them() {
    // stream-server closes connections idle for a second; the gateway
    // retires its pooled ones after half that, so no request goes out on
    // one the server is closing, however long the pool sat idle.
    let server_timeout = Duration::from_secs(1);
    let upstream =
        stream_server_with(|c| c.server.connections.header_read_timeout_secs = 1.0).await;
    let stack = Stack::in_front_of(upstream, |c| c.upstream.pool_idle_timeout_secs = 0.5).await;
    let writer = stack.issue("writer", &["read", "write"], &["**"]).await;
    let url = stack.url("pooled");
    assert_eq!(
        stack.create(&url, &writer.token).await.status(),
        StatusCode::CREATED
    );
    // Idle periods around the server's timeout, where a pool that kept
    // connections longer sends requests on ones being closed (502s).
    let around = (0..14u64)
        .map(|step| server_timeout - Duration::from_millis(16) + Duration::from_millis(2 * step));
    let idles = [server_timeout / 2, server_timeout * 2]
        .into_iter()
        .chain(around);
    for idle in idles {
        tokio::time::sleep(idle).await;
        let appended = send(
            stack
                .client
                .post(&url)
                .bearer_auth(&writer.token)
                .header("content-type", "text/plain")
                .body("x"),
        )
        .await;
        assert_eq!(
            appended.status(),
            StatusCode::NO_CONTENT,
            "after {idle:?} idle"
        );
    }
    stack.finish().await;
}
