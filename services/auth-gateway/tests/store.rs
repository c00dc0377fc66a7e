//! The Postgres token store against a real server: each test run creates its
//! own database from `DATABASE_URL`, migrates it, and drops it afterwards.

mod common;

use auth_gateway::scope::Scope;
use auth_gateway::store::{NewToken, TokenStore};
use common::ScratchDb;
use time::{Duration, OffsetDateTime};

fn token(subject: &str, patterns: &[&str]) -> NewToken {
    NewToken {
        subject: subject.to_owned(),
        scopes: vec![Scope::Read, Scope::Write],
        streams: patterns
            .iter()
            .map(|p| p.parse().expect("valid pattern"))
            .collect(),
        description: "test token".into(),
        expires_at: OffsetDateTime::now_utc() + Duration::hours(24),
    }
}

#[tokio::test]
async fn issue_find_list_and_revoke() {
    let db = ScratchDb::create().await;
    let store = TokenStore::connect(&db.url).await.expect("connect");
    store.migrate().await.expect("migrate");
    store.migrate().await.expect("migrating twice is a no-op");

    let alice = store
        .insert(&token("alice", &["chat/**"]))
        .await
        .expect("insert");
    assert_eq!(alice.subject, "alice");
    assert_eq!(alice.scopes, ["read", "write"]);
    assert_eq!(alice.streams, ["chat/**"]);
    assert!(alice.is_active(OffsetDateTime::now_utc()));
    assert_eq!(
        store.find(&alice.id).await.expect("find"),
        Some(alice.clone())
    );
    assert_eq!(store.find("no-such-token").await.expect("find"), None);

    let bob = store.insert(&token("bob", &["*"])).await.expect("insert");
    let listed: Vec<String> = store
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert!(listed.contains(&alice.id) && listed.contains(&bob.id));

    assert!(store.revoke(&alice.id).await.expect("revoke"));
    assert!(
        !store.revoke(&alice.id).await.expect("revoke again"),
        "already revoked"
    );
    assert!(!store.revoke("no-such-token").await.expect("revoke missing"));
    let revoked = store
        .find(&alice.id)
        .await
        .expect("find")
        .expect("row kept");
    assert!(!revoked.is_active(OffsetDateTime::now_utc()));
    assert!(
        store
            .find(&bob.id)
            .await
            .expect("find")
            .expect("row")
            .is_active(OffsetDateTime::now_utc())
    );

    db.drop_now().await;
}

#[tokio::test]
async fn sql_metacharacters_are_data() {
    let db = ScratchDb::create().await;
    let store = TokenStore::connect(&db.url).await.expect("connect");
    store.migrate().await.expect("migrate");
    let hostile = "x'); DROP TABLE tokens; --";
    let row = store
        .insert(&token(hostile, &["a%/b_", "it's/**"]))
        .await
        .expect("insert");
    let found = store.find(&row.id).await.expect("find").expect("row");
    assert_eq!(found.subject, hostile);
    assert_eq!(found.streams, ["a%/b_", "it's/**"]);
    assert_eq!(store.find("' OR '1'='1").await.expect("find"), None);
    assert_eq!(store.list().await.expect("the table still exists").len(), 1);
    db.drop_now().await;
}
