//! JSON mode framing (§9.1).
//!
//! Appended JSON is validated once and stored pre-encoded: every message is
//! kept as its own compact-as-sent text followed by a comma, so a read of any
//! message range is one contiguous byte range wrapped in `[` and `]`
//! (see [`array_body`]).

use serde_json::value::RawValue;

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
}

/// Where the frame comes from: creation may carry an empty array, an append
/// may not (§9.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonContext {
    Create,
    Append,
}

/// Validates `body` and flattens one level of a top-level array (§9.1.2).
pub fn frame(body: &[u8], context: JsonContext) -> Result<JsonMessages, JsonError> {
    let value: &RawValue =
        serde_json::from_slice(body).map_err(|e| JsonError::Invalid(e.to_string()))?;
    let text = value.get();
    let mut messages = JsonMessages {
        encoded: Vec::with_capacity(text.len() + 1),
        ends: Vec::new(),
    };
    let mut push = |raw: &str| {
        messages.encoded.extend_from_slice(raw.as_bytes());
        messages.encoded.push(b',');
        messages.ends.push(messages.encoded.len());
    };
    if text.starts_with('[') {
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

    fn stored(body: &str) -> Vec<String> {
        let m = frame(body.as_bytes(), JsonContext::Append).unwrap();
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
            frame(b"[]", JsonContext::Append),
            Err(JsonError::EmptyArray)
        );
        assert!(frame(b" [ ] ", JsonContext::Create).unwrap().is_empty());
    }

    #[test]
    fn rejects_invalid_json() {
        for bad in ["", "{", "[1,]", "{'a':1}", "nul", "1 2", "\u{feff}1"] {
            assert!(
                matches!(
                    frame(bad.as_bytes(), JsonContext::Append),
                    Err(JsonError::Invalid(_))
                ),
                "{bad:?}"
            );
        }
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

    proptest! {
        /// Whatever valid JSON goes in, a read of it is valid JSON holding the
        /// same values, flattened one level.
        #[test]
        fn reads_round_trip(values in proptest::collection::vec(any::<i64>(), 1..20), as_array: bool) {
            let body = if as_array {
                serde_json::to_string(&values).unwrap()
            } else {
                values[0].to_string()
            };
            let m = frame(body.as_bytes(), JsonContext::Append).unwrap();
            let read: Vec<u8> = array_body(vec![Bytes::from(m.encoded)]).concat();
            let parsed: Vec<i64> = serde_json::from_slice(&read).unwrap();
            let expected = if as_array { values } else { vec![values[0]] };
            prop_assert_eq!(parsed, expected);
        }
    }
}
