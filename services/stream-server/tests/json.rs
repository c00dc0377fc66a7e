//! JSON mode (PROTOCOL.md §9.1): one level of array flattening, `[]` allowed
//! on `PUT` but refused on `POST`, JSON validation, array-shaped responses
//! (including `[]` for empty ranges and `offset=now`), message boundaries as
//! offsets, chunked reads that are each a complete array, and the nesting
//! depth limit (what a reader parses, the read array included).

mod common;

use common::{TestServer, assert_problem, header, json_body, next_offset, send};
use reqwest::StatusCode;
use serde_json::{Value, json};

const JSON: &str = "application/json";

#[tokio::test]
async fn post_flattens_exactly_one_level() {
    let server = TestServer::start().await;
    server.create("j", JSON).await;
    for body in [
        r#"{"event": "created"}"#,
        r#"[{"event": "a"}, {"event": "b"}]"#,
        "[[1,2], [3,4]]",
        "[[[1,2,3]]]",
        r#""a string""#,
        "42",
        "null",
    ] {
        server.append("j", JSON, body).await;
    }
    let read = server.read_from("j", "-1").await;
    assert_eq!(header(&read, "content-type").as_deref(), Some(JSON));
    assert_eq!(
        json_body(read).await,
        json!([
            {"event": "created"},
            {"event": "a"},
            {"event": "b"},
            [1, 2],
            [3, 4],
            [[1, 2, 3]],
            "a string",
            42,
            null
        ])
    );
}

#[tokio::test]
async fn whitespace_around_a_batch_does_not_prevent_flattening() {
    let server = TestServer::start().await;
    server.create("j", JSON).await;
    let after_batch = server.append("j", JSON, " \n [ 1 ,\n 2 ] \n").await;
    server.append("j", JSON, "3").await;
    // Two messages were stored: reading after the batch gives only the third.
    let rest = server.read_from("j", &after_batch).await;
    assert_eq!(json_body(rest).await, json!([3]));
    assert_eq!(
        json_body(server.read_from("j", "-1").await).await,
        json!([1, 2, 3])
    );
}

