//! The Durable Streams requests ds-load sends — create, append, catch-up
//! and live reads, delete — and the response headers it reads back. The
//! `*_stream` functions send one operation over a connection and turn any
//! answer other than success into an [`OpError`].

use crate::client::{Connection, HttpError, Reply, RequestBody};
use crate::target::{Target, encode_query_value};
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, Request, StatusCode};
use http_body_util::Full;

/// Content type of byte streams.
pub const OCTET_STREAM: &str = "application/octet-stream";
/// Content type of JSON-mode streams.
pub const JSON: &str = "application/json";

/// Response header: the offset to read from next.
pub const STREAM_NEXT_OFFSET: &str = "stream-next-offset";
/// Response header: the read reached the tail.
pub const STREAM_UP_TO_DATE: &str = "stream-up-to-date";
/// Request headers of idempotent producers.
pub const PRODUCER_ID: &str = "producer-id";
pub const PRODUCER_EPOCH: &str = "producer-epoch";
pub const PRODUCER_SEQ: &str = "producer-seq";

/// The offset meaning "from the start of the stream".
pub const START_OFFSET: &str = "-1";

/// How many catch-up requests one full read may take before it is judged
/// stuck (a server that never says `Stream-Up-To-Date`).
const MAX_READ_REQUESTS: u64 = 1_000_000;

/// How much of an error body goes into an error message.
const BODY_EXCERPT_BYTES: usize = 200;

/// Why a stream operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{op} answered {status}: {body}")]
    Status {
        op: &'static str,
        status: StatusCode,
        body: String,
    },
    #[error("{op}: {cause}")]
    Transport { op: &'static str, cause: HttpError },
    #[error("{op}: {message}")]
    Protocol { op: &'static str, message: String },
    #[error("{op}: cannot build the request: {cause}")]
    Build {
        op: &'static str,
        cause: http::Error,
    },
}

/// Which kind of read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    CatchUp,
    LongPoll,
    Sse,
}

/// Idempotent-producer headers for one append.
#[derive(Debug, Clone, Copy)]
pub struct Producer<'a> {
    pub id: &'a str,
    pub epoch: u64,
    pub seq: u64,
}

/// `PUT` creating the stream `name` with `content_type`.
pub fn create_request(
    target: &Target,
    name: &str,
    content_type: &str,
) -> Result<Request<RequestBody>, http::Error> {
    target
        .request(Method::PUT, &target.stream_path(name))
        .header(CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::new()))
}

/// `POST` appending `body`, with producer headers when given.
pub fn append_request(
    target: &Target,
    name: &str,
    content_type: &str,
    body: Bytes,
    producer: Option<Producer<'_>>,
) -> Result<Request<RequestBody>, http::Error> {
    let mut builder = target
        .request(Method::POST, &target.stream_path(name))
        .header(CONTENT_TYPE, content_type);
    if let Some(producer) = producer {
        builder = builder
            .header(PRODUCER_ID, producer.id)
            .header(PRODUCER_EPOCH, producer.epoch)
            .header(PRODUCER_SEQ, producer.seq);
    }
    builder.body(Full::new(body))
}

/// `GET ?offset=…` in the given read mode.
pub fn read_request(
    target: &Target,
    name: &str,
    offset: &str,
    mode: ReadMode,
) -> Result<Request<RequestBody>, http::Error> {
    let live = match mode {
        ReadMode::CatchUp => "",
        ReadMode::LongPoll => "&live=long-poll",
        ReadMode::Sse => "&live=sse",
    };
    let uri = format!(
        "{}?offset={}{live}",
        target.stream_path(name),
        encode_query_value(offset)
    );
    target
        .request(Method::GET, &uri)
        .body(Full::new(Bytes::new()))
}

/// `DELETE` of the stream `name`.
pub fn delete_request(target: &Target, name: &str) -> Result<Request<RequestBody>, http::Error> {
    target
        .request(Method::DELETE, &target.stream_path(name))
        .body(Full::new(Bytes::new()))
}

/// Sends a request built for `op` and requires a 2xx answer.
async fn exchange(
    connection: &mut Connection,
    op: &'static str,
    request: Result<Request<RequestBody>, http::Error>,
) -> Result<Reply, OpError> {
    let request = request.map_err(|cause| OpError::Build { op, cause })?;
    let reply = connection
        .send(request)
        .await
        .map_err(|cause| OpError::Transport { op, cause })?;
    if reply.status.is_success() {
        Ok(reply)
    } else {
        Err(status_error(op, &reply))
    }
}

