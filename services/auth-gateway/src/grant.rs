//! What one token may do: its row from Postgres, parsed once, and the
//! checks every request runs against it (still active, scope, stream path).

use crate::pattern::StreamPattern;
use crate::proxy::Identity;
use crate::scope::Scope;
use crate::store::TokenRow;
use std::sync::Arc;
use time::OffsetDateTime;

/// The rights of one token, as stored in its row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Shared, so the rate limiter keys its buckets by it without a copy.
    pub token_id: Arc<str>,
    pub subject: String,
    /// The identity headers sent upstream for this token.
    pub identity: Identity,
    pub scopes: Vec<Scope>,
    pub streams: Vec<StreamPattern>,
    pub expires_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
}

impl Grant {
    /// Parses a row. A scope or pattern that does not parse (a row edited by
    /// hand) grants nothing rather than failing the request: the token simply
    /// has fewer rights.
    pub fn from_row(row: TokenRow) -> Grant {
        let scopes = row
            .scopes
            .iter()
            .filter_map(|s| match s.parse() {
                Ok(scope) => Some(scope),
                Err(e) => {
                    tracing::warn!(token_id = %row.id, "ignoring scope in token row: {e}");
                    None
                }
            })
            .collect();
        let streams = row
            .streams
            .iter()
            .filter_map(|p| match p.parse() {
                Ok(pattern) => Some(pattern),
                Err(e) => {
                    tracing::warn!(token_id = %row.id, "ignoring stream pattern in token row: {e}");
                    None
                }
            })
            .collect();
        Grant {
            identity: Identity::new(&row.subject, &row.id),
            token_id: row.id.into(),
            subject: row.subject,
            scopes,
            streams,
            expires_at: row.expires_at,
            revoked_at: row.revoked_at,
        }
    }

    /// Why the row no longer admits the token, if it does not.
    pub fn inactive_reason(&self, now: OffsetDateTime) -> Option<&'static str> {
        if self.revoked_at.is_some() {
            Some("token revoked")
        } else if self.expires_at <= now {
            Some("token expired")
        } else {
            None
        }
    }

    pub fn has_scope(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    /// Whether the token holds `scope` on the stream at `path` (relative to
    /// the stream base path, percent-decoded).
    pub fn allows(&self, scope: Scope, path: &str) -> bool {
        self.has_scope(scope) && self.streams.iter().any(|p| p.matches(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    fn row(scopes: &[&str], streams: &[&str]) -> TokenRow {
        let now = OffsetDateTime::now_utc();
        TokenRow {
            id: "t1".into(),
            subject: "alice".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            streams: streams.iter().map(|s| s.to_string()).collect(),
            description: String::new(),
            created_at: now,
            expires_at: now + Duration::hours(1),
            revoked_at: None,
            last_used_at: None,
        }
    }

    #[test]
    fn scope_and_pattern_must_both_match() {
        let grant = Grant::from_row(row(&["read", "write"], &["chat/**", "inbox/*"]));
        assert!(grant.allows(Scope::Read, "chat/room-1/log"));
        assert!(grant.allows(Scope::Write, "inbox/alice"));
        assert!(
            !grant.allows(Scope::Delete, "chat/room-1"),
            "no delete scope"
        );
        assert!(
            !grant.allows(Scope::Read, "inbox/alice/deep"),
            "* is one segment"
        );
        assert!(!grant.allows(Scope::Read, "other"), "outside every pattern");
    }

    #[test]
    fn unparsable_entries_grant_nothing() {
        let grant = Grant::from_row(row(&["read", "superuser"], &["", "a/**"]));
        assert_eq!(grant.scopes, vec![Scope::Read]);
        assert!(grant.allows(Scope::Read, "a/b"));
        assert!(!grant.allows(Scope::Read, ""));
    }

    #[test]
    fn revoked_and_expired_rows_say_why() {
        let now = OffsetDateTime::now_utc();
        let mut grant = Grant::from_row(row(&["read"], &["**"]));
        assert_eq!(grant.inactive_reason(now), None);
        grant.expires_at = now - Duration::seconds(1);
        assert_eq!(grant.inactive_reason(now), Some("token expired"));
        grant.revoked_at = Some(now);
        assert_eq!(grant.inactive_reason(now), Some("token revoked"));
    }
}
