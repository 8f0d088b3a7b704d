//! Request and response bodies of the OpenAI API, field for field.
//!
//! Request types are lenient: unknown fields are ignored (clients send extras), and fields whose
//! shape OpenAI allows to vary (`prompt`, `stop`, message `content`) are kept as raw JSON and
//! checked in [`crate::validate`], so that every error can name its `param`.
//! Response types serialise to exactly what the official clients parse.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `stream_options` of a streaming request.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` (and `usage: null` on every other chunk).
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// A seed as clients send it: any JSON integer (negative ones are reinterpreted as `u64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seed(pub u64);

impl<'de> Deserialize<'de> for Seed {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        if let Some(u) = n.as_u64() {
            Ok(Seed(u))
        } else if let Some(i) = n.as_i64() {
            Ok(Seed(i as u64))
        } else if n.is_f64() && n.as_f64().is_some_and(|f| f.fract() == 0.0) {
            Err(serde::de::Error::custom(format!(
                "seed {n} is out of range: it must be an integer from {} to {}",
                i64::MIN,
                u64::MAX
            )))
        } else {
            Err(serde::de::Error::custom(format!(
                "seed must be an integer, got {n}"
            )))
        }
    }
}

/// One message of a chat request; `content` is a string, an array of parts, or null.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessageIn {
    pub role: String,
    #[serde(default)]
    pub content: Option<Value>,
    /// Accepted and ignored (not passed to templates yet).
    #[serde(default)]
    pub name: Option<String>,
}

/// `POST /v1/chat/completions` body.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ChatCompletionRequest {
    /// Required by OpenAI; when absent the server's default model is used.
    #[serde(default)]
    pub model: Option<String>,
    /// May be omitted (empty) when `prompt` supplies the messages.
    #[serde(default)]
    pub messages: Vec<ChatMessageIn>,
    /// govlm: a prompt-library template, `{"id", "version"?, "variables"?}` (the shape of OpenAI's
    /// reusable prompts), rendered into leading system and user messages by
    /// [`crate::prompts::expand_chat_request`]. Kept raw so that errors name e.g.
    /// `prompt.variables.transcript`.
    #[serde(default)]
    pub prompt: Option<Value>,
    /// govlm: convert the output to another Chinese script: `"hk"` / `"zh-Hant-HK"` = Traditional
    /// Chinese, Hong Kong standard (OpenCC s2hk). Also set by a template's `output_script`.
    #[serde(default)]
    pub chinese_script: Option<String>,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
    /// Parsed separately from the same body (see [`crate::json::FromBody`]), so that type errors
    /// keep their field path.
    #[serde(skip)]
    pub sampling: SamplingFields,
    /// Return logprobs of each generated token.
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// 0..=20 alternatives per token (needs `logprobs: true`).
    #[serde(default)]
    pub top_logprobs: Option<i64>,
    #[serde(default)]
    pub response_format: Option<Value>,
    /// Passed through to the chat template.
    #[serde(default)]
    pub tools: Option<Value>,
    /// `"auto"` (default) or `"none"` (the tools are not shown to the model); forcing a call
    /// (`"required"`, a named function) is refused: replies are not parsed into tool calls.
    #[serde(default)]
    pub tool_choice: Option<Value>,
}

/// `POST /v1/completions` body.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    /// String, list of strings, list of token ids, or list of token-id lists.
    #[serde(default)]
    pub prompt: Option<Value>,
    /// Default 16; may be 0 with `echo` (scoring).
    #[serde(default)]
    pub max_tokens: Option<i64>,
    /// Parsed separately from the same body (see [`crate::json::FromBody`]), so that type errors
    /// keep their field path.
    #[serde(skip)]
    pub sampling: SamplingFields,
    /// Legacy logprobs: number of alternatives (0..=5) per token.
    #[serde(default)]
    pub logprobs: Option<i64>,
    /// Structured output, as on chat completions (`json_object` / `json_schema`; vLLM accepts it
    /// here too).
    #[serde(default)]
    pub response_format: Option<Value>,
    /// Prepend the prompt to the text (and its logprobs to `logprobs`).
    #[serde(default)]
    pub echo: Option<bool>,
    /// Not supported: 400 when non-empty.
    #[serde(default)]
    pub suffix: Option<String>,
    /// govlm: convert the generated text's Chinese script (as on chat completions; the echoed
    /// prompt is returned as sent).
    #[serde(default)]
    pub chinese_script: Option<String>,
    #[serde(default)]
    pub best_of: Option<i64>,
}

