//! Turning a bearer token into a [`Grant`]: verify the JWT, then look its row
//! up — from a cache, kept honest by Postgres `LISTEN/NOTIFY`.
//!
//! Revocation reaches every replica within a second:
//! * while the gateway listens on `token_changes`, a notified id is dropped
//!   from the cache at once, and rows are otherwise cached for
//!   `auth.cache_ttl_secs`;
//! * while it does not (connection lost, Postgres down), cached rows count
//!   for at most [`UNLISTENED_TTL`]; on reconnecting the cache is emptied,
//!   since notifications may have been missed.
//!
//! A token whose row cannot be read is refused with 503: never fail open.

use crate::error::GatewayError;
use crate::grant::Grant;
use crate::store::TokenStore;
use crate::token::{Claims, TokenError, TokenKeys};
use dashmap::DashMap;
use sqlx::postgres::PgListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// The Postgres channel migration 0002's trigger notifies.
pub const CHANGES_CHANNEL: &str = "token_changes";

/// How long a cached row counts while notifications are not being received.
pub const UNLISTENED_TTL: Duration = Duration::from_secs(1);

/// Most verified tokens remembered; past this the memo starts over.
const VERIFIED_CAPACITY: usize = 100_000;

/// How many of a token's last bytes find it in the memo.
const TAIL_LEN: usize = 16;

/// Pause between attempts to (re)establish `LISTEN`.
const RELISTEN_DELAY: Duration = Duration::from_millis(500);

/// A token whose signature and claims checked out.
struct VerifiedToken {
    token: Box<str>,
    claims: Arc<Claims>,
}

/// The memo key of a token: its last [`TAIL_LEN`] bytes (zero-padded in
/// front if it is shorter). They lie in the signature, so different tokens
/// differ there, and hashing them rather than the whole token (a few
/// hundred bytes) was most of a memo lookup.
fn tail_of(token: &str) -> [u8; TAIL_LEN] {
    let bytes = token.as_bytes();
    let tail = &bytes[bytes.len().saturating_sub(TAIL_LEN)..];
    let mut key = [0; TAIL_LEN];
    key[TAIL_LEN - tail.len()..].copy_from_slice(tail);
    key
}

struct CachedGrant {
    grant: Arc<Grant>,
    fetched: Instant,
    /// Set on every use; the flusher turns it into `last_used_at`.
    used: AtomicBool,
}

/// Verifies tokens and caches their rows; shared by all requests.
pub struct Authenticator {
    keys: TokenKeys,
    issuer: String,
    audience: String,
    store: TokenStore,
    /// Tokens whose signature and claims already checked out, so a busy
    /// client costs one hash lookup per request instead of a signature
    /// verification. Found by [`tail_of`], but only the identical token
    /// hits; a token whose tail matches another's is verified itself.
    verified: DashMap<[u8; TAIL_LEN], VerifiedToken>,
    cache: DashMap<String, CachedGrant>,
    /// Bumped on every notification, so a lookup that raced one does not
    /// cache what it read.
    generation: AtomicU64,
    listening: AtomicBool,
    ttl: Duration,
}

impl Authenticator {
    pub fn new(
        keys: TokenKeys,
        issuer: String,
        audience: String,
        store: TokenStore,
        ttl: Duration,
    ) -> Authenticator {
        Authenticator {
            keys,
            issuer,
            audience,
            store,
            verified: DashMap::new(),
            cache: DashMap::new(),
            generation: AtomicU64::new(0),
            listening: AtomicBool::new(false),
            ttl,
        }
    }

    pub fn store(&self) -> &TokenStore {
        &self.store
    }

    pub fn keys(&self) -> &TokenKeys {
        &self.keys
    }

