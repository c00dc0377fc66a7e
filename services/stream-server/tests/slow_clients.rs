//! Slow and numerous clients (`server.header_read_timeout_secs`,
//! `max_header_bytes`, `body_idle_timeout_secs`, `body_timeout_secs`,
//! `body_min_rate_bytes`, `max_connections`): a client that dribbles its
//! request head or body is cut off within its timeout while others are
//! served as usual; oversized heads get 431; connections over the limit
//! are closed while those admitted keep working; live reads are never cut.
//!
//! The timeouts are set small; each check is "closed within the timeout
//! plus a margin", a bound on behaviour that a loaded machine still meets,
//! not a measure of speed.

mod common;

use bytes::Bytes;
use common::{ControlEvent, TestServer, header, next_offset, open_sse, send};
use reqwest::StatusCode;
use std::time::{Duration, Instant};
use stream_server::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Slack for scheduling on a busy machine, on top of a timeout.
const MARGIN: Duration = Duration::from_millis(1500);

/// A server whose connection limits `configure` sets.
async fn server_with(configure: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::start_with(configure).await
}

/// Reads until the server closes the connection (or resets it); returns
/// what arrived and when the connection ended. Fails the test if it is
/// still open after `within`.
async fn read_until_closed(socket: &mut TcpStream, within: Duration) -> (Vec<u8>, Instant) {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buffer)).await {
            Err(_) => panic!(
                "the connection is still open after {within:?}; received {:?}",
                String::from_utf8_lossy(&received)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return (received, Instant::now()),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

/// Reads one response head and its `Content-Length` body from a
/// keep-alive connection; returns the status.
async fn read_response(socket: &mut TcpStream) -> u16 {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buffer))
            .await
            .expect("a response in time")
            .expect("read the response");
        assert!(
            n > 0,
            "closed before a whole response: {:?}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&buffer[..n]);
        let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&received[..end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .map_or(0, |value| value.trim().parse().expect("a length"));
        if received.len() >= end + 4 + length {
            return status_of(&received);
        }
    }
}

fn status_of(response: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(response);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 response: {text:?}"))
}

/// Times `GET /healthz` on a fresh connection each time, as a client not
/// involved with the slow ones would see it.
async fn healthz_latencies(server: &TestServer, count: usize) -> Vec<Duration> {
    let mut latencies = Vec::new();
    for _ in 0..count {
        let client = reqwest::Client::new();
        let started = Instant::now();
        let response = send(client.get(format!("{}/healthz", server.base))).await;
        assert_eq!(response.status(), StatusCode::OK);
        latencies.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    latencies
}

/// Asserts every latency is far below the timeout the slow clients hit.
fn assert_normal(latencies: &[Duration], timeout: Duration) {
    let worst = latencies.iter().max().expect("some requests");
    assert!(
        *worst < timeout / 3,
        "a request took {worst:?} while slow clients waited out a {timeout:?} timeout"
    );
}

#[tokio::test]
async fn slowloris_heads_are_cut_off_while_other_clients_are_served() {
    const SLOW: usize = 300;
    let timeout = Duration::from_secs(3);
    let server = server_with(|c| c.server.connections.header_read_timeout_secs = 3.0).await;
    let started = Instant::now();
    let mut slow = Vec::new();
    for i in 0..SLOW {
        let socket = TcpStream::connect(server.addr).await.expect("connect");
        let (mut reader, mut writer) = socket.into_split();
        // A request line, then a header line every 200 ms, never the end.
        let dribble = tokio::spawn(async move {
            let mut line = format!("GET /healthz HTTP/1.1\r\nHost: x{i}\r\n").into_bytes();
            while writer.write_all(&line).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                line = b"X-Slow: 1\r\n".to_vec();
            }
        });
        slow.push(tokio::spawn(async move {
            let mut received = Vec::new();
            let ended = loop {
                let mut buffer = [0u8; 1024];
                match reader.read(&mut buffer).await {
                    Ok(0) | Err(_) => break Instant::now(),
                    Ok(n) => received.extend_from_slice(&buffer[..n]),
                }
            };
            dribble.abort();
            (received, ended)
        }));
    }
    let latencies = healthz_latencies(&server, 10).await;
    assert_normal(&latencies, timeout);
    for task in slow {
        let (received, ended) = tokio::time::timeout(timeout + MARGIN * 2, task)
            .await
            .expect("every slow connection is closed")
            .expect("reader task");
        assert!(
            received.is_empty(),
            "a head never finished got an answer: {:?}",
            String::from_utf8_lossy(&received)
        );
        let lived = ended - started;
        assert!(lived < timeout + MARGIN, "closed after {lived:?}");
    }
    // The server still serves after the flood.
    assert_normal(&healthz_latencies(&server, 2).await, timeout);
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_in_time() {
    let timeout = Duration::from_secs(1);
    let server = server_with(|c| c.server.connections.header_read_timeout_secs = 1.0).await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.expect("connect");
    let (received, ended) = read_until_closed(&mut silent, timeout + MARGIN).await;
    assert!(received.is_empty());
    assert!(
        ended - started >= timeout,
        "closed early: {:?}",
        ended - started
    );
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_the_header_timeout() {
    // hyper's header-read timer also runs while a kept-alive connection
    // waits for its next request.
    let timeout = Duration::from_secs(1);
    let server = server_with(|c| c.server.connections.header_read_timeout_secs = 1.0).await;
    let mut socket = TcpStream::connect(server.addr).await.expect("connect");
    socket
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    assert_eq!(read_response(&mut socket).await, 200);
    let idle_from = Instant::now();
    let (received, ended) = read_until_closed(&mut socket, timeout + MARGIN).await;
    assert!(received.is_empty());
    assert!(ended - idle_from >= timeout * 9 / 10);
}

#[tokio::test]
async fn a_body_trickle_gets_408_within_its_bound_and_nothing_is_stored() {
    let timeout = Duration::from_secs(1);
    let server = server_with(|c| {
        c.server.connections.body_timeout_secs = 1.0;
        c.server.connections.body_idle_timeout_secs = 10.0;
        c.server.connections.body_min_rate_bytes = 1024;
    })
    .await;
    let tail = server.create("trickle", "text/plain").await;
    let mut socket = TcpStream::connect(server.addr).await.expect("connect");
    socket
        .write_all(
            b"POST /v1/stream/trickle HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
              Content-Length: 100\r\n\r\n",
        )
        .await
        .expect("send the head");
    let started = Instant::now();
    let (mut reader, mut writer) = socket.into_split();
    let trickle = tokio::spawn(async move {
        // One byte every 300 ms: well under the minimum rate.
        while writer.write_all(b"x").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    let ended = loop {
        match tokio::time::timeout(timeout + MARGIN, reader.read(&mut buffer)).await {
            Err(_) => panic!("no answer within {:?}", timeout + MARGIN),
            Ok(Ok(0)) | Ok(Err(_)) => break Instant::now(),
            Ok(Ok(n)) => response.extend_from_slice(&buffer[..n]),
        }
    };
    trickle.abort();
    assert_eq!(
        status_of(&response),
        408,
        "{}",
        String::from_utf8_lossy(&response)
    );
    assert!(
        String::from_utf8_lossy(&response).contains("application/problem+json"),
        "the refusal is a problem body"
    );
    let took = ended - started;
    assert!(
        took >= timeout * 9 / 10 && took < timeout + MARGIN,
        "{took:?}"
    );
    let (data, offset) = server.read_all("trickle").await;
    assert!(data.is_empty(), "nothing was stored: {data:?}");
    assert_eq!(offset, tail);
}

#[tokio::test]
async fn a_stalled_body_gets_408_after_the_idle_timeout() {
    let idle = Duration::from_millis(700);
    let server = server_with(|c| c.server.connections.body_idle_timeout_secs = 0.7).await;
    server.create("stalled", "text/plain").await;
    let mut socket = TcpStream::connect(server.addr).await.expect("connect");
    socket
        .write_all(
            b"POST /v1/stream/stalled HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
              Content-Length: 10\r\n\r\nhalf!",
        )
        .await
        .expect("send half a body");
    let started = Instant::now();
    let (response, ended) = read_until_closed(&mut socket, idle + MARGIN).await;
    assert_eq!(status_of(&response), 408);
    assert!(ended - started >= idle * 9 / 10);
    assert!(server.read_all("stalled").await.0.is_empty());
}

#[tokio::test]
async fn a_large_honest_upload_at_a_decent_rate_is_accepted() {
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 32;
    // The upload takes longer than the base body timeout; the bytes it
    // sends earn it the time.
    let server = server_with(|c| {
        c.server.connections.body_timeout_secs = 0.5;
        c.server.connections.body_min_rate_bytes = 1024;
    })
    .await;
    server.create("large", "application/octet-stream").await;
    let chunks = futures_util::stream::unfold(0, |sent| async move {
        if sent == CHUNKS {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
        Some((
            Ok::<_, std::io::Error>(Bytes::from(vec![b'a' + (sent % 26) as u8; CHUNK])),
            sent + 1,
        ))
    });
    let started = Instant::now();
    let response = send(
        server
            .post("large")
            .header("content-type", "application/octet-stream")
            .body(reqwest::Body::wrap_stream(chunks)),
    )
    .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(
        started.elapsed() > Duration::from_millis(500),
        "the upload outlasted the base timeout"
    );
    let (data, _) = server.read_all("large").await;
    assert_eq!(data.len(), CHUNK * CHUNKS);
}

#[tokio::test]
async fn oversized_request_heads_get_431() {
    let server = server_with(|c| c.server.connections.max_header_bytes = 8192).await;
    let exchange = |filler: usize| {
        let addr = server.addr;
        async move {
            let mut socket = TcpStream::connect(addr).await.expect("connect");
            let request = format!(
                "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\nConnection: close\r\n\r\n",
                "f".repeat(filler)
            );
            socket.write_all(request.as_bytes()).await.expect("send");
            let (response, _) = read_until_closed(&mut socket, Duration::from_secs(10)).await;
            status_of(&response)
        }
    };
    assert_eq!(exchange(4 * 1024).await, 200, "a head that fits");
    assert_eq!(exchange(16 * 1024).await, 431, "a head that does not");
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_while_admitted_ones_keep_working() {
    let mut server = server_with(|c| {
        c.server.connections.max_connections = 2;
        c.server.connections.header_read_timeout_secs = 30.0;
    })
    .await;
    // The harness's client keeps the connection it checked health on;
    // dropping the client closes it and frees its slot.
    server.client = reqwest::Client::new();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut admitted = Vec::new();
    while admitted.len() < 2 {
        let mut socket = TcpStream::connect(server.addr).await.expect("connect");
        socket.write_all(request).await.expect("send");
        admitted.push(socket);
        let status = read_response(admitted.last_mut().expect("socket")).await;
        assert_eq!(status, 200);
    }

    // One more waits a moment for a slot, then is closed unanswered.
    let started = Instant::now();
    let mut extra = TcpStream::connect(server.addr).await.expect("connect");
    extra.write_all(request).await.expect("send");
    let wait = service_common::serve::SLOT_WAIT;
    let (received, ended) = read_until_closed(&mut extra, wait + MARGIN).await;
    assert!(
        received.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&received)
    );
    assert!(
        ended - started >= wait * 9 / 10,
        "it waited for a slot first"
    );

    // The admitted connections are still served.
    for socket in &mut admitted {
        socket.write_all(request).await.expect("send again");
        assert_eq!(read_response(socket).await, 200);
    }

    // A connection waiting when a slot frees up gets it.
    let mut waiting = TcpStream::connect(server.addr).await.expect("connect");
    waiting.write_all(request).await.expect("send");
    tokio::time::sleep(wait / 4).await;
    drop(admitted.pop());
    assert_eq!(read_response(&mut waiting).await, 200);
}

#[tokio::test]
async fn live_reads_outlast_every_request_timeout() {
    let server = server_with(|c| {
        c.server.connections.header_read_timeout_secs = 0.5;
        c.server.connections.body_idle_timeout_secs = 0.5;
        c.server.connections.body_timeout_secs = 0.5;
        c.server.long_poll_timeout_secs = 2.0;
    })
    .await;
    let tail = server.create("live", "text/plain").await;
    let mut events = open_sse(&server, "live", &tail).await;
    assert_eq!(events.expect_event().await.control()["upToDate"], true);
    let poll = tokio::spawn(send(
        server
            .get("live")
            .query(&[("offset", tail.as_str()), ("live", "long-poll")]),
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.append("live", "text/plain", "late").await;
    let data = events.expect_event().await;
    assert_eq!(
        data.data(),
        "late",
        "the SSE response outlived the timeouts"
    );
    let poll = poll.await.expect("long-poll task");
    assert_eq!(
        poll.status(),
        StatusCode::OK,
        "the long-poll got the append"
    );
    assert_eq!(header(&poll, "stream-up-to-date").as_deref(), Some("true"));
    assert_ne!(next_offset(&poll), tail);
}

mod http2 {
    //! The same bounds over HTTP/2 (prior knowledge, as h2c).

    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};
    use hyper::body::Frame;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    /// An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
    const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

    type Sender<B> = hyper::client::conn::http2::SendRequest<B>;

    async fn connect<B>(server: &TestServer) -> Sender<B>
    where
        B: hyper::body::Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let socket = TcpStream::connect(server.addr).await.expect("connect");
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(socket))
                .await
                .expect("HTTP/2 handshake");
        tokio::spawn(connection);
        sender
    }

    #[tokio::test]
    async fn a_connection_that_only_sends_the_preface_is_closed_in_time() {
        let timeout = Duration::from_secs(1);
        let server = server_with(|c| c.server.connections.header_read_timeout_secs = 1.0).await;
        let started = Instant::now();
        let mut socket = TcpStream::connect(server.addr).await.expect("connect");
        socket.write_all(PREFACE).await.expect("preface");
        socket.write_all(SETTINGS).await.expect("settings");
        let (_, ended) = read_until_closed(&mut socket, timeout + MARGIN).await;
        assert!(ended - started >= timeout * 9 / 10);
        assert_normal(&healthz_latencies(&server, 2).await, timeout * 3);
    }

    #[tokio::test]
    async fn an_idle_connection_is_sent_goaway_and_closed() {
        let timeout = Duration::from_secs(1);
        let server = server_with(|c| c.server.connections.header_read_timeout_secs = 1.0).await;
        let mut sender = connect::<Full<Bytes>>(&server).await;
        let request = http::Request::get(format!("{}/healthz", server.base))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        assert_eq!(response.status(), 200);
        drop(response);
        let idle_from = Instant::now();
        // GOAWAY after a quiet period; the client side then closes.
        let closed = tokio::time::timeout(timeout * 2 + MARGIN, async {
            while sender.ready().await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "still usable after {:?}",
            idle_from.elapsed()
        );
        assert!(idle_from.elapsed() >= timeout * 9 / 10);
    }

    #[tokio::test]
    async fn oversized_header_lists_get_431() {
        let server = server_with(|c| c.server.connections.max_header_bytes = 8192).await;
        let mut sender = connect::<Full<Bytes>>(&server).await;
        let request = |filler: usize| {
            http::Request::get(format!("{}/healthz", server.base))
                .header("x-filler", "f".repeat(filler))
                .body(Full::new(Bytes::new()))
                .expect("request")
        };
        let fits = sender.send_request(request(4 * 1024)).await.expect("fits");
        assert_eq!(fits.status(), 200);
        let status = sender
            .send_request(request(16 * 1024))
            .await
            .map(|response| response.status());
        assert_eq!(status.expect("an answer"), 431);
    }

    #[tokio::test]
    async fn a_body_trickle_gets_408() {
        let timeout = Duration::from_secs(1);
        let server = server_with(|c| {
            c.server.connections.body_timeout_secs = 1.0;
            c.server.connections.body_min_rate_bytes = 1024;
        })
        .await;
        server.create("h2-trickle", "text/plain").await;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let body = StreamBody::new(futures_util::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
                .map(|chunk| chunk.map(|bytes| Ok::<_, std::io::Error>(Frame::data(bytes))))
        }));
        let mut sender = connect::<StreamBody<_>>(&server).await;
        let trickle = tokio::spawn(async move {
            while tx.send(Bytes::from_static(b"x")).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        let request = http::Request::post(server.url("h2-trickle"))
            .header("content-type", "text/plain")
            .body(body)
            .expect("request");
        let started = Instant::now();
        let response = tokio::time::timeout(timeout + MARGIN, sender.send_request(request))
            .await
            .expect("an answer in time")
            .expect("a response");
        trickle.abort();
        assert_eq!(response.status(), 408);
        assert!(started.elapsed() >= timeout * 9 / 10);
        let problem = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert!(String::from_utf8_lossy(&problem).contains("too slowly"));
        assert!(server.read_all("h2-trickle").await.0.is_empty());
    }
}
