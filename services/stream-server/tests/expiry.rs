//! Stream expiry (PROTOCOL.md §4, §5.1, §5.5): the `Stream-TTL` sliding
//! window, restarted by reads and writes but not by `HEAD`, and absolute
//! `Stream-Expires-At` deadlines honoured to the millisecond.
//!
//! TTLs are whole seconds, so these tests use `Stream-TTL: 1` and sleep for
//! fractions of it; `HEAD` checks existence without touching the window.

mod common;

use common::{TestServer, header, send};
use reqwest::StatusCode;
use std::time::Duration;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

async fn create_with_ttl(server: &TestServer, path: &str) {
    let response = send(
        server
            .put(path)
            .header("content-type", "text/plain")
            .header("stream-ttl", "1")
            .body("data"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

async fn exists(server: &TestServer, path: &str) -> bool {
    match send(server.head(path)).await.status() {
        StatusCode::OK => true,
        StatusCode::NOT_FOUND => false,
        other => panic!("HEAD {path} answered {other}"),
    }
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[tokio::test]
async fn an_idle_stream_expires_after_its_ttl() {
    let server = TestServer::start().await;
    create_with_ttl(&server, "s").await;
    assert!(exists(&server, "s").await);
    sleep_ms(1100).await;
    assert!(!exists(&server, "s").await, "idle for longer than the TTL");
    assert_eq!(
        server.read_from("s", "-1").await.status(),
        StatusCode::NOT_FOUND
    );
    let append = send(
        server
            .post("s")
            .header("content-type", "text/plain")
            .body("x"),
    )
    .await;
    assert_eq!(append.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn reads_restart_the_ttl() {
    let server = TestServer::start().await;
    create_with_ttl(&server, "s").await;
    sleep_ms(600).await;
    assert_eq!(server.read_from("s", "-1").await.status(), StatusCode::OK);
    sleep_ms(600).await;
    // 1.2 s after creation, but only 0.6 s after the read.
    assert!(exists(&server, "s").await, "the read restarted the window");
}

#[tokio::test]
async fn writes_restart_the_ttl() {
    let server = TestServer::start().await;
    create_with_ttl(&server, "s").await;
    sleep_ms(600).await;
    server.append("s", "text/plain", "more").await;
    sleep_ms(600).await;
    assert!(
        exists(&server, "s").await,
        "the append restarted the window"
    );
    assert_eq!(server.read_all("s").await.0, b"datamore");
}

#[tokio::test]
async fn head_does_not_restart_the_ttl() {
    let server = TestServer::start().await;
    create_with_ttl(&server, "s").await;
    sleep_ms(600).await;
    let head = send(server.head("s")).await;
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header(&head, "stream-ttl").as_deref(), Some("1"));
    sleep_ms(500).await;
    assert!(
        !exists(&server, "s").await,
        "HEAD must not keep the stream alive"
    );
}

#[tokio::test]
async fn expires_at_is_honoured_to_the_millisecond() {
    let server = TestServer::start().await;
    // A deadline 0.6-1.1 s away whose millisecond part lies in 400..=900:
    // truncating it to whole seconds would expire the stream at least
    // 400 ms early, rounding up would keep it at least 100 ms too long, and
    // both are caught by the checks 300 ms before and 50 ms after it.
    let soon = OffsetDateTime::now_utc() + time::Duration::milliseconds(600);
    let deadline = match soon.millisecond() {
        ms @ 400..=900 => soon.replace_millisecond(ms),
        0..400 => soon.replace_millisecond(400),
        _ => (soon + time::Duration::seconds(1)).replace_millisecond(400),
    }
    .expect("a valid millisecond");
    let text = deadline.format(&Rfc3339).expect("format RFC 3339");
    let response = send(
        server
            .put("s")
            .header("stream-expires-at", &text)
            .body("data"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);

    let head = send(server.head("s")).await;
    let echoed = header(&head, "stream-expires-at").expect("HEAD echoes Stream-Expires-At");
    let parsed = OffsetDateTime::parse(&echoed, &Rfc3339).expect("echo is RFC 3339");
    assert_eq!(
        parsed, deadline,
        "milliseconds survive: sent {text}, got {echoed}"
    );

    // Reads do not extend an absolute deadline.
    let until = |t: OffsetDateTime| {
        let left = t - OffsetDateTime::now_utc();
        Duration::from_millis(left.whole_milliseconds().max(0) as u64)
    };
    tokio::time::sleep(until(deadline - time::Duration::milliseconds(300))).await;
    assert_eq!(server.read_from("s", "-1").await.status(), StatusCode::OK);
    assert!(
        exists(&server, "s").await,
        "still there 300 ms before the deadline"
    );
    tokio::time::sleep(until(deadline + time::Duration::milliseconds(50))).await;
    assert!(!exists(&server, "s").await, "gone 50 ms after the deadline");
}
