//! What passes through: headers both ways (hop-by-hop, identity,
//! credentials, Location), live reads (SSE, long-poll) delivered as they
//! happen, cancellation, body limits, CORS, query tokens and health checks.

mod common;

use common::{Stack, challenge, inspecting_upstream, send, wait_for_flag};
use ds_load::sse::{SseEvent, SseParser};
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[tokio::test]
async fn identity_is_the_gateways_and_credentials_stay_behind() {
    let (upstream, _) = inspecting_upstream().await;
    let stack = Stack::in_front_of(upstream, |config| config.auth.query_token = true).await;
    let token = stack.issue("alice", &["read"], &["**"]).await;

    let response = stack
        .client
        .get(stack.url("echo/a"))
        .query(&[("offset", "-1")])
        .bearer_auth(&token.token)
        .header("x-auth-subject", "mallory")
        .header("x-auth-token-id", "forged")
        .header("stream-seq", "7")
        .header("connection", "x-hop")
        .header("x-hop", "only-for-the-first-hop")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers().get("x-private-hop").is_none(),
        "upstream's hop-by-hop header stayed on its hop"
    );
    let location = response.headers()["location"].to_str().expect("ascii");
    assert_eq!(location, format!("{}/v1/stream/echo/a", stack.gateway.base));
    let seen: serde_json::Value = response.json().await.expect("json");
    let headers = &seen["headers"];
    assert_eq!(headers["x-auth-subject"], "alice");
    assert_eq!(headers["x-auth-token-id"], token.id.as_str());
    assert_eq!(headers["stream-seq"], "7");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert!(headers.get("authorization").is_none(), "token forwarded");
    assert!(headers.get("x-hop").is_none(), "hop-by-hop forwarded");
    assert_eq!(seen["query"], "offset=-1");

    // RFC 6750 §2.3 query token: accepted, then stripped.
    let response = stack
        .client
        .get(format!(
            "{}?offset=-1&access_token={}&live=sse",
            stack.url("echo/b"),
            token.token
        ))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    let seen: serde_json::Value = response.json().await.expect("json");
    assert_eq!(seen["query"], "offset=-1&live=sse");
    assert!(seen["headers"].get("authorization").is_none());
    stack.finish().await;
}

