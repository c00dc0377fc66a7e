//! Server-Sent Events framing for live reads (§5.8).
//!
//! A `data` event carries a batch of stream bytes, one `data:` line per line
//! of text (CR, LF and CRLF all end a line), or base64 for binary streams. A
//! `control` event follows every data event with the position and state the
//! client needs to resume.

use crate::protocol::offset::Offset;
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};

/// How data events carry bytes, chosen by the stream's content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataEncoding {
    /// `text/*` and `application/json`: the bytes as UTF-8 text.
    Text,
    /// Everything else: standard base64, announced by the
    /// `stream-sse-data-encoding: base64` response header.
    Base64,
}

impl DataEncoding {
    pub fn for_media_type(media_type: &str) -> Self {
        if media_type.starts_with("text/") || media_type == "application/json" {
            DataEncoding::Text
        } else {
            DataEncoding::Base64
        }
    }
}

/// Length of base64 text per `data:` line (a multiple of 4).
const BASE64_LINE: usize = 76 * 4;

/// Frames `pieces` (consecutive parts of one batch) as one `data` event at
/// the end of `out`, so a read's events share one buffer.
pub fn put_data_event(out: &mut BytesMut, pieces: &[Bytes], encoding: DataEncoding) {
    let len: usize = pieces.iter().map(Bytes::len).sum();
    out.reserve(len * 4 / 3 + len / 8 + 32);
    out.put_slice(b"event: data\n");
    match encoding {
        DataEncoding::Text => {
            // Every line ending starts a new `data:` line, including a final
            // one, so the client's join of the lines with LF restores the text.
            // Clients drop one space after `data:`, so a line that starts
            // with a space gets one extra.
            out.put_slice(b"data:");
            let mut after_cr = false;
            let mut line_start = true;
            for piece in pieces {
                let mut start = 0;
                for (i, &byte) in piece.iter().enumerate() {
                    match byte {
                        b'\r' | b'\n' => {
                            out.put_slice(&piece[start..i]);
                            start = i + 1;
                            // The LF of a CRLF pair belongs to the CR's break.
                            if !(byte == b'\n' && after_cr) {
                                out.put_slice(b"\ndata:");
                                line_start = true;
                            }
                            after_cr = byte == b'\r';
                        }
                        _ => {
                            if line_start && byte == b' ' {
                                out.put_slice(&piece[start..i]);
                                out.put_u8(b' ');
                                start = i;
                            }
                            line_start = false;
                            after_cr = false;
                        }
                    }
                }
                out.put_slice(&piece[start..]);
            }
            out.put_u8(b'\n');
        }
        DataEncoding::Base64 => {
            let joined: Vec<u8> = pieces.concat();
            let text = base64::engine::general_purpose::STANDARD.encode(joined);
            if text.is_empty() {
                out.put_slice(b"data:\n");
            }
            for line in text.as_bytes().chunks(BASE64_LINE) {
                out.put_slice(b"data:");
                out.put_slice(line);
                out.put_u8(b'\n');
            }
        }
    }
    out.put_u8(b'\n');
}

/// The fields of a `control` event that differ between connections at the
/// same position: everything but `streamNextOffset`.
#[derive(Debug, Clone, Copy)]
pub struct ControlFlags<'a> {
    /// The connection's cursor, as decimal text.
    pub stream_cursor: Option<&'a str>,
    pub up_to_date: bool,
    pub stream_closed: bool,
}

/// Longest [`put_control_tail`] output for a cursor of `cursor_len` bytes.
pub const fn control_tail_len(cursor_len: usize) -> usize {
    CURSOR_FIELD.len() + cursor_len + 1 + UP_TO_DATE_FIELD.len() + CLOSED_FIELD.len() + 3
}

const CURSOR_FIELD: &[u8] = b",\"streamCursor\":\"";
const UP_TO_DATE_FIELD: &[u8] = b",\"upToDate\":true";
const CLOSED_FIELD: &[u8] = b",\"streamClosed\":true";

/// Frames the start of a `control` event, up to and including
/// `streamNextOffset`: the part every connection at `next` shares.
///
/// A control event is a JSON object with camel-case fields, where the
/// cursor and the flags appear only when set. It is written directly
/// rather than through serde: every subscriber gets one per wake-up, and
/// the values need no escaping (hex digits, `_` and decimal digits).
pub fn put_control_head(out: &mut BytesMut, next: Offset) {
    out.put_slice(b"event: control\ndata:{\"streamNextOffset\":\"");
    out.put_slice(&next.encode());
    out.put_u8(b'"');
}

