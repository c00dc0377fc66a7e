//! `GET ?live=sse` (§5.8): catch up in data/control event pairs, then
//! deliver each new append as it lands, until the stream closes, the
//! reconnect interval passes, the client leaves, or the server shuts down.

use super::AppState;
use super::error::ApiError;
use super::request::ReadQuery;
use crate::protocol::offset::Offset;
use crate::protocol::sse::{
    ControlFlags, DataEncoding, control_tail_len, put_control_head, put_control_tail,
    put_data_event,
};
use crate::protocol::{cursor, headers, json};
use crate::streams::stream::SharedFraming;
use crate::streams::{ReadResult, Stream, StreamError, Tail};
use crate::telemetry::{Live, LiveRead};
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
    let from = stream.start_of(query.from);
    // Refuse a bad offset now: once the event stream starts, only the
    // connection's end could report it.
    if !stream.has_boundary_async(from).await? {
        return Err(StreamError::OffsetNotInStream { offset: from }.into());
    }
    let session = Session {
        changes: stream.subscribe(),
        from,
        cursor: cursor::next_cursor(SystemTime::now(), query.cursor.as_deref(), &mut rand::rng())
            .to_string(),
        deadline: Box::pin(tokio::time::sleep(state.settings.sse_reconnect_interval)),
        max_read_bytes: state.settings.max_read_bytes,
        shutdown: Box::pin(state.shutdown.clone().cancelled_owned()),
        encoding,
        stream,
        started: false,
        finished: false,
        live: LiveRead::start(Live::Sse),
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

/// Largest framing of one delivery that subscribers share (see
/// [`Stream::shared_delivery`]); bigger ones are catch-up reads, framed
/// for their own connection.
const MAX_SHARED_FRAMING: usize = 16 * 1024;

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
    /// The connection's cursor as decimal text, written into every
    /// control event of an open stream.
    cursor: String,
    /// When the connection ends so the client reconnects (§10.2).
    deadline: Pin<Box<Sleep>>,
    max_read_bytes: usize,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    encoding: DataEncoding,
    /// Something has been sent (an empty stream still gets a first control).
    started: bool,
    /// The closing control event has been sent.
    finished: bool,
    /// Counts what the connection delivered, for its span and metrics.
    live: LiveRead,
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
            let news = if self.started { self.news() } else { None };
            if let Some(tail) = news
                && let Some(events) = self.shared_events(tail)
            {
                return Some(events);
            }
            if !self.started || news.is_some() {
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
            // News first: a wake-up for an append then polls nothing else
            // (the timer and the shutdown waiter stay registered from
            // earlier polls).
            tokio::select! {
                biased;
                changed = self.changes.changed() => {
                    if changed.is_err() || self.changes.borrow().gone {
                        return None;
                    }
                }
                () = &mut self.shutdown => return None,
                () = &mut self.deadline => return None,
            }
        }
        None
    }

    /// The visible tail, if the stream changed since the last read: a
    /// subscriber that just sent everything up to the tail waits without
    /// reading again. Marks the current state seen, so `changed()` reports
    /// only what comes after it.
    fn news(&mut self) -> Option<Tail> {
        let tail = *self.changes.borrow_and_update();
        (tail.next != self.from || tail.closed || tail.gone).then_some(tail)
    }

    /// Everything from here to `tail`, framed by another subscriber that
    /// woke at this position for the same change, with this connection's
    /// control fields.
    fn shared_events(&mut self, tail: Tail) -> Option<Bytes> {
        if tail.gone {
            return None;
        }
        let shared = self.stream.shared_delivery(self.from, tail.next)?;
        let events = self.finish_events(&shared, true, tail.closed);
        self.from = tail.next;
        self.finished = tail.closed;
        Some(events)
    }

    /// The read's data and the control event after it, as one write so
    /// clients never see data without its control event. Text streams get
    /// an event per message, as appended (what the quickstart shows);
    /// JSON (one array) and base64 streams one event per read, which the
    /// conformance suite expects to be followed by a control event.
    ///
    /// A read that reached the tail is what every subscriber at this
    /// position will send next: its framing is shared with them.
    fn events(&mut self, read: ReadResult) -> Bytes {
        let up_to_date = read.up_to_date();
        let closed = read.closed && up_to_date;
        let (from, next) = (self.from, read.slice.next);
        let messages = read.slice.ends.len();
        let mut events = 0;
        let mut framed = BytesMut::new();
        if self.stream.config.is_json() {
            if !read.slice.is_empty() {
                let array = json::array_body(read.slice.data);
                put_data_event(&mut framed, &array, self.encoding);
                events = 1;
            }
        } else if self.encoding == DataEncoding::Text {
            for message in read.slice.messages() {
                put_data_event(&mut framed, &message, self.encoding);
            }
            events = messages;
        } else if !read.slice.is_empty() {
            put_data_event(&mut framed, &read.slice.data, self.encoding);
            events = 1;
        }
        put_control_head(&mut framed, next);
        self.from = next;
        self.finished = closed;
        if up_to_date && framed.len() <= MAX_SHARED_FRAMING {
            let framed = SharedFraming {
                bytes: framed.freeze(),
                messages,
                events,
            };
            self.stream.share_delivery(from, next, framed.clone());
            self.finish_events(&framed, up_to_date, closed)
        } else {
            self.put_flags(&mut framed, up_to_date, closed);
            // The data events and the control event.
            self.live.delivered(messages, events + 1, framed.len());
            framed.freeze()
        }
    }

    /// `framed` (data events and a control event's head) followed by this
    /// connection's control fields.
    fn finish_events(&mut self, framed: &SharedFraming, up_to_date: bool, closed: bool) -> Bytes {
        let capacity = framed.bytes.len() + control_tail_len(self.cursor.len());
        let mut out = BytesMut::with_capacity(capacity);
        out.extend_from_slice(&framed.bytes);
        self.put_flags(&mut out, up_to_date, closed);
        self.live
            .delivered(framed.messages, framed.events + 1, out.len());
        out.freeze()
    }

    fn put_flags(&self, out: &mut BytesMut, up_to_date: bool, closed: bool) {
        put_control_tail(
            out,
            &ControlFlags {
                stream_cursor: (!closed).then_some(self.cursor.as_str()),
                up_to_date,
                stream_closed: closed,
            },
        );
    }
}
