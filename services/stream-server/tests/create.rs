//! Stream creation (PROTOCOL.md §5.1): idempotent `PUT` (201, then 200 for
//! a matching configuration, 409 otherwise, closure status included),
//! creating closed streams, initial bodies, the absolute `Location`, and
//! validation of `Stream-TTL` / `Stream-Expires-At`.

mod common;

use common::{TestServer, assert_problem, header, next_offset, send, text};
use reqwest::StatusCode;

#[tokio::test]
async fn put_creates_then_confirms_a_matching_stream() {
    let server = TestServer::start().await;

    let created = send(
        server
            .put("chat/room-1")
            .header("content-type", "text/plain"),
    )
    .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(
        header(&created, "location").as_deref(),
        Some(server.url("chat/room-1").as_str()),
        "Location must be the absolute stream URL"
    );
    assert_eq!(
        header(&created, "content-type").as_deref(),
        Some("text/plain")
    );
    let tail = next_offset(&created);
    assert!(header(&created, "stream-closed").is_none());

    // Same configuration again: 200, no Location, same tail.
    let again = send(
        server
            .put("chat/room-1")
            .header("content-type", "text/plain"),
    )
    .await;
    assert_eq!(again.status(), StatusCode::OK);
    assert!(header(&again, "location").is_none());
    assert_eq!(next_offset(&again), tail);

    // Media types compare case-insensitively.
    let upper = send(
        server
            .put("chat/room-1")
            .header("content-type", "Text/Plain"),
    )
    .await;
    assert_eq!(upper.status(), StatusCode::OK);

    // A different content type is a different configuration.
    let other = send(
        server
            .put("chat/room-1")
            .header("content-type", "application/json"),
    )
    .await;
    assert_problem(other, StatusCode::CONFLICT, "configuration").await;
}

#[tokio::test]
async fn put_without_content_type_defaults_to_octet_stream() {
    let server = TestServer::start().await;
    let created = send(server.put("bin")).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(
        header(&created, "content-type").as_deref(),
        Some("application/octet-stream")
    );
    // Re-confirming without a content type matches the default.
    assert_eq!(send(server.put("bin")).await.status(), StatusCode::OK);
    let explicit = send(
        server
            .put("bin")
            .header("content-type", "application/octet-stream"),
    )
    .await;
    assert_eq!(explicit.status(), StatusCode::OK);
}

#[tokio::test]
async fn put_compares_closure_status() {
    let server = TestServer::start().await;
    server.create("s", "text/plain").await;

    // Open stream, request says closed: mismatch.
    let closed_request = send(
        server
            .put("s")
            .header("content-type", "text/plain")
            .header("stream-closed", "true"),
    )
    .await;
    assert_eq!(closed_request.status(), StatusCode::CONFLICT);

    let tail = server.close("s").await;

    // Closed stream, request says open: mismatch.
    let open_request = send(server.put("s").header("content-type", "text/plain")).await;
    assert_eq!(open_request.status(), StatusCode::CONFLICT);

    // Closed stream, request says closed: idempotent success.
    let matching = send(
        server
            .put("s")
            .header("content-type", "text/plain")
            .header("stream-closed", "true"),
    )
    .await;
    assert_eq!(matching.status(), StatusCode::OK);
    assert_eq!(header(&matching, "stream-closed").as_deref(), Some("true"));
    assert_eq!(next_offset(&matching), tail);
}

#[tokio::test]
async fn put_with_stream_closed_creates_a_finished_stream() {
    let server = TestServer::start().await;

    let created = send(
        server
            .put("done")
            .header("content-type", "text/plain")
            .header("stream-closed", "true")
            .body("the whole answer"),
    )
    .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(header(&created, "stream-closed").as_deref(), Some("true"));
    let tail = next_offset(&created);

    let read = server.read_from("done", "-1").await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(header(&read, "stream-closed").as_deref(), Some("true"));
    assert_eq!(header(&read, "stream-up-to-date").as_deref(), Some("true"));
    assert_eq!(next_offset(&read), tail);
    assert_eq!(text(read).await, "the whole answer");

    let append = send(
        server
            .post("done")
            .header("content-type", "text/plain")
            .body("more"),
    )
    .await;
    assert_eq!(append.status(), StatusCode::CONFLICT);
    assert_eq!(header(&append, "stream-closed").as_deref(), Some("true"));

    // An empty, immediately closed stream reads as EOF at once.
    let empty = send(server.put("nothing").header("stream-closed", "TRUE")).await;
    assert_eq!(empty.status(), StatusCode::CREATED);
    let eof = server.read_from("nothing", "-1").await;
    assert_eq!(header(&eof, "stream-closed").as_deref(), Some("true"));
    assert_eq!(next_offset(&eof), next_offset(&empty));
    assert!(text(eof).await.is_empty());
}

#[tokio::test]
async fn stream_closed_values_other_than_true_are_ignored() {
    let server = TestServer::start().await;
    for (i, value) in ["false", "yes", "1", ""].into_iter().enumerate() {
        let path = format!("s{i}");
        let created = send(server.put(&path).header("stream-closed", value)).await;
        assert_eq!(created.status(), StatusCode::CREATED, "{value:?}");
        assert!(
            header(&created, "stream-closed").is_none(),
            "Stream-Closed: {value:?} must be ignored"
        );
        let head = send(server.head(&path)).await;
        assert!(header(&head, "stream-closed").is_none(), "{value:?}");
    }
}

