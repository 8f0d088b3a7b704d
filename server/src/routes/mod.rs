//! HTTP handlers, one module per endpoint group, plus what they share: model lookup, submitting
//! engine requests and collecting their events.

pub mod batches;
pub mod chat;
pub mod completions;
pub mod files;
pub mod health;
pub mod metrics;
pub mod models;
pub mod prompts;
pub mod summarize;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::try_join_all;
use govlm_inference::engine::{
    EngineHandle, Event, FinishReason, GenerateRequest, GeneratedToken, SubmitError,
};
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
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            model: model.to_string(),
            system_fingerprint: format!("fp_govlm_{}", env!("CARGO_PKG_VERSION").replace('.', "_")),
        }
    }
}

/// How long the later sequences of an accepted multi-sequence request (several prompts, `n`)
/// may wait for room in the engine's queue before the request fails with 429.
pub const SUBMIT_WAIT: Duration = Duration::from_secs(60);
/// Pause between queue retries.
const SUBMIT_RETRY: Duration = Duration::from_millis(5);

/// Submits every request. A full queue at the first one answers 429 at once (backpressure);
/// the later ones of the same request wait for room (the engine admits its queue every step) up
/// to [`SUBMIT_WAIT`], without blocking the runtime. On failure the sequences already queued are
/// cancelled (their receivers dropped). Errors: 429 queue full, 503 engine stopped.
pub async fn submit_all(
    engine: &EngineHandle,
    reqs: Vec<GenerateRequest>,
) -> Result<Vec<UnboundedReceiver<Event>>, ApiError> {
    let mut out = Vec::with_capacity(reqs.len());
    let deadline = Instant::now() + SUBMIT_WAIT;
    for (i, req) in reqs.into_iter().enumerate() {
        loop {
            match engine.submit(req.clone()) {
                Ok(rx) => {
                    out.push(rx);
                    break;
                }
                Err(SubmitError::QueueFull { .. }) if i > 0 && Instant::now() < deadline => {
                    tokio::time::sleep(SUBMIT_RETRY).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(out)
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
            Event::Delta {
                text: t,
                tokens: toks,
            } => {
                text.push_str(&t);
                tokens.extend(toks);
            }
            Event::Finished {
                reason,
                completion_tokens,
                ..
            } => {
                return Ok(ChoiceOutput {
                    text,
                    tokens,
                    prompt_logprobs,
                    finish_reason: reason,
                    completion_tokens,
                })
            }
            Event::Error(msg) => {
                return Err(ApiError::internal(format!("generation failed: {msg}")))
            }
        }
    }
    Err(ApiError::engine_stopped())
}

/// Collects all choices concurrently; the first error cancels the rest.
pub async fn collect_all(
    receivers: Vec<UnboundedReceiver<Event>>,
) -> Result<Vec<ChoiceOutput>, ApiError> {
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
