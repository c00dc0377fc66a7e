//! One subscription's cursors and wake cycle (§6.1, §7, §7.3) as plain
//! data. Every transition takes the time and the streams' tails as
//! arguments, so the protocol's rules are tested here without I/O; the
//! caller does the delivering, persisting and timing.
//!
//! A subscription is idle while it has no wake. Pending work (a linked
//! stream whose tail is past its acknowledged offset) turns an idle
//! subscription into a wake of the next generation; the wake ends with a
//! `done` ack, a release, a failed webhook delivery or its lease running
//! out, and the subscription is idle again.
//!
//! A subscription may link far more streams than have pending work, so
//! the state keeps the few that may: every new link, and every stream an
//! append is reported for ([`State::appended`]). Looking for pending work
//! reads only those and forgets the ones found caught up, so it costs what
//! is pending, not what is linked.

use crate::protocol::offset::Offset;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How a stream came to be linked (§6.1); explicit wins when both hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkType {
    Glob,
    Explicit,
}

impl LinkType {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkType::Glob => "glob",
            LinkType::Explicit => "explicit",
        }
    }
}

/// One linked stream's cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub explicit: bool,
    pub glob: bool,
    /// Last processed offset, inclusive: the worker's next read starts here.
    pub acked: Offset,
}

impl Link {
    pub fn link_type(&self) -> LinkType {
        if self.explicit {
            LinkType::Explicit
        } else {
            LinkType::Glob
        }
    }
}

/// A linked stream as a wake or a response shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStatus {
    pub path: String,
    pub link_type: LinkType,
    pub acked: Offset,
    pub tail: Offset,
    pub has_pending: bool,
}

/// How the subscription's wakes are delivered, as far as the cycle cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The lease starts when the wake is issued (§7.3).
    Webhook,
    /// The lease starts when a worker claims the wake (§7.2).
    PullWake,
}

/// One wake: a generation of the subscription handed to one worker.
#[derive(Clone, PartialEq, Eq)]
pub struct Wake {
    pub id: String,
    pub generation: u64,
    /// The digest of the bearer token of the callback, ack and release
    /// requests; set once the wake has a holder.
    pub token: Option<TokenDigest>,
    /// The claiming worker's name (pull-wake).
    pub holder: Option<String>,
    /// Unix milliseconds at which the lease ends, once the wake is held.
    pub lease_until_ms: Option<u64>,
    /// The linked streams with pending work when the wake was handed out.
    pub snapshot: Vec<StreamStatus>,
}

/// Without the token: a wake may be logged, its token must not be.
impl std::fmt::Debug for Wake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wake")
            .field("id", &self.id)
            .field("generation", &self.generation)
            .field("holder", &self.holder)
            .field("lease_until_ms", &self.lease_until_ms)
            .field("streams", &self.snapshot.len())
            .finish_non_exhaustive()
    }
}

/// A wake as it is handed out: the wake and, once it has a holder, the
/// bearer token its holder answers with. Only the token's digest stays in
/// the state (and in the store), so a copy of the store's file holds no
/// live credentials.
#[derive(Clone)]
pub struct HandedOut {
    pub wake: Wake,
    pub token: Option<String>,
}

/// Without the token.
impl std::fmt::Debug for HandedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandedOut")
            .field("wake", &self.wake)
            .finish_non_exhaustive()
    }
}

/// The SHA-256 of a wake's bearer token.
#[derive(Clone)]
pub struct TokenDigest([u8; 32]);

/// Compared in constant time, like the tokens themselves.
impl PartialEq for TokenDigest {
    fn eq(&self, other: &TokenDigest) -> bool {
        constant_time_eq(&self.0, &other.0)
    }
}

impl Eq for TokenDigest {}

impl TokenDigest {
    pub fn of(token: &str) -> TokenDigest {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut bytes = [0; 32];
        bytes.copy_from_slice(digest.as_ref());
        TokenDigest(bytes)
    }

    /// Whether `token` is the one digested, in time that does not depend
    /// on where they differ.
    pub fn matches(&self, token: &str) -> bool {
        constant_time_eq(&self.0, &TokenDigest::of(token).0)
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads what [`TokenDigest::to_hex`] wrote: 64 lowercase hex digits.
    pub fn from_hex(hex: &str) -> Option<TokenDigest> {
        fn digit(c: u8) -> Option<u8> {
            match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                _ => None,
            }
        }
        if hex.len() != 64 {
            return None;
        }
        let mut bytes = [0; 32];
        for (byte, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
            *byte = digit(pair[0])? << 4 | digit(pair[1])?;
        }
        Some(TokenDigest(bytes))
    }
}

