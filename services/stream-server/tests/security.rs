//! Security and limits (PROTOCOL.md §12, §6 reserved prefix): path
//! validation (traversal, empty segments, control characters, the `__ds`
//! prefix, length and segment limits), browser security headers on every
//! response (a sandboxing content security policy among them), CORS
//! preflight and exposed headers, request body limits (413, with and
//! without `Content-Length`), storage limits, and problem+json error bodies
//! naming the offending header.

mod common;

use bytes::Bytes;
use common::{ControlEvent, SseReader, TestServer, assert_problem, header, next_offset, send};
use reqwest::{Method, Response, StatusCode};

#[tokio::test]
async fn traversal_and_malformed_paths_are_rejected() {
    let server = TestServer::start().await;
    // Sent raw so that no client normalises the dot segments away.
    for target in [
        "/v1/stream/a/../b",
        "/v1/stream/../b",
        "/v1/stream/./a",
        "/v1/stream/a/./b",
        "/v1/stream/a/..",
        "/v1/stream/a//b",
        "/v1/stream/a/",
        "/v1/stream/%2e%2e/b",
        "/v1/stream/a%2F..%2Fb",
        "/v1/stream/a%2F%2Fb",
        "/v1/stream/a%5Cb",
        "/v1/stream/a%00b",
        "/v1/stream/a%0Ab",
        "/v1/stream/%FF",
    ] {
        for method in ["PUT", "GET", "POST", "HEAD", "DELETE"] {
            let response = server.raw(method, target).await;
            assert_eq!(response.status, 400, "{method} {target}: {response:?}");
            assert_eq!(response.header("x-content-type-options"), Some("nosniff"));
        }
    }
    // Nothing was created under a normalised name either.
    for path in ["b", "a/b", "a"] {
        assert_eq!(
            server
                .raw("HEAD", &format!("/v1/stream/{path}"))
                .await
                .status,
            404,
            "{path}"
        );
    }
}

