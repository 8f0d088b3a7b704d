//! Request validation: OpenAI request fields -> engine requests. Every error names its `param`.
//!
//! Nothing here touches a model; limits (vocabulary size, context length) are passed in, so the
//! rules can be unit-tested.

use govlm_inference::chat_template::ChatMessage;
use govlm_inference::engine::GenerateRequest;
use govlm_inference::sampling::SamplingParams;
use serde_json::Value;

use crate::error::ApiError;
use crate::openai::{ChatCompletionRequest, ChatMessageIn, CompletionRequest, SamplingFields};

/// Most stop strings accepted (OpenAI allows 4; be lenient).
pub const MAX_STOP: usize = 16;
/// Most choices per request (`n`).
pub const MAX_N: i64 = 16;
/// Most alternatives per token in chat logprobs.
pub const MAX_TOP_LOGPROBS: i64 = 20;
/// Most alternatives per token in legacy completion logprobs.
pub const MAX_LEGACY_LOGPROBS: i64 = 5;
/// Most prompts in one completion request (times `n`, the number of engine sequences).
pub const MAX_CHOICES: usize = 1024;
/// `max_tokens` of a completion when absent (OpenAI's default).
pub const DEFAULT_COMPLETION_MAX_TOKENS: usize = 16;

/// Fields common to both endpoints after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Common {
    /// Sampling parameters with the request's seed (per-choice seeds derive from it) and no
    /// logprobs yet.
    pub sampling: SamplingParams,
    /// Choices per prompt, 1..=16.
    pub n: usize,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
}

fn in_range(
    param: &str,
    v: Option<f64>,
    default: f32,
    ok: impl Fn(f64) -> bool,
    rule: &str,
) -> Result<f32, ApiError> {
    match v {
        None => Ok(default),
        Some(x) if x.is_finite() && ok(x) => Ok(x as f32),
        Some(x) => Err(ApiError::invalid(
            param,
            format!("`{param}` must be {rule}; got {x}."),
        )),
    }
}

/// Validates the sampling and stopping fields; `vocab_size` bounds `stop_token_ids`.
pub fn common(f: &SamplingFields, vocab_size: usize) -> Result<Common, ApiError> {
    let temperature = in_range(
        "temperature",
        f.temperature,
        1.0,
        |x| (0.0..=2.0).contains(&x),
        "between 0 and 2",
    )?;
    let top_p = in_range(
        "top_p",
        f.top_p,
        1.0,
        |x| x > 0.0 && x <= 1.0,
        "greater than 0 and at most 1",
    )?;
    let min_p = in_range(
        "min_p",
        f.min_p,
        0.0,
        |x| (0.0..=1.0).contains(&x),
        "between 0 and 1",
    )?;
    let repetition_penalty = in_range(
        "repetition_penalty",
        f.repetition_penalty,
        1.0,
        |x| x > 0.0,
        "greater than 0",
    )?;
    let presence_penalty = in_range(
        "presence_penalty",
        f.presence_penalty,
        0.0,
        |x| (-2.0..=2.0).contains(&x),
        "between -2 and 2",
    )?;
    let frequency_penalty = in_range(
        "frequency_penalty",
        f.frequency_penalty,
        0.0,
        |x| (-2.0..=2.0).contains(&x),
        "between -2 and 2",
    )?;
    let top_k = match f.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => usize::try_from(k).unwrap_or(usize::MAX),
        Some(k) => {
            return Err(ApiError::invalid(
                "top_k",
                format!("`top_k` must be -1 or 0 (off) or a positive integer; got {k}."),
            ))
        }
    };
    let n = match f.n {
        None => 1,
        Some(n) if (1..=MAX_N).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::invalid(
                "n",
                format!("`n` must be between 1 and {MAX_N}; got {n}."),
            ))
        }
    };
    let stop = stop_strings(f.stop.as_ref())?;
    let mut stop_token_ids = Vec::new();
    for (i, &id) in f.stop_token_ids.iter().flatten().enumerate() {
        match u32::try_from(id) {
            Ok(u) if (u as usize) < vocab_size => stop_token_ids.push(u),
            _ => {
                return Err(ApiError::invalid(
                    format!("stop_token_ids[{i}]"),
                    format!("token id {id} is outside the vocabulary (0..{vocab_size})."),
                ))
            }
        }
    }
    if let Some(bias) = &f.logit_bias {
        let empty = bias.is_null() || bias.as_object().is_some_and(|m| m.is_empty());
        if !empty {
            return Err(ApiError::invalid(
                "logit_bias",
                "`logit_bias` is not supported yet.",
            ));
        }
    }
    let stream = f.stream.unwrap_or(false);
    let include_usage = f
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    Ok(Common {
        sampling: SamplingParams {
            temperature,
            top_p,
            top_k,
            min_p,
            repetition_penalty,
            presence_penalty,
            frequency_penalty,
            seed: f.seed.map(|s| s.0),
            top_logprobs: None,
        },
        n,
        stop,
        stop_token_ids,
        ignore_eos: f.ignore_eos.unwrap_or(false),
        stream,
        include_usage,
    })
}

