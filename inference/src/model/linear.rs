//! Quantized linear layers (`y = x W^T`). Weights in Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 are converted
//! exactly to Q8_0 (+ per-block offsets for Q4_1/Q5_1, see [`crate::gguf::to_q8_0_parts`]) and
//! run on our packed VNNI kernel ([`super::qmatmul`]); k-quants (and everything on CPUs without
//! AVX512-VNNI) run on candle's `QMatMul`. Projections sharing an input (Q/K/V, gate/up) are
//! fused into one matrix.

use candle_core::quantized::{k_quants, GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Storage, Tensor};

use super::kernels::{axpy, par_rows, SharedMut};
use super::qmatmul::{self, PackedQ8};
use super::ModelError;
use crate::gguf::{concat_rows, converts_to_q8_0, to_q8_0_parts};

/// Most rows per candle matmul call (below candle's 32-row AMX threshold; see `forward`).
const CANDLE_ROWS: usize = 16;

enum Kind {
    Packed {
        w: PackedQ8,
        /// Per-block offsets transposed to `[k/32, n]` (Q4_1/Q5_1 mins).
        offsets: Option<Vec<f32>>,
    },
    /// K-quants on candle's row-by-row dot-product kernels (see [`KQuant`]).
    KQuant(KQuant),
    Candle(QMatMul),
}

/// Q4_K / Q6_K weights `[n, k]` run through candle's generic k-quant matmul: every output is one
/// row-times-column dot product of the Q8_K-quantized input row (llama.cpp's `vec_dot` scheme),
/// so a row's result never depends on how many other rows share the call. (candle's `QMatMul`
/// instead switches between gemv, repacked tiles and AMX by row count, which round differently.)
enum KQuant {
    Q4K(Vec<k_quants::BlockQ4K>),
    Q6K(Vec<k_quants::BlockQ6K>),
}

impl KQuant {
    fn new(w: &QTensor) -> Result<Option<Self>, ModelError> {
        let data = w.data()?;
        Ok(match w.dtype() {
            GgmlDType::Q4K => Some(Self::Q4K(blocks_from_bytes(&data))),
            GgmlDType::Q6K => Some(Self::Q6K(blocks_from_bytes(&data))),
            _ => None,
        })
    }

    /// `x`: `[m, k]`; returns `[m, n]`.
    fn matmul(&self, x: &[f32], m: usize, k: usize, n: usize) -> Result<Vec<f32>, ModelError> {
        let mut y = vec![0f32; m * n];
        match self {
            Self::Q4K(b) => k_quants::matmul((m, k, n), x, b, &mut y)?,
            Self::Q6K(b) => k_quants::matmul((m, k, n), x, b, &mut y)?,
        }
        Ok(y)
    }
}

/// Copies GGUF block bytes into typed blocks (plain-data `repr(C)` structs of f16 and u8
/// arrays, for which every bit pattern is valid).
fn blocks_from_bytes<T: k_quants::GgmlType>(data: &[u8]) -> Vec<T> {
    let size = std::mem::size_of::<T>();
    let count = data.len() / size;
    let mut out: Vec<T> = Vec::with_capacity(count);
    // SAFETY: `out` has room for `count` blocks; T is plain data (see above); the byte count
    // copied is exactly count * size_of::<T>().
    unsafe {
        std::ptr::copy_nonoverlapping(data.as_ptr(), out.as_mut_ptr() as *mut u8, count * size);
        out.set_len(count);
    }
    out
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
    /// Weight type when the layer runs on candle's `QMatMul`.
    candle_dtype: Option<GgmlDType>,
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
                return Err(ModelError::Unsupported(
                    "fused projections with different inputs".into(),
                ));
            }
        }
        let k = k.ok_or_else(|| ModelError::Unsupported("linear layer with no weights".into()))?;
        if qmatmul::available() && k % 32 == 0 && parts.iter().all(|p| converts_to_q8_0(p.dtype()))
        {
            let kb = k / 32;
            let conv = parts
                .iter()
                .map(to_q8_0_parts)
                .collect::<Result<Vec<_>, _>>()?;
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
            return Ok(Self {
                kind: Kind::Packed { w, offsets },
                k,
                k_pad: k,
                n,
                candle_dtype: None,
            });
        }
        if !parts.iter().all(|p| p.dtype() == parts[0].dtype()) {
            return Err(ModelError::Unsupported(format!(
                "fusing projections of types {:?}",
                parts.iter().map(|p| p.dtype()).collect::<Vec<_>>()
            )));
        }
        let w = if parts.len() == 1 {
            parts
                .into_iter()
                .next()
                .ok_or_else(|| ModelError::Unsupported("empty".into()))?
        } else {
            let refs: Vec<&QTensor> = parts.iter().collect();
            concat_rows(&refs)?
        };
        let (n, _) = w.shape().dims2()?;
        if let Some(kq) = KQuant::new(&w)? {
            return Ok(Self {
                kind: Kind::KQuant(kq),
                k,
                k_pad: k,
                n,
                candle_dtype: None,
            });
        }
        let candle_dtype = Some(w.dtype());
        Ok(Self {
            kind: Kind::Candle(QMatMul::from_qtensor(w)?),
            k,
            k_pad: k,
            n,
            candle_dtype,
        })
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
                            let yr =
                                unsafe { std::slice::from_raw_parts_mut(py.get().add(r * n), n) };
                            for b in 0..kb {
                                let s: f32 = x[r * k + b * 32..r * k + b * 32 + 32].iter().sum();
                                axpy(yr, s, &off[b * n..(b + 1) * n]);
                            }
                        }
                    });
                }
                Ok(y)
            }
            Kind::KQuant(kq) => kq.matmul(&x, t, self.k, self.n),
            Kind::Candle(mm) => {
                // candle picks its CPU kernel by row count and type (Q6_K: a gemv for one row,
                // repacked tiles for 2+; Q4_K: tiles, AMX for 32+ rows), and those round
                // differently. A row's result must not depend on the other sequences in the batch
                // (greedy decoding alone and under load must agree), so Q6_K runs one row per
                // call (its gemv is also what llama.cpp computes per row) and other types at most
                // CANDLE_ROWS rows per call, padding a single row with a copy of itself.
                let k = self.k;
                let per_call = if self.candle_dtype == Some(GgmlDType::Q6K) {
                    1
                } else {
                    CANDLE_ROWS
                };
                let mut y = Vec::with_capacity(t * self.n);
                for chunk in x.chunks(per_call * k) {
                    let rows = chunk.len() / k;
                    let mut data = chunk.to_vec();
                    if rows == 1 && per_call > 1 {
                        data.extend_from_slice(chunk);
                    }
                    let padded = data.len() / k;
                    let xt = Tensor::from_vec(data, (padded, k), &Device::Cpu)?;
                    with_f32(&mm.forward(&xt)?, |s| {
                        y.extend_from_slice(&s[..rows * self.n])
                    })?;
                }
                Ok(y)
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
            let want: Vec<f32> = x
                .matmul(&wd.t().expect("t"))
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1())
                .expect("mm");
            let lin = Linear::single(q).expect("linear");
            let got = lin.forward(xs.clone()).expect("forward");
            let scale = want.iter().fold(0f32, |a, &v| a.max(v.abs()));
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                // Activations are quantized to 8 bits per 32 values: ~1% of the output range.
                assert!(
                    (a - b).abs() <= 0.02 * scale,
                    "{dtype:?} element {i}: {a} vs {b}"
                );
            }
        }
    }
}
