//! An incremental Server-Sent Events parser: bytes go in as they arrive
//! from the network, in chunks that may split lines, fields or CR LF pairs
//! anywhere; complete events come out.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, `message` when absent.
    pub event: String,
    /// The `data:` lines joined with LF.
    pub data: String,
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
    data: Option<String>,
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

    /// Handles one complete line; a blank line dispatches the event.
    fn finish_line(&mut self, line: &[u8]) -> Option<SseEvent> {
        if line.is_empty() {
            let event = self.event.take();
            let data = self.data.take();
            if event.is_none() && data.is_none() {
                return None;
            }
            return Some(SseEvent {
                event: event.unwrap_or_else(|| "message".to_owned()),
                data: data.unwrap_or_default(),
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
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
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

    fn expected() -> Vec<SseEvent> {
        vec![
            SseEvent {
                event: "data".into(),
                data: "[\n{\"seq\":1},\n{\"seq\":2}\n]".into(),
            },
            SseEvent {
                event: "control".into(),
                data: "{\"streamNextOffset\":\"0_9\",\"upToDate\":true}".into(),
            },
        ]
    }

    #[test]
    fn parses_a_whole_stream() {
        assert_eq!(SseParser::new().feed(STREAM.as_bytes()), expected());
    }

    #[test]
    fn parses_across_every_chunk_boundary() {
        let bytes = STREAM.as_bytes();
        for split in 0..=bytes.len() {
            let mut parser = SseParser::new();
            let mut events = parser.feed(&bytes[..split]);
            events.extend(parser.feed(&bytes[split..]));
            assert_eq!(events, expected(), "split at {split}");
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
    fn crlf_split_between_chunks_is_one_line_end() {
        let mut parser = SseParser::new();
        assert!(parser.feed(b"data: x\r").is_empty());
        // The LF completes the CR LF above; the CR after it is the blank
        // line that dispatches; the final LF belongs to that CR.
        let events = parser.feed(b"\n\r");
        assert_eq!(
            events,
            vec![SseEvent {
                event: "message".into(),
                data: "x".into()
            }]
        );
        assert!(parser.feed(b"\n").is_empty());
        assert!(parser.feed(b"data: y\n\n").len() == 1);
    }

    #[test]
    fn keeps_unfinished_event_until_blank_line() {
        let mut parser = SseParser::new();
        assert!(parser.feed(b"event: data\ndata: abc").is_empty());
        assert!(parser.feed(b"\n").is_empty());
        let events = parser.feed(b"\n");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data, "abc");
    }

    #[test]
    fn value_without_space_and_empty_data() {
        let events = SseParser::new().feed(b"event:data\ndata:\n\n");
        assert_eq!(
            events,
            vec![SseEvent {
                event: "data".into(),
                data: String::new()
            }]
        );
    }
}
