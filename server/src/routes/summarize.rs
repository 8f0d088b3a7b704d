//! `POST /v1/summarize` (govlm extension): summarises a document of any length with one of the
//! summarising prompt templates, by map-reduce when it does not fit the model's context.
//!
//! Request:
//! ```json
//! {"model"?: "...", "document": "...", "style"?: "short_summary" | "key_points" | "bilingual_summary",
//!  "language"?: "en" | "zh-Hant", "max_tokens"?: 300, "overlap_tokens"?: 64,
//!  "temperature"?: 0.2, "seed"?: 1, "chinese_script"?: "hk"}
//! ```
//! `language` defaults to `zh-Hant` when most of the document is Chinese, else `en`;
//! `max_tokens` (tokens of each summary, map and reduce alike) defaults to the template's.
//!
//! Response:
//! ```json
//! {"object": "summary", "model", "style", "language", "summary", "chunks": 7, "rounds": 2,
//!  "chunk_budget": 612, "chunk_tokens": [600, ...], "finish_reason": "stop",
//!  "usage": {"prompt_tokens", "completion_tokens", "total_tokens"}}
//! ```
//! `chunks` is the number of chunks the document was cut into (1: it fitted), `rounds` the
//! number of map/reduce rounds run, `usage` the sum over every generation.
//!
//! How: the chunk budget is the context length minus the template's own tokens (rendered with
//! an empty document), minus `max_tokens`, minus a margin of [`MARGIN_TOKENS`]. The document is
//! cut by [`crate::longdoc::chunk_text`] (sentence/paragraph boundaries, overlap) with token
//! counts from the model's tokenizer; each chunk is summarised with the template (`part` =
//! "i of n"), all chunks submitted to the engine at once (it batches them); the summaries,
//! joined, are summarised again, re-chunked while they are still over the budget, up to
//! [`MAX_ROUNDS`] rounds.

use axum::extract::State;
use axum::Json;
use govlm_inference::chat_template::ChatMessage;
use govlm_inference::engine::{EngineHandle, FinishReason};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::longdoc::{chunk_text, cjk_share, Chunk};
use crate::openai::{SamplingFields, Seed, Usage};
use crate::prompts::{chinese_script, PromptLibrary, PromptTemplate};
use crate::routes::{blocking, collect_all, finish_reason_str, submit_all};
use crate::validate;
use crate::AppState;

/// Tokens kept free in every map/reduce prompt beyond the measured template overhead (the
/// document's first and last tokens may merge differently inside the template).
pub const MARGIN_TOKENS: usize = 16;
/// Most map/reduce rounds.
pub const MAX_ROUNDS: usize = 6;
/// Smallest useful chunk budget in tokens.
pub const MIN_CHUNK_TOKENS: usize = 64;
/// Templates usable as `style`.
pub const STYLES: &[&str] = &["short_summary", "key_points", "bilingual_summary"];

/// `POST /v1/summarize` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SummarizeRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub document: String,
    #[serde(default)]
    pub style: Option<String>,
    #[serde(default)]
    pub language: Option<String>,
    /// Tokens of each generated summary.
    #[serde(default)]
    pub max_tokens: Option<i64>,
    /// Tokens of overlap between consecutive chunks (default: an eighth of the budget, at most
    /// 128).
    #[serde(default)]
    pub overlap_tokens: Option<i64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub seed: Option<Seed>,
    /// Convert the summary's Chinese script (`hk`); default: the template's `output_script`.
    #[serde(default)]
    pub chinese_script: Option<String>,
}

impl crate::json::FromBody for SummarizeRequest {
    fn from_body(value: &Value) -> Result<Self, ApiError> {
        crate::json::from_value(value)
    }
}

/// What one prompt needs: template, fixed variables.
struct Job<'a> {
    engine: &'a EngineHandle,
    library: &'a PromptLibrary,
    template: &'a PromptTemplate,
    language: Option<String>,
    max_tokens: usize,
}

