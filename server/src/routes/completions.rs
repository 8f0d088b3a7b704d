//! `POST /v1/completions` (legacy text completions, with echo and prompt logprobs for scoring).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use govlm_inference::engine::{EngineHandle, Event, GeneratedToken, Priority};
use govlm_inference::sampling::TokenLogprob;
use govlm_inference::tokenizer::Tokenizer;
use serde_json::{Map, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::error::ApiError;
use crate::json::OpenAiJson;
use crate::openai::{
    CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse, Usage,
};
use crate::routes::{blocking, collect_all, finish_reason_str, submit_all, ResponseMeta};
use crate::sse::{self, to_data, ChunkMaker};
use crate::validate::{self, PromptInput};
use crate::AppState;

/// A tokenized prompt.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub ids: Vec<u32>,
    /// The text echoed back (the prompt as sent, or decoded token ids).
    pub text: String,
    /// Whether `ids[0]` is a BOS the server added (not part of `text`).
    pub added_bos: bool,
}

/// Tokenizes each prompt: strings with BOS (if the model wants one), token ids as given.
pub fn tokenize_prompts(
    engine: &EngineHandle,
    inputs: Vec<PromptInput>,
) -> Result<Vec<Prompt>, ApiError> {
    let tok = engine.tokenizer();
    inputs
        .into_iter()
        .map(|p| match p {
            PromptInput::Text(text) => {
                let ids = tok.encode(&text, true)?;
                let added_bos = tok.adds_bos()
                    && ids
                        .first()
                        .is_some_and(|&first| Some(first) == tok.bos_token_id())
                    && !tok
                        .bos_token()
                        .is_some_and(|b| !b.is_empty() && text.starts_with(b));
                Ok(Prompt {
                    ids,
                    text,
                    added_bos,
                })
            }
            PromptInput::Tokens(ids) => {
                let text = tok.decode(&ids, false)?;
                Ok(Prompt {
                    ids,
                    text,
                    added_bos: false,
                })
            }
        })
        .collect()
}

fn top_map(top: &[(u32, f32)], tokenizer: &Tokenizer) -> Map<String, Value> {
    let mut m = Map::new();
    for &(id, lp) in top {
        // Through the f32's shortest decimal form, so the JSON shows e.g. -2.526335, not
        // -2.5263350009918213.
        let v = lp
            .to_string()
            .parse::<f64>()
            .map(Value::from)
            .unwrap_or(Value::Null);
        m.entry(tokenizer.token_text(id)).or_insert(v);
    }
    m
}

/// Builds legacy logprobs arrays and tracks character offsets into the choice text.
///
/// Offsets follow the tokens' bytes: a token that holds only part of a character's UTF-8 bytes
/// (byte-fallback tokens of emoji and rare CJK characters) gets the offset of that character, and
/// the character counts once it is complete, so `text[text_offset[i]..]` starts at token `i`.
#[derive(Debug, Default)]
pub struct LegacyLogprobs {
    pub out: CompletionLogprobs,
    /// Characters of text covered so far.
    pub offset: usize,
    /// Bytes of a character begun by earlier tokens and not yet complete.
    pending: Vec<u8>,
}

impl LegacyLogprobs {
    /// The arrays built since the last call (one streamed chunk's); offsets keep counting.
    pub fn take_chunk(&mut self) -> CompletionLogprobs {
        std::mem::take(&mut self.out)
    }

