//! Request bodies held to a pace: [`TimedBody`] fails a body that stalls
//! or trickles with [`BodyTimeout`], which each service finds in the error
//! chain (see [`BodyTimeout::find`]) and answers with `408`.
//!
//! Two bounds, in the manner of Apache's `mod_reqtimeout`:
//! * idle: no frame for [`BodyLimits::idle`];
//! * total: the body must be complete within [`BodyLimits::base`] plus one
//!   second per [`BodyLimits::min_rate`] bytes received, so an upload at a
//!   decent rate always earns the time it needs and one byte every few
//!   seconds never does.
//!
//! Time only counts from the first moment the reader has to wait for the
//! client, and the timer is armed only while it waits: a body that is all
//! there when read (most are) costs no clock read and no timer.

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::error::Error as StdError;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

type BoxError = Box<dyn StdError + Send + Sync>;

/// How fast a request body must arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// Longest wait for the next frame.
    pub idle: Duration,
    /// Time every body gets, however small.
    pub base: Duration,
    /// Bytes that earn one more second (at least 1).
    pub min_rate: u64,
}

/// Why a request body was cut off.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyTimeout {
    #[error("the request body sent nothing for {0:?}")]
    Idle(Duration),
    #[error("the request body arrived too slowly: {received} bytes in {elapsed:?}")]
    TooSlow { received: u64, elapsed: Duration },
}

impl BodyTimeout {
    /// The timeout somewhere in `error`'s source chain, if any: a body
    /// error reaches a handler wrapped by the layers it crossed.
    pub fn find<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a BodyTimeout> {
        find_cause(error)
    }
}

/// The first error of type `T` in `error`'s source chain, `error` itself
/// included: errors reach a handler wrapped by the layers they crossed.
pub fn find_cause<'a, T: StdError + 'static>(error: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(found) = error.downcast_ref::<T>() {
            return Some(found);
        }
        next = error.source();
    }
    None
}

/// Which bound the armed timer stands for.
#[derive(Debug, Clone, Copy)]
enum Bound {
    Idle,
    Total,
}

pin_project! {
    /// A request body failed with [`BodyTimeout`] once it breaks its
    /// [`BodyLimits`]; other errors of the inner body pass through boxed.
    pub struct TimedBody<B> {
        #[pin]
        inner: B,
        limits: BodyLimits,
        received: u64,
        // When the reader first had to wait.
        started: Option<Instant>,
        // Armed for the current wait only; made at the first wait and reset
        // for later ones. Boxed so the body stays `Unpin` when its inner
        // body is.
        timer: Option<Pin<Box<Sleep>>>,
        // Which bound the timer is armed for; `None` while not waiting.
        waiting: Option<Bound>,
    }
}

