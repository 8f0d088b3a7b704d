//! HTTP handlers, one module per endpoint group, plus what they share: model lookup, submitting
//! engine requests and collecting their events.

pub mod chat;
pub mod completions;
pub mod health;
pub mod models;

use std::time::{SystemTime, UNIX_EPOCH};

use futures::future::try_join_all;
use govlm_inference::engine::{EngineHandle, Event, FinishReason, GenerateRequest, GeneratedToken};
use govlm_inference::sampling::TokenLogprob;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::error::ApiError;

/// `finish_reason` as OpenAI spells it.
pub fn finish_reason_str(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

/// Fields every response object (and chunk) repeats.
#[derive(Debug, Clone)]
pub struct ResponseMeta {
    /// `chatcmpl-<uuid>` or `cmpl-<uuid>`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
}

impl ResponseMeta {
    /// New id with `prefix` (`chatcmpl` or `cmpl`) for `model`.
    pub fn new(prefix: &str, model: &str) -> Self {
        ResponseMeta {
            id: format!("{prefix}-{}", uuid::Uuid::new_v4().simple()),
            created: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            model: model.to_string(),
            system_fingerprint: format!("fp_govlm_{}", env!("CARGO_PKG_VERSION").replace('.', "_")),
        }
    }
}

/// Submits every request; on any refusal the ones already queued are cancelled (their receivers
/// dropped) and the error returned (429 queue full, 503 engine stopped).
pub fn submit_all(engine: &EngineHandle, reqs: Vec<GenerateRequest>) -> Result<Vec<UnboundedReceiver<Event>>, ApiError> {
    reqs.into_iter().map(|r| engine.submit(r).map_err(ApiError::from)).collect()
}

/// Everything one choice produced, for a non-streamed response.
#[derive(Debug, Clone)]
pub struct ChoiceOutput {
    pub text: String,
    pub tokens: Vec<GeneratedToken>,
    /// Echo: one entry per prompt token after the first.
    pub prompt_logprobs: Option<Vec<TokenLogprob>>,
    pub finish_reason: FinishReason,
    pub completion_tokens: usize,
}

/// Reads one choice's events to the end.
pub async fn collect(mut rx: UnboundedReceiver<Event>) -> Result<ChoiceOutput, ApiError> {
    let mut text = String::new();
    let mut tokens = Vec::new();
    let mut prompt_logprobs = None;
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::PromptLogprobs(lp) => prompt_logprobs = Some(lp),
            Event::Delta { text: t, tokens: toks } => {
                text.push_str(&t);
                tokens.extend(toks);
            }
            Event::Finished { reason, completion_tokens, .. } => {
                return Ok(ChoiceOutput { text, tokens, prompt_logprobs, finish_reason: reason, completion_tokens })
            }
            Event::Error(msg) => return Err(ApiError::internal(format!("generation failed: {msg}"))),
        }
    }
    Err(ApiError::engine_stopped())
}

/// Collects all choices concurrently; the first error cancels the rest.
pub async fn collect_all(receivers: Vec<UnboundedReceiver<Event>>) -> Result<Vec<ChoiceOutput>, ApiError> {
    try_join_all(receivers.into_iter().map(collect)).await
}

/// Runs CPU-heavy request preparation (template rendering, tokenization) off the async workers.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("request preparation failed: {e}")))?
}
