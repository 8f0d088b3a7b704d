//! One request to an OpenAI-compatible endpoint, timed: streaming (SSE) or not.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};

use super::sse::{SseEvent, SseParser};
use super::stats::RequestResult;
use crate::report::{join_url, truncate};

/// Which OpenAI endpoint the requests go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// `POST /chat/completions` with one user message.
    Chat,
    /// `POST /completions` with the prompt as text.
    Completions,
}

/// Most bytes of an error body kept in reports.
const MAX_ERROR_BODY: usize = 2000;

/// What every request of a run shares.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    /// Base URL, e.g. `http://127.0.0.1:8080/v1`.
    pub base_url: String,
    pub api_key: Option<String>,
    pub model: String,
    pub endpoint: Endpoint,
    pub stream: bool,
    /// `max_tokens` sent with every request.
    pub max_tokens: usize,
    /// Sends `ignore_eos: true` (llama.cpp, vLLM and govlm accept it).
    pub ignore_eos: bool,
    /// Sampling temperature sent, if any.
    pub temperature: Option<f64>,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl RequestSpec {
    /// The URL requests are posted to.
    pub fn url(&self) -> String {
        join_url(
            &self.base_url,
            match self.endpoint {
                Endpoint::Chat => "chat/completions",
                Endpoint::Completions => "completions",
            },
        )
    }

    /// The JSON body for one prompt.
    pub fn body(&self, prompt: &str) -> Value {
        let mut b = match self.endpoint {
            Endpoint::Chat => json!({
                "model": self.model,
                "messages": [{"role": "user", "content": prompt}],
            }),
            Endpoint::Completions => json!({"model": self.model, "prompt": prompt}),
        };
        b["max_tokens"] = json!(self.max_tokens);
        b["stream"] = json!(self.stream);
        if self.stream {
            b["stream_options"] = json!({"include_usage": true});
        }
        if self.ignore_eos {
            b["ignore_eos"] = json!(true);
        }
        if let Some(t) = self.temperature {
            b["temperature"] = json!(t);
        }
        b
    }
}

/// The generated text of a chunk or response choice: `delta.content` (and
/// `delta.reasoning_content`) for chat chunks, `message.content` for chat responses, `text` for
/// completions.
fn choice_text(choice: &Value) -> String {
    let mut s = String::new();
    for ptr in [
        "/delta/reasoning_content",
        "/delta/content",
        "/message/reasoning_content",
        "/message/content",
        "/text",
    ] {
        if let Some(t) = choice.pointer(ptr).and_then(|v| v.as_str()) {
            s.push_str(t);
        }
    }
    s
}

/// Tracks one streamed answer while its events arrive.
#[derive(Debug, Default)]
pub struct StreamState {
    /// Seconds (from sending) of each chunk that carried content.
    pub content_times: Vec<f64>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub done: bool,
    pub finish_seen: bool,
    /// First error event's data.
    pub error: Option<String>,
}

impl StreamState {
    /// Takes one SSE event that arrived `t` seconds after sending.
    pub fn on_event(&mut self, ev: &SseEvent, t: f64) {
        if self.done || self.error.is_some() {
            return;
        }
        if ev.is_done() {
            self.done = true;
            return;
        }
        if ev.is_error() {
            self.error = Some(ev.data.clone());
            return;
        }
        let v: Value = match serde_json::from_str(&ev.data) {
            Ok(v) => v,
            Err(_) => {
                self.error = Some(format!("chunk is not JSON: {}", ev.data));
                return;
            }
        };
        if v.get("error").is_some_and(|e| !e.is_null()) {
            self.error = Some(ev.data.clone());
            return;
        }
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            self.prompt_tokens = u.get("prompt_tokens").and_then(Value::as_u64);
            self.completion_tokens = u.get("completion_tokens").and_then(Value::as_u64);
        }
        let mut has_content = false;
        for c in v
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !choice_text(c).is_empty() {
                has_content = true;
            }
            if c.get("finish_reason").is_some_and(|f| !f.is_null()) {
                self.finish_seen = true;
            }
        }
        if has_content {
            self.content_times.push(t);
        }
    }

    /// The request's result once the body has ended, `e2e` seconds after sending.
    pub fn finish(self, e2e: f64) -> RequestResult {
        if let Some(e) = self.error {
            return failure("stream_error", &e, e2e);
        }
        if !self.done && !self.finish_seen {
            return failure(
                "incomplete_stream",
                "the stream ended without `data: [DONE]` or a finish_reason",
                e2e,
            );
        }
        let ttft = self.content_times.first().copied();
        let itl = self.content_times.windows(2).map(|w| w[1] - w[0]).collect();
        let (output_tokens, usage_reported) = match self.completion_tokens {
            Some(n) => (n, true),
            None => (self.content_times.len() as u64, false),
        };
        RequestResult {
            error: None,
            ttft,
            itl,
            e2e,
            prompt_tokens: self.prompt_tokens,
            output_tokens,
            usage_reported,
        }
    }
}