/// Not printed: no log needs a token's digest.
impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenDigest(..)")
    }
}

impl Wake {
    fn is_held(&self) -> bool {
        self.lease_until_ms.is_some()
    }
}

/// Webhook retries after failed deliveries (§7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Failed deliveries in a row.
    pub failures: u32,
    /// Unix milliseconds before which no delivery is attempted.
    pub next_attempt_ms: u64,
}

/// First and longest wait between webhook delivery attempts (§7.1), and
/// the jitter applied to each.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
pub const RETRY_MAX: Duration = Duration::from_secs(60);
pub const RETRY_JITTER: f64 = 0.2;

/// Why a claim was refused (§7.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimError {
    AlreadyClaimed {
        holder: String,
        generation: u64,
    },
    /// No wake is waiting and no linked stream has pending work.
    NothingPending,
}

/// Why a callback, ack or release was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckError {
    /// Token, generation or wake id is not the current wake's (§7.3).
    Fenced,
    /// An ack names a stream the subscription does not link.
    NotLinked(String),
    /// An ack is past what the stream holds.
    PastTail { stream: String, tail: Offset },
}

/// A callback or ack that was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckOutcome {
    /// The wake ended (`done`).
    pub released: bool,
    /// Pending work remains, so another wake follows.
    pub next_wake: bool,
}

/// The mutable part of a subscription.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub links: BTreeMap<String, Link>,
    pub generation: u64,
    pub wake: Option<Wake>,
    pub retry: Option<Retry>,
    /// Linked streams that may have data past their cursor; every other
    /// link is known to be caught up.
    maybe_pending: BTreeSet<String>,
}

impl State {
    /// Links `path` as `link_type`; a new link starts at `at` (its tail
    /// when linked to existing data, the stream's start when linked before
    /// its first append). Linking an already linked stream keeps its cursor.
    pub fn link(&mut self, path: &str, link_type: LinkType, at: Offset) {
        let link = self.links.entry(path.to_owned()).or_insert(Link {
            explicit: false,
            glob: false,
            acked: at,
        });
        match link_type {
            LinkType::Explicit => link.explicit = true,
            LinkType::Glob => link.glob = true,
        }
        self.maybe_pending.insert(path.to_owned());
    }

    /// Puts back a stored link, as it was saved.
    pub fn restore_link(&mut self, path: &str, link: Link) {
        self.links.insert(path.to_owned(), link);
        self.maybe_pending.insert(path.to_owned());
    }

    /// What one save stores: the wake cycle and the links named (those
    /// still held).
    pub fn saved_part(&self, paths: &[String]) -> State {
        State {
            links: paths
                .iter()
                .filter_map(|path| self.links.get(path).map(|l| (path.clone(), l.clone())))
                .collect(),
            generation: self.generation,
            wake: self.wake.clone(),
            retry: self.retry,
            maybe_pending: BTreeSet::new(),
        }
    }

    /// Notes that the linked stream `path` has new data; nothing if it is
    /// not linked.
    pub fn appended(&mut self, path: &str) {
        if self.links.contains_key(path) && !self.maybe_pending.contains(path) {
            self.maybe_pending.insert(path.to_owned());
        }
    }

    /// The stream at `path` was removed: its glob link goes; an explicit
    /// one stays, from the start of whatever stream is created there next.
    /// True if the stream is still linked.
    pub fn stream_removed(&mut self, path: &str) -> bool {
        match self.links.get_mut(path) {
            Some(link) if link.explicit => {
                link.glob = false;
                link.acked = Offset::ZERO;
                true
            }
            _ => {
                self.unlink(path);
                false
            }
        }
    }

    /// Removes the explicit link to `path`; a glob link stays (§6.4).
    pub fn unlink_explicit(&mut self, path: &str) {
        if let Some(link) = self.links.get_mut(path) {
            link.explicit = false;
            if !link.glob {
                self.unlink(path);
            }
        }
    }

    /// Forgets `path` entirely: the stream is gone.
    pub fn unlink(&mut self, path: &str) {
        self.links.remove(path);
        self.maybe_pending.remove(path);
    }

