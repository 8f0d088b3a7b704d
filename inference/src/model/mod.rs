//! The batched forward pass for the `llama` (SmolLM2), `qwen2` (Qwen2.5) and `gemma3` (Gemma 3)
//! GGUF architectures.
//!
//! One [`Model::forward`] call takes the new tokens of several sequences, flattened into one
//! `[total_tokens, hidden]` activation matrix with per-token positions. Every matmul runs once
//! for all rows (candle `QMatMul`; Q/K/V and gate/up fused into one matrix each), attention runs
//! per (sequence, head, query) against that sequence's own [`KvCache`], and the output
//! projection runs only for the rows whose logits were asked for ([`LogitRows`]).
//!
//! Architecture details (llama.cpp's GGUF conventions):
//! - llama: Q/K rows are stored for the interleaved RoPE (pairs `2j, 2j+1`); qwen2 and gemma3
//!   use the NEOX pairing (`j, j + d/2`).
//! - qwen2: Q/K/V biases.
//! - gemma3: embeddings scaled by `sqrt(hidden)`; the GGUF norm weights already contain the
//!   `+1` of Gemma's `(1 + w)` RMSNorm (llama.cpp's converter adds it), so all norms are plain
//!   `x / rms * w`; per-head Q/K RMSNorm; post-attention and post-FFN norms; GELU (tanh
//!   approximation) gated MLP; attention scale `key_length^-0.5`; layers `i % 6 != 5` use
//!   sliding-window attention (window from `gemma3.attention.sliding_window`, the query plus the
//!   `window - 1` previous tokens, in prefill and decode alike) with RoPE base 10 000, the others
//!   are global with `gemma3.rope.freq_base`; tied output embeddings when the file has no
//!   `output.weight`.
//!
//! RoPE cos/sin values are computed once per forward pass for exactly the positions in the
//! batch and shared by all layers.

mod device;
mod kernels;
mod kv_cache;
mod linear;
mod qmatmul;

use std::io::{Read, Seek};

use candle_core::quantized::{gguf_file, QTensor};
use candle_core::{Device, Tensor};

pub use device::{DeviceKvPool, DeviceModel};
pub use kv_cache::{KvCache, KvPool};

use crate::gguf::{metadata_f64, metadata_str, metadata_usize, read_tensor, read_vector};
use kernels::{Activation, AttnSeq, RopeTable};
use linear::{with_f32, Linear};

/// Errors while loading a model or running a forward pass.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// `general.architecture` names a family we cannot run.
    #[error("unsupported architecture `{0}` (supported: llama, qwen2, gemma3)")]
    UnsupportedArchitecture(String),
    /// A required GGUF metadata key is absent.
    #[error("GGUF metadata key `{0}` is missing")]
    MissingMetadata(String),
    /// A GGUF metadata value has the wrong type or an impossible value.
    #[error("invalid GGUF metadata: {0}")]
    InvalidMetadata(String),
    /// A required tensor is absent from the GGUF file.
    #[error("GGUF tensor `{0}` is missing")]
    MissingTensor(String),
    /// A tensor layout or type combination this implementation does not handle.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The forward pass input is malformed (empty sequence, token id outside the vocabulary).
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// A sequence's new tokens do not fit in its KV cache.
    #[error("KV cache full: {needed} tokens needed, capacity {capacity}")]
    CacheFull { needed: usize, capacity: usize },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Supported model families (`general.architecture`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// `llama` (SmolLM2 and other llama-style models).
    Llama,
    /// `qwen2` (Qwen2 / Qwen2.5).
    Qwen2,
    /// `gemma3` (Gemma 3 text models).
    Gemma3,
}

impl Architecture {
    /// Maps a GGUF `general.architecture` name; `UnsupportedArchitecture` for others.
    pub fn from_gguf_name(name: &str) -> Result<Self, ModelError> {
        match name {
            "llama" => Ok(Self::Llama),
            "qwen2" => Ok(Self::Qwen2),
            "gemma3" => Ok(Self::Gemma3),
            other => Err(ModelError::UnsupportedArchitecture(other.to_string())),
        }
    }
}