/// Sampling and stopping fields shared by both endpoints.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SamplingFields {
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub top_k: Option<i64>,
    #[serde(default)]
    pub min_p: Option<f64>,
    #[serde(default)]
    pub repetition_penalty: Option<f64>,
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    #[serde(default)]
    pub seed: Option<Seed>,
    /// A string or a list of strings.
    #[serde(default)]
    pub stop: Option<Value>,
    /// vLLM extension: token ids that end generation.
    #[serde(default)]
    pub stop_token_ids: Option<Vec<i64>>,
    #[serde(default)]
    pub ignore_eos: Option<bool>,
    #[serde(default)]
    pub n: Option<i64>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub logit_bias: Option<Value>,
    /// Ignored.
    #[serde(default)]
    pub user: Option<Value>,
}

/// Token counts of a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    /// Usage with `total_tokens` computed.
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// One alternative in chat logprobs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    /// UTF-8 bytes of `token`.
    pub bytes: Vec<u8>,
}

/// One generated token in chat logprobs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

/// `choices[].logprobs` of a chat response.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

/// The assistant message of a chat choice.
#[derive(Debug, Clone, Serialize)]
pub struct ChatResponseMessage {
    pub role: &'static str,
    pub content: String,
}

/// One choice of a chat response.
#[derive(Debug, Clone, Serialize)]
pub struct ChatChoice {
    pub index: usize,
    pub message: ChatResponseMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<String>,
}

/// `chat.completion` object.
#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletionResponse {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

/// `delta` of a chat chunk; absent fields are omitted.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// One choice of a chat chunk.
#[derive(Debug, Clone, Serialize)]
pub struct ChatChunkChoice {
    pub index: usize,
    pub delta: ChatDelta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<String>,
}

/// `chat.completion.chunk` object. `usage`: omitted (`None`), `null` (`Some(None)`, when the
/// client asked for usage but this is not the last chunk) or the usage.
#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<ChatChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

/// Legacy `choices[].logprobs` of a completion: parallel arrays, one entry per token.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    /// `None` for the first prompt token (echo).
    pub token_logprobs: Vec<Option<f32>>,
    /// Token text -> logprob of the top alternatives; `None` for the first prompt token.
    pub top_logprobs: Vec<Option<serde_json::Map<String, Value>>>,
    /// Character offset of each token in the choice's text.
    pub text_offset: Vec<usize>,
}

/// One choice of a completion (or of a completion chunk).
#[derive(Debug, Clone, Serialize)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<String>,
}

/// `text_completion` object (also used for streamed chunks).
#[derive(Debug, Clone, Serialize)]
pub struct CompletionResponse {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelObject {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: String,
    /// vLLM's extension: context length in tokens.
    pub max_model_len: usize,
}

/// `GET /v1/models` body.
#[derive(Debug, Clone, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelObject>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chat_request_ignores_unknown_fields_and_reads_sampling() {
        use crate::json::FromBody;
        let r = ChatCompletionRequest::from_body(&json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0, "seed": -1, "stop": ["a"], "frobnicate": true, "n": 2,
            "stream_options": {"include_usage": true}
        }))
        .unwrap();
        assert_eq!(r.messages.len(), 1);
        assert_eq!(r.sampling.temperature, Some(0.0));
        assert_eq!(r.sampling.seed, Some(Seed(u64::MAX)));
        assert_eq!(r.sampling.n, Some(2));
        assert_eq!(r.sampling.stream_options.unwrap().include_usage, Some(true));
    }

    #[test]
    fn chunk_usage_null_or_absent() {
        let mut c = ChatCompletionChunk {
            id: "x".into(),
            object: "chat.completion.chunk",
            created: 1,
            model: "m".into(),
            system_fingerprint: "fp".into(),
            choices: vec![ChatChunkChoice {
                index: 0,
                delta: ChatDelta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                },
                logprobs: None,
                finish_reason: None,
            }],
            usage: None,
        };
        let v = serde_json::to_value(&c).unwrap();
        assert!(v.get("usage").is_none());
        assert_eq!(
            v["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(v["choices"][0]["finish_reason"], Value::Null);
        c.usage = Some(None);
        assert_eq!(serde_json::to_value(&c).unwrap()["usage"], Value::Null);
        c.usage = Some(Some(Usage::new(3, 4)));
        assert_eq!(
            serde_json::to_value(&c).unwrap()["usage"],
            json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7})
        );
    }
}

#[cfg(test)]
mod seed_tests {
    use super::Seed;

    #[test]
    fn seeds_parse_or_say_why_not() {
        let parse = |s: &str| serde_json::from_str::<Seed>(s);
        assert_eq!(parse("42").unwrap(), Seed(42));
        assert_eq!(parse("-1").unwrap(), Seed(u64::MAX));
        let e = parse("18446744073709551616").unwrap_err().to_string();
        assert!(e.contains("out of range"), "{e}");
        let e = parse("1.5").unwrap_err().to_string();
        assert!(e.contains("must be an integer"), "{e}");
    }
}