#[tokio::test]
async fn query_tokens_are_refused_unless_enabled() {
    let stack = Stack::start().await;
    let token = stack.issue("alice", &["read"], &["**"]).await;
    let response = stack
        .client
        .get(format!("{}?access_token={}", stack.url("x"), token.token))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(challenge(&response).contains(r#"error="invalid_request""#));
    stack.finish().await;
}

#[tokio::test]
async fn location_points_at_the_public_url() {
    let stack = Stack::start_with(|config| {
        config.server.public_url = Some("https://streams.example".into())
    })
    .await;
    let token = stack.issue("alice", &["write"], &["**"]).await;
    let response = stack.create(&stack.url("chat/one"), &token.token).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        response.headers()["location"],
        "https://streams.example/v1/stream/chat/one"
    );
    stack.finish().await;
}

#[tokio::test]
async fn head_answers_pass_through_as_upstream_sent_them() {
    let stack = Stack::start().await;
    let token = stack.issue("alice", &["read", "write"], &["**"]).await;
    stack.create(&stack.url("head/a"), &token.token).await;
    let appended = send(
        stack
            .client
            .post(stack.url("head/a"))
            .bearer_auth(&token.token)
            .header("content-type", "text/plain")
            .body("hello"),
    )
    .await;
    assert_eq!(appended.status(), StatusCode::NO_CONTENT);
    let through = stack
        .call(Method::HEAD, &stack.url("head/a"), &token.token)
        .await;
    let direct = send(stack.client.head(stack.upstream_url("head/a"))).await;
    assert_eq!(through.status(), StatusCode::OK);
    // No Content-Length upstream did not send: a HEAD's would claim the
    // size of the GET's body.
    for name in ["content-length", "content-type", "stream-next-offset"] {
        assert_eq!(
            through.headers().get(name),
            direct.headers().get(name),
            "{name}"
        );
    }
    stack.finish().await;
}

#[tokio::test]
async fn sse_and_long_poll_deliver_appends_live() {
    let stack = Stack::start_with(|config| config.auth.query_token = true).await;
    let token = stack.issue("alice", &["read", "write"], &["**"]).await;
    let url = stack.url("live");
    let created = stack.create(&url, &token.token).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let tail = created.headers()["stream-next-offset"]
        .to_str()
        .expect("offset")
        .to_owned();

    // SSE, authenticated the way EventSource can: in the query.
    let sse = stack
        .client
        .get(format!(
            "{url}?offset={tail}&live=sse&access_token={}",
            token.token
        ))
        .send()
        .await
        .expect("sse");
    assert_eq!(sse.status(), StatusCode::OK);
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    let mut events = sse.bytes_stream();

    // A long-poll waiting at the tail at the same time.
    let long_poll = {
        let client = stack.client.clone();
        let url = format!("{url}?offset={tail}&live=long-poll");
        let token = token.token.clone();
        tokio::spawn(async move { client.get(url).bearer_auth(token).send().await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    let sent = Instant::now();
    let appended = stack
        .client
        .post(&url)
        .bearer_auth(&token.token)
        .header("content-type", "text/plain")
        .body("live-message")
        .send()
        .await
        .expect("append");
    assert_eq!(appended.status(), StatusCode::NO_CONTENT);

    let mut parser = SseParser::new();
    let mut received = Vec::new();
    while !received
        .iter()
        .any(|event: &SseEvent| event.data() == "live-message")
    {
        let chunk = tokio::time::timeout(Duration::from_secs(2), events.next())
            .await
            .expect("SSE event within 2 s")
            .expect("stream open")
            .expect("chunk");
        received.extend(parser.feed(&chunk));
    }
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "SSE delivery took {:?}",
        sent.elapsed()
    );

    let polled = tokio::time::timeout(Duration::from_secs(3), long_poll)
        .await
        .expect("long-poll answered")
        .expect("task")
        .expect("response");
    assert_eq!(polled.status(), StatusCode::OK);
    assert_eq!(polled.text().await.expect("body"), "live-message");
    stack.finish().await;
}

#[tokio::test]
async fn a_client_that_leaves_cancels_the_upstream_request() {
    let (upstream, inspection) = inspecting_upstream().await;
    let stack = Stack::in_front_of(upstream, |_| {}).await;
    let token = stack.issue("alice", &["read"], &["**"]).await;
    let response = stack
        .call(Method::GET, &stack.url("endless/x"), &token.token)
        .await;
    let mut body = response.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(2), body.next())
        .await
        .expect("first chunk")
        .expect("open")
        .expect("chunk");
    assert_eq!(&first[..], b"tick\n");
    assert!(!inspection.endless_dropped.load(Ordering::SeqCst));
    drop(body);

    wait_for_flag(
        &inspection.endless_dropped,
        Duration::from_secs(2),
        "upstream kept streaming after the client left",
    )
    .await;
    stack.finish().await;
}

#[tokio::test]
async fn a_client_that_leaves_before_the_answer_cancels_the_upstream_request() {
    let (upstream, inspection) = inspecting_upstream().await;
    let stack = Stack::in_front_of(upstream, |_| {}).await;
    let token = stack.issue("alice", &["read"], &["**"]).await;
    let abandoned = stack
        .client
        .get(stack.url("hang/x"))
        .bearer_auth(&token.token)
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(abandoned.is_err(), "the upstream never answers");
    wait_for_flag(
        &inspection.hang_dropped,
        Duration::from_secs(2),
        "upstream request still pending after the client left",
    )
    .await;
    stack.finish().await;
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let (upstream, inspection) = inspecting_upstream().await;
    let stack = Stack::in_front_of(upstream, |config| {
        config.limits.max_request_body_bytes = 1024
    })
    .await;
    let token = stack.issue("alice", &["write"], &["**"]).await;

    let declared = stack
        .client
        .post(stack.url("sink/a"))
        .bearer_auth(&token.token)
        .body(vec![b'x'; 2048])
        .send()
        .await
        .expect("send");
    assert_eq!(declared.status(), StatusCode::PAYLOAD_TOO_LARGE);

    let chunks = futures_util::stream::iter(
        (0..4).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'y'; 512]))),
    );
    let chunked = stack
        .client
        .post(stack.url("sink/b"))
        .bearer_auth(&token.token)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .expect("send");
    assert_eq!(chunked.status(), StatusCode::PAYLOAD_TOO_LARGE);

    let fits = stack
        .client
        .post(stack.url("sink/c"))
        .bearer_auth(&token.token)
        .body(vec![b'z'; 1024])
        .send()
        .await
        .expect("send");
    assert_eq!(fits.status(), StatusCode::OK);
    assert_eq!(inspection.sunk.load(Ordering::SeqCst), 1024);
    stack.finish().await;
}