    /// The linked streams with data past their cursor, in path order:
    /// what a wake lists. Streams found caught up (or gone) are forgotten
    /// until an append is reported for them again.
    pub fn pending(&mut self, tail_of: impl Fn(&str) -> Option<Offset>) -> Vec<StreamStatus> {
        let links = &self.links;
        let mut pending = Vec::new();
        self.maybe_pending.retain(|path| {
            let Some(link) = links.get(path) else {
                return false;
            };
            match tail_of(path) {
                Some(tail) if tail > link.acked => {
                    pending.push(StreamStatus {
                        path: path.clone(),
                        link_type: link.link_type(),
                        acked: link.acked,
                        tail,
                        has_pending: true,
                    });
                    true
                }
                _ => false,
            }
        });
        pending
    }

    /// The first linked stream with pending work, if any.
    pub fn first_pending(&mut self, tail_of: impl Fn(&str) -> Option<Offset>) -> Option<String> {
        self.pending(tail_of)
            .into_iter()
            .next()
            .map(|status| status.path)
    }

    pub fn has_pending(&mut self, tail_of: impl Fn(&str) -> Option<Offset>) -> bool {
        !self.pending(tail_of).is_empty()
    }

    /// Whether a webhook delivery failed and its retry is scheduled
    /// (`status: failed`, §6.3).
    pub fn is_failing(&self) -> bool {
        self.retry.is_some()
    }

    /// Ends a held wake whose lease has run out (§7.3); true if it did.
    pub fn expire_lease(&mut self, now_ms: u64) -> bool {
        let expired = self
            .wake
            .as_ref()
            .and_then(|w| w.lease_until_ms)
            .is_some_and(|until| until <= now_ms);
        if expired {
            self.wake = None;
        }
        expired
    }

