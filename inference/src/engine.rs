//! The engine thread: one per loaded model. It owns the weights, the KV caches and every running
//! sequence, and takes requests over a bounded channel. Each step it admits new requests, runs one
//! flattened forward pass over the prefill chunks and single-token decodes of all running
//! sequences, samples, detokenizes incrementally, applies stop conditions and sends events.
//!
//! Callers never share state with the thread: they get an [`EngineHandle`] (cheap to clone) and,
//! per request, an event receiver. Dropping the receiver cancels the sequence at the next step.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use candle_core::quantized::gguf_file;
use candle_core::Device;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::chat_template::{ChatTemplate, TemplateError, GEMMA_CHAT_TEMPLATE};
use crate::config::{DeviceSpec, KvMemory, ResolvedModel, Source};
use crate::metrics::EngineMetrics;
use crate::model::{ModelError, ModelRunner, PagedSeq, RunnerKvPool};
use crate::sampling::{token_logprob, SamplingParams, TokenLogprob};
use crate::scheduler::{Scheduler, Sequence};
use crate::tokenizer::{StreamDecoder, Tokenizer, TokenizerError};

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
    #[error("model `{id}`: kv_cache_memory: {message}")]
    KvCache { id: String, message: String },
    #[error("model `{id}`: metrics: {source}")]
    Metrics {
        id: String,
        source: prometheus::Error,
    },
}

/// Why a request could not be queued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    /// The waiting queue holds `capacity` sequences already (one per choice of a request);
    /// retry later (HTTP 429).
    #[error("the model `{model}` has {capacity} sequences waiting; retry later")]
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
    /// KV pool: number of blocks and tokens per block.
    pub kv_blocks: usize,
    pub kv_block_size: usize,
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
    /// Scheduling class: batch work is admitted only when no interactive request waits.
    pub priority: Priority,
    // structured output (begin)
    /// `response_format` grammar state of this sequence (see [`crate::structured`]); `None` for
    /// free text. Each sequence needs its own: clone it per choice.
    pub constraint: Option<crate::structured::Constraint>,
    // structured output (end)
    /// Converts the generated text's Chinese script (OpenCC `s2hk`) as it streams, before stop
    /// strings are matched, so a stop string is looked for in the text the client gets. Token
    /// texts and logprobs stay as the model produced them.
    pub output_script: Option<crate::script::ScriptConverter>,
}

