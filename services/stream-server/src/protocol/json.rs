//! JSON mode framing (§9.1).
//!
//! Appended JSON is validated once and stored pre-encoded: every message is
//! kept as its own compact-as-sent text followed by a comma, so a read of any
//! message range is one contiguous byte range wrapped in `[` and `]`
//! (see [`array_body`]).
//!
//! Nesting depth is bounded as readers will parse it. A reader is sent
//! messages inside one array (`[msg,msg]`), so a message nested `n` levels
//! deep is parsed `n + 1` levels deep; the limit given to [`frame`] bounds
//! that. A body whose top-level array is flattened into messages already
//! is that wrapper, so its depth counts as it is; any other body counts one
//! level more. Many readers' parsers recurse and refuse (or overflow their
//! stack on) deep input, so a stored message they cannot parse would stop
//! them at it for good.

use serde_json::value::RawValue;

/// Default of the nesting limit given to [`frame`].
///
/// Readers parse with their language's usual JSON parser, and the common
/// ones stop at some depth by default: Ruby's `JSON` at its `max_nesting`,
/// serde_json at its recursion limit, Python's `json` at the interpreter's
/// recursion limit. This is below all of those with room to spare, and
/// still deeper than data meant for reading nests in practice.
pub const DEFAULT_MAX_DEPTH: usize = 64;

/// Validated messages, ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonMessages {
    /// Each message's text followed by `,`, concatenated.
    pub encoded: Vec<u8>,
    /// End of each message within `encoded` (after its comma).
    pub ends: Vec<usize>,
}

impl JsonMessages {
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

/// Why a body is not an acceptable JSON append.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("body is not valid JSON: {0}")]
    Invalid(String),
    #[error("an empty JSON array appends nothing; send at least one message")]
    EmptyArray,
    #[error(
        "JSON nested deeper than the depth limit of {limit} levels \
         (counting the array that reads wrap messages in)"
    )]
    TooDeep { limit: usize },
}

/// Where the frame comes from: creation may carry an empty array, an append
/// may not (§9.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonContext {
    Create,
    Append,
}

/// Validates `body` and flattens one level of a top-level array (§9.1.2).
///
/// `max_depth` bounds the nesting of what a reader of the messages parses,
/// the array reads wrap them in included (see the module documentation).
pub fn frame(
    body: &[u8],
    context: JsonContext,
    max_depth: usize,
) -> Result<JsonMessages, JsonError> {
    // serde_json skips a raw value without recursing, so a body of any depth
    // gets this far; depth is checked on the validated text.
    let value: &RawValue =
        serde_json::from_slice(body).map_err(|e| JsonError::Invalid(e.to_string()))?;
    let text = value.get();
    let flattened = text.starts_with('[');
    let read_wrapper = usize::from(!flattened);
    if nesting_depth(text.as_bytes()).saturating_add(read_wrapper) > max_depth {
        return Err(JsonError::TooDeep { limit: max_depth });
    }
    let mut messages = JsonMessages {
        encoded: Vec::with_capacity(text.len() + 1),
        ends: Vec::new(),
    };
    let mut push = |raw: &str| {
        messages.encoded.extend_from_slice(raw.as_bytes());
        messages.encoded.push(b',');
        messages.ends.push(messages.encoded.len());
    };
    if flattened {
        let items: Vec<&RawValue> =
            serde_json::from_str(text).map_err(|e| JsonError::Invalid(e.to_string()))?;
        if items.is_empty() && context == JsonContext::Append {
            return Err(JsonError::EmptyArray);
        }
        items.iter().for_each(|item| push(item.get()));
    } else {
        push(text);
    }
    Ok(messages)
}