fn failure(kind: &str, body: &str, e2e: f64) -> RequestResult {
    RequestResult {
        error: Some((kind.to_string(), truncate(body, MAX_ERROR_BODY))),
        e2e,
        ..Default::default()
    }
}

/// Error kind and message of a reqwest error (`timeout`, `connect` or `transport`).
fn transport_failure(e: &reqwest::Error, e2e: f64) -> RequestResult {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "transport"
    };
    // The full chain names the cause (e.g. "connection refused").
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    failure(kind, &msg, e2e)
}

/// Sends one request and measures it. Never fails: errors are recorded in the result
/// (`http_<status>` with the body, `timeout`, `connect`, `transport`, `stream_error`,
/// `incomplete_stream`, `bad_response`).
pub async fn send(client: &reqwest::Client, spec: &RequestSpec, prompt: &str) -> RequestResult {
    let body = spec.body(prompt);
    let mut req = client.post(spec.url()).json(&body).timeout(spec.timeout);
    if let Some(k) = &spec.api_key {
        req = req.bearer_auth(k);
    }
    let t0 = Instant::now();
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return transport_failure(&e, t0.elapsed().as_secs_f64()),
    };
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        return failure(
            &format!("http_{}", status.as_u16()),
            &text,
            t0.elapsed().as_secs_f64(),
        );
    }
    if !spec.stream {
        let text = match resp.text().await {
            Ok(t) => t,
            Err(e) => return transport_failure(&e, t0.elapsed().as_secs_f64()),
        };
        let e2e = t0.elapsed().as_secs_f64();
        return parse_full_response(&text, e2e);
    }
    let mut state = StreamState::default();
    let mut parser = SseParser::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => {
                let t = t0.elapsed().as_secs_f64();
                for ev in parser.push(&bytes) {
                    state.on_event(&ev, t);
                }
            }
            Err(e) => return transport_failure(&e, t0.elapsed().as_secs_f64()),
        }
    }
    let e2e = t0.elapsed().as_secs_f64();
    for ev in parser.finish() {
        state.on_event(&ev, e2e);
    }
    state.finish(e2e)
}