    /// Adds a token's bytes; returns how many characters they complete.
    fn advance(&mut self, bytes: &[u8]) -> usize {
        self.pending.extend_from_slice(bytes);
        let mut chars = 0;
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    chars += s.chars().count();
                    self.pending.clear();
                    return chars;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    chars += std::str::from_utf8(&self.pending[..valid])
                        .map_or(0, |s| s.chars().count());
                    match e.error_len() {
                        // Incomplete: wait for the next token's bytes.
                        None => {
                            self.pending.drain(..valid);
                            return chars;
                        }
                        // Invalid bytes decode as one U+FFFD each.
                        Some(n) => {
                            chars += 1;
                            self.pending.drain(..valid + n);
                        }
                    }
                }
            }
        }
    }

    /// Appends the prompt tokens: the first with null logprobs, the rest from `lps` (one per
    /// prompt token after the first).
    pub fn push_prompt(&mut self, prompt: &Prompt, lps: &[TokenLogprob], tokenizer: &Tokenizer) {
        let start = self.offset;
        let limit = start + prompt.text.chars().count();
        for (k, &id) in prompt.ids.iter().enumerate() {
            let token = tokenizer.token_text(id);
            let lp = if k == 0 { None } else { lps.get(k - 1) };
            self.out.text_offset.push(self.offset.min(limit));
            self.out.token_logprobs.push(lp.map(|l| l.logprob));
            self.out
                .top_logprobs
                .push(lp.map(|l| top_map(&l.top, tokenizer)));
            if !(k == 0 && prompt.added_bos) {
                self.offset += self.advance(&tokenizer.token_bytes(id));
            }
            self.out.tokens.push(token);
        }
        self.pending.clear();
        self.offset = limit;
    }

    /// Appends generated tokens.
    pub fn push_generated(&mut self, tokens: &[GeneratedToken], tokenizer: &Tokenizer) {
        for t in tokens {
            self.out.text_offset.push(self.offset);
            self.out
                .token_logprobs
                .push(t.logprob.as_ref().map(|l| l.logprob));
            self.out
                .top_logprobs
                .push(t.logprob.as_ref().map(|l| top_map(&l.top, tokenizer)));
            self.out.tokens.push(t.text.clone());
            self.offset += self.advance(&tokenizer.token_bytes(t.id));
        }
    }
}

/// A validated completions request whose sequences are queued in the engine.
pub struct CompletionRun {
    pub engine: EngineHandle,
    pub meta: ResponseMeta,
    /// The tokenized prompts; choice `i` belongs to prompt `i / n`.
    pub prompts: Vec<Prompt>,
    /// One event receiver per choice.
    pub receivers: Vec<UnboundedReceiver<Event>>,
    pub opts: validate::CompletionOptions,
    /// Choices per prompt.
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    /// Tokens of all prompts.
    pub prompt_tokens: usize,
}

/// Validates a completions request, tokenizes its prompts and queues `prompts x n` sequences at
/// `priority`. Errors: 400 naming the `param` at fault, 404 unknown model, 429 queue full,
/// 503 engine stopped.
pub async fn start_completion(
    state: &AppState,
    req: CompletionRequest,
    priority: Priority,
) -> Result<CompletionRun, ApiError> {
    let engine = state.engine(req.model.as_deref())?.clone();
    let vocab_size = engine.tokenizer().vocab_size();
    let common = validate::common(&req.sampling, vocab_size)?;
    let opts = validate::completion_options(&req, common.n)?;
    let inputs = validate::prompts(req.prompt.as_ref(), vocab_size)?;
    if inputs.len() * common.n > validate::MAX_CHOICES {
        return Err(ApiError::invalid(
            "prompt",
            format!(
                "At most {} prompts times `n` per request; got {}.",
                validate::MAX_CHOICES,
                inputs.len() * common.n
            ),
        ));
    }
    let script = super::chat::output_script(
        state,
        req.chinese_script.as_deref(),
        req.response_format.as_ref(),
    )?;
    let constraint = validate::response_constraint(&engine, req.response_format.as_ref()).await?;
    let eng = engine.clone();
    let prompts = blocking(move || tokenize_prompts(&eng, inputs)).await?;

    let context_length = engine.info().context_length;
    let mut reqs = Vec::with_capacity(prompts.len() * common.n);
    for (i, p) in prompts.iter().enumerate() {
        let param = if prompts.len() == 1 {
            "prompt".to_string()
        } else {
            format!("prompt[{i}]")
        };
        if p.ids.is_empty() {
            return Err(ApiError::invalid(param, "The prompt is empty (no tokens)."));
        }
        let max_tokens = validate::fit_context(
            p.ids.len(),
            Some(opts.max_tokens),
            context_length,
            &param,
            "max_tokens",
        )?;
        let prompt_logprobs = if opts.echo { opts.logprobs } else { None };
        reqs.extend(validate::generate_requests(
            &p.ids,
            max_tokens,
            &common,
            opts.logprobs,
            prompt_logprobs,
        ));
    }
    for r in &mut reqs {
        r.priority = priority;
        r.constraint = constraint.clone(); // structured output: one grammar state per sequence
        r.output_script = script.clone();
    }
    let receivers = submit_all(&engine, reqs).await?;
    let meta = ResponseMeta::new("cmpl", engine.model_id());
    let prompt_tokens: usize = prompts.iter().map(|p| p.ids.len()).sum();
    Ok(CompletionRun {
        engine,
        meta,
        prompts,
        receivers,
        opts,
        n: common.n,
        stream: common.stream,
        include_usage: common.include_usage,
        prompt_tokens,
    })
}