#[tokio::test]
async fn the_reserved_prefix_is_never_a_stream() {
    // Paths under `__ds` are the control routes (§6), however spelled.
    let server = TestServer::start().await;
    for path in ["__ds", "__ds/other", "%5F%5Fds/other", "_%5Fds/x/y"] {
        let put = send(server.put(path).header("content-type", "text/plain")).await;
        assert_eq!(put.status(), StatusCode::NOT_FOUND, "PUT {path}");
        assert_eq!(send(server.get(path)).await.status(), StatusCode::NOT_FOUND);
    }
    let not_a_subscription = send(
        server
            .put("__ds/subscriptions/sub-1")
            .header("content-type", "text/plain")
            .body("x"),
    )
    .await;
    assert_eq!(not_a_subscription.status(), StatusCode::BAD_REQUEST);
    let jwks = send(server.get("__ds/jwks.json")).await;
    assert_eq!(jwks.status(), StatusCode::OK);
    assert_eq!(jwks.headers()["content-type"], "application/jwk-set+json");
    // Only the first segment is reserved.
    assert_eq!(
        send(server.put("app/__ds")).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(
        send(server.put("__dsx")).await.status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn path_length_and_segment_limits_apply() {
    let server = TestServer::start_with(|c| {
        c.limits.max_path_bytes = 32;
        c.limits.max_path_segments = 4;
    })
    .await;
    let longest = "p".repeat(32);
    assert_eq!(
        send(server.put(&longest)).await.status(),
        StatusCode::CREATED
    );
    let too_long = send(server.put(&"p".repeat(33))).await;
    assert_problem(too_long, StatusCode::BAD_REQUEST, "32").await;
    // Multi-byte characters count in bytes: 11 × 3 bytes = 33.
    let wide = send(server.put(&"✓".repeat(11))).await;
    assert_eq!(wide.status(), StatusCode::BAD_REQUEST);

    assert_eq!(
        send(server.put("a/b/c/d")).await.status(),
        StatusCode::CREATED
    );
    let deep = send(server.put("a/b/c/d/e")).await;
    assert_problem(deep, StatusCode::BAD_REQUEST, "segments").await;
    // Reads are held to the same rules.
    assert_eq!(
        send(server.get("a/b/c/d/e")).await.status(),
        StatusCode::BAD_REQUEST
    );
}

fn assert_security_headers(response: &Response, what: &str) {
    assert_eq!(
        header(response, "x-content-type-options").as_deref(),
        Some("nosniff"),
        "{what}"
    );
    assert_eq!(
        header(response, "cross-origin-resource-policy").as_deref(),
        Some("cross-origin"),
        "{what}"
    );
    assert_eq!(
        header(response, "content-security-policy").as_deref(),
        Some(SANDBOX),
        "{what}"
    );
}

/// The policy on every response: a stream URL opened in a browser runs no
/// script, has an opaque origin and loads nothing.
const SANDBOX: &str = "default-src 'none'; sandbox";

/// A writer chooses the content type, `text/html` included: whatever reads
/// it, a browser must neither sniff it nor run it as a page of this origin,
/// while programmatic readers (here SSE and long-poll) still get the data.
#[tokio::test]
async fn writer_chosen_html_is_served_sandboxed() {
    let server = TestServer::start_with(|c| c.server.sse_reconnect_interval_secs = 5.0).await;
    let html = "text/html";
    let page = "<script>fetch('/v1/stream/secret')</script>";
    server.create("page", html).await;
    let tail = server.append("page", html, page).await;

    let read = server.read_from("page", "-1").await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(header(&read, "content-type").as_deref(), Some(html));
    assert_security_headers(&read, "catch-up read");
    assert_eq!(common::text(read).await, page);

    let sse = send(
        server
            .get("page")
            .query(&[("offset", "-1"), ("live", "sse")]),
    )
    .await;
    assert_security_headers(&sse, "SSE");
    let mut events = SseReader::new(sse);
    assert_eq!(events.expect_event().await.data(), page);
    assert_eq!(events.expect_event().await.event, "control");

    let waiting = server
        .get("page")
        .query(&[("offset", tail.as_str()), ("live", "long-poll")]);
    let waiting = tokio::spawn(send(waiting));
    server.append("page", html, "<p>more</p>").await;
    let long_poll = waiting.await.expect("the long-poll task");
    assert_eq!(long_poll.status(), StatusCode::OK);
    assert_security_headers(&long_poll, "long-poll");
    assert_eq!(common::text(long_poll).await, "<p>more</p>");
}

#[tokio::test]
async fn every_response_carries_the_browser_security_headers() {
    let server = TestServer::start_with(|c| {
        c.limits.max_request_body_bytes = 16;
        c.server.long_poll_timeout_secs = 0.1;
    })
    .await;
    let json = "application/json";
    let mut seen = Vec::new();
    let mut check = |response: Response, what: &str| {
        assert_security_headers(&response, what);
        seen.push(response.status().as_u16());
    };

    check(
        send(server.client.get(format!("{}/healthz", server.base))).await,
        "healthz",
    );
    check(
        send(server.client.get(format!("{}/readyz", server.base))).await,
        "readyz",
    );
    check(
        send(server.put("s").header("content-type", json)).await,
        "201",
    );
    check(
        send(server.put("s").header("content-type", json)).await,
        "200 PUT",
    );
    check(
        send(server.put("s").header("content-type", "text/plain")).await,
        "409",
    );
    check(
        send(server.post("s").header("content-type", json).body("1")).await,
        "204",
    );
    check(server.read_from("s", "-1").await, "200 GET");
    let etag = header(&server.read_from("s", "-1").await, "etag").expect("ETag");
    check(
        send(
            server
                .get("s")
                .query(&[("offset", "-1")])
                .header("if-none-match", etag),
        )
        .await,
        "304",
    );
    check(send(server.head("s")).await, "HEAD");
    check(server.read_from("s", "bogus").await, "400");
    check(server.read_from("missing", "-1").await, "404 stream");
    check(
        send(server.client.get(format!("{}/nope", server.base))).await,
        "404 route",
    );
    check(
        send(server.client.get(format!("{}/v1/stream", server.base))).await,
        "404 base",
    );
    check(send(server.client.patch(server.url("s"))).await, "405");
    check(
        send(
            server
                .post("s")
                .header("content-type", json)
                .body("[1,2,3,4,5,6,7,8,9]"),
        )
        .await,
        "413",
    );
    check(
        send(
            server
                .get("s")
                .query(&[("offset", "now"), ("live", "long-poll")]),
        )
        .await,
        "long-poll 204",
    );
    check(
        send(server.get("s").query(&[("offset", "-1"), ("live", "sse")])).await,
        "SSE",
    );
    check(
        send(
            server
                .client
                .request(Method::OPTIONS, server.url("s"))
                .header("origin", "https://app.example")
                .header("access-control-request-method", "POST"),
        )
        .await,
        "preflight",
    );
    check(send(server.delete("s")).await, "DELETE");
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(
        seen,
        [200, 201, 204, 304, 400, 404, 405, 409, 413],
        "the check covered every kind of answer"
    );
}

const PROTOCOL_REQUEST_HEADERS: [&str; 15] = [
    "content-type",
    "if-none-match",
    "authorization",
    "stream-seq",
    "stream-ttl",
    "stream-expires-at",
    "stream-closed",
    "stream-forked-from",
    "stream-fork-offset",
    "stream-fork-sub-offset",
    "producer-id",
    "producer-epoch",
    "producer-seq",
    "traceparent",
    "tracestate",
];

const PROTOCOL_RESPONSE_HEADERS: [&str; 15] = [
    "stream-next-offset",
    "stream-up-to-date",
    "stream-cursor",
    "stream-closed",
    "stream-ttl",
    "stream-expires-at",
    "stream-sse-data-encoding",
    "producer-epoch",
    "producer-seq",
    "producer-expected-seq",
    "producer-received-seq",
    "etag",
    "location",
    "content-type",
    "traceresponse",
];

fn list(response: &Response, name: &str) -> Vec<String> {
    header(response, name)
        .unwrap_or_else(|| panic!("missing {name}: {:?}", response.headers()))
        .split(',')
        .map(|v| v.trim().to_ascii_lowercase())
        .collect()
}

#[tokio::test]
async fn cors_preflight_allows_the_protocol() {
    let server = TestServer::start().await;
    // Preflights are answered for any stream URL, existing or not.
    let preflight = send(
        server
            .client
            .request(Method::OPTIONS, server.url("any/stream"))
            .header("origin", "https://app.example")
            .header("access-control-request-method", "PUT")
            .header(
                "access-control-request-headers",
                PROTOCOL_REQUEST_HEADERS.join(","),
            ),
    )
    .await;
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(
        header(&preflight, "access-control-allow-origin").as_deref(),
        Some("*")
    );
    let methods = list(&preflight, "access-control-allow-methods");
    for method in ["get", "head", "put", "post", "delete"] {
        assert!(
            methods.contains(&method.to_owned()),
            "{method} in {methods:?}"
        );
    }
    let allowed = list(&preflight, "access-control-allow-headers");
    for name in PROTOCOL_REQUEST_HEADERS {
        assert!(allowed.contains(&name.to_owned()), "{name} in {allowed:?}");
    }
    assert!(header(&preflight, "access-control-max-age").is_some());
}

#[tokio::test]
async fn cors_exposes_protocol_response_headers() {
    let server = TestServer::start().await;
    server.create("s", "text/plain").await;
    let read = send(
        server
            .get("s")
            .query(&[("offset", "-1")])
            .header("origin", "https://app.example"),
    )
    .await;
    assert_eq!(
        header(&read, "access-control-allow-origin").as_deref(),
        Some("*")
    );
    let exposed = list(&read, "access-control-expose-headers");
    for name in PROTOCOL_RESPONSE_HEADERS {
        assert!(exposed.contains(&name.to_owned()), "{name} in {exposed:?}");
    }
}

#[tokio::test]
async fn cors_headers_go_to_writes_from_browsers_and_to_every_read() {
    let server = TestServer::start().await;
    server.create("s", "text/plain").await;
    let allowed = |response: &Response| header(response, "access-control-allow-origin");

    // A write no browser sent: nothing for a CORS check to read.
    let plain = send(
        server
            .post("s")
            .header("content-type", "text/plain")
            .body("a"),
    )
    .await;
    assert_eq!(plain.status(), StatusCode::NO_CONTENT);
    assert_eq!(allowed(&plain), None);
    assert_eq!(header(&plain, "access-control-expose-headers"), None);
    // The security headers are for every response.
    assert_eq!(
        header(&plain, "x-content-type-options").as_deref(),
        Some("nosniff")
    );

    // The same write from a page.
    let browser = send(
        server
            .post("s")
            .header("content-type", "text/plain")
            .header("origin", "https://app.example")
            .body("b"),
    )
    .await;
    assert_eq!(browser.status(), StatusCode::NO_CONTENT);
    assert_eq!(allowed(&browser).as_deref(), Some("*"));
    assert!(list(&browser, "access-control-expose-headers").contains(&"stream-next-offset".into()));

    // A read without Origin may be cached and served to a page later.
    let read = server.read_from("s", "-1").await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(allowed(&read).as_deref(), Some("*"));
    assert_eq!(read.text().await.expect("body"), "ab");
}

#[tokio::test]
async fn cors_origins_can_be_restricted() {
    let server = TestServer::start_with(|c| {
        c.http.cors_origins = "https://a.example, https://b.example".into()
    })
    .await;
    server.create("s", "text/plain").await;
    for origin in ["https://a.example", "https://b.example"] {
        let read = send(server.get("s").header("origin", origin)).await;
        assert_eq!(
            header(&read, "access-control-allow-origin").as_deref(),
            Some(origin)
        );
    }
    let other = send(server.get("s").header("origin", "https://evil.example")).await;
    assert!(header(&other, "access-control-allow-origin").is_none());
}

#[tokio::test]
async fn request_bodies_over_the_limit_are_413() {
    let server = TestServer::start_with(|c| c.limits.max_request_body_bytes = 1000).await;
    let tail = server.create("s", "application/octet-stream").await;
    let octets = "application/octet-stream";

    // Exactly at the limit is fine.
    let at_limit = server.append("s", octets, vec![1u8; 1000]).await;

    // Over the limit with a Content-Length...
    let declared = send(
        server
            .post("s")
            .header("content-type", octets)
            .body(vec![2u8; 1001]),
    )
    .await;
    assert_problem(declared, StatusCode::PAYLOAD_TOO_LARGE, "1000").await;

    // ...and with a chunked body whose size is only known while reading it.
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        (0..3).map(|_| Ok(Bytes::from(vec![3u8; 400]))).collect();
    let chunked = send(server.post("s").header("content-type", octets).body(
        reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)),
    ))
    .await;
    assert_eq!(chunked.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // The same limit applies to initial bodies.
    let create = send(
        server
            .put("big")
            .header("content-type", octets)
            .body(vec![4u8; 1001]),
    )
    .await;
    assert_eq!(create.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        send(server.head("big")).await.status(),
        StatusCode::NOT_FOUND
    );

    let (data, end) = server.read_all("s").await;
    assert!(end > tail);
    assert_eq!(end, at_limit, "refused bodies stored nothing");
    assert_eq!(data, vec![1u8; 1000]);
}

#[tokio::test]
async fn per_stream_size_limit_is_enforced() {
    let server = TestServer::start_with(|c| c.limits.max_stream_bytes = 100).await;
    let octets = "application/octet-stream";
    server.create("s", octets).await;
    let tail = server.append("s", octets, vec![0u8; 60]).await;
    let over = send(
        server
            .post("s")
            .header("content-type", octets)
            .body(vec![0u8; 41]),
    )
    .await;
    assert_eq!(over.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(next_offset(&send(server.head("s")).await), tail);
    server.append("s", octets, vec![0u8; 40]).await;
    // Other streams have their own budget.
    server.create("t", octets).await;
    server.append("t", octets, vec![0u8; 100]).await;
}

#[tokio::test]
async fn memory_limit_is_enforced_and_released() {
    let server = TestServer::start_with(|c| c.limits.max_memory_bytes = 100).await;
    let octets = "application/octet-stream";
    server.create("a", octets).await;
    server.append("a", octets, vec![0u8; 60]).await;
    server.create("b", octets).await;
    let full = send(
        server
            .post("b")
            .header("content-type", octets)
            .body(vec![0u8; 50]),
    )
    .await;
    assert_eq!(full.status(), StatusCode::INSUFFICIENT_STORAGE);

    // A fork shares its source's bytes; soft-deleting the source keeps them.
    let fork = send(server.put("f").header("stream-forked-from", "a")).await;
    assert_eq!(fork.status(), StatusCode::CREATED);
    assert_eq!(
        send(server.delete("a")).await.status(),
        StatusCode::NO_CONTENT
    );
    let still_full = send(
        server
            .post("b")
            .header("content-type", octets)
            .body(vec![0u8; 50]),
    )
    .await;
    assert_eq!(still_full.status(), StatusCode::INSUFFICIENT_STORAGE);

    // Deleting the fork cleans up the source and frees its memory.
    assert_eq!(
        send(server.delete("f")).await.status(),
        StatusCode::NO_CONTENT
    );
    server.append("b", octets, vec![0u8; 50]).await;
    server.append("b", octets, vec![0u8; 50]).await;
    let over = send(
        server
            .post("b")
            .header("content-type", octets)
            .body(vec![0u8; 1]),
    )
    .await;
    assert_eq!(over.status(), StatusCode::INSUFFICIENT_STORAGE);
}

#[tokio::test]
async fn error_bodies_are_problem_details_naming_the_header() {
    let server = TestServer::start().await;
    server.create("s", "text/plain").await;
    let cases = [
        (
            server
                .post("s")
                .header("content-type", "text/plain")
                .header("producer-id", "p")
                .header("producer-epoch", "abc")
                .header("producer-seq", "0")
                .body("x"),
            "Producer-Epoch",
        ),
        (server.put("t").header("stream-ttl", "1.5"), "Stream-TTL"),
        (
            server.put("t").header("stream-expires-at", "soon"),
            "Stream-Expires-At",
        ),
        (
            server
                .put("t")
                .header("stream-forked-from", "s")
                .header("stream-fork-offset", "zzz"),
            "Stream-Fork-Offset",
        ),
        (
            server
                .post("s")
                .header("content-type", "text/plain")
                .header("producer-id", "p")
                .body("x"),
            "Producer-",
        ),
    ];
    for (request, named) in cases {
        let response = send(request).await;
        assert_eq!(
            header(&response, "cache-control").as_deref(),
            Some("no-store")
        );
        let problem = assert_problem(response, StatusCode::BAD_REQUEST, named).await;
        assert_eq!(problem["title"], "Bad Request", "{problem}");
        assert!(problem["type"].is_string(), "{problem}");
    }

    // A non-ASCII header value is named too.
    let value = reqwest::header::HeaderValue::from_bytes("caf\u{e9}".as_bytes())
        .expect("opaque header bytes");
    let response = send(server.put("u").header("stream-ttl", value)).await;
    assert_problem(response, StatusCode::BAD_REQUEST, "stream-ttl").await;
}

#[tokio::test]
async fn sse_connections_carry_the_security_headers() {
    let server = TestServer::start_with(|c| c.server.sse_reconnect_interval_secs = 5.0).await;
    server.create("s", "application/octet-stream").await;
    server.close("s").await;
    let response = send(server.get("s").query(&[("offset", "-1"), ("live", "sse")])).await;
    assert_security_headers(&response, "SSE");
    assert_eq!(
        header(&response, "cache-control").as_deref(),
        Some("no-cache")
    );
    let mut events = SseReader::new(response);
    assert_eq!(events.expect_event().await.control()["streamClosed"], true);
}
