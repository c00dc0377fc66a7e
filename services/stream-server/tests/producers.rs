//! Idempotent producers over HTTP (PROTOCOL.md §5.2.1): new data (200),
//! duplicates (204 with the highest accepted `Producer-Seq`), epoch fencing
//! (403 with `Producer-Epoch`), new epochs starting at 0 (400), sequence
//! gaps (409 with expected/received), header validation, and retries of the
//! request that closed the stream.

mod common;

use common::{TestServer, assert_problem, header, next_offset, send};
use reqwest::{Response, StatusCode};

/// `POST` as producer `(id, epoch, seq)`.
async fn produce(
    server: &TestServer,
    path: &str,
    id: &str,
    epoch: u64,
    seq: u64,
    body: &str,
) -> Response {
    send(
        server
            .post(path)
            .header("content-type", "text/plain")
            .header("producer-id", id)
            .header("producer-epoch", epoch.to_string())
            .header("producer-seq", seq.to_string())
            .body(body.to_owned()),
    )
    .await
}

fn producer_headers(response: &Response) -> (Option<String>, Option<String>) {
    (
        header(response, "producer-epoch"),
        header(response, "producer-seq"),
    )
}

fn some(epoch: u64, seq: u64) -> (Option<String>, Option<String>) {
    (Some(epoch.to_string()), Some(seq.to_string()))
}

#[tokio::test]
async fn new_data_is_200_and_retries_are_204() {
    let server = TestServer::start().await;
    server.create("s", "text/plain").await;

    let first = produce(&server, "s", "p", 0, 0, "a").await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(producer_headers(&first), some(0, 0));
    let after_first = next_offset(&first);

    let second = produce(&server, "s", "p", 0, 1, "b").await;
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(producer_headers(&second), some(0, 1));
    let tail = next_offset(&second);
    assert!(tail > after_first);

    // Retries of either request append nothing and report the highest
    // accepted sequence number, not the retried one.
    for seq in [0, 1] {
        let retry = produce(&server, "s", "p", 0, seq, "ignored").await;
        assert_eq!(retry.status(), StatusCode::NO_CONTENT, "retry of seq {seq}");
        assert_eq!(producer_headers(&retry), some(0, 1), "retry of seq {seq}");
        assert_eq!(next_offset(&retry), tail);
    }

    let (data, _) = server.read_all("s").await;
    assert_eq!(data, b"ab");
}

