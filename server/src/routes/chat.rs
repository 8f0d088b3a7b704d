//! `POST /v1/chat/completions`.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use govlm_inference::chat_template::ChatMessage;
use govlm_inference::engine::{EngineHandle, Event, GeneratedToken, Priority};
use govlm_inference::tokenizer::Tokenizer;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::error::ApiError;
use crate::json::OpenAiJson;
use crate::openai::{
    ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionRequest,
    ChatCompletionResponse, ChatDelta, ChatLogprobs, ChatResponseMessage, ChatTokenLogprob,
    TopLogprob, Usage,
};
use crate::routes::{blocking, collect_all, finish_reason_str, submit_all, ResponseMeta};
use crate::sse::{self, to_data, ChunkMaker};
use crate::validate;
use crate::AppState;

/// Renders the conversation with the model's chat template (generation prompt added, tools
/// passed through) and tokenizes it, adding BOS only if the template did not already.
pub fn render_and_encode(
    engine: &EngineHandle,
    messages: &[ChatMessage],
    tools: Option<&serde_json::Value>,
) -> Result<Vec<u32>, ApiError> {
    let text = engine.chat_template().render(messages, true, tools)?;
    let tok = engine.tokenizer();
    let has_bos = tok
        .bos_token()
        .is_some_and(|b| !b.is_empty() && text.starts_with(b));
    Ok(tok.encode(&text, !has_bos)?)
}

/// One generated token in the chat logprobs format (None if the engine sent no logprob).
pub fn token_logprob(tok: &GeneratedToken, tokenizer: &Tokenizer) -> Option<ChatTokenLogprob> {
    let lp = tok.logprob.as_ref()?;
    Some(ChatTokenLogprob {
        token: tok.text.clone(),
        logprob: lp.logprob,
        bytes: tokenizer.token_bytes(tok.id),
        top_logprobs: lp
            .top
            .iter()
            .map(|&(id, logprob)| {
                let token = tokenizer.token_text(id);
                TopLogprob {
                    bytes: tokenizer.token_bytes(id),
                    token,
                    logprob,
                }
            })
            .collect(),
    })
}

fn logprobs_of(tokens: &[GeneratedToken], tokenizer: &Tokenizer) -> ChatLogprobs {
    ChatLogprobs {
        content: tokens
            .iter()
            .filter_map(|t| token_logprob(t, tokenizer))
            .collect(),
    }
}

/// A validated chat request whose sequences are queued in the engine.
pub struct ChatRun {
    pub engine: EngineHandle,
    pub meta: ResponseMeta,
    /// One event receiver per choice.
    pub receivers: Vec<UnboundedReceiver<Event>>,
    /// Tokens of the rendered conversation.
    pub prompt_tokens: usize,
    /// `Some(k)`: return logprobs with `k` alternatives per token.
    pub top_logprobs: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
}

/// The converter a request's `chinese_script` asks for (None: no conversion). Errors: 400 naming
/// `chinese_script` for an unknown script or a `response_format` the conversion would break;
/// 500 when the server has no converter.
pub(crate) fn output_script(
    state: &AppState,
    chinese_script: Option<&str>,
    response_format: Option<&serde_json::Value>,
) -> Result<Option<govlm_inference::script::ScriptConverter>, ApiError> {
    if crate::prompts::chinese_script(chinese_script)?.is_none() {
        return Ok(None);
    }
    validate::script_fits_response_format(response_format)?;
    let conv = state.s2hk.clone().ok_or_else(|| {
        ApiError::internal("Chinese script conversion is unavailable on this server")
    })?;
    Ok(Some(conv))
}

/// Validates a chat request, renders and tokenizes it, and queues its `n` sequences at
/// `priority`. Errors: 400 naming the `param` at fault, 404 unknown model, 429 queue full,
/// 503 engine stopped.
pub async fn start_chat(
    state: &AppState,
    req: ChatCompletionRequest,
    priority: Priority,
) -> Result<ChatRun, ApiError> {
    let mut req = req;
    // A `prompt` object renders a library template into messages and settings (also for Batch
    // API lines); it may set `chinese_script`, so that is read afterwards.
    crate::prompts::expand_chat_request(&state.prompts, &mut req)?;
    let script = output_script(
        state,
        req.chinese_script.as_deref(),
        req.response_format.as_ref(),
    )?;
    let engine = state.engine(req.model.as_deref())?.clone();
    let common = validate::common(&req.sampling, engine.tokenizer().vocab_size())?;
    let messages = validate::chat_messages(&req.messages)?;
    let requested_max = validate::chat_max_tokens(&req)?;
    let max_param = if req.max_completion_tokens.is_some() {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let top_logprobs = validate::chat_logprobs(&req)?;
    let constraint = validate::response_constraint(&engine, req.response_format.as_ref()).await?;
    let tools = validate::tools(req.tools.as_ref())?;
    let tools = match validate::tool_choice(req.tool_choice.as_ref())? {
        true => tools,
        false => None,
    };

    let eng = engine.clone();
    let prompt_ids = blocking(move || render_and_encode(&eng, &messages, tools.as_ref())).await?;
    if prompt_ids.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "The rendered conversation is empty.",
        ));
    }
    let context_length = engine.info().context_length;
    let max_tokens = validate::fit_context(
        prompt_ids.len(),
        requested_max,
        context_length,
        "messages",
        max_param,
    )?;
    let prompt_tokens = prompt_ids.len();
    let mut reqs =
        validate::generate_requests(&prompt_ids, max_tokens, &common, top_logprobs, None);
    for r in &mut reqs {
        r.priority = priority;
        r.constraint = constraint.clone(); // structured output: one grammar state per choice
        r.output_script = script.clone();
    }
    let receivers = submit_all(&engine, reqs).await?;
    let meta = ResponseMeta::new("chatcmpl", engine.model_id());
    Ok(ChatRun {
        engine,
        meta,
        receivers,
        prompt_tokens,
        top_logprobs,
        stream: common.stream,
        include_usage: common.include_usage,
    })
}

