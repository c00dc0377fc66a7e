//! Appends (PROTOCOL.md §5.2, §5.3): content-type matching, missing content
//! type and empty bodies, `Stream-Seq` ordering, chunked request bodies,
//! append-and-close, idempotent close-only requests, and the precedence of
//! the closed-stream 409 over other conflicts.

mod common;

use bytes::Bytes;
use common::{TestServer, assert_problem, header, next_offset, send, text};
use reqwest::StatusCode;

#[tokio::test]
async fn appends_concatenate_and_offsets_increase() {
    let server = TestServer::start().await;
    let mut previous = server.create("log", "text/plain").await;
    for part in ["alpha ", "beta ", "gamma"] {
        let next = server.append("log", "text/plain", part).await;
        assert!(next > previous, "offset {next} must sort after {previous}");
        previous = next;
    }
    let (data, tail) = server.read_all("log").await;
    assert_eq!(data, b"alpha beta gamma");
    assert_eq!(tail, previous);
}

#[tokio::test]
async fn content_type_match_ignores_case_and_parameters() {
    let server = TestServer::start().await;
    server.create("t", "text/plain; charset=utf-8").await;
    server.append("t", "text/plain", "a").await;
    server.append("t", "TEXT/PLAIN", "b").await;
    server.append("t", "text/plain;charset=UTF-8", "c").await;
    server.append("t", " Text/Plain ; format=flowed", "d").await;

    for other in [
        "text/html",
        "application/json",
        "text/plainx",
        "application/octet-stream",
    ] {
        let response = send(server.post("t").header("content-type", other).body("x")).await;
        assert_problem(response, StatusCode::CONFLICT, "content type").await;
    }
    let (data, _) = server.read_all("t").await;
    assert_eq!(data, b"abcd", "rejected appends must not store data");
}

#[tokio::test]
async fn missing_content_type_is_rejected() {
    let server = TestServer::start().await;
    server.create("t", "text/plain").await;
    let response = send(server.post("t").body("data")).await;
    assert_problem(response, StatusCode::BAD_REQUEST, "Content-Type").await;
    let (data, _) = server.read_all("t").await;
    assert!(data.is_empty());
}

#[tokio::test]
async fn empty_body_is_rejected_unless_closing() {
    let server = TestServer::start().await;
    let tail = server.create("t", "text/plain").await;
    let response = send(server.post("t").header("content-type", "text/plain")).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // Non-`true` values of Stream-Closed do not make an empty body valid.
    let response = send(
        server
            .post("t")
            .header("content-type", "text/plain")
            .header("stream-closed", "yes"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let head = send(server.head("t")).await;
    assert!(header(&head, "stream-closed").is_none());
    assert_eq!(next_offset(&head), tail);
}

#[tokio::test]
async fn stream_seq_orders_byte_wise_lexicographically() {
    let server = TestServer::start().await;
    server.create("s", "text/plain").await;
    let post = |seq: &'static str, body: &'static str| {
        send(
            server
                .post("s")
                .header("content-type", "text/plain")
                .header("stream-seq", seq)
                .body(body),
        )
    };
    assert_eq!(post("1", "a").await.status(), StatusCode::NO_CONTENT);
    assert_eq!(post("2", "b").await.status(), StatusCode::NO_CONTENT);
    // "10" < "2" byte-wise, although 10 > 2 numerically.
    let regression = post("10", "X").await;
    assert_problem(regression, StatusCode::CONFLICT, "Stream-Seq").await;
    // Equal is not strictly increasing.
    assert_eq!(post("2", "X").await.status(), StatusCode::CONFLICT);
    assert_eq!(post("3", "c").await.status(), StatusCode::NO_CONTENT);
    // Letters sort after digits ('B' is 0x42, '3' is 0x33)...
    assert_eq!(post("B", "d").await.status(), StatusCode::NO_CONTENT);
    // ...'A' sorts before 'B'...
    assert_eq!(post("A", "X").await.status(), StatusCode::CONFLICT);
    // ...and lowercase after uppercase.
    assert_eq!(post("a", "e").await.status(), StatusCode::NO_CONTENT);
    // A longer string with the same prefix sorts after it.
    assert_eq!(post("a0", "f").await.status(), StatusCode::NO_CONTENT);

    // Appends without Stream-Seq are not ordered by it.
    server.append("s", "text/plain", "g").await;

    let (data, _) = server.read_all("s").await;
    assert_eq!(data, b"abcdefg", "only accepted appends are stored");
}

#[tokio::test]
async fn chunked_request_bodies_are_appended_whole() {
    let server = TestServer::start().await;
    server.create("c", "application/octet-stream").await;
    let parts: Vec<Result<Bytes, std::io::Error>> =
        (0..10u8).map(|i| Ok(Bytes::from(vec![i; 100]))).collect();
    let response = send(
        server
            .post("c")
            .header("content-type", "application/octet-stream")
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                parts,
            ))),
    )
    .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let (data, _) = server.read_all("c").await;
    let expected: Vec<u8> = (0..10u8).flat_map(|i| vec![i; 100]).collect();
    assert_eq!(data, expected);
}

