//! Turning a bearer token into a [`Grant`]: verify the JWT, then look its row
//! up — from a cache, kept honest by Postgres `LISTEN/NOTIFY`.
//!
//! Revocation reaches every replica within about a second:
//! * while the gateway listens on `token_changes`, a notified id is dropped
//!   from the cache at once, and rows are otherwise cached for
//!   `auth.cache_ttl_secs`;
//! * the listening connection proves itself with a heartbeat (a `NOTIFY`
//!   on a channel of its own, several times a second); one that goes
//!   silent counts as lost within [`HEARTBEAT_DEADLINE`], even if no error
//!   ever arrives (a silent network partition);
//! * while it does not listen (connection lost, Postgres down), cached rows
//!   count for at most [`UNLISTENED_TTL`]; on reconnecting the cache is
//!   emptied, since notifications may have been missed.
//!
//! Requests already under way are not forgotten: every grant handed out is
//! remembered (weakly) by token id, and a change to the row ends them, so
//! open SSE and long-poll responses and uploads stop too (see
//! [`Grant::ended`]). While notifications cannot be received, the grants
//! still in use are re-checked against their rows every
//! [`RELISTEN_DELAY`], and all of them end if the rows cannot be read.
//!
//! A token whose row cannot be read is refused with 503: never fail open.

use crate::auth::grant::Grant;
use crate::auth::token::{Claims, TokenError, TokenKeys};
use crate::error::GatewayError;
use crate::tokens::store::TokenStore;
use dashmap::DashMap;
use sqlx::postgres::PgListener;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// The Postgres channel migration 0002's trigger notifies.
pub const CHANGES_CHANNEL: &str = "token_changes";

/// How long a cached row counts while notifications are not being received.
pub const UNLISTENED_TTL: Duration = Duration::from_secs(1);

/// Most verified tokens remembered; past this the memo starts over.
const VERIFIED_CAPACITY: usize = 100_000;

/// The longest a token query may take: a database that stops answering
/// without closing the connection (a silent partition) is answered with
/// 503, not waited for.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a lookup is repeated when notifications keep landing while it
/// reads, before it gives up with 503.
const LOOKUP_ATTEMPTS: usize = 3;

/// How many of a token's last bytes find it in the memo.
const TAIL_LEN: usize = 16;

/// Pause between attempts to (re)establish `LISTEN`, which is also how
/// often grants in use are re-checked meanwhile.
pub const RELISTEN_DELAY: Duration = Duration::from_millis(500);

/// How often the listening connection's heartbeat is sent.
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(250);