    /// When the next timed transition is due: a lease's end or a retry.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        let lease = self.wake.as_ref().and_then(|w| w.lease_until_ms);
        let retry = self.retry.map(|r| r.next_attempt_ms);
        match (lease, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Starts the next generation's wake if the subscription is idle, has
    /// pending work and is not waiting out a retry. A webhook wake is held
    /// from the start (its lease runs, its callback token is set); a
    /// pull-wake wake waits for a worker's claim.
    pub fn begin_wake(
        &mut self,
        mode: Mode,
        lease: Duration,
        now_ms: u64,
        tail_of: impl Fn(&str) -> Option<Offset>,
        new_id: &mut impl FnMut() -> String,
    ) -> Option<HandedOut> {
        if self.wake.is_some() || self.retry.is_some_and(|r| r.next_attempt_ms > now_ms) {
            return None;
        }
        let pending = self.pending(&tail_of);
        if pending.is_empty() {
            return None;
        }
        self.generation += 1;
        let token = match mode {
            Mode::Webhook => Some(new_id()),
            Mode::PullWake => None,
        };
        let wake = match mode {
            Mode::Webhook => Wake {
                id: new_id(),
                generation: self.generation,
                token: token.as_deref().map(TokenDigest::of),
                holder: None,
                lease_until_ms: Some(now_ms.saturating_add(millis(lease))),
                snapshot: pending,
            },
            Mode::PullWake => Wake {
                id: new_id(),
                generation: self.generation,
                token: None,
                holder: None,
                lease_until_ms: None,
                snapshot: Vec::new(),
            },
        };
        self.wake = Some(wake.clone());
        Some(HandedOut { wake, token })
    }

    /// A worker claims the subscription (§7.2): the waiting wake, or a new
    /// one when work is pending but no wake was written yet.
    pub fn claim(
        &mut self,
        worker: &str,
        lease: Duration,
        now_ms: u64,
        tail_of: impl Fn(&str) -> Option<Offset>,
        new_id: &mut impl FnMut() -> String,
    ) -> Result<HandedOut, ClaimError> {
        self.expire_lease(now_ms);
        if let Some(wake) = &self.wake
            && wake.is_held()
        {
            return Err(ClaimError::AlreadyClaimed {
                holder: wake.holder.clone().unwrap_or_default(),
                generation: wake.generation,
            });
        }
        if self.wake.is_none() {
            self.begin_wake(Mode::PullWake, lease, now_ms, &tail_of, new_id)
                .ok_or(ClaimError::NothingPending)?;
        }
        let snapshot = self.pending(&tail_of);
        let token = new_id();
        let wake = self.wake.as_mut().ok_or(ClaimError::NothingPending)?;
        wake.holder = Some(worker.to_owned());
        wake.token = Some(TokenDigest::of(&token));
        wake.lease_until_ms = Some(now_ms.saturating_add(millis(lease)));
        wake.snapshot = snapshot;
        Ok(HandedOut {
            wake: wake.clone(),
            token: Some(token),
        })
    }

    /// Checks that a callback, ack or release belongs to the current,
    /// held, unexpired wake (§7.3).
    pub fn check(
        &mut self,
        token: &str,
        generation: u64,
        wake_id: &str,
        now_ms: u64,
    ) -> Result<(), AckError> {
        self.expire_lease(now_ms);
        match &self.wake {
            Some(wake)
                if wake.generation == generation
                    && wake.id == wake_id
                    && wake.token.as_ref().is_some_and(|t| t.matches(token)) =>
            {
                Ok(())
            }
            _ => Err(AckError::Fenced),
        }
    }

    /// Applies a checked callback or ack (§7.1, §7.2): cursors only move
    /// forward; without `done` the lease is extended (the ack is a
    /// heartbeat), with it the wake ends.
    pub fn ack(
        &mut self,
        acks: &[(String, Offset)],
        done: bool,
        lease: Duration,
        now_ms: u64,
        tail_of: impl Fn(&str) -> Option<Offset>,
    ) -> Result<AckOutcome, AckError> {
        // All or nothing: check every ack before moving any cursor.
        for (path, offset) in acks {
            if !self.links.contains_key(path) {
                return Err(AckError::NotLinked(path.clone()));
            }
            let tail = tail_of(path).unwrap_or(Offset::ZERO);
            if *offset > tail {
                return Err(AckError::PastTail {
                    stream: path.clone(),
                    tail,
                });
            }
        }
        for (path, offset) in acks {
            if let Some(link) = self.links.get_mut(path) {
                link.acked = link.acked.max(*offset);
            }
        }
        if done {
            self.wake = None;
        } else if let Some(wake) = &mut self.wake {
            wake.lease_until_ms = Some(now_ms.saturating_add(millis(lease)));
        }
        Ok(AckOutcome {
            released: done,
            next_wake: done && self.has_pending(&tail_of),
        })
    }

    /// Ends the current wake without acking (§7.2 release).
    pub fn release(&mut self) {
        self.wake = None;
    }

    /// The webhook answered wake `wake_id` with a 2xx: the delivery
    /// worked; with `{"done": true}` its snapshot is acked and the wake
    /// ends (§7.1). Nothing changes if that wake already ended (a callback
    /// can arrive before the webhook's own answer).
    pub fn webhook_delivered(&mut self, wake_id: &str, done: bool) {
        if self.wake.as_ref().is_none_or(|w| w.id != wake_id) {
            return;
        }
        self.retry = None;
        let Some(wake) = self.wake.take_if(|_| done) else {
            return;
        };
        for status in wake.snapshot {
            if let Some(link) = self.links.get_mut(&status.path) {
                link.acked = link.acked.max(status.tail);
            }
        }
    }

    /// The webhook delivery of wake `wake_id` failed: the wake ends and the
    /// next attempt waits, doubling from one second to a minute, each wait
    /// moved by up to ±20 % (`jitter` in `[-1, 1]`) so that many
    /// subscriptions failing together do not retry together.
    /// A failure reported for a wake that already ended (its callback came
    /// first) changes nothing.
    pub fn webhook_failed(&mut self, wake_id: &str, now_ms: u64, jitter: f64) {
        if self.wake.as_ref().is_none_or(|w| w.id != wake_id) {
            return;
        }
        self.wake = None;
        let failures = self.retry.map_or(0, |r| r.failures).saturating_add(1);
        let doubled = RETRY_FIRST.saturating_mul(1 << (failures - 1).min(16));
        let wait =
            doubled.min(RETRY_MAX).as_secs_f64() * (1.0 + RETRY_JITTER * jitter.clamp(-1.0, 1.0));
        // Whole milliseconds of a wait bounded by a minute and a bit.
        let wait_ms = (wait * 1000.0).round() as u64;
        self.retry = Some(Retry {
            failures,
            next_attempt_ms: now_ms.saturating_add(wait_ms),
        });
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Compares two secrets in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const LEASE: Duration = Duration::from_secs(30);

    fn off(n: u64) -> Offset {
        Offset::new(n, n * 10)
    }

    /// A handed-out wake and its bearer token.
    fn parts(handed: HandedOut) -> (Wake, Option<String>) {
        (handed.wake, handed.token)
    }

    /// Ids `id1`, `id2`, ... in order.
    fn ids() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("id{n}")
        }
    }

