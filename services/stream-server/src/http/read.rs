//! The read side: `GET` catch-up reads (§5.6) and `HEAD` metadata (§5.5).
//! Live modes are dispatched from here, and only here, to
//! [`super::long_poll`] and [`super::sse`]; what they share with catch-up
//! reads is in [`super::response`], so neither imports from this module.

use super::error::ApiError;
use super::request::{Live, ReadQuery, read_query, stream_path};
use super::response::{
    CACHEABLE, NO_STORE, TRUE, data_response, etag, set_content_type, set_next_offset,
};
use super::{AppState, record_span};
use super::{long_poll, sse};
use crate::protocol::headers;
use crate::protocol::offset::ReadFrom;
use crate::streams::Stream;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use std::sync::Arc;

/// `GET {stream-url}?offset=..[&live=..]`.
pub async fn get(state: AppState, request: Request) -> Result<Response, ApiError> {
    let path = stream_path(&state, request.uri())?;
    let query = read_query(request.uri())?;
    record_span(|span| {
        let (operation, live) = match query.live {
            Live::CatchUp => ("read", None),
            Live::LongPoll => ("long_poll", Some("long-poll")),
            Live::Sse => ("sse", Some("sse")),
        };
        span.record("ds.stream", &*path);
        span.record("ds.operation", operation);
        span.record("ds.live", live);
        span.record("ds.offset", query.offset_text.as_str());
    });
    let stream = state.streams.get(&path, true)?;
    match query.live {
        Live::CatchUp => catch_up(&state, &stream, &query, request.headers()).await,
        Live::LongPoll => long_poll::read(state, stream, query).await,
        Live::Sse => sse::read(state, stream, query).await,
    }
}

async fn catch_up(
    state: &AppState,
    stream: &Arc<Stream>,
    query: &ReadQuery,
    request_headers: &http::HeaderMap,
) -> Result<Response, ApiError> {
    if query.from == ReadFrom::Now {
        return Ok(now_response(stream));
    }
    let read = stream
        .read_async(stream.start_of(query.from), state.settings.max_read_bytes)
        .await?;
    let etag = etag(stream, &query.offset_text, &read);
    if request_headers
        .get(header::IF_NONE_MATCH)
        .and_then(|sent| sent.to_str().ok())
        .is_some_and(|sent| if_none_match(sent, &etag))
    {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        response.headers_mut().insert(header::ETAG, etag);
        return Ok(response);
    }
    let mut response = data_response(stream, read, None);
    let out = response.headers_mut();
    out.insert(header::ETAG, etag);
    out.insert(header::CACHE_CONTROL, CACHEABLE);
    Ok(response)
}

/// Whether an `If-None-Match` value matches `etag`: `*`, or any tag of the
/// list, weak tags compared weakly (RFC 9110 §13.1.2).
fn if_none_match(sent: &str, etag: &HeaderValue) -> bool {
    let etag = etag.as_bytes();
    sent.split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag).as_bytes() == etag)
}

/// `offset=now` without `live`: no data, the tail, never cached (§8).
fn now_response(stream: &Stream) -> Response {
    let visible = stream.visible();
    let (tail, closed) = (visible.next, visible.closed);
    let body = if stream.config.is_json() { "[]" } else { "" };
    let mut response = body.into_response();
    let out = response.headers_mut();
    set_content_type(out, &stream.config.content_type);
    set_next_offset(out, tail);
    out.insert(headers::STREAM_UP_TO_DATE, TRUE);
    if closed {
        out.insert(headers::STREAM_CLOSED, TRUE);
    }
    out.insert(header::CACHE_CONTROL, NO_STORE);
    response
}

/// `HEAD {stream-url}`: metadata only; does not count as a read for TTLs.
pub fn head(state: AppState, request: Request) -> Result<Response, ApiError> {
    let path = stream_path(&state, request.uri())?;
    record_span(|span| {
        span.record("ds.stream", &*path);
        span.record("ds.operation", "head");
    });
    let stream: Arc<Stream> = state.streams.get(&path, false)?;
    let mut response = StatusCode::OK.into_response();
    let out = response.headers_mut();
    set_content_type(out, &stream.config.content_type);
    out.insert(header::CACHE_CONTROL, NO_STORE);
    let visible = stream.visible();
    set_next_offset(out, visible.next);
    if visible.closed {
        out.insert(headers::STREAM_CLOSED, TRUE);
    }
    match stream.config.expiry {
        crate::streams::Expiry::Never => {}
        crate::streams::Expiry::Ttl(secs) => {
            out.insert(headers::STREAM_TTL, HeaderValue::from(secs));
        }
        crate::streams::Expiry::At(at) => {
            if let Ok(v) = HeaderValue::from_str(&headers::format_timestamp(at)) {
                out.insert(headers::STREAM_EXPIRES_AT, v);
            }
        }
    }
    Ok(response)
}
