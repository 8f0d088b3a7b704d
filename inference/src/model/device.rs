//! The forward pass built from candle tensor operations, for devices other than the CPU (CUDA).
//!
//! Same architectures, GGUF conventions and batch contract as the CPU path in [`super::Model`]
//! (see the module docs there); only the execution differs. Matmuls are candle `QMatMul`s on the
//! device's quantized kernels, norms `candle_nn::ops::rms_norm`, RoPE
//! `candle_nn::rotary_emb::rope` / `rope_i` with cos/sin computed on the host for exactly the
//! batch's positions, and attention reads keys and values through each sequence's block table
//! (PagedAttention, Kwon et al. 2023): `index_select` gathers the sequence's slots of the pool,
//! then a masked softmax over `Q K^T` (causal, plus the sliding window of Gemma 3's local layers)
//! and a matmul with V, per sequence. New keys and values are written into their slots with one
//! `scatter_set` per layer.
//!
//! Activations and the KV pool are f32. Every operation used here also runs on the CPU, which is
//! how the tests check this path against the CPU kernels without a GPU.

use std::io::{Read, Seek};

use candle_core::quantized::{gguf_file, QMatMul};
use candle_core::{DType, Device, Module, Tensor};

use super::kernels::RopeTable;
use super::{
    check_block_tables, Architecture, Flat, LayerVectors, ModelConfig, ModelError, PagedSeq,
};
use crate::gguf::{read_tensor, read_vector};

struct DeviceLayer {
    attn_norm: Tensor,
    q: QMatMul,
    k: QMatMul,
    v: QMatMul,
    q_bias: Option<Tensor>,
    k_bias: Option<Tensor>,
    v_bias: Option<Tensor>,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    attn_output: QMatMul,
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    gate: QMatMul,
    up: QMatMul,
    down: QMatMul,
    post_ffn_norm: Option<Tensor>,
}

/// A model whose weights live on `device` and whose forward pass is candle tensor operations.
pub struct DeviceModel {
    config: ModelConfig,
    device: Device,
    /// Token embeddings `[vocab, hidden]`, f32.
    embed: Tensor,
    layers: Vec<DeviceLayer>,
    output_norm: Tensor,
    /// Output projection `[vocab, hidden]` (the embeddings when the file has no `output.weight`).
    lm_head: QMatMul,
}

/// Keys and values of `num_blocks` blocks of `block_size` token slots per layer, on the model's
/// device: `k[layer]`, `v[layer]` are `[num_blocks * block_size, num_kv_heads * head_dim]` f32.
pub struct DeviceKvPool {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    block_size: usize,
    num_blocks: usize,
}

impl DeviceKvPool {
    /// Token slots per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Number of blocks.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Bytes of the whole pool (keys and values of every layer, f32).
    pub fn bytes(&self) -> usize {
        self.k
            .iter()
            .chain(&self.v)
            .map(|t| t.elem_count() * std::mem::size_of::<f32>())
            .sum()
    }
}

/// A host vector as a 1-D tensor on `device`.
fn on_device(v: Vec<f32>, device: &Device) -> Result<Tensor, ModelError> {
    let n = v.len();
    Ok(Tensor::from_vec(v, n, device)?)
}

impl DeviceModel {
    /// Loads the weights of a GGUF file onto `device` (quantized matrices stay quantized).
    ///
    /// Errors: unsupported architecture, missing metadata or tensors, I/O and format errors,
    /// device allocation failures.
    pub fn load<R: Read + Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let config = ModelConfig::from_gguf(content)?;
        let has = |name: &str| content.tensor_infos.contains_key(name);
        let gemma = config.architecture == Architecture::Gemma3;

