//! The engine thread: one per loaded model. It owns the weights, the KV caches and every running
//! sequence, and takes requests over a bounded channel. Each step it admits new requests, runs one
//! flattened forward pass over the prefill chunks and single-token decodes of all running
//! sequences, samples, detokenizes incrementally, applies stop conditions and sends events.
//!
//! Callers never share state with the thread: they get an [`EngineHandle`] (cheap to clone) and,
//! per request, an event receiver. Dropping the receiver cancels the sequence at the next step.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use candle_core::quantized::gguf_file;
use candle_core::Device;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::chat_template::{ChatTemplate, TemplateError, GEMMA_CHAT_TEMPLATE};
use crate::config::{DeviceSpec, ResolvedModel, Source};
use crate::model::{KvCache, LogitRows, Model, ModelError, SeqBatch};
use crate::sampling::{token_logprob, Sampler, SamplingParams, TokenLogprob};
use crate::stop::StopMatcher;
use crate::tokenizer::{StreamDecoder, Tokenizer, TokenizerError};

/// Most prompt tokens of one sequence fed in one step (chunked prefill keeps steps short).
const PREFILL_CHUNK_TOKENS: usize = 512;

/// Errors while loading a model and starting its engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("model `{id}`: cannot open {path}: {source}")]
    Open {
        id: String,
        path: String,
        source: std::io::Error,
    },
    #[error("model `{id}`: {path} is not a readable GGUF file: {source}")]
    Gguf {
        id: String,
        path: String,
        source: candle_core::Error,
    },
    #[error("model `{id}`: {source}")]
    Model { id: String, source: ModelError },
    #[error("model `{id}`: tokenizer: {source}")]
    Tokenizer { id: String, source: TokenizerError },
    #[error("model `{id}`: chat_template: {message}")]
    ChatTemplate { id: String, message: String },
    #[error("model `{id}`: device: {message}")]
    Device { id: String, message: String },
    #[error("model `{id}`: context_length {requested} exceeds the model's trained context of {trained} tokens")]
    ContextLength {
        id: String,
        requested: usize,
        trained: usize,
    },
    #[error("model `{id}`: cannot start the engine thread: {source}")]
    Thread { id: String, source: std::io::Error },
}

/// Why a request could not be queued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    /// The waiting queue holds `capacity` requests already; retry later (HTTP 429).
    #[error("the model `{model}` has {capacity} requests waiting; retry later")]
    QueueFull { model: String, capacity: usize },
    /// The engine thread has stopped (HTTP 503).
    #[error("the engine for model `{model}` has stopped")]
    EngineStopped { model: String },
}

/// Public facts about a served model (for `/v1/models`).
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub id: String,
    /// Context length in tokens (prompt + completion) this server allows.
    pub context_length: usize,
    /// Unix seconds when the model was loaded.
    pub created: u64,
    pub owned_by: String,
    /// GGUF `general.architecture`, e.g. `qwen2`.
    pub architecture: String,
    /// Size of the GGUF file in bytes.
    pub file_size: u64,
}

/// One generation request, already tokenized and validated by the caller.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// Prompt token ids (chat template applied, BOS included where the model wants it).
    pub prompt_ids: Vec<u32>,
    /// Most tokens to generate; 0 scores the prompt only (echo with prompt logprobs).
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Stop strings; the text ends before the first one found.
    pub stop: Vec<String>,
    /// Token ids that end generation (besides EOS unless `ignore_eos`).
    pub stop_token_ids: Vec<u32>,
    /// Keep generating past EOS tokens (benchmarks).
    pub ignore_eos: bool,
    /// `Some(n)`: send [`Event::PromptLogprobs`] with the top `n` alternatives first.
    pub prompt_logprobs: Option<usize>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// EOS, a stop token id or a stop string.
    Stop,
    /// `max_tokens` or the context length was reached.
    Length,
}

/// One generated token, for logprobs.
#[derive(Debug, Clone)]
pub struct GeneratedToken {
    pub id: u32,
    /// The token's own text (lossy for a partial UTF-8 character).
    pub text: String,
    /// Logprob of the sampled token under the model's raw distribution, with alternatives.
    pub logprob: Option<TokenLogprob>,
}

