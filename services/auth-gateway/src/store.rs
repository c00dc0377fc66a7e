//! The token table in Postgres: issuing, finding, listing and revoking
//! token rows. Every query is parameterised, so subjects, patterns and
//! descriptions are data, never SQL.

use crate::pattern::StreamPattern;
use crate::scope::Scope;
use sqlx::FromRow;
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
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
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
}

/// A database failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// The token table.
#[derive(Debug, Clone)]
pub struct TokenStore {
    pool: PgPool,
}

const COLUMNS: &str =
    "id, subject, scopes, streams, description, created_at, expires_at, revoked_at, last_used_at";

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
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Records that these tokens were used, in one statement.
    pub async fn mark_used(&self, ids: &[String]) -> Result<(), StoreError> {
        sqlx::query("UPDATE tokens SET last_used_at = now() WHERE id = ANY($1)")
            .bind(ids)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Applies the migrations under `migrations/` that are not applied yet.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("../../migrations").run(&self.pool).await?;
        Ok(())
    }

    /// Stores a new token row; its id becomes the JWT's `jti`.
    pub async fn insert(&self, token: &NewToken) -> Result<TokenRow, StoreError> {
        let scopes: Vec<String> = token.scopes.iter().map(|s| s.as_str().to_owned()).collect();
        let streams: Vec<String> = token.streams.iter().map(ToString::to_string).collect();
        let row = sqlx::query_as::<_, TokenRow>(&format!(
            "INSERT INTO tokens (subject, scopes, streams, description, expires_at) \
             VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}"
        ))
        .bind(&token.subject)
        .bind(&scopes)
        .bind(&streams)
        .bind(&token.description)
        .bind(token.expires_at)
        .fetch_one(&self.pool)
        .await?;
        Ok(row)
    }

    pub async fn find(&self, id: &str) -> Result<Option<TokenRow>, StoreError> {
        let row =
            sqlx::query_as::<_, TokenRow>(&format!("SELECT {COLUMNS} FROM tokens WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row)
    }

    /// The rows of these tokens (those that exist), in one statement.
    pub async fn find_many(&self, ids: &[String]) -> Result<Vec<TokenRow>, StoreError> {
        let rows = sqlx::query_as::<_, TokenRow>(&format!(
            "SELECT {COLUMNS} FROM tokens WHERE id = ANY($1)"
        ))
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// Every token row, newest first.
    pub async fn list(&self) -> Result<Vec<TokenRow>, StoreError> {
        let rows = sqlx::query_as::<_, TokenRow>(&format!(
            "SELECT {COLUMNS} FROM tokens ORDER BY created_at DESC, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// Revokes a token; `false` when there is no such token or it was
    /// already revoked.
    pub async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
