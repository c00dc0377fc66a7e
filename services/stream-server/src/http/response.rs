//! Building blocks of successful responses: a body made of shared byte
//! pieces, and the protocol headers several handlers set.

use crate::protocol::headers;
use crate::protocol::offset::Offset;
use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Frame, SizeHint};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A response body sent as a sequence of `Bytes` slices of stored data:
/// nothing is copied, and the exact length is known up front.
struct Pieces {
    pieces: VecDeque<Bytes>,
    remaining: u64,
}

impl http_body::Body for Pieces {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.pieces.pop_front().map(|piece| {
            self.remaining -= piece.len() as u64;
            Ok(Frame::data(piece))
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.pieces.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// A body of stored pieces.
pub fn pieces_body(pieces: Vec<Bytes>) -> Body {
    let pieces: VecDeque<Bytes> = pieces.into_iter().filter(|p| !p.is_empty()).collect();
    let remaining = pieces.iter().map(|p| p.len() as u64).sum();
    Body::new(Pieces { pieces, remaining })
}

pub const TRUE: HeaderValue = HeaderValue::from_static("true");

/// Sets `Stream-Next-Offset`.
pub fn set_next_offset(map: &mut HeaderMap, next: Offset) {
    if let Ok(value) = HeaderValue::from_bytes(&next.encode()) {
        map.insert(headers::STREAM_NEXT_OFFSET, value);
    }
}

/// Sets the stream's content type, exactly as it was created.
pub fn set_content_type(map: &mut HeaderMap, content_type: &str) {
    if let Ok(value) = HeaderValue::from_str(content_type) {
        map.insert(http::header::CONTENT_TYPE, value);
    }
}