/// The result of a non-streaming answer: output tokens from `usage.completion_tokens`, else 1
/// if any text came back (the count of tokens is unknown without a tokenizer).
pub fn parse_full_response(text: &str, e2e: f64) -> RequestResult {
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => return failure("bad_response", text, e2e),
    };
    if v.get("error").is_some_and(|e| !e.is_null()) {
        return failure("bad_response", text, e2e);
    }
    let Some(choices) = v.get("choices").and_then(Value::as_array) else {
        return failure("bad_response", text, e2e);
    };
    let usage = v.get("usage").filter(|u| !u.is_null());
    let completion = usage
        .and_then(|u| u.get("completion_tokens"))
        .and_then(Value::as_u64);
    let any_text = choices.iter().any(|c| !choice_text(c).is_empty());
    RequestResult {
        error: None,
        ttft: None,
        itl: Vec::new(),
        e2e,
        prompt_tokens: usage
            .and_then(|u| u.get("prompt_tokens"))
            .and_then(Value::as_u64),
        output_tokens: completion.unwrap_or(u64::from(any_text)),
        usage_reported: completion.is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(data: &str) -> SseEvent {
        SseEvent {
            event: None,
            data: data.to_string(),
        }
    }

    #[test]
    fn bodies_carry_the_options() {
        let mut spec = RequestSpec {
            base_url: "http://h/v1/".into(),
            api_key: None,
            model: "m".into(),
            endpoint: Endpoint::Chat,
            stream: true,
            max_tokens: 7,
            ignore_eos: true,
            temperature: Some(0.0),
            timeout: Duration::from_secs(1),
        };
        assert_eq!(spec.url(), "http://h/v1/chat/completions");
        let b = spec.body("hi");
        assert_eq!(b["messages"][0]["content"], "hi");
        assert_eq!(b["max_tokens"], 7);
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert_eq!(b["ignore_eos"], true);
        assert_eq!(b["temperature"], 0.0);
        spec.endpoint = Endpoint::Completions;
        spec.stream = false;
        spec.ignore_eos = false;
        spec.temperature = None;
        assert_eq!(spec.url(), "http://h/v1/completions");
        let b = spec.body("hi");
        assert_eq!(b["prompt"], "hi");
        assert!(b.get("stream_options").is_none() && b.get("ignore_eos").is_none());
        assert!(b.get("temperature").is_none());
    }

    #[test]
    fn stream_state_times_content_and_reads_usage() {
        let mut s = StreamState::default();
        s.on_event(
            &ev(r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#),
            0.05,
        );
        s.on_event(&ev(r#"{"choices":[{"delta":{"content":"a"}}]}"#), 0.1);
        s.on_event(&ev(r#"{"choices":[{"delta":{"content":"b"}}]}"#), 0.3);
        s.on_event(
            &ev(r#"{"choices":[{"delta":{},"finish_reason":"length"}]}"#),
            0.35,
        );
        s.on_event(
            &ev(r#"{"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":3}}"#),
            0.4,
        );
        s.on_event(&ev("[DONE]"), 0.4);
        let r = s.finish(0.5);
        assert!(r.ok());
        assert_eq!(r.ttft, Some(0.1));
        assert_eq!(r.itl.len(), 1);
        assert!((r.itl[0] - 0.2).abs() < 1e-12);
        assert_eq!(
            (r.output_tokens, r.prompt_tokens, r.usage_reported),
            (3, Some(4), true)
        );
    }

    #[test]
    fn stream_without_usage_counts_chunks() {
        let mut s = StreamState::default();
        for (i, t) in ["x", "y", "z"].iter().enumerate() {
            s.on_event(
                &ev(&format!(r#"{{"choices":[{{"text":"{t}"}}]}}"#)),
                i as f64,
            );
        }
        s.on_event(&ev("[DONE]"), 3.0);
        let r = s.finish(3.0);
        assert_eq!((r.output_tokens, r.usage_reported), (3, false));
    }

    #[test]
    fn stream_errors_and_truncation_are_failures() {
        let mut s = StreamState::default();
        s.on_event(&ev(r#"{"choices":[{"delta":{"content":"a"}}]}"#), 0.1);
        s.on_event(&ev(r#"{"error":{"message":"out of memory"}}"#), 0.2);
        let r = s.finish(0.3);
        assert_eq!(r.error.as_ref().unwrap().0, "stream_error");
        assert!(r.error.unwrap().1.contains("out of memory"));

        let mut s = StreamState::default();
        s.on_event(
            &SseEvent {
                event: Some("error".into()),
                data: "bad".into(),
            },
            0.1,
        );
        assert_eq!(
            s.finish(0.1).error.unwrap(),
            ("stream_error".into(), "bad".into())
        );

        let mut s = StreamState::default();
        s.on_event(&ev(r#"{"choices":[{"delta":{"content":"a"}}]}"#), 0.1);
        assert_eq!(s.finish(0.2).error.unwrap().0, "incomplete_stream");

        let mut s = StreamState::default();
        s.on_event(&ev("not json"), 0.1);
        assert_eq!(s.finish(0.2).error.unwrap().0, "stream_error");
    }

    #[test]
    fn full_responses() {
        let r = parse_full_response(
            r#"{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":2,"completion_tokens":5}}"#,
            1.0,
        );
        assert!(r.ok() && r.ttft.is_none());
        assert_eq!((r.output_tokens, r.prompt_tokens), (5, Some(2)));
        let r = parse_full_response(r#"{"choices":[{"text":"hi"}]}"#, 1.0);
        assert_eq!((r.output_tokens, r.usage_reported), (1, false));
        assert_eq!(
            parse_full_response("<html>", 1.0).error.unwrap().0,
            "bad_response"
        );
        assert_eq!(
            parse_full_response(r#"{"error":"x"}"#, 1.0)
                .error
                .unwrap()
                .0,
            "bad_response"
        );
    }
}
