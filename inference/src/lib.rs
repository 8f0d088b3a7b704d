//! govlm inference engine: GGUF models, tokenizers, chat templates, sampling, KV cache and the
//! engine thread that owns a loaded model.
//!
//! Module map (one concern each):
//! - [`config`]: `models.toml` types and validation.
//! - [`gguf`]: reading GGUF files, tensor type conversion at load.
//! - [`model`]: the batched forward pass (llama, qwen2, gemma3) and its KV cache.
//! - [`tokenizer`]: tokenizers built from GGUF metadata; streaming detokenization.
//! - [`chat_template`]: HF-compatible chat templates rendered with minijinja.
//! - [`sampling`]: logits processors, samplers, logprobs.
//! - [`script`]: Simplified -> Traditional (Hong Kong) conversion of output, also streamed.
//! - [`stop`]: stop-string matching across token boundaries.
//! - [`structured`]: `response_format` (JSON schema / JSON object) by constrained decoding.
//! - [`block_manager`]: paged KV cache block bookkeeping (refcounts, LRU prefix cache).
//! - [`scheduler`]: continuous batching: admission, per-step token budget, preemption.
//! - [`metrics`]: Prometheus metrics of an engine.
//! - [`bench`]: single-sequence prefill/decode throughput measurement.
//! - [`engine`]: the engine thread, its handle, request and event types.

pub mod bench;
pub mod block_manager;
pub mod chat_template;
pub mod config;
pub mod engine;
pub mod gguf;
pub mod metrics;
pub mod model;
pub mod sampling;
pub mod scheduler;
pub mod script;
pub mod stop;
pub mod structured;
pub mod tokenizer;

pub use candle_core::Device;