/// `stop`: null, a string, or a list of at most [`MAX_STOP`] strings. Empty strings are dropped.
pub fn stop_strings(v: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let list: Vec<String> = match v {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            if items.len() > MAX_STOP {
                return Err(ApiError::invalid(
                    "stop",
                    format!(
                        "`stop` may hold at most {MAX_STOP} strings; got {}.",
                        items.len()
                    ),
                ));
            }
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) => out.push(s.clone()),
                    _ => {
                        return Err(ApiError::invalid(
                            format!("stop[{i}]"),
                            "each stop sequence must be a string.",
                        ))
                    }
                }
            }
            out
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "stop",
                "`stop` must be a string or a list of strings.",
            ))
        }
    };
    Ok(list.into_iter().filter(|s| !s.is_empty()).collect())
}

/// Checks and converts chat messages. Roles: system, developer (as system), user, assistant,
/// tool. Content: a string, a list of `{"type": "text", "text": ...}` parts (joined with "\n"),
/// or null (empty).
pub fn chat_messages(messages: &[ChatMessageIn]) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must hold at least one message.",
        ));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            r @ ("user" | "assistant" | "tool") => r,
            other => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!(
                        "Invalid role `{other}` in messages[{i}]; expected one of system, developer, user, assistant, tool."
                    ),
                ))
            }
        };
        // Only an assistant turn may come without content (OpenAI: when it carries tool calls).
        if role != "assistant" && m.content.as_ref().is_none_or(Value::is_null) {
            return Err(ApiError::invalid(
                format!("messages[{i}].content"),
                format!("messages[{i}] (role `{role}`) needs a `content` string or array of text parts."),
            ));
        }
        let content = message_content(m.content.as_ref(), i)?;
        out.push(ChatMessage {
            role: role.to_string(),
            content,
        });
    }
    Ok(out)
}

fn message_content(v: Option<&Value>, i: usize) -> Result<String, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                let param = format!("messages[{i}].content[{j}]");
                let kind = part.get("type").and_then(Value::as_str);
                match (kind, part.get("text")) {
                    (Some("text"), Some(Value::String(t))) => texts.push(t.as_str()),
                    (Some("text"), _) => {
                        return Err(ApiError::invalid(
                            format!("{param}.text"),
                            "a text part needs a string `text`.",
                        ))
                    }
                    (Some(other), _) => {
                        return Err(ApiError::invalid(
                            format!("{param}.type"),
                            format!(
                                "content parts of type `{other}` are not supported; only `text`."
                            ),
                        ))
                    }
                    (None, _) => {
                        return Err(ApiError::invalid(
                            format!("{param}.type"),
                            "each content part needs a `type`.",
                        ))
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        Some(_) => Err(ApiError::invalid(
            format!("messages[{i}].content"),
            "`content` must be a string or a list of content parts.",
        )),
    }
}

/// Chat `max_completion_tokens` (preferred) or `max_tokens`: at least 1 when given.
pub fn chat_max_tokens(req: &ChatCompletionRequest) -> Result<Option<usize>, ApiError> {
    let (param, v) = match (req.max_completion_tokens, req.max_tokens) {
        (Some(v), _) => ("max_completion_tokens", v),
        (None, Some(v)) => ("max_tokens", v),
        (None, None) => return Ok(None),
    };
    if v < 1 {
        return Err(ApiError::invalid(
            param,
            format!("`{param}` must be at least 1; got {v}."),
        ));
    }
    Ok(Some(usize::try_from(v).unwrap_or(usize::MAX)))
}

