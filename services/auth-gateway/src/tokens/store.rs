//! The token table in Postgres: issuing, finding, listing and revoking
//! token rows, and following which token issued which.
//!
//! Every query is a `sqlx::query!` checked at compile time against the
//! schema that `migrations/` builds (offline, from the query data in
//! `.sqlx/`; `tests/run.sh` checks that data is current). Every value is a
//! bound parameter, so subjects, patterns and descriptions are data, never
//! SQL. Columns a query cannot prove non-null (`RETURNING`, recursive
//! queries) are marked `"name!"`; the table's constraints make them so.

use crate::auth::scope::Scope;
use crate::telemetry::db_query;
use service_common::stream_pattern::StreamPattern;
use sqlx::postgres::{PgPool, PgPoolOptions};
use time::OffsetDateTime;

/// Lookups are short, so a few connections serve many requests; a request
/// waits at most two seconds for one, then the gateway answers 503.
fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(std::time::Duration::from_secs(2))
}

/// A token's row (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub id: String,
    pub subject: String,
    pub scopes: Vec<String>,
    pub streams: Vec<String>,
    pub description: String,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
    pub last_used_at: Option<OffsetDateTime>,
    /// The id of the token that issued this one through the admin API;
    /// `None` for tokens made with the CLI.
    pub issued_by: Option<String>,
}

impl TokenRow {
    /// Whether the row still allows requests at `now`.
    pub fn is_active(&self, now: OffsetDateTime) -> bool {
        self.revoked_at.is_none() && self.expires_at > now
    }
}

/// What a new token may do.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub subject: String,
    pub scopes: Vec<Scope>,
    pub streams: Vec<StreamPattern>,
    pub description: String,
    pub expires_at: OffsetDateTime,
    /// The id of the token issuing it, which must still be active; `None`
    /// when the CLI issues it.
    pub issued_by: Option<String>,
}

/// Which token rows an operation may see or change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach<'a> {
    /// Every row: the CLI, whose user has the database anyway.
    All,
    /// The token with this id and every token it issued, directly or
    /// through tokens it issued: what an admin token manages.
    SubtreeOf(&'a str),
}

impl<'a> Reach<'a> {
    /// The subtree's root, bound as `$1` in the subtree walks; `None` (SQL
    /// NULL) for every row.
    fn root(self) -> Option<&'a str> {
        match self {
            Reach::All => None,
            Reach::SubtreeOf(root) => Some(root),
        }
    }
}

/// Why the token table could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The token named as issuer is revoked, expired or gone.
    #[error("the issuing token is no longer active")]
    IssuerInactive,
}

/// The token table.
#[derive(Debug, Clone)]
pub struct TokenStore {
    pool: PgPool,
}

impl TokenStore {
    /// Connects to `database_url` now, failing if Postgres is unreachable
    /// (the CLI's behaviour).
    pub async fn connect(database_url: &str) -> Result<Self, StoreError> {
        let pool = pool_options().connect(database_url).await?;
        Ok(TokenStore { pool })
    }

    /// A store that connects on first use, so the gateway starts (and answers
    /// 503) while Postgres is down, and recovers when it comes back.
    pub fn connect_lazy(database_url: &str) -> Result<Self, StoreError> {
        let pool = pool_options().connect_lazy(database_url)?;
        Ok(TokenStore { pool })
    }

