//! An incremental Server-Sent Events parser: bytes go in as they arrive
//! from the network, in chunks that may split lines, fields or CR LF pairs
//! anywhere; complete events come out.
//!
//! It follows the SSE standard's line rules: lines end with LF, CR LF or
//! CR; a line starting with `:` is a comment; one space after a field's
//! colon is dropped; `data:` lines accumulate; a blank line ends the event.
//! Only `event` and `data` are kept (the protocol uses no other field). The
//! load tool and both services' tests read their streams with it.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, `message` when absent.
    pub event: String,
    /// Each `data:` line's value, in order, without its line end.
    pub lines: Vec<String>,
}

impl SseEvent {
    /// The event's data as an SSE client sees it: the `data:` lines
    /// joined with LF.
    pub fn data(&self) -> String {
        self.lines.join("\n")
    }
}

/// Parser state between chunks.
#[derive(Debug, Default)]
pub struct SseParser {
    /// The current, unfinished line.
    line: Vec<u8>,
    /// The previous chunk ended in CR, so a leading LF belongs to it.
    after_cr: bool,
    /// Fields of the event being built.
    event: Option<String>,
    lines: Vec<String>,
}

impl SseParser {
    pub fn new() -> SseParser {
        SseParser::default()
    }

    /// Feeds one chunk; returns the events it completed.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
        }
        while let Some(end) = chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.line.extend_from_slice(&chunk[..end]);
            let terminator = chunk[end];
            chunk = &chunk[end + 1..];
            if terminator == b'\r' {
                match chunk.first() {
                    Some(b'\n') => chunk = &chunk[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            let line = std::mem::take(&mut self.line);
            if let Some(event) = self.finish_line(&line) {
                events.push(event);
            }
        }
        self.line.extend_from_slice(chunk);
        events
    }

    /// Whether everything fed so far has been dispatched: no partial line
    /// and no event waiting for its blank line. A body that ends while this
    /// is false ended inside an event.
    pub fn is_idle(&self) -> bool {
        self.line.is_empty() && self.event.is_none() && self.lines.is_empty()
    }

    /// Handles one complete line; a blank line dispatches the event, if it
    /// has an `event` or `data` field.
    fn finish_line(&mut self, line: &[u8]) -> Option<SseEvent> {
        if line.is_empty() {
            let event = self.event.take();
            let lines = std::mem::take(&mut self.lines);
            if event.is_none() && lines.is_empty() {
                return None;
            }
            return Some(SseEvent {
                event: event.unwrap_or_else(|| "message".to_owned()),
                lines,
            });
        }
        if line[0] == b':' {
            return None; // a comment
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = line.split_once(':').unwrap_or((&line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => self.lines.push(value.to_owned()),
            _ => {} // id, retry and unknown fields do not matter here
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "event: data\ndata: [\ndata: {\"seq\":1},\ndata: {\"seq\":2}\ndata: ]\n\n\
                          : keep-alive comment\n\n\
                          event: control\ndata: {\"streamNextOffset\":\"0_9\",\"upToDate\":true}\n\n";

    fn event(event: &str, lines: &[&str]) -> SseEvent {
        SseEvent {
            event: event.into(),
            lines: lines.iter().map(|&line| line.to_owned()).collect(),
        }
    }

    fn expected() -> Vec<SseEvent> {
        vec![
            event("data", &["[", "{\"seq\":1},", "{\"seq\":2}", "]"]),
            event(
                "control",
                &["{\"streamNextOffset\":\"0_9\",\"upToDate\":true}"],
            ),
        ]
    }

    #[test]
    fn parses_a_whole_stream() {
        let events = SseParser::new().feed(STREAM.as_bytes());
        assert_eq!(events, expected());
        assert_eq!(events[0].data(), "[\n{\"seq\":1},\n{\"seq\":2}\n]");
    }

    #[test]
    fn parses_across_every_chunk_boundary() {
        let bytes = STREAM.as_bytes();
        for split in 0..=bytes.len() {
            let mut parser = SseParser::new();
            let mut events = parser.feed(&bytes[..split]);
            events.extend(parser.feed(&bytes[split..]));
            assert_eq!(events, expected(), "split at {split}");
            assert!(parser.is_idle(), "split at {split}");
        }
    }

    #[test]
    fn parses_byte_by_byte_with_crlf_and_cr_line_ends() {
        for ending in ["\r\n", "\r"] {
            let text = STREAM.replace('\n', ending);
            let mut parser = SseParser::new();
            let mut events = Vec::new();
            for byte in text.as_bytes() {
                events.extend(parser.feed(std::slice::from_ref(byte)));
            }
            assert_eq!(events, expected(), "line ending {ending:?}");
        }
    }

    #[test]
    fn mixed_line_ends_in_one_event() {
        let events = SseParser::new().feed(b"data: a\rdata: b\r\ndata: c\ndata:\r\n\n");
        assert_eq!(events, vec![event("message", &["a", "b", "c", ""])]);
        assert_eq!(events[0].data(), "a\nb\nc\n");
    }

    #[test]
    fn crlf_split_between_chunks_is_one_line_end() {
        let mut parser = SseParser::new();
        assert!(parser.feed(b"data: x\r").is_empty());
        // The LF completes the CR LF above; the CR after it is the blank
        // line that dispatches; the final LF belongs to that CR.
        let events = parser.feed(b"\n\r");
        assert_eq!(events, vec![event("message", &["x"])]);
        assert!(parser.feed(b"\n").is_empty());
        assert_eq!(parser.feed(b"data: y\n\n").len(), 1);
    }

    #[test]
    fn keeps_unfinished_event_until_blank_line() {
        let mut parser = SseParser::new();
        assert!(parser.feed(b"event: data\ndata: abc").is_empty());
        assert!(!parser.is_idle(), "a partial line");
        assert!(parser.feed(b"\n").is_empty());
        assert!(!parser.is_idle(), "an event without its blank line");
        let events = parser.feed(b"\n");
        assert_eq!(events, vec![event("data", &["abc"])]);
        assert!(parser.is_idle());
    }

    #[test]
    fn only_one_space_after_the_colon_is_dropped() {
        let events = SseParser::new().feed(b"data:a\ndata: b\ndata:  c\ndata\n\n");
        assert_eq!(events, vec![event("message", &["a", "b", " c", ""])]);
    }

    #[test]
    fn value_without_space_and_empty_data() {
        let events = SseParser::new().feed(b"event:data\ndata:\n\n");
        assert_eq!(events, vec![event("data", &[""])]);
    }

    #[test]
    fn comments_and_other_fields_dispatch_nothing_alone() {
        let mut parser = SseParser::new();
        assert!(parser.feed(b": ping\n\nid: 7\nretry: 10\n\n\n").is_empty());
        assert!(parser.is_idle());
        let events = parser.feed(b"id: 8\n: note\nevent: control\ndata: {}\n\n");
        assert_eq!(events, vec![event("control", &["{}"])]);
    }
}
