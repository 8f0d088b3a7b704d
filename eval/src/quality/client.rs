//! The few OpenAI-compatible calls the quality suites make (chat completions, legacy completions
//! with echo + logprobs, model info), over HTTP only, so any server can be evaluated.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Errors of one request.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connection, timeout or body errors.
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    /// A non-2xx status, with the body's error message when it has one.
    #[error("status {status}: {message}")]
    Status { status: u16, message: String },
    /// A 2xx body without the expected fields.
    #[error("unexpected response: {0}")]
    Shape(String),
}

/// An OpenAI-compatible endpoint and the model to ask.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    /// Base URL ending in `/v1` (no trailing slash).
    pub base: String,
    /// Model id sent with every request.
    pub model: String,
    api_key: Option<String>,
}

/// The result of one chat completion.
#[derive(Debug, Clone)]
pub struct ChatOutput {
    /// `choices[0].message.content` ("" when null).
    pub content: String,
    /// `choices[0].finish_reason`.
    pub finish_reason: Option<String>,
    /// `usage.completion_tokens`, when given.
    pub completion_tokens: Option<u64>,
    /// Wall time of the request (s).
    pub latency_s: f64,
}

/// The legacy `logprobs` object of one echoed prompt.
#[derive(Debug, Clone, Default)]
pub struct EchoLogprobs {
    /// `logprobs.tokens`.
    pub tokens: Vec<String>,
    /// `logprobs.token_logprobs` (nats; null for the first prompt token).
    pub token_logprobs: Vec<Option<f64>>,
}

/// Normalises a base URL: strips a trailing `/`, appends `/v1` unless it already ends with it.
pub fn normalise_base(url: &str) -> String {
    let u = url.trim_end_matches('/');
    if u.ends_with("/v1") {
        u.to_string()
    } else {
        format!("{u}/v1")
    }
}

impl Client {
    /// A client with a per-request timeout.
    pub fn new(
        base_url: &str,
        model: &str,
        api_key: Option<String>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder().timeout(timeout).build()?;
        Ok(Self {
            http,
            base: normalise_base(base_url),
            model: model.to_string(),
            api_key,
        })
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(body);
        if let Some(k) = &self.api_key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or(text);
            return Err(ClientError::Status {
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_str(&text).map_err(|e| ClientError::Shape(format!("not JSON: {e}")))
    }

    /// `GET /v1/models/{model}`; None when the server has no such route or answers an error.
    pub async fn model_info(&self) -> Option<Value> {
        let mut req = self
            .http
            .get(format!("{}/models/{}", self.base, self.model));
        if let Some(k) = &self.api_key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.json().await.ok()
    }

    /// One chat completion. `extra` is merged into the body (max_tokens, temperature,
    /// response_format, seed …).
    pub async fn chat(&self, messages: &Value, extra: &Value) -> Result<ChatOutput, ClientError> {
        let mut body = json!({"model": self.model, "messages": messages});
        merge(&mut body, extra);
        let t0 = Instant::now();
        let v = self.post("/chat/completions", &body).await?;
        let latency_s = t0.elapsed().as_secs_f64();
        let choice = &v["choices"][0];
        if choice.is_null() {
            return Err(ClientError::Shape("no choices".into()));
        }
        Ok(ChatOutput {
            content: choice["message"]["content"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            finish_reason: choice["finish_reason"].as_str().map(str::to_string),
            completion_tokens: v["usage"]["completion_tokens"].as_u64(),
            latency_s,
        })
    }

    /// Prompt log-probabilities of each prompt in `prompts` (one request: `echo: true,
    /// logprobs: 0, max_tokens: 0`), in prompt order.
    pub async fn echo_logprobs(
        &self,
        prompts: &[String],
    ) -> Result<Vec<EchoLogprobs>, ClientError> {
        let body = json!({
            "model": self.model,
            "prompt": prompts,
            "echo": true,
            "logprobs": 0,
            "max_tokens": 0,
            "temperature": 0.0,
        });
        let v = self.post("/completions", &body).await?;
        let choices = v["choices"]
            .as_array()
            .ok_or_else(|| ClientError::Shape("no choices".into()))?;
        let mut out = vec![EchoLogprobs::default(); prompts.len()];
        for (pos, c) in choices.iter().enumerate() {
            let idx = c["index"].as_u64().map(|i| i as usize).unwrap_or(pos);
            let slot = out
                .get_mut(idx)
                .ok_or_else(|| ClientError::Shape(format!("choice index {idx} out of range")))?;
            let lp = &c["logprobs"];
            let tokens = lp["tokens"]
                .as_array()
                .ok_or_else(|| ClientError::Shape("no logprobs.tokens".into()))?;
            slot.tokens = tokens
                .iter()
                .map(|t| t.as_str().unwrap_or("").to_string())
                .collect();
            slot.token_logprobs = lp["token_logprobs"]
                .as_array()
                .ok_or_else(|| ClientError::Shape("no logprobs.token_logprobs".into()))?
                .iter()
                .map(Value::as_f64)
                .collect();
        }
        Ok(out)
    }
}

/// Shallow-merges the object `extra` into the object `body`.
pub fn merge(body: &mut Value, extra: &Value) {
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert_eq!(normalise_base("http://h:1"), "http://h:1/v1");
        assert_eq!(normalise_base("http://h:1/v1/"), "http://h:1/v1");
    }
}