#[tokio::test]
async fn append_and_close_is_atomic_and_final() {
    let server = TestServer::start().await;
    server.create("job", "text/plain").await;
    server.append("job", "text/plain", "line 1\n").await;

    let closing = send(
        server
            .post("job")
            .header("content-type", "text/plain")
            .header("stream-closed", "true")
            .body("last line\n"),
    )
    .await;
    assert_eq!(closing.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&closing, "stream-closed").as_deref(), Some("true"));
    let final_offset = next_offset(&closing);

    let read = server.read_from("job", "-1").await;
    assert_eq!(header(&read, "stream-closed").as_deref(), Some("true"));
    assert_eq!(next_offset(&read), final_offset);
    assert_eq!(text(read).await, "line 1\nlast line\n");

    // Any further append is refused with the closure signal and final offset.
    let late = send(
        server
            .post("job")
            .header("content-type", "text/plain")
            .body("too late"),
    )
    .await;
    assert_eq!(late.status(), StatusCode::CONFLICT);
    assert_eq!(header(&late, "stream-closed").as_deref(), Some("true"));
    assert_eq!(next_offset(&late), final_offset);

    // Append-and-close is not idempotent without producer headers.
    let again = send(
        server
            .post("job")
            .header("content-type", "text/plain")
            .header("stream-closed", "true")
            .body("last line\n"),
    )
    .await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    assert_eq!(header(&again, "stream-closed").as_deref(), Some("true"));

    // Close-only is idempotent.
    assert_eq!(server.close("job").await, final_offset);
    assert_eq!(server.close("job").await, final_offset);
    let (data, _) = server.read_all("job").await;
    assert_eq!(data, b"line 1\nlast line\n");
}

#[tokio::test]
async fn close_only_does_not_check_content_type() {
    let server = TestServer::start().await;
    let tail = server.create("j", "application/json").await;
    let response = send(
        server
            .post("j")
            .header("content-type", "text/html")
            .header("stream-closed", "true"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&response, "stream-closed").as_deref(), Some("true"));
    assert_eq!(next_offset(&response), tail, "closing appends nothing");
}

#[tokio::test]
async fn closed_stream_conflict_takes_precedence() {
    let server = TestServer::start().await;
    server.create("p", "text/plain").await;
    let ok = send(
        server
            .post("p")
            .header("content-type", "text/plain")
            .header("stream-seq", "5")
            .body("data"),
    )
    .await;
    assert_eq!(ok.status(), StatusCode::NO_CONTENT);
    let final_offset = server.close("p").await;

    let attempts = [
        // Content type mismatch.
        server
            .post("p")
            .header("content-type", "application/json")
            .body("{}"),
        // Missing content type.
        server.post("p").body("x"),
        // Sequence regression.
        server
            .post("p")
            .header("content-type", "text/plain")
            .header("stream-seq", "1")
            .body("x"),
        // All of the above with a final append.
        server
            .post("p")
            .header("content-type", "application/json")
            .header("stream-seq", "1")
            .header("stream-closed", "true")
            .body("{}"),
    ];
    for attempt in attempts {
        let response = send(attempt).await;
        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert_eq!(
            header(&response, "stream-closed").as_deref(),
            Some("true"),
            "the closed-stream conflict must win: {:?}",
            response.headers()
        );
        assert_eq!(next_offset(&response), final_offset);
    }
}

#[tokio::test]
async fn stream_closed_other_values_do_not_close() {
    let server = TestServer::start().await;
    server.create("s", "text/plain").await;
    for value in ["false", "yes", "1"] {
        let response = send(
            server
                .post("s")
                .header("content-type", "text/plain")
                .header("stream-closed", value)
                .body("x"),
        )
        .await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        assert!(header(&response, "stream-closed").is_none(), "{value:?}");
    }
    server.append("s", "text/plain", "y").await;
    let (data, _) = server.read_all("s").await;
    assert_eq!(data, b"xxxy");
}

#[tokio::test]
async fn appending_to_a_missing_stream_is_404() {
    let server = TestServer::start().await;
    let response = send(
        server
            .post("nowhere")
            .header("content-type", "text/plain")
            .body("x"),
    )
    .await;
    assert_problem(response, StatusCode::NOT_FOUND, "not found").await;
    let close = send(server.post("nowhere").header("stream-closed", "true")).await;
    assert_eq!(close.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn delete_removes_the_stream() {
    let server = TestServer::start().await;
    server.create("d", "text/plain").await;
    server.append("d", "text/plain", "x").await;
    let deleted = send(server.delete("d")).await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        server.read_from("d", "-1").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(send(server.head("d")).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        send(server.delete("d")).await.status(),
        StatusCode::NOT_FOUND
    );
    let append = send(
        server
            .post("d")
            .header("content-type", "text/plain")
            .body("y"),
    )
    .await;
    assert_eq!(append.status(), StatusCode::NOT_FOUND);
}