/// What the engine sends back for one request, in this order: optionally `PromptLogprobs`,
/// any number of `Delta`s, then exactly one `Finished` or `Error`.
#[derive(Debug, Clone)]
pub enum Event {
    /// One entry per prompt token after the first (the first token has no logprob).
    PromptLogprobs(Vec<TokenLogprob>),
    /// New text (stop-string filtered, never a partial UTF-8 character; may be empty) and the
    /// tokens generated since the previous event.
    Delta {
        text: String,
        tokens: Vec<GeneratedToken>,
    },
    /// Generation ended; counts are in tokens.
    Finished {
        reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    /// The engine failed on this request; no more events follow.
    Error(String),
}

enum Command {
    Generate {
        req: GenerateRequest,
        events: UnboundedSender<Event>,
    },
}

/// A cheap-to-clone handle to one model's engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
}

struct Shared {
    info: ModelInfo,
    tokenizer: Tokenizer,
    chat_template: ChatTemplate,
    capacity: usize,
    commands: SyncSender<Command>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("model", &self.shared.info.id)
            .finish()
    }
}

impl EngineHandle {
    /// Loads the model described by `spec` (GGUF weights, tokenizer, chat template) and starts its
    /// engine thread. Errors name the model and the file or setting at fault.
    pub fn spawn(spec: &ResolvedModel) -> Result<Self, EngineError> {
        let id = spec.id.clone();
        let path = spec.gguf.display().to_string();
        let device = make_device(spec.device).map_err(|message| EngineError::Device {
            id: id.clone(),
            message,
        })?;
        let mut file = std::fs::File::open(&spec.gguf).map_err(|source| EngineError::Open {
            id: id.clone(),
            path: path.clone(),
            source,
        })?;
        let file_size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let content = gguf_file::Content::read(&mut file).map_err(|source| EngineError::Gguf {
            id: id.clone(),
            path: path.clone(),
            source,
        })?;
        let architecture = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        let tokenizer = match &spec.tokenizer {
            Source::File(p) => Tokenizer::from_tokenizer_json(p, &content.metadata),
            _ => Tokenizer::from_gguf(&content.metadata),
        }
        .map_err(|source| EngineError::Tokenizer {
            id: id.clone(),
            source,
        })?;
        let chat_template =
            load_chat_template(&spec.chat_template, &content, &tokenizer).map_err(|message| {
                EngineError::ChatTemplate {
                    id: id.clone(),
                    message,
                }
            })?;
        let model =
            Model::load(&content, &mut file, &device).map_err(|source| EngineError::Model {
                id: id.clone(),
                source,
            })?;
        drop(content);
        let trained = model.config().context_length;
        let context_length = match spec.context_length {
            Some(n) if n > trained => {
                return Err(EngineError::ContextLength {
                    id,
                    requested: n,
                    trained,
                })
            }
            Some(n) => n,
            None => trained,
        };
        let info = ModelInfo {
            id: id.clone(),
            context_length,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            owned_by: "govlm".to_string(),
            architecture,
            file_size,
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(spec.max_waiting);
        let worker = Worker {
            model,
            tokenizer: tokenizer.clone(),
            context_length,
            commands: rx,
            running: Vec::new(),
        };
        std::thread::Builder::new()
            .name(format!("engine-{id}"))
            .spawn(move || worker.run())
            .map_err(|source| EngineError::Thread {
                id: id.clone(),
                source,
            })?;
        Ok(Self {
            shared: Arc::new(Shared {
                info,
                tokenizer,
                chat_template,
                capacity: spec.max_waiting,
                commands: tx,
            }),
        })
    }

    /// The id clients use for this model.
    pub fn model_id(&self) -> &str {
        &self.shared.info.id
    }

    pub fn info(&self) -> &ModelInfo {
        &self.shared.info
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.shared.tokenizer
    }

    pub fn chat_template(&self) -> &ChatTemplate {
        &self.shared.chat_template
    }

    /// Queues a request without blocking. Events arrive on the returned receiver; dropping it
    /// cancels the request.
    ///
    /// Errors: [`SubmitError::QueueFull`] when the waiting queue is full,
    /// [`SubmitError::EngineStopped`] when the engine thread is gone.
    pub fn submit(&self, req: GenerateRequest) -> Result<UnboundedReceiver<Event>, SubmitError> {
        let (events, rx) = unbounded_channel();
        match self
            .shared
            .commands
            .try_send(Command::Generate { req, events })
        {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(SubmitError::QueueFull {
                model: self.shared.info.id.clone(),
                capacity: self.shared.capacity,
            }),
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::EngineStopped {
                model: self.shared.info.id.clone(),
            }),
        }
    }
}