    /// The pool, for `LISTEN` connections.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Whether Postgres answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let ping = sqlx::query!("SELECT 1 AS one");
        db_query("SELECT", "1", ping, |q| q.fetch_one(&self.pool)).await?;
        Ok(())
    }

    /// Sends an empty notification on `channel` (the token listener's
    /// heartbeat).
    pub async fn notify(&self, channel: &str) -> Result<(), StoreError> {
        sqlx::query!("SELECT pg_notify($1, '') AS sent", channel)
            .fetch_one(&self.pool)
            .await?;
        Ok(())
    }

    /// Records that these tokens were used, in one statement.
    pub async fn mark_used(&self, ids: &[String]) -> Result<(), StoreError> {
        let update = sqlx::query!(
            "UPDATE tokens SET last_used_at = now() WHERE id = ANY($1)",
            ids
        );
        db_query("UPDATE", "tokens", update, |q| q.execute(&self.pool)).await?;
        Ok(())
    }

    /// Applies the migrations under `migrations/` that are not applied yet.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("../../migrations").run(&self.pool).await?;
        Ok(())
    }

    /// Stores a new token row; its id becomes the JWT's `jti`.
    ///
    /// A token issued by another is stored only while that one is still
    /// active, and the issuer's row stays share-locked until the insert
    /// commits: a concurrent revocation either waits for the new row (and
    /// [`TokenStore::revoke_within`] then finds it) or has already revoked
    /// the issuer, and the insert fails with [`StoreError::IssuerInactive`].
    pub async fn insert(&self, token: &NewToken) -> Result<TokenRow, StoreError> {
        let scopes: Vec<String> = token.scopes.iter().map(|s| s.as_str().to_owned()).collect();
        let streams: Vec<String> = token.streams.iter().map(ToString::to_string).collect();
        let row = match &token.issued_by {
            None => {
                sqlx::query_as!(
                    TokenRow,
                    r#"INSERT INTO tokens (subject, scopes, streams, description, expires_at)
                       VALUES ($1, $2, $3, $4, $5)
                       RETURNING id, subject, scopes, streams, description, created_at,
                                 expires_at, revoked_at, last_used_at, issued_by"#,
                    token.subject,
                    &scopes,
                    &streams,
                    token.description,
                    token.expires_at,
                )
                .fetch_optional(&self.pool)
                .await?
            }
            Some(issuer) => sqlx::query_as!(
                TokenRow,
                r#"INSERT INTO tokens (subject, scopes, streams, description, expires_at, issued_by)
                       SELECT $1, $2, $3, $4, $5, issuer.id FROM tokens AS issuer
                       WHERE issuer.id = $6 AND issuer.revoked_at IS NULL
                         AND issuer.expires_at > now()
                       FOR SHARE
                       RETURNING id as "id!", subject as "subject!", scopes as "scopes!",
                                 streams as "streams!", description as "description!",
                                 created_at as "created_at!", expires_at as "expires_at!",
                                 revoked_at, last_used_at, issued_by"#,
                token.subject,
                &scopes,
                &streams,
                token.description,
                token.expires_at,
                issuer,
            )
            .fetch_optional(&self.pool)
            .await?,
        };
        row.ok_or(StoreError::IssuerInactive)
    }

    pub async fn find(&self, id: &str) -> Result<Option<TokenRow>, StoreError> {
        let row = sqlx::query_as!(
            TokenRow,
            "SELECT id, subject, scopes, streams, description, created_at, expires_at,
                    revoked_at, last_used_at, issued_by
             FROM tokens WHERE id = $1",
            id
        );
        let row = db_query("SELECT", "tokens", row, |q| q.fetch_optional(&self.pool)).await?;
        Ok(row)
    }

    /// The rows of these tokens (those that exist), in one statement.
    pub async fn find_many(&self, ids: &[String]) -> Result<Vec<TokenRow>, StoreError> {
        let rows = sqlx::query_as!(
            TokenRow,
            "SELECT id, subject, scopes, streams, description, created_at, expires_at,
                    revoked_at, last_used_at, issued_by
             FROM tokens WHERE id = ANY($1)",
            ids
        );
        let rows = db_query("SELECT", "tokens", rows, |q| q.fetch_all(&self.pool)).await?;
        Ok(rows)
    }

    /// The row with this id, if it is within `reach`.
    pub async fn find_within(
        &self,
        reach: Reach<'_>,
        id: &str,
    ) -> Result<Option<TokenRow>, StoreError> {
        // The subtree walk is the same in every query of this kind: the
        // ids under the root `$1` (the root included), or every row when
        // `$1` is NULL. `UNION` rather than `UNION ALL` stops the walk even
        // on a cycle made by hand.
        let row = sqlx::query_as!(
            TokenRow,
            r#"WITH RECURSIVE subtree AS (
                   SELECT id FROM tokens WHERE id = $1
                   UNION
                   SELECT t.id FROM tokens t JOIN subtree s ON t.issued_by = s.id)
               SELECT id as "id!", subject as "subject!", scopes as "scopes!",
                      streams as "streams!", description as "description!",
                      created_at as "created_at!", expires_at as "expires_at!",
                      revoked_at, last_used_at, issued_by
               FROM tokens
               WHERE id = $2 AND ($1::text IS NULL OR id IN (SELECT id FROM subtree))"#,
            reach.root(),
            id
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row)
    }

    /// Every token row within `reach`, newest first.
    pub async fn list(&self, reach: Reach<'_>) -> Result<Vec<TokenRow>, StoreError> {
        let rows = sqlx::query_as!(
            TokenRow,
            r#"WITH RECURSIVE subtree AS (
                   SELECT id FROM tokens WHERE id = $1
                   UNION
                   SELECT t.id FROM tokens t JOIN subtree s ON t.issued_by = s.id)
               SELECT id as "id!", subject as "subject!", scopes as "scopes!",
                      streams as "streams!", description as "description!",
                      created_at as "created_at!", expires_at as "expires_at!",
                      revoked_at, last_used_at, issued_by
               FROM tokens
               WHERE $1::text IS NULL OR id IN (SELECT id FROM subtree)
               ORDER BY created_at DESC, id"#,
            reach.root()
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// Revokes the token `id` if it is within `reach` and, with `cascade`,
    /// every token it issued, directly or through others (revoked ones in
    /// between included). Returns how many active rows were revoked: 0 when
    /// there is no such token in reach or nothing left to revoke.
    ///
    /// Each revoked row notifies the gateways (migration 0002's trigger).
    pub async fn revoke_within(
        &self,
        reach: Reach<'_>,
        id: &str,
        cascade: bool,
    ) -> Result<u64, StoreError> {
        let mut revoked = 0;
        // The statement walks the tree as its snapshot saw it: a token being
        // issued under a node meanwhile (see `insert`) commits before that
        // node's update goes through, unseen. Walking again until nothing
        // is left to revoke catches it; usually the second walk finds none.
        loop {
            let done = sqlx::query!(
                "WITH RECURSIVE subtree AS (
                     SELECT id FROM tokens WHERE id = $1
                     UNION
                     SELECT t.id FROM tokens t JOIN subtree s ON t.issued_by = s.id),
                 target AS (
                     SELECT id FROM tokens
                     WHERE id = $2 AND ($1::text IS NULL OR id IN (SELECT id FROM subtree))
                     UNION
                     SELECT t.id FROM tokens t JOIN target ON t.issued_by = target.id WHERE $3)
                 UPDATE tokens SET revoked_at = now()
                 WHERE revoked_at IS NULL AND id IN (SELECT id FROM target)",
                reach.root(),
                id,
                cascade
            )
            .execute(&self.pool)
            .await?;
            revoked += done.rows_affected();
            if !cascade || done.rows_affected() == 0 {
                return Ok(revoked);
            }
        }
    }

    /// Revokes a token; `false` when there is no such token or it was
    /// already revoked.
    pub async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query!(
            "UPDATE tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
            id
        )
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
