//! Token administration: the `/admin/tokens` API (admin scope only) and the
//! `auth-gateway` command line against the database directly.

mod common;

use common::{ScratchDb, Stack};
use reqwest::{Method, StatusCode};
use std::process::Command;
use std::time::{Duration, Instant};

#[tokio::test]
async fn admin_api_issues_lists_and_revokes() {
    let stack = Stack::start().await;
    let admin = stack.issue("root", &["admin"], &[]).await;
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
    let dir = std::env::temp_dir().join(format!("gw-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let key_file = dir.join("key.pem");

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
    let keys = auth_gateway::token::TokenKeys::ed25519_from_pem(&pem).expect("key");
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

    let _ = std::fs::remove_dir_all(dir);
    db.drop_now().await;
}
