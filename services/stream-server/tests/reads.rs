//! Catch-up reads and metadata (PROTOCOL.md §5.5, §5.6, §8, §10.1): the
//! `-1`, `now` and explicit offsets, malformed and repeated offsets, reads at
//! the tail, `ETag` / `If-None-Match` and closure, chunking by
//! `http.max_read_bytes`, caching headers, and `HEAD`.

mod common;

use common::{CACHEABLE, TestServer, assert_problem, body, header, next_offset, send, text};
use reqwest::StatusCode;

#[tokio::test]
async fn minus_one_and_no_offset_read_from_the_start() {
    let server = TestServer::start().await;
    server.create("s", "text/plain").await;
    server.append("s", "text/plain", "hello ").await;
    let tail = server.append("s", "text/plain", "world").await;

    for response in [
        server.read_from("s", "-1").await,
        send(server.get("s")).await,
    ] {
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            header(&response, "content-type").as_deref(),
            Some("text/plain")
        );
        assert_eq!(
            header(&response, "stream-up-to-date").as_deref(),
            Some("true")
        );
        assert!(header(&response, "stream-closed").is_none());
        assert_eq!(next_offset(&response), tail);
        assert_eq!(text(response).await, "hello world");
    }
}

#[tokio::test]
async fn explicit_offsets_resume_after_earlier_data() {
    let server = TestServer::start().await;
    let start = server.create("s", "text/plain").await;
    let after_a = server.append("s", "text/plain", "a").await;
    let after_b = server.append("s", "text/plain", "bb").await;
    let tail = server.append("s", "text/plain", "ccc").await;

    for (from, expected) in [
        (&start, "abbccc"),
        (&after_a, "bbccc"),
        (&after_b, "ccc"),
        (&tail, ""),
    ] {
        let response = server.read_from("s", from).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(next_offset(&response), tail);
        assert_eq!(text(response).await, expected, "from {from}");
    }
}

#[tokio::test]
async fn reading_at_the_tail_is_empty_up_to_date_and_signals_closure() {
    let server = TestServer::start().await;
    server.create("s", "text/plain").await;
    let tail = server.append("s", "text/plain", "data").await;

    let open = server.read_from("s", &tail).await;
    assert_eq!(open.status(), StatusCode::OK);
    assert_eq!(
        next_offset(&open),
        tail,
        "Next-Offset equals the requested offset"
    );
    assert_eq!(header(&open, "stream-up-to-date").as_deref(), Some("true"));
    assert!(header(&open, "stream-closed").is_none());
    assert!(body(open).await.is_empty());

    server.close("s").await;
    let closed = server.read_from("s", &tail).await;
    assert_eq!(closed.status(), StatusCode::OK);
    assert_eq!(next_offset(&closed), tail);
    assert_eq!(header(&closed, "stream-closed").as_deref(), Some("true"));
    assert_eq!(
        header(&closed, "stream-up-to-date").as_deref(),
        Some("true")
    );
    assert!(body(closed).await.is_empty());
}

#[tokio::test]
async fn offset_now_returns_the_tail_without_data() {
    let server = TestServer::start().await;
    server.create("s", "text/plain").await;
    let tail = server.append("s", "text/plain", "existing data").await;

    let now = server.read_from("s", "now").await;
    assert_eq!(now.status(), StatusCode::OK);
    assert_eq!(next_offset(&now), tail);
    assert_eq!(header(&now, "stream-up-to-date").as_deref(), Some("true"));
    assert_eq!(header(&now, "cache-control").as_deref(), Some("no-store"));
    assert!(header(&now, "etag").is_none(), "offset=now has no ETag");
    assert!(header(&now, "stream-closed").is_none());
    assert!(body(now).await.is_empty());

    server.close("s").await;
    let closed = server.read_from("s", "now").await;
    assert_eq!(closed.status(), StatusCode::OK);
    assert_eq!(next_offset(&closed), tail);
    assert_eq!(header(&closed, "stream-closed").as_deref(), Some("true"));
    assert_eq!(
        header(&closed, "stream-up-to-date").as_deref(),
        Some("true")
    );
    assert!(body(closed).await.is_empty());
}

#[tokio::test]
async fn malformed_and_repeated_offsets_are_rejected() {
    let server = TestServer::start().await;
    server.create("s", "text/plain").await;
    let tail = server.append("s", "text/plain", "abc").await;

    for bad in [
        "",
        "abc",
        "0_0",
        "-2",
        "NOW",
        "0000000000000001_000000000000000A",
        &format!("{tail},x"),
        &format!("{tail} "),
    ] {
        let response = server.read_from("s", bad).await;
        assert_problem(response, StatusCode::BAD_REQUEST, "offset").await;
    }

    let repeated = send(server.get("s").query(&[("offset", "-1"), ("offset", "-1")])).await;
    assert_problem(repeated, StatusCode::BAD_REQUEST, "repeated").await;

    // A well-formed offset that names no position in the stream.
    let inside = format!("{}_{:016x}", "0".repeat(16), 1);
    let response = server.read_from("s", &inside).await;
    assert_problem(response, StatusCode::BAD_REQUEST, "offset").await;

    // Unknown parameters are ignored.
    let extra = send(server.get("s").query(&[("offset", "-1"), ("foo", "bar")])).await;
    assert_eq!(extra.status(), StatusCode::OK);
    assert_eq!(text(extra).await, "abc");
}