#[tokio::test]
async fn each_element_of_a_batch_is_its_own_message() {
    let server = TestServer::start().await;
    let start = server.create("j", JSON).await;
    let after_batch = server
        .append("j", JSON, r#"[{"n":1},{"n":2},{"n":3}]"#)
        .await;
    let tail = server.append("j", JSON, r#"{"n":4}"#).await;

    // Single-message reads show the boundaries inside the batch.
    let single = TestServer::start_with(|c| c.http.max_read_bytes = 1).await;
    single.create("j", JSON).await;
    single
        .append("j", JSON, r#"[{"n":1},{"n":2},{"n":3}]"#)
        .await;
    let mut offset = "-1".to_owned();
    for n in 1..=3 {
        let read = single.read_from("j", &offset).await;
        offset = next_offset(&read);
        assert_eq!(json_body(read).await, json!([{"n": n}]));
    }

    let from_start = server.read_from("j", &start).await;
    assert_eq!(next_offset(&from_start), tail);
    assert_eq!(
        json_body(from_start).await,
        json!([{"n":1},{"n":2},{"n":3},{"n":4}])
    );
    assert_eq!(
        json_body(server.read_from("j", &after_batch).await).await,
        json!([{"n": 4}])
    );
}

#[tokio::test]
async fn empty_arrays_create_but_do_not_append() {
    let server = TestServer::start().await;
    let created = send(server.put("j").header("content-type", JSON).body("[]")).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let tail = next_offset(&created);
    let empty = server.read_from("j", "-1").await;
    assert_eq!(next_offset(&empty), tail);
    assert_eq!(json_body(empty).await, json!([]));

    let append = send(server.post("j").header("content-type", JSON).body("[]")).await;
    assert_problem(append, StatusCode::BAD_REQUEST, "empty").await;
    let append = send(server.post("j").header("content-type", JSON).body(" [ ] ")).await;
    assert_eq!(append.status(), StatusCode::BAD_REQUEST);
    assert_eq!(next_offset(&send(server.head("j")).await), tail);

    // A nested empty array is one message, not an empty batch.
    server.append("j", JSON, "[[]]").await;
    assert_eq!(
        json_body(server.read_from("j", "-1").await).await,
        json!([[]])
    );
}

#[tokio::test]
async fn put_with_an_initial_array_stores_its_elements() {
    let server = TestServer::start().await;
    let created = send(
        server
            .put("j")
            .header("content-type", JSON)
            .body(r#"[{"a":1},{"b":2}]"#),
    )
    .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    server.append("j", JSON, r#"{"c":3}"#).await;
    assert_eq!(
        json_body(server.read_from("j", "-1").await).await,
        json!([{"a":1},{"b":2},{"c":3}])
    );

    let invalid = send(server.put("k").header("content-type", JSON).body("{oops")).await;
    assert_eq!(invalid.status(), StatusCode::BAD_REQUEST);
    assert_eq!(send(server.head("k")).await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn invalid_json_is_rejected() {
    let server = TestServer::start().await;
    let tail = server.create("j", JSON).await;
    for bad in [
        "{",
        "nope",
        "[1,]",
        r#"{"a":1} {"b":2}"#,
        "[1] [2]",
        "'single'",
        "\u{feff}",
    ] {
        let response = send(server.post("j").header("content-type", JSON).body(bad)).await;
        assert_problem(response, StatusCode::BAD_REQUEST, "JSON").await;
    }
    assert_eq!(
        next_offset(&send(server.head("j")).await),
        tail,
        "nothing stored"
    );
}

#[tokio::test]
async fn empty_ranges_read_as_empty_arrays() {
    let server = TestServer::start().await;
    server.create("j", JSON).await;
    let tail = server.append("j", JSON, r#"{"x":1}"#).await;

    let at_tail = server.read_from("j", &tail).await;
    assert_eq!(
        header(&at_tail, "stream-up-to-date").as_deref(),
        Some("true")
    );
    assert_eq!(json_body(at_tail).await, json!([]));

    let now = server.read_from("j", "now").await;
    assert_eq!(next_offset(&now), tail);
    assert_eq!(json_body(now).await, json!([]), "offset=now on JSON is []");
}

#[tokio::test]
async fn content_type_parameters_keep_json_mode() {
    let server = TestServer::start().await;
    server.create("j", "application/json; charset=utf-8").await;
    server.append("j", JSON, "[1, 2]").await;
    server.append("j", "Application/JSON", "3").await;
    assert_eq!(
        json_body(server.read_from("j", "-1").await).await,
        json!([1, 2, 3])
    );
    let invalid = send(server.post("j").header("content-type", JSON).body("x")).await;
    assert_eq!(invalid.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn chunked_reads_are_each_complete_arrays() {
    let server = TestServer::start_with(|c| c.http.max_read_bytes = 40).await;
    server.create("j", JSON).await;
    let messages: Vec<Value> = (0..25)
        .map(|i| json!({"i": i, "pad": "x".repeat(i % 7)}))
        .collect();
    for batch in messages.chunks(4) {
        server
            .append("j", JSON, serde_json::to_string(batch).expect("serialise"))
            .await;
    }

    let mut offset = "-1".to_owned();
    let mut all = Vec::new();
    for _ in 0..100 {
        let read = server.read_from("j", &offset).await;
        let up_to_date = header(&read, "stream-up-to-date").is_some();
        offset = next_offset(&read);
        let Value::Array(chunk) = json_body(read).await else {
            panic!("every chunk is a JSON array");
        };
        assert!(!chunk.is_empty() || up_to_date);
        all.extend(chunk);
        if up_to_date {
            break;
        }
    }
    assert_eq!(all, messages);
}

#[tokio::test]
async fn long_poll_answers_json_arrays() {
    let server = TestServer::start_with(|c| c.server.long_poll_timeout_secs = 10.0).await;
    let tail = server.create("j", JSON).await;
    let (response, _) = tokio::join!(
        send(
            server
                .get("j")
                .query(&[("offset", tail.as_str()), ("live", "long-poll")])
        ),
        async {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            server.append("j", JSON, r#"[{"a":1},{"b":2}]"#).await
        }
    );
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(json_body(response).await, json!([{"a":1},{"b":2}]));
}

/// `n` arrays, one inside the next.
fn nested_arrays(n: usize) -> String {
    format!("{}{}", "[".repeat(n), "]".repeat(n))
}

/// `n` objects, one inside the next, with brackets and escaped quotes in
/// their keys and strings (which are not nesting).
fn nested_objects(n: usize) -> String {
    let mut json = r#""]]\"[[""#.to_owned();
    for _ in 0..n {
        json = format!(r#"{{"[{{\"": {json}}}"#);
    }
    json
}

/// A body nested far deeper than readers' parsers go (Python's `json` fails
/// on it) is refused whole, so no reader is ever stuck at a message it
/// cannot parse; a create carrying it creates nothing.
#[tokio::test]
async fn bodies_nested_past_the_depth_limit_are_refused() {
    let server = TestServer::start().await;
    server.create("j", JSON).await;
    let tail = server.append("j", JSON, r#"{"before": 1}"#).await;
    let deep = nested_arrays(200_000);

    let append = send(
        server
            .post("j")
            .header("content-type", JSON)
            .body(deep.clone()),
    )
    .await;
    assert_problem(append, StatusCode::BAD_REQUEST, "depth limit of 64").await;
    assert_eq!(next_offset(&send(server.head("j")).await), tail);
    assert_eq!(
        json_body(server.read_from("j", "-1").await).await,
        json!([{"before": 1}]),
        "nothing stored"
    );

    let create = send(server.put("deep").header("content-type", JSON).body(deep)).await;
    assert_problem(create, StatusCode::BAD_REQUEST, "depth limit").await;
    assert_eq!(
        send(server.head("deep")).await.status(),
        StatusCode::NOT_FOUND
    );
}

/// The limit bounds what a reader parses, the array a read wraps messages in
/// included: a message one level under it is stored and read back at
/// exactly the limit, whether it came alone or in a batch; one level deeper
/// is refused.
#[tokio::test]
async fn the_depth_limit_counts_the_array_reads_wrap_messages_in() {
    let limit = 64;
    let server = TestServer::start().await;
    server.create("j", JSON).await;
    let in_batch = format!("[{}, 1]", nested_arrays(limit - 1));
    let alone = nested_objects(limit - 1);
    server.append("j", JSON, in_batch).await;
    let tail = server.append("j", JSON, alone.clone()).await;

    for too_deep in [
        format!("[1, {}]", nested_arrays(limit)),
        nested_objects(limit),
    ] {
        let response = send(server.post("j").header("content-type", JSON).body(too_deep)).await;
        assert_problem(response, StatusCode::BAD_REQUEST, "depth limit").await;
    }
    assert_eq!(next_offset(&send(server.head("j")).await), tail);

    let read = json_body(server.read_from("j", "-1").await).await;
    let parse = |json: &str| serde_json::from_str::<Value>(json).expect("test JSON");
    assert_eq!(
        read,
        Value::Array(vec![
            parse(&nested_arrays(limit - 1)),
            json!(1),
            parse(&alone)
        ])
    );
    assert_eq!(depth(&read), limit);
}

/// How deeply arrays and objects nest in `value`.
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(fields) => 1 + fields.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}