/// Scheduling class of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    /// A user waiting on the answer (chat and completions routes).
    #[default]
    Interactive,
    /// Offline work (Batch API lines): runs in the capacity interactive requests leave.
    Batch,
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
        arrival: Instant,
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
    /// Requests submitted and not yet admitted by the engine thread (the waiting queue's
    /// length, bounded by `capacity`).
    waiting: Arc<AtomicUsize>,
    commands: Sender<Command>,
    metrics: EngineMetrics,
    // structured output (begin): built on first use, see `EngineHandle::structured`.
    structured: std::sync::OnceLock<
        Result<crate::structured::StructuredCompiler, crate::structured::StructuredError>,
    >,
    /// Width of a logits row (tokens); may exceed the tokenizer's vocabulary.
    logits_width: usize,
    /// Token ids the grammar never allows (GGUF token types unused / unknown).
    structured_excluded: Vec<u32>,
    // structured output (end)
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
    /// engine thread, with its metrics in a private registry. Errors name the model and the file
    /// or setting at fault.
    pub fn spawn(spec: &ResolvedModel) -> Result<Self, EngineError> {
        Self::spawn_with_registry(spec, &prometheus::Registry::new())
    }

    /// [`EngineHandle::spawn`], registering the engine's metrics in `registry`.
    pub fn spawn_with_registry(
        spec: &ResolvedModel,
        registry: &prometheus::Registry,
    ) -> Result<Self, EngineError> {
        let id = spec.id.clone();
        let metrics =
            EngineMetrics::register(registry, &id).map_err(|source| EngineError::Metrics {
                id: id.clone(),
                source,
            })?;
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
        let model = ModelRunner::load(&content, &mut file, &device).map_err(|source| {
            EngineError::Model {
                id: id.clone(),
                source,
            }
        })?;
        // structured output: vocabulary entries that must never be generated (unused, unknown).
        let structured_excluded = crate::structured::unusable_token_ids(&content.metadata);
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
        let sched = &spec.scheduler;
        let block_bytes = model.kv_bytes_per_token() * sched.block_size;
        let pool_bytes = kv_pool_bytes(sched.kv_cache_memory, spec.device).map_err(|message| {
            EngineError::KvCache {
                id: id.clone(),
                message,
            }
        })?;
        let num_blocks = (pool_bytes / block_bytes as u64) as usize;
        if num_blocks == 0 {
            return Err(EngineError::KvCache {
                id,
                message: format!(
                    "{pool_bytes} bytes hold no block of {} tokens ({block_bytes} bytes)",
                    sched.block_size
                ),
            });
        }
        // One sequence can never hold more tokens than the pool.
        let pool_tokens = num_blocks * sched.block_size;
        let context_length = if pool_tokens < context_length {
            tracing::warn!(
                model = %id,
                pool_tokens,
                context_length,
                "the KV pool holds fewer tokens than the context length; serving a context of {pool_tokens} tokens"
            );
            pool_tokens
        } else {
            context_length
        };
        let pool = model
            .new_kv_pool(sched.block_size, num_blocks)
            .map_err(|source| EngineError::Model {
                id: id.clone(),
                source,
            })?;
        tracing::info!(
            model = %id,
            kv_blocks = num_blocks,
            block_size = sched.block_size,
            kv_pool_mib = pool.bytes() >> 20,
            "KV cache pool"
        );
        metrics.kv_blocks_free.set(num_blocks as i64);
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
            kv_blocks: num_blocks,
            kv_block_size: sched.block_size,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let waiting = Arc::new(AtomicUsize::new(0));
        let logits_width = model.config().vocab_size; // structured output
        let worker = Worker {
            model,
            tokenizer: tokenizer.clone(),
            context_length,
            commands: rx,
            pool,
            sched: Scheduler::new(sched, num_blocks),
            metrics: metrics.clone(),
            waiting: waiting.clone(),
            next_id: 0,
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
                waiting,
                commands: tx,
                metrics,
                structured: std::sync::OnceLock::new(), // structured output
                logits_width,                           // structured output
                structured_excluded,                    // structured output
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

    // structured output (begin)
    /// This model's compiler of `response_format`s into per-sequence constraints. Built on the
    /// first call (blocks for a few hundred ms on a 152k-token vocabulary: call it off the async
    /// runtime); later calls return the same compiler.
    ///
    /// Errors: [`crate::structured::StructuredError::Unavailable`] when the tokenizer cannot be
    /// used (e.g. it has no EOS token).
    pub fn structured(
        &self,
    ) -> Result<&crate::structured::StructuredCompiler, crate::structured::StructuredError> {
        self.shared
            .structured
            .get_or_init(|| {
                crate::structured::StructuredCompiler::new(
                    &self.shared.tokenizer,
                    self.shared.logits_width,
                    &self.shared.structured_excluded,
                )
            })
            .as_ref()
            .map_err(Clone::clone)
    }
    // structured output (end)

    /// This engine's metrics.
    pub fn metrics(&self) -> &EngineMetrics {
        &self.shared.metrics
    }

    /// Requests submitted and not yet admitted into the running set.
    pub fn num_waiting(&self) -> usize {
        self.shared.waiting.load(Ordering::Relaxed)
    }

    /// Queues a request without blocking. Events arrive on the returned receiver; dropping it
    /// cancels the request (its KV blocks are freed at the next step).
    ///
    /// Batch-priority requests may fill at most half of the waiting queue, so that a large
    /// batch never makes interactive requests see 429.
    ///
    /// Errors: [`SubmitError::QueueFull`] when the waiting queue is full,
    /// [`SubmitError::EngineStopped`] when the engine thread is gone.
    pub fn submit(&self, req: GenerateRequest) -> Result<UnboundedReceiver<Event>, SubmitError> {
        let shared = &self.shared;
        let limit = match req.priority {
            Priority::Interactive => shared.capacity,
            Priority::Batch => shared.capacity.div_ceil(2),
        };
        let reserved = shared
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w < limit).then_some(w + 1)
            });
        if reserved.is_err() {
            // Batch API lines are retried internally; only clients see a 429.
            if req.priority == Priority::Interactive {
                shared.metrics.rejected.inc();
            }
            return Err(SubmitError::QueueFull {
                model: shared.info.id.clone(),
                capacity: shared.capacity,
            });
        }
        let (events, rx) = unbounded_channel();
        let cmd = Command::Generate {
            req,
            events,
            arrival: Instant::now(),
        };
        if shared.commands.send(cmd).is_err() {
            shared.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(SubmitError::EngineStopped {
                model: shared.info.id.clone(),
            });
        }
        Ok(rx)
    }
}

