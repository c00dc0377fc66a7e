//! Forks (PROTOCOL.md §4.2, §8 "Offsets and forked streams"): inheriting
//! data up to the fork offset in the source's offset space, isolation from
//! later source appends, sub-offsets for bytes and JSON, content type and
//! expiry inheritance, creation errors and idempotency, soft delete (410 /
//! 409) with cascading cleanup, fresh writer state, and live reads on forks.

mod common;

use common::{
    ControlEvent, TestServer, assert_problem, body, header, json_body, next_offset, open_sse, send,
    text,
};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde_json::json;
use std::time::{Duration, Instant};

/// `PUT` creating `path` as a fork of `source` (at `offset`, if given).
fn fork(server: &TestServer, path: &str, source: &str, offset: Option<&str>) -> RequestBuilder {
    let mut request = server
        .put(path)
        .header("stream-forked-from", format!("/v1/stream/{source}"));
    if let Some(offset) = offset {
        request = request.header("stream-fork-offset", offset);
    }
    request
}

async fn created(request: RequestBuilder) -> Response {
    let response = send(request).await;
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "{:?}",
        response.headers()
    );
    response
}

#[tokio::test]
async fn a_fork_inherits_data_up_to_the_fork_offset() {
    let server = TestServer::start().await;
    server.create("src", "text/plain").await;
    let after_a = server.append("src", "text/plain", "a").await;
    let after_b = server.append("src", "text/plain", "b").await;
    server.append("src", "text/plain", "c").await;

    let response = created(fork(&server, "fork", "src", Some(&after_b))).await;
    assert_eq!(
        next_offset(&response),
        after_b,
        "the fork's tail is the fork offset"
    );
    assert_eq!(
        header(&response, "content-type").as_deref(),
        Some("text/plain")
    );

    // Offsets are shared with the source: no translation.
    let read = server.read_from("fork", "-1").await;
    assert_eq!(next_offset(&read), after_b);
    assert_eq!(header(&read, "stream-up-to-date").as_deref(), Some("true"));
    assert_eq!(text(read).await, "ab");
    let from_a = server.read_from("fork", &after_a).await;
    assert_eq!(text(from_a).await, "b");

    // Later source appends are invisible to the fork, and the other way round.
    server.append("src", "text/plain", "d").await;
    let own = server.append("fork", "text/plain", "X").await;
    assert!(own > after_b, "fork offsets continue after the fork offset");
    assert_eq!(server.read_all("fork").await.0, b"abX");
    assert_eq!(server.read_all("src").await.0, b"abcd");
    let rest = server.read_from("fork", &after_b).await;
    assert_eq!(next_offset(&rest), own);
    assert_eq!(text(rest).await, "X");
}

#[tokio::test]
async fn without_an_offset_a_fork_starts_at_the_source_tail() {
    let server = TestServer::start().await;
    server.create("src", "text/plain").await;
    let tail = server.append("src", "text/plain", "everything").await;
    let response = created(fork(&server, "fork", "src", None)).await;
    assert_eq!(next_offset(&response), tail);
    server.append("src", "text/plain", " and more").await;
    assert_eq!(server.read_all("fork").await.0, b"everything");

    // A bare relative path names the source too.
    let relative = send(server.put("fork2").header("stream-forked-from", "src")).await;
    assert_eq!(relative.status(), StatusCode::CREATED);
    assert_eq!(server.read_all("fork2").await.0, b"everything and more");
}

#[tokio::test]
async fn sub_offsets_inherit_part_of_the_next_message() {
    let server = TestServer::start().await;
    server.create("src", "text/plain").await;
    let after_hello = server.append("src", "text/plain", "hello").await;
    server.append("src", "text/plain", "world").await;

    let partial = created(
        fork(&server, "fork", "src", Some(&after_hello)).header("stream-fork-sub-offset", "3"),
    )
    .await;
    let fork_tail = next_offset(&partial);
    assert!(fork_tail > after_hello);
    assert_eq!(server.read_all("fork").await.0, b"hellowor");
    let own = server.append("fork", "text/plain", "!").await;
    assert!(own > fork_tail);
    assert_eq!(server.read_all("fork").await.0, b"hellowor!");

    // The whole next message is the largest sub-offset; "0" is no sub-offset.
    created(
        fork(&server, "whole", "src", Some(&after_hello)).header("stream-fork-sub-offset", "5"),
    )
    .await;
    assert_eq!(server.read_all("whole").await.0, b"helloworld");
    let zero = created(
        fork(&server, "zero", "src", Some(&after_hello)).header("stream-fork-sub-offset", "0"),
    )
    .await;
    assert_eq!(next_offset(&zero), after_hello);

    for bad in ["6", "-1", "abc", "01", "1.5"] {
        let response = send(
            fork(&server, &format!("bad-{bad}"), "src", Some(&after_hello))
                .header("stream-fork-sub-offset", bad),
        )
        .await;
        assert_problem(response, StatusCode::BAD_REQUEST, "Sub-Offset").await;
    }
}