    struct Tails(HashMap<&'static str, Offset>);

    impl Tails {
        fn of(&self) -> impl Fn(&str) -> Option<Offset> + '_ {
            |path| self.0.get(path).copied()
        }

        /// Moves `path`'s tail and reports the append, as the registry does.
        fn append(&mut self, state: &mut State, path: &'static str, tail: Offset) {
            self.0.insert(path, tail);
            state.appended(path);
        }
    }

    fn linked(paths: &[(&'static str, u64)]) -> (State, Tails) {
        let mut state = State::default();
        let mut tails = HashMap::new();
        for (path, tail) in paths {
            state.link(path, LinkType::Glob, off(*tail));
            tails.insert(*path, off(*tail));
        }
        (state, Tails(tails))
    }

    #[test]
    fn explicit_wins_and_removing_it_keeps_the_glob_link() {
        let mut state = State::default();
        state.link("a", LinkType::Glob, off(1));
        state.link("a", LinkType::Explicit, off(5));
        assert_eq!(state.links["a"].link_type(), LinkType::Explicit);
        assert_eq!(state.links["a"].acked, off(1), "relinking keeps the cursor");
        state.unlink_explicit("a");
        assert_eq!(state.links["a"].link_type(), LinkType::Glob);
        state.link("b", LinkType::Explicit, off(0));
        state.unlink_explicit("b");
        assert!(!state.links.contains_key("b"));
        state.unlink_explicit("absent");
    }

    #[test]
    fn no_wake_without_pending_work() {
        let (mut state, tails) = linked(&[("a", 3)]);
        assert!(!state.has_pending(tails.of()));
        assert!(
            state
                .begin_wake(Mode::Webhook, LEASE, 0, tails.of(), &mut ids())
                .is_none()
        );
        assert_eq!(state.generation, 0);
    }

    #[test]
    fn webhook_wake_is_held_from_the_start_and_done_acks_its_snapshot() {
        let (mut state, mut tails) = linked(&[("a", 3), ("b", 7)]);
        tails.append(&mut state, "a", off(4));
        let mut ids = ids();
        let (wake, wake_token) = parts(
            state
                .begin_wake(Mode::Webhook, LEASE, 1000, tails.of(), &mut ids)
                .unwrap(),
        );
        assert_eq!(wake.generation, 1);
        assert_eq!(wake.lease_until_ms, Some(31_000));
        // The state keeps the token's digest; the token goes out once.
        let token = wake_token.unwrap();
        assert!(wake.token.as_ref().is_some_and(|d| d.matches(&token)));
        assert_eq!(state.wake.as_ref().unwrap().token, wake.token);
        let a = wake.snapshot.iter().find(|s| s.path == "a").unwrap();
        assert!(a.has_pending && a.tail == off(4) && a.acked == off(3));
        // Busy: no second wake while one is out.
        tails.append(&mut state, "b", off(8));
        assert!(
            state
                .begin_wake(Mode::Webhook, LEASE, 1000, tails.of(), &mut ids)
                .is_none()
        );
        // Done acks the snapshot only; b's later append is still pending.
        state.webhook_delivered(&wake.id, true);
        assert!(state.wake.is_none());
        assert_eq!(state.links["a"].acked, off(4));
        assert_eq!(state.links["b"].acked, off(7));
        let (next, _) = parts(
            state
                .begin_wake(Mode::Webhook, LEASE, 2000, tails.of(), &mut ids)
                .unwrap(),
        );
        assert_eq!(next.generation, 2);
        assert_ne!(next.id, wake.id);
    }

    #[test]
    fn a_late_webhook_answer_does_not_touch_a_newer_wake() {
        let (mut state, mut tails) = linked(&[("a", 1)]);
        tails.append(&mut state, "a", off(2));
        let mut ids = ids();
        let (first, first_token) = parts(
            state
                .begin_wake(Mode::Webhook, LEASE, 0, tails.of(), &mut ids)
                .unwrap(),
        );
        let token = first_token.clone().unwrap();
        state.check(&token, 1, &first.id, 1).unwrap();
        state
            .ack(&[("a".into(), off(2))], true, LEASE, 1, tails.of())
            .unwrap();
        tails.append(&mut state, "a", off(3));
        let (second, _) = parts(
            state
                .begin_wake(Mode::Webhook, LEASE, 2, tails.of(), &mut ids)
                .unwrap(),
        );
        state.webhook_delivered(&first.id, true);
        assert_eq!(state.wake.as_ref().map(|w| &w.id), Some(&second.id));
        assert_eq!(state.links["a"].acked, off(2));
    }

    #[test]
    fn callbacks_are_fenced_by_token_generation_and_wake_id() {
        let (mut state, mut tails) = linked(&[("a", 1)]);
        tails.append(&mut state, "a", off(2));
        let (wake, wake_token) = parts(
            state
                .begin_wake(Mode::Webhook, LEASE, 0, tails.of(), &mut ids())
                .unwrap(),
        );
        let token = wake_token.clone().unwrap();
        assert_eq!(state.check("other", 1, &wake.id, 0), Err(AckError::Fenced));
        assert_eq!(state.check(&token, 2, &wake.id, 0), Err(AckError::Fenced));
        assert_eq!(state.check(&token, 1, "w_other", 0), Err(AckError::Fenced));
        assert_eq!(state.check(&token, 1, &wake.id, 0), Ok(()));
        let outcome = state
            .ack(&[("a".into(), off(2))], true, LEASE, 0, tails.of())
            .unwrap();
        assert_eq!(
            outcome,
            AckOutcome {
                released: true,
                next_wake: false
            }
        );
        // The same callback again is stale.
        assert_eq!(state.check(&token, 1, &wake.id, 0), Err(AckError::Fenced));
    }

    #[test]
    fn acks_are_checked_whole_and_never_move_back() {
        let (mut state, mut tails) = linked(&[("a", 1), ("b", 1)]);
        tails.append(&mut state, "a", off(5));
        state.begin_wake(Mode::Webhook, LEASE, 0, tails.of(), &mut ids());
        let bad = state.ack(
            &[("a".into(), off(3)), ("c".into(), off(1))],
            false,
            LEASE,
            0,
            tails.of(),
        );
        assert_eq!(bad, Err(AckError::NotLinked("c".into())));
        assert_eq!(state.links["a"].acked, off(1), "nothing applied");
        let past = state.ack(&[("a".into(), off(6))], false, LEASE, 0, tails.of());
        assert!(matches!(past, Err(AckError::PastTail { .. })));
        state
            .ack(&[("a".into(), off(3))], false, LEASE, 0, tails.of())
            .unwrap();
        state
            .ack(&[("a".into(), off(2))], false, LEASE, 0, tails.of())
            .unwrap();
        assert_eq!(state.links["a"].acked, off(3));
    }

    #[test]
    fn an_ack_without_done_is_a_heartbeat() {
        let (mut state, mut tails) = linked(&[("a", 1)]);
        tails.append(&mut state, "a", off(2));
        state.begin_wake(Mode::Webhook, LEASE, 0, tails.of(), &mut ids());
        let outcome = state.ack(&[], false, LEASE, 20_000, tails.of()).unwrap();
        assert!(!outcome.released);
        assert_eq!(state.wake.as_ref().unwrap().lease_until_ms, Some(50_000));
        assert!(!state.expire_lease(49_999));
        assert!(state.expire_lease(50_000));
        assert!(state.wake.is_none());
    }

    #[test]
    fn done_with_work_left_says_a_wake_follows() {
        let (mut state, mut tails) = linked(&[("a", 1), ("b", 1)]);
        tails.append(&mut state, "a", off(2));
        tails.append(&mut state, "b", off(2));
        state.begin_wake(Mode::Webhook, LEASE, 0, tails.of(), &mut ids());
        let outcome = state
            .ack(&[("a".into(), off(2))], true, LEASE, 0, tails.of())
            .unwrap();
        assert_eq!(
            outcome,
            AckOutcome {
                released: true,
                next_wake: true
            }
        );
    }

    #[test]
    fn pull_wake_claims_race_and_leases_expire() {
        let (mut state, mut tails) = linked(&[("a", 1)]);
        tails.append(&mut state, "a", off(2));
        let mut ids = ids();
        let (waiting, waiting_token) = parts(
            state
                .begin_wake(Mode::PullWake, LEASE, 0, tails.of(), &mut ids)
                .unwrap(),
        );
        assert!(waiting.token.is_none() && waiting.lease_until_ms.is_none());
        assert!(waiting_token.is_none(), "no token before a claim");
        assert!(
            !state.expire_lease(u64::MAX),
            "an unclaimed wake has no lease"
        );
        let (claimed, claimed_token) = parts(
            state
                .claim("worker-1", LEASE, 100, tails.of(), &mut ids)
                .unwrap(),
        );
        assert_eq!(claimed.id, waiting.id);
        assert_eq!(claimed.generation, 1);
        assert_eq!(claimed.holder.as_deref(), Some("worker-1"));
        assert_eq!(claimed.snapshot[0].tail, off(2));
        assert_eq!(
            state
                .claim("worker-2", LEASE, 200, tails.of(), &mut ids)
                .err(),
            Some(ClaimError::AlreadyClaimed {
                holder: "worker-1".into(),
                generation: 1
            })
        );
        // The lease runs out: worker-1 is fenced, worker-2 gets a new generation.
        let token = claimed_token.clone().unwrap();
        let later = 100 + 30_000;
        assert_eq!(
            state.check(&token, 1, &claimed.id, later),
            Err(AckError::Fenced)
        );
        let (next, _) = parts(
            state
                .claim("worker-2", LEASE, later, tails.of(), &mut ids)
                .unwrap(),
        );
        assert_eq!(next.generation, 2);
    }

    #[test]
    fn a_claim_with_nothing_pending_is_refused_and_one_with_work_starts_a_wake() {
        let (mut state, mut tails) = linked(&[("a", 1)]);
        assert_eq!(
            state.claim("w", LEASE, 0, tails.of(), &mut ids()).err(),
            Some(ClaimError::NothingPending)
        );
        tails.append(&mut state, "a", off(3));
        let handed = state.claim("w", LEASE, 0, tails.of(), &mut ids()).unwrap();
        assert!(handed.token.is_some());
        let wake = handed.wake;
        assert_eq!(wake.generation, 1);
        assert!(wake.snapshot[0].has_pending);
    }

    #[test]
    fn release_ends_the_wake_and_pending_work_wakes_again() {
        let (mut state, mut tails) = linked(&[("a", 1)]);
        tails.append(&mut state, "a", off(2));
        let mut ids = ids();
        state.claim("w", LEASE, 0, tails.of(), &mut ids).unwrap();
        state.release();
        let (again, _) = parts(
            state
                .begin_wake(Mode::PullWake, LEASE, 0, tails.of(), &mut ids)
                .unwrap(),
        );
        assert_eq!(again.generation, 2);
    }

    #[test]
    fn failed_deliveries_back_off_from_one_second_to_a_minute() {
        let (mut state, mut tails) = linked(&[("a", 1)]);
        tails.append(&mut state, "a", off(2));
        let mut ids = ids();
        let mut now = 0;
        let mut waits = Vec::new();
        for _ in 0..9 {
            let (wake, _) = parts(
                state
                    .begin_wake(Mode::Webhook, LEASE, now, tails.of(), &mut ids)
                    .unwrap(),
            );
            state.webhook_failed(&wake.id, now, 0.0);
            assert!(state.is_failing() && state.wake.is_none());
            let next = state.retry.unwrap().next_attempt_ms;
            assert!(
                state
                    .begin_wake(Mode::Webhook, LEASE, next - 1, tails.of(), &mut ids)
                    .is_none(),
                "no attempt before the retry time"
            );
            waits.push(next - now);
            now = next;
        }
        assert_eq!(
            waits,
            [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000]
        );
        // Jitter stays within ±20 %.
        for (jitter, wait) in [(1.0, 1200), (-7.0, 800)] {
            let (mut jittered, _) = linked(&[("a", 1)]);
            let tails = Tails(HashMap::from([("a", off(2))]));
            let wake = jittered
                .begin_wake(Mode::Webhook, LEASE, 0, tails.of(), &mut ids)
                .unwrap()
                .wake;
            jittered.webhook_failed(&wake.id, 0, jitter);
            assert_eq!(jittered.retry.unwrap().next_attempt_ms, wait);
        }
        // A delivery that works clears the failure.
        let (wake, _) = parts(
            state
                .begin_wake(Mode::Webhook, LEASE, now, tails.of(), &mut ids)
                .unwrap(),
        );
        state.webhook_delivered(&wake.id, false);
        assert!(!state.is_failing());
        assert!(
            state.wake.is_some(),
            "not done: the wake waits for its callback"
        );
    }

    #[test]
    fn answers_for_an_ended_wake_change_nothing() {
        let (mut state, mut tails) = linked(&[("a", 1)]);
        tails.append(&mut state, "a", off(2));
        let mut ids = ids();
        let (wake, _) = parts(
            state
                .begin_wake(Mode::Webhook, LEASE, 0, tails.of(), &mut ids)
                .unwrap(),
        );
        // The receiver called back with done, then its POST failed.
        state
            .ack(&[("a".into(), off(2))], true, LEASE, 0, tails.of())
            .unwrap();
        state.webhook_failed(&wake.id, 0, 0.0);
        assert!(!state.is_failing(), "no backoff for a wake that was done");
        // A late success does not clear the failure of a newer wake.
        tails.append(&mut state, "a", off(3));
        let (newer, newer_token) = parts(
            state
                .begin_wake(Mode::Webhook, LEASE, 0, tails.of(), &mut ids)
                .unwrap(),
        );
        state.webhook_failed(&newer.id, 0, 0.0);
        state.webhook_delivered(&wake.id, true);
        assert!(state.is_failing());
        assert!(!format!("{newer:?}").contains(newer_token.as_deref().unwrap()));
    }

    #[test]
    fn the_next_deadline_is_the_earlier_of_lease_and_retry() {
        let mut state = State::default();
        assert_eq!(state.next_deadline_ms(), None);
        state.retry = Some(Retry {
            failures: 1,
            next_attempt_ms: 500,
        });
        assert_eq!(state.next_deadline_ms(), Some(500));
        state.wake = Some(Wake {
            id: "w".into(),
            generation: 1,
            token: None,
            holder: None,
            lease_until_ms: Some(300),
            snapshot: Vec::new(),
        });
        assert_eq!(state.next_deadline_ms(), Some(300));
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn caught_up_links_are_looked_at_again_only_after_an_append() {
        let (mut state, mut tails) = linked(&[("a", 3), ("b", 3), ("c", 3)]);
        assert!(state.pending(tails.of()).is_empty());
        // An append that was not reported is not seen: the registry reports
        // every append to a linked stream, so the look is never repeated.
        tails.0.insert("a", off(4));
        assert!(state.pending(tails.of()).is_empty());
        tails.append(&mut state, "b", off(5));
        let pending = state.pending(tails.of());
        assert_eq!(pending.len(), 1);
        assert_eq!((pending[0].path.as_str(), pending[0].tail), ("b", off(5)));
        // Still pending until acked up to its tail, then forgotten.
        assert_eq!(state.first_pending(tails.of()).as_deref(), Some("b"));
        state.links.get_mut("b").unwrap().acked = off(5);
        assert!(!state.has_pending(tails.of()));
        assert!(state.maybe_pending.is_empty());
    }

    #[test]
    fn appends_to_unlinked_streams_are_ignored_and_unlinking_forgets() {
        let (mut state, tails) = linked(&[("a", 3)]);
        state.appended("elsewhere");
        assert!(!state.maybe_pending.contains("elsewhere"));
        state.appended("a");
        state.unlink("a");
        assert!(state.maybe_pending.is_empty());
        assert!(state.pending(tails.of()).is_empty());
        // A stored link is looked at after a restart.
        state.restore_link(
            "a",
            Link {
                explicit: true,
                glob: false,
                acked: off(1),
            },
        );
        assert_eq!(state.first_pending(tails.of()).as_deref(), Some("a"));
    }

    #[test]
    fn a_removed_stream_keeps_only_its_explicit_link_from_the_start() {
        let mut state = State::default();
        state.link("glob", LinkType::Glob, off(4));
        state.link("both", LinkType::Glob, off(4));
        state.link("both", LinkType::Explicit, off(4));
        assert!(!state.stream_removed("glob"));
        assert!(state.stream_removed("both"));
        assert!(!state.links.contains_key("glob"));
        assert_eq!(state.links["both"].link_type(), LinkType::Explicit);
        assert_eq!(state.links["both"].acked, Offset::ZERO);
        // The next stream at the path: its first append is pending work.
        let mut tails = Tails(HashMap::new());
        tails.append(&mut state, "both", off(1));
        assert_eq!(state.first_pending(tails.of()).as_deref(), Some("both"));
    }

    #[test]
    fn token_digests_read_back_only_as_written() {
        let digest = TokenDigest::of("a-token");
        let hex = digest.to_hex();
        assert_eq!(TokenDigest::from_hex(&hex), Some(digest.clone()));
        assert!(TokenDigest::from_hex(&hex.to_uppercase()).is_none());
        assert!(TokenDigest::from_hex(&hex[..62]).is_none());
        assert!(TokenDigest::from_hex(&format!("+{}", &hex[1..])).is_none());
        assert!(TokenDigest::from_hex(&format!("{}é", &hex[..62])).is_none());
        assert_ne!(TokenDigest::of("a-tokem"), digest);
        assert!(!format!("{digest:?}").contains(&hex[..8]));
    }
}