#[tokio::test]
async fn initial_body_is_the_first_content() {
    let server = TestServer::start().await;
    let created = send(
        server
            .put("greeting")
            .header("content-type", "text/plain")
            .body("hello"),
    )
    .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let after_initial = next_offset(&created);

    let empty = server.create("empty", "text/plain").await;
    assert!(
        after_initial > empty,
        "the tail after an initial body ({after_initial}) must sort after an empty stream's ({empty})"
    );

    let tail = server.append("greeting", "text/plain", " world").await;
    let read = server.read_from("greeting", "-1").await;
    assert_eq!(next_offset(&read), tail);
    assert_eq!(text(read).await, "hello world");

    // Reading from the offset the PUT returned skips the initial body.
    let rest = server.read_from("greeting", &after_initial).await;
    assert_eq!(text(rest).await, " world");
}

#[tokio::test]
async fn location_is_absolute_for_nested_paths() {
    let server = TestServer::start().await;
    let created = send(server.put("tenant/a/b/c")).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let location = header(&created, "location").expect("201 carries Location");
    assert_eq!(
        location,
        format!("http://{}/v1/stream/tenant/a/b/c", server.addr)
    );
}

#[tokio::test]
async fn ttl_must_be_a_plain_decimal_integer() {
    let server = TestServer::start().await;
    for (i, bad) in ["+3600", "03600", "3600.0", "3.6e3", "-1", "abc", "1 0", ""]
        .into_iter()
        .enumerate()
    {
        let response = send(server.put(&format!("bad-{i}")).header("stream-ttl", bad)).await;
        assert_problem(response, StatusCode::BAD_REQUEST, "Stream-TTL").await;
        // Nothing was created.
        let head = send(server.head(&format!("bad-{i}"))).await;
        assert_eq!(head.status(), StatusCode::NOT_FOUND, "TTL {bad:?}");
    }

    let ok = send(server.put("good").header("stream-ttl", "3600")).await;
    assert_eq!(ok.status(), StatusCode::CREATED);
    let head = send(server.head("good")).await;
    assert_eq!(header(&head, "stream-ttl").as_deref(), Some("3600"));
    assert!(header(&head, "stream-expires-at").is_none());
}

#[tokio::test]
async fn expires_at_must_be_rfc3339() {
    let server = TestServer::start().await;
    for bad in [
        "tomorrow",
        "2030-01-01",
        "2030-01-01 00:00:00",
        "1893456000",
        "2030-13-01T00:00:00Z",
    ] {
        let response = send(server.put("s").header("stream-expires-at", bad)).await;
        assert_problem(response, StatusCode::BAD_REQUEST, "Stream-Expires-At").await;
    }

    let ok = send(
        server
            .put("s")
            .header("stream-expires-at", "2030-01-01T00:00:00Z"),
    )
    .await;
    assert_eq!(ok.status(), StatusCode::CREATED);
    let head = send(server.head("s")).await;
    assert_eq!(
        header(&head, "stream-expires-at").as_deref(),
        Some("2030-01-01T00:00:00Z")
    );
    assert!(header(&head, "stream-ttl").is_none());
}

#[tokio::test]
async fn ttl_and_expires_at_together_are_rejected() {
    let server = TestServer::start().await;
    let response = send(
        server
            .put("s")
            .header("stream-ttl", "60")
            .header("stream-expires-at", "2030-01-01T00:00:00Z"),
    )
    .await;
    assert_problem(response, StatusCode::BAD_REQUEST, "Stream-Expires-At").await;
    assert_eq!(send(server.head("s")).await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn expiry_is_part_of_the_configuration() {
    let server = TestServer::start().await;
    assert_eq!(
        send(server.put("ttl").header("stream-ttl", "60"))
            .await
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(
        send(server.put("ttl").header("stream-ttl", "60"))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        send(server.put("ttl").header("stream-ttl", "120"))
            .await
            .status(),
        StatusCode::CONFLICT
    );
    assert_eq!(
        send(server.put("ttl")).await.status(),
        StatusCode::CONFLICT,
        "omitting the TTL of a TTL stream is a different configuration"
    );
    assert_eq!(
        send(
            server
                .put("ttl")
                .header("stream-expires-at", "2030-01-01T00:00:00Z")
        )
        .await
        .status(),
        StatusCode::CONFLICT
    );

    let at = "2030-01-01T00:00:00Z";
    assert_eq!(
        send(server.put("at").header("stream-expires-at", at))
            .await
            .status(),
        StatusCode::CREATED
    );
    // The same instant written with another UTC offset is the same expiry.
    assert_eq!(
        send(
            server
                .put("at")
                .header("stream-expires-at", "2030-01-01T02:00:00+02:00")
        )
        .await
        .status(),
        StatusCode::OK
    );
    assert_eq!(
        send(
            server
                .put("at")
                .header("stream-expires-at", "2030-01-01T00:00:01Z")
        )
        .await
        .status(),
        StatusCode::CONFLICT
    );

    // A stream without expiry does not match a request with one.
    assert_eq!(
        send(server.put("plain")).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(
        send(server.put("plain").header("stream-ttl", "60"))
            .await
            .status(),
        StatusCode::CONFLICT
    );
}