/// Hyper-parameters read from GGUF metadata.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub architecture: Architecture,
    /// Number of logits per row (rows of the output matrix).
    pub vocab_size: usize,
    /// Trained context length in tokens (`{arch}.context_length`).
    pub context_length: usize,
    pub num_layers: usize,
    pub hidden_size: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    /// Per-head dimension of queries, keys and values.
    pub head_dim: usize,
    /// MLP inner width.
    pub intermediate_size: usize,
    pub rms_norm_eps: f32,
    /// Rotated dimensions per head (`<= head_dim`).
    pub rope_dim: usize,
    /// RoPE base of global-attention layers.
    pub rope_base: f64,
    /// RoPE base of sliding-window layers (gemma3: 10 000).
    pub rope_base_local: f64,
    /// Sliding window (tokens, query included) of local layers (gemma3).
    pub sliding_window: Option<usize>,
    /// Attention score scale.
    pub attention_scale: f32,
}

impl ModelConfig {
    /// Reads the hyper-parameters for the architecture named in `general.architecture`.
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self, ModelError> {
        let md = &content.metadata;
        let arch_name = metadata_str(md, "general.architecture")?;
        let architecture = Architecture::from_gguf_name(arch_name)?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let hidden_size = metadata_usize(md, &key("embedding_length"))?;
        let num_heads = metadata_usize(md, &key("attention.head_count"))?;
        let num_kv_heads = metadata_usize(md, &key("attention.head_count_kv")).unwrap_or(num_heads);
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(ModelError::InvalidMetadata(format!(
                "{num_heads} attention heads, {num_kv_heads} KV heads"
            )));
        }
        let head_dim =
            metadata_usize(md, &key("attention.key_length")).unwrap_or(hidden_size / num_heads);
        let rope_dim = metadata_usize(md, &key("rope.dimension_count"))
            .unwrap_or(head_dim)
            .min(head_dim);
        let gemma = architecture == Architecture::Gemma3;
        let default_eps = if architecture == Architecture::Llama {
            1e-5
        } else {
            1e-6
        };
        let default_base = match architecture {
            Architecture::Llama => 10_000.0,
            _ => 1_000_000.0,
        };
        let vocab_size = content
            .tensor_infos
            .get("output.weight")
            .or_else(|| content.tensor_infos.get("token_embd.weight"))
            .map(|t| t.shape.dims()[0])
            .ok_or_else(|| ModelError::MissingTensor("token_embd.weight".into()))?;
        Ok(Self {
            architecture,
            vocab_size,
            context_length: metadata_usize(md, &key("context_length"))?,
            num_layers: metadata_usize(md, &key("block_count"))?,
            hidden_size,
            num_heads,
            num_kv_heads,
            head_dim,
            intermediate_size: metadata_usize(md, &key("feed_forward_length"))?,
            rms_norm_eps: metadata_f64(md, &key("attention.layer_norm_rms_epsilon"))
                .unwrap_or(default_eps) as f32,
            rope_dim,
            rope_base: metadata_f64(md, &key("rope.freq_base")).unwrap_or(default_base),
            rope_base_local: 10_000.0,
            sliding_window: if gemma {
                Some(metadata_usize(md, &key("attention.sliding_window")).unwrap_or(512))
            } else {
                None
            },
            attention_scale: 1.0 / (head_dim as f32).sqrt(),
        })
    }

    /// Bytes of KV cache one token takes over all layers (keys and values, f32).
    pub fn kv_bytes_per_token(&self) -> usize {
        2 * self.num_layers * self.num_kv_heads * self.head_dim * std::mem::size_of::<f32>()
    }

    /// Whether layer `i` uses sliding-window attention (gemma3: all but every 6th layer).
    pub fn is_local_layer(&self, i: usize) -> bool {
        self.architecture == Architecture::Gemma3 && i % 6 != 5
    }
}

/// Which logits rows a sequence wants from a forward pass.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LogitRows {
    /// No logits (e.g. a prefill chunk that is not the prompt's last).
    None,
    /// One row: the last new token's.
    Last,
    /// One row per new token (prompt logprobs).
    All,
}

/// One sequence's share of a flattened forward pass.
pub struct SeqBatch<'a> {
    /// New tokens; their positions continue from `cache.len()`.
    pub tokens: &'a [u32],
    /// This sequence's KV cache; the new tokens' keys and values are appended.
    pub cache: &'a mut KvCache,
    pub logits: LogitRows,
}