/// A listening connection whose heartbeat has not come back for this long
/// is taken as lost.
pub const HEARTBEAT_DEADLINE: Duration = Duration::from_millis(900);

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
    /// Every grant handed out and possibly still held by a request, by
    /// token id, so that a change to the row ends them all.
    handed_out: DashMap<Arc<str>, Vec<Weak<Grant>>>,
    /// When the listener last heard its own heartbeat, in milliseconds
    /// since `started`.
    heartbeat_heard: AtomicU64,
    started: Instant,
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
            handed_out: DashMap::new(),
            heartbeat_heard: AtomicU64::new(0),
            started: Instant::now(),
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

    /// Whether revocations are currently being received: the listener is
    /// connected and its heartbeat came back lately.
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::SeqCst)
            && self
                .millis_since_start()
                .saturating_sub(self.heartbeat_heard.load(Ordering::SeqCst))
                < HEARTBEAT_DEADLINE.as_millis() as u64
    }

    fn millis_since_start(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
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
            crate::telemetry::record_cache(true);
            return Ok(entry.grant.clone());
        }
        crate::telemetry::record_cache(false);
        for _ in 0..LOOKUP_ATTEMPTS {
            let generation = self.generation.load(Ordering::SeqCst);
            let row = match tokio::time::timeout(QUERY_TIMEOUT, self.store.find(id)).await {
                Ok(Ok(row)) => row,
                Ok(Err(e)) => {
                    tracing::warn!("token lookup failed: {e}");
                    return Err(GatewayError::AuthUnavailable);
                }
                Err(_) => {
                    tracing::warn!("token lookup timed out after {QUERY_TIMEOUT:?}");
                    return Err(GatewayError::AuthUnavailable);
                }
            };
            let Some(row) = row else {
                return Err(GatewayError::InvalidToken("unknown token"));
            };
            let grant = Arc::new(Grant::from_row(row));
            // From here on a notification for this id ends the grant.
            self.hand_out(&grant);
            if self.generation.load(Ordering::SeqCst) != generation {
                // A notification landed between the read and the line
                // above, perhaps for this row: read it again.
                continue;
            }
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
            return Ok(grant);
        }
        tracing::warn!(token_id = %id, "token row kept changing during lookup");
        Err(GatewayError::AuthUnavailable)
    }

    /// Remembers a grant handed to requests, so [`Authenticator::forget`]
    /// can end it.
    fn hand_out(&self, grant: &Arc<Grant>) {
        self.handed_out
            .entry(grant.token_id.clone())
            .or_default()
            .push(Arc::downgrade(grant));
    }

    /// A row changed: forget it, and end the requests it authorised.
    fn forget(&self, id: &str) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.cache.remove(id);
        if let Some((_, grants)) = self.handed_out.remove(id) {
            for grant in grants.iter().filter_map(Weak::upgrade) {
                grant.end();
            }
            tracing::debug!(token_id = %id, "token changed: its open requests end");
        }
    }

    /// Re-reads the rows of every grant still in use and ends those whose
    /// row no longer matches (revoked, expired, rights changed, gone). If
    /// the rows cannot be read, every such grant ends: nothing stays open
    /// on rights that cannot be confirmed.
    async fn recheck_handed_out(&self) {
        let ids: Vec<String> = self
            .handed_out
            .iter()
            .filter(|entry| entry.value().iter().any(|w| w.strong_count() > 0))
            .map(|entry| entry.key().to_string())
            .collect();
        if ids.is_empty() {
            return;
        }
        let rows = match tokio::time::timeout(QUERY_TIMEOUT, self.store.find_many(&ids)).await {
            Ok(Ok(rows)) => rows,
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {QUERY_TIMEOUT:?}"),
                };
                tracing::warn!(
                    "cannot re-check {} tokens with open requests; ending those requests: {why}",
                    ids.len()
                );
                for id in &ids {
                    self.forget(id);
                }
                return;
            }
        };
        let current: HashMap<String, Grant> = rows
            .into_iter()
            .map(|row| (row.id.clone(), Grant::from_row(row)))
            .collect();
        let now = OffsetDateTime::now_utc();
        for id in &ids {
            let Some(entry) = self.handed_out.get(id.as_str()) else {
                continue;
            };
            let stale = entry.value().iter().filter_map(Weak::upgrade).any(|grant| {
                current.get(id.as_str()).is_none_or(|row| {
                    !row.same_rights(&grant) || row.inactive_reason(now).is_some()
                })
            });
            drop(entry);
            if stale {
                self.forget(id);
            }
        }
    }

    fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.cache.clear();
    }

    /// Receives `token_changes` notifications for as long as the gateway
    /// runs, re-establishing `LISTEN` whenever the connection drops or its
    /// heartbeat stops coming back.
    pub async fn follow_changes(self: Arc<Self>) {
        let heartbeat = heartbeat_channel();
        let mut reported_failure = false;
        loop {
            match self.listen(&heartbeat).await {
                Ok(listener) => {
                    reported_failure = false;
                    self.forget_all();
                    self.heard_heartbeat();
                    self.listening.store(true, Ordering::SeqCst);
                    tracing::info!("following token changes (LISTEN {CHANGES_CHANNEL})");
                    // Changes made while nobody listened end what they concern.
                    self.recheck_handed_out().await;
                    let why = self.clone().supervise(listener, &heartbeat).await;
                    self.listening.store(false, Ordering::SeqCst);
                    tracing::warn!(
                        "lost the token change listener ({why}); cached tokens are re-checked \
                         every second until it is back"
                    );
                }
                Err(e) if !reported_failure => {
                    reported_failure = true;
                    tracing::warn!("cannot listen for token changes, retrying: {e}");
                }
                Err(e) => tracing::debug!("cannot listen for token changes: {e}"),
            }
            self.recheck_handed_out().await;
            tokio::time::sleep(RELISTEN_DELAY).await;
        }
    }

    /// Receives notifications on `listener` and sends the heartbeat, until
    /// the connection fails or the heartbeat stops coming back; returns why.
    ///
    /// Receiving runs in a task of its own, so a connection that hangs is
    /// abandoned without cancelling a half-read message on a connection
    /// still in use.
    async fn supervise(self: Arc<Self>, mut listener: PgListener, heartbeat: &str) -> String {
        let mut receiving = tokio::spawn({
            let this = self.clone();
            let heartbeat = heartbeat.to_owned();
            async move {
                loop {
                    match listener.try_recv().await {
                        Ok(Some(notification)) if notification.channel() == heartbeat => {
                            this.heard_heartbeat();
                        }
                        Ok(Some(notification)) => this.forget(notification.payload()),
                        Ok(None) => return "connection closed".to_owned(),
                        Err(e) => return e.to_string(),
                    }
                }
            }
        });
        let mut beats = tokio::time::interval(HEARTBEAT_INTERVAL);
        beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ended = &mut receiving => {
                    return ended.unwrap_or_else(|e| format!("receiver failed: {e}"));
                }
                _ = beats.tick() => {
                    if !self.is_listening() {
                        receiving.abort();
                        return "heartbeat not heard back".to_owned();
                    }
                    self.send_heartbeat(heartbeat);
                }
            }
        }
    }

    /// Sends the heartbeat through the pool, in the background: a slow
    /// database must not hold up receiving.
    fn send_heartbeat(&self, channel: &str) {
        let store = self.store.clone();
        let channel = channel.to_owned();
        tokio::spawn(async move {
            let beat = store.notify(&channel);
            match tokio::time::timeout(HEARTBEAT_DEADLINE, beat).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!("token listener heartbeat: {e}"),
                Err(_) => tracing::debug!("token listener heartbeat timed out"),
            }
        });
    }

    fn heard_heartbeat(&self) {
        self.heartbeat_heard
            .store(self.millis_since_start(), Ordering::SeqCst);
    }

    async fn listen(&self, heartbeat: &str) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(self.store.pool()).await?;
        listener.listen_all([CHANGES_CHANNEL, heartbeat]).await?;
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
        self.handed_out.retain(|_, grants| {
            grants.retain(|grant| grant.strong_count() > 0);
            !grants.is_empty()
        });
    }
}

/// A channel name of this gateway's own for its listener's heartbeat, so
/// replicas do not hear each other's.
fn heartbeat_channel() -> String {
    let mut random = [0u8; 8];
    // Without randomness the process id and start time still tell replicas
    // apart in practice.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        random[..4].copy_from_slice(&std::process::id().to_le_bytes());
        random[4..].copy_from_slice(&nanos.to_le_bytes());
    }
    format!(
        "token_changes_heartbeat_{:016x}",
        u64::from_le_bytes(random)
    )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::token::generate_ed25519_pem;

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
