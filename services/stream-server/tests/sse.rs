//! Server-Sent Events reads (PROTOCOL.md §5.8, §8 `now`): text versus base64
//! data encoding, one `data:` line per line of text (CR, LF and CRLF),
//! a control event after every data event, live delivery, closure ending the
//! connection, and the reconnect interval ending it too.

mod common;

use base64::Engine;
use common::{ControlEvent, SseEvent, SseReader, TestServer, header, open_sse, send};
use reqwest::StatusCode;
use std::time::{Duration, Instant};

const STANDARD: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A server whose SSE responses end after `secs` without news.
async fn server_with_interval(secs: f64) -> TestServer {
    TestServer::start_with(|c| c.server.sse_reconnect_interval_secs = secs).await
}

fn assert_open_control(event: &SseEvent, next: &str, up_to_date: bool) {
    let control = event.control();
    assert_eq!(control["streamNextOffset"], next, "{control}");
    assert!(
        control["streamCursor"]
            .as_str()
            .is_some_and(|c| c.parse::<u64>().is_ok()),
        "open streams' controls carry a numeric streamCursor: {control}"
    );
    assert_eq!(
        control["upToDate"].as_bool().unwrap_or(false),
        up_to_date,
        "{control}"
    );
    assert!(control.get("streamClosed").is_none(), "{control}");
}

#[tokio::test]
async fn text_streams_carry_text_then_a_control_event() {
    let server = server_with_interval(10.0).await;
    server.create("t", "text/plain; charset=utf-8").await;
    let tail = server.append("t", "text/plain", "hello world").await;

    let response = send(server.get("t").query(&[("offset", "-1"), ("live", "sse")])).await;
    assert!(
        header(&response, "stream-sse-data-encoding").is_none(),
        "text streams are not base64-encoded"
    );
    let mut events = SseReader::new(response);
    let data = events.expect_event().await;
    assert_eq!(data.event, "data");
    assert_eq!(data.data(), "hello world");
    assert_open_control(&events.expect_event().await, &tail, true);
}

#[tokio::test]
async fn binary_streams_are_base64_encoded() {
    let server = server_with_interval(10.0).await;
    server.create("b", "application/octet-stream").await;
    // Long enough for the base64 text to span several data: lines.
    let payload: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 256) as u8).collect();
    let tail = server
        .append("b", "application/octet-stream", payload.clone())
        .await;

    let response = send(server.get("b").query(&[("offset", "-1"), ("live", "sse")])).await;
    assert_eq!(
        header(&response, "stream-sse-data-encoding").as_deref(),
        Some("base64")
    );
    let mut events = SseReader::new(response);
    let data = events.expect_event().await;
    assert_eq!(data.event, "data");
    assert!(
        data.lines.len() > 1,
        "long base64 may be split across lines"
    );
    let joined: String = data.lines.concat();
    assert_eq!(joined.len() % 4, 0, "base64 text length is a multiple of 4");
    let decoded = STANDARD.decode(&joined).expect("standard base64");
    assert_eq!(decoded, payload);
    assert_open_control(&events.expect_event().await, &tail, true);
}

