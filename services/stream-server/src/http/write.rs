//! The write side: `PUT` creates a stream or a fork (§5.1, §4.2), `POST`
//! appends and/or closes (§5.2, §5.3), `DELETE` removes (§5.4).

use super::error::ApiError;
use super::request::{self, stream_path};
use super::response::{TRUE, set_content_type, set_next_offset};
use super::{AppState, record_span};
use crate::protocol::headers::{self, HeaderError};
use crate::streams::{AppendRequest, CreateRequest, Created, Expiry, ForkRequest};
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode};

/// `PUT {stream-url}`: 201 for a new stream, 200 for a matching one.
pub async fn create(state: AppState, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let path = stream_path(&state, &parts.uri)?;
    let headers = &parts.headers;
    let create = CreateRequest {
        content_type: request::content_type(headers)?,
        expiry: expiry(headers)?,
        closed: headers::stream_closed(headers),
        fork: fork(&state, headers)?,
        body: request::body(body, headers, state.settings.max_body_bytes).await?,
    };
    record_span(|span| {
        let operation = if create.fork.is_some() {
            "fork"
        } else {
            "create"
        };
        span.record("ds.stream", &*path);
        span.record("ds.operation", operation);
        span.record("ds.content_type", create.content_type.as_deref());
        span.record("http.request.body.size", create.body.len());
    });
    let (created, stream) = state.streams.create(&path, create).await?;
    let visible = stream.visible();
    let (next, closed) = (visible.next, visible.closed);
    let mut response = StatusCode::OK.into_response();
    let out = response.headers_mut();
    set_content_type(out, &stream.config.content_type);
    set_next_offset(out, next);
    if closed {
        out.insert(headers::STREAM_CLOSED, TRUE);
    }
    if created == Created::New {
        *response.status_mut() = StatusCode::CREATED;
        if let Some(location) = location(&state, &parts) {
            response
                .headers_mut()
                .insert(http::header::LOCATION, location);
        }
    }
    Ok(response)
}

/// `POST {stream-url}`: 204 for plain appends and closes, 200 when a
/// producer's new data was appended, 204 for its duplicates (§5.2.1).
pub async fn append(state: AppState, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let path = stream_path(&state, &parts.uri)?;
    let headers = &parts.headers;
    let append = AppendRequest {
        content_type: request::content_type(headers)?,
        close: headers::stream_closed(headers),
        stream_seq: headers::text(headers, &headers::STREAM_SEQ)?.map(str::to_owned),
        producer: headers::producer(headers)?,
        body: request::body(body, headers, state.settings.max_body_bytes).await?,
    };
    record_span(|span| {
        let close_only = append.close && append.body.is_empty();
        span.record("ds.stream", &*path);
        span.record("ds.operation", if close_only { "close" } else { "append" });
        span.record("ds.content_type", append.content_type.as_deref());
        span.record("http.request.body.size", append.body.len());
        if let Some(producer) = &append.producer {
            span.record("ds.producer.id", producer.id.as_str());
            span.record("ds.producer.epoch", producer.epoch);
            span.record("ds.producer.seq", producer.seq);
        }
    });
    let has_producer = append.producer.is_some();
    let outcome = state.streams.append(&path, append).await?;
    let status = if has_producer && outcome.appended {
        StatusCode::OK
    } else {
        StatusCode::NO_CONTENT
    };
    let mut response = status.into_response();
    let out = response.headers_mut();
    set_next_offset(out, outcome.next);
    if outcome.closed {
        out.insert(headers::STREAM_CLOSED, TRUE);
    }
    if let Some(producer) = outcome.producer {
        out.insert(headers::PRODUCER_EPOCH, HeaderValue::from(producer.epoch));
        out.insert(headers::PRODUCER_SEQ, HeaderValue::from(producer.last_seq));
    }
    Ok(response)
}

/// `DELETE {stream-url}`: 204.
pub async fn delete(state: AppState, request: Request) -> Result<Response, ApiError> {
    let path = stream_path(&state, request.uri())?;
    record_span(|span| {
        span.record("ds.stream", &*path);
        span.record("ds.operation", "delete");
    });
    state.streams.delete(&path).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `Stream-TTL` or `Stream-Expires-At`; both at once is a 400 (§5.1).
fn expiry(headers: &HeaderMap) -> Result<Option<Expiry>, ApiError> {
    let ttl = headers::text(headers, &headers::STREAM_TTL)?;
    let at = headers::text(headers, &headers::STREAM_EXPIRES_AT)?;
    Ok(match (ttl, at) {
        (Some(_), Some(_)) => {
            return Err(HeaderError::new(
                "Stream-TTL",
                "send either Stream-TTL or Stream-Expires-At, not both",
            )
            .into());
        }
        (Some(ttl), None) => Some(Expiry::Ttl(headers::ttl(ttl)?)),
        (None, Some(at)) => Some(Expiry::At(headers::expires_at(at)?)),
        (None, None) => None,
    })
}

/// The fork headers; the offset headers without `Stream-Forked-From` are a
/// 400 (§5.1).
fn fork(state: &AppState, headers: &HeaderMap) -> Result<Option<ForkRequest>, ApiError> {
    let source = request::fork_source_path(state, headers)?;
    let offset = headers::text(headers, &headers::STREAM_FORK_OFFSET)?;
    let sub_offset = headers::text(headers, &headers::STREAM_FORK_SUB_OFFSET)?;
    let Some(source) = source else {
        if offset.is_some() || sub_offset.is_some() {
            return Err(HeaderError::new(
                "Stream-Forked-From",
                "Stream-Fork-Offset and Stream-Fork-Sub-Offset require Stream-Forked-From",
            )
            .into());
        }
        return Ok(None);
    };
    let offset = offset
        .map(|o| {
            o.parse()
                .map_err(|e| HeaderError::new("Stream-Fork-Offset", format!("{e}")))
        })
        .transpose()?;
    let sub_offset = sub_offset
        .map(|s| headers::strict_decimal("Stream-Fork-Sub-Offset", s))
        .transpose()?
        .unwrap_or(0);
    Ok(Some(ForkRequest {
        source,
        offset,
        sub_offset,
    }))
}

/// The absolute URL of the created stream, from the request's host.
fn location(state: &AppState, parts: &http::request::Parts) -> Option<HeaderValue> {
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))?;
    HeaderValue::from_str(&format!(
        "{}://{}{}",
        state.settings.scheme,
        host,
        parts.uri.path()
    ))
    .ok()
}