fn make_device(spec: DeviceSpec) -> Result<Device, String> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(n) => Device::new_cuda(n).map_err(|e| format!("cuda:{n}: {e}")),
        #[cfg(not(feature = "cuda"))]
        DeviceSpec::Cuda(n) => Err(format!(
            "cuda:{n} requested but this binary was built without the `cuda` feature"
        )),
    }
}

fn load_chat_template(
    source: &Source,
    content: &gguf_file::Content,
    tokenizer: &Tokenizer,
) -> Result<ChatTemplate, String> {
    let text = match source {
        Source::Gemma => GEMMA_CHAT_TEMPLATE.to_string(),
        Source::File(p) => read_template_file(p)?,
        Source::Gguf => match content.metadata.get("tokenizer.chat_template") {
            Some(v) => v.to_string().map_err(|e| e.to_string())?.clone(),
            None => {
                return Err(
                    "the GGUF file has no `tokenizer.chat_template`; set `chat_template` \
                            in models.toml to \"gemma\" or to a template file"
                        .to_string(),
                )
            }
        },
    };
    ChatTemplate::new(&text, tokenizer.bos_token(), tokenizer.eos_token())
        .map_err(|e: TemplateError| e.to_string())
}

fn read_template_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    // A tokenizer_config.json carries the template as a JSON string field.
    if path.extension().is_some_and(|e| e == "json") {
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        return v
            .get("chat_template")
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or_else(|| format!("{} has no string `chat_template` field", path.display()));
    }
    Ok(text)
}

/// A running sequence, owned by the engine thread.
struct Sequence {
    req: GenerateRequest,
    events: UnboundedSender<Event>,
    cache: KvCache,
    sampler: Sampler,
    /// Prompt tokens already written to the KV cache.
    prompt_fed: usize,
    generated: Vec<u32>,
    decoder: StreamDecoder,
    stop: StopMatcher,
    prompt_logprobs: Vec<TokenLogprob>,
    /// Last token sampled but not yet fed to the model.
    next_input: Option<u32>,
}

struct Worker {
    model: Model,
    tokenizer: Tokenizer,
    context_length: usize,
    commands: Receiver<Command>,
    running: Vec<Sequence>,
}

impl Worker {
    fn run(mut self) {
        loop {
            if !self.admit() {
                return;
            }
            self.running.retain(|s| !s.events.is_closed());
            if self.running.is_empty() {
                continue;
            }
            let step = std::panic::catch_unwind(AssertUnwindSafe(|| self.step()));
            let failure = match step {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(panic) => Some(panic_message(&panic)),
            };
            if let Some(message) = failure {
                tracing::error!(error = %message, "engine step failed; failing its sequences");
                for seq in self.running.drain(..) {
                    let _ = seq
                        .events
                        .send(Event::Error(format!("inference failed: {message}")));
                }
            }
        }
    }

    /// Moves queued requests into the running set; blocks when idle. Returns false when every
    /// handle is gone and nothing runs.
    fn admit(&mut self) -> bool {
        if self.running.is_empty() {
            match self.commands.recv() {
                Ok(cmd) => self.start(cmd),
                Err(_) => return false,
            }
        }
        loop {
            match self.commands.try_recv() {
                Ok(cmd) => self.start(cmd),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return !self.running.is_empty(),
            }
        }
    }