/// Chat `logprobs` + `top_logprobs` -> the engine's `top_logprobs` (None = no logprobs).
pub fn chat_logprobs(req: &ChatCompletionRequest) -> Result<Option<usize>, ApiError> {
    let top = match req.top_logprobs {
        None => 0,
        Some(k) if (0..=MAX_TOP_LOGPROBS).contains(&k) => k as usize,
        Some(k) => {
            return Err(ApiError::invalid(
                "top_logprobs",
                format!("`top_logprobs` must be between 0 and {MAX_TOP_LOGPROBS}; got {k}."),
            ))
        }
    };
    let want = req.logprobs.unwrap_or(false);
    if !want && req.top_logprobs.is_some_and(|k| k > 0) {
        return Err(ApiError::invalid(
            "top_logprobs",
            "`top_logprobs` requires `logprobs: true`.",
        ));
    }
    Ok(want.then_some(top))
}

/// `response_format`: absent, `null` and `{"type": "text"}` give `None`; `json_object` and
/// `json_schema` give the format to enforce. Errors: 400 with param `response_format`, the
/// message naming the sub-field at fault.
pub fn response_format(
    v: Option<&Value>,
) -> Result<Option<govlm_inference::structured::ResponseFormat>, ApiError> {
    Ok(govlm_inference::structured::ResponseFormat::parse(v)?)
}

/// Validates `response_format` and compiles it for `engine` into the constraint every sequence
/// of the request starts from (clone it per sequence). Runs on the blocking pool: the model's
/// compiler is built on first use. Errors: 400 with param `response_format` (malformed field,
/// invalid or unsupported schema, model without structured output).
pub async fn response_constraint(
    engine: &govlm_inference::engine::EngineHandle,
    v: Option<&Value>,
) -> Result<Option<govlm_inference::structured::Constraint>, ApiError> {
    let Some(format) = response_format(v)? else {
        return Ok(None);
    };
    let eng = engine.clone();
    crate::routes::blocking(move || Ok(eng.structured()?.compile(&format)?))
        .await
        .map(Some)
}

/// Checks that converting the output's Chinese script cannot break `response_format`: a JSON
/// schema whose property names, enum / const values or patterns contain Chinese characters would
/// no longer match once those characters are converted (e.g. an enum value `经济` generated by
/// the grammar becomes `經濟`). Annotations (`title`, `description`, `$comment`, `examples`) do
/// not constrain the output and are ignored. Error: 400 naming `chinese_script`.
pub fn script_fits_response_format(response_format: Option<&Value>) -> Result<(), ApiError> {
    fn fixed_han(v: &Value) -> Option<String> {
        let han = |s: &str| s.chars().any(govlm_inference::script::is_phrase_char);
        match v {
            Value::String(s) if han(s) => Some(s.clone()),
            Value::Array(items) => items.iter().find_map(fixed_han),
            Value::Object(map) => map.iter().find_map(|(k, v)| {
                if matches!(
                    k.as_str(),
                    "title" | "description" | "$comment" | "examples"
                ) {
                    None
                } else if han(k) {
                    Some(k.clone())
                } else {
                    fixed_han(v)
                }
            }),
            _ => None,
        }
    }
    let Some(schema) = response_format.and_then(|f| f.get("json_schema")) else {
        return Ok(());
    };
    match fixed_han(schema.get("schema").unwrap_or(&Value::Null)) {
        None => Ok(()),
        Some(text) => Err(ApiError::invalid(
            "chinese_script",
            format!(
                "`chinese_script` cannot be combined with this `response_format`: its schema fixes \
                 Chinese text (`{text}`) that the conversion would change. Put the wanted script \
                 in the schema itself, or drop `chinese_script`."
            ),
        )),
    }
}

