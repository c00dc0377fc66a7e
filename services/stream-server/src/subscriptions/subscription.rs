//! One live subscription: its fixed record, its [`State`] behind a short
//! lock, the flag appends read to know whether a wake is out, and the
//! notification that wakes its driver.
//!
//! Transitions happen under the state lock and are then persisted in the
//! order they were made: each save takes its snapshot of the state while
//! holding the save lock, so a later transition's save never lands before
//! an earlier one's.

use super::SubscriptionError;
use super::spec::{Delivery, Spec};
use super::state::{Mode, State};
use super::store::{Changes, Record, SubscriptionStore};
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
pub struct Subscription {
    pub record: Record,
    state: Mutex<State>,
    /// Linked streams with new data since the state last looked (appends
    /// do not wait on the state lock); folded into the state before each
    /// transition.
    appended: Mutex<HashSet<String>>,
    /// Links made or changed outside a request (new streams matching the
    /// pattern, removed streams) that the driver has yet to persist.
    unsaved_links: Mutex<BTreeSet<String>>,
    /// Whether a wake is out; read by every append to a linked stream.
    busy: AtomicBool,
    /// Wakes the driver: new data, a wake ended, links to save.
    pub(super) notify: Notify,
    save_order: tokio::sync::Mutex<()>,
    /// Cancelled when the subscription is deleted or the server stops.
    pub(super) ended: CancellationToken,
}

impl Subscription {
    pub fn new(record: Record, state: State, ended: CancellationToken) -> Subscription {
        let busy = state.wake.is_some();
        Subscription {
            record,
            state: Mutex::new(state),
            appended: Mutex::new(HashSet::new()),
            unsaved_links: Mutex::new(BTreeSet::new()),
            busy: AtomicBool::new(busy),
            notify: Notify::new(),
            save_order: tokio::sync::Mutex::new(()),
            ended,
        }
    }

    pub fn id(&self) -> &str {
        &self.record.id
    }

    pub fn spec(&self) -> &Spec {
        &self.record.spec
    }

    pub fn mode(&self) -> Mode {
        match self.spec().delivery {
            Delivery::Webhook { .. } => Mode::Webhook,
            Delivery::PullWake { .. } => Mode::PullWake,
        }
    }

    pub fn is_deleted(&self) -> bool {
        self.ended.is_cancelled()
    }

    /// Runs `transition` on the state under its lock, with the appends
    /// reported so far, then updates the busy flag from it.
    pub fn with_state<T>(&self, transition: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self.state.lock();
        let appended = std::mem::take(&mut *self.appended.lock());
        for path in &appended {
            state.appended(path);
        }
        let result = transition(&mut state);
        let busy = state.wake.is_some();
        self.busy.store(busy, Ordering::SeqCst);
        // Pairs with the fence in `poke`: an append reported while this
        // transition ran either sees the flag cleared and wakes the driver,
        // or is seen here and wakes it from here.
        fence(Ordering::SeqCst);
        if !busy && !self.appended.lock().is_empty() {
            self.notify.notify_one();
        }
        result
    }

    /// Called after new data of the linked stream `path` became visible:
    /// notes the stream and wakes the driver unless a wake is out (its end
    /// looks for pending work again).
    pub fn poke(&self, path: &str) {
        {
            let mut appended = self.appended.lock();
            if !appended.contains(path) {
                appended.insert(path.to_owned());
            }
        }
        fence(Ordering::SeqCst);
        if !self.busy.load(Ordering::SeqCst) {
            self.notify.notify_one();
        }
    }

    /// Notes links the driver must persist, and wakes it.
    pub fn links_changed(&self, paths: impl IntoIterator<Item = String>) {
        self.unsaved_links.lock().extend(paths);
        self.notify.notify_one();
    }

    pub(super) fn take_unsaved_links(&self) -> BTreeSet<String> {
        std::mem::take(&mut *self.unsaved_links.lock())
    }

    /// Persists the state's wake cycle and the named links as they are now
    /// (a link no longer held is removed). Refused once deleted, so that a
    /// request racing a `DELETE` stores nothing.
    pub async fn persist(
        &self,
        store: &Arc<SubscriptionStore>,
        cycle: bool,
        links: Vec<String>,
    ) -> Result<(), SubscriptionError> {
        if !cycle && links.is_empty() {
            return Ok(());
        }
        let _order = self.save_order.lock().await;
        if self.is_deleted() {
            return Err(SubscriptionError::NotFound);
        }
        // Only what is saved: the cycle and the named links, not every link.
        let snapshot = self.state.lock().saved_part(&links);
        let store = Arc::clone(store);
        let id = self.id().to_owned();
        tokio::task::spawn_blocking(move || {
            let changes = Changes {
                cycle,
                links: links.iter().map(String::as_str).collect(),
            };
            store.save(&id, &snapshot, &changes)
        })
        .await
        .map_err(|_| SubscriptionError::Unavailable)??;
        Ok(())
    }

    /// Removes the subscription's rows, after any save in progress (so
    /// none lands after the removal).
    pub async fn remove_from(
        &self,
        store: &Arc<SubscriptionStore>,
    ) -> Result<(), SubscriptionError> {
        let _order = self.save_order.lock().await;
        let store = Arc::clone(store);
        let id = self.id().to_owned();
        tokio::task::spawn_blocking(move || store.remove(&id))
            .await
            .map_err(|_| SubscriptionError::Unavailable)??;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::offset::Offset;
    use crate::subscriptions::state::{LinkType, Wake};
    use futures_util::FutureExt as _;
    use service_common::stream_path::PathLimits;

    fn pull_wake() -> Subscription {
        let spec = Spec::parse(
            br#"{"type":"pull-wake","pattern":"jobs/*","wake_stream":"wakes"}"#,
            PathLimits::default(),
        )
        .unwrap();
        let mut state = State::default();
        state.link("jobs/a", LinkType::Glob, Offset::ZERO);
        state.wake = Some(Wake {
            id: "w_1".into(),
            generation: 1,
            token: None,
            holder: None,
            lease_until_ms: None,
            snapshot: Vec::new(),
        });
        Subscription::new(
            Record::new("s".into(), spec, 0),
            state,
            CancellationToken::new(),
        )
    }

    #[test]
    fn an_append_reported_while_a_wake_ends_wakes_the_driver() {
        let sub = pull_wake();
        // The append lands while the transition that ends the wake runs
        // (here a lease running out inside the driver's own step, after
        // which no caller notifies): it saw a wake out and did not notify,
        // so the transition's end must.
        sub.with_state(|state| {
            sub.poke("jobs/a");
            state.wake = None;
        });
        assert!(sub.notify.notified().now_or_never().is_some());
    }

    #[test]
    fn an_append_while_a_wake_is_out_waits_for_the_wake() {
        let sub = pull_wake();
        sub.poke("jobs/a");
        assert!(sub.notify.notified().now_or_never().is_none());
    }

    #[test]
    fn an_idle_subscription_is_woken_by_the_append_itself() {
        let sub = pull_wake();
        sub.with_state(|state| state.wake = None);
        assert!(sub.notify.notified().now_or_never().is_none());
        sub.poke("jobs/a");
        assert!(sub.notify.notified().now_or_never().is_some());
        // Folded into the state by the next transition: nothing left over.
        sub.with_state(|_| ());
        assert!(sub.notify.notified().now_or_never().is_none());
    }
}