    fn start(&mut self, cmd: Command) {
        let Command::Generate { req, events } = cmd;
        let prompt_len = req.prompt_ids.len();
        let fail = |msg: String| {
            let _ = events.send(Event::Error(msg));
        };
        if prompt_len == 0 {
            return fail("the prompt has no tokens".to_string());
        }
        if prompt_len + req.max_tokens > self.context_length {
            return fail(format!(
                "prompt of {prompt_len} tokens plus max_tokens {} exceeds the context length of {} tokens",
                req.max_tokens, self.context_length
            ));
        }
        let vocab = self.model.config().vocab_size as u32;
        if let Some(bad) = req.prompt_ids.iter().find(|&&t| t >= vocab) {
            return fail(format!(
                "token id {bad} is outside the vocabulary of {vocab} tokens"
            ));
        }
        let cache = match self.model.new_kv_cache(prompt_len + req.max_tokens.max(1)) {
            Ok(c) => c,
            Err(e) => return fail(format!("cannot allocate the KV cache: {e}")),
        };
        let seq = Sequence {
            sampler: Sampler::new(req.sampling.clone()),
            stop: StopMatcher::new(req.stop.clone()),
            decoder: StreamDecoder::new(self.tokenizer.clone()),
            req,
            events,
            cache,
            prompt_fed: 0,
            generated: Vec::new(),
            prompt_logprobs: Vec::new(),
            next_input: None,
        };
        self.running.push(seq);
    }

    /// One forward pass over every running sequence, then sampling and events.
    fn step(&mut self) -> Result<(), ModelError> {
        // Which rows of the logits belong to which sequence.
        let mut plan: Vec<(usize, std::ops::Range<usize>, usize)> = Vec::new(); // (seq, token range in prompt or none, rows)
        let mut batch: Vec<SeqBatch<'_>> = Vec::with_capacity(self.running.len());
        let mut decode_inputs: Vec<[u32; 1]> = Vec::with_capacity(self.running.len());
        for seq in &self.running {
            decode_inputs.push([seq.next_input.unwrap_or(0)]);
        }
        for (i, seq) in self.running.iter_mut().enumerate() {
            let prompt_len = seq.req.prompt_ids.len();
            if seq.prompt_fed < prompt_len {
                let end = (seq.prompt_fed + PREFILL_CHUNK_TOKENS).min(prompt_len);
                let range = seq.prompt_fed..end;
                let last_chunk = end == prompt_len;
                let logits = if seq.req.prompt_logprobs.is_some() {
                    LogitRows::All
                } else if last_chunk {
                    LogitRows::Last
                } else {
                    LogitRows::None
                };
                let rows = match logits {
                    LogitRows::All => range.len(),
                    LogitRows::Last => 1,
                    LogitRows::None => 0,
                };
                plan.push((i, range.clone(), rows));
                batch.push(SeqBatch {
                    tokens: &seq.req.prompt_ids[range],
                    cache: &mut seq.cache,
                    logits,
                });
            } else {
                plan.push((i, 0..0, 1));
                batch.push(SeqBatch {
                    tokens: &decode_inputs[i],
                    cache: &mut seq.cache,
                    logits: LogitRows::Last,
                });
            }
        }
        let logits = self.model.forward(&mut batch)?;
        drop(batch);
        let vocab = logits.dim(1)?;
        let logits: Vec<f32> = logits.flatten_all()?.to_vec1()?;

        let mut row = 0usize;
        let mut finished = Vec::new();
        for (i, range, rows) in plan {
            let seq = &mut self.running[i];
            let seq_rows = &logits[row * vocab..(row + rows) * vocab];
            row += rows;
            let was_prefill = !range.is_empty();
            if was_prefill {
                seq.prompt_fed = range.end;
                if let Some(n) = seq.req.prompt_logprobs {
                    // Row j predicts prompt token range.start + j + 1.
                    for j in 0..rows {
                        let target = range.start + j + 1;
                        if let Some(&id) = seq.req.prompt_ids.get(target) {
                            let r = &seq_rows[j * vocab..(j + 1) * vocab];
                            seq.prompt_logprobs.push(token_logprob(r, id, n));
                        }
                    }
                }
                if seq.prompt_fed < seq.req.prompt_ids.len() {
                    continue;
                }
                if seq.req.prompt_logprobs.is_some() {
                    let lp = std::mem::take(&mut seq.prompt_logprobs);
                    let _ = seq.events.send(Event::PromptLogprobs(lp));
                }
                if seq.req.max_tokens == 0 {
                    finished.push(i);
                    let _ = seq.events.send(finish_event(seq, FinishReason::Length));
                    continue;
                }
            } else {
                seq.next_input = None;
            }
            let last = &seq_rows[(rows - 1) * vocab..rows * vocab];
            if let Some(reason) = self.sample_one(i, last) {
                finished.push(i);
                let seq = &self.running[i];
                let _ = seq.events.send(finish_event(seq, reason));
            }
        }
        for i in finished.into_iter().rev() {
            self.running.swap_remove(i);
        }
        Ok(())
    }

