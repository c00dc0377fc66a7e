//! How many connections are served at once: a slot per connection, a short
//! wait for one when all are taken, and a log of refusals that says how
//! many without a line per connection.
//!
//! The number of slots also has to fit the process's open-file limit: a
//! connection accepted without a descriptor to spare would fail storage,
//! Postgres or upstream connections instead of being refused itself. So the
//! limit is raised as far as the system allows at startup, and the slots
//! are fewer than configured when even that is too low.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a connection over the limit waits for a slot before it is
/// closed: long enough to ride out a burst of connections closing and
/// opening, short enough that a client sees the refusal and retries.
pub const SLOT_WAIT: Duration = Duration::from_secs(1);

/// Connections that may wait for a slot at once; beyond them, a
/// connection over the limit is closed at once. Each holds a descriptor
/// while it waits, so they are few.
pub const MAX_WAITING: usize = 128;

/// Descriptors kept for everything but connections: the listener, logs,
/// storage files, pools.
const RESERVED_DESCRIPTORS: u64 = 256;

/// At most one refusal message per this long.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The slots of one listener.
pub(super) struct Slots {
    serving: Arc<Semaphore>,
    waiting: Arc<Semaphore>,
    /// Slots in all, for the refusal message.
    capacity: usize,
    refusals: Refusals,
}

/// What to do with a connection just accepted.
pub(super) enum Admission {
    /// Serve it now.
    Serve(OwnedSemaphorePermit),
    /// Every slot is taken: it may wait for one (the permit is its place
    /// among the waiting).
    Wait(OwnedSemaphorePermit),
    /// Every slot and every place to wait is taken.
    Refuse,
}

impl Slots {
    pub(super) fn new(capacity: usize) -> Slots {
        Slots {
            serving: Arc::new(Semaphore::new(capacity)),
            waiting: Arc::new(Semaphore::new(MAX_WAITING)),
            capacity,
            refusals: Refusals::default(),
        }
    }

    /// Never waits: the accept loop calls it.
    pub(super) fn admit(&self) -> Admission {
        if let Ok(permit) = Arc::clone(&self.serving).try_acquire_owned() {
            return Admission::Serve(permit);
        }
        match Arc::clone(&self.waiting).try_acquire_owned() {
            Ok(place) => Admission::Wait(place),
            Err(_) => Admission::Refuse,
        }
    }

    /// A slot within [`SLOT_WAIT`], or `None`.
    pub(super) async fn wait(&self) -> Option<OwnedSemaphorePermit> {
        tokio::time::timeout(SLOT_WAIT, Arc::clone(&self.serving).acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// Counts a refused connection, logging now and then.
    pub(super) fn refused(&self) {
        if let Some(count) = self.refusals.record() {
            tracing::warn!(
                refused = count,
                max_connections = self.capacity,
                "connections refused: all connection slots taken"
            );
        }
    }
}

/// Refusals since the last message.
#[derive(Default)]
struct Refusals {
    state: Mutex<RefusalState>,
}

#[derive(Default)]
struct RefusalState {
    unreported: u64,
    last_report: Option<Instant>,
}

impl Refusals {
    /// Counts one; returns the count to report when a message is due.
    fn record(&self) -> Option<u64> {
        // A poisoned lock only means a panic elsewhere mid-count.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.unreported += 1;
        let now = Instant::now();
        let due = state
            .last_report
            .is_none_or(|last| now.duration_since(last) >= REFUSAL_LOG_INTERVAL);
        if !due {
            return None;
        }
        state.last_report = Some(now);
        Some(std::mem::take(&mut state.unreported))
    }
}

/// Raises the soft open-file limit to the hard limit and returns how many
/// connections fit in it when each takes `per_connection` descriptors:
/// `configured`, or fewer (with a warning) when the limit is too low.
pub(super) fn fit_to_descriptors(configured: usize, per_connection: u64) -> usize {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!("cannot read or raise the open-file limit: {e}");
            return configured;
        }
    };
    let fitting = fitting_connections(limit, per_connection);
    if configured <= fitting {
        return configured;
    }
    tracing::warn!(
        open_file_limit = limit,
        configured,
        serving = fitting,
        "the open-file limit leaves room for fewer connections than \
         server.max_connections; raise the hard limit (ulimit -Hn, LimitNOFILE) to serve more"
    );
    fitting
}

/// Connections of `per_connection` descriptors that fit under `limit`,
/// besides the waiting ones and the reserve; at least one.
fn fitting_connections(limit: u64, per_connection: u64) -> usize {
    let spare = limit.saturating_sub(RESERVED_DESCRIPTORS);
    let connections = (spare / per_connection.max(1)).saturating_sub(MAX_WAITING as u64);
    usize::try_from(connections).unwrap_or(usize::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_reported_once_per_interval_with_their_count() {
        let refusals = Refusals::default();
        assert_eq!(refusals.record(), Some(1), "the first is reported at once");
        for _ in 0..9 {
            assert_eq!(refusals.record(), None);
        }
        refusals.state.lock().expect("lock").last_report =
            Instant::now().checked_sub(REFUSAL_LOG_INTERVAL);
        assert_eq!(refusals.record(), Some(10), "the rest, counted");
    }

    #[test]
    fn connections_fit_the_descriptors_left() {
        assert_eq!(fitting_connections(1_048_576, 1), 1_048_576 - 256 - 128);
        assert_eq!(fitting_connections(20_000, 2), (20_000 - 256) / 2 - 128);
        assert_eq!(fitting_connections(300, 1), 1, "never none");
    }

    #[tokio::test]
    async fn over_the_limit_a_connection_waits_then_is_refused() {
        let slots = Slots::new(1);
        let Admission::Serve(first) = slots.admit() else {
            panic!("a free slot")
        };
        let Admission::Wait(_place) = slots.admit() else {
            panic!("a place to wait")
        };
        tokio::time::pause();
        assert!(slots.wait().await.is_none(), "no slot frees up");
        drop(first);
        assert!(slots.wait().await.is_some(), "the freed slot");
    }

    #[test]
    fn waiting_places_are_bounded() {
        let slots = Slots::new(1);
        let _serving = slots.admit();
        let places: Vec<_> = (0..MAX_WAITING).map(|_| slots.admit()).collect();
        assert!(places.iter().all(|a| matches!(a, Admission::Wait(_))));
        assert!(matches!(slots.admit(), Admission::Refuse));
    }
}
