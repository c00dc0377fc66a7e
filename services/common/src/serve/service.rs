//! The service a connection runs: the application's own, handed every
//! request body as a [`TimedBody`], with each request noted in the
//! connection's [`Activity`] (an HTTP/2 one until its response body is
//! dropped).

use super::activity::{Activity, Open};
use crate::body::{BodyLimits, TimedBody};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tower::ServiceExt;
use tower::util::Oneshot;

/// The request type the application's service receives.
pub type BoundedRequest = Request<TimedBody<Incoming>>;

/// Adapts a tower service to hyper's, one per connection.
pub(super) struct Bounded<S> {
    inner: S,
    body: BodyLimits,
    activity: Arc<Activity>,
}

impl<S> Bounded<S> {
    pub(super) fn new(inner: S, body: BodyLimits, activity: Arc<Activity>) -> Bounded<S> {
        Bounded {
            inner,
            body,
            activity,
        }
    }
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Bounded<S>
where
    S: tower::Service<BoundedRequest, Response = Response<B>> + Clone,
{
    type Response = Response<Tracked<B>>;
    type Error = S::Error;
    type Future = Counted<Oneshot<S, BoundedRequest>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let open = self.activity.start(request.version());
        let request = request.map(|body| TimedBody::new(body, self.body));
        // hyper calls with `&self`; tower services want `&mut` and
        // readiness, so each request gets its own clone, as hyper-util's
        // adapter does.
        Counted {
            inner: self.inner.clone().oneshot(request),
            open,
        }
    }
}

pin_project! {
    /// A response on its way; the request counts as open until the
    /// response body it becomes is dropped (or this, if it never does).
    pub struct Counted<F> {
        #[pin]
        inner: F,
        open: Option<Open>,
    }
}

impl<F, B, E> Future for Counted<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<Tracked<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let open = this.open.take();
        Poll::Ready(Ok(response.map(|inner| Tracked { inner, _open: open })))
    }
}

pin_project! {
    /// A response body that keeps its request open while it lives.
    pub struct Tracked<B> {
        #[pin]
        inner: B,
        _open: Option<Open>,
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