#[tokio::test]
async fn json_streams_carry_text_arrays() {
    let server = server_with_interval(10.0).await;
    server.create("j", "application/json").await;
    server
        .append("j", "application/json", r#"[{"k":"v"},{"k":"w"}]"#)
        .await;
    let response = send(server.get("j").query(&[("offset", "-1"), ("live", "sse")])).await;
    assert!(header(&response, "stream-sse-data-encoding").is_none());
    let mut events = SseReader::new(response);
    let data = events.expect_event().await;
    assert_eq!(data.event, "data");
    let value: serde_json::Value = serde_json::from_str(&data.data()).expect("a JSON array");
    assert_eq!(value, serde_json::json!([{"k": "v"}, {"k": "w"}]));
}

#[tokio::test]
async fn every_line_break_starts_a_new_data_line() {
    let server = server_with_interval(10.0).await;
    server.create("t", "text/plain").await;
    server
        .append("t", "text/plain", "a\rb\nc\r\nd\n\ne\n")
        .await;

    let mut events = open_sse(&server, "t", "-1").await;
    let data = events.expect_event().await;
    assert_eq!(data.event, "data");
    assert_eq!(data.lines, ["a", "b", "c", "d", "", "e", ""]);
    // What a client reconstructs: every break becomes LF.
    assert_eq!(data.data(), "a\nb\nc\nd\n\ne\n");
    events.expect_event().await.control();
    // The reader also fails on any raw CR in the body.
    assert!(!events.raw.contains(&b'\r'));
}

/// A text line beginning with a space must survive SSE framing: the SSE
/// standard strips one space after `data:`, so the server has to write
/// `data: ` (with the separator space) before such a line.
#[tokio::test]
async fn leading_spaces_survive_sse_framing() {
    let server = server_with_interval(10.0).await;
    server.create("t", "text/plain").await;
    server.append("t", "text/plain", " indented\n  twice").await;
    let mut events = open_sse(&server, "t", "-1").await;
    let data = events.expect_event().await;
    assert_eq!(data.data(), " indented\n  twice");
}

#[tokio::test]
async fn every_data_event_is_followed_by_a_control_event() {
    let server = TestServer::start_with(|c| {
        c.http.max_read_bytes = 16;
        c.server.sse_reconnect_interval_secs = 10.0;
    })
    .await;
    server.create("t", "text/plain").await;
    let mut expected = String::new();
    let mut boundaries = Vec::new();
    for i in 0..12 {
        let message = format!("message {i:02};");
        expected.push_str(&message);
        boundaries.push(server.append("t", "text/plain", message).await);
    }
    let tail = boundaries.last().cloned().expect("appended");

    let mut events = open_sse(&server, "t", "-1").await;
    let mut received = String::new();
    let mut previous = String::new();
    loop {
        let data = events.expect_event().await;
        assert_eq!(data.event, "data", "data comes first: {data:?}");
        received.push_str(&data.data());
        let control = events.expect_event().await;
        assert_eq!(
            control.event, "control",
            "a control follows every data event"
        );
        let next = control.control()["streamNextOffset"]
            .as_str()
            .expect("streamNextOffset")
            .to_owned();
        assert!(next > previous, "offsets advance: {next} after {previous}");
        assert!(boundaries.contains(&next), "{next} is an append boundary");
        if next == tail {
            assert_open_control(&control, &tail, true);
            break;
        }
        assert_open_control(&control, &next, false);
        previous = next;
    }
    assert_eq!(received, expected);
}

#[tokio::test]
async fn appends_are_delivered_live() {
    let server = server_with_interval(10.0).await;
    server.create("t", "text/plain").await;
    let start = server.append("t", "text/plain", "history").await;

    let mut events = open_sse(&server, "t", "now").await;
    // No history: the first event is the control at the tail.
    let first = events.expect_event().await;
    assert_open_control(&first, &start, true);

    for word in ["one", "two"] {
        let tail = server.append("t", "text/plain", word).await;
        let data = events.expect_event().await;
        assert_eq!(
            (data.event.as_str(), data.data()),
            ("data", word.to_owned())
        );
        assert_open_control(&events.expect_event().await, &tail, true);
    }
}

/// Subscribers waking at the same position send one framing of the new
/// data between them (`Stream::shared_delivery`); each must still get its
/// own cursor, and one further behind must get everything it missed.
#[tokio::test]
async fn subscribers_at_one_position_each_get_their_own_cursor() {
    let server = server_with_interval(10.0).await;
    let start = server.create("t", "text/plain").await;
    let first = server.append("t", "text/plain", "first").await;
    // A far-future echoed cursor is answered with a later, jittered one.
    let far_cursor = "9000000000";
    let mut readers = vec![
        open_sse(&server, "t", &first).await,
        open_sse(&server, "t", &first).await,
        SseReader::new(
            send(server.get("t").query(&[
                ("offset", first.as_str()),
                ("live", "sse"),
                ("cursor", far_cursor),
            ]))
            .await,
        ),
    ];
    let mut cursors = Vec::new();
    for reader in &mut readers {
        let control = reader.expect_event().await.control();
        assert_open_control_value(&control, &first);
        cursors.push(control["streamCursor"].as_str().unwrap().to_owned());
    }
    assert!(cursors[2].parse::<u64>().unwrap() > far_cursor.parse().unwrap());
    let mut behind = open_sse(&server, "t", &start).await;

    for word in ["one", "two\nlines", "three"] {
        let tail = server.append("t", "text/plain", word).await;
        for (reader, cursor) in readers.iter_mut().zip(&cursors) {
            assert_eq!(reader.expect_event().await.data(), word);
            let control = reader.expect_event().await.control();
            assert_open_control_value(&control, &tail);
            assert_eq!(control["streamCursor"], cursor.as_str(), "{control}");
        }
    }
    let tail = server.close("t").await;
    for reader in &mut readers {
        let control = reader.expect_event().await.control();
        assert_eq!(control["streamNextOffset"], tail.as_str());
        assert_eq!(control["streamClosed"], true, "{control}");
        assert!(control.get("streamCursor").is_none(), "{control}");
        assert!(reader.next().await.is_none());
    }

    let mut seen = Vec::new();
    while let Some(event) = behind.next().await {
        if event.event == "data" {
            seen.push(event.data());
        }
    }
    assert_eq!(seen, ["first", "one", "two\nlines", "three"]);
}

fn assert_open_control_value(control: &serde_json::Value, next: &str) {
    assert_eq!(control["streamNextOffset"], next, "{control}");
    assert_eq!(control["upToDate"], true, "{control}");
    assert!(control.get("streamClosed").is_none(), "{control}");
}

#[tokio::test]
async fn closure_sends_stream_closed_and_ends_the_response() {
    let server = server_with_interval(10.0).await;
    let start = server.create("t", "text/plain").await;
    let mut events = open_sse(&server, "t", &start).await;
    assert_open_control(&events.expect_event().await, &start, true);

    let closing = send(
        server
            .post("t")
            .header("content-type", "text/plain")
            .header("stream-closed", "true")
            .body("the end"),
    )
    .await;
    assert_eq!(closing.status(), StatusCode::NO_CONTENT);
    let tail = common::next_offset(&closing);

    let data = events.expect_event().await;
    assert_eq!(data.data(), "the end");
    let control = events.expect_event().await.control();
    assert_eq!(control["streamNextOffset"], tail.as_str());
    assert_eq!(control["streamClosed"], true, "{control}");
    assert!(control.get("streamCursor").is_none(), "{control}");
    assert!(
        events.next().await.is_none(),
        "the server closes the connection after streamClosed"
    );
}

#[tokio::test]
async fn closed_stream_at_tail_sends_one_control_and_ends() {
    let server = server_with_interval(10.0).await;
    server.create("t", "text/plain").await;
    server.append("t", "text/plain", "done").await;
    let tail = server.close("t").await;

    for offset in [tail.as_str(), "now"] {
        let mut events = open_sse(&server, "t", offset).await;
        let control = events.expect_event().await.control();
        assert_eq!(control["streamNextOffset"], tail.as_str());
        assert_eq!(control["streamClosed"], true);
        assert_eq!(control["upToDate"], true);
        assert!(events.next().await.is_none(), "offset {offset}");
    }

    // From the start: the data, then the closing control.
    let mut events = open_sse(&server, "t", "-1").await;
    assert_eq!(events.expect_event().await.data(), "done");
    assert_eq!(events.expect_event().await.control()["streamClosed"], true);
    assert!(events.next().await.is_none());
}

/// A server whose SSE responses end after `secs`, an empty text stream
/// `t` on it, and an SSE connection following `t` from its tail (its first
/// control event already read), with the time it was opened.
async fn follow_new_stream(secs: f64) -> (TestServer, SseReader, Instant) {
    let server = server_with_interval(secs).await;
    let start = server.create("t", "text/plain").await;
    let opened = Instant::now();
    let mut events = open_sse(&server, "t", &start).await;
    assert_open_control(&events.expect_event().await, &start, true);
    (server, events, opened)
}

#[tokio::test]
async fn connections_end_after_the_reconnect_interval() {
    let (_server, mut events, opened) = follow_new_stream(0.4).await;
    let end = events.next_within(Duration::from_secs(3)).await;
    assert!(end.is_none(), "no events without appends: {end:?}");
    let lasted = opened.elapsed();
    assert!(
        lasted >= Duration::from_millis(350) && lasted < Duration::from_secs(2),
        "the connection lasted {lasted:?}"
    );
}

/// The reconnect interval ends a connection that never waits for news
/// too: a subscriber fed an append every 20 ms is still let go on time.
#[tokio::test]
async fn busy_connections_end_after_the_reconnect_interval() {
    let (server, mut events, opened) = follow_new_stream(0.5).await;
    let mut delivered = 0;
    let ended = 'connection: loop {
        server.append("t", "text/plain", "tick").await;
        // The append's data event, then its control event.
        loop {
            match events.next_within(Duration::from_secs(3)).await {
                None => break 'connection opened.elapsed(),
                Some(event) if event.event == "data" => delivered += 1,
                Some(_) => break,
            }
        }
        assert!(opened.elapsed() < Duration::from_secs(3), "never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(delivered >= 5, "only {delivered} appends delivered");
    assert!(
        ended >= Duration::from_millis(450) && ended < Duration::from_secs(2),
        "the connection lasted {ended:?}"
    );
}

#[tokio::test]
async fn sse_request_errors() {
    let server = server_with_interval(10.0).await;
    let missing = send(
        server
            .get("missing")
            .query(&[("offset", "-1"), ("live", "sse")]),
    )
    .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    server.create("t", "text/plain").await;
    let no_offset = send(server.get("t").query(&[("live", "sse")])).await;
    assert_eq!(no_offset.status(), StatusCode::BAD_REQUEST);
    let bad_offset = send(server.get("t").query(&[("offset", "x"), ("live", "sse")])).await;
    assert_eq!(bad_offset.status(), StatusCode::BAD_REQUEST);
}

/// A well-formed offset that names no position in the stream (inside a
/// message, or past the tail) is refused with 400 by catch-up and long-poll
/// reads. SSE must refuse it too: a 200 with an empty event stream carries
/// no control event, so a client reconnects with the same offset forever.
#[tokio::test]
async fn offsets_that_are_not_positions_are_rejected() {
    let server = server_with_interval(10.0).await;
    server.create("t", "text/plain").await;
    server.append("t", "text/plain", "hello").await;
    let inside_a_message = "0000000000000000_0000000000000002";
    let past_the_tail = "0000000000000009_00000000000000ff";
    for offset in [inside_a_message, past_the_tail] {
        let catch_up = server.read_from("t", offset).await;
        assert_eq!(
            catch_up.status(),
            StatusCode::BAD_REQUEST,
            "catch-up at {offset}"
        );
        let sse = send(
            server
                .get("t")
                .query(&[("offset", offset), ("live", "sse")]),
        )
        .await;
        assert_eq!(sse.status(), StatusCode::BAD_REQUEST, "SSE at {offset}");
    }
}
