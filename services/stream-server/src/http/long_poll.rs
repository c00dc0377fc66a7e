//! `GET ?live=long-poll` (§5.7): answer at once when data is there, else
//! wait for the stream's next change, the timeout, or shutdown.

use super::AppState;
use super::error::ApiError;
use super::request::ReadQuery;
use super::response::{CACHEABLE, NO_STORE, TRUE, data_response, etag, set_next_offset};
use crate::protocol::{cursor, headers};
use crate::streams::{Stream, StreamError};
use crate::telemetry::{Live, LiveRead};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::time::Instant;

pub async fn read(
    state: AppState,
    stream: Arc<Stream>,
    query: ReadQuery,
) -> Result<Response, ApiError> {
    let mut live = LiveRead::start(Live::LongPoll);
    // Subscribe before reading so an append between the two still wakes us.
    let mut changes = stream.subscribe();
    let from = stream.start_of(query.from);
    let deadline = Instant::now() + state.settings.long_poll_timeout;
    let cursor = cursor::next_cursor(SystemTime::now(), query.cursor.as_deref(), &mut rand::rng());
    loop {
        let read = stream
            .read_async(from, state.settings.max_read_bytes)
            .await?;
        if !read.slice.is_empty() {
            live.delivered(read.slice.ends.len(), 0, read.slice.len());
            let tag = etag(&stream, &query.offset_text, &read);
            let mut response = data_response(&stream, read, Some(cursor));
            response.headers_mut().insert(header::ETAG, tag);
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, CACHEABLE);
            return Ok(response);
        }
        if read.closed {
            return Ok(no_content(read.tail, true, None));
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() || changes.borrow().gone {
                    return Err(StreamError::NotFound.into());
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                return Ok(no_content(read.tail, false, Some(cursor)));
            }
            () = state.shutdown.cancelled() => {
                return Ok(no_content(read.tail, false, Some(cursor)));
            }
        }
    }
}

/// `204 No Content`: caught up with nothing new (or at the end of a closed
/// stream).
fn no_content(
    tail: crate::protocol::offset::Offset,
    closed: bool,
    cursor: Option<u64>,
) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let out = response.headers_mut();
    set_next_offset(out, tail);
    out.insert(headers::STREAM_UP_TO_DATE, TRUE);
    if closed {
        out.insert(headers::STREAM_CLOSED, TRUE);
    }
    if let Some(cursor) = cursor {
        out.insert(headers::STREAM_CURSOR, HeaderValue::from(cursor));
    }
    out.insert(header::CACHE_CONTROL, NO_STORE);
    response
}