impl Job<'_> {
    /// Renders the template for `document` (and `part`) and tokenizes it with the chat template.
    fn encode(&self, document: &str, part: Option<String>) -> Result<Vec<u32>, ApiError> {
        let mut vars = Map::new();
        vars.insert("document".into(), Value::from(document));
        if let Some(l) = &self.language {
            vars.insert("language".into(), Value::from(l.clone()));
        }
        if let Some(p) = part {
            vars.insert("part".into(), Value::from(p));
        }
        let r = self
            .library
            .render(self.template, Some(&vars), "document")?;
        let mut messages = Vec::new();
        if let Some(s) = r.system {
            messages.push(ChatMessage::new("system", &s));
        }
        messages.push(ChatMessage::new("user", &r.user));
        crate::routes::chat::render_and_encode(self.engine, &messages, None)
    }
}

/// The handler.
pub async fn summarize(
    State(state): State<AppState>,
    crate::json::OpenAiJson(req): crate::json::OpenAiJson<SummarizeRequest>,
) -> Result<Json<Value>, ApiError> {
    let engine = state.engine(req.model.as_deref())?.clone();
    if req.document.trim().is_empty() {
        return Err(ApiError::invalid(
            "document",
            "`document` must not be empty.",
        ));
    }
    let style = req.style.clone().unwrap_or_else(|| "short_summary".into());
    if !STYLES.contains(&style.as_str()) {
        return Err(ApiError::invalid(
            "style",
            format!("`style` must be one of {STYLES:?}; got `{style}`."),
        ));
    }
    let library = state.prompts.clone();
    let template = library.get(&style, None, "").map_err(|_| {
        ApiError::invalid(
            "style",
            format!(
                "The prompt template `{style}` is not loaded on this server (see --prompts-dir)."
            ),
        )
    })?;
    let takes_language = template.variables.iter().any(|v| v.name == "language");
    let language = match (&req.language, takes_language) {
        (Some(l), true) if template.languages.contains(l) => Some(l.clone()),
        (Some(l), true) => {
            return Err(ApiError::invalid(
                "language",
                format!(
                    "`language` must be one of {:?}; got `{l}`.",
                    template.languages
                ),
            ))
        }
        (Some(_), false) | (None, false) => None,
        (None, true) => Some(if cjk_share(&req.document) > 0.3 {
            "zh-Hant".to_string()
        } else {
            "en".to_string()
        }),
    };
    let max_tokens = match req.max_tokens {
        Some(m) if m >= 1 => m as usize,
        Some(m) => {
            return Err(ApiError::invalid(
                "max_tokens",
                format!("`max_tokens` must be at least 1; got {m}."),
            ))
        }
        None => template.sampling.max_tokens.unwrap_or(400).max(1) as usize,
    };
    let overlap = match req.overlap_tokens {
        None => None,
        Some(o) if o >= 0 => Some(o as usize),
        Some(o) => {
            return Err(ApiError::invalid(
                "overlap_tokens",
                format!("`overlap_tokens` must be at least 0; got {o}."),
            ))
        }
    };
    let script = chinese_script(req.chinese_script.as_deref())?.or(template.output_script);
    let d = &template.sampling;
    let fields = SamplingFields {
        temperature: req.temperature.or(d.temperature),
        top_p: d.top_p,
        top_k: d.top_k,
        min_p: d.min_p,
        repetition_penalty: d.repetition_penalty,
        presence_penalty: d.presence_penalty,
        frequency_penalty: d.frequency_penalty,
        seed: req.seed,
        ..Default::default()
    };
    let common = validate::common(&fields, engine.tokenizer().vocab_size())?;
    let context = engine.info().context_length;

    // The chunk budget: what is left of the context after the template and the output.
    let (overhead, budget) = {
        let (eng, lib, lang) = (engine.clone(), library.clone(), language.clone());
        let style = style.clone();
        blocking(move || {
            let t = lib.get(&style, None, "")?;
            let job = Job {
                engine: &eng,
                library: &lib,
                template: t,
                language: lang,
                max_tokens,
            };
            // A one-character stand-in: a required variable may not be blank.
            let overhead = job.encode("x", Some("99 of 99".into()))?.len();
            Ok((
                overhead,
                context.saturating_sub(overhead + max_tokens + MARGIN_TOKENS),
            ))
        })
        .await?
    };
    if budget < MIN_CHUNK_TOKENS {
        return Err(ApiError::invalid(
            "max_tokens",
            format!(
                "This model's context of {context} tokens leaves {budget} tokens for each part of the document \
                 ({overhead} for the `{style}` prompt, {max_tokens} for `max_tokens`); at least {MIN_CHUNK_TOKENS} are needed. \
                 Reduce `max_tokens`."
            ),
        ));
    }
    let overlap = overlap.unwrap_or((budget / 8).min(128)).min(budget / 2);

    let mut usage = Usage::default();
    let mut text = req.document.clone();
    let mut first_chunks: Option<Vec<usize>> = None;
    let mut rounds = 0;
    let (summary, finish) = loop {
        rounds += 1;
        let chunks: Vec<Chunk> = {
            let eng = engine.clone();
            let t = text.clone();
            blocking(move || {
                let count = |s: &str| {
                    eng.tokenizer()
                        .encode(s, false)
                        .map(|ids| ids.len())
                        .unwrap_or(usize::MAX)
                };
                chunk_text(&t, budget, overlap, &count).map_err(|e| {
                    ApiError::invalid("document", format!("Cannot split the document: {e}."))
                })
            })
            .await?
        };
        if first_chunks.is_none() {
            first_chunks = Some(chunks.iter().map(|c| c.tokens).collect());
        }
        let n = chunks.len();
        let prompts: Vec<Vec<u32>> = {
            let (eng, lib, lang, style) = (
                engine.clone(),
                library.clone(),
                language.clone(),
                style.clone(),
            );
            let texts: Vec<String> = chunks.into_iter().map(|c| c.text).collect();
            blocking(move || {
                let t = lib.get(&style, None, "")?;
                let job = Job {
                    engine: &eng,
                    library: &lib,
                    template: t,
                    language: lang,
                    max_tokens,
                };
                texts
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let part = (n > 1).then(|| format!("{} of {n}", i + 1));
                        let ids = job.encode(c, part)?;
                        if ids.len() + job.max_tokens > context {
                            return Err(ApiError::internal(format!(
                                "chunk {} of {n} is {} prompt tokens, over the context of {context} with max_tokens {}",
                                i + 1,
                                ids.len(),
                                job.max_tokens
                            )));
                        }
                        Ok(ids)
                    })
                    .collect::<Result<Vec<_>, ApiError>>()
            })
            .await?
        };
        let mut reqs = Vec::with_capacity(prompts.len());
        for ids in &prompts {
            usage.prompt_tokens += ids.len();
            reqs.extend(validate::generate_requests(
                ids, max_tokens, &common, None, None,
            ));
        }
        let outputs = collect_all(submit_all(&engine, reqs).await?).await?;
        for o in &outputs {
            usage.completion_tokens += o.completion_tokens;
        }
        if n <= 1 {
            let o = outputs.into_iter().next();
            break (
                o.as_ref()
                    .map(|o| o.text.trim().to_string())
                    .unwrap_or_default(),
                o.map(|o| o.finish_reason).unwrap_or(FinishReason::Stop),
            );
        }
        let joined = outputs
            .iter()
            .enumerate()
            .map(|(i, o)| format!("({}) {}", i + 1, o.text.trim()))
            .collect::<Vec<_>>()
            .join("\n\n");
        if rounds >= MAX_ROUNDS {
            return Err(ApiError::internal(format!(
                "the summaries did not fit the model's context after {MAX_ROUNDS} rounds"
            )));
        }
        text = joined;
    };
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
    let summary = match script {
        Some(_) => match &state.s2hk {
            Some(conv) => conv.convert(&summary),
            None => summary,
        },
        None => summary,
    };
    let chunk_tokens = first_chunks.unwrap_or_default();
    Ok(Json(json!({
        "object": "summary",
        "model": engine.model_id(),
        "style": style,
        "language": language,
        "summary": summary,
        "chunks": chunk_tokens.len(),
        "rounds": rounds,
        "chunk_budget": budget,
        "chunk_tokens": chunk_tokens,
        "overlap_tokens": overlap,
        "finish_reason": finish_reason_str(finish),
        "usage": usage,
    })))
}