    /// Whether revocations are currently being received.
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::SeqCst)
    }

    /// The grant of a token that checks out: signature, claims, and a row
    /// that exists, matches, and is neither revoked nor expired.
    pub async fn authenticate(&self, token: &str) -> Result<Arc<Grant>, GatewayError> {
        let claims = self.verify(token)?;
        let grant = self.grant(&claims.jti).await?;
        if grant.subject != claims.sub {
            return Err(GatewayError::InvalidToken(
                "token does not match its record",
            ));
        }
        if let Some(reason) = grant.inactive_reason(OffsetDateTime::now_utc()) {
            return Err(GatewayError::InvalidToken(reason));
        }
        Ok(grant)
    }

    /// Signature and claims, from the memo when this exact token was
    /// verified before (its `exp` and `nbf` still re-checked).
    fn verify(&self, token: &str) -> Result<Arc<Claims>, GatewayError> {
        let now = unix_now();
        let tail = tail_of(token);
        if let Some(memo) = self.verified.get(&tail)
            && *memo.token == *token
        {
            let claims = &memo.claims;
            if claims.exp <= now {
                return Err(GatewayError::InvalidToken("token expired"));
            }
            if claims.nbf.is_some_and(|nbf| nbf > now) {
                return Err(GatewayError::InvalidToken("token not yet valid"));
            }
            return Ok(claims.clone());
        }
        let claims = self
            .keys
            .verify(token, &self.issuer, &self.audience)
            .map(Arc::new)
            .map_err(|e| match e {
                TokenError::Invalid(reason) => GatewayError::InvalidToken(reason),
                TokenError::Signing(_) => GatewayError::Internal,
            })?;
        if self.verified.len() >= VERIFIED_CAPACITY {
            self.verified.clear();
        }
        self.verified.insert(
            tail,
            VerifiedToken {
                token: token.into(),
                claims: claims.clone(),
            },
        );
        Ok(claims)
    }

    fn fresh_for(&self) -> Duration {
        if self.is_listening() {
            self.ttl
        } else {
            self.ttl.min(UNLISTENED_TTL)
        }
    }

    async fn grant(&self, id: &str) -> Result<Arc<Grant>, GatewayError> {
        if let Some(entry) = self.cache.get(id)
            && entry.fetched.elapsed() < self.fresh_for()
        {
            entry.used.store(true, Ordering::Relaxed);
            return Ok(entry.grant.clone());
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let row = self.store.find(id).await.map_err(|e| {
            tracing::warn!("token lookup failed: {e}");
            GatewayError::AuthUnavailable
        })?;
        let Some(row) = row else {
            return Err(GatewayError::InvalidToken("unknown token"));
        };
        let grant = Arc::new(Grant::from_row(row));
        if self.generation.load(Ordering::SeqCst) == generation {
            self.cache.insert(
                id.to_owned(),
                CachedGrant {
                    grant: grant.clone(),
                    fetched: Instant::now(),
                    used: AtomicBool::new(true),
                },
            );
            // A notification that landed between the check and the insert
            // must still win.
            if self.generation.load(Ordering::SeqCst) != generation {
                self.cache.remove(id);
            }
        }
        Ok(grant)
    }

    /// A row changed: forget it.
    fn forget(&self, id: &str) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.cache.remove(id);
    }

    fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.cache.clear();
    }

    /// Receives `token_changes` notifications for as long as the gateway
    /// runs, re-establishing `LISTEN` whenever the connection drops.
    pub async fn follow_changes(self: Arc<Self>) {
        let mut reported_failure = false;
        loop {
            match self.listen().await {
                Ok(mut listener) => {
                    reported_failure = false;
                    self.forget_all();
                    self.listening.store(true, Ordering::SeqCst);
                    tracing::info!("following token changes (LISTEN {CHANGES_CHANNEL})");
                    loop {
                        match listener.try_recv().await {
                            Ok(Some(notification)) => self.forget(notification.payload()),
                            Ok(None) => break,
                            Err(e) => {
                                tracing::debug!("token change listener: {e}");
                                break;
                            }
                        }
                    }
                    self.listening.store(false, Ordering::SeqCst);
                    tracing::warn!(
                        "lost the token change listener; cached tokens are re-checked every \
                         second until it is back"
                    );
                }
                Err(e) if !reported_failure => {
                    reported_failure = true;
                    tracing::warn!("cannot listen for token changes, retrying: {e}");
                }
                Err(e) => tracing::debug!("cannot listen for token changes: {e}"),
            }
            tokio::time::sleep(RELISTEN_DELAY).await;
        }
    }

    async fn listen(&self) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(self.store.pool()).await?;
        listener.listen(CHANGES_CHANNEL).await?;
        Ok(listener)
    }

    /// Periodic housekeeping: writes `last_used_at` for tokens used since
    /// the last call, and drops cached rows and memoised tokens past their
    /// lifetime.
    pub async fn maintain(&self) {
        let used: Vec<String> = self
            .cache
            .iter()
            .filter(|entry| entry.used.swap(false, Ordering::Relaxed))
            .map(|entry| entry.key().clone())
            .collect();
        if !used.is_empty()
            && let Err(e) = self.store.mark_used(&used).await
        {
            tracing::debug!("cannot record last use of {} tokens: {e}", used.len());
        }
        let ttl = self.ttl;
        self.cache.retain(|_, entry| entry.fetched.elapsed() < ttl);
        let now = unix_now();
        self.verified.retain(|_, memo| memo.claims.exp > now);
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::generate_ed25519_pem;

    const ISSUER: &str = "gateway";
    const AUDIENCE: &str = "streams";

    fn claims(subject: &str) -> Claims {
        let now = unix_now();
        Claims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: subject.into(),
            exp: now + 600,
            iat: now,
            nbf: None,
            jti: format!("{subject}-token"),
        }
    }

    fn authenticator() -> Authenticator {
        let pem = generate_ed25519_pem().expect("keygen");
        let keys = TokenKeys::ed25519_from_pem(&pem).expect("keys");
        let store = TokenStore::connect_lazy("postgres://unused@127.0.0.1:1/none").expect("store");
        Authenticator::new(
            keys,
            ISSUER.into(),
            AUDIENCE.into(),
            store,
            Duration::from_secs(60),
        )
    }

    #[test]
    fn tails_are_the_last_bytes_padded_in_front() {
        assert_eq!(&tail_of("0123456789abcdefXYZ"), b"3456789abcdefXYZ");
        assert_eq!(&tail_of("abc"), b"\0\0\0\0\0\0\0\0\0\0\0\0\0abc");
    }

    #[tokio::test]
    async fn only_the_identical_token_hits_the_memo() {
        let authenticator = authenticator();
        let token = authenticator.keys.sign(&claims("alice")).expect("sign");
        let verified = authenticator.verify(&token).expect("verifies");
        assert_eq!(verified.sub, "alice");
        assert!(authenticator.verify(&token).is_ok(), "from the memo");

        // Alice's signature on Mallory's claims: the same tail, not the
        // same token.
        let (_, signature) = token.rsplit_once('.').expect("signature");
        let mallory = authenticator.keys.sign(&claims("mallory")).expect("sign");
        let (signed, _) = mallory.rsplit_once('.').expect("signed part");
        let forged = format!("{signed}.{signature}");
        assert_eq!(tail_of(&forged), tail_of(&token));
        assert!(matches!(
            authenticator.verify(&forged),
            Err(GatewayError::InvalidToken("bad signature"))
        ));
        assert_eq!(authenticator.verify(&token).expect("still").sub, "alice");
    }
}
