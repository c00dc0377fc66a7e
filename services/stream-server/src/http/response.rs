//! Building blocks of successful responses: a body made of shared byte
//! pieces, the protocol headers several handlers set, and what catch-up and
//! long-poll reads share: the data response, its ETag and the caching
//! policies.

use crate::protocol::offset::Offset;
use crate::protocol::{headers, json};
use crate::streams::{ReadResult, Stream};
use axum::body::Body;
use axum::response::{IntoResponse, Response};
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

/// Catch-up reads may be cached by CDNs (§10.1).
pub const CACHEABLE: HeaderValue =
    HeaderValue::from_static("public, max-age=60, stale-while-revalidate=300");
pub const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

/// `ETag: "<offset as sent>:<next offset>"`, with `:c` once the read
/// reaches the end of a closed stream, so closure is never hidden by a 304,
/// and led by `<recreation>:` for a stream created where one was removed,
/// so a recreated stream's tags never match the old one's.
pub fn etag(stream: &Stream, offset_text: &str, read: &ReadResult) -> HeaderValue {
    let closed = if read.closed && read.up_to_date() {
        ":c"
    } else {
        ""
    };
    let next = read.slice.next;
    let tag = match stream.recreation {
        0 => format!("\"{offset_text}:{next}{closed}\""),
        recreation => format!("\"{recreation}:{offset_text}:{next}{closed}\""),
    };
    HeaderValue::from_str(&tag).unwrap_or(HeaderValue::from_static("\"\""))
}

/// A `200 OK` carrying read data and the headers describing it; shared by
/// catch-up and long-poll reads.
pub fn data_response(stream: &Stream, read: ReadResult, cursor: Option<u64>) -> Response {
    let up_to_date = read.up_to_date();
    let closed = read.closed;
    let next = read.slice.next;
    let body = if stream.config.is_json() {
        json::array_body(read.slice.data)
    } else {
        read.slice.data
    };
    let mut response = pieces_body(body).into_response();
    let out = response.headers_mut();
    set_content_type(out, &stream.config.content_type);
    set_next_offset(out, next);
    if up_to_date {
        out.insert(headers::STREAM_UP_TO_DATE, TRUE);
        if closed {
            out.insert(headers::STREAM_CLOSED, TRUE);
        }
    }
    if let Some(cursor) = cursor {
        out.insert(headers::STREAM_CURSOR, HeaderValue::from(cursor));
    }
    response
}
