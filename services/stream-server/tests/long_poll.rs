//! Long-poll reads (PROTOCOL.md §5.7, §8 `now`, §10.1 cursors): immediate
//! answers when data exists, waking on appends and closure, `204` with a
//! cursor on timeout, immediate EOF on a closed stream at its tail, and
//! cursors that strictly increase when echoed.

mod common;

use common::{CACHEABLE, TestServer, body, header, next_offset, send, text};
use reqwest::{Response, StatusCode};
use std::time::{Duration, Instant};

/// A server whose long-polls wait `secs` before answering 204.
async fn server_with_timeout(secs: f64) -> TestServer {
    TestServer::start_with(|c| c.server.long_poll_timeout_secs = secs).await
}

async fn long_poll(server: &TestServer, path: &str, offset: &str) -> Response {
    send(
        server
            .get(path)
            .query(&[("offset", offset), ("live", "long-poll")]),
    )
    .await
}

fn cursor(response: &Response) -> u64 {
    header(response, "stream-cursor")
        .expect("live responses on open streams carry Stream-Cursor")
        .parse()
        .expect("the cursor is a decimal interval number")
}

#[tokio::test]
async fn available_data_is_returned_immediately() {
    let server = server_with_timeout(10.0).await;
    server.create("s", "text/plain").await;
    let tail = server.append("s", "text/plain", "ready").await;

    let started = Instant::now();
    let response = long_poll(&server, "s", "-1").await;
    assert!(started.elapsed() < Duration::from_secs(2), "must not wait");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(next_offset(&response), tail);
    assert_eq!(
        header(&response, "stream-up-to-date").as_deref(),
        Some("true")
    );
    assert_eq!(
        header(&response, "cache-control").as_deref(),
        Some(CACHEABLE)
    );
    assert!(header(&response, "etag").is_some());
    cursor(&response);
    assert_eq!(text(response).await, "ready");
}

#[tokio::test]
async fn a_waiting_poll_wakes_on_append() {
    let server = server_with_timeout(10.0).await;
    let tail = server.create("s", "text/plain").await;

    let started = Instant::now();
    let (response, appended) = tokio::join!(long_poll(&server, "s", &tail), async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        server.append("s", "text/plain", "news").await
    });
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "woken by the append, not the timeout"
    );
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(next_offset(&response), appended);
    cursor(&response);
    assert_eq!(text(response).await, "news");
}

#[tokio::test]
async fn timeout_answers_204_with_tail_and_cursor() {
    let server = server_with_timeout(0.3).await;
    server.create("s", "text/plain").await;
    let tail = server.append("s", "text/plain", "old").await;

    let started = Instant::now();
    let response = long_poll(&server, "s", &tail).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "answered after {waited:?}"
    );
    assert!(waited < Duration::from_secs(2), "answered after {waited:?}");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(next_offset(&response), tail);
    assert_eq!(
        header(&response, "stream-up-to-date").as_deref(),
        Some("true")
    );
    assert!(header(&response, "stream-closed").is_none());
    cursor(&response);
    assert!(body(response).await.is_empty());
}

#[tokio::test]
async fn closed_stream_at_tail_answers_eof_immediately() {
    let server = server_with_timeout(10.0).await;
    server.create("s", "text/plain").await;
    server.append("s", "text/plain", "all").await;
    let tail = server.close("s").await;

    for offset in [tail.as_str(), "now"] {
        let started = Instant::now();
        let response = long_poll(&server, "s", offset).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "must not wait for the timeout (offset {offset})"
        );
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        assert_eq!(header(&response, "stream-closed").as_deref(), Some("true"));
        assert_eq!(
            header(&response, "stream-up-to-date").as_deref(),
            Some("true")
        );
        assert_eq!(next_offset(&response), tail);
    }

    // Before the tail, the remaining data comes with the closure signal.
    let rest = long_poll(&server, "s", "-1").await;
    assert_eq!(rest.status(), StatusCode::OK);
    assert_eq!(header(&rest, "stream-closed").as_deref(), Some("true"));
    assert_eq!(text(rest).await, "all");
}

#[tokio::test]
async fn closing_wakes_a_waiting_poll() {
    let server = server_with_timeout(10.0).await;
    let tail = server.create("s", "text/plain").await;
    let started = Instant::now();
    let (response, _) = tokio::join!(long_poll(&server, "s", &tail), async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        server.close("s").await
    });
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&response, "stream-closed").as_deref(), Some("true"));
    assert_eq!(next_offset(&response), tail);
}

#[tokio::test]
async fn offset_now_skips_existing_data_and_waits() {
    let server = server_with_timeout(10.0).await;
    server.create("s", "text/plain").await;
    server.append("s", "text/plain", "history").await;

    let (response, appended) = tokio::join!(long_poll(&server, "s", "now"), async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        server.append("s", "text/plain", "future").await
    });
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(next_offset(&response), appended);
    assert_eq!(text(response).await, "future", "no historical data");
}

#[tokio::test]
async fn offset_now_times_out_at_the_tail() {
    let server = server_with_timeout(0.3).await;
    server.create("s", "text/plain").await;
    let tail = server.append("s", "text/plain", "history").await;
    let started = Instant::now();
    let response = long_poll(&server, "s", "now").await;
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "waited first"
    );
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(next_offset(&response), tail);
    assert_eq!(
        header(&response, "stream-up-to-date").as_deref(),
        Some("true")
    );
    cursor(&response);
}

#[tokio::test]
async fn echoed_cursors_strictly_increase() {
    let server = server_with_timeout(0.2).await;
    server.create("s", "text/plain").await;
    let tail = server.append("s", "text/plain", "x").await;

    let first = cursor(&long_poll(&server, "s", "-1").await);
    let mut previous = first;
    for _ in 0..5 {
        let echoed = previous.to_string();
        let response = send(server.get("s").query(&[
            ("cursor", echoed.as_str()),
            ("live", "long-poll"),
            ("offset", "-1"),
        ]))
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        let next = cursor(&response);
        assert!(next > previous, "cursor {next} after echoing {previous}");
        previous = next;
    }

    // The 204 of a timed-out poll also advances an echoed cursor.
    let echoed = previous.to_string();
    let timed_out = send(server.get("s").query(&[
        ("cursor", echoed.as_str()),
        ("live", "long-poll"),
        ("offset", tail.as_str()),
    ]))
    .await;
    assert_eq!(timed_out.status(), StatusCode::NO_CONTENT);
    assert!(cursor(&timed_out) > previous);

    // A stale or garbage cursor gets the current interval (which may have
    // moved on by one since the first request).
    for stale in ["1", "garbage"] {
        let response = send(server.get("s").query(&[
            ("cursor", stale),
            ("live", "long-poll"),
            ("offset", "-1"),
        ]))
        .await;
        let current = cursor(&response);
        assert!(
            (first..=first + 1).contains(&current),
            "cursor={stale} answered {current}, current interval is {first}"
        );
    }
}

#[tokio::test]
async fn deleting_the_stream_ends_a_waiting_poll() {
    let server = server_with_timeout(10.0).await;
    let tail = server.create("s", "text/plain").await;
    let started = Instant::now();
    let (response, deleted) = tokio::join!(long_poll(&server, "s", &tail), async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        send(server.delete("s")).await.status()
    });
    assert_eq!(deleted, StatusCode::NO_CONTENT);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn long_poll_errors() {
    let server = server_with_timeout(10.0).await;
    let missing = long_poll(&server, "missing", "-1").await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    server.create("s", "text/plain").await;
    let malformed = long_poll(&server, "s", "garbage").await;
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
}