#[tokio::test]
async fn stale_epochs_are_fenced() {
    let server = TestServer::start().await;
    server.create("s", "text/plain").await;
    assert_eq!(
        produce(&server, "s", "p", 0, 0, "a").await.status(),
        StatusCode::OK
    );

    let restarted = produce(&server, "s", "p", 1, 0, "b").await;
    assert_eq!(restarted.status(), StatusCode::OK);
    assert_eq!(producer_headers(&restarted), some(1, 0));

    // The zombie of epoch 0 is refused and told the current epoch.
    let zombie = produce(&server, "s", "p", 0, 1, "zombie").await;
    assert_eq!(
        zombie.headers().get("producer-epoch").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    assert_problem(zombie, StatusCode::FORBIDDEN, "stale").await;

    // The new epoch continues normally.
    assert_eq!(
        produce(&server, "s", "p", 1, 1, "c").await.status(),
        StatusCode::OK
    );
    let (data, _) = server.read_all("s").await;
    assert_eq!(data, b"abc");
}

#[tokio::test]
async fn auto_claim_after_fencing() {
    let server = TestServer::start().await;
    server.create("s", "text/plain").await;
    assert_eq!(
        produce(&server, "s", "p", 5, 0, "a").await.status(),
        StatusCode::OK
    );

    // An ephemeral producer starting at epoch 0 learns the current epoch...
    let fenced = produce(&server, "s", "p", 0, 0, "b").await;
    assert_eq!(fenced.status(), StatusCode::FORBIDDEN);
    let current: u64 = header(&fenced, "producer-epoch")
        .expect("403 carries Producer-Epoch")
        .parse()
        .expect("Producer-Epoch is an integer");
    assert_eq!(current, 5);

    // ...and claims the id with the next one.
    let claimed = produce(&server, "s", "p", current + 1, 0, "b").await;
    assert_eq!(claimed.status(), StatusCode::OK);
    assert_eq!(producer_headers(&claimed), some(6, 0));
    let (data, _) = server.read_all("s").await;
    assert_eq!(data, b"ab");
}

#[tokio::test]
async fn a_new_epoch_must_start_at_zero() {
    let server = TestServer::start().await;
    server.create("s", "text/plain").await;
    assert_eq!(
        produce(&server, "s", "p", 0, 0, "a").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        produce(&server, "s", "p", 0, 1, "b").await.status(),
        StatusCode::OK
    );

    let bumped = produce(&server, "s", "p", 1, 3, "x").await;
    assert_problem(bumped, StatusCode::BAD_REQUEST, "seq").await;

    // The refused request changed nothing: epoch 0 still continues.
    let next = produce(&server, "s", "p", 0, 2, "c").await;
    assert_eq!(next.status(), StatusCode::OK);
    assert_eq!(producer_headers(&next), some(0, 2));
    let (data, _) = server.read_all("s").await;
    assert_eq!(data, b"abc");
}

#[tokio::test]
async fn sequence_gaps_are_409_with_expected_and_received() {
    let server = TestServer::start().await;
    server.create("s", "text/plain").await;
    assert_eq!(
        produce(&server, "s", "p", 0, 0, "a").await.status(),
        StatusCode::OK
    );

    let gap = produce(&server, "s", "p", 0, 2, "c").await;
    assert_eq!(header(&gap, "producer-expected-seq").as_deref(), Some("1"));
    assert_eq!(header(&gap, "producer-received-seq").as_deref(), Some("2"));
    assert!(header(&gap, "stream-closed").is_none());
    assert_problem(gap, StatusCode::CONFLICT, "gap").await;

    // An unknown producer must start at 0.
    let fresh = produce(&server, "s", "q", 0, 5, "x").await;
    assert_eq!(fresh.status(), StatusCode::CONFLICT);
    assert_eq!(
        header(&fresh, "producer-expected-seq").as_deref(),
        Some("0")
    );
    assert_eq!(
        header(&fresh, "producer-received-seq").as_deref(),
        Some("5")
    );

    // Filling the gap recovers.
    assert_eq!(
        produce(&server, "s", "p", 0, 1, "b").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        produce(&server, "s", "p", 0, 2, "c").await.status(),
        StatusCode::OK
    );
    let (data, _) = server.read_all("s").await;
    assert_eq!(data, b"abc");
}

#[tokio::test]
async fn producer_headers_are_all_or_nothing_and_validated() {
    let server = TestServer::start().await;
    server.create("s", "text/plain").await;
    let full = [
        ("producer-id", "p"),
        ("producer-epoch", "0"),
        ("producer-seq", "0"),
    ];

    // Every strict, non-empty subset is a 400.
    for mask in 1..7u8 {
        let mut request = server
            .post("s")
            .header("content-type", "text/plain")
            .body("x");
        for (i, (name, value)) in full.iter().enumerate() {
            if mask & (1 << i) != 0 {
                request = request.header(*name, *value);
            }
        }
        let response = send(request).await;
        assert_problem(response, StatusCode::BAD_REQUEST, "producer").await;
    }

    let invalid = [
        ("", "0", "0", "Producer-Id"),
        ("p", "abc", "0", "Producer-Epoch"),
        ("p", "-1", "0", "Producer-Epoch"),
        ("p", "0", "1.5", "Producer-Seq"),
        ("p", "0", "+1", "Producer-Seq"),
        ("p", "9007199254740992", "0", "Producer-Epoch"),
        ("p", "0", "9007199254740992", "Producer-Seq"),
    ];
    for (id, epoch, seq, named) in invalid {
        let response = send(
            server
                .post("s")
                .header("content-type", "text/plain")
                .header("producer-id", id)
                .header("producer-epoch", epoch)
                .header("producer-seq", seq)
                .body("x"),
        )
        .await;
        assert_problem(response, StatusCode::BAD_REQUEST, named).await;
    }

    // 2^53-1 is the largest accepted value.
    let max = send(
        server
            .post("s")
            .header("content-type", "text/plain")
            .header("producer-id", "big")
            .header("producer-epoch", "9007199254740991")
            .header("producer-seq", "0")
            .body("ok"),
    )
    .await;
    assert_eq!(max.status(), StatusCode::OK);

    let (data, _) = server.read_all("s").await;
    assert_eq!(data, b"ok", "no refused request may store data");
}

#[tokio::test]
async fn producers_are_independent_per_id_and_stream() {
    let server = TestServer::start().await;
    server.create("s1", "text/plain").await;
    server.create("s2", "text/plain").await;
    assert_eq!(
        produce(&server, "s1", "p", 0, 0, "a").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        produce(&server, "s1", "q", 0, 0, "b").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        produce(&server, "s1", "p", 0, 1, "c").await.status(),
        StatusCode::OK
    );
    // The same producer id on another stream starts afresh.
    assert_eq!(
        produce(&server, "s2", "p", 0, 0, "d").await.status(),
        StatusCode::OK
    );
    assert_eq!(server.read_all("s1").await.0, b"abc");
    assert_eq!(server.read_all("s2").await.0, b"d");
}

#[tokio::test]
async fn retrying_the_closing_request_is_a_duplicate() {
    let server = TestServer::start().await;
    server.create("s", "text/plain").await;
    assert_eq!(
        produce(&server, "s", "p", 0, 0, "a").await.status(),
        StatusCode::OK
    );

    let close = |seq: u64, body: &'static str| {
        send(
            server
                .post("s")
                .header("content-type", "text/plain")
                .header("producer-id", "p")
                .header("producer-epoch", "0")
                .header("producer-seq", seq.to_string())
                .header("stream-closed", "true")
                .body(body),
        )
    };
    let closing = close(1, "z").await;
    assert_eq!(closing.status(), StatusCode::OK);
    assert_eq!(header(&closing, "stream-closed").as_deref(), Some("true"));
    assert_eq!(producer_headers(&closing), some(0, 1));
    let final_offset = next_offset(&closing);

    // The retry of the closing tuple is deduplicated.
    let retry = close(1, "z").await;
    assert_eq!(retry.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&retry, "stream-closed").as_deref(), Some("true"));
    assert_eq!(producer_headers(&retry), some(0, 1));
    assert_eq!(next_offset(&retry), final_offset);

    // A new tuple cannot append to the closed stream.
    let late = produce(&server, "s", "p", 0, 2, "x").await;
    assert_eq!(late.status(), StatusCode::CONFLICT);
    assert_eq!(header(&late, "stream-closed").as_deref(), Some("true"));
    assert_eq!(next_offset(&late), final_offset);
    let other = produce(&server, "s", "q", 0, 0, "x").await;
    assert_eq!(other.status(), StatusCode::CONFLICT);
    assert_eq!(header(&other, "stream-closed").as_deref(), Some("true"));

    let (data, _) = server.read_all("s").await;
    assert_eq!(data, b"az");
}

#[tokio::test]
async fn close_only_with_producer_headers_is_idempotent() {
    let server = TestServer::start().await;
    server.create("s", "text/plain").await;
    assert_eq!(
        produce(&server, "s", "p", 0, 0, "a").await.status(),
        StatusCode::OK
    );
    let close = || {
        send(
            server
                .post("s")
                .header("producer-id", "p")
                .header("producer-epoch", "0")
                .header("producer-seq", "1")
                .header("stream-closed", "true"),
        )
    };
    let first = close().await;
    assert_eq!(
        first.status(),
        StatusCode::NO_CONTENT,
        "close-only appends nothing"
    );
    assert_eq!(header(&first, "stream-closed").as_deref(), Some("true"));
    let second = close().await;
    assert_eq!(second.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&second, "stream-closed").as_deref(), Some("true"));
    assert_eq!(next_offset(&first), next_offset(&second));
    assert_eq!(server.read_all("s").await.0, b"a");
}
