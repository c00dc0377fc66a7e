//! The reserved `__ds` control routes through the real gateway, in front of
//! a stand-in stream-server that records what reaches it: who may manage
//! subscriptions (`subscribe`, and reach over every stream), what passes
//! without a gateway token (the signing keys; deliveries with
//! stream-server's own token), and that refused requests never arrive.

mod common;

use common::{Stack, Subscriptions, challenge, send, subscription_upstream};
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

async fn stack() -> (Stack, Arc<Subscriptions>) {
    let (upstream, seen) = subscription_upstream().await;
    (Stack::in_front_of(upstream, |_| {}).await, seen)
}

fn sub_url(stack: &Stack, tail: &str) -> String {
    stack.url(&format!("__ds/subscriptions/{tail}"))
}

async fn put_raw(stack: &Stack, id: &str, token: &str, body: &'static str) -> reqwest::Response {
    send(
        stack
            .client
            .put(sub_url(stack, id))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body),
    )
    .await
}

#[tokio::test]
async fn without_subscribe_nothing_reaches_stream_server() {
    let (stack, seen) = stack().await;
    seen.insert(
        "mine",
        json!({"id": "mine", "pattern": "chat/*", "streams": []}),
    );
    let plain = stack
        .issue("alice", &["read", "write", "delete"], &["**"])
        .await;
    let admin = stack
        .issue("root", &["admin", "read", "write"], &["**"])
        .await;
    for token in [&plain.token, &admin.token] {
        let put = put_raw(
            &stack,
            "mine",
            token,
            r#"{"type":"webhook","pattern":"chat/*"}"#,
        )
        .await;
        assert_eq!(put.status(), StatusCode::FORBIDDEN);
        assert!(challenge(&put).contains(r#"scope="subscribe""#));
        for (method, tail) in [
            (Method::GET, "mine"),
            (Method::DELETE, "mine"),
            (Method::POST, "mine/claim"),
            (Method::POST, "mine/streams"),
            (Method::DELETE, "mine/streams/chat%2Fa"),
        ] {
            let response = stack
                .call(method.clone(), &sub_url(&stack, tail), token)
                .await;
            assert_eq!(response.status(), StatusCode::FORBIDDEN, "{method} {tail}");
        }
    }
    let anonymous = send(stack.client.get(sub_url(&stack, "mine"))).await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert!(seen.arrivals().is_empty(), "{:?}", seen.arrivals());
    stack.finish().await;
}

#[tokio::test]
async fn subscriptions_must_lie_within_the_token() {
    let (stack, seen) = stack().await;
    let chat = stack
        .issue("alice", &["subscribe", "read", "write"], &["chat/**"])
        .await;
    let refused = [
        r#"{"type":"webhook","pattern":"**","webhook":{"url":"https://w.example/h"}}"#,
        r#"{"type":"webhook","pattern":"chatroom/*","webhook":{"url":"https://w.example/h"}}"#,
        r#"{"type":"webhook","streams":["chat/a","payroll"],"webhook":{"url":"https://w.example/h"}}"#,
        r#"{"type":"pull-wake","pattern":"chat/*","wake_stream":"wake/pool"}"#,
    ];
    for body in refused {
        let response = put_raw(&stack, "s1", &chat.token, body).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{body}");
        let text = response.text().await.expect("body");
        assert!(
            !text.contains("payroll") && !text.contains("wake/pool"),
            "the refusal names no stream: {text}"
        );
    }
    for unreadable in [
        r#"{"type":"webhook","pattern":"chat/*","pattern":"**"}"#,
        r#"{"type":"webhook","pattern":"chat/*","patterns":["**"]}"#,
        r#"{"type":"webhook","streams":["chat/../payroll"]}"#,
        r#"{"type":"webhook","pattern":"chat/*""#,
    ] {
        let response = put_raw(&stack, "s1", &chat.token, unreadable).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{unreadable}");
    }
    let huge = format!(
        r#"{{"type":"webhook","pattern":"chat/*","description":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let too_large = send(
        stack
            .client
            .put(sub_url(&stack, "s1"))
            .bearer_auth(&chat.token)
            .body(huge),
    )
    .await;
    assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(seen.arrivals().is_empty(), "{:?}", seen.arrivals());

    // Inside: forwarded byte for byte (spacing and field order as sent).
    let body = "{ \"pattern\" : \"chat/**\",\n  \"type\":\"pull-wake\", \"streams\":[\"chat/a\"],\
                \"wake_stream\":\"chat/wake\", \"lease_ttl_ms\": 30000 }";
    let created = send(
        stack
            .client
            .put(sub_url(&stack, "s1"))
            .bearer_auth(&chat.token)
            .header("content-type", "application/json")
            .body(body),
    )
    .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: serde_json::Value = created.json().await.expect("json");
    assert_eq!(created["pattern"], "chat/**");
    let arrivals = seen.arrivals();
    assert_eq!(arrivals.len(), 1);
    assert_eq!(arrivals[0].method, "PUT");
    assert_eq!(arrivals[0].path, "/v1/stream/__ds/subscriptions/s1");
    assert_eq!(arrivals[0].body, body.as_bytes());
    assert_eq!(arrivals[0].headers["x-auth-subject"], "alice");
    assert!(arrivals[0].headers.get("authorization").is_none());
    let narrower = put_raw(
        &stack,
        "s2",
        &chat.token,
        r#"{"type":"webhook","pattern":"chat/*","webhook":{"url":"https://w.example/h"}}"#,
    )
    .await;
    assert_eq!(
        narrower.status(),
        StatusCode::CREATED,
        "chat/* is within chat/**"
    );

    // A token on one level may not subscribe deeper.
    let one_level = stack
        .issue("bob", &["subscribe", "read"], &["chat/*"])
        .await;
    let deeper = put_raw(
        &stack,
        "s3",
        &one_level.token,
        r#"{"type":"webhook","pattern":"chat/**"}"#,
    )
    .await;
    assert_eq!(deeper.status(), StatusCode::FORBIDDEN);
    assert_eq!(seen.arrivals().len(), 2);
    stack.finish().await;
}

#[tokio::test]
async fn another_tenants_subscription_is_out_of_reach() {
    let (stack, seen) = stack().await;
    seen.insert(
        "theirs",
        json!({"id": "theirs", "pattern": "payroll/*", "streams": [], "wake_stream": null}),
    );
    seen.insert(
        "linked",
        json!({"id": "linked", "pattern": "chat/*", "wake_stream": null,
               "streams": [{"path": "payroll/2024", "link_type": "explicit", "acked_offset": "0"}]}),
    );
    seen.insert(
        "mine",
        json!({"id": "mine", "pattern": "chat/*", "wake_stream": "chat/wake",
               "streams": [{"path": "chat/a", "link_type": "glob", "acked_offset": "0"}]}),
    );
    let chat = stack
        .issue("alice", &["subscribe", "read", "write"], &["chat/**"])
        .await;

    for id in ["theirs", "linked"] {
        let get = stack
            .call(Method::GET, &sub_url(&stack, id), &chat.token)
            .await;
        assert_eq!(get.status(), StatusCode::FORBIDDEN, "{id}");
        assert!(!get.text().await.expect("body").contains("payroll"));
        for (method, tail) in [
            (Method::DELETE, id.to_owned()),
            (Method::POST, format!("{id}/claim")),
            (Method::DELETE, format!("{id}/streams/chat%2Fa")),
        ] {
            let response = stack
                .call(method.clone(), &sub_url(&stack, &tail), &chat.token)
                .await;
            assert_eq!(response.status(), StatusCode::FORBIDDEN, "{method} {tail}");
        }
        let add = send(
            stack
                .client
                .post(sub_url(&stack, &format!("{id}/streams")))
                .bearer_auth(&chat.token)
                .body(r#"{"streams":["chat/b"]}"#),
        )
        .await;
        assert_eq!(add.status(), StatusCode::FORBIDDEN);
    }
    // Only the gateway's own reads of those subscriptions arrived.
    let arrivals = seen.arrivals();
    assert!(
        arrivals
            .iter()
            .all(|a| a.method == "GET" && a.body.is_empty()),
        "{arrivals:?}"
    );

    let unknown = stack
        .call(Method::DELETE, &sub_url(&stack, "nobody"), &chat.token)
        .await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(unknown.text().await.expect("body"), "no such subscription");
    let before = seen.arrivals().len();

    let get = stack
        .call(Method::GET, &sub_url(&stack, "mine"), &chat.token)
        .await;
    assert_eq!(get.status(), StatusCode::OK);
    let view: serde_json::Value = get.json().await.expect("json");
    assert_eq!(view["wake_stream"], "chat/wake");
    let claim = send(
        stack
            .client
            .post(sub_url(&stack, "mine/claim"))
            .bearer_auth(&chat.token)
            .body(r#"{"worker":"w-1"}"#),
    )
    .await;
    assert_eq!(claim.status(), StatusCode::OK);
    let removed = stack
        .call(
            Method::DELETE,
            &sub_url(&stack, "mine/streams/chat%2Fa"),
            &chat.token,
        )
        .await;
    assert_eq!(removed.status(), StatusCode::OK);
    let outside_link = stack
        .call(
            Method::DELETE,
            &sub_url(&stack, "mine/streams/payroll%2Fa"),
            &chat.token,
        )
        .await;
    assert_eq!(outside_link.status(), StatusCode::FORBIDDEN);
    let added = send(
        stack
            .client
            .post(sub_url(&stack, "mine/streams"))
            .bearer_auth(&chat.token)
            .body(r#"{"streams":["chat/b"]}"#),
    )
    .await;
    assert_eq!(added.status(), StatusCode::OK);
    let outside_add = send(
        stack
            .client
            .post(sub_url(&stack, "mine/streams"))
            .bearer_auth(&chat.token)
            .body(r#"{"streams":["payroll/b"]}"#),
    )
    .await;
    assert_eq!(outside_add.status(), StatusCode::FORBIDDEN);

    let acted: Vec<(String, String)> = seen.arrivals()[before..]
        .iter()
        .map(|a| (a.method.clone(), a.path.clone()))
        .collect();
    let sub = "/v1/stream/__ds/subscriptions/mine";
    let expected: Vec<(String, String)> = [
        ("GET", sub.to_owned()),
        ("GET", sub.to_owned()),
        ("POST", format!("{sub}/claim")),
        ("GET", sub.to_owned()),
        ("DELETE", format!("{sub}/streams/chat%2Fa")),
        ("GET", sub.to_owned()),
        ("POST", format!("{sub}/streams")),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_owned(), p))
    .collect();
    assert_eq!(acted, expected);
    let claim_arrival = &seen.arrivals()[before + 2];
    assert_eq!(claim_arrival.body, r#"{"worker":"w-1"}"#.as_bytes());
    stack.finish().await;
}

#[tokio::test]
async fn a_reconfirmed_subscription_is_shown_only_within_reach() {
    let (stack, seen) = stack().await;
    // Stored with an explicit link the new caller may not read; its PUT
    // names only what it may.
    seen.insert(
        "shared",
        json!({"id": "shared", "pattern": "chat/*", "wake_stream": null,
               "streams": [{"path": "payroll/2024", "link_type": "explicit", "acked_offset": "7"}]}),
    );
    let chat = stack
        .issue("alice", &["subscribe", "read"], &["chat/**"])
        .await;
    let response = put_raw(
        &stack,
        "shared",
        &chat.token,
        r#"{"type":"webhook","pattern":"chat/*"}"#,
    )
    .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(!response.text().await.expect("body").contains("payroll"));
    stack.finish().await;
}

#[tokio::test]
async fn deliveries_carry_stream_servers_own_token() {
    let (stack, seen) = stack().await;
    for action in ["callback", "ack", "release"] {
        let url = sub_url(&stack, &format!("s1/{action}"));
        let response = send(
            stack
                .client
                .post(&url)
                .header("authorization", "Bearer eyJzZXJ2ZXIi.callback-token.sig")
                .header("x-auth-subject", "mallory")
                .body(r#"{"wake_id":"w_1","generation":7,"done":true}"#),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK, "{action}");
    }
    let arrivals = seen.arrivals();
    assert_eq!(arrivals.len(), 3);
    for arrival in &arrivals {
        assert_eq!(arrival.method, "POST");
        assert_eq!(
            arrival.headers["authorization"],
            "Bearer eyJzZXJ2ZXIi.callback-token.sig"
        );
        assert!(arrival.headers.get("x-auth-subject").is_none());
        assert!(arrival.headers.get("x-auth-token-id").is_none());
        assert_eq!(
            arrival.body,
            r#"{"wake_id":"w_1","generation":7,"done":true}"#.as_bytes()
        );
    }

    // No bearer, or the gateway's own token: refused here.
    let bare = send(stack.client.post(sub_url(&stack, "s1/ack")).body("{}")).await;
    assert_eq!(bare.status(), StatusCode::UNAUTHORIZED);
    let gateway_token = stack.issue("alice", &["subscribe", "read"], &["**"]).await;
    let misdirected = stack
        .call(
            Method::POST,
            &sub_url(&stack, "s1/callback"),
            &gateway_token.token,
        )
        .await;
    assert_eq!(misdirected.status(), StatusCode::UNAUTHORIZED);
    let wrong_method = stack
        .call(Method::GET, &sub_url(&stack, "s1/ack"), "eyJ.x.y")
        .await;
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(seen.arrivals().len(), 3);
    stack.finish().await;
}

#[tokio::test]
async fn signing_keys_need_no_token_and_unknown_control_paths_stay_here() {
    let (stack, seen) = stack().await;
    let jwks = send(stack.client.get(stack.url("__ds/jwks.json"))).await;
    assert_eq!(jwks.status(), StatusCode::OK);
    assert_eq!(jwks.headers()["cache-control"], "public, max-age=300");
    assert_eq!(jwks.text().await.expect("body"), r#"{"keys":[]}"#);
    let head = send(stack.client.head(stack.url("__ds/jwks.json"))).await;
    assert_eq!(head.status(), StatusCode::OK);
    // Credentials sent along are not passed on.
    let token = stack.issue("alice", &["read"], &["**"]).await;
    let with_token = stack
        .call(Method::GET, &stack.url("__ds/jwks.json"), &token.token)
        .await;
    assert_eq!(with_token.status(), StatusCode::OK);
    let arrivals = seen.arrivals();
    assert_eq!(arrivals.len(), 3);
    for arrival in &arrivals {
        assert!(arrival.headers.get("authorization").is_none());
        assert!(arrival.headers.get("x-auth-subject").is_none());
    }

    let subscriber = stack
        .issue("alice", &["subscribe", "read", "write"], &["**"])
        .await;
    for (method, path) in [
        (Method::GET, "__ds/subscriptions"),
        (Method::GET, "__ds/subscriptions/s/streamsx/a"),
        (Method::GET, "__ds/other"),
        (Method::GET, "__ds"),
        (Method::PUT, "__ds/subscriptions/s/extra"),
    ] {
        let response = stack
            .call(method.clone(), &stack.url(path), &subscriber.token)
            .await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{method} {path}");
    }
    let post_keys = stack
        .call(
            Method::POST,
            &stack.url("__ds/jwks.json"),
            &subscriber.token,
        )
        .await;
    assert_eq!(post_keys.status(), StatusCode::METHOD_NOT_ALLOWED);
    // Decoded once, as stream-server decodes it: `a%2Fb` is two segments,
    // an unknown route.
    let split_id = stack
        .call(Method::GET, &sub_url(&stack, "a%2Fb"), &subscriber.token)
        .await;
    assert_eq!(split_id.status(), StatusCode::NOT_FOUND);
    // Under `__ds` once decoded, but no path: refused as a reserved one.
    let malformed = stack
        .call(
            Method::GET,
            &stack.url("__ds/subscriptions/"),
            &subscriber.token,
        )
        .await;
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    assert_eq!(seen.arrivals().len(), 3);
    // Spelled with escapes, still the signing keys.
    let encoded = send(stack.client.get(stack.url("%5F%5Fds/jwks.json"))).await;
    assert_eq!(encoded.status(), StatusCode::OK);
    assert_eq!(seen.arrivals().len(), 4);
    stack.finish().await;
}

#[tokio::test]
async fn admin_tokens_hand_out_subscribe_only_if_they_hold_it() {
    let (stack, _) = stack().await;
    let tokens_url = format!("{}/admin/tokens", stack.gateway.base);
    let issue = |admin: String, scopes: serde_json::Value| {
        let request = stack.client.post(&tokens_url).bearer_auth(admin).json(
            &json!({"subject": "worker", "scopes": scopes, "streams": ["chat/**"], "ttl": "1h"}),
        );
        send(request)
    };
    // Outliving what they issue: an admin token's expiry is a ceiling too.
    let ttl = Duration::from_secs(3 * 3600);
    let with = stack
        .issue_for("root", &["admin", "subscribe", "read"], &["chat/**"], ttl)
        .await;
    let without = stack
        .issue_for("root", &["admin", "read"], &["chat/**"], ttl)
        .await;
    let minted = issue(with.token.clone(), json!(["subscribe", "read"])).await;
    assert_eq!(minted.status(), StatusCode::CREATED);
    let minted: serde_json::Value = minted.json().await.expect("json");
    assert_eq!(minted["scopes"], json!(["subscribe", "read"]));
    let refused = issue(without.token.clone(), json!(["subscribe", "read"])).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    stack.finish().await;
}

/// The same policy in front of the real stream-server.
#[tokio::test]
async fn a_pull_wake_subscription_through_the_gateway() {
    let upstream =
        common::stream_server_with(|config| config.http.trust_forwarded_headers = true).await;
    let stack = Stack::in_front_of(upstream, |_| {}).await;
    let team = stack
        .issue("alice", &["subscribe", "read", "write"], &["team/**"])
        .await;
    let other = stack
        .issue("mallory", &["subscribe", "read", "write"], &["other/**"])
        .await;
    let wake = send(
        stack
            .client
            .put(stack.url("team/wake"))
            .bearer_auth(&team.token)
            .header("content-type", "application/json")
            .body("[]"),
    )
    .await;
    assert_eq!(wake.status(), StatusCode::CREATED);

    let body = r#"{"type":"pull-wake","pattern":"team/events/*","wake_stream":"team/wake"}"#;
    let created = put_raw(&stack, "team-sub", &team.token, body).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let again = put_raw(&stack, "team-sub", &team.token, body).await;
    assert_eq!(again.status(), StatusCode::OK, "re-confirmed");
    let shown = stack
        .call(Method::GET, &sub_url(&stack, "team-sub"), &team.token)
        .await;
    assert_eq!(shown.status(), StatusCode::OK);
    let shown: serde_json::Value = shown.json().await.expect("json");
    assert_eq!(shown["pattern"], "team/events/*");
    assert_eq!(shown["wake_stream"], "team/wake");

    for (method, tail) in [
        (Method::GET, "team-sub"),
        (Method::DELETE, "team-sub"),
        (Method::POST, "team-sub/claim"),
    ] {
        let refused = stack
            .call(method.clone(), &sub_url(&stack, tail), &other.token)
            .await;
        assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{method} {tail}");
    }
    let wider = put_raw(
        &stack,
        "greedy",
        &other.token,
        r#"{"type":"pull-wake","pattern":"**","wake_stream":"other/wake"}"#,
    )
    .await;
    assert_eq!(wider.status(), StatusCode::FORBIDDEN);

    let keys = send(stack.client.get(stack.url("__ds/jwks.json"))).await;
    assert_eq!(keys.status(), StatusCode::OK);
    let keys: serde_json::Value = keys.json().await.expect("json");
    assert!(keys["keys"].is_array());
    let bogus = send(
        stack
            .client
            .post(sub_url(&stack, "team-sub/ack"))
            .bearer_auth("not-a-claim-token")
            .body(r#"{"wake_id":"w","generation":1}"#),
    )
    .await;
    assert!(
        bogus.status().is_client_error(),
        "stream-server refuses a token it did not issue: {}",
        bogus.status()
    );

    let deleted = stack
        .call(Method::DELETE, &sub_url(&stack, "team-sub"), &team.token)
        .await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let gone = stack
        .call(Method::GET, &sub_url(&stack, "team-sub"), &team.token)
        .await;
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    stack.finish().await;
}
