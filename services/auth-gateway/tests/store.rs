//! The Postgres token store against a real server: each test run creates its
//! own database from `DATABASE_URL`, migrates it, and drops it afterwards.

mod common;

use auth_gateway::auth::scope::Scope;
use auth_gateway::tokens::store::{NewToken, Reach, StoreError, TokenStore};
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
        issued_by: None,
    }
}

fn issued_by(subject: &str, issuer: &str) -> NewToken {
    NewToken {
        issued_by: Some(issuer.to_owned()),
        ..token(subject, &["**"])
    }
}

/// The ids of `reach`'s rows, sorted.
async fn ids(store: &TokenStore, reach: Reach<'_>) -> Vec<String> {
    let mut ids: Vec<String> = store
        .list(reach)
        .await
        .expect("list")
        .into_iter()
        .map(|row| row.id)
        .collect();
    ids.sort();
    ids
}

fn sorted(ids: &[&str]) -> Vec<String> {
    let mut ids: Vec<String> = ids.iter().map(|id| (*id).to_owned()).collect();
    ids.sort();
    ids
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
        .list(Reach::All)
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
    assert_eq!(
        store
            .list(Reach::All)
            .await
            .expect("the table still exists")
            .len(),
        1
    );
    db.drop_now().await;
}

#[tokio::test]
async fn issued_tokens_form_subtrees_that_revoke_together() {
    let db = ScratchDb::create().await;
    let store = TokenStore::connect(&db.url).await.expect("connect");
    store.migrate().await.expect("migrate");
    let insert = |token: NewToken| {
        let store = store.clone();
        async move { store.insert(&token).await.expect("insert") }
    };
    let root = insert(token("root", &["**"])).await;
    let child = insert(issued_by("child", &root.id)).await;
    let grandchild = insert(issued_by("grandchild", &child.id)).await;
    let sibling = insert(token("sibling", &["**"])).await;
    assert_eq!(root.issued_by, None);
    assert_eq!(grandchild.issued_by.as_deref(), Some(child.id.as_str()));

    assert_eq!(
        ids(&store, Reach::SubtreeOf(&root.id)).await,
        sorted(&[&root.id, &child.id, &grandchild.id])
    );
    assert_eq!(
        ids(&store, Reach::SubtreeOf(&child.id)).await,
        sorted(&[&child.id, &grandchild.id])
    );
    assert_eq!(ids(&store, Reach::All).await.len(), 4);
    let below_child = Reach::SubtreeOf(&child.id);
    assert_eq!(
        store
            .find_within(below_child, &root.id)
            .await
            .expect("find"),
        None
    );
    assert!(
        store
            .find_within(Reach::SubtreeOf(&root.id), &grandchild.id)
            .await
            .expect("find")
            .is_some()
    );
    for outside in [&root.id, &sibling.id] {
        let revoked = store.revoke_within(below_child, outside, true).await;
        assert_eq!(revoked.expect("revoke"), 0, "out of reach");
    }

    // Without cascade only the token itself goes; what it issued stays
    // active, but it can issue nothing more.
    assert_eq!(
        store
            .revoke_within(Reach::All, &child.id, false)
            .await
            .expect("revoke"),
        1
    );
    for issuer in [child.id.as_str(), "no-such-token"] {
        assert!(matches!(
            store.insert(&issued_by("late", issuer)).await,
            Err(StoreError::IssuerInactive)
        ));
    }
    let mut expired = token("expired", &["**"]);
    expired.expires_at = OffsetDateTime::now_utc() - Duration::seconds(1);
    let expired = insert(expired).await;
    assert!(matches!(
        store.insert(&issued_by("late", &expired.id)).await,
        Err(StoreError::IssuerInactive)
    ));

    // The cascade walks through the revoked child to the grandchild.
    assert_eq!(
        store
            .revoke_within(Reach::All, &root.id, true)
            .await
            .expect("revoke"),
        2
    );
    assert_eq!(
        store
            .revoke_within(Reach::All, &root.id, true)
            .await
            .expect("revoke"),
        0
    );
    let now = OffsetDateTime::now_utc();
    for (id, active) in [(&grandchild.id, false), (&sibling.id, true)] {
        let row = store.find(id).await.expect("find").expect("row");
        assert_eq!(row.is_active(now), active, "{}", row.subject);
    }
    db.drop_now().await;
}
