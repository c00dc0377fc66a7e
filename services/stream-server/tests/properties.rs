//! Property tests over HTTP: random sequences of appends (random sizes,
//! random read-chunk limits, random JSON batches, random producer retries)
//! against a fresh server per case, checked against a simple model: the
//! catch-up read is the concatenation of what was accepted, chunked reads
//! end on append boundaries, and resuming from any acknowledged offset
//! yields exactly the rest.
//!
//! Case counts are small: every case starts a server and makes real requests.

mod common;

use common::{TestServer, body, header, json_body, next_offset, send};
use proptest::collection::vec;
use proptest::prelude::*;
use reqwest::StatusCode;
use serde_json::Value;

const OCTETS: &str = "application/octet-stream";

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 16,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Runs one async case on its own runtime.
fn run(
    case: impl std::future::Future<Output = Result<(), TestCaseError>>,
) -> Result<(), TestCaseError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build a runtime")
        .block_on(case)
}

/// A few JSON values of assorted shapes.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(Value::from),
        "[a-z \\n\"\\\\]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..3).prop_map(Value::Array),
            vec(("[a-z]{1,3}", inner), 0..3)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn catch_up_reads_reassemble_the_appends(
        appends in vec(vec(any::<u8>(), 1..120), 1..24),
        max_read_bytes in 1usize..300,
    ) {
        run(async move {
            let server = TestServer::start_with(|c| c.http.max_read_bytes = max_read_bytes).await;
            server.create("s", OCTETS).await;
            let mut offsets = vec!["-1".to_owned()];
            let mut expected = Vec::new();
            for append in &appends {
                offsets.push(server.append("s", OCTETS, append.clone()).await);
                expected.extend_from_slice(append);
            }

            // One pass of chunked reads from the start.
            let mut offset = "-1".to_owned();
            let mut data = Vec::new();
            loop {
                let response = server.read_from("s", &offset).await;
                prop_assert_eq!(response.status(), StatusCode::OK);
                let up_to_date = header(&response, "stream-up-to-date").is_some();
                offset = next_offset(&response);
                prop_assert!(offsets.contains(&offset), "chunk ended off a boundary");
                let chunk = body(response).await;
                prop_assert!(
                    chunk.len() <= max_read_bytes
                        || appends.iter().any(|a| a.as_slice() == chunk.as_slice()),
                    "a {}-byte chunk over the {}-byte limit is not a single append",
                    chunk.len(),
                    max_read_bytes
                );
                data.extend_from_slice(&chunk);
                if up_to_date {
                    break;
                }
            }
            prop_assert_eq!(&data, &expected);
            prop_assert_eq!(Some(&offset), offsets.last());

            // Resuming at each acknowledged offset starts at the next append.
            let mut consumed = 0;
            for (i, from) in offsets.iter().enumerate().take(appends.len()) {
                let response = server.read_from("s", from).await;
                let chunk = body(response).await;
                prop_assert!(!chunk.is_empty());
                prop_assert_eq!(&chunk[..], &expected[consumed..consumed + chunk.len()]);
                prop_assert!(chunk.len() >= appends[i].len(), "whole messages only");
                consumed += appends[i].len();
            }
            Ok(())
        })?;
    }

    #[test]
    fn json_batches_flatten_into_one_array(
        batches in vec(prop_oneof![
            json_value().prop_map(|v| vec![v]).prop_filter("not a batch", |v| !v[0].is_array()),
            vec(json_value(), 1..4),
        ], 1..12),
    ) {
        run(async move {
            let server = TestServer::start().await;
            server.create("j", "application/json").await;
            let mut expected = Vec::new();
            for batch in &batches {
                let body = if batch.len() == 1 && !batch[0].is_array() {
                    serde_json::to_string(&batch[0])
                } else {
                    serde_json::to_string_pretty(batch)
                }
                .expect("serialise");
                let response = send(server.post("j").header("content-type", "application/json").body(body)).await;
                prop_assert_eq!(response.status(), StatusCode::NO_CONTENT);
                expected.extend(batch.iter().cloned());
            }
            let read = json_body(server.read_from("j", "-1").await).await;
            prop_assert_eq!(read, Value::Array(expected));
            Ok(())
        })?;
    }

    #[test]
    fn producer_retries_follow_the_state_machine(
        requests in vec((0u64..3, 0u64..6), 1..30),
    ) {
        run(async move {
            let server = TestServer::start().await;
            server.create("s", OCTETS).await;
            // Model: the producer's (epoch, last seq), and the accepted data.
            let mut state: Option<(u64, u64)> = None;
            let mut expected = Vec::new();
            for (i, (epoch, seq)) in requests.iter().copied().enumerate() {
                let payload = format!("[{i}:{epoch}/{seq}]");
                let response = send(
                    server
                        .post("s")
                        .header("content-type", OCTETS)
                        .header("producer-id", "p")
                        .header("producer-epoch", epoch.to_string())
                        .header("producer-seq", seq.to_string())
                        .body(payload.clone()),
                )
                .await;
                let (status, next) = match state {
                    None if seq == 0 => (StatusCode::OK, Some((epoch, 0))),
                    None => (StatusCode::CONFLICT, None),
                    Some((current, _)) if epoch < current => (StatusCode::FORBIDDEN, None),
                    Some((current, _)) if epoch > current && seq == 0 => {
                        (StatusCode::OK, Some((epoch, 0)))
                    }
                    Some((current, _)) if epoch > current => (StatusCode::BAD_REQUEST, None),
                    Some((_, last)) if seq <= last => (StatusCode::NO_CONTENT, None),
                    Some((_, last)) if seq == last + 1 => (StatusCode::OK, Some((epoch, seq))),
                    Some(_) => (StatusCode::CONFLICT, None),
                };
                prop_assert_eq!(response.status(), status, "request {} ({}, {})", i, epoch, seq);
                if let Some(next) = next {
                    state = Some(next);
                    expected.extend_from_slice(payload.as_bytes());
                }
                if status == StatusCode::FORBIDDEN {
                    let current = state.map(|(e, _)| e.to_string());
                    prop_assert_eq!(header(&response, "producer-epoch"), current);
                }
                if status.is_success() {
                    let (e, s) = state.expect("a success implies state");
                    prop_assert_eq!(header(&response, "producer-epoch"), Some(e.to_string()));
                    prop_assert_eq!(header(&response, "producer-seq"), Some(s.to_string()));
                }
            }
            let (data, _) = server.read_all("s").await;
            prop_assert_eq!(String::from_utf8_lossy(&data), String::from_utf8_lossy(&expected));
            Ok(())
        })?;
    }
}
