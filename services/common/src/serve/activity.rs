//! Whether a connection is in use: which requests it has started and has
//! open, so that a connection that never sends a request, or an HTTP/2
//! connection that has stopped sending them, can be closed.
//!
//! HTTP/1.1 connections are only watched until their first request: from
//! then on hyper's header-read timer closes them when idle or slow. HTTP/2
//! has no such timer, so its requests are counted while open (until their
//! response body is dropped) and the connection task waits for the count
//! to rest at zero.

use futures_util::task::AtomicWaker;
use http::Version;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;
use tokio::time::Instant;

/// One request started, in [`Activity::state`].
const STARTED: u64 = 1 << 32;
/// The open requests' part of [`Activity::state`].
const OPEN_MASK: u64 = STARTED - 1;

/// Shared by a connection's task and its service.
#[derive(Default)]
pub(super) struct Activity {
    /// HTTP/2 requests: started (high half, wrapping) and open (low half),
    /// one word so a request costs one atomic update each way and "nothing
    /// happened since" is one comparison.
    state: AtomicU64,
    /// Set by the first HTTP/1 request.
    http1: AtomicBool,
    /// The connection task, woken when the last open request ends.
    waker: AtomicWaker,
}

/// Why a connection's quiet ended its watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Quiet {
    /// No request arrived in time: closing loses nothing.
    Unused,
    /// It speaks HTTP/1, which hyper bounds from now on.
    Http1,
    /// HTTP/2 with no request open or started for the period.
    Idle,
}

/// An open HTTP/2 request; dropping it closes it.
pub(super) struct Open(Arc<Activity>);

impl Drop for Open {
    fn drop(&mut self) {
        if self.0.state.fetch_sub(1, Ordering::AcqRel) & OPEN_MASK == 1 {
            self.0.waker.wake();
        }
    }
}

impl Activity {
    /// Notes a request; an HTTP/2 one stays open while the guard lives.
    pub(super) fn start(self: &Arc<Self>, version: Version) -> Option<Open> {
        if version == Version::HTTP_2 {
            self.state.fetch_add(STARTED + 1, Ordering::AcqRel);
            Some(Open(Arc::clone(self)))
        } else {
            if !self.http1.load(Ordering::Relaxed) {
                self.http1.store(true, Ordering::Relaxed);
            }
            None
        }
    }

    /// Resolves at `deadline` if no request came by then, or if HTTP/1
    /// ones did; for HTTP/2, once no request has been open or started for
    /// `period` after it.
    pub(super) async fn quiet(&self, deadline: Instant, period: Duration) -> Quiet {
        tokio::time::sleep_until(deadline).await;
        if self.http1.load(Ordering::Relaxed) {
            return Quiet::Http1;
        }
        if self.state.load(Ordering::Acquire) == 0 {
            return Quiet::Unused;
        }
        loop {
            let before = std::future::poll_fn(|cx| {
                self.waker.register(cx.waker());
                let state = self.state.load(Ordering::Acquire);
                if state & OPEN_MASK == 0 {
                    Poll::Ready(state)
                } else {
                    Poll::Pending
                }
            })
            .await;
            // Measured from when the watch saw the connection idle, which
            // may be up to a period late when requests came and went while
            // it slept: closing a connection a little late is harmless.
            tokio::time::sleep(period).await;
            if self.state.load(Ordering::Acquire) == before {
                return Quiet::Idle;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_requests_is_unused_at_the_deadline() {
        let activity = Activity::default();
        let start = Instant::now();
        let quiet = activity.quiet(start + PERIOD, PERIOD).await;
        assert_eq!(quiet, Quiet::Unused);
        assert_eq!(start.elapsed(), PERIOD);
    }

    #[tokio::test(start_paused = true)]
    async fn http1_connections_are_left_to_hyper() {
        let activity = Arc::new(Activity::default());
        assert!(activity.start(Version::HTTP_11).is_none());
        let quiet = activity.quiet(Instant::now() + PERIOD, PERIOD).await;
        assert_eq!(quiet, Quiet::Http1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_is_idle_a_period_after_its_last_request() {
        let activity = Arc::new(Activity::default());
        let start = Instant::now();
        let open = activity.start(Version::HTTP_2);
        let closer = tokio::spawn(async move {
            // A long response, such as an SSE stream.
            tokio::time::sleep(PERIOD * 5).await;
            drop(open);
        });
        let quiet = activity.quiet(start + PERIOD, PERIOD).await;
        assert_eq!(quiet, Quiet::Idle);
        assert_eq!(
            start.elapsed(),
            PERIOD * 6,
            "open for 5 periods, idle for 1"
        );
        closer.await.expect("closer");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_during_the_idle_period_starts_it_again() {
        let activity = Arc::new(Activity::default());
        let start = Instant::now();
        drop(activity.start(Version::HTTP_2));
        let again = Arc::clone(&activity);
        tokio::spawn(async move {
            tokio::time::sleep(PERIOD / 2).await;
            drop(again.start(Version::HTTP_2));
        });
        let quiet = activity.quiet(start, PERIOD).await;
        assert_eq!(quiet, Quiet::Idle);
        assert_eq!(start.elapsed(), PERIOD * 2, "one period broken, one quiet");
    }
}
