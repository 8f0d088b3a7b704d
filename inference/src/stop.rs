//! Stop-string matching over streamed text.
//!
//! Generated text arrives in pieces (one decoded token at a time), so a stop string may be split
//! over several pieces. [`StopMatcher`] keeps back the longest tail of the not-yet-emitted text
//! that could still grow into a stop string, and emits everything before it. Nothing of a stop
//! string is ever emitted: when one completes, the text is cut right before it.

/// Finds stop strings in streamed text even when split over tokens; holds back any tail that
/// could still become a stop string, so no partial stop string is ever emitted.
///
/// Matching is exact (byte-wise on UTF-8, always cut on character boundaries). When several stop
/// strings occur, the one starting earliest wins. Empty stop strings are ignored.
#[derive(Clone, Debug)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not emitted yet (a possible start of a stop string).
    pending: String,
    stopped: bool,
}

/// Result of [`StopMatcher::push`].
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct StopOutcome {
    /// Text that is safe to emit now (possibly empty).
    pub emit: String,
    /// A stop string matched: `emit` ends right before it and generation should end.
    pub stopped: bool,
}

impl StopMatcher {
    /// Creates a matcher for `stops` (empty strings are dropped; duplicates are harmless).
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
            stopped: false,
        }
    }

    /// Whether a stop string has matched; later pushes emit nothing.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Feeds newly decoded text; returns text safe to emit now, and whether a stop string matched
    /// (text is then cut before the stop string, and the rest is dropped).
    pub fn push(&mut self, text: &str) -> StopOutcome {
        if self.stopped {
            return StopOutcome {
                emit: String::new(),
                stopped: true,
            };
        }
        if self.stops.is_empty() {
            return StopOutcome {
                emit: text.to_owned(),
                stopped: false,
            };
        }
        self.pending.push_str(text);

        let earliest = self
            .stops
            .iter()
            .filter_map(|stop| self.pending.find(stop.as_str()))
            .min();
        if let Some(pos) = earliest {
            self.pending.truncate(pos);
            self.stopped = true;
            return StopOutcome {
                emit: std::mem::take(&mut self.pending),
                stopped: true,
            };
        }

        let hold = self.held_len();
        let rest = self.pending.split_off(self.pending.len() - hold);
        StopOutcome {
            emit: std::mem::replace(&mut self.pending, rest),
            stopped: false,
        }
    }

    /// End of generation: returns whatever was held back (empty after a stop string matched).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Length in bytes of the longest suffix of `pending` that is a proper prefix of a stop
    /// string (always on a character boundary of `pending`).
    fn held_len(&self) -> usize {
        let text = self.pending.as_str();
        let mut best = 0;
        for stop in &self.stops {
            // A full match would have been found already, so only proper prefixes matter.
            let longest = (stop.len() - 1).min(text.len());
            for k in (best + 1..=longest).rev() {
                if stop.is_char_boundary(k) && text.ends_with(&stop[..k]) {
                    best = k;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(stops: &[&str]) -> StopMatcher {
        StopMatcher::new(stops.iter().map(|s| s.to_string()).collect())
    }

    /// Pushes every piece; returns all emitted text, whether it stopped, and the flushed tail.
    fn run(m: &mut StopMatcher, pieces: &[&str]) -> (String, bool) {
        let mut out = String::new();
        for p in pieces {
            let o = m.push(p);
            out.push_str(&o.emit);
            if o.stopped {
                return (out, true);
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn no_stops_passes_through() {
        let mut m = matcher(&[]);
        assert_eq!(m.push("hello").emit, "hello");
        assert_eq!(m.flush(), "");
    }

    #[test]
    fn stop_split_over_two_pushes() {
        let mut m = matcher(&["</s>"]);
        let o = m.push("Hello </");
        assert_eq!(o.emit, "Hello ");
        assert!(!o.stopped);
        let o = m.push("s> world");
        assert_eq!(o.emit, "");
        assert!(o.stopped);
        assert_eq!(m.flush(), "");
        // Nothing after the stop.
        assert_eq!(
            m.push("more"),
            StopOutcome {
                emit: String::new(),
                stopped: true
            }
        );
    }

    #[test]
    fn stop_split_over_three_pushes() {
        let mut m = matcher(&["STOP"]);
        assert_eq!(m.push("abc S").emit, "abc ");
        assert_eq!(m.push("T").emit, "");
        let o = m.push("OPxyz");
        assert_eq!(
            o,
            StopOutcome {
                emit: String::new(),
                stopped: true
            }
        );

        let mut m = matcher(&["STOP"]);
        assert_eq!(
            run(&mut m, &["one S", "TO", "P two"]),
            ("one ".to_string(), true)
        );
    }

    #[test]
    fn false_start_then_continue() {
        let mut m = matcher(&["</s>"]);
        let o = m.push("a</");
        assert_eq!(o.emit, "a");
        let o = m.push("p>b");
        assert_eq!(o.emit, "</p>b");
        assert!(!o.stopped);
        assert_eq!(m.flush(), "");
        // A false start that is itself followed by a real start.
        let mut m = matcher(&["</s>"]);
        assert_eq!(m.push("<").emit, "");
        assert_eq!(m.push("<").emit, "<");
        assert_eq!(m.push("/").emit, "");
        let o = m.push("s>");
        assert_eq!(
            o,
            StopOutcome {
                emit: String::new(),
                stopped: true
            }
        );
    }

    #[test]
    fn text_before_stop_in_same_push_is_emitted() {
        let mut m = matcher(&["\n\n"]);
        let o = m.push("line one\n\nline two");
        assert_eq!(
            o,
            StopOutcome {
                emit: "line one".into(),
                stopped: true
            }
        );
    }

    #[test]
    fn multiple_stops_earliest_wins() {
        let mut m = matcher(&["world", "lo w"]);
        let o = m.push("hello world");
        assert_eq!(o.emit, "hel");
        assert!(o.stopped);

        // The held tail is the longest prefix of any stop.
        let mut m = matcher(&["abc", "bcd"]);
        assert_eq!(m.push("xab").emit, "x");
        let o = m.push("cd");
        assert_eq!(
            o,
            StopOutcome {
                emit: String::new(),
                stopped: true
            }
        );

        let mut m = matcher(&["abc", "bcd"]);
        assert_eq!(m.push("xab").emit, "x");
        assert_eq!(m.push("x").emit, "abx");
        assert_eq!(m.flush(), "");
    }

    #[test]
    fn empty_stop_strings_are_ignored() {
        let mut m = matcher(&["", "END"]);
        assert_eq!(run(&mut m, &["a", "b", "EN"]), ("abEN".to_string(), false));
        let mut m = matcher(&[""]);
        assert_eq!(
            m.push("text"),
            StopOutcome {
                emit: "text".into(),
                stopped: false
            }
        );
    }

    #[test]
    fn chinese_and_emoji_stops() {
        let mut m = matcher(&["结束了", "🛑!"]);
        let o = m.push("你好，结");
        assert_eq!(o.emit, "你好，");
        let o = m.push("束");
        assert_eq!(o.emit, "");
        let o = m.push("了吗");
        assert_eq!(
            o,
            StopOutcome {
                emit: String::new(),
                stopped: true
            }
        );

        let mut m = matcher(&["结束了", "🛑!"]);
        assert_eq!(
            run(&mut m, &["结果", "很好🛑", "?"]),
            ("结果很好🛑?".to_string(), false)
        );
        let mut m = matcher(&["结束了", "🛑!"]);
        assert_eq!(run(&mut m, &["停🛑", "!后"]), ("停".to_string(), true));
    }

    #[test]
    fn flush_returns_held_tail() {
        let mut m = matcher(&["<|end|>"]);
        assert_eq!(m.push("answer <|e").emit, "answer ");
        assert_eq!(m.flush(), "<|e");
        assert_eq!(m.flush(), "");
    }
}