impl<B> TimedBody<B> {
    pub fn new(inner: B, limits: BodyLimits) -> TimedBody<B> {
        TimedBody {
            inner,
            limits,
            received: 0,
            started: None,
            timer: None,
            waiting: None,
        }
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                *this.waiting = None;
                if let Some(Ok(frame)) = &frame
                    && let Some(data) = frame.data_ref()
                {
                    *this.received += data.remaining() as u64;
                }
                return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
            }
            Poll::Pending => {}
        }
        if this.waiting.is_none() {
            let now = Instant::now();
            let started = *this.started.get_or_insert(now);
            let earned = Duration::from_secs(*this.received / this.limits.min_rate.max(1));
            let total = started + this.limits.base + earned;
            let idle = now + this.limits.idle;
            let (deadline, bound) = if idle <= total {
                (idle, Bound::Idle)
            } else {
                (total, Bound::Total)
            };
            match this.timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => *this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            *this.waiting = Some(bound);
        }
        if let Some(timer) = this.timer {
            ready!(timer.as_mut().poll(cx));
        }
        let timeout = match this.waiting {
            Some(Bound::Total) => BodyTimeout::TooSlow {
                received: *this.received,
                elapsed: this
                    .started
                    .map_or(Duration::ZERO, |started| started.elapsed()),
            },
            _ => BodyTimeout::Idle(this.limits.idle),
        };
        Poll::Ready(Some(Err(Box::new(timeout))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use http_body_util::StreamBody;
    use std::convert::Infallible;
    use tokio::sync::mpsc;

    const LIMITS: BodyLimits = BodyLimits {
        idle: Duration::from_secs(5),
        base: Duration::from_secs(10),
        min_rate: 100,
    };

    type Chunk = Result<Frame<Bytes>, Infallible>;

    /// A body fed by the test, one chunk at a time.
    fn fed() -> (
        mpsc::Sender<Chunk>,
        TimedBody<impl Body<Data = Bytes, Error = Infallible>>,
    ) {
        let (tx, mut rx) = mpsc::channel(16);
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        (tx, TimedBody::new(StreamBody::new(stream), LIMITS))
    }

    fn chunk(n: usize) -> Chunk {
        Ok(Frame::data(Bytes::from(vec![b'x'; n])))
    }

    fn timeout_of(error: &BoxError) -> BodyTimeout {
        BodyTimeout::find(error.as_ref())
            .cloned()
            .unwrap_or_else(|| panic!("not a body timeout: {error}"))
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_sends_nothing_fails_after_the_idle_timeout() {
        let (_tx, mut body) = fed();
        let started = Instant::now();
        let error = body.frame().await.expect("a frame").expect_err("timeout");
        assert_eq!(timeout_of(&error), BodyTimeout::Idle(LIMITS.idle));
        assert_eq!(started.elapsed(), LIMITS.idle);
    }

    #[tokio::test(start_paused = true)]
    async fn each_frame_restarts_the_idle_wait() {
        let (tx, mut body) = fed();
        for _ in 0..3 {
            let sender = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(4)).await;
                sender.send(chunk(1000)).await.expect("send");
            });
            let frame = body.frame().await.expect("a frame").expect("data");
            assert_eq!(frame.into_data().expect("data").len(), 1000);
        }
        drop(tx);
        assert!(body.frame().await.is_none(), "the body ends cleanly");
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_runs_out_of_total_time() {
        let (tx, mut body) = fed();
        let started = Instant::now();
        tokio::spawn(async move {
            // One byte every three seconds never earns a second.
            loop {
                tokio::time::sleep(Duration::from_secs(3)).await;
                if tx.send(chunk(1)).await.is_err() {
                    return;
                }
            }
        });
        let error = loop {
            match body.frame().await.expect("a frame") {
                Ok(_) => continue,
                Err(error) => break error,
            }
        };
        assert!(matches!(
            timeout_of(&error),
            BodyTimeout::TooSlow { received: 3, .. }
        ));
        assert_eq!(started.elapsed(), LIMITS.base);
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_upload_earns_the_time_it_needs() {
        let (tx, mut body) = fed();
        // Three times the minimum rate for four times the base time.
        tokio::spawn(async move {
            for _ in 0..40 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                tx.send(chunk(300)).await.expect("send");
            }
        });
        let mut received = 0;
        while let Some(frame) = body.frame().await {
            received += frame.expect("no timeout").into_data().expect("data").len();
        }
        assert_eq!(received, 40 * 300);
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_reader_spends_elsewhere_is_not_the_clients() {
        let (tx, mut body) = fed();
        tx.send(chunk(10)).await.expect("send");
        body.frame().await.expect("a frame").expect("data");
        // The reader is busy for longer than the idle timeout while the
        // next chunk is already there: no wait, no timeout.
        tx.send(chunk(10)).await.expect("send");
        tokio::time::sleep(LIMITS.idle * 2).await;
        body.frame().await.expect("a frame").expect("data");
    }

    #[tokio::test(start_paused = true)]
    async fn other_errors_pass_through() {
        let failing = StreamBody::new(futures_util::stream::iter([Err::<Frame<Bytes>, _>(
            std::io::Error::other("reset"),
        )]));
        let mut body = TimedBody::new(failing, LIMITS);
        let error = body.frame().await.expect("a frame").expect_err("error");
        assert!(BodyTimeout::find(error.as_ref()).is_none());
        assert_eq!(error.to_string(), "reset");
    }

    #[test]
    fn timeouts_are_found_through_wrappers() {
        #[derive(Debug, thiserror::Error)]
        #[error("wrapped")]
        struct Wrapper(#[source] BoxError);
        let wrapped = Wrapper(Box::new(BodyTimeout::Idle(Duration::from_secs(1))));
        assert_eq!(
            BodyTimeout::find(&wrapped),
            Some(&BodyTimeout::Idle(Duration::from_secs(1)))
        );
        assert!(BodyTimeout::find(&std::io::Error::other("x")).is_none());
    }
}