    /// Samples the next token of sequence `i` from `logits` ([vocab] f32), sends its text, and
    /// returns the finish reason if the sequence is done.
    fn sample_one(&mut self, i: usize, logits: &[f32]) -> Option<FinishReason> {
        let seq = &mut self.running[i];
        let (id, logprob) = seq
            .sampler
            .sample(logits, &seq.req.prompt_ids, &seq.generated);
        seq.generated.push(id);
        let is_eos = !seq.req.ignore_eos && self.tokenizer.eos_token_ids().contains(&id);
        if is_eos || seq.req.stop_token_ids.contains(&id) {
            // The end token counts in usage (as in vLLM) but is not part of the text, so it is
            // not reported among the tokens either.
            let (text, _) = drain_text(&mut seq.decoder, &mut seq.stop);
            let _ = seq.events.send(Event::Delta {
                text,
                tokens: Vec::new(),
            });
            return Some(FinishReason::Stop);
        }
        let piece = match seq.decoder.push(id) {
            Ok(p) => p,
            Err(e) => {
                let _ = seq
                    .events
                    .send(Event::Error(format!("detokenization failed: {e}")));
                return Some(FinishReason::Stop);
            }
        };
        let out = seq.stop.push(&piece);
        let token = GeneratedToken {
            id,
            text: self.tokenizer.token_text(id),
            logprob,
        };
        if out.stopped {
            let _ = seq.events.send(Event::Delta {
                text: out.emit,
                tokens: vec![token],
            });
            return Some(FinishReason::Stop);
        }
        let at_limit = seq.generated.len() >= seq.req.max_tokens
            || seq.req.prompt_ids.len() + seq.generated.len() >= self.context_length;
        if at_limit {
            let (rest, stopped) = drain_text(&mut seq.decoder, &mut seq.stop);
            let text = out.emit + &rest;
            let _ = seq.events.send(Event::Delta {
                text,
                tokens: vec![token],
            });
            return Some(if stopped {
                FinishReason::Stop
            } else {
                FinishReason::Length
            });
        }
        let _ = seq.events.send(Event::Delta {
            text: out.emit,
            tokens: vec![token],
        });
        seq.next_input = Some(id);
        None
    }
}

/// At the end of generation: the detokenizer's held-back text, run through the stop matcher, plus
/// whatever the matcher held back. Returns the text and whether a stop string matched in it.
fn drain_text(decoder: &mut StreamDecoder, stop: &mut StopMatcher) -> (String, bool) {
    // Bytes of a character cut off by the end of generation are dropped, never sent as U+FFFD.
    let tail = decoder.finish();
    let out = stop.push(tail.trim_end_matches('\u{FFFD}'));
    if out.stopped {
        return (out.emit, true);
    }
    (out.emit + &stop.flush(), false)
}

fn finish_event(seq: &Sequence, reason: FinishReason) -> Event {
    Event::Finished {
        reason,
        prompt_tokens: seq.req.prompt_ids.len(),
        completion_tokens: seq.generated.len(),
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "engine panicked".to_string()
    }
}