/// Frames the rest of a `control` event after [`put_control_head`].
pub fn put_control_tail(out: &mut BytesMut, flags: &ControlFlags<'_>) {
    if let Some(cursor) = flags.stream_cursor {
        out.put_slice(CURSOR_FIELD);
        out.put_slice(cursor.as_bytes());
        out.put_u8(b'"');
    }
    if flags.up_to_date {
        out.put_slice(UP_TO_DATE_FIELD);
    }
    if flags.stream_closed {
        out.put_slice(CLOSED_FIELD);
    }
    out.put_slice(b"}\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text(pieces: &[&str]) -> String {
        let pieces: Vec<Bytes> = pieces.iter().map(|p| Bytes::from(p.to_string())).collect();
        let mut out = BytesMut::new();
        put_data_event(&mut out, &pieces, DataEncoding::Text);
        String::from_utf8(out.to_vec()).unwrap()
    }

    /// What an SSE client reconstructs from one event's `data:` lines.
    fn client_view(event: &str) -> String {
        event
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|l| l.strip_prefix(' ').unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn one_data_line_per_text_line() {
        assert_eq!(text(&["hello world"]), "event: data\ndata:hello world\n\n");
        assert_eq!(text(&["a\nb"]), "event: data\ndata:a\ndata:b\n\n");
        assert_eq!(
            text(&["a\r\nb\rc"]),
            "event: data\ndata:a\ndata:b\ndata:c\n\n"
        );
        assert_eq!(text(&["a\r", "\nb"]), "event: data\ndata:a\ndata:b\n\n");
        assert_eq!(
            text(&["hello ", "world"]),
            "event: data\ndata:hello world\n\n"
        );
        assert_eq!(text(&["a\n"]), "event: data\ndata:a\ndata:\n\n");
        assert_eq!(text(&["a\n\nb"]), "event: data\ndata:a\ndata:\ndata:b\n\n");
        assert_eq!(text(&[" a\n  b"]), "event: data\ndata:  a\ndata:   b\n\n");
        assert_eq!(text(&["x\n", " y"]), "event: data\ndata:x\ndata:  y\n\n");
    }

    #[test]
    fn binary_is_base64() {
        let mut event = BytesMut::from(&b"before\n"[..]);
        put_data_event(
            &mut event,
            &[Bytes::from_static(&[1, 2, 3, 4, 5, 6])],
            DataEncoding::Base64,
        );
        assert_eq!(&event[..], b"before\nevent: data\ndata:AQIDBAUG\n\n");
    }

    fn control(next: Offset, flags: &ControlFlags<'_>) -> BytesMut {
        let mut event = BytesMut::new();
        put_control_head(&mut event, next);
        put_control_tail(&mut event, flags);
        event
    }

    #[test]
    fn control_fields_are_camel_case_and_optional() {
        let flags = ControlFlags {
            stream_cursor: Some("7"),
            up_to_date: true,
            stream_closed: false,
        };
        assert_eq!(
            &control(Offset::new(3, 36), &flags)[..],
            b"event: control\ndata:{\"streamNextOffset\":\"0000000000000003_0000000000000024\",\"streamCursor\":\"7\",\"upToDate\":true}\n\n"
        );
    }

    proptest! {
        /// The hand-written object is the JSON serde would write for the
        /// same fields, and the tail never exceeds its stated bound.
        #[test]
        fn control_is_the_json_of_its_fields(
            messages: u64, bytes: u64, cursor: Option<u64>, up_to_date: bool, stream_closed: bool,
        ) {
            let next = Offset::new(messages, bytes);
            let cursor_text = cursor.map(|c| c.to_string());
            let flags = ControlFlags {
                stream_cursor: cursor_text.as_deref(),
                up_to_date,
                stream_closed,
            };
            let event = control(next, &flags);
            let mut head = BytesMut::new();
            put_control_head(&mut head, next);
            let tail_len = event.len() - head.len();
            prop_assert!(tail_len <= control_tail_len(cursor_text.as_ref().map_or(0, String::len)));
            let text = std::str::from_utf8(&event).unwrap();
            let json = text.strip_prefix("event: control\ndata:").unwrap().strip_suffix("\n\n").unwrap();
            let mut expected = serde_json::json!({
                "streamNextOffset": next.to_string(),
            });
            if let Some(cursor) = cursor {
                expected["streamCursor"] = cursor.to_string().into();
            }
            if up_to_date {
                expected["upToDate"] = true.into();
            }
            if stream_closed {
                expected["streamClosed"] = true.into();
            }
            prop_assert_eq!(serde_json::from_str::<serde_json::Value>(json).unwrap(), expected);
        }
    }

    proptest! {
        /// Text without CR survives the trip through `data:` lines exactly,
        /// trailing newlines included.
        #[test]
        fn text_round_trips(s in "[^\r]{0,200}", split in 0usize..200) {
            let cut = s.char_indices().map(|(i, _)| i).find(|&i| i >= split).unwrap_or(s.len());
            let event = text(&[&s[..cut], &s[cut..]]);
            let body = event.strip_prefix("event: data\n").unwrap().strip_suffix("\n\n").unwrap();
            prop_assert_eq!(client_view(body), s);
        }
    }
}
