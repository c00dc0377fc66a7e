//! Token administration: the `/admin/tokens` API (admin scope only) and the
//! `auth-gateway` command line against the database directly.

mod common;

use auth_gateway::tokens::store::{NewToken, Reach, TokenStore};
use common::{ScratchDb, Stack};
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};

#[tokio::test]
async fn admin_api_issues_lists_and_revokes() {
    let stack = Stack::start().await;
    // Holds what it hands out below: an admin token issues only within its
    // own rights.
    let admin = stack
        .issue_for(
            "root",
            &["admin", "read", "write"],
            &["bob/**"],
            Duration::from_secs(3 * 3600),
        )
        .await;
    let plain = stack
        .issue("alice", &["read", "write", "delete"], &["**"])
        .await;
    let tokens_url = format!("{}/admin/tokens", stack.gateway.base);

    let no_token = stack.client.get(&tokens_url).send().await.expect("send");
    assert_eq!(no_token.status(), StatusCode::UNAUTHORIZED);
    let not_admin = stack.call(Method::GET, &tokens_url, &plain.token).await;
    assert_eq!(not_admin.status(), StatusCode::FORBIDDEN);
    assert!(common::challenge(&not_admin).contains(r#"scope="admin""#));

    let created = stack
        .client
        .post(&tokens_url)
        .bearer_auth(&admin.token)
        .json(&serde_json::json!({
            "subject": "bob",
            "scopes": ["read", "write"],
            "streams": ["bob/**"],
            "ttl": "2h",
            "description": "made over HTTP",
        }))
        .send()
        .await
        .expect("send");
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(created.headers()["cache-control"], "no-store");
    let created: serde_json::Value = created.json().await.expect("json");
    let bob_token = created["token"].as_str().expect("token").to_owned();
    let bob_id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(created["subject"], "bob");
    assert_eq!(created["status"], "active");
    assert_eq!(created["issued_by"], admin.id.as_str());

    let put = stack.create(&stack.url("bob/inbox"), &bob_token).await;
    assert_eq!(put.status(), StatusCode::CREATED, "the issued token works");

    for bad in [
        serde_json::json!({"subject": "x", "scopes": ["root"], "streams": ["**"]}),
        serde_json::json!({"subject": "x", "scopes": ["read"], "streams": [""]}),
        serde_json::json!({"subject": "x", "scopes": ["read"], "streams": ["**"], "ttl": "soon"}),
        serde_json::json!({"subject": "", "scopes": ["read"], "streams": ["**"]}),
        serde_json::json!({"subject": "x", "scopes": ["read"]}),
        serde_json::json!({"subject": "x", "scopes": ["read"], "streams": ["**"], "admin": true}),
    ] {
        let response = stack
            .client
            .post(&tokens_url)
            .bearer_auth(&admin.token)
            .json(&bad)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }

    let listed = stack.call(Method::GET, &tokens_url, &admin.token).await;
    assert_eq!(listed.status(), StatusCode::OK);
    let text = listed.text().await.expect("body");
    assert!(text.contains(&bob_id) && text.contains("made over HTTP"));
    for secret in [&bob_token, &admin.token, &plain.token] {
        assert!(!text.contains(secret.as_str()), "a listing shows a token");
    }

    let one = stack
        .call(Method::GET, &format!("{tokens_url}/{bob_id}"), &admin.token)
        .await;
    assert_eq!(one.status(), StatusCode::OK);
    let missing = stack
        .call(Method::GET, &format!("{tokens_url}/nope"), &admin.token)
        .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    let revoked_at = Instant::now();
    let revoke = stack
        .call(
            Method::DELETE,
            &format!("{tokens_url}/{bob_id}"),
            &admin.token,
        )
        .await;
    assert_eq!(revoke.status(), StatusCode::NO_CONTENT);
    loop {
        let response = stack
            .call(Method::HEAD, &stack.url("bob/inbox"), &bob_token)
            .await;
        if response.status() == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "still accepted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let again = stack
        .call(
            Method::DELETE,
            &format!("{tokens_url}/{bob_id}"),
            &admin.token,
        )
        .await;
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
    stack.finish().await;
}

/// The text every refusal of a token beyond its issuer's rights shows.
const EXCEEDS: &str = "the new token would exceed the rights of the token issuing it";

fn tokens_url(stack: &Stack) -> String {
    format!("{}/admin/tokens", stack.gateway.base)
}

/// `POST /admin/tokens` with `body`, as `token`.
async fn mint(stack: &Stack, token: &str, body: serde_json::Value) -> reqwest::Response {
    common::send(
        stack
            .client
            .post(tokens_url(stack))
            .bearer_auth(token)
            .json(&body),
    )
    .await
}

/// Mints and returns the new token's JSON, failing unless it is 201.
async fn mint_ok(stack: &Stack, token: &str, body: serde_json::Value) -> serde_json::Value {
    let response = mint(stack, token, body.clone()).await;
    assert_eq!(response.status(), StatusCode::CREATED, "{body}");
    response.json().await.expect("json")
}

/// Asserts the generic 403 of a token beyond its issuer's rights.
async fn assert_exceeds(response: reqwest::Response, what: &str) {
    assert_eq!(response.status(), StatusCode::FORBIDDEN, "{what}");
    let problem: serde_json::Value = response.json().await.expect("problem json");
    assert_eq!(problem["detail"], EXCEEDS, "{what}: only the fact is told");
}

/// How many rows have this subject.
async fn rows_for(stack: &Stack, subject: &str) -> usize {
    let rows = stack.store.list(Reach::All).await.expect("list");
    rows.iter().filter(|row| row.subject == subject).count()
}

/// Polls `url` as `token` until it answers 401, for at most a second.
async fn refused_within_a_second(stack: &Stack, url: &str, token: &str, since: Instant) {
    loop {
        let response = stack.call(Method::HEAD, url, token).await;
        if response.status() == StatusCode::UNAUTHORIZED {
            return;
        }
        assert!(
            since.elapsed() < Duration::from_secs(1),
            "still accepted: {}",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The finding this guards against: an admin token limited to `x/**` for
/// ten minutes minted an unlimited owner token for a hundred years, which
/// outlived its revocation.
#[tokio::test]
async fn an_admin_token_cannot_mint_beyond_its_rights() {
    let stack = Stack::start().await;
    let limited = stack
        .issue_for(
            "delegate",
            &["admin", "read", "write", "delete"],
            &["x/**"],
            Duration::from_secs(600),
        )
        .await;
    let attack = json!({
        "subject": "owner",
        "scopes": ["admin", "read", "write", "delete"],
        "streams": ["**"],
        "ttl": "100years",
    });
    let response = mint(&stack, &limited.token, attack).await;
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    assert_exceeds(response, "the reported attack").await;
    // Each way past the ceiling alone is refused too.
    for (streams, ttl) in [(["**"], "5m"), (["x/**"], "100years")] {
        let body = json!({
            "subject": "owner",
            "scopes": ["admin", "read", "write", "delete"],
            "streams": streams,
            "ttl": ttl,
        });
        assert_exceeds(
            mint(&stack, &limited.token, body.clone()).await,
            &body.to_string(),
        )
        .await;
    }
    assert_eq!(rows_for(&stack, "owner").await, 0, "no row was created");
    stack.finish().await;
}

#[tokio::test]
async fn minting_within_the_issuers_rights_records_issued_by() {
    let stack = Stack::start().await;
    let limited = stack
        .issue("delegate", &["admin", "read", "write"], &["x/**"])
        .await;
    let created = mint_ok(
        &stack,
        &limited.token,
        json!({"subject": "bob", "scopes": ["read", "write"], "streams": ["x/a/**"], "ttl": "30m"}),
    )
    .await;
    assert_eq!(created["issued_by"], limited.id.as_str());
    let bob_id = created["id"].as_str().expect("id");
    let bob_token = created["token"].as_str().expect("token");
    let row = stack.store.find(bob_id).await.expect("find").expect("row");
    assert_eq!(row.issued_by.as_deref(), Some(limited.id.as_str()));

    let shown = stack
        .call(
            Method::GET,
            &format!("{}/{bob_id}", tokens_url(&stack)),
            &limited.token,
        )
        .await;
    let shown: serde_json::Value = shown.json().await.expect("json");
    assert_eq!(shown["issued_by"], limited.id.as_str());
    let listed = stack
        .call(Method::GET, &tokens_url(&stack), &limited.token)
        .await;
    let listed: Vec<serde_json::Value> = listed.json().await.expect("json");
    let own = listed
        .iter()
        .find(|t| t["id"] == limited.id.as_str())
        .expect("the caller is listed");
    assert_eq!(own["issued_by"], serde_json::Value::Null, "made by the CLI");

    let inside = stack.create(&stack.url("x/a/s"), bob_token).await;
    assert_eq!(inside.status(), StatusCode::CREATED);
    let outside = stack.create(&stack.url("x/b"), bob_token).await;
    assert_eq!(outside.status(), StatusCode::FORBIDDEN);
    stack.finish().await;
}

#[tokio::test]
async fn a_child_cannot_outlive_its_issuer() {
    let stack = Stack::start().await;
    let limited = stack
        .issue_for(
            "delegate",
            &["admin", "read"],
            &["x/**"],
            Duration::from_secs(600),
        )
        .await;
    let asking = |ttl: &str| json!({"subject": "kid", "scopes": ["admin", "read"], "streams": ["x/**"], "ttl": ttl});
    assert_exceeds(
        mint(&stack, &limited.token, asking("11m")).await,
        "11m of 10",
    )
    .await;
    assert_eq!(rows_for(&stack, "kid").await, 0);

    let child = mint_ok(&stack, &limited.token, asking("9m")).await;
    let issuer_row = stack
        .store
        .find(&limited.id)
        .await
        .expect("find")
        .expect("row");
    let child_row = stack
        .store
        .find(child["id"].as_str().expect("id"))
        .await
        .expect("find")
        .expect("row");
    assert!(child_row.expires_at <= issuer_row.expires_at);

    // The ceiling applies again one level down: the child's own expiry.
    let child_token = child["token"].as_str().expect("token");
    assert_exceeds(mint(&stack, child_token, asking("9m")).await, "9m of 9").await;
    mint_ok(&stack, child_token, asking("8m")).await;
    stack.finish().await;
}

#[tokio::test]
async fn delegated_scopes_and_patterns_must_be_contained() {
    let stack = Stack::start().await;
    let limited = stack
        .issue("delegate", &["admin", "read", "write"], &["x/**"])
        .await;
    let cases: &[(&[&str], &[&str], bool)] = &[
        (&["read"], &["x/a/**"], true),
        (&["read"], &["x/*"], true),
        (&["read"], &["x"], true),
        (&["read", "write"], &["x/a", "x/b/*"], true),
        (&["admin", "read", "write"], &["x/**"], true),
        (&["admin"], &[], true),
        (&["read"], &["**"], false),
        (&["read"], &["y/**"], false),
        (&["read"], &["*/**"], false),
        (&["read"], &["x/a", "y"], false),
        (&["delete"], &["x/a"], false),
        (&["read", "delete"], &["x/a"], false),
    ];
    for (scopes, streams, allowed) in cases {
        let body = json!({"subject": "kid", "scopes": scopes, "streams": streams, "ttl": "10m"});
        let response = mint(&stack, &limited.token, body.clone()).await;
        if *allowed {
            assert_eq!(response.status(), StatusCode::CREATED, "{body}");
        } else {
            assert_exceeds(response, &body.to_string()).await;
        }
    }
    let allowed = cases.iter().filter(|(_, _, allowed)| *allowed).count();
    assert_eq!(rows_for(&stack, "kid").await, allowed);
    stack.finish().await;
}

#[tokio::test]
async fn cascade_revocation_reaches_grandchildren() {
    let stack = Stack::start().await;
    let root = stack
        .issue("root", &["admin", "read", "write"], &["**"])
        .await;
    let child = mint_ok(
        &stack,
        &root.token,
        json!({"subject": "child", "scopes": ["admin", "read"], "streams": ["x/**"], "ttl": "30m"}),
    )
    .await;
    let child_id = child["id"].as_str().expect("id");
    let child_token = child["token"].as_str().expect("token");
    let grandchild = mint_ok(
        &stack,
        child_token,
        json!({"subject": "grandchild", "scopes": ["read"], "streams": ["x/g/**"], "ttl": "20m"}),
    )
    .await;
    let grandchild_token = grandchild["token"].as_str().expect("token");
    assert_eq!(grandchild["issued_by"], child_id);
    let stream = stack.url("x/g/s");
    assert_eq!(
        stack.create(&stream, &root.token).await.status(),
        StatusCode::CREATED
    );
    let read = stack.call(Method::HEAD, &stream, grandchild_token).await;
    assert_eq!(read.status(), StatusCode::OK);

    let revoke_url = format!("{}/{child_id}?cascade=true", tokens_url(&stack));
    let revoked_at = Instant::now();
    let response = stack.call(Method::DELETE, &revoke_url, &root.token).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["revoked"], 2, "the child and the grandchild");
    refused_within_a_second(&stack, &stream, grandchild_token, revoked_at).await;
    refused_within_a_second(&stack, &stream, child_token, revoked_at).await;
    let still = stack.call(Method::HEAD, &stream, &root.token).await;
    assert_eq!(still.status(), StatusCode::OK, "the revoker is untouched");

    let again = stack.call(Method::DELETE, &revoke_url, &root.token).await;
    assert_eq!(again.status(), StatusCode::NOT_FOUND, "nothing left");
    let bad = stack
        .call(
            Method::DELETE,
            &format!("{}/{child_id}?cascade=maybe", tokens_url(&stack)),
            &root.token,
        )
        .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    stack.finish().await;
}

#[tokio::test]
async fn admin_tokens_manage_only_their_own_subtree() {
    let stack = Stack::start().await;
    let other = stack.issue("other", &["admin", "read"], &["**"]).await;
    let limited = stack.issue("limited", &["admin", "read"], &["x/**"]).await;
    let child = mint_ok(
        &stack,
        &limited.token,
        json!({"subject": "child", "scopes": ["read"], "streams": ["x/c"], "ttl": "30m"}),
    )
    .await;
    let child_id = child["id"].as_str().expect("id");
    let url_of = |id: &str| format!("{}/{id}", tokens_url(&stack));

    let listed = stack
        .call(Method::GET, &tokens_url(&stack), &limited.token)
        .await;
    let listed: Vec<serde_json::Value> = listed.json().await.expect("json");
    let mut ids: Vec<&str> = listed.iter().filter_map(|t| t["id"].as_str()).collect();
    ids.sort_unstable();
    let mut expected = vec![limited.id.as_str(), child_id];
    expected.sort_unstable();
    assert_eq!(ids, expected, "itself and what it issued, nothing else");

    // Another token is out of reach, and answers exactly as an unknown one.
    for (method, url) in [
        (Method::GET, url_of(&other.id)),
        (Method::DELETE, url_of(&other.id)),
        (
            Method::DELETE,
            format!("{}?cascade=true", url_of(&other.id)),
        ),
        (Method::GET, url_of("no-such-token")),
    ] {
        let response = stack.call(method.clone(), &url, &limited.token).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{method} {url}");
    }
    let other_works = stack
        .call(Method::GET, &tokens_url(&stack), &other.token)
        .await;
    assert_eq!(other_works.status(), StatusCode::OK, "not revoked");
    // The reach is the subtree for every admin token, even one on `**`.
    let peek = stack
        .call(Method::GET, &url_of(child_id), &other.token)
        .await;
    assert_eq!(peek.status(), StatusCode::NOT_FOUND);

    let shown = stack
        .call(Method::GET, &url_of(&limited.id), &limited.token)
        .await;
    assert_eq!(shown.status(), StatusCode::OK, "itself");
    let revoke = stack
        .call(Method::DELETE, &url_of(child_id), &limited.token)
        .await;
    assert_eq!(revoke.status(), StatusCode::NO_CONTENT);
    let revoke = stack
        .call(Method::DELETE, &url_of(&limited.id), &limited.token)
        .await;
    assert_eq!(revoke.status(), StatusCode::NO_CONTENT, "itself too");
    stack.finish().await;
}

/// Runs the real binary against `database_url`.
fn gateway_cli(
    database_url: &str,
    key_file: &std::path::Path,
    args: &[&str],
) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_auth-gateway"))
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("GW_JWT__KEY_FILE", key_file)
        .env_remove("GW_JWT__KEY")
        .env("NO_COLOR", "1")
        .output()
        .expect("run auth-gateway")
}

#[tokio::test]
async fn cli_migrates_issues_lists_and_revokes() {
    let db = ScratchDb::create().await;
    let dir = tempfile::tempdir().expect("dir");
    let key_file = dir.path().join("key.pem");

    let keygen = gateway_cli(&db.url, &key_file, &["keygen"]);
    assert!(keygen.status.success());
    let pem = String::from_utf8(keygen.stdout).expect("utf8");
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    std::fs::write(&key_file, &pem).expect("write key");

    let migrate = gateway_cli(&db.url, &key_file, &["migrate"]);
    assert!(migrate.status.success(), "{migrate:?}");

    let create = gateway_cli(
        &db.url,
        &key_file,
        &[
            "token",
            "create",
            "--subject",
            "alice",
            "--scope",
            "read",
            "--scope",
            "write",
            "--stream",
            "chat/**",
            "--ttl",
            "24h",
            "--description",
            "cli test",
        ],
    );
    assert!(create.status.success(), "{create:?}");
    let stdout = String::from_utf8(create.stdout).expect("utf8");
    let token = stdout.trim_end_matches('\n');
    assert_eq!(
        stdout.lines().count(),
        1,
        "stdout is the token only: {stdout:?}"
    );
    assert_eq!(token.split('.').count(), 3, "a JWT: {token:?}");
    let keys = auth_gateway::auth::token::TokenKeys::ed25519_from_pem(&pem).expect("key");
    let claims = keys
        .verify(token, "durable-streams-gateway", "durable-streams")
        .expect("the printed token verifies");
    assert_eq!(claims.sub, "alice");

    let list = gateway_cli(&db.url, &key_file, &["token", "list"]);
    assert!(list.status.success());
    let table = String::from_utf8(list.stdout).expect("utf8");
    assert!(
        table.contains(&claims.jti) && table.contains("read,write") && table.contains("active")
    );
    assert!(!table.contains(token), "token list shows a token");
    let json = gateway_cli(&db.url, &key_file, &["token", "list", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(rows[0]["streams"][0], "chat/**");

    let revoke = gateway_cli(&db.url, &key_file, &["token", "revoke", &claims.jti]);
    assert!(revoke.status.success(), "{revoke:?}");
    let again = gateway_cli(&db.url, &key_file, &["token", "revoke", &claims.jti]);
    assert!(!again.status.success(), "revoking twice is an error");
    let list = gateway_cli(&db.url, &key_file, &["token", "list"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains("revoked"));

    let bad_scope = gateway_cli(
        &db.url,
        &key_file,
        &[
            "token",
            "create",
            "--subject",
            "x",
            "--scope",
            "root",
            "--stream",
            "**",
        ],
    );
    assert!(!bad_scope.status.success());
    assert!(String::from_utf8_lossy(&bad_scope.stderr).contains("unknown scope"));

    let no_db = Command::new(env!("CARGO_BIN_EXE_auth-gateway"))
        .args(["token", "list"])
        .env_remove("DATABASE_URL")
        .output()
        .expect("run");
    assert!(!no_db.status.success());
    assert!(String::from_utf8_lossy(&no_db.stderr).contains("DATABASE_URL"));

    db.drop_now().await;
}

#[tokio::test]
async fn cli_revokes_a_subtree_and_lists_issuers() {
    let db = ScratchDb::create().await;
    let dir = tempfile::tempdir().expect("dir");
    let key_file = dir.path().join("key.pem");
    let keygen = gateway_cli(&db.url, &key_file, &["keygen"]);
    std::fs::write(&key_file, &keygen.stdout).expect("write key");
    let migrate = gateway_cli(&db.url, &key_file, &["migrate"]);
    assert!(migrate.status.success(), "{migrate:?}");

    // Rows as the admin API leaves them: each naming its issuer.
    let store = TokenStore::connect(&db.url).await.expect("connect");
    let mut issuer = None;
    let mut ids = Vec::new();
    for subject in ["root", "child", "grandchild"] {
        let row = store
            .insert(&NewToken {
                subject: subject.into(),
                scopes: vec!["read".parse().expect("scope")],
                streams: vec!["**".parse().expect("pattern")],
                description: String::new(),
                expires_at: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
                issued_by: issuer.take(),
            })
            .await
            .expect("insert");
        issuer = Some(row.id.clone());
        ids.push(row.id);
    }

    let json = gateway_cli(&db.url, &key_file, &["token", "list", "--json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&json.stdout).expect("json");
    let issued_by = |subject: &str| {
        rows.iter()
            .find(|row| row["subject"] == subject)
            .map(|row| row["issued_by"].clone())
            .expect("listed")
    };
    assert_eq!(issued_by("root"), serde_json::Value::Null);
    assert_eq!(issued_by("grandchild"), ids[1].as_str());
    let table = gateway_cli(&db.url, &key_file, &["token", "list"]);
    let table = String::from_utf8(table.stdout).expect("utf8");
    assert!(table.contains("ISSUED BY"));

    let revoke = gateway_cli(
        &db.url,
        &key_file,
        &["token", "revoke", &ids[0], "--cascade"],
    );
    assert!(revoke.status.success(), "{revoke:?}");
    let said = String::from_utf8_lossy(&revoke.stderr);
    assert!(said.contains("revoked 3 token(s)"), "{said}");
    for id in &ids {
        let row = store.find(id).await.expect("find").expect("row");
        assert!(row.revoked_at.is_some(), "{} revoked", row.subject);
    }
    let again = gateway_cli(
        &db.url,
        &key_file,
        &["token", "revoke", &ids[0], "--cascade"],
    );
    assert!(!again.status.success(), "nothing left to revoke");

    store.pool().close().await;
    db.drop_now().await;
}
