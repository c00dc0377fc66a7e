//! The protocol's header names (§4.1, §5), defined once for both services,
//! and the lists CORS allows and exposes.

use http::HeaderName;

/// The query parameter that may carry a bearer token where a header cannot
/// (browsers' `EventSource`): the gateway accepts it, and telemetry never
/// shows its value.
pub const ACCESS_TOKEN_QUERY: &str = "access_token";

pub const STREAM_NEXT_OFFSET: HeaderName = HeaderName::from_static("stream-next-offset");
pub const STREAM_UP_TO_DATE: HeaderName = HeaderName::from_static("stream-up-to-date");
pub const STREAM_CURSOR: HeaderName = HeaderName::from_static("stream-cursor");
pub const STREAM_CLOSED: HeaderName = HeaderName::from_static("stream-closed");
pub const STREAM_SEQ: HeaderName = HeaderName::from_static("stream-seq");
pub const STREAM_TTL: HeaderName = HeaderName::from_static("stream-ttl");
pub const STREAM_EXPIRES_AT: HeaderName = HeaderName::from_static("stream-expires-at");
pub const STREAM_FORKED_FROM: HeaderName = HeaderName::from_static("stream-forked-from");
pub const STREAM_FORK_OFFSET: HeaderName = HeaderName::from_static("stream-fork-offset");
pub const STREAM_FORK_SUB_OFFSET: HeaderName = HeaderName::from_static("stream-fork-sub-offset");
pub const STREAM_SSE_DATA_ENCODING: HeaderName =
    HeaderName::from_static("stream-sse-data-encoding");
pub const PRODUCER_ID: HeaderName = HeaderName::from_static("producer-id");
pub const PRODUCER_EPOCH: HeaderName = HeaderName::from_static("producer-epoch");
pub const PRODUCER_SEQ: HeaderName = HeaderName::from_static("producer-seq");
pub const PRODUCER_EXPECTED_SEQ: HeaderName = HeaderName::from_static("producer-expected-seq");
pub const PRODUCER_RECEIVED_SEQ: HeaderName = HeaderName::from_static("producer-received-seq");

/// W3C Trace Context: the caller's trace, continued by the services.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// W3C Trace Context Level 2: the trace and span that served a request.
pub const TRACERESPONSE: HeaderName = HeaderName::from_static("traceresponse");

/// Protocol request headers a browser may send (answered in preflights).
pub const PROTOCOL_REQUEST_HEADERS: [HeaderName; 15] = [
    http::header::CONTENT_TYPE,
    http::header::IF_NONE_MATCH,
    http::header::AUTHORIZATION,
    STREAM_SEQ,
    STREAM_TTL,
    STREAM_EXPIRES_AT,
    STREAM_CLOSED,
    STREAM_FORKED_FROM,
    STREAM_FORK_OFFSET,
    STREAM_FORK_SUB_OFFSET,
    PRODUCER_ID,
    PRODUCER_EPOCH,
    PRODUCER_SEQ,
    TRACEPARENT,
    TRACESTATE,
];

/// Protocol response headers a browser client may need to read.
pub const PROTOCOL_RESPONSE_HEADERS: [HeaderName; 15] = [
    STREAM_NEXT_OFFSET,
    STREAM_UP_TO_DATE,
    STREAM_CURSOR,
    STREAM_CLOSED,
    STREAM_TTL,
    STREAM_EXPIRES_AT,
    STREAM_SSE_DATA_ENCODING,
    PRODUCER_EPOCH,
    PRODUCER_SEQ,
    PRODUCER_EXPECTED_SEQ,
    PRODUCER_RECEIVED_SEQ,
    http::header::ETAG,
    http::header::LOCATION,
    http::header::CONTENT_TYPE,
    TRACERESPONSE,
];