/// One sequence's share of a paged forward pass ([`Model::forward_paged`]).
#[derive(Clone, Copy, Debug)]
pub struct PagedSeq<'a> {
    /// New tokens, at positions `start_pos..start_pos + tokens.len()`.
    pub tokens: &'a [u32],
    /// Block table: block `i` of the pool holds positions `i * block_size..(i + 1) * block_size`;
    /// it must cover every new position.
    pub blocks: &'a [u32],
    /// Tokens already in the blocks (the position of the first new token).
    pub start_pos: usize,
    pub logits: LogitRows,
}

/// A sequence inside `forward_core`: which pool it uses and its block table.
struct SeqView<'a> {
    pool: usize,
    tokens: &'a [u32],
    blocks: &'a [u32],
    start_pos: usize,
    logits: LogitRows,
}

/// Projections of one input: fused into one matrix, or separate when their types differ.
enum Proj {
    Fused(Linear),
    Separate(Vec<Linear>),
}

impl Proj {
    fn new(parts: Vec<QTensor>) -> Result<Self, ModelError> {
        let dtypes: Vec<_> = parts.iter().map(|p| p.dtype()).collect();
        let fusable = dtypes.iter().all(|&d| crate::gguf::converts_to_q8_0(d))
            || dtypes.iter().all(|&d| d == dtypes[0]);
        if fusable {
            Ok(Self::Fused(Linear::fused(parts)?))
        } else {
            Ok(Self::Separate(
                parts
                    .into_iter()
                    .map(Linear::single)
                    .collect::<Result<_, _>>()?,
            ))
        }
    }

    /// Input width the (first) matmul expects.
    fn k_pad(&self) -> usize {
        match self {
            Self::Fused(l) => l.k_pad,
            Self::Separate(ls) => ls.first().map_or(0, |l| l.k_pad),
        }
    }

    fn n(&self) -> usize {
        match self {
            Self::Fused(l) => l.n,
            Self::Separate(ls) => ls.iter().map(|l| l.n).sum(),
        }
    }

    /// `x`: `[t, k_pad()]`; returns `[t, n()]` (parts' columns side by side).
    fn forward(&self, x: Vec<f32>, k: usize) -> Result<Vec<f32>, ModelError> {
        match self {
            Self::Fused(l) => l.forward(x),
            Self::Separate(ls) => {
                let kp = self.k_pad();
                let t = x.len() / kp;
                let n = self.n();
                let mut out = vec![0f32; t * n];
                let mut col = 0;
                for l in ls {
                    let y = if l.k_pad == kp {
                        l.forward(x.clone())?
                    } else {
                        l.forward(
                            x.chunks_exact(kp)
                                .flat_map(|r| r[..k].iter().copied())
                                .collect(),
                        )?
                    };
                    for (r, yr) in y.chunks_exact(l.n).enumerate() {
                        out[r * n + col..r * n + col + l.n].copy_from_slice(yr);
                    }
                    col += l.n;
                }
                Ok(out)
            }
        }
    }
}

/// A loaded model with the forward pass for its device: our own kernels on the CPU
/// ([`Model`]), candle tensor operations elsewhere ([`DeviceModel`], CUDA).
pub enum ModelRunner {
    Cpu(Model),
    Device(DeviceModel),
}

/// The paged KV pool of a [`ModelRunner`], on the same device.
pub enum RunnerKvPool {
    Cpu(KvPool),
    Device(DeviceKvPool),
}

impl RunnerKvPool {
    /// Bytes of the whole pool.
    pub fn bytes(&self) -> usize {
        match self {
            Self::Cpu(p) => p.bytes(),
            Self::Device(p) => p.bytes(),
        }
    }
}

