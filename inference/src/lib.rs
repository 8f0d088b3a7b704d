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
//! - [`stop`]: stop-string matching across token boundaries.
//! - [`bench`]: single-sequence prefill/decode throughput measurement.
//! - [`engine`]: the engine thread, its handle, request and event types.

pub mod bench;
pub mod chat_template;
pub mod config;
pub mod engine;
pub mod gguf;
pub mod model;
pub mod sampling;
pub mod stop;
pub mod tokenizer;

pub use candle_core::Device;
