//! Reading the parts of a request the handlers share: the stream path, the
//! read query, the body (bounded), and a few headers.

use super::AppState;
use super::error::ApiError;
use crate::protocol::headers;
use crate::protocol::offset::ReadFrom;
use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Uri};
use http_body_util::BodyExt;
use service_common::body::BodyTimeout;
use service_common::stream_path;
use std::borrow::Cow;

/// The validated stream path of a request URL, relative to the base path.
pub fn stream_path(state: &AppState, uri: &Uri) -> Result<String, ApiError> {
    let raw = stream_path::stream_path_of(&state.settings.base_path, uri.path())
        .ok_or(ApiError::NoRoute)?;
    Ok(stream_path::decode(raw, state.settings.path_limits)?.into_owned())
}

/// The registry path named by the `Stream-Forked-From` header, if any,
/// resolved as the gateway resolved it when it authorised the request.
pub fn fork_source_path(state: &AppState, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    stream_path::fork_source_of(
        headers,
        &state.settings.base_path,
        state.settings.path_limits,
    )
    .map(|source| source.map(Cow::into_owned))
    .map_err(|e| {
        ApiError::Header(headers::HeaderError::new(
            "Stream-Forked-From",
            e.to_string(),
        ))
    })
}

/// Which read mode a `GET` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    CatchUp,
    LongPoll,
    Sse,
}

/// The query of a `GET`.
#[derive(Debug)]
pub struct ReadQuery {
    pub from: ReadFrom,
    /// The `offset` parameter as sent (`-1` when absent), for ETags.
    pub offset_text: String,
    pub live: Live,
    pub cursor: Option<String>,
}

/// Parses `offset`, `live` and `cursor`; other parameters are ignored.
pub fn read_query(uri: &Uri) -> Result<ReadQuery, ApiError> {
    let mut offset = None;
    let mut live = None;
    let mut cursor = None;
    for (key, value) in form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()) {
        let slot = match key.as_ref() {
            "offset" => &mut offset,
            "live" => &mut live,
            "cursor" => &mut cursor,
            _ => continue,
        };
        if slot.replace(value.into_owned()).is_some() {
            return Err(ApiError::Query(format!("parameter {key:?} is repeated")));
        }
    }
    let live = match live.as_deref() {
        None => Live::CatchUp,
        Some("long-poll") => Live::LongPoll,
        Some("sse") => Live::Sse,
        Some(other) => {
            return Err(ApiError::Query(format!(
                "live must be \"long-poll\" or \"sse\", got {other:?}"
            )));
        }
    };
    if offset.is_none() && live != Live::CatchUp {
        return Err(ApiError::Query("live reads require an offset".into()));
    }
    let offset_text = offset.unwrap_or_else(|| "-1".to_owned());
    let from = offset_text
        .parse()
        .map_err(|e| ApiError::Query(format!("offset {offset_text:?}: {e}")))?;
    Ok(ReadQuery {
        from,
        offset_text,
        live,
        cursor,
    })
}

/// Reads the whole body, refusing more than `limit` bytes with 413 and a
/// client too slow to send it with 408.
///
/// A small body arrives as one frame, which is returned as it is; larger
/// ones are joined.
pub async fn body(mut body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut whole = Bytes::new();
    let mut joined: Option<BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| match BodyTimeout::find(&e) {
            Some(timeout) => ApiError::BodyTimeout(timeout.clone()),
            None => ApiError::BodyRead(e.to_string()),
        })?;
        // Trailers carry nothing a stream stores.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let received = joined.as_ref().map_or(whole.len(), BytesMut::len);
        if received + data.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        match &mut joined {
            Some(buffer) => buffer.extend_from_slice(&data),
            None if whole.is_empty() => whole = data,
            None => {
                let expected = declared.map_or(0, |len| len as usize);
                let mut buffer = BytesMut::with_capacity(expected.max(received + data.len()));
                buffer.extend_from_slice(&whole);
                buffer.extend_from_slice(&data);
                joined = Some(buffer);
            }
        }
    }
    Ok(joined.map_or(whole, BytesMut::freeze))
}

/// The `Content-Type` header, if present and readable.
pub fn content_type(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    Ok(headers::text(headers, &http::header::CONTENT_TYPE)?
        .filter(|ct| !ct.is_empty())
        .map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(q: &str) -> Result<ReadQuery, ApiError> {
        read_query(&format!("/s?{q}").parse().unwrap())
    }

    #[test]
    fn offsets_default_to_the_start_for_catch_up_only() {
        assert_eq!(query("").unwrap().from, ReadFrom::Start);
        assert!(query("live=sse").is_err());
        assert!(query("live=long-poll").is_err());
        assert!(query("offset=-1&live=sse").is_ok());
    }

    #[test]
    fn rejects_repeated_empty_and_malformed_offsets() {
        for bad in [
            "offset=a&offset=b",
            "offset=",
            "offset=0,1",
            "offset=0%201",
            "offset=now%0A",
            "live=poll&offset=-1",
        ] {
            assert!(query(bad).is_err(), "{bad}");
        }
        assert!(query("offset=-1&foo=bar").is_ok());
    }
}
