//! `GET ?live=sse` (§5.8): catch up in data/control event pairs, then
//! deliver each new append as it lands, until the stream closes, the
//! reconnect interval passes, the client leaves, or the server shuts down.

use super::AppState;
use super::error::ApiError;
use super::read::start_of;
use super::request::ReadQuery;
use crate::protocol::offset::Offset;
use crate::protocol::sse::{Control, DataEncoding, put_control_event, put_data_event};
use crate::protocol::{cursor, headers, json};
use crate::streams::{ReadResult, Stream, StreamError, Tail};
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http::{HeaderValue, header};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

pub async fn read(
    state: AppState,
    stream: Arc<Stream>,
    query: ReadQuery,
) -> Result<Response, ApiError> {
    let encoding = DataEncoding::for_media_type(&stream.config.media_type);
    let from = start_of(&stream, query.from);
    // Refuse a bad offset now: once the event stream starts, only the
    // connection's end could report it.
    if !stream.has_boundary_async(from).await? {
        return Err(StreamError::OffsetNotInStream { offset: from }.into());
    }
    let session = Session {
        changes: stream.subscribe(),
        from,
        cursor: cursor::next_cursor(SystemTime::now(), query.cursor.as_deref(), &mut rand::rng()),
        deadline: Box::pin(tokio::time::sleep(state.settings.sse_reconnect_interval)),
        max_read_bytes: state.settings.max_read_bytes,
        shutdown: Box::pin(state.shutdown.clone().cancelled_owned()),
        encoding,
        stream,
        started: false,
        finished: false,
    };
    let events = futures_util::stream::unfold(session, |mut session| async move {
        let event = session.next_event().await?;
        Some((Ok::<_, Infallible>(event), session))
    });
    let mut response = Body::from_stream(events).into_response();
    let out = response.headers_mut();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if encoding == DataEncoding::Base64 {
        out.insert(
            headers::STREAM_SSE_DATA_ENCODING,
            HeaderValue::from_static("base64"),
        );
    }
    Ok(response)
}

/// One SSE connection's position and state.
///
/// The deadline and the shutdown signal are futures made once per
/// connection and polled again at every wait, rather than made at every
/// wait: each making registers a timer or a waiter, and with a thousand
/// subscribers that is a thousand registrations per append.
struct Session {
    stream: Arc<Stream>,
    changes: watch::Receiver<Tail>,
    from: Offset,
    cursor: u64,
    /// When the connection ends so the client reconnects (§10.2).
    deadline: Pin<Box<Sleep>>,
    max_read_bytes: usize,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    encoding: DataEncoding,
    /// Something has been sent (an empty stream still gets a first control).
    started: bool,
    /// The closing control event has been sent.
    finished: bool,
}

impl Session {
    /// The next chunk to send, or `None` to end the response.
    async fn next_event(&mut self) -> Option<Bytes> {
        while !self.finished {
            // Even a stream with data always pending ends on time (§10.2).
            // The clock, not the timer: the timer only fires once polled.
            if self.started && Instant::now() >= self.deadline.deadline() {
                return None;
            }
            if !self.started || self.has_news() {
                // `from` was checked before the session started, and is the
                // `next` of the previous read since.
                let read = self
                    .stream
                    .continue_read_async(self.from, self.max_read_bytes)
                    .await
                    .ok()?;
                if !read.slice.is_empty() || !self.started || read.closed {
                    self.started = true;
                    return Some(self.events(read));
                }
            }
            tokio::select! {
                changed = self.changes.changed() => {
                    if changed.is_err() || self.changes.borrow().gone {
                        return None;
                    }
                }
                () = &mut self.deadline => return None,
                () = &mut self.shutdown => return None,
            }
        }
        None
    }

    /// Whether the stream changed since the last read: a subscriber that
    /// just sent everything up to the tail waits without reading again.
    /// Marks the current state seen, so `changed()` reports only what comes
    /// after it.
    fn has_news(&mut self) -> bool {
        let tail = self.changes.borrow_and_update();
        tail.next != self.from || tail.closed || tail.gone
    }

    /// The read's data and the control event after it, as one write so
    /// clients never see data without its control event. Text streams get
    /// an event per message, as appended (what the quickstart shows);
    /// JSON (one array) and base64 streams one event per read, which the
    /// conformance suite expects to be followed by a control event.
    fn events(&mut self, read: ReadResult) -> Bytes {
        let up_to_date = read.up_to_date();
        let closed = read.closed && up_to_date;
        let next = read.slice.next;
        let mut out = BytesMut::new();
        if self.stream.config.is_json() {
            if !read.slice.is_empty() {
                let array = json::array_body(read.slice.data);
                put_data_event(&mut out, &array, self.encoding);
            }
        } else if self.encoding == DataEncoding::Text {
            for message in read.slice.messages() {
                put_data_event(&mut out, &message, self.encoding);
            }
        } else if !read.slice.is_empty() {
            put_data_event(&mut out, &read.slice.data, self.encoding);
        }
        put_control_event(
            &mut out,
            &Control {
                stream_next_offset: next,
                stream_cursor: (!closed).then_some(self.cursor),
                up_to_date,
                stream_closed: closed,
            },
        );
        self.from = next;
        self.finished = closed;
        out.freeze()
    }
}
