//! Who gets in: every 401 and 403 case, revocation within a second, expiry,
//! forged tokens, fail-closed behaviour, rate limits — against the real
//! gateway in front of a real stream-server, with tokens in Postgres.

mod common;

use auth_gateway::auth::token::{Claims, TokenKeys, generate_ed25519_pem};
use base64::Engine;
use common::{Stack, challenge};
use reqwest::{Method, StatusCode};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Asserts a 401 with an `invalid_token` challenge and a problem body.
async fn assert_unauthorized(response: reqwest::Response, why: &str) {
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{why}");
    let challenge = challenge(&response);
    assert!(
        challenge.starts_with("Bearer ") && challenge.contains(r#"error="invalid_token""#),
        "{why}: challenge {challenge:?}"
    );
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "{why}"
    );
    let body: serde_json::Value = response.json().await.expect("problem body");
    assert_eq!(body["status"], 401, "{why}");
}

async fn assert_forbidden(response: reqwest::Response, scope: &str, why: &str) {
    assert_eq!(response.status(), StatusCode::FORBIDDEN, "{why}");
    let challenge = challenge(&response);
    assert!(
        challenge.contains(r#"error="insufficient_scope""#)
            && challenge.contains(&format!(r#"scope="{scope}""#)),
        "{why}: challenge {challenge:?}"
    );
    let body: serde_json::Value = response.json().await.expect("problem body");
    assert_eq!(body["status"], 403, "{why}");
}

#[tokio::test]
async fn missing_malformed_and_forged_tokens_get_401_and_reach_nothing() {
    let stack = Stack::start().await;
    let url = stack.url("guarded");
    let valid = stack.issue("alice", &["read", "write"], &["**"]).await;

    assert_unauthorized(
        stack.client.put(&url).send().await.expect("send"),
        "no token",
    )
    .await;
    for header in [
        "Basic YWxpY2U6cHc=",
        "Bearer",
        "Bearer not-a-jwt",
        "Bearer a.b.c",
    ] {
        let response = stack
            .client
            .put(&url)
            .header("authorization", header)
            .send()
            .await
            .expect("send");
        assert_unauthorized(response, header).await;
    }

    // Tampered payload: claims changed, signature kept.
    let parts: Vec<&str> = valid.token.split('.').collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: serde_json::Value =
        serde_json::from_slice(&b64.decode(parts[1]).expect("payload")).expect("claims");
    claims["sub"] = "mallory".into();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(serde_json::to_vec(&claims).expect("json")),
        parts[2]
    );
    let none = format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        parts[1]
    );
    let other_key = TokenKeys::ed25519_from_pem(&generate_ed25519_pem().expect("keygen"))
        .expect("key")
        .sign(&serde_json::from_value(claims.clone()).expect("claims"))
        .expect("sign");
    let hs256 = TokenKeys::hs256(&[9; 32])
        .expect("secret")
        .sign(&serde_json::from_value(claims).expect("claims"))
        .expect("sign");
    for (token, why) in [
        (forged, "tampered payload"),
        (none, "alg none"),
        (other_key, "signed by another key"),
        (hs256, "HS256 where EdDSA is configured"),
    ] {
        let response = stack.call(Method::PUT, &url, &token).await;
        assert_unauthorized(response, why).await;
    }

    // Right key, wrong issuer / audience / expiry / unknown row.
    let base = Claims {
        iss: stack.config.jwt.issuer.clone(),
        aud: stack.config.jwt.audience.clone(),
        sub: "alice".into(),
        exp: now() + 600,
        iat: now(),
        nbf: None,
        jti: valid.id.clone(),
    };
    let cases = [
        (
            Claims {
                iss: "someone-else".into(),
                ..base.clone()
            },
            "wrong issuer",
        ),
        (
            Claims {
                aud: "other-service".into(),
                ..base.clone()
            },
            "wrong audience",
        ),
        (
            Claims {
                exp: now() - 5,
                ..base.clone()
            },
            "expired claims",
        ),
        (
            Claims {
                jti: "no-such-row".into(),
                ..base.clone()
            },
            "no row",
        ),
        (
            Claims {
                sub: "mallory".into(),
                ..base.clone()
            },
            "subject differs from the row",
        ),
    ];
    for (claims, why) in cases {
        let token = stack.keys.sign(&claims).expect("sign");
        let response = stack.call(Method::PUT, &url, &token).await;
        assert_unauthorized(response, why).await;
    }

    // None of it created the stream upstream.
    let direct = stack
        .client
        .head(stack.upstream_url("guarded"))
        .send()
        .await
        .expect("send");
    assert_eq!(direct.status(), StatusCode::NOT_FOUND);

    // The valid token works.
    let created = stack.create(&url, &valid.token).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    stack.finish().await;
}

#[tokio::test]
async fn scopes_and_stream_patterns_give_403() {
    let stack = Stack::start().await;
    let writer = stack.issue("w", &["read", "write"], &["chat/**"]).await;
    let reader = stack.issue("r", &["read"], &["chat/*"]).await;

    let created = stack.create(&stack.url("chat/room"), &writer.token).await;
    assert_eq!(created.status(), StatusCode::CREATED);

    let cases = [
        (
            stack
                .client
                .post(stack.url("chat/room"))
                .bearer_auth(&reader.token),
            "write",
            "append without write",
        ),
        (
            stack
                .client
                .put(stack.url("chat/new"))
                .bearer_auth(&reader.token),
            "write",
            "create without write",
        ),
        (
            stack
                .client
                .delete(stack.url("chat/room"))
                .bearer_auth(&writer.token),
            "delete",
            "delete without delete",
        ),
        (
            stack
                .client
                .get(stack.url("chat/room/deep"))
                .bearer_auth(&reader.token),
            "read",
            "* covers one segment only",
        ),
        (
            stack
                .client
                .get(stack.url("other/room"))
                .bearer_auth(&writer.token),
            "read",
            "outside every pattern",
        ),
        (
            stack
                .client
                .get(stack.url("chat%2F..%2Fother"))
                .bearer_auth(&writer.token),
            "",
            "encoded traversal is refused outright",
        ),
    ];
    for (request, scope, why) in cases {
        let response = request
            .header("content-type", "text/plain")
            .send()
            .await
            .expect("send");
        if scope.is_empty() {
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{why}");
        } else {
            assert_forbidden(response, scope, why).await;
        }
    }

    let read = stack
        .call(Method::GET, &stack.url("chat/room"), &reader.token)
        .await;
    assert_eq!(read.status(), StatusCode::OK, "reader may read chat/*");
    stack.finish().await;
}

#[tokio::test]
async fn forking_needs_read_on_the_source() {
    let stack = Stack::start().await;
    let admin = stack.issue("owner", &["read", "write"], &["**"]).await;
    let forker = stack
        .issue("forker", &["read", "write"], &["mine/**"])
        .await;
    for path in ["secret/log", "mine/log"] {
        let response = stack.create(&stack.url(path), &admin.token).await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let denied = stack
        .client
        .put(stack.url("mine/fork"))
        .bearer_auth(&forker.token)
        .header("stream-forked-from", "/v1/stream/secret/log")
        .send()
        .await
        .expect("fork");
    assert_forbidden(denied, "read", "fork of a stream the token cannot read").await;
    let relative = stack
        .client
        .put(stack.url("mine/fork"))
        .bearer_auth(&forker.token)
        .header("stream-forked-from", "secret/log")
        .send()
        .await
        .expect("fork");
    assert_eq!(
        relative.status(),
        StatusCode::FORBIDDEN,
        "relative source path"
    );
    let allowed = stack
        .client
        .put(stack.url("mine/fork"))
        .bearer_auth(&forker.token)
        .header("stream-forked-from", "/v1/stream/mine/log")
        .send()
        .await
        .expect("fork");
    assert_eq!(allowed.status(), StatusCode::CREATED);
    stack.finish().await;
}

#[tokio::test]
async fn revocation_takes_effect_within_a_second() {
    let stack = Stack::start().await;
    let token = stack.issue("alice", &["read", "write"], &["**"]).await;
    let url = stack.url("revoke-me");
    let created = stack.create(&url, &token.token).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    // Warm the cache: the row is now served from memory.
    for _ in 0..5 {
        let read = stack.call(Method::GET, &url, &token.token).await;
        assert_eq!(read.status(), StatusCode::OK);
    }

    let revoked_at = Instant::now();
    assert!(stack.store.revoke(&token.id).await.expect("revoke"));
    let status = loop {
        let response = stack.call(Method::GET, &url, &token.token).await;
        if response.status() != StatusCode::OK || revoked_at.elapsed() > Duration::from_secs(3) {
            break response;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let took = revoked_at.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "revocation took {took:?} to take effect"
    );
    assert_unauthorized(status, "revoked").await;
    stack.finish().await;
}

#[tokio::test]
async fn revocation_within_a_second_even_when_notifications_are_lost() {
    let stack = Stack::start().await;
    let token = stack.issue("alice", &["read", "write"], &["**"]).await;
    let url = stack.url("listener-lost");
    let created = stack.create(&url, &token.token).await;
    assert_eq!(created.status(), StatusCode::CREATED);

    // Cut the gateway's LISTEN connection, as a network failure would.
    let killed: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
    )
    .fetch_all(stack.store.pool())
    .await
    .expect("terminate the listener");
    assert!(!killed.is_empty(), "found the gateway's LISTEN connection");

    let revoked_at = Instant::now();
    // Without the trigger's notification reaching the gateway, only the
    // short fallback lifetime protects: revoke with notifications disabled.
    let mut tx = stack.store.pool().begin().await.expect("begin");
    sqlx::query("ALTER TABLE tokens DISABLE TRIGGER tokens_changed")
        .execute(&mut *tx)
        .await
        .expect("disable trigger");
    sqlx::query("UPDATE tokens SET revoked_at = now() WHERE id = $1")
        .bind(&token.id)
        .execute(&mut *tx)
        .await
        .expect("revoke");
    sqlx::query("ALTER TABLE tokens ENABLE TRIGGER tokens_changed")
        .execute(&mut *tx)
        .await
        .expect("enable trigger");
    tx.commit().await.expect("commit");

    loop {
        let response = stack.call(Method::GET, &url, &token.token).await;
        if response.status() == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_millis(1500),
            "revoked token still accepted after {:?}",
            revoked_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(revoked_at.elapsed() < Duration::from_millis(1100));
    stack.finish().await;
}

#[tokio::test]
async fn expired_rows_are_refused() {
    let stack = Stack::start().await;
    let short = stack
        .issue_for("alice", &["read", "write"], &["**"], Duration::from_secs(2))
        .await;
    let url = stack.url("short-lived");
    let created = stack.create(&url, &short.token).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let late = stack.call(Method::GET, &url, &short.token).await;
    assert_unauthorized(late, "expired").await;
    stack.finish().await;
}

#[tokio::test]
async fn unreachable_postgres_fails_closed_with_503() {
    let upstream = common::stream_server().await;
    let mut config = common::test_config("postgres://postgres@127.0.0.1:1/nothing", &upstream.base);
    config.jwt.key = Some(generate_ed25519_pem().expect("keygen"));
    let keys = config.jwt.keys().expect("keys");
    let gateway = auth_gateway::server::gateway(config.clone()).expect("gateway state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let app = auth_gateway::http::App::new(gateway);
    tokio::spawn(auth_gateway::server::serve_app(
        app,
        listener,
        config.serve_options(),
        std::future::pending(),
    ));

    let token = keys
        .sign(&Claims {
            iss: config.jwt.issuer.clone(),
            aud: config.jwt.audience.clone(),
            sub: "alice".into(),
            exp: now() + 600,
            iat: now(),
            nbf: None,
            jti: "some-id".into(),
        })
        .expect("sign");
    let client = reqwest::Client::new();
    let response = client
        .put(format!("{base}/v1/stream/x"))
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let ready = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("send");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = ready.json().await.expect("json");
    assert_eq!(body["postgres"], "unreachable");
    assert_eq!(body["upstream"], "ok");
    let direct = client
        .head(format!("{}/v1/stream/x", upstream.base))
        .send()
        .await
        .expect("send");
    assert_eq!(
        direct.status(),
        StatusCode::NOT_FOUND,
        "nothing reached upstream"
    );
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let stack = Stack::start_with(|config| {
        config.limits.rate_per_second = 1;
        config.limits.burst = 3;
    })
    .await;
    let alice = stack.issue("alice", &["read", "write"], &["**"]).await;
    let bob = stack.issue("bob", &["read"], &["**"]).await;
    let url = stack.url("limited");
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let response = stack.call(Method::HEAD, &url, &alice.token).await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            let retry: u64 = response.headers()["retry-after"]
                .to_str()
                .expect("ascii")
                .parse()
                .expect("seconds");
            assert!((1..=2).contains(&retry), "Retry-After {retry}");
        }
        statuses.push(response.status());
    }
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::NOT_FOUND)
            .count(),
        3,
        "the burst passes (to a 404 upstream): {statuses:?}"
    );
    assert_eq!(statuses[3], StatusCode::TOO_MANY_REQUESTS);
    let other = stack.call(Method::HEAD, &url, &bob.token).await;
    assert_eq!(
        other.status(),
        StatusCode::NOT_FOUND,
        "buckets are per token"
    );
    stack.finish().await;
}

#[tokio::test]
async fn last_used_is_recorded() {
    let stack = Stack::start_with(|config| config.auth.last_used_flush_secs = 0.1).await;
    let token = stack.issue("alice", &["read"], &["**"]).await;
    let before = stack
        .store
        .find(&token.id)
        .await
        .expect("find")
        .expect("row");
    assert_eq!(before.last_used_at, None);
    let response = stack
        .call(Method::HEAD, &stack.url("anything"), &token.token)
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let row = stack
            .store
            .find(&token.id)
            .await
            .expect("find")
            .expect("row");
        if row.last_used_at.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "last_used_at never written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stack.finish().await;
}
