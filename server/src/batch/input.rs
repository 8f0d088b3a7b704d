//! Parsing a batch input file: JSONL, one request per line,
//! `{"custom_id": "...", "method": "POST", "url": "/v1/chat/completions", "body": {...}}`.
//!
//! Problems of the whole file fail the batch (as OpenAI's validation does): no request line,
//! more than [`MAX_BATCH_LINES`](super::MAX_BATCH_LINES) lines, a `custom_id` used twice.
//! Problems of one line (not JSON, no `custom_id`, wrong `method` or `url`, `body` not an
//! object) make that line an error-file entry; the rest of the batch runs.

use std::collections::HashMap;

use serde_json::Value;

use super::objects::BatchErrors;
use super::{Endpoint, MAX_BATCH_LINES};

/// One non-blank line of the input file.
#[derive(Debug, Clone, PartialEq)]
pub enum InputLine {
    /// A well-formed request.
    Request {
        /// 1-based line number in the file.
        line: u64,
        custom_id: String,
        body: Value,
    },
    /// A line that cannot run; it goes to the error file with `code` and `message`.
    Invalid {
        line: u64,
        custom_id: Option<String>,
        code: &'static str,
        message: String,
    },
}

impl InputLine {
    /// 1-based line number.
    pub fn line(&self) -> u64 {
        match self {
            InputLine::Request { line, .. } | InputLine::Invalid { line, .. } => *line,
        }
    }
}

fn invalid(line: u64, custom_id: Option<String>, code: &'static str, message: String) -> InputLine {
    InputLine::Invalid {
        line,
        custom_id,
        code,
        message,
    }
}

fn parse_line(line: u64, text: &str, endpoint: Endpoint) -> InputLine {
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return invalid(
                line,
                None,
                "invalid_json_line",
                format!("Line {line} is not valid JSON: {e}."),
            )
        }
    };
    let Some(obj) = v.as_object() else {
        return invalid(
            line,
            None,
            "invalid_json_line",
            format!("Line {line} is not a JSON object."),
        );
    };
    let custom_id = match obj.get("custom_id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => {
            return invalid(
                line,
                None,
                "missing_custom_id",
                format!("Line {line} has no `custom_id` string."),
            )
        }
    };
    let cid = Some(custom_id.clone());
    match obj.get("method").and_then(Value::as_str) {
        Some(m) if m.eq_ignore_ascii_case("POST") => {}
        other => {
            return invalid(
                line,
                cid,
                "invalid_method",
                format!(
                    "Line {line}: `method` must be `POST`; got {}.",
                    other.map_or("nothing".to_string(), |m| format!("`{m}`"))
                ),
            )
        }
    }
    match obj.get("url").and_then(Value::as_str) {
        Some(u) if u == endpoint.as_str() => {}
        other => {
            return invalid(
                line,
                cid,
                "mismatched_url",
                format!(
                    "Line {line}: `url` must be the batch's endpoint `{}`; got {}.",
                    endpoint.as_str(),
                    other.map_or("nothing".to_string(), |u| format!("`{u}`"))
                ),
            )
        }
    }
    match obj.get("body") {
        Some(b @ Value::Object(_)) => InputLine::Request {
            line,
            custom_id,
            body: b.clone(),
        },
        _ => invalid(
            line,
            cid,
            "invalid_body",
            format!("Line {line}: `body` must be a JSON object (the request body)."),
        ),
    }
}

/// Parses the whole file. Errors: the batch's validation errors (empty file, too many lines,
/// duplicate `custom_id`).
pub fn parse(bytes: &[u8], endpoint: Endpoint) -> Result<Vec<InputLine>, BatchErrors> {
    let mut lines = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let text = String::from_utf8_lossy(raw);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        if lines.len() == MAX_BATCH_LINES {
            return Err(BatchErrors::one(
                "too_many_requests",
                format!("The input file has more than {MAX_BATCH_LINES} requests."),
                None,
                Some(i as u64 + 1),
            ));
        }
        lines.push(parse_line(i as u64 + 1, text, endpoint));
    }
    if lines.is_empty() {
        return Err(BatchErrors::one(
            "empty_file",
            "The input file has no requests.",
            None,
            None,
        ));
    }
    let mut seen: HashMap<&str, u64> = HashMap::new();
    for l in &lines {
        let (line, cid) = match l {
            InputLine::Request {
                line, custom_id, ..
            } => (*line, Some(custom_id.as_str())),
            InputLine::Invalid {
                line, custom_id, ..
            } => (*line, custom_id.as_deref()),
        };
        if let Some(cid) = cid {
            if let Some(first) = seen.insert(cid, line) {
                return Err(BatchErrors::one(
                    "duplicate_custom_id",
                    format!(
                        "The custom_id `{cid}` on line {line} is already used on line {first}; \
                         each request needs a unique custom_id."
                    ),
                    Some("custom_id"),
                    Some(line),
                ));
            }
        }
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAT: Endpoint = Endpoint::ChatCompletions;

    #[test]
    fn good_and_bad_lines() {
        let file = b"{\"custom_id\":\"a\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{\"messages\":[]}}\n\
\n\
not json\n\
{\"custom_id\":\"b\",\"method\":\"GET\",\"url\":\"/v1/chat/completions\",\"body\":{}}\n\
{\"custom_id\":\"c\",\"method\":\"POST\",\"url\":\"/v1/completions\",\"body\":{}}\n\
{\"custom_id\":\"d\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":3}\r\n\
{\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{}}";
        let lines = parse(file, CHAT).unwrap();
        assert_eq!(lines.len(), 6);
        assert!(
            matches!(&lines[0], InputLine::Request { line: 1, custom_id, .. } if custom_id == "a")
        );
        let codes: Vec<_> = lines[1..]
            .iter()
            .map(|l| match l {
                InputLine::Invalid { code, line, .. } => (*line, *code),
                _ => panic!("{l:?}"),
            })
            .collect();
        assert_eq!(
            codes,
            [
                (3, "invalid_json_line"),
                (4, "invalid_method"),
                (5, "mismatched_url"),
                (6, "invalid_body"),
                (7, "missing_custom_id")
            ]
        );
    }

    #[test]
    fn whole_file_errors() {
        assert_eq!(
            parse(b"\n \n", CHAT).unwrap_err().data[0].code,
            "empty_file"
        );
        let dup = b"{\"custom_id\":\"a\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{}}\n\
{\"custom_id\":\"a\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{}}\n";
        let e = parse(dup, CHAT).unwrap_err();
        assert_eq!(e.data[0].code, "duplicate_custom_id");
        assert_eq!(e.data[0].line, Some(2));
        assert_eq!(e.data[0].param.as_deref(), Some("custom_id"));
    }
}