/// Waits for every choice of `run` and builds the (non-streamed) response.
/// Errors: 500 generation failed, 503 engine stopped.
pub async fn finish_chat(run: ChatRun) -> Result<ChatCompletionResponse, ApiError> {
    let ChatRun {
        engine,
        meta,
        receivers,
        prompt_tokens,
        top_logprobs,
        ..
    } = run;
    let outputs = collect_all(receivers).await?;
    let completion_tokens = outputs.iter().map(|o| o.completion_tokens).sum();
    let tokenizer = engine.tokenizer();
    let choices = outputs
        .into_iter()
        .enumerate()
        .map(|(index, o)| ChatChoice {
            index,
            logprobs: top_logprobs.map(|_| logprobs_of(&o.tokens, tokenizer)),
            message: ChatResponseMessage {
                role: "assistant",
                content: o.text,
            },
            finish_reason: Some(finish_reason_str(o.finish_reason).to_string()),
        })
        .collect();
    Ok(ChatCompletionResponse {
        id: meta.id,
        object: "chat.completion",
        created: meta.created,
        model: meta.model,
        system_fingerprint: meta.system_fingerprint,
        choices,
        usage: Usage::new(prompt_tokens, completion_tokens),
    })
}

/// A whole non-streamed chat completion, as `POST /v1/chat/completions` answers it, for callers
/// other than the HTTP handler (the Batch API). `stream: true` is a 400 naming `stream`.
pub async fn create_chat_completion(
    state: &AppState,
    req: ChatCompletionRequest,
    priority: Priority,
) -> Result<ChatCompletionResponse, ApiError> {
    validate::not_streamed(&req.sampling)?;
    finish_chat(start_chat(state, req, priority).await?).await
}

/// The handler.
pub async fn chat_completions(
    State(state): State<AppState>,
    OpenAiJson(req): OpenAiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let run = start_chat(&state, req, Priority::Interactive).await?;
    if run.stream {
        let maker = ChatChunks {
            meta: run.meta,
            tokenizer: run.engine.tokenizer().clone(),
            n: run.receivers.len(),
            logprobs: run.top_logprobs.is_some(),
            include_usage: run.include_usage,
            prompt_tokens: run.prompt_tokens,
            completion_tokens: 0,
        };
        return Ok(sse::stream_response(maker, run.receivers));
    }
    Ok(Json(finish_chat(run).await?).into_response())
}

/// Chunks of a streamed chat completion.
pub struct ChatChunks {
    pub meta: ResponseMeta,
    pub tokenizer: Tokenizer,
    /// Number of choices.
    pub n: usize,
    pub logprobs: bool,
    pub include_usage: bool,
    pub prompt_tokens: usize,
    /// Running sum over finished choices.
    pub completion_tokens: usize,
}

impl ChatChunks {
    fn chunk(
        &self,
        choices: Vec<ChatChunkChoice>,
        usage: Option<Usage>,
    ) -> Result<String, ApiError> {
        to_data(&ChatCompletionChunk {
            id: self.meta.id.clone(),
            object: "chat.completion.chunk",
            created: self.meta.created,
            model: self.meta.model.clone(),
            system_fingerprint: self.meta.system_fingerprint.clone(),
            choices,
            usage: if self.include_usage {
                Some(usage)
            } else {
                None
            },
        })
    }
}

impl ChunkMaker for ChatChunks {
    fn start(&mut self) -> Result<Vec<String>, ApiError> {
        (0..self.n)
            .map(|index| {
                self.chunk(
                    vec![ChatChunkChoice {
                        index,
                        delta: ChatDelta {
                            role: Some("assistant"),
                            content: Some(String::new()),
                        },
                        logprobs: None,
                        finish_reason: None,
                    }],
                    None,
                )
            })
            .collect()
    }

    fn event(&mut self, index: usize, event: Event) -> Result<Vec<String>, ApiError> {
        match event {
            Event::Delta { text, tokens } => {
                let logprobs = if self.logprobs {
                    Some(logprobs_of(&tokens, &self.tokenizer))
                } else {
                    None
                };
                let has_logprobs = logprobs.as_ref().is_some_and(|l| !l.content.is_empty());
                if text.is_empty() && !has_logprobs {
                    return Ok(Vec::new());
                }
                let choice = ChatChunkChoice {
                    index,
                    delta: ChatDelta {
                        role: None,
                        content: Some(text),
                    },
                    logprobs,
                    finish_reason: None,
                };
                Ok(vec![self.chunk(vec![choice], None)?])
            }
            Event::Finished {
                reason,
                completion_tokens,
                ..
            } => {
                self.completion_tokens += completion_tokens;
                let choice = ChatChunkChoice {
                    index,
                    delta: ChatDelta::default(),
                    logprobs: None,
                    finish_reason: Some(finish_reason_str(reason).to_string()),
                };
                Ok(vec![self.chunk(vec![choice], None)?])
            }
            Event::PromptLogprobs(_) => Ok(Vec::new()),
            Event::Error(msg) => Err(ApiError::internal(format!("generation failed: {msg}"))),
        }
    }

    fn end(&mut self) -> Result<Vec<String>, ApiError> {
        if !self.include_usage {
            return Ok(Vec::new());
        }
        Ok(vec![self.chunk(
            Vec::new(),
            Some(Usage::new(self.prompt_tokens, self.completion_tokens)),
        )?])
    }
}
