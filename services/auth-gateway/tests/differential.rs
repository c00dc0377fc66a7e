//! The gateway's authorisation against stream-server's resolution: the same
//! random and hostile stream paths and `Stream-Forked-From` values (spaces,
//! tabs, percent- and double encoding, dot segments, `//`, non-ASCII,
//! overlong) go through the gateway and straight to the server, over
//! HTTP/1.1 and HTTP/2, and both must name the same stream or both refuse.
//! Whatever the gateway lets through acts only on streams the token may
//! touch.
//!
//! Requests are sent with hyper's client so URIs and header bytes arrive
//! exactly as generated (a URL library would normalise them first).

mod common;

use auth_gateway::http::control;
use bytes::Bytes;
use common::Stack;
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use service_common::stream_path;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Streams that exist, each holding its own name as content. The token may
/// read those under `pub/` only.
const SOURCES: [&str; 5] = ["pub/a", "pub/b c", "pub/é", "secret/a", "payroll"];

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct World {
    stack: Stack,
    token: String,
    h1: HttpClient,
    h2: HttpClient,
    next: AtomicUsize,
}

impl World {
    fn client(&self, http2: bool) -> &HttpClient {
        if http2 { &self.h2 } else { &self.h1 }
    }

    /// Sends a request with the path and header bytes as given.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        http2: bool,
        method: Method,
        base: &str,
        path: &str,
        token: Option<&str>,
        fork_from: Option<&[u8]>,
    ) -> Option<(StatusCode, String)> {
        let uri: Uri = format!("{base}{path}").parse().ok()?;
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "text/plain");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(value) = fork_from {
            request = request.header("stream-forked-from", HeaderValue::from_bytes(value).ok()?);
        }
        let request = request.body(Full::new(Bytes::new())).ok()?;
        let response = self
            .client(http2)
            .request(request)
            .await
            .expect("transport");
        let status = response.status();
        let text = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        Some((status, String::from_utf8_lossy(&text).into_owned()))
    }

    /// The content of the stream at URL path `path` on the server, if it
    /// exists.
    async fn content(&self, path: &str) -> Option<String> {
        let (status, text) = self
            .send(
                false,
                Method::GET,
                &self.stack.upstream.base,
                &format!("{path}?offset=-1"),
                None,
                None,
            )
            .await?;
        (status == StatusCode::OK).then_some(text)
    }

    fn fresh(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.next.fetch_add(1, Ordering::SeqCst))
    }
}

fn world(runtime: &tokio::runtime::Runtime) -> World {
    runtime.block_on(async {
        let stack = Stack::start().await;
        for source in SOURCES {
            let encoded = encode(source);
            let created = common::send(
                stack
                    .client
                    .put(stack.upstream_url(&encoded))
                    .header("content-type", "text/plain")
                    .body(source),
            )
            .await;
            assert_eq!(created.status(), StatusCode::CREATED, "{source}");
        }
        let token = stack
            .issue("alice", &["read", "write"], &["pub/**", "mine/**"])
            .await
            .token;
        let h1 = Client::builder(TokioExecutor::new()).build_http();
        let h2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
        World {
            stack,
            token,
            h1,
            h2,
            next: AtomicUsize::new(0),
        }
    })
}

/// A stream path in URL form: every byte but unreserved ones and `/`
/// percent-encoded.
fn encode(path: &str) -> String {
    percent_encoding::utf8_percent_encode(path, percent_encoding::NON_ALPHANUMERIC)
        .to_string()
        .replace("%2F", "/")
        .replace("%2D", "-")
}

/// One way of spelling a reference to `name`.
fn spelling(name: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let prefix = prop::sample::select(vec![
        "",
        "/",
        "/v1/stream/",
        "//",
        "/v1/stream//",
        "/v1/stream/./",
        "/v1//stream/",
        "./",
        "x/../",
        "/v1/stream/x/../",
        "%2Fv1%2Fstream%2F",
    ]);
    let padding = prop::sample::select(vec!["", " ", "\t", "  \t", " / "]);
    let encoding = prop::sample::select(vec![0u8, 1, 2, 3]);
    (padding.clone(), prefix, encoding, padding).prop_map(
        move |(before, prefix, encoding, after)| {
            let body = match encoding {
                0 => encode(name),
                1 => name.to_owned(),
                // Everything encoded, slashes included.
                2 => {
                    percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC)
                        .to_string()
                }
                // Encoded twice.
                _ => encode(name).replace('%', "%25"),
            };
            format!("{before}{prefix}{body}{after}").into_bytes()
        },
    )
}

/// Random bytes shaped like paths, with the characters that matter.
fn noise() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop::sample::select(b" \t/%.25Ffpubsecrtay\xc3\xa9\x80v1_-".to_vec()),
        0..48,
    )
}

fn fork_source() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(SOURCES.to_vec()).prop_flat_map(spelling),
        noise(),
        // Overlong: past the length or segment limits.
        (1usize..3).prop_map(|n| format!("/v1/stream/{}", "pub/".repeat(n * 300)).into_bytes()),
    ]
}