#[tokio::test]
async fn json_sub_offsets_count_messages() {
    let server = TestServer::start().await;
    let start = server.create("src", "application/json").await;
    server
        .append("src", "application/json", r#"[{"n":1},{"n":2},{"n":3}]"#)
        .await;
    created(fork(&server, "fork", "src", Some(&start)).header("stream-fork-sub-offset", "2")).await;
    assert_eq!(
        json_body(server.read_from("fork", "-1").await).await,
        json!([{"n":1},{"n":2}])
    );
    server
        .append("fork", "application/json", r#"{"n":"own"}"#)
        .await;
    assert_eq!(
        json_body(server.read_from("fork", "-1").await).await,
        json!([{"n":1},{"n":2},{"n":"own"}]),
        "reads across the boundary are one array"
    );
    let too_far =
        send(fork(&server, "too-far", "src", Some(&start)).header("stream-fork-sub-offset", "4"))
            .await;
    assert_eq!(too_far.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn content_type_is_inherited_and_must_match() {
    let server = TestServer::start().await;
    server.create("src", "application/json").await;
    server.append("src", "application/json", "[1,2]").await;

    let inherited = created(fork(&server, "a", "src", None)).await;
    assert_eq!(
        header(&inherited, "content-type").as_deref(),
        Some("application/json")
    );
    let explicit =
        created(fork(&server, "b", "src", None).header("content-type", "Application/JSON")).await;
    assert_eq!(explicit.status(), StatusCode::CREATED);

    let mismatch = send(fork(&server, "c", "src", None).header("content-type", "text/plain")).await;
    assert_problem(mismatch, StatusCode::CONFLICT, "content type").await;
    assert_eq!(send(server.head("c")).await.status(), StatusCode::NOT_FOUND);

    // The fork is in JSON mode like its source.
    server.append("a", "application/json", "[3]").await;
    assert_eq!(
        json_body(server.read_from("a", "-1").await).await,
        json!([1, 2, 3])
    );
    let wrong = send(
        server
            .post("a")
            .header("content-type", "text/plain")
            .body("x"),
    )
    .await;
    assert_eq!(wrong.status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn expiry_follows_the_inheritance_table() {
    let server = TestServer::start().await;
    assert_eq!(
        send(server.put("ttl-src").header("stream-ttl", "600"))
            .await
            .status(),
        StatusCode::CREATED
    );
    let at = "2030-01-01T00:00:00Z";
    assert_eq!(
        send(server.put("at-src").header("stream-expires-at", at))
            .await
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(
        send(server.put("plain-src")).await.status(),
        StatusCode::CREATED
    );

    let server = &server;
    let head = |path: &'static str| async move {
        let response = send(server.head(path)).await;
        (
            header(&response, "stream-ttl"),
            header(&response, "stream-expires-at"),
        )
    };

    created(fork(server, "ttl-inherit", "ttl-src", None)).await;
    assert_eq!(head("ttl-inherit").await, (Some("600".into()), None));
    created(fork(server, "ttl-own", "ttl-src", None).header("stream-ttl", "30")).await;
    assert_eq!(head("ttl-own").await, (Some("30".into()), None));
    created(fork(server, "ttl-at", "ttl-src", None).header("stream-expires-at", at)).await;
    assert_eq!(head("ttl-at").await, (None, Some(at.into())));

    created(fork(server, "at-inherit", "at-src", None)).await;
    assert_eq!(head("at-inherit").await, (None, Some(at.into())));
    created(fork(server, "at-ttl", "at-src", None).header("stream-ttl", "30")).await;
    assert_eq!(head("at-ttl").await, (Some("30".into()), None));
    let later = "2031-01-01T00:00:00Z";
    created(fork(server, "at-later", "at-src", None).header("stream-expires-at", later)).await;
    assert_eq!(head("at-later").await, (None, Some(later.into())));

    created(fork(server, "none", "plain-src", None)).await;
    assert_eq!(head("none").await, (None, None));
    created(fork(server, "none-ttl", "plain-src", None).header("stream-ttl", "30")).await;
    assert_eq!(head("none-ttl").await, (Some("30".into()), None));

    let both = send(
        fork(server, "both", "plain-src", None)
            .header("stream-ttl", "30")
            .header("stream-expires-at", at),
    )
    .await;
    assert_eq!(both.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn fork_creation_errors() {
    let server = TestServer::start().await;
    server.create("src", "text/plain").await;
    let tail = server.append("src", "text/plain", "abc").await;

    let missing = send(fork(&server, "f1", "nope", None)).await;
    assert_problem(missing, StatusCode::NOT_FOUND, "source").await;

    // Beyond the tail: one more message of one more byte.
    let beyond = "0000000000000002_0000000000000004";
    assert!(beyond > tail.as_str());
    let response = send(fork(&server, "f2", "src", Some(beyond))).await;
    assert_problem(response, StatusCode::BAD_REQUEST, "beyond").await;

    let malformed = send(fork(&server, "f3", "src", Some("garbage"))).await;
    assert_problem(malformed, StatusCode::BAD_REQUEST, "Stream-Fork-Offset").await;

    for orphan in ["stream-fork-offset", "stream-fork-sub-offset"] {
        let value = if orphan == "stream-fork-offset" {
            tail.as_str()
        } else {
            "1"
        };
        let response = send(server.put("f4").header(orphan, value)).await;
        assert_problem(response, StatusCode::BAD_REQUEST, "Stream-Forked-From").await;
    }

    let traversal = send(
        server
            .put("f5")
            .header("stream-forked-from", "/v1/stream/a/../src"),
    )
    .await;
    assert_problem(traversal, StatusCode::BAD_REQUEST, "Stream-Forked-From").await;

    for path in ["f1", "f2", "f3", "f4", "f5"] {
        assert_eq!(
            send(server.head(path)).await.status(),
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
}

#[tokio::test]
async fn fork_creation_is_idempotent() {
    let server = TestServer::start().await;
    server.create("src", "text/plain").await;
    let first = server.append("src", "text/plain", "a").await;
    let second = server.append("src", "text/plain", "b").await;

    created(fork(&server, "f", "src", Some(&first))).await;
    let again = send(fork(&server, "f", "src", Some(&first))).await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(next_offset(&again), first);

    let other_offset = send(fork(&server, "f", "src", Some(&second))).await;
    assert_eq!(other_offset.status(), StatusCode::CONFLICT);
    server.create("other", "text/plain").await;
    let other_source = send(fork(&server, "f", "other", None)).await;
    assert_eq!(other_source.status(), StatusCode::CONFLICT);
    let not_a_fork = send(server.put("f").header("content-type", "text/plain")).await;
    assert_eq!(not_a_fork.status(), StatusCode::CONFLICT);
    let plain_as_fork = send(fork(&server, "other", "src", None)).await;
    assert_eq!(plain_as_fork.status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn a_closed_source_can_be_forked_and_the_fork_is_open() {
    let server = TestServer::start().await;
    server.create("src", "text/plain").await;
    let middle = server.append("src", "text/plain", "first ").await;
    server.append("src", "text/plain", "second").await;
    server.close("src").await;

    let at_tail = created(fork(&server, "f", "src", None)).await;
    assert!(
        header(&at_tail, "stream-closed").is_none(),
        "forks start open"
    );
    server.append("f", "text/plain", " third").await;
    assert_eq!(server.read_all("f").await.0, b"first second third");

    created(fork(&server, "g", "src", Some(&middle))).await;
    let read = server.read_from("g", "-1").await;
    assert!(header(&read, "stream-closed").is_none());
    assert_eq!(text(read).await, "first ");
}

#[tokio::test]
async fn deleting_a_forked_source_is_a_soft_delete() {
    let server = TestServer::start().await;
    server.create("src", "text/plain").await;
    server.append("src", "text/plain", "shared").await;
    created(fork(&server, "f", "src", None)).await;

    assert_eq!(
        send(server.delete("src")).await.status(),
        StatusCode::NO_CONTENT
    );

    // Every direct operation on the source is 410; re-creation is 409.
    assert_problem(
        server.read_from("src", "-1").await,
        StatusCode::GONE,
        "deleted",
    )
    .await;
    assert_eq!(send(server.head("src")).await.status(), StatusCode::GONE);
    let append = send(
        server
            .post("src")
            .header("content-type", "text/plain")
            .body("x"),
    )
    .await;
    assert_eq!(append.status(), StatusCode::GONE);
    assert_eq!(send(server.delete("src")).await.status(), StatusCode::GONE);
    let live = send(
        server
            .get("src")
            .query(&[("offset", "-1"), ("live", "long-poll")]),
    )
    .await;
    assert_eq!(live.status(), StatusCode::GONE);
    let recreate = send(server.put("src").header("content-type", "text/plain")).await;
    assert_eq!(recreate.status(), StatusCode::CONFLICT);
    // A soft-deleted stream cannot be forked again.
    let refork = send(fork(&server, "g", "src", None)).await;
    assert_eq!(refork.status(), StatusCode::CONFLICT);

    // The fork still reads the inherited data.
    server.append("f", "text/plain", "+own").await;
    assert_eq!(server.read_all("f").await.0, b"shared+own");

    // Deleting the last fork cleans the source up; the path is free again.
    assert_eq!(
        send(server.delete("f")).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        send(server.head("src")).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(send(server.head("f")).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(send(server.put("src")).await.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn cleanup_cascades_up_a_fork_chain() {
    let server = TestServer::start().await;
    server.create("a", "text/plain").await;
    server.append("a", "text/plain", "A").await;
    created(fork(&server, "b", "a", None)).await;
    server.append("b", "text/plain", "B").await;
    created(fork(&server, "c", "b", None)).await;
    server.append("c", "text/plain", "C").await;
    // A second fork keeps `a` referenced after `b` goes.
    created(fork(&server, "a2", "a", None)).await;

    assert_eq!(
        send(server.delete("a")).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        send(server.delete("b")).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(send(server.head("a")).await.status(), StatusCode::GONE);
    assert_eq!(send(server.head("b")).await.status(), StatusCode::GONE);
    assert_eq!(
        server.read_all("c").await.0,
        b"ABC",
        "c still reads through b and a"
    );

    assert_eq!(
        send(server.delete("c")).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        send(server.head("b")).await.status(),
        StatusCode::NOT_FOUND,
        "b cleaned up"
    );
    assert_eq!(
        send(server.head("a")).await.status(),
        StatusCode::GONE,
        "a2 still uses a"
    );
    assert_eq!(server.read_all("a2").await.0, b"A");

    assert_eq!(
        send(server.delete("a2")).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        send(server.head("a")).await.status(),
        StatusCode::NOT_FOUND,
        "a cleaned up"
    );
}

#[tokio::test]
async fn writer_state_is_not_inherited() {
    let server = TestServer::start().await;
    server.create("src", "text/plain").await;
    for seq in 0..3u64 {
        let response = send(
            server
                .post("src")
                .header("content-type", "text/plain")
                .header("producer-id", "p")
                .header("producer-epoch", "0")
                .header("producer-seq", seq.to_string())
                .header("stream-seq", format!("s{seq}"))
                .body(format!("{seq}")),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    created(fork(&server, "f", "src", None)).await;

    // Seq 0 is new data on the fork, not a duplicate of the source's.
    let on_fork = send(
        server
            .post("f")
            .header("content-type", "text/plain")
            .header("producer-id", "p")
            .header("producer-epoch", "0")
            .header("producer-seq", "0")
            .body("f"),
    )
    .await;
    assert_eq!(on_fork.status(), StatusCode::OK);
    assert_eq!(header(&on_fork, "producer-seq").as_deref(), Some("0"));
    // And a Stream-Seq below the source's last one is accepted.
    let seq = send(
        server
            .post("f")
            .header("content-type", "text/plain")
            .header("stream-seq", "s0")
            .body("g"),
    )
    .await;
    assert_eq!(seq.status(), StatusCode::NO_CONTENT);
    assert_eq!(server.read_all("f").await.0, b"012fg");
}

/// Reads `path` from the start in as many chunks as the server cuts.
async fn read_chunked(server: &TestServer, path: &str) -> Vec<u8> {
    let mut offset = "-1".to_owned();
    let mut data = Vec::new();
    for _ in 0..1000 {
        let read = server.read_from(path, &offset).await;
        assert_eq!(read.status(), StatusCode::OK, "{path} at {offset}");
        let up_to_date = header(&read, "stream-up-to-date").is_some();
        offset = next_offset(&read);
        data.extend_from_slice(&body(read).await);
        if up_to_date {
            return data;
        }
    }
    panic!("{path} never read up to date");
}

#[tokio::test]
async fn chunked_reads_stitch_across_fork_boundaries() {
    let server = TestServer::start_with(|c| c.http.max_read_bytes = 10).await;
    let octets = "application/octet-stream";
    server.create("a", octets).await;
    let mut in_a = Vec::new();
    for i in 0..6u8 {
        let message = vec![b'a' + i; 3 + usize::from(i)];
        in_a.extend_from_slice(&message);
        server.append("a", octets, message).await;
    }
    created(fork(&server, "b", "a", None)).await;
    let mut in_b = in_a.clone();
    let mut b_offsets = Vec::new();
    for i in 0..4u8 {
        let message = vec![b'0' + i; 4];
        in_b.extend_from_slice(&message);
        b_offsets.push(server.append("b", octets, message).await);
    }
    // A fork of the fork at its tail, with data of its own.
    created(fork(&server, "c", "b", None)).await;
    let mut in_c = in_b.clone();
    for i in 0..3u8 {
        let message = vec![b'x' + i; 7];
        in_c.extend_from_slice(&message);
        server.append("c", octets, message).await;
    }
    // A fork of the fork inside b's own data, two bytes into its next message.
    created(fork(&server, "d", "b", Some(&b_offsets[0])).header("stream-fork-sub-offset", "2"))
        .await;
    server.append("d", octets, "dd").await;
    let mut in_d = in_a.clone();
    in_d.extend_from_slice(b"000011dd");

    // None of these appends may leak into forks created earlier.
    server.append("a", octets, "invisible").await;
    server.append("b", octets, "invisible").await;

    for (path, expected) in [("b", &in_b), ("c", &in_c), ("d", &in_d)] {
        let mut expected = expected.clone();
        if path == "b" {
            expected.extend_from_slice(b"invisible");
        }
        let chunked = read_chunked(&server, path).await;
        assert_eq!(
            String::from_utf8_lossy(&chunked),
            String::from_utf8_lossy(&expected),
            "chunked read of {path}"
        );
        assert_eq!(server.read_all(path).await.0, expected);
    }
}

#[tokio::test]
async fn long_polls_on_a_fork_ignore_source_appends() {
    let server = TestServer::start_with(|c| c.server.long_poll_timeout_secs = 10.0).await;
    server.create("src", "text/plain").await;
    let first = server.append("src", "text/plain", "old").await;
    let tail = created(fork(&server, "f", "src", None)).await;
    let tail = next_offset(&tail);

    // In the inherited range: answered at once, not after the 10 s timeout.
    let started = Instant::now();
    let inherited = send(
        server
            .get("f")
            .query(&[("offset", "-1"), ("live", "long-poll")]),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(inherited.status(), StatusCode::OK);
    assert_eq!(next_offset(&inherited), first);
    assert_eq!(text(inherited).await, "old");

    // At the fork's tail: a source append does not wake the poll...
    let poll = tokio::spawn(send(
        server
            .get("f")
            .query(&[("offset", tail.as_str()), ("live", "long-poll")]),
    ));
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.append("src", "text/plain", "source only").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "woken by an append to the source");

    // ...the fork's own append does, and only the fork's data is returned.
    let own = server.append("f", "text/plain", "fork news").await;
    let response = tokio::time::timeout(Duration::from_secs(2), poll)
        .await
        .expect("the fork's append wakes the poll")
        .expect("the poll task panicked");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(next_offset(&response), own);
    assert_eq!(text(response).await, "fork news");
}

#[tokio::test]
async fn sse_on_a_fork_delivers_inherited_then_own_data() {
    let server = TestServer::start_with(|c| c.server.sse_reconnect_interval_secs = 10.0).await;
    server.create("src", "text/plain").await;
    server.append("src", "text/plain", "inherited").await;
    created(fork(&server, "f", "src", None)).await;

    let mut events = open_sse(&server, "f", "-1").await;
    assert_eq!(events.expect_event().await.data(), "inherited");
    assert_eq!(events.expect_event().await.control()["upToDate"], true);

    server.append("src", "text/plain", "source only").await;
    let own = server.append("f", "text/plain", "own").await;
    let data = events.expect_event().await;
    assert_eq!(data.data(), "own", "source appends are never delivered");
    assert_eq!(
        events.expect_event().await.control()["streamNextOffset"],
        own.as_str()
    );
}
