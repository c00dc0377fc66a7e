//! Issuing tokens, for the CLI and the admin API alike: the row is written
//! first, then a JWT naming it (`jti`) is signed and handed out once. Only
//! the row is kept; the token itself is never stored.
//!
//! The operator at the command line issues anything; an admin token issues
//! only within its own rights ([`Grant::covers`]), and the new row records
//! it as the issuer.

use crate::auth::grant::{Excess, Grant};
use crate::auth::scope::Scope;
use crate::auth::token::{Claims, TokenKeys};
use crate::tokens::store::{NewToken, StoreError, TokenRow, TokenStore};
use serde::Serialize;
use service_common::stream_pattern::StreamPattern;
use std::time::Duration;
use time::OffsetDateTime;

/// What a new token should allow, before it has a row.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub subject: String,
    pub scopes: Vec<Scope>,
    pub streams: Vec<StreamPattern>,
    pub ttl: Duration,
    pub description: String,
}

/// On whose authority a token is issued.
#[derive(Debug, Clone, Copy)]
pub enum Authority<'a> {
    /// The operator, through the CLI: no ceiling, since whoever runs it has
    /// the database anyway.
    Operator,
    /// An admin token, through the API: the new token must fit within this
    /// grant, and is recorded as issued by it.
    Token(&'a Grant),
}

/// A token as it is listed: everything but the token.
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub subject: String,
    pub scopes: Vec<String>,
    pub streams: Vec<String>,
    pub description: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    /// The id of the token that issued this one through the admin API;
    /// `null` for tokens made with the CLI.
    pub issued_by: Option<String>,
    /// `active`, `revoked` or `expired`.
    pub status: &'static str,
}

impl From<TokenRow> for TokenInfo {
    fn from(row: TokenRow) -> TokenInfo {
        let status = if row.revoked_at.is_some() {
            "revoked"
        } else if row.expires_at <= OffsetDateTime::now_utc() {
            "expired"
        } else {
            "active"
        };
        TokenInfo {
            id: row.id,
            subject: row.subject,
            scopes: row.scopes,
            streams: row.streams,
            description: row.description,
            created_at: row.created_at,
            expires_at: row.expires_at,
            revoked_at: row.revoked_at,
            last_used_at: row.last_used_at,
            issued_by: row.issued_by,
            status,
        }
    }
}

/// A freshly issued token: shown once, then only its row exists.
#[derive(Debug, Serialize)]
pub struct IssuedToken {
    pub token: String,
    #[serde(flatten)]
    pub info: TokenInfo,
}

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("{0}")]
    Invalid(String),
    /// The issuing token asked for more than it holds itself.
    #[error("the new token would exceed the rights of the token issuing it: {0}")]
    ExceedsIssuer(Excess),
    /// The issuing token was revoked or expired while issuing.
    #[error("the issuing token is no longer active")]
    IssuerInactive,
    #[error(transparent)]
    Store(StoreError),
    #[error("cannot sign the token: {0}")]
    Signing(String),
}

impl From<StoreError> for IssueError {
    fn from(e: StoreError) -> IssueError {
        match e {
            StoreError::IssuerInactive => IssueError::IssuerInactive,
            e => IssueError::Store(e),
        }
    }
}

/// Where tokens are issued: the store, the key, and the claims every token
/// carries.
#[derive(Debug, Clone, Copy)]
pub struct Issuer<'a> {
    pub store: &'a TokenStore,
    pub keys: &'a TokenKeys,
    pub issuer: &'a str,
    pub audience: &'a str,
}

impl Issuer<'_> {
    /// Checks the request, refuses it if it exceeds `authority`, then
    /// stores and signs the token.
    pub async fn issue(
        &self,
        request: TokenRequest,
        authority: Authority<'_>,
    ) -> Result<IssuedToken, IssueError> {
        if request.subject.trim().is_empty() {
            return Err(IssueError::Invalid("subject must not be empty".into()));
        }
        if request.scopes.is_empty() {
            return Err(IssueError::Invalid("at least one scope is required".into()));
        }
        if request.streams.is_empty() && request.scopes.iter().any(|s| *s != Scope::Admin) {
            return Err(IssueError::Invalid(
                "stream scopes need at least one stream pattern (e.g. --stream 'chat/**')".into(),
            ));
        }
        let ttl = time::Duration::try_from(request.ttl)
            .ok()
            .filter(|ttl| ttl.is_positive())
            .ok_or_else(|| IssueError::Invalid("ttl must be positive".into()))?;
        let expires_at = OffsetDateTime::now_utc()
            .checked_add(ttl)
            .filter(|t| t.year() < 10_000)
            // Postgres keeps microseconds: the instant checked below is then
            // the one stored.
            .and_then(|t| t.replace_microsecond(t.microsecond()).ok())
            .ok_or_else(|| IssueError::Invalid("ttl is too long".into()))?;
        let issued_by = match authority {
            Authority::Operator => None,
            Authority::Token(grant) => {
                grant
                    .covers(&request.scopes, &request.streams, expires_at)
                    .map_err(IssueError::ExceedsIssuer)?;
                Some(grant.token_id.to_string())
            }
        };
        let row = self
            .store
            .insert(&NewToken {
                subject: request.subject,
                scopes: request.scopes,
                streams: request.streams,
                description: request.description,
                expires_at,
                issued_by,
            })
            .await?;
        let claims = Claims {
            iss: self.issuer.to_owned(),
            aud: self.audience.to_owned(),
            sub: row.subject.clone(),
            exp: unix_seconds(row.expires_at),
            iat: unix_seconds(row.created_at),
            nbf: None,
            jti: row.id.clone(),
        };
        match self.keys.sign(&claims) {
            Ok(token) => Ok(IssuedToken {
                token,
                info: row.into(),
            }),
            Err(e) => {
                // No token was handed out: its row must not stay usable.
                self.store.revoke(&row.id).await?;
                Err(IssueError::Signing(e.to_string()))
            }
        }
    }
}

fn unix_seconds(t: OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp()).unwrap_or(0)
}