/// Checks one fork source over one protocol.
async fn fork_agrees(world: &World, source: &[u8], http2: bool) -> Result<(), TestCaseError> {
    let gateway_target = format!("/v1/stream/mine/{}", world.fresh("g"));
    let server_target = format!("/v1/stream/mine/{}", world.fresh("d"));
    let Some((through_gateway, _)) = world
        .send(
            http2,
            Method::PUT,
            &world.stack.gateway.base,
            &gateway_target,
            Some(&world.token),
            Some(source),
        )
        .await
    else {
        // Bytes no HTTP header can carry: nothing to compare.
        return Ok(());
    };
    let (direct, _) = world
        .send(
            http2,
            Method::PUT,
            &world.stack.upstream.base,
            &server_target,
            None,
            Some(source),
        )
        .await
        .expect("the same request goes straight to the server");
    let forked = world.content(&gateway_target).await;
    let server_forked = world.content(&server_target).await;
    let shown = String::from_utf8_lossy(source);
    match through_gateway {
        StatusCode::BAD_REQUEST => {
            prop_assert_eq!(
                direct,
                StatusCode::BAD_REQUEST,
                "gateway 400, server not: {:?}",
                shown
            );
        }
        StatusCode::FORBIDDEN => {
            prop_assert!(forked.is_none());
            prop_assert_ne!(
                direct,
                StatusCode::BAD_REQUEST,
                "gateway judged, server refused: {:?}",
                shown
            );
            if let Some(name) = &server_forked {
                prop_assert!(
                    !name.starts_with("pub/"),
                    "gateway refused {:?}, a readable {}",
                    shown,
                    name
                );
            }
        }
        StatusCode::CREATED => {
            let name = forked.expect("the fork exists");
            prop_assert!(
                name.starts_with("pub/"),
                "forked {} through the gateway from {:?}",
                name,
                shown
            );
            prop_assert_eq!(Some(&name), server_forked.as_ref(), "{:?}", shown);
        }
        StatusCode::NOT_FOUND => {
            prop_assert!(forked.is_none());
            prop_assert_eq!(direct, StatusCode::NOT_FOUND, "{:?}", shown);
        }
        other => prop_assert!(false, "gateway answered {} to {:?}", other, shown),
    }
    Ok(())
}

#[test]
fn fork_sources_name_the_same_stream_or_are_refused_by_both() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let world = world(&runtime);
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 160,
        ..ProptestConfig::default()
    });
    let result = runner.run(&(fork_source(), any::<bool>()), |(source, http2)| {
        runtime.block_on(fork_agrees(&world, &source, http2))
    });
    runtime.block_on(world.stack.finish());
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// A hostile stream URL path: `mine/` spelled many ways, with traversal
/// towards `secret/`.
fn target_path() -> impl Strategy<Value = String> {
    let segment = prop::sample::select(vec![
        "mine",
        "secret",
        "a",
        ".",
        "..",
        "%2e%2e",
        "%2E",
        "",
        "%2F",
        "..%2F",
        "%252e%252e",
        "%6dine",
        "mine%2Fsecret",
        "%00",
        "%C3%A9",
        "%FF",
        "a%20b",
        "__ds",
    ]);
    prop::collection::vec(segment, 1..7).prop_map(|segments| segments.join("/"))
}

async fn path_agrees(world: &World, raw: &str, http2: bool) -> Result<(), TestCaseError> {
    let limits = world.stack.config.path_limits();
    let unique = world.fresh("p");
    let path = format!("{raw}/{unique}");
    let Some((through_gateway, _)) = world
        .send(
            http2,
            Method::PUT,
            &world.stack.gateway.base,
            &format!("/v1/stream/{path}"),
            Some(&world.token),
            None,
        )
        .await
    else {
        return Ok(());
    };
    match through_gateway {
        StatusCode::CREATED => {
            let name = stream_path::decode(&path, limits).expect("the gateway resolved it");
            prop_assert!(
                name.starts_with("mine/") || name.starts_with("pub/"),
                "created {}",
                name
            );
            // The server created exactly that stream.
            let exists = world
                .content(&format!("/v1/stream/{}", encode(&name)))
                .await;
            prop_assert!(
                exists.is_some(),
                "{} created through {:?} is not there",
                name,
                raw
            );
        }
        StatusCode::BAD_REQUEST => {
            let (direct, _) = world
                .send(
                    http2,
                    Method::PUT,
                    &world.stack.upstream.base,
                    &format!("/v1/stream/{path}"),
                    None,
                    None,
                )
                .await
                .expect("sent");
            prop_assert_eq!(direct, StatusCode::BAD_REQUEST, "{:?}", raw);
        }
        StatusCode::FORBIDDEN => {
            let name = stream_path::decode(&path, limits).expect("the gateway resolved it");
            prop_assert!(!name.starts_with("mine/") && !name.starts_with("pub/"));
        }
        StatusCode::NOT_FOUND => {
            // Only control routes the gateway does not know end here; they
            // are never forwarded.
            prop_assert!(
                control::control_rest(&path, limits).is_some(),
                "404 for {:?}",
                raw
            );
        }
        other => prop_assert!(false, "gateway answered {} to {:?}", other, raw),
    }
    Ok(())
}

#[test]
fn stream_paths_name_the_same_stream_or_are_refused_by_both() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let world = world(&runtime);
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 160,
        ..ProptestConfig::default()
    });
    let result = runner.run(&(target_path(), any::<bool>()), |(raw, http2)| {
        runtime.block_on(path_agrees(&world, &raw, http2))
    });
    runtime.block_on(world.stack.finish());
    if let Err(e) = result {
        panic!("{e}");
    }
}