#[tokio::test]
async fn cors_preflight_needs_no_token_and_refusals_are_readable() {
    let stack = Stack::start().await;
    let preflight = stack
        .client
        .request(reqwest::Method::OPTIONS, stack.url("chat/a"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type, producer-id",
        )
        .send()
        .await
        .expect("preflight");
    assert!(preflight.status().is_success(), "{}", preflight.status());
    let allowed = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .expect("ascii")
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("producer-id"));

    let refused = stack
        .client
        .get(stack.url("chat/a"))
        .header("origin", "https://app.example")
        .send()
        .await
        .expect("send");
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(refused.headers()["access-control-allow-origin"], "*");
    let exposed = refused.headers()["access-control-expose-headers"]
        .to_str()
        .expect("ascii");
    assert!(exposed.contains("www-authenticate") && exposed.contains("stream-next-offset"));
    stack.finish().await;
}

#[tokio::test]
async fn browser_writes_get_one_set_of_cors_headers_and_others_none() {
    let stack = Stack::start().await;
    let token = stack.issue("alice", &["read", "write"], &["**"]).await;
    let url = stack.url("chat/cors");
    assert_eq!(
        stack.create(&url, &token.token).await.status(),
        StatusCode::CREATED
    );
    let append = |origin: Option<&str>| {
        let mut request = stack
            .client
            .post(&url)
            .bearer_auth(&token.token)
            .header("content-type", "text/plain")
            .body("x");
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        common::send(request)
    };

    let from_a_page = append(Some("https://app.example")).await;
    assert_eq!(from_a_page.status(), StatusCode::NO_CONTENT);
    let allow_origin: Vec<_> = from_a_page
        .headers()
        .get_all("access-control-allow-origin")
        .iter()
        .collect();
    assert_eq!(
        allow_origin,
        ["*"],
        "the gateway's alone, not upstream's too"
    );

    let from_a_program = append(None).await;
    assert_eq!(from_a_program.status(), StatusCode::NO_CONTENT);
    assert!(
        from_a_program
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    assert!(from_a_program.headers().get("stream-next-offset").is_some());
    stack.finish().await;
}

#[tokio::test]
async fn health_and_readiness() {
    let mut stack = Stack::start().await;
    let healthz = stack
        .client
        .get(format!("{}/healthz", stack.gateway.base))
        .send()
        .await
        .expect("send");
    assert_eq!(healthz.status(), StatusCode::OK);
    let readyz = stack
        .client
        .get(format!("{}/readyz", stack.gateway.base))
        .send()
        .await
        .expect("send");
    assert_eq!(readyz.status(), StatusCode::OK);

    stack.upstream.stop();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let readyz = stack
            .client
            .get(format!("{}/readyz", stack.gateway.base))
            .send()
            .await
            .expect("send");
        if readyz.status() == StatusCode::SERVICE_UNAVAILABLE {
            let body: serde_json::Value = readyz.json().await.expect("json");
            assert_eq!(body["upstream"], "unreachable");
            assert_eq!(body["postgres"], "ok");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readyz never noticed upstream down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = stack.issue("alice", &["read"], &["**"]).await;
    let proxied = stack.call(Method::GET, &stack.url("x"), &token.token).await;
    assert_eq!(proxied.status(), StatusCode::BAD_GATEWAY);
    stack.finish().await;
}
