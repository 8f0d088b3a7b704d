//! Incremental Server-Sent Events parser: bytes in (split anywhere, even inside a UTF-8
//! character or between `\r` and `\n`), complete events out.
//!
//! Follows the WHATWG event-stream rules that OpenAI-compatible servers use: lines end with
//! `\n`, `\r\n` or `\r`; `data:` lines of one event are joined with `\n`; a blank line ends the
//! event; lines starting with `:` are comments. An `error:` field line (sent by some servers
//! instead of `event: error`) yields an event named `error` carrying the field's value.

/// One complete event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` name, if one was given (`error` for an `error:` field line).
    pub event: Option<String>,
    /// The `data:` lines joined with `\n` (e.g. a JSON chunk, or `[DONE]`).
    pub data: String,
}

impl SseEvent {
    /// Whether this is the OpenAI end-of-stream marker `data: [DONE]`.
    pub fn is_done(&self) -> bool {
        self.data.trim() == "[DONE]"
    }

    /// Whether the server marked this event as an error (by name).
    pub fn is_error(&self) -> bool {
        self.event.as_deref() == Some("error")
    }
}

/// The parser state; feed it with [`SseParser::push`], then call [`SseParser::finish`] at the
/// end of the body.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes not yet forming a complete line.
    buf: Vec<u8>,
    /// `data:` lines of the event being built.
    data: Vec<String>,
    /// `event:` of the event being built.
    event: Option<String>,
    /// Whether the first line has been seen (a UTF-8 BOM there is dropped).
    started: bool,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes; returns the events they complete, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < self.buf.len() {
            let b = self.buf[i];
            if b == b'\n' || b == b'\r' {
                let end = i;
                let next = if b == b'\r' {
                    if i + 1 == self.buf.len() {
                        // `\r` last: a `\n` may follow in the next push; wait for it.
                        break;
                    }
                    if self.buf[i + 1] == b'\n' {
                        i + 2
                    } else {
                        i + 1
                    }
                } else {
                    i + 1
                };
                let line = String::from_utf8_lossy(&self.buf[start..end]).into_owned();
                if let Some(ev) = self.line(&line) {
                    events.push(ev);
                }
                start = next;
                i = next;
            } else {
                i += 1;
            }
        }
        self.buf.drain(..start);
        events
    }

    /// Ends the stream: a last line without a terminator is taken as a line, and an event
    /// left without its blank line is still returned (lenient towards servers that close the
    /// connection right after the last `data:` line).
    pub fn finish(&mut self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            let text = String::from_utf8_lossy(&rest).into_owned();
            let text = text.trim_end_matches('\r');
            if let Some(ev) = self.line(text) {
                events.push(ev);
            }
        }
        if let Some(ev) = self.dispatch() {
            events.push(ev);
        }
        events
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        let line = if !self.started {
            self.started = true;
            line.strip_prefix('\u{feff}').unwrap_or(line)
        } else {
            line
        };
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => self.data.push(value.to_string()),
            "event" => self.event = Some(value.to_string()),
            "error" => {
                self.event = Some("error".to_string());
                self.data.push(value.to_string());
            }
            _ => {} // `id`, `retry` and unknown fields do not matter here.
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        if self.data.is_empty() {
            // An event without data is not dispatched (per the spec); drop its name.
            self.event = None;
            return None;
        }
        let data = std::mem::take(&mut self.data).join("\n");
        Some(SseEvent {
            event: self.event.take(),
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream like an OpenAI chat stream, with CRLF, a comment, a multi-line data event, an
    /// error event, non-ASCII text and the final `[DONE]`.
    const STREAM: &str = concat!(
        "\u{feff}: keep-alive\r\n\r\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"你好\"}}]}\r\n\r\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\" world\"}}]}\n\n",
        "event: message\ndata: line one\ndata: line two\n\n",
        "event: error\ndata: {\"error\":{\"message\":\"boom\"}}\r\r",
        "error: {\"message\":\"llama\"}\n\n",
        "id: 7\nretry: 100\n\n",
        "data:[DONE]\n\n",
    );

    fn expected() -> Vec<SseEvent> {
        let ev = |e: Option<&str>, d: &str| SseEvent {
            event: e.map(str::to_string),
            data: d.to_string(),
        };
        vec![
            ev(None, "{\"choices\":[{\"delta\":{\"content\":\"你好\"}}]}"),
            ev(None, "{\"choices\":[{\"delta\":{\"content\":\" world\"}}]}"),
            ev(Some("message"), "line one\nline two"),
            ev(Some("error"), "{\"error\":{\"message\":\"boom\"}}"),
            ev(Some("error"), "{\"message\":\"llama\"}"),
            ev(None, "[DONE]"),
        ]
    }

    fn parse_in_pieces(bytes: &[u8], cuts: &[usize]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        let mut prev = 0;
        for &c in cuts {
            out.extend(p.push(&bytes[prev..c]));
            prev = c;
        }
        out.extend(p.push(&bytes[prev..]));
        out.extend(p.finish());
        out
    }

    #[test]
    fn whole_stream_at_once() {
        let evs = parse_in_pieces(STREAM.as_bytes(), &[]);
        assert_eq!(evs, expected());
        assert!(evs.last().unwrap().is_done());
        assert!(evs[3].is_error() && evs[4].is_error() && !evs[0].is_error());
    }

    #[test]
    fn split_at_every_single_byte_boundary() {
        let bytes = STREAM.as_bytes();
        for cut in 0..=bytes.len() {
            assert_eq!(parse_in_pieces(bytes, &[cut]), expected(), "cut at {cut}");
        }
    }

    #[test]
    fn split_into_single_bytes_and_pairs_of_cuts() {
        let bytes = STREAM.as_bytes();
        let all: Vec<usize> = (1..bytes.len()).collect();
        assert_eq!(parse_in_pieces(bytes, &all), expected());
        for a in (0..bytes.len()).step_by(7) {
            for b in (a..bytes.len()).step_by(5) {
                assert_eq!(parse_in_pieces(bytes, &[a, b]), expected(), "cuts {a},{b}");
            }
        }
    }

    #[test]
    fn unterminated_last_event_is_returned_by_finish() {
        let mut p = SseParser::new();
        assert!(p.push(b"data: {\"a\":1}").is_empty());
        let evs = p.finish();
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].data, "{\"a\":1}");
        // A lone `\r` at the end of the body also ends the line.
        let mut p = SseParser::new();
        assert!(p.push(b"data: [DONE]\r").is_empty());
        assert!(p.finish()[0].is_done());
    }

    #[test]
    fn invalid_utf8_does_not_panic() {
        let mut p = SseParser::new();
        let evs = p.push(b"data: \xff\xfe\n\n");
        assert_eq!(evs.len(), 1);
        assert!(evs[0].data.contains('\u{fffd}'));
    }
}