impl ModelRunner {
    /// Loads the model for `device`: [`Model::load`] on the CPU, [`DeviceModel::load`] on any
    /// other device. Errors: theirs.
    pub fn load<R: Read + Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
    ) -> Result<Self, ModelError> {
        if device.is_cpu() {
            Ok(Self::Cpu(Model::load(content, reader, device)?))
        } else {
            Ok(Self::Device(DeviceModel::load(content, reader, device)?))
        }
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        match self {
            Self::Cpu(m) => m.config(),
            Self::Device(m) => m.config(),
        }
    }

    /// Bytes of KV cache one token takes over all layers (keys and values, f32).
    pub fn kv_bytes_per_token(&self) -> usize {
        self.config().kv_bytes_per_token()
    }

    /// A pool of `num_blocks` blocks of `block_size` tokens on the model's device.
    pub fn new_kv_pool(
        &self,
        block_size: usize,
        num_blocks: usize,
    ) -> Result<RunnerKvPool, ModelError> {
        Ok(match self {
            Self::Cpu(m) => RunnerKvPool::Cpu(m.new_kv_pool(block_size, num_blocks)?),
            Self::Device(m) => RunnerKvPool::Device(m.new_kv_pool(block_size, num_blocks)?),
        })
    }

    /// [`Model::forward_paged`] / [`DeviceModel::forward_paged`]; logits on the CPU.
    /// Errors: theirs, and `InvalidBatch` for a pool of the other kind.
    pub fn forward_paged(
        &self,
        pool: &mut RunnerKvPool,
        batch: &[PagedSeq<'_>],
    ) -> Result<Tensor, ModelError> {
        match (self, pool) {
            (Self::Cpu(m), RunnerKvPool::Cpu(p)) => m.forward_paged(p, batch),
            (Self::Device(m), RunnerKvPool::Device(p)) => m.forward_paged(p, batch),
            _ => Err(ModelError::InvalidBatch(
                "the KV pool is not on the model's device".into(),
            )),
        }
    }
}

/// Norm weights and biases of one layer (f32, host). The optional ones are absent when the
/// file has none (Q/K/V biases: qwen2); Gemma 3 must have its Q/K and post norms.
struct LayerVectors {
    attn_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    q_bias: Option<Vec<f32>>,
    k_bias: Option<Vec<f32>>,
    v_bias: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    post_attn_norm: Option<Vec<f32>>,
    post_ffn_norm: Option<Vec<f32>>,
}

impl LayerVectors {
    /// Reads layer `i`'s vectors. Errors: a missing required tensor, I/O and format errors.
    fn read<R: Read + Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        i: usize,
        gemma: bool,
    ) -> Result<Self, ModelError> {
        let p = |s: &str| format!("blk.{i}.{s}");
        let mut opt = |s: &str, want: bool| -> Result<Option<Vec<f32>>, ModelError> {
            if want || content.tensor_infos.contains_key(&p(s)) {
                Ok(Some(read_vector(content, reader, &p(s))?))
            } else {
                Ok(None)
            }
        };
        Ok(Self {
            attn_norm: opt("attn_norm.weight", true)?.unwrap_or_default(),
            ffn_norm: opt("ffn_norm.weight", true)?.unwrap_or_default(),
            q_bias: opt("attn_q.bias", false)?,
            k_bias: opt("attn_k.bias", false)?,
            v_bias: opt("attn_v.bias", false)?,
            q_norm: opt("attn_q_norm.weight", gemma)?,
            k_norm: opt("attn_k_norm.weight", gemma)?,
            post_attn_norm: opt("post_attention_norm.weight", gemma)?,
            post_ffn_norm: opt("post_ffw_norm.weight", gemma)?,
        })
    }
}

/// A batch flattened into one row per new token.
struct Flat {
    /// Token ids, sequence after sequence.
    ids: Vec<u32>,
    /// Position of each token in its sequence.
    positions: Vec<usize>,
    /// Rows whose logits are wanted, in order.
    rows: Vec<u32>,
}

impl Flat {
    /// Flattens `(new tokens, start position, logits wanted)` per sequence. Errors:
    /// `InvalidBatch` for a sequence without tokens or a token id outside the vocabulary.
    fn new<'a>(
        seqs: impl Iterator<Item = (&'a [u32], usize, LogitRows)>,
        vocab_size: usize,
    ) -> Result<Self, ModelError> {
        let mut flat = Flat {
            ids: Vec::new(),
            positions: Vec::new(),
            rows: Vec::new(),
        };
        for (tokens, start_pos, logits) in seqs {
            if tokens.is_empty() {
                return Err(ModelError::InvalidBatch(
                    "a sequence has no new tokens".into(),
                ));
            }
            if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab_size) {
                return Err(ModelError::InvalidBatch(format!(
                    "token id {bad} is outside the vocabulary of {vocab_size} tokens"
                )));
            }
            let (start, n) = (flat.ids.len(), tokens.len());
            match logits {
                LogitRows::None => {}
                LogitRows::Last => flat.rows.push((start + n - 1) as u32),
                LogitRows::All => flat.rows.extend((start..start + n).map(|r| r as u32)),
            }
            flat.ids.extend_from_slice(tokens);
            flat.positions.extend(start_pos..start_pos + n);
        }
        Ok(flat)
    }
}

