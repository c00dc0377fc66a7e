//! Revocation of requests already under way: a proxied request or response
//! body that stops when the grant that authorised it ends (token revoked,
//! expired, or its rights changed), so an open SSE stream, a long-poll or a
//! slow upload does not outlive the token.
//!
//! The body fails rather than ending cleanly: a client must not take a cut
//! response for a complete one. It reconnects, and its new request meets
//! the token check again.

use crate::auth::grant::Grant;
use axum::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use time::OffsetDateTime;

/// The error a body fails with once its grant has ended.
#[derive(Debug, thiserror::Error)]
#[error("the token that authorised this request was revoked or expired")]
pub struct GrantEnded;

/// `inner`, for as long as `grant` holds.
///
/// Frames that are ready pass straight through after one flag check; only
/// a body that has to wait also waits for the grant to end (one small
/// allocation then), so short requests and answers pay next to nothing.
pub struct UntilRevoked<B> {
    inner: B,
    grant: Arc<Grant>,
    waiting: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl<B> UntilRevoked<B> {
    pub fn new(inner: B, grant: Arc<Grant>) -> Self {
        UntilRevoked {
            inner,
            grant,
            waiting: None,
        }
    }
}

impl<B> Body for UntilRevoked<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if !this.grant.is_live(OffsetDateTime::now_utc()) {
            return Poll::Ready(Some(Err(GrantEnded.into())));
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let waiting = this.waiting.get_or_insert_with(|| {
            let grant = this.grant.clone();
            Box::pin(async move { grant.ended().await })
        });
        match waiting.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(GrantEnded.into()))),
            Poll::Pending => Poll::Pending,
        }
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
    use crate::tokens::store::TokenRow;
    use http_body_util::BodyExt;
    use http_body_util::StreamBody;
    use service_common::body::find_cause;
    use std::time::Duration;

    fn grant(ttl: time::Duration) -> Arc<Grant> {
        let now = OffsetDateTime::now_utc();
        Arc::new(Grant::from_row(TokenRow {
            id: "t1".into(),
            subject: "alice".into(),
            scopes: vec!["read".into()],
            streams: vec!["**".into()],
            description: String::new(),
            created_at: now,
            expires_at: now + ttl,
            revoked_at: None,
            last_used_at: None,
            issued_by: None,
        }))
    }

    /// A body that yields one frame, then waits forever (a live read).
    fn live_body() -> impl Body<Data = Bytes, Error = std::io::Error> + Unpin {
        let frames = futures_util::stream::once(async {
            Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"event")))
        })
        .chain(futures_util::stream::pending());
        StreamBody::new(Box::pin(frames))
    }

    use futures_util::StreamExt;

    #[tokio::test]
    async fn frames_pass_until_the_grant_ends() {
        let grant = grant(time::Duration::hours(1));
        let mut body = UntilRevoked::new(live_body(), grant.clone());
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().expect("data"), "event");
        let next = tokio::spawn(async move { body.frame().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!next.is_finished(), "waits for more data");
        grant.end();
        let ended = tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .expect("ends promptly")
            .expect("task");
        let error = ended.expect("a frame").expect_err("fails");
        assert!(find_cause::<GrantEnded>(error.as_ref()).is_some());
    }

    #[tokio::test]
    async fn an_ended_grant_passes_nothing() {
        let grant = grant(time::Duration::hours(1));
        grant.end();
        let mut body = UntilRevoked::new(live_body(), grant);
        assert!(body.frame().await.expect("frame").is_err());
    }

    #[tokio::test]
    async fn expiry_ends_a_waiting_body() {
        let grant = grant(time::Duration::milliseconds(100));
        let mut body = UntilRevoked::new(live_body(), grant);
        assert!(body.frame().await.expect("frame").is_ok());
        let ended = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("ends at expiry");
        assert!(ended.expect("frame").is_err());
    }

    #[tokio::test]
    async fn complete_bodies_pass_whole() {
        let grant = grant(time::Duration::hours(1));
        let body = UntilRevoked::new(
            http_body_util::Full::new(Bytes::from_static(b"whole")),
            grant,
        );
        let bytes = body.collect().await.expect("collects").to_bytes();
        assert_eq!(bytes, "whole");
    }
}