/// The error for a non-success answer, with an excerpt of its body.
pub fn status_error(op: &'static str, reply: &Reply) -> OpError {
    let excerpt = &reply.body[..reply.body.len().min(BODY_EXCERPT_BYTES)];
    OpError::Status {
        op,
        status: reply.status,
        body: String::from_utf8_lossy(excerpt).trim().to_owned(),
    }
}

/// Creates a stream (201, or 200 when it already exists alike).
pub async fn create_stream(
    connection: &mut Connection,
    name: &str,
    content_type: &str,
) -> Result<Reply, OpError> {
    let request = create_request(connection.target(), name, content_type);
    exchange(connection, "create", request).await
}

/// Appends one body (204 or 200).
pub async fn append_to_stream(
    connection: &mut Connection,
    name: &str,
    content_type: &str,
    body: Bytes,
    producer: Option<Producer<'_>>,
) -> Result<Reply, OpError> {
    let request = append_request(connection.target(), name, content_type, body, producer);
    exchange(connection, "append", request).await
}

/// Deletes a stream (204).
pub async fn delete_stream(connection: &mut Connection, name: &str) -> Result<Reply, OpError> {
    let request = delete_request(connection.target(), name);
    exchange(connection, "delete", request).await
}

/// `Stream-Next-Offset` of a reply, which `op` requires.
pub fn next_offset(op: &'static str, reply: &Reply) -> Result<String, OpError> {
    reply
        .header(STREAM_NEXT_OFFSET)
        .map(str::to_owned)
        .ok_or_else(|| OpError::Protocol {
            op,
            message: format!("{} answer without Stream-Next-Offset", reply.status),
        })
}

/// Whether a reply says the read reached the tail.
pub fn is_up_to_date(reply: &Reply) -> bool {
    reply
        .header(STREAM_UP_TO_DATE)
        .is_some_and(|value| value.eq_ignore_ascii_case("true"))
}

/// What one full catch-up read saw.
#[derive(Debug, Clone)]
pub struct FullRead {
    /// Body bytes received.
    pub bytes: u64,
    /// Requests it took.
    pub requests: u64,
    /// The offset after the last byte.
    pub next_offset: String,
}

/// Reads the stream from the start by catch-up reads, following
/// `Stream-Next-Offset` until `Stream-Up-To-Date`, handing each body chunk
/// to `on_chunk` with its position (bytes before it).
pub async fn read_to_end(
    connection: &mut Connection,
    name: &str,
    mut on_chunk: impl FnMut(u64, &[u8]),
) -> Result<FullRead, OpError> {
    const OP: &str = "read";
    let mut offset = START_OFFSET.to_owned();
    let mut position = 0u64;
    for requests in 1..=MAX_READ_REQUESTS {
        let request = read_request(connection.target(), name, &offset, ReadMode::CatchUp);
        let reply = exchange(connection, OP, request).await?;
        let next = next_offset(OP, &reply)?;
        on_chunk(position, &reply.body);
        position += reply.body.len() as u64;
        if is_up_to_date(&reply) {
            return Ok(FullRead {
                bytes: position,
                requests,
                next_offset: next,
            });
        }
        if reply.body.is_empty() && next == offset {
            return Err(OpError::Protocol {
                op: OP,
                message: format!("no progress at offset {offset} and not up to date"),
            });
        }
        offset = next;
    }
    Err(OpError::Protocol {
        op: OP,
        message: format!("not up to date after {MAX_READ_REQUESTS} requests"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_requests_encode_offset_and_mode() {
        let target = Target::new("http://127.0.0.1:1/v1/stream", None).unwrap();
        let request = read_request(&target, "s", "-1", ReadMode::CatchUp).unwrap();
        assert_eq!(request.uri(), "/v1/stream/s?offset=-1");
        let request = read_request(&target, "s", "0_5", ReadMode::Sse).unwrap();
        assert_eq!(request.uri(), "/v1/stream/s?offset=0_5&live=sse");
        let request = read_request(&target, "s", "a/b", ReadMode::LongPoll).unwrap();
        assert_eq!(request.uri(), "/v1/stream/s?offset=a%2Fb&live=long-poll");
    }

    #[test]
    fn append_requests_carry_producer_headers() {
        let target = Target::new("http://127.0.0.1:1", None).unwrap();
        let producer = Producer {
            id: "p-1",
            epoch: 0,
            seq: 7,
        };
        let request = append_request(
            &target,
            "s",
            OCTET_STREAM,
            Bytes::from_static(b"x"),
            Some(producer),
        )
        .unwrap();
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.headers()[PRODUCER_ID], "p-1");
        assert_eq!(request.headers()[PRODUCER_EPOCH], "0");
        assert_eq!(request.headers()[PRODUCER_SEQ], "7");
        assert_eq!(request.headers()[CONTENT_TYPE], OCTET_STREAM);
    }
}