/// Checks a paged batch's block tables against a pool of `num_blocks` blocks of `block_size`
/// tokens: each table covers its new positions, names only blocks of the pool, and no block is
/// written by two sequences (shared prefix blocks may only be read).
fn check_block_tables(
    batch: &[PagedSeq<'_>],
    block_size: usize,
    num_blocks: usize,
) -> Result<(), ModelError> {
    let bs = block_size;
    let mut written = std::collections::HashSet::new();
    for s in batch {
        let end = s.start_pos + s.tokens.len();
        if s.blocks.len() * bs < end {
            return Err(ModelError::InvalidBatch(format!(
                "a block table of {} blocks of {bs} tokens cannot hold {end} tokens",
                s.blocks.len()
            )));
        }
        if let Some(&b) = s.blocks.iter().find(|&&b| b as usize >= num_blocks) {
            return Err(ModelError::InvalidBatch(format!(
                "block {b} is outside the KV pool of {num_blocks} blocks"
            )));
        }
        if !s.tokens.is_empty() {
            for &b in &s.blocks[s.start_pos / bs..end.div_ceil(bs)] {
                if !written.insert(b) {
                    return Err(ModelError::InvalidBatch(format!(
                        "block {b} would be written by two sequences of one batch"
                    )));
                }
            }
        }
    }
    Ok(())
}

fn to_vec(t: &Tensor) -> Result<Vec<f32>, ModelError> {
    with_f32(t, |s| s.to_vec())
}

struct Layer {
    attn_norm: Vec<f32>,
    qkv: Proj,
    q_bias: Option<Vec<f32>>,
    k_bias: Option<Vec<f32>>,
    v_bias: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    attn_output: Linear,
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    gate_up: Proj,
    ffn_down: Linear,
    post_ffn_norm: Option<Vec<f32>>,
}

/// A loaded model. `Send`; lives on the engine thread.
pub struct Model {
    config: ModelConfig,
    /// Token embeddings `[vocab, hidden]` as stored (rows are dequantized on lookup).
    embed: QTensor,
    layers: Vec<Layer>,
    output_norm: Vec<f32>,
    /// Output projection `[vocab, hidden]` (tied to the embeddings when the file has none).
    lm_head: Linear,
}

impl Model {
    /// Loads weights from an open GGUF file whose `Content` was already read.
    ///
    /// Slow quantization formats are converted at load (see [`crate::gguf`]); a 2-token warm-up
    /// forward pass then makes candle build its repacked weight layouts, so the first request
    /// does not pay for it. Only `Device::Cpu` is supported.
    ///
    /// Errors: unsupported architecture, missing metadata or tensors, I/O and format errors.
    pub fn load<R: Read + Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
    ) -> Result<Model, ModelError> {
        if !device.is_cpu() {
            return Err(ModelError::Unsupported(
                "only the CPU device is supported".into(),
            ));
        }
        let config = ModelConfig::from_gguf(content)?;
        let has = |name: &str| content.tensor_infos.contains_key(name);
        let gemma = config.architecture == Architecture::Gemma3;
        let embed = read_tensor(content, reader, "token_embd.weight", device)?;
        let mut layers = Vec::with_capacity(config.num_layers);
        for i in 0..config.num_layers {
            let p = |s: &str| format!("blk.{i}.{s}");
            let mut t = |s: &str| read_tensor(content, reader, &p(s), device);
            let qkv = Proj::new(vec![
                t("attn_q.weight")?,
                t("attn_k.weight")?,
                t("attn_v.weight")?,
            ])?;
            let attn_output = Linear::single(t("attn_output.weight")?)?;
            let gate_up = Proj::new(vec![t("ffn_gate.weight")?, t("ffn_up.weight")?])?;
            let ffn_down = Linear::single(t("ffn_down.weight")?)?;
            let LayerVectors {
                attn_norm,
                ffn_norm,
                q_bias,
                k_bias,
                v_bias,
                q_norm,
                k_norm,
                post_attn_norm,
                post_ffn_norm,
            } = LayerVectors::read(content, reader, i, gemma)?;
            layers.push(Layer {
                attn_norm,
                qkv,
                q_bias,
                k_bias,
                v_bias,
                q_norm,
                k_norm,
                attn_output,
                post_attn_norm,
                ffn_norm,
                gate_up,
                ffn_down,
                post_ffn_norm,
            });
        }
        let output_norm = read_vector(content, reader, "output_norm.weight")?;
        let lm_head = if has("output.weight") {
            Linear::single(read_tensor(content, reader, "output.weight", device)?)?
        } else {
            Linear::single(read_tensor(content, reader, "token_embd.weight", device)?)?
        };
        let model = Model {
            config,
            embed,
            layers,
            output_norm,
            lm_head,
        };
        model.check_shapes()?;
        // Warm-up: candle packs quantized weights into its SIMD layouts on first use (the
        // single-row and multi-row paths can differ, so run 2 tokens).
        let mut cache = model.new_kv_cache(2)?;
        model.forward(&mut [SeqBatch {
            tokens: &[0, 0],
            cache: &mut cache,
            logits: LogitRows::Last,
        }])?;
        Ok(model)
    }

    fn check_shapes(&self) -> Result<(), ModelError> {
        let c = &self.config;
        let q = c.num_heads * c.head_dim;
        let kv = c.num_kv_heads * c.head_dim;
        for (i, l) in self.layers.iter().enumerate() {
            let ok = l.qkv.n() == q + 2 * kv
                && matches!(&l.qkv, Proj::Fused(f) if f.k == c.hidden_size)
                    | matches!(&l.qkv, Proj::Separate(_))
                && l.attn_output.k == q
                && l.attn_output.n == c.hidden_size
                && l.gate_up.n() == 2 * c.intermediate_size
                && l.ffn_down.k == c.intermediate_size
                && l.ffn_down.n == c.hidden_size
                && l.attn_norm.len() == c.hidden_size
                && l.ffn_norm.len() == c.hidden_size;
            if !ok {
                return Err(ModelError::InvalidMetadata(format!(
                    "layer {i} tensor shapes do not match the metadata"
                )));
            }
        }
        if self.lm_head.k != c.hidden_size || self.embed.shape().dims2()?.1 != c.hidden_size {
            return Err(ModelError::InvalidMetadata("embedding width".into()));
        }
        Ok(())
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// A fresh, empty KV cache for one sequence able to hold `max_tokens` tokens
    /// (`num_layers * 2 * max_tokens * num_kv_heads * head_dim` f32, committed as used).
    pub fn new_kv_cache(&self, max_tokens: usize) -> Result<KvCache, ModelError> {
        let c = &self.config;
        KvCache::new(c.num_layers, c.num_kv_heads, c.head_dim, max_tokens)
    }

    /// One flattened forward pass over several sequences, each with its own contiguous
    /// [`KvCache`] (tests and benchmarks; the engine uses [`Model::forward_paged`]).
    ///
    /// All new tokens of all sequences form one `[total_tokens, hidden]` matrix; matmuls run
    /// once, attention runs per sequence against its own KV cache (positions continue from
    /// `cache.len()`), and the new keys/values are appended to each cache. Returns logits
    /// `[num_rows, vocab_size]` f32 on the CPU, rows in input order: per sequence one row for
    /// `LogitRows::Last` (its last new token), one per new token for `All`, none for `None`.
    ///
    /// Errors: `InvalidBatch` (a sequence without tokens, a token id `>= vocab_size`),
    /// `CacheFull` (checked for every sequence before anything is written), candle errors.
    /// On error no cache length changes.
    pub fn forward(&self, batch: &mut [SeqBatch<'_>]) -> Result<Tensor, ModelError> {
        let mut pools = Vec::with_capacity(batch.len());
        let mut views = Vec::with_capacity(batch.len());
        for (i, s) in batch.iter_mut().enumerate() {
            let start_pos = s.cache.len();
            let needed = start_pos + s.tokens.len();
            if needed > s.cache.capacity() {
                return Err(ModelError::CacheFull {
                    needed,
                    capacity: s.cache.capacity(),
                });
            }
            views.push(SeqView {
                pool: i,
                tokens: s.tokens,
                blocks: &kv_cache::SINGLE_BLOCK,
                start_pos,
                logits: s.logits,
            });
            pools.push(&mut s.cache.pool);
        }
        let out = self.forward_core(&mut pools, &views)?;
        drop(pools);
        for s in batch.iter_mut() {
            let n = s.cache.len() + s.tokens.len();
            s.cache.set_len(n);
        }
        Ok(out)
    }

    /// A new paged KV pool of `num_blocks` blocks of `block_size` tokens (zeroed, committed
    /// lazily by the OS). Errors: `Unsupported` for a zero or overflowing size.
    pub fn new_kv_pool(&self, block_size: usize, num_blocks: usize) -> Result<KvPool, ModelError> {
        let c = &self.config;
        KvPool::new(
            c.num_layers,
            c.num_kv_heads,
            c.head_dim,
            block_size,
            num_blocks,
        )
    }

    /// Bytes of KV cache one token takes over all layers (keys and values, f32).
    pub fn kv_bytes_per_token(&self) -> usize {
        self.config.kv_bytes_per_token()
    }

    /// One flattened forward pass over several sequences whose KV caches live in `pool`
    /// (PagedAttention, Kwon et al. 2023: attention reads keys/values through each sequence's
    /// block table). Same contract as [`Model::forward`]; each sequence's new keys/values are
    /// written at positions `start_pos..start_pos + tokens.len()` of its block table.
    ///
    /// Errors: `InvalidBatch` when a sequence has no tokens, a token id is outside the
    /// vocabulary, a block id is outside the pool, the block table is too short for the new
    /// positions, or two sequences would write the same block (shared prefix blocks may only be
    /// read). Nothing is written on error.
    pub fn forward_paged(
        &self,
        pool: &mut KvPool,
        batch: &[PagedSeq<'_>],
    ) -> Result<Tensor, ModelError> {
        check_block_tables(batch, pool.block_size(), pool.num_blocks())?;
        let views: Vec<SeqView<'_>> = batch
            .iter()
            .map(|s| SeqView {
                pool: 0,
                tokens: s.tokens,
                blocks: s.blocks,
                start_pos: s.start_pos,
                logits: s.logits,
            })
            .collect();
        self.forward_core(&mut [pool], &views)
    }

    /// The forward pass proper: sequence `s` reads and writes `pools[s.pool]` through
    /// `s.blocks`. Callers have checked capacities and block tables.
    fn forward_core(
        &self,
        pools: &mut [&mut KvPool],
        batch: &[SeqView<'_>],
    ) -> Result<Tensor, ModelError> {
        let c = &self.config;
        let hidden = c.hidden_size;
        let Flat {
            ids,
            positions,
            rows,
        } = Flat::new(
            batch.iter().map(|s| (s.tokens, s.start_pos, s.logits)),
            c.vocab_size,
        )?;
        let total = ids.len();
        if total == 0 {
            return Ok(Tensor::zeros(
                (0, c.vocab_size),
                candle_core::DType::F32,
                &Device::Cpu,
            )?);
        }

        let ids_t = Tensor::new(ids.as_slice(), &Device::Cpu)?;
        let mut x = to_vec(&self.embed.embedding(&ids_t)?)?; // [T, hidden]
        if c.architecture == Architecture::Gemma3 {
            let s = (hidden as f32).sqrt();
            x.iter_mut().for_each(|v| *v *= s);
        }
        let rope_global = RopeTable::new(&positions, c.rope_dim, c.rope_base);
        let rope_local = (c.architecture == Architecture::Gemma3)
            .then(|| RopeTable::new(&positions, c.rope_dim, c.rope_base_local));
        let interleaved = c.architecture == Architecture::Llama;
        let eps = c.rms_norm_eps;
        let hd = c.head_dim;
        let q_w = c.num_heads * hd;
        let kv_w = c.num_kv_heads * hd;

        for (li, layer) in self.layers.iter().enumerate() {
            let local = c.is_local_layer(li);
            let rope = match (&rope_local, local) {
                (Some(t), true) => t,
                _ => &rope_global,
            };
            // Attention block.
            let h = kernels::rms_norm_rows(&x, &layer.attn_norm, eps, hidden, layer.qkv.k_pad());
            let mut qkv = layer.qkv.forward(h, hidden)?; // [T, q_w + 2 kv_w]
            let stride = q_w + 2 * kv_w;
            for (i, r) in qkv.chunks_exact_mut(stride).enumerate() {
                let (q, rest) = r.split_at_mut(q_w);
                let (k, v) = rest.split_at_mut(kv_w);
                for (dst, b) in [
                    (&mut *q, &layer.q_bias),
                    (&mut *k, &layer.k_bias),
                    (&mut *v, &layer.v_bias),
                ] {
                    if let Some(b) = b {
                        dst.iter_mut().zip(b).for_each(|(d, b)| *d += b);
                    }
                }
                if let Some(w) = &layer.q_norm {
                    kernels::rms_norm_inplace(q, w, eps, hd);
                }
                if let Some(w) = &layer.k_norm {
                    kernels::rms_norm_inplace(k, w, eps, hd);
                }
                if c.rope_dim == hd {
                    rope.apply(i, q, hd, interleaved);
                    rope.apply(i, k, hd, interleaved);
                } else {
                    for head in q.chunks_exact_mut(hd).chain(k.chunks_exact_mut(hd)) {
                        rope.apply(i, &mut head[..c.rope_dim], c.rope_dim, interleaved);
                    }
                }
            }
            // Write the new keys/values into each sequence's blocks.
            let mut offset = 0;
            for s in batch.iter() {
                let pool = &mut *pools[s.pool];
                let (row, bs) = (pool.row, pool.block_size());
                let (kc, vc) = (&mut pool.k[li], &mut pool.v[li]);
                for (j, r) in qkv[offset * stride..(offset + s.tokens.len()) * stride]
                    .chunks_exact(stride)
                    .enumerate()
                {
                    let p = s.start_pos + j;
                    let slot = s.blocks[p / bs] as usize * bs + p % bs;
                    kc[slot * row..(slot + 1) * row].copy_from_slice(&r[q_w..q_w + kv_w]);
                    vc[slot * row..(slot + 1) * row].copy_from_slice(&r[q_w + kv_w..]);
                }
                offset += s.tokens.len();
            }
            let mut seqs = Vec::with_capacity(batch.len());
            let mut offset = 0;
            for s in batch.iter() {
                let pool = &*pools[s.pool];
                seqs.push(AttnSeq {
                    k: &pool.k[li],
                    v: &pool.v[li],
                    blocks: s.blocks,
                    block_size: pool.block_size(),
                    start_pos: s.start_pos,
                    n_new: s.tokens.len(),
                    q_offset: offset,
                });
                offset += s.tokens.len();
            }
            let window = if local { c.sliding_window } else { None };
            let attn = kernels::attention(
                &qkv,
                stride,
                &seqs,
                c.num_heads,
                c.num_kv_heads,
                hd,
                c.attention_scale,
                window,
                layer.attn_output.k_pad,
            );
            drop(seqs);
            let mut o = layer.attn_output.forward(attn)?;
            if let Some(w) = &layer.post_attn_norm {
                kernels::rms_norm_inplace(&mut o, w, eps, hidden);
            }
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);

            // MLP block.
            let h = kernels::rms_norm_rows(&x, &layer.ffn_norm, eps, hidden, layer.gate_up.k_pad());
            let gu = layer.gate_up.forward(h, hidden)?;
            let act = if c.architecture == Architecture::Gemma3 {
                Activation::GeluTanh
            } else {
                Activation::Silu
            };
            let a = kernels::gated_act(&gu, c.intermediate_size, layer.ffn_down.k_pad, act);
            drop(gu);
            let mut d = layer.ffn_down.forward(a)?;
            if let Some(w) = &layer.post_ffn_norm {
                kernels::rms_norm_inplace(&mut d, w, eps, hidden);
            }
            x.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
        }
        if rows.is_empty() {
            return Ok(Tensor::zeros(
                (0, c.vocab_size),
                candle_core::DType::F32,
                &Device::Cpu,
            )?);
        }
        let kp = self.lm_head.k_pad;
        let mut h = vec![0f32; rows.len() * kp];
        for (dst, &r) in h.chunks_exact_mut(kp).zip(&rows) {
            let r = r as usize;
            kernels::rms_norm_row(
                &x[r * hidden..(r + 1) * hidden],
                &self.output_norm,
                eps,
                &mut dst[..hidden],
            );
        }
        let logits = self.lm_head.forward(h)?;
        Ok(Tensor::from_vec(
            logits,
            (rows.len(), self.lm_head.n),
            &Device::Cpu,
        )?)
    }
}

#[allow(dead_code)]
fn _assert_send() {
    fn send<T: Send>() {}
    send::<Model>();
    send::<KvCache>();
}