/// Bytes of the KV pool for a configured size (a share is of `MemAvailable` in /proc/meminfo).
fn kv_pool_bytes(mem: KvMemory, device: DeviceSpec) -> Result<u64, String> {
    match mem {
        KvMemory::Bytes(b) => Ok(b),
        // The share is of host memory; a GPU pool needs its size stated.
        KvMemory::Fraction(_) if device != DeviceSpec::Cpu => Err(
            "a share of available memory applies to the CPU only; give the KV pool of a CUDA \
             device in bytes (e.g. \"8GiB\")"
                .to_string(),
        ),
        KvMemory::Fraction(f) => {
            let text = std::fs::read_to_string("/proc/meminfo").map_err(|e| {
                format!(
                    "a share of available memory needs /proc/meminfo ({e}); give a size in bytes"
                )
            })?;
            let kib: u64 = text
                .lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .ok_or("no MemAvailable in /proc/meminfo; give a size in bytes")?;
            Ok((kib as f64 * 1024.0 * f) as u64)
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

struct Worker {
    model: ModelRunner,
    tokenizer: Tokenizer,
    context_length: usize,
    commands: Receiver<Command>,
    pool: RunnerKvPool,
    sched: Scheduler,
    metrics: EngineMetrics,
    /// Shared with the handles: submitted, not yet admitted.
    waiting: Arc<AtomicUsize>,
    /// Arrival order of the next sequence.
    next_id: u64,
}

impl Worker {
    fn run(mut self) {
        loop {
            if !self.receive() {
                return;
            }
            let never_ran = self.sched.drop_cancelled();
            self.waiting.fetch_sub(never_ran, Ordering::AcqRel);
            let admitted = self.sched.schedule();
            self.waiting.fetch_sub(admitted, Ordering::AcqRel);
            if self.sched.running.iter().any(|s| s.step_tokens > 0) {
                let step = std::panic::catch_unwind(AssertUnwindSafe(|| self.step()));
                let failure = match step {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(panic) => Some(panic_message(&panic)),
                };
                if let Some(message) = failure {
                    tracing::error!(error = %message, "engine step failed; failing its sequences");
                    self.fail_running(&format!("inference failed: {message}"));
                }
            }
            self.update_gauges();
        }
    }

    /// Moves submitted requests into the scheduler; blocks while there is nothing to do.
    /// Returns false when every handle is gone and no work is left.
    fn receive(&mut self) -> bool {
        if self.sched.is_idle() {
            match self.commands.recv() {
                Ok(cmd) => self.start(cmd),
                Err(_) => return false,
            }
        }
        loop {
            match self.commands.try_recv() {
                Ok(cmd) => self.start(cmd),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return !self.sched.is_idle(),
            }
        }
    }

    fn start(&mut self, cmd: Command) {
        let Command::Generate {
            req,
            events,
            arrival,
        } = cmd;
        let prompt_len = req.prompt_ids.len();
        let fail = |msg: String| {
            let _ = events.send(Event::Error(msg));
        };
        let vocab = self.model.config().vocab_size as u32;
        let problem = if prompt_len == 0 {
            Some("the prompt has no tokens".to_string())
        } else if prompt_len + req.max_tokens > self.context_length {
            Some(format!(
                "prompt of {prompt_len} tokens plus max_tokens {} exceeds the context length of {} tokens",
                req.max_tokens, self.context_length
            ))
        } else {
            req.prompt_ids
                .iter()
                .find(|&&t| t >= vocab)
                .map(|bad| format!("token id {bad} is outside the vocabulary of {vocab} tokens"))
        };
        if let Some(msg) = problem {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            self.metrics.finished.with_label_values(&["error"]).inc();
            return fail(msg);
        }
        let id = self.next_id;
        self.next_id += 1;
        let decoder = StreamDecoder::new(self.tokenizer.clone());
        self.sched
            .enqueue(Sequence::new(id, req, events, decoder, arrival));
    }

    /// Fails the running sequences after a failed step; the KV blocks they held are freed.
    fn fail_running(&mut self, message: &str) {
        let all: Vec<usize> = (0..self.sched.running.len()).collect();
        for seq in &self.sched.running {
            let _ = seq.events.send(Event::Error(message.to_string()));
        }
        self.metrics
            .finished
            .with_label_values(&["error"])
            .inc_by(all.len() as u64);
        self.sched.finish(all);
    }

    fn update_gauges(&mut self) {
        let m = &self.metrics;
        let c = self.sched.take_counts();
        m.preemptions.inc_by(c.preempted);
        m.cancelled.inc_by(c.cancelled);
        m.prefix_cache_queries.inc_by(c.prefix_queried);
        m.prefix_cache_hits.inc_by(c.prefix_hit);
        m.running.set(self.sched.running.len() as i64);
        m.waiting
            .set((self.waiting.load(Ordering::Relaxed) + self.sched.num_waiting()) as i64);
        let b = &self.sched.blocks;
        m.kv_blocks_used.set(b.num_used() as i64);
        m.kv_blocks_free.set(b.num_allocatable() as i64);
        m.kv_blocks_cached.set(b.num_cached() as i64);
    }

    /// One forward pass over the scheduled sequences, then sampling and events.
    fn step(&mut self) -> Result<(), ModelError> {
        let running = &self.sched.running;
        let batch: Vec<PagedSeq<'_>> = running
            .iter()
            .filter(|s| s.step_tokens > 0)
            .map(|s| PagedSeq {
                tokens: &s.tokens[s.num_computed..s.num_computed + s.step_tokens],
                blocks: &s.blocks,
                start_pos: s.num_computed,
                logits: s.step_logits,
            })
            .collect();
        let step_tokens: usize = batch.iter().map(|s| s.tokens.len()).sum();
        self.metrics.step_tokens.observe(step_tokens as f64);
        self.metrics.step_sequences.observe(batch.len() as f64);
        let logits = self.model.forward_paged(&mut self.pool, &batch)?;
        drop(batch);
        let vocab = logits.dim(1)?;
        let logits: Vec<f32> = logits.flatten_all()?.to_vec1()?;
        // Positions before the step, for the scheduled sequences in running order.
        let plan: Vec<(usize, usize, usize)> = self
            .sched
            .running
            .iter()
            .enumerate()
            .filter(|(_, s)| s.step_tokens > 0)
            .map(|(i, s)| {
                let rows = match s.step_logits {
                    crate::model::LogitRows::None => 0,
                    crate::model::LogitRows::Last => 1,
                    crate::model::LogitRows::All => s.step_tokens,
                };
                (i, s.num_computed, rows)
            })
            .collect();
        self.sched.advance();

        let mut row = 0usize;
        let mut finished = Vec::new();
        for (i, start, rows) in plan {
            let seq = &mut self.sched.running[i];
            let seq_rows = &logits[row * vocab..(row + rows) * vocab];
            row += rows;
            let prompt_len = seq.req.prompt_ids.len();
            if let (Some(n), false) = (seq.req.prompt_logprobs, seq.prompt_done) {
                // Row j predicts token start + j + 1; after a preemption the prompt is
                // recomputed, so only entries not yet collected are taken.
                if rows > 1 || (rows == 1 && seq.num_computed <= prompt_len) {
                    for j in 0..rows {
                        let target = start + j + 1;
                        if target == seq.prompt_logprobs.len() + 1 && target < prompt_len {
                            let r = &seq_rows[j * vocab..(j + 1) * vocab];
                            let id = seq.req.prompt_ids[target];
                            seq.prompt_logprobs.push(token_logprob(r, id, n));
                        }
                    }
                }
                if seq.num_computed >= prompt_len {
                    seq.prompt_done = true;
                    let lp = std::mem::take(&mut seq.prompt_logprobs);
                    let _ = seq.events.send(Event::PromptLogprobs(lp));
                }
            }
            if seq.num_computed < seq.tokens.len() {
                continue; // a prefill chunk that is not the last
            }
            if seq.req.max_tokens == 0 {
                finished.push(i);
                let _ = seq.events.send(finish_event(seq, FinishReason::Length));
                self.record_finish(i, FinishReason::Length);
                continue;
            }
            if rows == 0 {
                continue;
            }
            let last = &seq_rows[(rows - 1) * vocab..rows * vocab];
            if let Some(reason) = self.sample_one(i, last) {
                finished.push(i);
                let seq = &self.sched.running[i];
                let _ = seq.events.send(finish_event(seq, reason));
                self.record_finish(i, reason);
            }
        }
        self.sched.finish(finished);
        Ok(())
    }

    /// Metrics of a request that ends now.
    fn record_finish(&self, i: usize, reason: FinishReason) {
        let seq = &self.sched.running[i];
        let m = &self.metrics;
        m.e2e_latency.observe(seq.arrival.elapsed().as_secs_f64());
        m.prompt_tokens.inc_by(seq.req.prompt_ids.len() as u64);
        let label = match reason {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        };
        m.finished.with_label_values(&[label]).inc();
    }

    /// Samples the next token of sequence `i` from `logits` ([vocab] f32), sends its text, and
    /// returns the finish reason if the sequence is done.
    fn sample_one(&mut self, i: usize, logits: &[f32]) -> Option<FinishReason> {
        let now = Instant::now();
        let seq = &mut self.sched.running[i];
        match seq.last_token_at {
            None => self
                .metrics
                .time_to_first_token
                .observe((now - seq.arrival).as_secs_f64()),
            Some(t) => self
                .metrics
                .inter_token_latency
                .observe((now - t).as_secs_f64()),
        }
        seq.last_token_at = Some(now);
        self.metrics.generation_tokens.inc();
        // structured output (begin): sample from the grammar-masked row; logprobs therefore
        // describe the masked distribution (as in vLLM, where the mask precedes the sampler).
        let logits = match seq.req.constraint.as_mut().map(|c| c.mask_logits(logits)) {
            None => logits,
            Some(Ok(masked)) => masked,
            Some(Err(e)) => {
                let _ = seq.events.send(Event::Error(e.to_string()));
                return Some(FinishReason::Stop);
            }
        };
        // structured output (end)
        let (id, logprob) = seq
            .sampler
            .sample(logits, &seq.req.prompt_ids, &seq.generated);
        seq.generated.push(id);
        let is_eos = !seq.req.ignore_eos && self.tokenizer.eos_token_ids().contains(&id);
        if is_eos || seq.req.stop_token_ids.contains(&id) {
            // The end token counts in usage (as in vLLM) but is not part of the text, so it is
            // not reported among the tokens either.
            let (text, _) = drain_text(seq);
            let _ = seq.events.send(Event::Delta {
                text,
                tokens: Vec::new(),
            });
            return Some(FinishReason::Stop);
        }
        // structured output (begin): advance the grammar; a complete document ends the sequence.
        let mut grammar_done = false;
        if let Some(c) = seq.req.constraint.as_mut() {
            if let Err(e) = c.consume(id) {
                let _ = seq.events.send(Event::Error(e.to_string()));
                return Some(FinishReason::Stop);
            }
            grammar_done = c.is_complete();
        }
        // structured output (end)
        let piece = match seq.decoder.push(id) {
            Ok(p) => p,
            Err(e) => {
                let _ = seq
                    .events
                    .send(Event::Error(format!("detokenization failed: {e}")));
                return Some(FinishReason::Stop);
            }
        };
        let piece = match seq.script.as_mut() {
            Some(s) => s.push(&piece),
            None => piece,
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
        if at_limit || grammar_done {
            let (rest, stopped) = drain_text(seq);
            let text = out.emit + &rest;
            let _ = seq.events.send(Event::Delta {
                text,
                tokens: vec![token],
            });
            return Some(if stopped || grammar_done {
                FinishReason::Stop
            } else {
                FinishReason::Length
            });
        }
        let _ = seq.events.send(Event::Delta {
            text: out.emit,
            tokens: vec![token],
        });
        seq.tokens.push(id);
        None
    }
}

/// At the end of generation: the detokenizer's and the script converter's held-back text, run
/// through the stop matcher, plus whatever the matcher held back. Returns the text and whether a
/// stop string matched in it.
fn drain_text(seq: &mut Sequence) -> (String, bool) {
    // Bytes of a character cut off by the end of generation are dropped, never sent as U+FFFD.
    let tail = seq.decoder.finish();
    let tail = tail.trim_end_matches('\u{FFFD}');
    let tail = match seq.script.as_mut() {
        Some(s) => s.push(tail) + &s.finish(),
        None => tail.to_string(),
    };
    let out = seq.stop.push(&tail);
    if out.stopped {
        return (out.emit, true);
    }
    (out.emit + &seq.stop.flush(), false)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_pool_size_from_config() {
        assert_eq!(
            kv_pool_bytes(KvMemory::Bytes(1 << 30), DeviceSpec::Cuda(0)),
            Ok(1 << 30)
        );
        let err = kv_pool_bytes(KvMemory::Fraction(0.5), DeviceSpec::Cuda(0)).unwrap_err();
        assert!(err.contains("in bytes"), "{err}");
        // On the CPU a share of MemAvailable is a positive size below the machine's memory.
        let share = kv_pool_bytes(KvMemory::Fraction(0.25), DeviceSpec::Cpu).expect("share");
        let all = kv_pool_bytes(KvMemory::Fraction(1.0), DeviceSpec::Cpu).expect("all");
        assert!(share > 0 && share < all, "{share} of {all}");
    }
}