#[tokio::test]
async fn invalid_live_parameters_are_rejected() {
    let server = TestServer::start().await;
    server.create("s", "text/plain").await;
    for query in [
        vec![("offset", "-1"), ("live", "poll")],
        vec![("offset", "-1"), ("live", "SSE")],
        vec![("live", "long-poll")],
        vec![("live", "sse")],
    ] {
        let response = send(server.get("s").query(&query)).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query:?}");
    }
}

#[tokio::test]
async fn reads_of_missing_streams_are_404() {
    let server = TestServer::start().await;
    let response = server.read_from("missing", "-1").await;
    assert_problem(response, StatusCode::NOT_FOUND, "not found").await;
    let head = send(server.head("missing")).await;
    assert_eq!(head.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn etag_and_if_none_match_give_304_until_data_changes() {
    let server = TestServer::start().await;
    server.create("s", "text/plain").await;
    server.append("s", "text/plain", "one").await;

    let first = server.read_from("s", "-1").await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(header(&first, "cache-control").as_deref(), Some(CACHEABLE));
    let etag = header(&first, "etag").expect("catch-up reads carry an ETag");
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");

    let cached = send(
        server
            .get("s")
            .query(&[("offset", "-1")])
            .header("if-none-match", &etag),
    )
    .await;
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(header(&cached, "etag").as_deref(), Some(etag.as_str()));
    assert!(body(cached).await.is_empty());

    // A non-matching tag gets the data.
    let other = send(
        server
            .get("s")
            .query(&[("offset", "-1")])
            .header("if-none-match", "\"something-else\""),
    )
    .await;
    assert_eq!(other.status(), StatusCode::OK);
    assert_eq!(text(other).await, "one");

    // New data changes the ETag, so the old one no longer matches.
    server.append("s", "text/plain", "two").await;
    let changed = send(
        server
            .get("s")
            .query(&[("offset", "-1")])
            .header("if-none-match", &etag),
    )
    .await;
    assert_eq!(changed.status(), StatusCode::OK);
    assert_ne!(header(&changed, "etag").as_deref(), Some(etag.as_str()));
    assert_eq!(text(changed).await, "onetwo");
}

#[tokio::test]
async fn a_recreated_stream_never_matches_the_old_streams_etag() {
    let server = TestServer::start().await;
    server.create("s", "text/plain").await;
    server.append("s", "text/plain", "old").await;
    let old = server.read_from("s", "-1").await;
    let etag = header(&old, "etag").expect("etag");

    // Same path, same length, same offsets: only the content differs.
    assert_eq!(
        send(server.delete("s")).await.status(),
        StatusCode::NO_CONTENT
    );
    server.create("s", "text/plain").await;
    server.append("s", "text/plain", "new").await;
    let fresh = send(
        server
            .get("s")
            .query(&[("offset", "-1")])
            .header("if-none-match", &etag),
    )
    .await;
    assert_eq!(fresh.status(), StatusCode::OK);
    assert_ne!(header(&fresh, "etag").as_deref(), Some(etag.as_str()));
    assert_eq!(text(fresh).await, "new");
}

#[tokio::test]
async fn etag_changes_when_the_stream_closes() {
    let server = TestServer::start().await;
    // Once for a read returning data, once for the empty read at the tail.
    for (path, at_tail) in [("data", false), ("tail", true)] {
        server.create(path, "text/plain").await;
        let tail = server.append(path, "text/plain", "data").await;
        let offset = if at_tail { tail.as_str() } else { "-1" };
        let conditional = |etag: &str| {
            send(
                server
                    .get(path)
                    .query(&[("offset", offset)])
                    .header("if-none-match", etag),
            )
        };

        let open = server.read_from(path, offset).await;
        let etag = header(&open, "etag").expect("ETag");
        assert!(header(&open, "stream-closed").is_none());
        assert_eq!(
            conditional(&etag).await.status(),
            StatusCode::NOT_MODIFIED,
            "re-validation while open"
        );

        server.close(path).await;
        // Closed without new data: the old validator must not hide EOF.
        let after = conditional(&etag).await;
        assert_eq!(
            after.status(),
            StatusCode::OK,
            "a 304 would hide the closure (offset {offset})"
        );
        assert_eq!(header(&after, "stream-closed").as_deref(), Some("true"));
        let closed_etag = header(&after, "etag").expect("ETag after closure");
        assert_ne!(closed_etag, etag);
        // The closed stream's own validator works as usual.
        assert_eq!(
            conditional(&closed_etag).await.status(),
            StatusCode::NOT_MODIFIED
        );
    }
}

/// RFC 9110 §13.1.2: `If-None-Match` is a list of entity tags compared
/// weakly (and `*` matches any current representation).
#[tokio::test]
async fn if_none_match_accepts_lists_and_weak_tags() {
    let server = TestServer::start().await;
    server.create("s", "text/plain").await;
    server.append("s", "text/plain", "one").await;
    let etag = header(&server.read_from("s", "-1").await, "etag").expect("ETag");

    for validator in [
        format!("\"other\", {etag}"),
        format!("W/{etag}"),
        "*".to_owned(),
    ] {
        let response = send(
            server
                .get("s")
                .query(&[("offset", "-1")])
                .header("if-none-match", &validator),
        )
        .await;
        assert_eq!(
            response.status(),
            StatusCode::NOT_MODIFIED,
            "If-None-Match: {validator}"
        );
    }
}

#[tokio::test]
async fn reads_are_chunked_by_max_read_bytes() {
    let server = TestServer::start_with(|c| c.http.max_read_bytes = 64).await;
    server.create("s", "application/octet-stream").await;
    // 30 messages of 7..=16 bytes each: about 340 bytes in all.
    let mut expected = Vec::new();
    let mut boundaries = vec![];
    for i in 0..30u8 {
        let message: Vec<u8> = (0..(7 + i % 10)).map(|j| i.wrapping_mul(31) ^ j).collect();
        expected.extend_from_slice(&message);
        boundaries.push(
            server
                .append("s", "application/octet-stream", message)
                .await,
        );
    }
    let tail = boundaries.last().cloned().expect("appended");
    server.close("s").await;

    let mut offset = "-1".to_owned();
    let mut data = Vec::new();
    let mut chunks = 0;
    loop {
        let response = server.read_from("s", &offset).await;
        assert_eq!(response.status(), StatusCode::OK);
        let up_to_date = header(&response, "stream-up-to-date").is_some();
        let closed = header(&response, "stream-closed").is_some();
        let next = next_offset(&response);
        let chunk = body(response).await;
        chunks += 1;
        assert!(!chunk.is_empty(), "a chunk before the tail has data");
        assert!(
            chunk.len() <= 64,
            "chunk of {} bytes exceeds the limit",
            chunk.len()
        );
        assert!(
            boundaries.contains(&next),
            "chunks end on append boundaries, {next} is not one"
        );
        data.extend_from_slice(&chunk);
        if next == tail {
            assert!(up_to_date, "the final chunk is up to date");
            assert!(
                closed,
                "the final chunk of a closed stream carries Stream-Closed"
            );
            break;
        }
        assert!(!up_to_date, "a partial chunk must omit Stream-Up-To-Date");
        assert!(!closed, "a partial chunk must omit Stream-Closed");
        assert!(next > offset || offset == "-1", "offsets advance");
        offset = next;
    }
    assert_eq!(data, expected, "chunks reassemble the exact bytes");
    assert!(chunks >= 340 / 64, "the read was split ({chunks} chunks)");
}

#[tokio::test]
async fn a_message_larger_than_the_read_limit_is_returned_whole() {
    let server = TestServer::start_with(|c| c.http.max_read_bytes = 64).await;
    server.create("s", "application/octet-stream").await;
    let small = server
        .append("s", "application/octet-stream", vec![1u8; 10])
        .await;
    let big = server
        .append("s", "application/octet-stream", vec![2u8; 200])
        .await;
    server
        .append("s", "application/octet-stream", vec![3u8; 10])
        .await;

    let first = server.read_from("s", "-1").await;
    assert_eq!(
        next_offset(&first),
        small,
        "the small message fits; the big one does not"
    );
    assert_eq!(body(first).await, vec![1u8; 10]);

    let second = server.read_from("s", &small).await;
    assert_eq!(next_offset(&second), big);
    assert!(header(&second, "stream-up-to-date").is_none());
    assert_eq!(body(second).await, vec![2u8; 200]);
}

#[tokio::test]
async fn head_reports_metadata_without_a_body() {
    let server = TestServer::start().await;
    let created = send(
        server
            .put("s")
            .header("content-type", "text/plain; charset=utf-8")
            .header("stream-ttl", "600")
            .body("abc"),
    )
    .await;
    assert_eq!(created.status(), StatusCode::CREATED);

    let head = send(server.head("s")).await;
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        header(&head, "content-type").as_deref(),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(next_offset(&head), next_offset(&created));
    assert_eq!(header(&head, "cache-control").as_deref(), Some("no-store"));
    assert_eq!(header(&head, "stream-ttl").as_deref(), Some("600"));
    assert!(header(&head, "stream-closed").is_none());
    assert!(body(head).await.is_empty());

    let tail = server.close("s").await;
    let closed = send(server.head("s")).await;
    assert_eq!(header(&closed, "stream-closed").as_deref(), Some("true"));
    assert_eq!(next_offset(&closed), tail);
}

#[tokio::test]
async fn unsupported_methods_are_405_with_allow() {
    let server = TestServer::start().await;
    server.create("s", "text/plain").await;
    let response = send(server.client.patch(server.url("s")).body("x")).await;
    let allow = header(&response, "allow").expect("405 carries Allow");
    for method in ["GET", "HEAD", "PUT", "POST", "DELETE"] {
        assert!(allow.contains(method), "Allow: {allow}");
    }
    assert_problem(response, StatusCode::METHOD_NOT_ALLOWED, "method").await;
}
