//! The user-facing quickstart (`shared/spec/quickstart.txt`), step by step,
//! against a server with the default configuration: every status, header
//! value and body it shows must be what a new user sees.

mod common;

use common::{ControlEvent, SseReader, TestServer, body, header, send};
use reqwest::StatusCode;
use std::time::Duration;

const PATH: &str = "my-stream";

#[tokio::test]
async fn the_quickstart_shows_what_the_server_answers() {
    let server = TestServer::start().await;

    // Create a stream.
    let created = send(server.put(PATH).header("content-type", "text/plain")).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(
        header(&created, "location"),
        Some(format!("{}/v1/stream/{PATH}", server.base))
    );
    assert_eq!(
        header(&created, "content-type").as_deref(),
        Some("text/plain")
    );
    assert_eq!(
        header(&created, "stream-next-offset").as_deref(),
        Some("0000000000000000_0000000000000000")
    );

    // Append data, twice.
    assert_eq!(
        server.append(PATH, "text/plain", "hello world").await,
        "0000000000000001_000000000000000b"
    );
    server.append(PATH, "text/plain", "second message").await;

    // Read everything.
    let read = send(server.get(PATH).query(&[("offset", "-1")])).await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(header(&read, "content-type").as_deref(), Some("text/plain"));
    assert_eq!(
        header(&read, "stream-next-offset").as_deref(),
        Some("0000000000000002_0000000000000019")
    );
    assert_eq!(header(&read, "stream-up-to-date").as_deref(), Some("true"));
    assert_eq!(
        header(&read, "etag").as_deref(),
        Some("\"-1:0000000000000002_0000000000000019\"")
    );
    assert_eq!(body(read).await, b"hello worldsecond message");

    // Resume from the saved offset: nothing new.
    let resumed = send(
        server
            .get(PATH)
            .query(&[("offset", "0000000000000002_0000000000000019")]),
    )
    .await;
    assert_eq!(resumed.status(), StatusCode::OK);
    assert_eq!(
        header(&resumed, "stream-up-to-date").as_deref(),
        Some("true")
    );
    assert!(body(resumed).await.is_empty());

    // Subscribe with SSE: the existing messages, then a control event.
    let mut events =
        SseReader::new(send(server.get(PATH).query(&[("offset", "-1"), ("live", "sse")])).await);
    for expected in ["hello world", "second message"] {
        let event = events.expect_event().await;
        assert_eq!(
            (event.event.as_str(), event.data()),
            ("data", expected.into())
        );
    }
    let control = events.expect_event().await.control();
    assert_eq!(
        control["streamNextOffset"],
        "0000000000000002_0000000000000019"
    );
    assert_eq!(control["upToDate"], true);
    assert!(control["streamCursor"].is_string(), "{control}");

    // An append from elsewhere arrives at once.
    server.append(PATH, "text/plain", "live update").await;
    let event = events
        .next_within(Duration::from_secs(2))
        .await
        .expect("live data");
    assert_eq!(
        (event.event.as_str(), event.data()),
        ("data", "live update".into())
    );
    let control = events.expect_event().await.control();
    assert_eq!(
        control["streamNextOffset"],
        "0000000000000003_0000000000000024"
    );
    // The lines look as the quickstart prints them.
    let raw = String::from_utf8_lossy(&events.raw);
    for line in [
        "event: data\ndata:hello world\n",
        "event: data\ndata:second message\n",
        "event: data\ndata:live update\n",
        "event: control\ndata:{\"streamNextOffset\":\"0000000000000002_0000000000000019\",\"streamCursor\":\"",
    ] {
        assert!(raw.contains(line), "{line:?} not in the SSE output:\n{raw}");
    }

    // Delete the stream.
    let deleted = send(server.delete(PATH)).await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
}