/// Waits for every choice of `run` and builds the (non-streamed) response.
/// Errors: 500 generation failed, 503 engine stopped.
pub async fn finish_completion(run: CompletionRun) -> Result<CompletionResponse, ApiError> {
    let CompletionRun {
        engine,
        meta,
        prompts,
        receivers,
        opts,
        n,
        prompt_tokens,
        ..
    } = run;
    let outputs = collect_all(receivers).await?;
    let completion_tokens = outputs.iter().map(|o| o.completion_tokens).sum();
    let tokenizer = engine.tokenizer();
    let mut choices = Vec::with_capacity(outputs.len());
    for (index, o) in outputs.into_iter().enumerate() {
        let Some(prompt) = prompts.get(index / n.max(1)) else {
            return Err(ApiError::internal("a choice has no prompt"));
        };
        let mut lp = LegacyLogprobs::default();
        let mut text = String::new();
        if opts.echo {
            text.push_str(&prompt.text);
            if opts.logprobs.is_some() {
                lp.push_prompt(
                    prompt,
                    o.prompt_logprobs.as_deref().unwrap_or(&[]),
                    tokenizer,
                );
            } else {
                lp.offset = prompt.text.chars().count();
            }
        }
        text.push_str(&o.text);
        lp.push_generated(&o.tokens, tokenizer);
        choices.push(CompletionChoice {
            index,
            text,
            logprobs: opts.logprobs.map(|_| lp.out),
            finish_reason: Some(finish_reason_str(o.finish_reason).to_string()),
        });
    }
    Ok(CompletionResponse {
        id: meta.id,
        object: "text_completion",
        created: meta.created,
        model: meta.model,
        system_fingerprint: meta.system_fingerprint,
        choices,
        usage: Some(Some(Usage::new(prompt_tokens, completion_tokens))),
    })
}

/// A whole non-streamed completion, as `POST /v1/completions` answers it, for callers other
/// than the HTTP handler (the Batch API). `stream: true` is a 400 naming `stream`.
pub async fn create_completion(
    state: &AppState,
    req: CompletionRequest,
    priority: Priority,
) -> Result<CompletionResponse, ApiError> {
    validate::not_streamed(&req.sampling)?;
    finish_completion(start_completion(state, req, priority).await?).await
}

/// The handler.
pub async fn completions(
    State(state): State<AppState>,
    OpenAiJson(req): OpenAiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let run = start_completion(&state, req, Priority::Interactive).await?;
    if run.stream {
        let n = run.n;
        let choices = (0..run.receivers.len())
            .map(|i| StreamChoice {
                prompt: i / n,
                echo_pending: run.opts.echo,
                logprobs: LegacyLogprobs::default(),
            })
            .collect();
        let maker = CompletionChunks {
            meta: run.meta,
            tokenizer: run.engine.tokenizer().clone(),
            prompts: run.prompts,
            choices,
            logprobs: run.opts.logprobs.is_some(),
            include_usage: run.include_usage,
            prompt_tokens: run.prompt_tokens,
            completion_tokens: 0,
        };
        return Ok(sse::stream_response(maker, run.receivers));
    }
    Ok(Json(finish_completion(run).await?).into_response())
}

