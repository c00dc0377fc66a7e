//! What one token may do: its row from Postgres, parsed once, and the
//! checks every request runs against it (still active, scope, stream path),
//! plus the ceiling on the tokens an admin token may issue.
//!
//! A grant also ends: when its row changes (revoked, rights narrowed) the
//! authenticator ends it, and requests it authorised that are still open
//! (live reads, uploads) stop with it.

use crate::auth::identity::Identity;
use crate::auth::scope::Scope;
use crate::tokens::store::TokenRow;
use service_common::stream_pattern::StreamPattern;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use time::OffsetDateTime;
use tokio::sync::Notify;

/// The rights of one token, as stored in its row.
#[derive(Debug)]
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
    /// Set once the row this grant was read from no longer holds.
    ended: AtomicBool,
    /// Wakes the open requests waiting in [`Grant::ended`].
    ending: Notify,
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
            ended: AtomicBool::new(false),
            ending: Notify::new(),
        }
    }

    /// Whether `other` allows exactly what this grant allows, to the same
    /// subject, until the same time.
    pub fn same_rights(&self, other: &Grant) -> bool {
        self.token_id == other.token_id
            && self.subject == other.subject
            && self.scopes == other.scopes
            && self.streams == other.streams
            && self.expires_at == other.expires_at
            && self.revoked_at == other.revoked_at
    }

    /// Ends the grant: requests it authorised that are still open stop.
    pub fn end(&self) {
        // The flag first: a waiter that registers after the wake-up below
        // sees it (see `ended`).
        self.ended.store(true, Ordering::SeqCst);
        self.ending.notify_waiters();
    }

    pub fn is_ended(&self) -> bool {
        self.ended.load(Ordering::SeqCst)
    }

    /// Resolves when the grant is ended or its token expires, whichever
    /// comes first.
    pub async fn ended(&self) {
        let notified = self.ending.notified();
        tokio::pin!(notified);
        // Registered before the flag is read, so an `end` in between is
        // not missed.
        notified.as_mut().enable();
        if self.is_ended() {
            return;
        }
        let left = self.expires_at - OffsetDateTime::now_utc();
        let left = std::time::Duration::try_from(left).unwrap_or_default();
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep(left) => {}
        }
    }

    /// Whether the grant still admits requests at `now`: not ended, not
    /// revoked, not expired.
    pub fn is_live(&self, now: OffsetDateTime) -> bool {
        !self.is_ended() && self.inactive_reason(now).is_none()
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

    /// Whether this token may issue a token with these rights: no scope it
    /// lacks, no stream outside its patterns, no later expiry. Otherwise an
    /// admin token could hand out more than it holds, and outlive itself
    /// through what it issued.
    ///
    /// Pattern containment is conservative (see [`StreamPattern::contains`]),
    /// so an equivalent but differently spelled pattern may be refused;
    /// nothing wider is ever let through.
    pub fn covers(
        &self,
        scopes: &[Scope],
        streams: &[StreamPattern],
        expires_at: OffsetDateTime,
    ) -> Result<(), Excess> {
        if let Some(scope) = scopes.iter().find(|s| !self.has_scope(**s)) {
            return Err(Excess::Scope(*scope));
        }
        if let Some(pattern) = streams
            .iter()
            .find(|wanted| !self.streams.iter().any(|held| held.contains(wanted)))
        {
            return Err(Excess::Stream(pattern.clone()));
        }
        if expires_at > self.expires_at {
            return Err(Excess::Expiry {
                requested: expires_at,
                limit: self.expires_at,
            });
        }
        Ok(())
    }
}

/// How a token asked for would exceed the rights of the token issuing it.
/// For the logs: the client is told only that it would.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Excess {
    #[error("the issuer lacks the {0} scope")]
    Scope(Scope),
    #[error("stream pattern {0} is within none of the issuer's patterns")]
    Stream(StreamPattern),
    #[error("expiry {requested} is after the issuer's own, {limit}")]
    Expiry {
        requested: OffsetDateTime,
        limit: OffsetDateTime,
    },
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
            issued_by: None,
        }
    }

    fn patterns(texts: &[&str]) -> Vec<StreamPattern> {
        texts.iter().map(|t| t.parse().expect("pattern")).collect()
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
    fn rights_compare_without_the_ending_state() {
        let read_a = row(&["read"], &["a/**"]);
        let a = Grant::from_row(read_a.clone());
        a.end();
        assert!(a.same_rights(&Grant::from_row(read_a.clone())));
        let narrower = TokenRow {
            streams: vec!["a/*".into()],
            ..read_a.clone()
        };
        assert!(!a.same_rights(&Grant::from_row(narrower)));
        let other_scope = TokenRow {
            scopes: vec!["write".into()],
            ..read_a.clone()
        };
        assert!(!a.same_rights(&Grant::from_row(other_scope)));
        let longer = TokenRow {
            expires_at: read_a.expires_at + Duration::hours(1),
            ..read_a
        };
        assert!(!a.same_rights(&Grant::from_row(longer)));
    }

    #[tokio::test]
    async fn ending_wakes_waiters_and_later_callers() {
        let grant = Arc::new(Grant::from_row(row(&["read"], &["**"])));
        let waiter = tokio::spawn({
            let grant = grant.clone();
            async move { grant.ended().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert!(grant.is_live(OffsetDateTime::now_utc()));
        grant.end();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("waiter");
        grant.ended().await;
        assert!(!grant.is_live(OffsetDateTime::now_utc()));
    }

    #[tokio::test]
    async fn expiry_ends_a_grant() {
        let mut expiring = row(&["read"], &["**"]);
        expiring.expires_at = OffsetDateTime::now_utc() + Duration::milliseconds(50);
        let grant = Grant::from_row(expiring);
        tokio::time::timeout(std::time::Duration::from_secs(5), grant.ended())
            .await
            .expect("ends at expiry");
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

    #[test]
    fn issued_rights_must_fit_within_the_issuer() {
        let issuer = Grant::from_row(row(&["admin", "read", "write"], &["x/**", "inbox/*"]));
        let within = issuer.expires_at - Duration::minutes(1);
        let ok =
            |scopes: &[Scope], streams: &[&str]| issuer.covers(scopes, &patterns(streams), within);
        assert_eq!(ok(&[Scope::Read], &["x/a/**"]), Ok(()));
        assert_eq!(
            ok(&[Scope::Read, Scope::Write], &["x/*", "inbox/bob"]),
            Ok(())
        );
        assert_eq!(ok(&[Scope::Admin], &[]), Ok(()), "an admin-only token");
        assert_eq!(ok(&[Scope::Read], &["x"]), Ok(()), "x/** covers x itself");
        assert_eq!(
            ok(&[Scope::Read, Scope::Delete], &["x/a"]),
            Err(Excess::Scope(Scope::Delete))
        );
        assert_eq!(
            ok(&[Scope::Read], &["x/a", "**"]),
            Err(Excess::Stream(patterns(&["**"])[0].clone()))
        );
        assert_eq!(
            ok(&[Scope::Read], &["inbox/**"]),
            Err(Excess::Stream(patterns(&["inbox/**"])[0].clone())),
            "inbox/* holds one level only"
        );
        assert_eq!(
            issuer.covers(&[Scope::Read], &patterns(&["x/a"]), issuer.expires_at),
            Ok(())
        );
        let later = issuer.expires_at + Duration::seconds(1);
        assert_eq!(
            issuer.covers(&[Scope::Read], &patterns(&["x/a"]), later),
            Err(Excess::Expiry {
                requested: later,
                limit: issuer.expires_at
            })
        );
    }
}
