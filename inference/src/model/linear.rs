//! Quantized linear layers (`y = x W^T`) on candle's `QMatMul`, with load-time conversion of
//! slow formats to aligned Q8_0 (see [`crate::gguf::to_q8_0_padded`]) and fusion of projections
//! that share an input (Q/K/V, gate/up) into one matrix.

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Module, Storage, Tensor};

use super::ModelError;
use crate::gguf::{concat_rows, converts_to_q8_0, to_q8_0_padded};

/// A linear layer whose weight rows may be the concatenation of several projections.
pub(crate) struct Linear {
    mm: QMatMul,
    /// Logical input width.
    pub k: usize,
    /// Input width the matmul expects (`>= k`, zero padded).
    pub k_pad: usize,
    /// Output width (all parts).
    pub n: usize,
}

impl Linear {
    /// Builds one linear layer from the weights `[n_i, k]` of projections sharing an input,
    /// fused into one `[sum n_i, k]` matrix. Slow 32-block formats are converted to padded Q8_0;
    /// other types are kept (parts with different kept types are converted to Q8_0 if possible,
    /// otherwise an error is returned — callers then load them separately).
    pub(crate) fn fused(parts: Vec<QTensor>) -> Result<Self, ModelError> {
        let mut k = None;
        for p in &parts {
            let (_, pk) = p.shape().dims2()?;
            if *k.get_or_insert(pk) != pk {
                return Err(ModelError::Unsupported("fused projections with different inputs".into()));
            }
        }
        let k = k.ok_or_else(|| ModelError::Unsupported("linear layer with no weights".into()))?;
        let all_same = parts.iter().all(|p| p.dtype() == parts[0].dtype());
        let convert = parts.iter().all(|p| converts_to_q8_0(p.dtype()))
            && (parts.iter().any(|p| p.dtype() != candle_core::quantized::GgmlDType::Q8_0)
                || k % crate::gguf::K_ALIGN != 0);
        let parts: Vec<QTensor> = if convert {
            parts.iter().map(to_q8_0_padded).collect::<Result<_, _>>()?
        } else if all_same {
            parts
        } else {
            return Err(ModelError::Unsupported(format!(
                "fusing projections of types {:?}",
                parts.iter().map(|p| p.dtype()).collect::<Vec<_>>()
            )));
        };
        let w = if parts.len() == 1 {
            parts.into_iter().next().ok_or_else(|| ModelError::Unsupported("empty".into()))?
        } else {
            let refs: Vec<&QTensor> = parts.iter().collect();
            concat_rows(&refs)?
        };
        let (n, k_pad) = w.shape().dims2()?;
        Ok(Self { mm: QMatMul::from_qtensor(w)?, k, k_pad, n })
    }

    /// One projection.
    pub(crate) fn single(w: QTensor) -> Result<Self, ModelError> {
        Self::fused(vec![w])
    }

    /// `x`: `[t, k_pad]` row-major (padding columns zero). Returns `[t, n]` as a tensor.
    pub(crate) fn forward(&self, x: Vec<f32>) -> Result<Tensor, ModelError> {
        let t = x.len() / self.k_pad;
        let xt = Tensor::from_vec(x, (t, self.k_pad), &Device::Cpu)?;
        Ok(self.mm.forward(&xt)?)
    }

    /// Like [`Linear::forward`] for an input of width `k` that still needs padding.
    pub(crate) fn forward_unpadded(&self, x: &[f32]) -> Result<Tensor, ModelError> {
        Ok(self.forward(pad_rows(x, self.k, self.k_pad))?)
    }
}

/// Copies `[t, k]` rows into a zeroed `[t, k_pad]` buffer.
pub(crate) fn pad_rows(x: &[f32], k: usize, k_pad: usize) -> Vec<f32> {
    if k == k_pad {
        return x.to_vec();
    }
    let t = x.len() / k;
    let mut out = vec![0f32; t * k_pad];
    for (src, dst) in x.chunks_exact(k).zip(out.chunks_exact_mut(k_pad)) {
        dst[..k].copy_from_slice(src);
    }
    out
}

/// Calls `f` with the f32 data of a contiguous CPU tensor.
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R, ModelError> {
    let (guard, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*guard else {
        return Err(ModelError::Unsupported("non-CPU tensor".into()));
    };
    if !layout.is_contiguous() {
        return Err(ModelError::Unsupported("non-contiguous tensor".into()));
    }
    let data = cpu.as_slice::<f32>()?;
    let start = layout.start_offset();
    Ok(f(&data[start..start + layout.shape().elem_count()]))
}
