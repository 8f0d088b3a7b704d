//! Quantized linear layers (`y = x W^T`). Weights in Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 are converted
//! exactly to Q8_0 (+ per-block offsets for Q4_1/Q5_1, see [`crate::gguf::to_q8_0_parts`]) and
//! run on our packed VNNI kernel ([`super::qmatmul`]); k-quants (and everything on CPUs without
//! AVX512-VNNI) run on candle's `QMatMul`. Projections sharing an input (Q/K/V, gate/up) are
//! fused into one matrix.

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Module, Storage, Tensor};

use super::kernels::{axpy, par_rows, SharedMut};
use super::qmatmul::{self, PackedQ8};
use super::ModelError;
use crate::gguf::{concat_rows, converts_to_q8_0, to_q8_0_parts};

enum Kind {
    Packed {
        w: PackedQ8,
        /// Per-block offsets transposed to `[k/32, n]` (Q4_1/Q5_1 mins).
        offsets: Option<Vec<f32>>,
    },
    Candle(QMatMul),
}

/// A linear layer whose weight rows may be the concatenation of several projections.
pub(crate) struct Linear {
    kind: Kind,
    /// Input width.
    pub k: usize,
    /// Input width the matmul expects (equal to `k`; kept for callers that pad).
    pub k_pad: usize,
    /// Output width (all parts).
    pub n: usize,
}

impl Linear {
    /// One linear layer from the weights `[n_i, k]` of projections sharing an input, fused into
    /// one `[sum n_i, k]` matrix. Errors (`Unsupported`) when the parts have different inputs
    /// or types that cannot share one matrix.
    pub(crate) fn fused(parts: Vec<QTensor>) -> Result<Self, ModelError> {
        let mut k = None;
        for p in &parts {
            let (_, pk) = p.shape().dims2()?;
            if *k.get_or_insert(pk) != pk {
                return Err(ModelError::Unsupported("fused projections with different inputs".into()));
            }
        }
        let k = k.ok_or_else(|| ModelError::Unsupported("linear layer with no weights".into()))?;
        if qmatmul::available() && k % 32 == 0 && parts.iter().all(|p| converts_to_q8_0(p.dtype())) {
            let kb = k / 32;
            let conv = parts.iter().map(to_q8_0_parts).collect::<Result<Vec<_>, _>>()?;
            let n: usize = conv.iter().map(|c| c.n).sum();
            let mut blocks = Vec::with_capacity(n * kb * 34);
            for c in &conv {
                blocks.extend_from_slice(&c.blocks);
            }
            let offsets = if conv.iter().any(|c| c.offsets.is_some()) {
                let mut t = vec![0f32; kb * n];
                let mut row0 = 0;
                for c in &conv {
                    if let Some(o) = &c.offsets {
                        for r in 0..c.n {
                            for b in 0..kb {
                                t[b * n + row0 + r] = o[r * kb + b];
                            }
                        }
                    }
                    row0 += c.n;
                }
                Some(t)
            } else {
                None
            };
            drop(conv);
            let w = PackedQ8::from_q8_0_bytes(&blocks, n, k);
            return Ok(Self { kind: Kind::Packed { w, offsets }, k, k_pad: k, n });
        }
        if !parts.iter().all(|p| p.dtype() == parts[0].dtype()) {
            return Err(ModelError::Unsupported(format!(
                "fusing projections of types {:?}",
                parts.iter().map(|p| p.dtype()).collect::<Vec<_>>()
            )));
        }
        let w = if parts.len() == 1 {
            parts.into_iter().next().ok_or_else(|| ModelError::Unsupported("empty".into()))?
        } else {
            let refs: Vec<&QTensor> = parts.iter().collect();
            concat_rows(&refs)?
        };
        let (n, _) = w.shape().dims2()?;
        Ok(Self { kind: Kind::Candle(QMatMul::from_qtensor(w)?), k, k_pad: k, n })
    }

    /// One projection.
    pub(crate) fn single(w: QTensor) -> Result<Self, ModelError> {
        Self::fused(vec![w])
    }

    /// `x`: `[t, k]` row-major. Returns `[t, n]`.
    pub(crate) fn forward(&self, x: Vec<f32>) -> Result<Vec<f32>, ModelError> {
        let t = x.len() / self.k;
        match &self.kind {
            Kind::Packed { w, offsets } => {
                let mut y = w.matmul(&x, t, self.k);
                if let Some(off) = offsets {
                    let (k, n, kb) = (self.k, self.n, self.k / 32);
                    let py = SharedMut(y.as_mut_ptr());
                    par_rows(t, kb * n * 2, |range| {
                        for r in range {
                            // SAFETY: each row is written by one worker only.
                            let yr = unsafe { std::slice::from_raw_parts_mut(py.get().add(r * n), n) };
                            for b in 0..kb {
                                let s: f32 = x[r * k + b * 32..r * k + b * 32 + 32].iter().sum();
                                axpy(yr, s, &off[b * n..(b + 1) * n]);
                            }
                        }
                    });
                }
                Ok(y)
            }
            Kind::Candle(mm) => {
                let xt = Tensor::from_vec(x, (t, self.k), &Device::Cpu)?;
                with_f32(&mm.forward(&xt)?, |s| s.to_vec())
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;

    /// Packed/candle linear layers against an f32 matmul of the dequantized weights, for an
    /// output width that is not a multiple of the 16-row tile and several activation rows.
    #[test]
    fn linear_matches_dequantized_matmul() {
        let (n, k, m) = (37, 96, 5);
        let w = Tensor::randn(0f32, 0.1, (n, k), &Device::Cpu).expect("randn");
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).expect("randn");
        let xs: Vec<f32> = x.flatten_all().and_then(|t| t.to_vec1()).expect("x");
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q8_0] {
            let q = QTensor::quantize(&w, dtype).expect("quantize");
            let wd = q.dequantize(&Device::Cpu).expect("deq");
            let want: Vec<f32> = x.matmul(&wd.t().expect("t")).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1()).expect("mm");
            let lin = Linear::single(q).expect("linear");
            let got = lin.forward(xs.clone()).expect("forward");
            let scale = want.iter().fold(0f32, |a, &v| a.max(v.abs()));
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                // Activations are quantized to 8 bits per 32 values: ~1% of the output range.
                assert!((a - b).abs() <= 0.02 * scale, "{dtype:?} element {i}: {a} vs {b}");
            }
        }
    }
}