/// Per-choice streaming state.
pub struct StreamChoice {
    /// Index into the prompts.
    pub prompt: usize,
    /// The echoed prompt is still to be sent.
    pub echo_pending: bool,
    pub logprobs: LegacyLogprobs,
}

/// Chunks of a streamed completion.
pub struct CompletionChunks {
    pub meta: ResponseMeta,
    pub tokenizer: Tokenizer,
    pub prompts: Vec<Prompt>,
    pub choices: Vec<StreamChoice>,
    pub logprobs: bool,
    pub include_usage: bool,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

impl CompletionChunks {
    fn chunk(
        &self,
        choices: Vec<CompletionChoice>,
        usage: Option<Usage>,
    ) -> Result<String, ApiError> {
        to_data(&CompletionResponse {
            id: self.meta.id.clone(),
            object: "text_completion",
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

    fn one(
        &self,
        index: usize,
        text: String,
        logprobs: Option<CompletionLogprobs>,
        finish: Option<String>,
    ) -> Result<String, ApiError> {
        self.chunk(
            vec![CompletionChoice {
                index,
                text,
                logprobs,
                finish_reason: finish,
            }],
            None,
        )
    }

    /// The echo chunk of choice `index` (with prompt logprobs when given), if still pending.
    fn echo(
        &mut self,
        index: usize,
        prompt_lps: Option<&[TokenLogprob]>,
    ) -> Result<Vec<String>, ApiError> {
        let Some(c) = self.choices.get_mut(index) else {
            return Ok(Vec::new());
        };
        if !c.echo_pending {
            return Ok(Vec::new());
        }
        c.echo_pending = false;
        let Some(prompt) = self.prompts.get(c.prompt) else {
            return Ok(Vec::new());
        };
        if self.logprobs {
            c.logprobs
                .push_prompt(prompt, prompt_lps.unwrap_or(&[]), &self.tokenizer);
        } else {
            c.logprobs.offset += prompt.text.chars().count();
        }
        let out = c.logprobs.take_chunk();
        let text = prompt.text.clone();
        let logprobs = self.logprobs.then_some(out);
        Ok(vec![self.one(index, text, logprobs, None)?])
    }
}

impl ChunkMaker for CompletionChunks {
    fn start(&mut self) -> Result<Vec<String>, ApiError> {
        if self.logprobs {
            // The echo waits for the prompt logprobs event.
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for i in 0..self.choices.len() {
            out.extend(self.echo(i, None)?);
        }
        Ok(out)
    }

    fn event(&mut self, index: usize, event: Event) -> Result<Vec<String>, ApiError> {
        match event {
            Event::PromptLogprobs(lps) => self.echo(index, Some(&lps)),
            Event::Delta { text, tokens } => {
                let mut out = self.echo(index, None)?;
                let logprobs = if self.logprobs {
                    let Some(c) = self.choices.get_mut(index) else {
                        return Ok(out);
                    };
                    c.logprobs.push_generated(&tokens, &self.tokenizer);
                    Some(c.logprobs.take_chunk())
                } else {
                    None
                };
                if text.is_empty() && logprobs.as_ref().is_none_or(|l| l.tokens.is_empty()) {
                    return Ok(out);
                }
                out.push(self.one(index, text, logprobs, None)?);
                Ok(out)
            }
            Event::Finished {
                reason,
                completion_tokens,
                ..
            } => {
                let mut out = self.echo(index, None)?;
                self.completion_tokens += completion_tokens;
                let logprobs = self.logprobs.then(CompletionLogprobs::default);
                out.push(self.one(
                    index,
                    String::new(),
                    logprobs,
                    Some(finish_reason_str(reason).to_string()),
                )?);
                Ok(out)
            }
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