/// `tools`: null/absent, or an array of `{"type": "function", "function": {"name": ..}}`
/// objects (passed to the chat template as given). Error: 400 naming the offending element.
pub fn tools(v: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let items = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(ApiError::invalid(
                "tools",
                "`tools` must be an array of {\"type\": \"function\", \"function\": {\"name\", ...}} objects.",
            ))
        }
    };
    for (i, t) in items.iter().enumerate() {
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(ApiError::invalid(
                format!("tools[{i}].type"),
                format!("tools[{i}] must have `\"type\": \"function\"`."),
            ));
        }
        if t.pointer("/function/name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(ApiError::invalid(
                format!("tools[{i}].function.name"),
                format!("tools[{i}] needs a `function` object with a non-empty `name`."),
            ));
        }
    }
    Ok(v.cloned())
}

/// `tool_choice`: whether the request's tools are shown to the model (`"auto"` or absent: yes,
/// `"none"`: no). Forcing a call is a 400 naming `tool_choice`: replies are returned as text,
/// not parsed into tool calls, so it could not be honoured.
pub fn tool_choice(v: Option<&Value>) -> Result<bool, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(true),
        Some(Value::String(s)) if s == "auto" => Ok(true),
        Some(Value::String(s)) if s == "none" => Ok(false),
        Some(other) => Err(ApiError::invalid(
            "tool_choice",
            format!(
                "`tool_choice` {other} is not supported: this server returns replies as text and \
                 does not parse tool calls; use \"auto\" or \"none\"."
            ),
        )),
    }
}

/// Completion-only options after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionOptions {
    pub max_tokens: usize,
    pub echo: bool,
    /// Legacy `logprobs`: alternatives per token (None = no logprobs).
    pub logprobs: Option<usize>,
}

/// Validates `max_tokens` (default 16, may be 0), `logprobs` (0..=5), `echo`, `suffix`, `best_of`.
pub fn completion_options(
    req: &CompletionRequest,
    n: usize,
) -> Result<CompletionOptions, ApiError> {
    let max_tokens = match req.max_tokens {
        None => DEFAULT_COMPLETION_MAX_TOKENS,
        Some(v) if v >= 0 => usize::try_from(v).unwrap_or(usize::MAX),
        Some(v) => {
            return Err(ApiError::invalid(
                "max_tokens",
                format!("`max_tokens` must be at least 0; got {v}."),
            ))
        }
    };
    let logprobs = match req.logprobs {
        None => None,
        Some(k) if (0..=MAX_LEGACY_LOGPROBS).contains(&k) => Some(k as usize),
        Some(k) => {
            return Err(ApiError::invalid(
                "logprobs",
                format!("`logprobs` must be between 0 and {MAX_LEGACY_LOGPROBS}; got {k}."),
            ))
        }
    };
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid("suffix", "`suffix` is not supported."));
    }
    if let Some(b) = req.best_of {
        if b != 1 && b != n as i64 {
            return Err(ApiError::invalid(
                "best_of",
                "`best_of` other than 1 or `n` is not supported.",
            ));
        }
    }
    Ok(CompletionOptions {
        max_tokens,
        echo: req.echo.unwrap_or(false),
        logprobs,
    })
}

/// One prompt of a completion request.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
}