/// How deeply arrays and objects nest in `json`: `0` for a scalar, `1` for
/// `[1]` or `{}`, `2` for `[[1]]`.
///
/// One pass without recursion, so any depth costs no stack. Brackets inside
/// strings do not count: a `"` opens or closes a string unless a backslash
/// escapes it, and a backslash escapes exactly the byte after it (so the
/// last quote of `"a\\"` closes the string). Only ASCII bytes are acted on,
/// and those never occur inside a UTF-8 multi-byte sequence. The answer is
/// exact for valid JSON; for other bytes it means nothing, but the scan
/// still ends without panicking.
pub fn nesting_depth(json: &[u8]) -> usize {
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in json {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// The body of a JSON read: stored messages (each ending in a comma) as one
/// array, returned as pieces to send in order without copying the data.
pub fn array_body(mut stored: Vec<bytes::Bytes>) -> Vec<bytes::Bytes> {
    // The last stored byte is always the comma closing the last message;
    // pieces are never empty, so a one-byte last piece is just that comma.
    if let Some(last) = stored.last_mut() {
        if last.len() > 1 {
            last.truncate(last.len() - 1);
        } else {
            stored.pop();
        }
    }
    let mut body = Vec::with_capacity(stored.len() + 2);
    body.push(bytes::Bytes::from_static(b"["));
    body.extend(stored);
    body.push(bytes::Bytes::from_static(b"]"));
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;
    use serde_json::Value;

    fn stored(body: &str) -> Vec<String> {
        let m = frame(body.as_bytes(), JsonContext::Append, DEFAULT_MAX_DEPTH).unwrap();
        let mut start = 0;
        m.ends
            .iter()
            .map(|&end| {
                let s = String::from_utf8(m.encoded[start..end - 1].to_vec()).unwrap();
                start = end;
                s
            })
            .collect()
    }

    #[test]
    fn flattens_exactly_one_level() {
        assert_eq!(
            stored(r#"{"event": "created"}"#),
            [r#"{"event": "created"}"#]
        );
        assert_eq!(
            stored(r#"[{"a":1}, {"b":2}]"#),
            [r#"{"a":1}"#, r#"{"b":2}"#]
        );
        assert_eq!(stored("[[1,2], [3,4]]"), ["[1,2]", "[3,4]"]);
        assert_eq!(stored("[[[1,2,3]]]"), ["[[1,2,3]]"]);
        assert_eq!(stored(" \n 42 \n"), ["42"]);
    }

    #[test]
    fn empty_arrays_only_on_create() {
        assert_eq!(
            frame(b"[]", JsonContext::Append, DEFAULT_MAX_DEPTH),
            Err(JsonError::EmptyArray)
        );
        assert!(
            frame(b" [ ] ", JsonContext::Create, DEFAULT_MAX_DEPTH)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn rejects_invalid_json() {
        for bad in ["", "{", "[1,]", "{'a':1}", "nul", "1 2", "\u{feff}1"] {
            assert!(
                matches!(
                    frame(bad.as_bytes(), JsonContext::Append, DEFAULT_MAX_DEPTH),
                    Err(JsonError::Invalid(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn depth_counts_brackets_outside_strings_only() {
        for (json, depth) in [
            ("1", 0),
            (r#""[[{""#, 0),
            ("[]", 1),
            ("{}", 1),
            (r#"[[1], {"a": [2]}]"#, 3),
            (r#"{"a": "]]}}"}"#, 1),
            (r#"{"[[": 1}"#, 1),
            (r#"["\"[[[", 1]"#, 1),
            (r#"["\\", [[1]]]"#, 3),
            (r#"["\\\"[", []]"#, 2),
            (r#"["\u005b\u007b", {}]"#, 2),
            (r#"["ü[é{", {"ß": []}]"#, 3),
            (" [ \n [ ] ] ", 2),
        ] {
            assert_eq!(nesting_depth(json.as_bytes()), depth, "{json}");
        }
    }

    #[test]
    fn the_limit_bounds_the_depth_readers_parse() {
        let too_deep = |limit| Err(JsonError::TooDeep { limit });
        let frame = |body: &str, limit| frame(body.as_bytes(), JsonContext::Append, limit);
        // A flattened array is the array a read wraps its messages in...
        assert!(frame("[[[1]]]", 3).is_ok());
        assert_eq!(frame("[[[[1]]]]", 3), too_deep(3));
        // ...any other body is one level deeper once read.
        assert!(frame(r#"{"a": {"b": 1}}"#, 3).is_ok());
        assert_eq!(frame(r#"{"a": {"b": {}}}"#, 3), too_deep(3));
        assert!(frame("1", 1).is_ok());
        assert!(frame("[1, 2]", 1).is_ok());
        assert_eq!(frame("{}", 1), too_deep(1));
        assert_eq!(frame("[[]]", 1), too_deep(1));
        assert!(super::frame(b"[]", JsonContext::Create, 1).is_ok());
        // Brackets in strings are text, not nesting.
        assert!(frame(r#"{"[[[[": "{{{{\"[[[[\\"}"#, 2).is_ok());
    }

    #[test]
    fn deep_bodies_are_refused_without_recursing() {
        let depth = 200_000;
        let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let refused = frame(deep.as_bytes(), JsonContext::Append, DEFAULT_MAX_DEPTH);
        assert_eq!(
            refused,
            Err(JsonError::TooDeep {
                limit: DEFAULT_MAX_DEPTH
            })
        );
        let message = refused.unwrap_err().to_string();
        assert!(message.contains("depth limit of 64"), "{message}");
        // Unbalanced, it is not JSON at all.
        assert!(matches!(
            frame(
                &deep.as_bytes()[..depth],
                JsonContext::Append,
                DEFAULT_MAX_DEPTH
            ),
            Err(JsonError::Invalid(_))
        ));
    }

    #[test]
    fn array_body_strips_the_trailing_comma_across_pieces() {
        let join = |pieces: Vec<Bytes>| pieces.iter().flat_map(|b| b.to_vec()).collect::<Vec<u8>>();
        assert_eq!(join(array_body(vec![])), b"[]");
        assert_eq!(
            join(array_body(vec![Bytes::from_static(b"1,2,")])),
            b"[1,2]"
        );
        assert_eq!(
            join(array_body(vec![
                Bytes::from_static(b"1,2"),
                Bytes::from_static(b",")
            ])),
            b"[1,2]"
        );
    }

    /// Depth as a recursive walk of the parsed value counts it.
    fn depth_of(value: &Value) -> usize {
        match value {
            Value::Array(items) => 1 + items.iter().map(depth_of).max().unwrap_or(0),
            Value::Object(fields) => 1 + fields.values().map(depth_of).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// Nested arrays and objects whose strings and keys are full of
    /// brackets, quotes and backslashes.
    fn json_value() -> impl Strategy<Value = Value> {
        let text = r#"[\[\]{}"\\a-zé,: ]{0,6}"#;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            text.prop_map(Value::from),
        ];
        leaf.prop_recursive(8, 64, 4, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map(text, inner, 0..4)
                    .prop_map(|fields| Value::Object(fields.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// The one-pass count agrees with a recursive walk, however the
        /// value is laid out.
        #[test]
        fn depth_matches_a_recursive_walk(value in json_value()) {
            let compact = serde_json::to_vec(&value).unwrap();
            let pretty = serde_json::to_vec_pretty(&value).unwrap();
            prop_assert_eq!(nesting_depth(&compact), depth_of(&value));
            prop_assert_eq!(nesting_depth(&pretty), depth_of(&value));
        }

        /// A body whose read depth is exactly the limit is stored, and the
        /// same body is refused under a limit one lower.
        #[test]
        fn the_limit_is_exact(value in json_value()) {
            let body = serde_json::to_vec(&value).unwrap();
            let read_depth = match value {
                Value::Array(_) => depth_of(&value),
                _ => depth_of(&value) + 1,
            };
            prop_assert!(frame(&body, JsonContext::Create, read_depth).is_ok());
            prop_assert_eq!(
                frame(&body, JsonContext::Create, read_depth - 1),
                Err(JsonError::TooDeep { limit: read_depth - 1 })
            );
        }

        /// Arbitrary bytes, heavy in JSON punctuation, are framed or refused,
        /// never a panic.
        #[test]
        fn never_panics_on_arbitrary_bytes(
            bytes in proptest::collection::vec(
                prop_oneof![any::<u8>(), proptest::sample::select(b"[]{}\"\\,:1 ".to_vec())],
                0..256,
            ),
            limit in 1usize..8,
            append: bool,
        ) {
            let context = if append { JsonContext::Append } else { JsonContext::Create };
            let _ = nesting_depth(&bytes);
            if let Ok(messages) = frame(&bytes, context, limit) {
                let read = array_body(vec![Bytes::from(messages.encoded)]).concat();
                prop_assert!(nesting_depth(&read) <= limit);
            }
        }

        /// Whatever valid JSON goes in, a read of it is valid JSON holding the
        /// same values, flattened one level.
        #[test]
        fn reads_round_trip(values in proptest::collection::vec(any::<i64>(), 1..20), as_array: bool) {
            let body = if as_array {
                serde_json::to_string(&values).unwrap()
            } else {
                values[0].to_string()
            };
            let m = frame(body.as_bytes(), JsonContext::Append, DEFAULT_MAX_DEPTH).unwrap();
            let read: Vec<u8> = array_body(vec![Bytes::from(m.encoded)]).concat();
            let parsed: Vec<i64> = serde_json::from_slice(&read).unwrap();
            let expected = if as_array { values } else { vec![values[0]] };
            prop_assert_eq!(parsed, expected);
        }
    }
}