        let embed = read_tensor(content, reader, "token_embd.weight", &Device::Cpu)?
            .dequantize(&Device::Cpu)?
            .to_device(device)?;
        let mut layers = Vec::with_capacity(config.num_layers);
        for i in 0..config.num_layers {
            let p = |s: &str| format!("blk.{i}.{s}");
            let mm = |reader: &mut R, s: &str| -> Result<QMatMul, ModelError> {
                Ok(QMatMul::from_qtensor(read_tensor(
                    content,
                    reader,
                    &p(s),
                    device,
                )?)?)
            };
            let q = mm(reader, "attn_q.weight")?;
            let k = mm(reader, "attn_k.weight")?;
            let v = mm(reader, "attn_v.weight")?;
            let attn_output = mm(reader, "attn_output.weight")?;
            let gate = mm(reader, "ffn_gate.weight")?;
            let up = mm(reader, "ffn_up.weight")?;
            let down = mm(reader, "ffn_down.weight")?;
            let lv = LayerVectors::read(content, reader, i, gemma)?;
            let opt = |v: Option<Vec<f32>>| v.map(|v| on_device(v, device)).transpose();
            layers.push(DeviceLayer {
                attn_norm: on_device(lv.attn_norm, device)?,
                q,
                k,
                v,
                q_bias: opt(lv.q_bias)?,
                k_bias: opt(lv.k_bias)?,
                v_bias: opt(lv.v_bias)?,
                q_norm: opt(lv.q_norm)?,
                k_norm: opt(lv.k_norm)?,
                attn_output,
                post_attn_norm: opt(lv.post_attn_norm)?,
                ffn_norm: on_device(lv.ffn_norm, device)?,
                gate,
                up,
                down,
                post_ffn_norm: opt(lv.post_ffn_norm)?,
            });
        }
        let output_norm = on_device(read_vector(content, reader, "output_norm.weight")?, device)?;
        let head = if has("output.weight") {
            "output.weight"
        } else {
            "token_embd.weight"
        };
        let lm_head = QMatMul::from_qtensor(read_tensor(content, reader, head, device)?)?;
        let (_, width) = embed.dims2()?;
        if width != config.hidden_size {
            return Err(ModelError::InvalidMetadata("embedding width".into()));
        }
        Ok(Self {
            config,
            device: device.clone(),
            embed,
            layers,
            output_norm,
            lm_head,
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The device holding the weights.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A zeroed KV pool of `num_blocks` blocks of `block_size` tokens on the model's device
    /// (`2 * num_layers * num_blocks * block_size * num_kv_heads * head_dim` f32).
    /// Errors: `Unsupported` for a zero size; device allocation failures.
    pub fn new_kv_pool(
        &self,
        block_size: usize,
        num_blocks: usize,
    ) -> Result<DeviceKvPool, ModelError> {
        if block_size == 0 || num_blocks == 0 {
            return Err(ModelError::Unsupported(format!(
                "a KV pool of {num_blocks} blocks of {block_size} tokens"
            )));
        }
        let c = &self.config;
        let shape = (num_blocks * block_size, c.num_kv_heads * c.head_dim);
        let zeros = || Tensor::zeros(shape, DType::F32, &self.device);
        let mut k = Vec::with_capacity(c.num_layers);
        let mut v = Vec::with_capacity(c.num_layers);
        for _ in 0..c.num_layers {
            k.push(zeros()?);
            v.push(zeros()?);
        }
        Ok(DeviceKvPool {
            k,
            v,
            block_size,
            num_blocks,
        })
    }

    /// One flattened forward pass over several sequences whose KV caches live in `pool`; the
    /// contract (positions, block tables, which logits rows, errors) is
    /// [`super::Model::forward_paged`]'s. Returns `[rows, vocab]` f32 logits on the CPU.
    pub fn forward_paged(
        &self,
        pool: &mut DeviceKvPool,
        batch: &[PagedSeq<'_>],
    ) -> Result<Tensor, ModelError> {
        let c = &self.config;
        let bs = pool.block_size;
        check_block_tables(batch, bs, pool.num_blocks)?;
        let Flat {
            ids,
            positions,
            rows,
        } = Flat::new(
            batch.iter().map(|s| (s.tokens, s.start_pos, s.logits)),
            c.vocab_size,
        )?;
        let slot = |blocks: &[u32], p: usize| blocks[p / bs] * bs as u32 + (p % bs) as u32;
        let slots: Vec<u32> = batch
            .iter()
            .flat_map(|s| (s.start_pos..s.start_pos + s.tokens.len()).map(|p| slot(s.blocks, p)))
            .collect();
        let dev = &self.device;
        let t = ids.len();
        let (hd, nh, kvh) = (c.head_dim, c.num_heads, c.num_kv_heads);
        if c.rope_dim != hd {
            return Err(ModelError::Unsupported(format!(
                "partial rotary embeddings ({} of {hd} dimensions) on {dev:?}",
                c.rope_dim
            )));
        }
        let gemma = c.architecture == Architecture::Gemma3;
        let rope_tables = |base: f64| -> Result<(Tensor, Tensor), ModelError> {
            let r = RopeTable::new(&positions, c.rope_dim, base);
            Ok((
                Tensor::from_vec(r.cos, (t, r.half), dev)?,
                Tensor::from_vec(r.sin, (t, r.half), dev)?,
            ))
        };
        let rope_global = rope_tables(c.rope_base)?;
        let rope_local = if gemma {
            Some(rope_tables(c.rope_base_local)?)
        } else {
            None
        };
        let slot_index = Tensor::from_vec(slots, (t, 1), dev)?
            .broadcast_as((t, kvh * hd))?
            .contiguous()?;
        // Per sequence: the slots of positions 0..end and the masks of its queries.
        let mut seqs = Vec::with_capacity(batch.len());
        let mut offset = 0;
        for s in batch {
            let n = s.tokens.len();
            let end = s.start_pos + n;
            let key_slots: Vec<u32> = (0..end).map(|p| slot(s.blocks, p)).collect();
            let mask = |window: Option<usize>| -> Result<Tensor, ModelError> {
                let mut m = vec![0f32; n * end];
                for i in 0..n {
                    let pos = s.start_pos + i;
                    let first = window.map_or(0, |w| (pos + 1).saturating_sub(w));
                    for (j, v) in m[i * end..(i + 1) * end].iter_mut().enumerate() {
                        if j < first || j > pos {
                            *v = f32::NEG_INFINITY;
                        }
                    }
                }
                Ok(Tensor::from_vec(m, (n, end), dev)?)
            };
            seqs.push(SeqAttn {
                offset,
                n,
                end,
                key_slots: Tensor::from_vec(key_slots, end, dev)?,
                mask_global: mask(None)?,
                mask_local: match c.sliding_window {
                    Some(w) if gemma => Some(mask(Some(w))?),
                    _ => None,
                },
            });
            offset += n;
        }

        let ids_t = Tensor::from_vec(ids, t, dev)?;
        let mut x = self.embed.index_select(&ids_t, 0)?; // [T, hidden]
        if gemma {
            x = (x * (c.hidden_size as f64).sqrt())?;
        }
        let eps = c.rms_norm_eps;
        for (li, l) in self.layers.iter().enumerate() {
            let local = c.is_local_layer(li);
            let (cos, sin) = match (&rope_local, local) {
                (Some(r), true) => r,
                _ => &rope_global,
            };
            let h = candle_nn::ops::rms_norm(&x, &l.attn_norm, eps)?;
            let proj = |m: &QMatMul, bias: &Option<Tensor>| -> Result<Tensor, ModelError> {
                let y = m.forward(&h)?;
                Ok(match bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                })
            };
            let mut q = proj(&l.q, &l.q_bias)?.reshape((t, nh, hd))?;
            let mut k = proj(&l.k, &l.k_bias)?.reshape((t, kvh, hd))?;
            let v = proj(&l.v, &l.v_bias)?;
            if let Some(w) = &l.q_norm {
                q = candle_nn::ops::rms_norm(&q.contiguous()?, w, eps)?;
            }
            if let Some(w) = &l.k_norm {
                k = candle_nn::ops::rms_norm(&k.contiguous()?, w, eps)?;
            }
            let interleaved = c.architecture == Architecture::Llama;
            let rope = |x: Tensor| -> Result<Tensor, ModelError> {
                // [T, heads, hd] -> [1, heads, T, hd] -> roped -> [T, heads, hd]
                let x4 = x.transpose(0, 1)?.unsqueeze(0)?.contiguous()?;
                let y = if interleaved {
                    candle_nn::rotary_emb::rope_i(&x4, cos, sin)?
                } else {
                    candle_nn::rotary_emb::rope(&x4, cos, sin)?
                };
                Ok(y.squeeze(0)?.transpose(0, 1)?)
            };
            let q = rope(q)?;
            let k = rope(k)?.reshape((t, kvh * hd))?.contiguous()?;
            pool.k[li].scatter_set(&slot_index, &k, 0)?;
            pool.v[li].scatter_set(&slot_index, &v.contiguous()?, 0)?;

            let group = nh / kvh;
            let mut outs = Vec::with_capacity(seqs.len());
            for s in &seqs {
                // [n, nh, hd] -> [kvh, group * n, hd]: query heads of one KV head together.
                let qs = q
                    .narrow(0, s.offset, s.n)?
                    .transpose(0, 1)?
                    .contiguous()?
                    .reshape((kvh, group * s.n, hd))?;
                let gather = |pool: &Tensor| -> Result<Tensor, ModelError> {
                    Ok(pool
                        .index_select(&s.key_slots, 0)?
                        .reshape((s.end, kvh, hd))?
                        .transpose(0, 1)?
                        .contiguous()?)
                };
                let (ks, vs) = (gather(&pool.k[li])?, gather(&pool.v[li])?); // [kvh, L, hd]
                let scores = (qs.matmul(&ks.t()?)? * c.attention_scale as f64)?
                    .reshape((kvh, group, s.n, s.end))?;
                let mask = match (&s.mask_local, local) {
                    (Some(m), true) => m,
                    _ => &s.mask_global,
                };
                let probs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(mask)?)?
                    .reshape((kvh, group * s.n, s.end))?;
                let o = probs
                    .matmul(&vs)? // [kvh, group * n, hd]
                    .reshape((nh, s.n, hd))?
                    .transpose(0, 1)?
                    .reshape((s.n, nh * hd))?;
                outs.push(o);
            }
            let attn = Tensor::cat(&outs, 0)?;
            let mut o = l.attn_output.forward(&attn)?;
            if let Some(w) = &l.post_attn_norm {
                o = candle_nn::ops::rms_norm(&o, w, eps)?;
            }
            x = (x + o)?;

            let h = candle_nn::ops::rms_norm(&x, &l.ffn_norm, eps)?;
            let g = l.gate.forward(&h)?;
            let u = l.up.forward(&h)?;
            let a = if gemma { g.gelu()? } else { g.silu()? };
            let mut d = l.down.forward(&(a * u)?)?;
            if let Some(w) = &l.post_ffn_norm {
                d = candle_nn::ops::rms_norm(&d, w, eps)?;
            }
            x = (x + d)?;
        }
        if rows.is_empty() {
            return Ok(Tensor::zeros((0, c.vocab_size), DType::F32, &Device::Cpu)?);
        }
        let n_rows = rows.len();
        let rows = Tensor::from_vec(rows, n_rows, dev)?;
        let h = candle_nn::ops::rms_norm(&x.index_select(&rows, 0)?, &self.output_norm, eps)?;
        let logits = self.lm_head.forward(&h)?;
        Ok(logits.to_device(&Device::Cpu)?.contiguous()?)
    }
}

/// One sequence's attention inputs, shared by every layer of a forward pass.
struct SeqAttn {
    /// First query row in the flattened batch, and the number of rows.
    offset: usize,
    n: usize,
    /// Keys visible to the last query (`start_pos + n`).
    end: usize,
    /// `[end]` pool slots of positions `0..end`.
    key_slots: Tensor,
    /// `[n, end]`: 0 where query `i` may attend, `-inf` elsewhere (causal; and the sliding
    /// window for local layers).
    mask_global: Tensor,
    mask_local: Option<Tensor>,
}