/// Parses `prompt` in OpenAI's four forms: string, list of strings, list of token ids, list of
/// token-id lists. Token ids must be below `vocab_size`.
pub fn prompts(v: Option<&Value>, vocab_size: usize) -> Result<Vec<PromptInput>, ApiError> {
    let shape = "`prompt` must be a string, a list of strings, a list of token ids or a list of token-id lists.";
    let items = match v {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid("prompt", "`prompt` is required."))
        }
        Some(Value::String(s)) => return Ok(vec![PromptInput::Text(s.clone())]),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(ApiError::invalid("prompt", shape)),
    };
    if items.is_empty() {
        return Err(ApiError::invalid(
            "prompt",
            "`prompt` must not be an empty list.",
        ));
    }
    let token = |x: &Value, param: String| -> Result<u32, ApiError> {
        match x.as_u64() {
            Some(id) if (id as usize) < vocab_size => Ok(id as u32),
            _ => Err(ApiError::invalid(
                param,
                format!("token id {x} is not in the vocabulary (0..{vocab_size})."),
            )),
        }
    };
    let out: Vec<PromptInput> = match &items[0] {
        Value::String(_) => items
            .iter()
            .enumerate()
            .map(|(i, x)| match x {
                Value::String(s) => Ok(PromptInput::Text(s.clone())),
                _ => Err(ApiError::invalid(format!("prompt[{i}]"), shape)),
            })
            .collect::<Result<_, _>>()?,
        Value::Number(_) => {
            let ids = items
                .iter()
                .enumerate()
                .map(|(i, x)| token(x, format!("prompt[{i}]")))
                .collect::<Result<_, _>>()?;
            vec![PromptInput::Tokens(ids)]
        }
        Value::Array(_) => items
            .iter()
            .enumerate()
            .map(|(i, x)| match x {
                Value::Array(inner) if !inner.is_empty() => inner
                    .iter()
                    .enumerate()
                    .map(|(j, t)| token(t, format!("prompt[{i}][{j}]")))
                    .collect::<Result<Vec<u32>, _>>()
                    .map(PromptInput::Tokens),
                Value::Array(_) => Err(ApiError::invalid(
                    format!("prompt[{i}]"),
                    "a token-id list must not be empty.",
                )),
                _ => Err(ApiError::invalid(format!("prompt[{i}]"), shape)),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(ApiError::invalid("prompt", shape)),
    };
    Ok(out)
}

/// Resolves `max_tokens` against the context: `requested` (or, when None, all the room left)
/// plus `prompt_len` must fit in `context_length`. `prompt_param` is `messages` or `prompt`;
/// `max_param` is the field that set `max_tokens`.
pub fn fit_context(
    prompt_len: usize,
    requested: Option<usize>,
    context_length: usize,
    prompt_param: &str,
    max_param: &str,
) -> Result<usize, ApiError> {
    let what = if prompt_param == "messages" {
        "messages"
    } else {
        "prompt"
    };
    if prompt_len > context_length || (requested.is_none() && prompt_len >= context_length) {
        return Err(ApiError::invalid(
            prompt_param,
            format!(
                "This model's maximum context length is {context_length} tokens. However, your {what} resulted in \
                 {prompt_len} tokens, which leaves no room for the completion. Please reduce the length of the {what}."
            ),
        ));
    }
    match requested {
        None => Ok(context_length - prompt_len),
        Some(m) if m <= context_length - prompt_len => Ok(m),
        Some(m) => Err(ApiError::invalid(
            max_param,
            format!(
                "This model's maximum context length is {context_length} tokens. However, you requested {} tokens \
                 ({prompt_len} in the {what}, {m} in the completion). Please reduce the length of the {what} or `{max_param}`.",
                prompt_len.saturating_add(m)
            ),
        )),
    }
}

/// The `n` engine requests of one prompt. With temperature > 0 and a seed, choice `i` gets
/// For callers that need a whole response (the Batch API): `stream: true` is a 400 naming
/// `stream`.
pub fn not_streamed(f: &SamplingFields) -> Result<(), ApiError> {
    if f.stream == Some(true) {
        return Err(ApiError::invalid(
            "stream",
            "Streaming is not available here; remove `stream`.",
        ));
    }
    Ok(())
}

/// `seed + i` so that choices differ but are reproducible.
pub fn generate_requests(
    prompt_ids: &[u32],
    max_tokens: usize,
    common: &Common,
    top_logprobs: Option<usize>,
    prompt_logprobs: Option<usize>,
) -> Vec<GenerateRequest> {
    (0..common.n)
        .map(|i| {
            let mut sampling = common.sampling.clone();
            sampling.top_logprobs = top_logprobs;
            if sampling.temperature > 0.0 {
                sampling.seed = sampling.seed.map(|s| s.wrapping_add(i as u64));
            }
            GenerateRequest {
                prompt_ids: prompt_ids.to_vec(),
                max_tokens,
                sampling,
                stop: common.stop.clone(),
                stop_token_ids: common.stop_token_ids.clone(),
                ignore_eos: common.ignore_eos,
                prompt_logprobs,
                priority: Default::default(),
                constraint: None,
                output_script: None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> SamplingFields {
        serde_json::from_value(v).unwrap()
    }

    fn param_of(v: Value) -> Option<String> {
        common(&fields(v), 100).unwrap_err().param
    }

    #[test]
    fn defaults() {
        let c = common(&fields(json!({})), 100).unwrap();
        assert_eq!(c.sampling, SamplingParams::default());
        assert_eq!(c.n, 1);
        assert!(!c.stream && !c.include_usage && !c.ignore_eos);
    }

    #[test]
    fn each_sampling_param_is_named() {
        assert_eq!(
            param_of(json!({"temperature": -1})).as_deref(),
            Some("temperature")
        );
        assert_eq!(
            param_of(json!({"temperature": 2.5})).as_deref(),
            Some("temperature")
        );
        assert_eq!(param_of(json!({"top_p": 2})).as_deref(), Some("top_p"));
        assert_eq!(param_of(json!({"top_p": 0})).as_deref(), Some("top_p"));
        assert_eq!(param_of(json!({"top_k": -2})).as_deref(), Some("top_k"));
        assert_eq!(param_of(json!({"min_p": 1.5})).as_deref(), Some("min_p"));
        assert_eq!(
            param_of(json!({"repetition_penalty": 0})).as_deref(),
            Some("repetition_penalty")
        );
        assert_eq!(
            param_of(json!({"presence_penalty": 3})).as_deref(),
            Some("presence_penalty")
        );
        assert_eq!(
            param_of(json!({"frequency_penalty": -2.1})).as_deref(),
            Some("frequency_penalty")
        );
        assert_eq!(param_of(json!({"n": 0})).as_deref(), Some("n"));
        assert_eq!(param_of(json!({"n": 17})).as_deref(), Some("n"));
        assert_eq!(param_of(json!({"stop": 5})).as_deref(), Some("stop"));
        assert_eq!(
            param_of(json!({"stop": ["a", 1]})).as_deref(),
            Some("stop[1]")
        );
        assert_eq!(
            param_of(json!({"stop": vec!["x"; 17]})).as_deref(),
            Some("stop")
        );
        assert_eq!(
            param_of(json!({"stop_token_ids": [1, 100]})).as_deref(),
            Some("stop_token_ids[1]")
        );
        assert_eq!(
            param_of(json!({"stop_token_ids": [-1]})).as_deref(),
            Some("stop_token_ids[0]")
        );
        assert_eq!(
            param_of(json!({"logit_bias": {"5": 10}})).as_deref(),
            Some("logit_bias")
        );
    }

    #[test]
    fn accepted_values_convert() {
        let c = common(
            &fields(json!({"temperature": 0, "top_p": 0.9, "top_k": -1, "min_p": 0.05, "repetition_penalty": 1.1,
                "presence_penalty": -2, "frequency_penalty": 2, "seed": 7, "stop": "END", "stop_token_ids": [3],
                "ignore_eos": true, "n": 3, "stream": true, "stream_options": {"include_usage": true}, "logit_bias": {}})),
            100,
        )
        .unwrap();
        assert_eq!(c.sampling.temperature, 0.0);
        assert_eq!(c.sampling.top_k, 0);
        assert_eq!(c.sampling.seed, Some(7));
        assert_eq!(c.stop, vec!["END".to_string()]);
        assert_eq!(c.stop_token_ids, vec![3]);
        assert!(c.ignore_eos && c.stream && c.include_usage);
        assert_eq!(c.n, 3);
        assert_eq!(
            common(&fields(json!({"top_k": 40})), 100)
                .unwrap()
                .sampling
                .top_k,
            40
        );
        assert_eq!(
            stop_strings(Some(&json!(["", "a"]))).unwrap(),
            vec!["a".to_string()]
        );
    }

    fn msgs(v: Value) -> Vec<ChatMessageIn> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn messages_roles_and_content() {
        let out = chat_messages(&msgs(json!([
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": null},
            {"role": "tool", "content": "42"}
        ])))
        .unwrap();
        assert_eq!(out[0].role, "system");
        assert_eq!(out[1].content, "a\nb");
        assert_eq!(out[2].content, "");
        let e = chat_messages(&[]).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = chat_messages(&msgs(
            json!([{"role": "user", "content": "x"}, {"role": "wizard", "content": "x"}]),
        ))
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[1].role"));
        assert!(e.message.contains("wizard"));
        let e = chat_messages(&msgs(
            json!([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
        ))
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0].type"));
        let e = chat_messages(&msgs(json!([{"role": "user", "content": 5}]))).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content"));
        for missing in [
            json!({"role": "user", "content": null}),
            json!({"role": "system"}),
        ] {
            let e = chat_messages(&msgs(json!([missing]))).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("messages[0].content"), "{missing}");
        }
    }

    fn chat(v: Value) -> ChatCompletionRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn chat_fields() {
        let e = chat_max_tokens(&chat(json!({"messages": [], "max_tokens": -5}))).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let e = chat_max_tokens(&chat(json!({"messages": [], "max_completion_tokens": 0})))
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_completion_tokens"));
        assert_eq!(
            chat_max_tokens(&chat(json!({"messages": [], "max_tokens": 5}))).unwrap(),
            Some(5)
        );
        assert_eq!(
            chat_logprobs(&chat(
                json!({"messages": [], "logprobs": true, "top_logprobs": 3})
            ))
            .unwrap(),
            Some(3)
        );
        let e = chat_logprobs(&chat(json!({"messages": [], "top_logprobs": 3}))).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("top_logprobs"));
        assert_eq!(
            chat_logprobs(&chat(json!({"messages": [], "top_logprobs": 0}))).unwrap(),
            None
        );
        let e = chat_logprobs(&chat(
            json!({"messages": [], "logprobs": true, "top_logprobs": 21}),
        ))
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("top_logprobs"));
        assert!(response_format(Some(&json!({"type": "text"})))
            .unwrap()
            .is_none());
        assert!(response_format(Some(&json!({"type": "json_object"})))
            .unwrap()
            .is_some());
        let e = response_format(Some(&json!({"type": "xml"}))).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("response_format"));
        assert!(
            e.message.contains("`xml` is not supported"),
            "{}",
            e.message
        );
    }

    fn completion(v: Value) -> CompletionRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn completion_fields() {
        let o = completion_options(&completion(json!({"prompt": "x"})), 1).unwrap();
        assert_eq!(
            o,
            CompletionOptions {
                max_tokens: 16,
                echo: false,
                logprobs: None
            }
        );
        let o = completion_options(
            &completion(json!({"prompt": "x", "max_tokens": 0, "echo": true, "logprobs": 1})),
            1,
        )
        .unwrap();
        assert_eq!(
            o,
            CompletionOptions {
                max_tokens: 0,
                echo: true,
                logprobs: Some(1)
            }
        );
        let p = |v| completion_options(&completion(v), 1).unwrap_err().param;
        assert_eq!(p(json!({"max_tokens": -5})).as_deref(), Some("max_tokens"));
        assert_eq!(p(json!({"logprobs": 6})).as_deref(), Some("logprobs"));
        assert_eq!(p(json!({"suffix": "end"})).as_deref(), Some("suffix"));
        assert_eq!(p(json!({"best_of": 3})).as_deref(), Some("best_of"));
    }

    #[test]
    fn prompt_forms() {
        use PromptInput::*;
        assert_eq!(
            prompts(Some(&json!("hi")), 10).unwrap(),
            vec![Text("hi".into())]
        );
        assert_eq!(
            prompts(Some(&json!(["a", "b"])), 10).unwrap(),
            vec![Text("a".into()), Text("b".into())]
        );
        assert_eq!(
            prompts(Some(&json!([1, 2, 3])), 10).unwrap(),
            vec![Tokens(vec![1, 2, 3])]
        );
        assert_eq!(
            prompts(Some(&json!([[1], [2, 3]])), 10).unwrap(),
            vec![Tokens(vec![1]), Tokens(vec![2, 3])]
        );
        let p = |v: Value| prompts(Some(&v), 10).unwrap_err().param;
        assert_eq!(
            prompts(None, 10).unwrap_err().param.as_deref(),
            Some("prompt")
        );
        assert_eq!(p(json!([])).as_deref(), Some("prompt"));
        assert_eq!(p(json!(5)).as_deref(), Some("prompt"));
        assert_eq!(p(json!([1, 10])).as_deref(), Some("prompt[1]"));
        assert_eq!(p(json!([1, -1])).as_deref(), Some("prompt[1]"));
        assert_eq!(p(json!(["a", 1])).as_deref(), Some("prompt[1]"));
        assert_eq!(p(json!([[1], []])).as_deref(), Some("prompt[1]"));
        assert_eq!(p(json!([[1], [2, 99]])).as_deref(), Some("prompt[1][1]"));
        assert_eq!(p(json!([{"a": 1}])).as_deref(), Some("prompt"));
    }

    #[test]
    fn context_fit() {
        assert_eq!(
            fit_context(10, None, 100, "messages", "max_tokens").unwrap(),
            90
        );
        assert_eq!(
            fit_context(10, Some(90), 100, "prompt", "max_tokens").unwrap(),
            90
        );
        let e = fit_context(10, Some(91), 100, "prompt", "max_tokens").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        assert!(
            e.message.contains("100")
                && e.message.contains("10 in the prompt")
                && e.message.contains("91"),
            "{}",
            e.message
        );
        let e = fit_context(150, Some(1), 100, "messages", "max_tokens").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
        assert!(
            e.message.contains("100") && e.message.contains("150"),
            "{}",
            e.message
        );
        assert_eq!(
            fit_context(100, None, 100, "messages", "max_tokens")
                .unwrap_err()
                .param
                .as_deref(),
            Some("messages")
        );
        assert_eq!(
            fit_context(100, Some(0), 100, "prompt", "max_tokens").unwrap(),
            0
        );
    }

    #[test]
    fn seeds_per_choice() {
        let mut c = common(
            &fields(json!({"n": 3, "seed": 10, "temperature": 0.8})),
            100,
        )
        .unwrap();
        let reqs = generate_requests(&[1, 2], 5, &c, Some(2), None);
        let seeds: Vec<_> = reqs.iter().map(|r| r.sampling.seed).collect();
        assert_eq!(seeds, vec![Some(10), Some(11), Some(12)]);
        assert_eq!(reqs[0].sampling.top_logprobs, Some(2));
        c.sampling.temperature = 0.0;
        let reqs = generate_requests(&[1], 5, &c, None, None);
        assert!(reqs.iter().all(|r| r.sampling.seed == Some(10)));
    }
}

#[cfg(test)]
mod script_format_tests {
    use super::*;
    use serde_json::json;

    fn format(schema: Value) -> Value {
        json!({"type": "json_schema", "json_schema": {"name": "t", "schema": schema}})
    }

    #[test]
    fn schemas_fixing_chinese_text_refuse_conversion() {
        for schema in [
            json!({"type": "string", "enum": ["经济发展", "台湾"]}),
            json!({"type": "object", "properties": {"发展": {"type": "string"}}}),
            json!({"type": "object", "properties": {"a": {"const": "头发"}}}),
            json!({"type": "string", "pattern": "^香港.*"}),
        ] {
            let e = script_fits_response_format(Some(&format(schema.clone()))).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("chinese_script"), "{schema}");
        }
    }

    #[test]
    fn tools_are_function_objects() {
        assert_eq!(tools(None).unwrap(), None);
        let good =
            json!([{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]);
        assert_eq!(tools(Some(&good)).unwrap(), Some(good.clone()));
        for (bad, param) in [
            (json!("x"), "tools"),
            (json!([{"type": "retrieval"}]), "tools[0].type"),
            (
                json!([{"type": "function", "function": {}}]),
                "tools[0].function.name",
            ),
        ] {
            let e = tools(Some(&bad)).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{bad}");
        }
    }

    #[test]
    fn tool_choice_auto_none_or_400() {
        assert!(tool_choice(None).unwrap());
        assert!(tool_choice(Some(&json!("auto"))).unwrap());
        assert!(!tool_choice(Some(&json!("none"))).unwrap());
        for bad in [
            json!("required"),
            json!({"type": "function", "function": {"name": "f"}}),
        ] {
            let e = tool_choice(Some(&bad)).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("tool_choice"), "{bad}");
        }
    }

    #[test]
    fn other_formats_allow_conversion() {
        for f in [
            format(json!({"type": "object", "description": "繁體中文摘要",
                "properties": {"summary_zh_hant": {"type": "string", "title": "摘要"},
                               "case_type": {"enum": ["enquiry", "complaint"]}}})),
            json!({"type": "json_object"}),
        ] {
            assert!(script_fits_response_format(Some(&f)).is_ok(), "{f}");
        }
        assert!(script_fits_response_format(None).is_ok());
    }
}
