//! CPU kernels on plain f32 slices: RMSNorm, RoPE, gated activations and attention against a
//! per-sequence KV cache. Hot loops have an AVX2+FMA variant chosen at run time.

use candle_core::utils::barrier_pool;

/// Whether the AVX2+FMA variants may run on this CPU.
#[inline]
pub(crate) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Runs `f(row_range)` over `rows` rows on candle's CPU thread pool when the work is large
/// enough to be worth splitting (`work_per_row` is a rough cost estimate in flops).
pub(crate) fn par_rows<F: Fn(std::ops::Range<usize>) + Sync>(
    rows: usize,
    work_per_row: usize,
    f: F,
) {
    if rows == 0 {
        return;
    }
    if rows == 1 || rows * work_per_row < 200_000 {
        f(0..rows);
    } else {
        barrier_pool().execute_chunked(rows, f);
    }
}

/// A raw pointer that may be shared by workers writing disjoint ranges.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(pub *mut f32);
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper).
    #[inline]
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// RMSNorm of each `k`-wide row of `x` ([t, k]) times `w` ([k]) into a new `[t, out_k]` buffer
/// (`out_k >= k`; columns `k..out_k` are zero padding for aligned matmul inputs).
pub(crate) fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, k: usize, out_k: usize) -> Vec<f32> {
    let t = x.len() / k;
    let mut out = vec![0f32; t * out_k];
    for (xr, or) in x.chunks_exact(k).zip(out.chunks_exact_mut(out_k)) {
        rms_norm_row(xr, w, eps, &mut or[..k]);
    }
    out
}

/// RMSNorm of one row into `out` (same length as `x`).
#[inline]
pub(crate) fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ss: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    let scale = (1.0 / (ss / x.len() as f64 + eps as f64).sqrt()) as f32;
    for ((o, &v), &wi) in out.iter_mut().zip(x).zip(w) {
        *o = v * scale * wi;
    }
}

/// In-place RMSNorm of each `k`-wide chunk of `x` (per-head Q/K norms, post-norms).
pub(crate) fn rms_norm_inplace(x: &mut [f32], w: &[f32], eps: f32, k: usize) {
    let mut tmp = vec![0f32; k];
    for row in x.chunks_exact_mut(k) {
        rms_norm_row(row, w, eps, &mut tmp);
        row.copy_from_slice(&tmp);
    }
}

/// RoPE frequency tables for a batch: for each token `i` (position `positions[i]`), `cos` and
/// `sin` rows of `rope_dim / 2` values, angle `pos * base^(-2j/rope_dim)`.
pub(crate) struct RopeTable {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub half: usize,
}

impl RopeTable {
    pub(crate) fn new(positions: &[usize], rope_dim: usize, base: f64) -> Self {
        let half = rope_dim / 2;
        let inv: Vec<f64> = (0..half)
            .map(|j| base.powf(-2.0 * j as f64 / rope_dim as f64))
            .collect();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for f in &inv {
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Self { cos, sin, half }
    }

    /// Rotates every head of token `i`'s row (`heads` heads of `head_dim`) in place.
    /// `interleaved`: pairs (2j, 2j+1) (llama.cpp's "normal" mode used by llama GGUFs);
    /// otherwise NEOX pairs (j, j + rope_dim/2).
    #[inline]
    pub(crate) fn apply(&self, i: usize, row: &mut [f32], head_dim: usize, interleaved: bool) {
        let half = self.half;
        let cos = &self.cos[i * half..(i + 1) * half];
        let sin = &self.sin[i * half..(i + 1) * half];
        for head in row.chunks_exact_mut(head_dim) {
            if interleaved {
                for j in 0..half {
                    let (a, b) = (head[2 * j], head[2 * j + 1]);
                    head[2 * j] = a * cos[j] - b * sin[j];
                    head[2 * j + 1] = a * sin[j] + b * cos[j];
                }
            } else {
                for j in 0..half {
                    let (a, b) = (head[j], head[j + half]);
                    head[j] = a * cos[j] - b * sin[j];
                    head[j + half] = a * sin[j] + b * cos[j];
                }
            }
        }
    }
}

/// Gated activation of the MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Activation {
    /// SiLU(gate) * up (llama, qwen2).
    Silu,
    /// GELU(gate, tanh approximation) * up (gemma).
    GeluTanh,
}

/// `gu` is `[t, 2 * ff]` (gate columns then up columns per row); returns `[t, out_k]` with
/// `act(gate) * up` in the first `ff` columns (zero padding after).
pub(crate) fn gated_act(gu: &[f32], ff: usize, out_k: usize, act: Activation) -> Vec<f32> {
    let t = gu.len() / (2 * ff);
    let mut out = vec![0f32; t * out_k];
    let ptr = SharedMut(out.as_mut_ptr());
    par_rows(t, ff * 20, |range| {
        for r in range {
            let g = &gu[r * 2 * ff..r * 2 * ff + ff];
            let u = &gu[r * 2 * ff + ff..(r + 1) * 2 * ff];
            // SAFETY: each row is written by exactly one worker.
            let o = unsafe { std::slice::from_raw_parts_mut(ptr.get().add(r * out_k), ff) };
            match act {
                Activation::Silu => {
                    for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                        *o = g / (1.0 + (-g).exp()) * u;
                    }
                }
                Activation::GeluTanh => {
                    const C: f32 = 0.797_884_6; // sqrt(2/pi)
                    for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                        let inner = C * (g + 0.044_715 * g * g * g);
                        *o = 0.5 * g * (1.0 + inner.tanh()) * u;
                    }
                }
            }
        }
    });
    out
}

/// One attention work item: query row `q` (one head, `head_dim` values, already scaled or not:
/// `scale` multiplies the scores) against keys/values `j0..=j1` of one KV head of a cache with
/// `row` floats per position and the head at offset `head_off`; writes `out` (`head_dim`).
/// `scores` is scratch space of at least `j1 - j0 + 1` floats.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_generic(
    q: &[f32],
    keys: KeySlots<'_>,
    head_off: usize,
    j0: usize,
    j1: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
    dot: impl Fn(&[f32], &[f32]) -> f32,
    axpy: impl Fn(&mut [f32], f32, &[f32]),
) {
    let d = q.len();
    let n = j1 + 1 - j0;
    let scores = &mut scores[..n];
    let row = keys.row;
    let mut max = f32::NEG_INFINITY;
    let mut i = 0;
    keys.for_each_run(j0, j1, |slot0, len| {
        for slot in slot0..slot0 + len {
            let kr = &keys.k[slot * row + head_off..slot * row + head_off + d];
            let s = dot(q, kr) * scale;
            scores[i] = s;
            max = max.max(s);
            i += 1;
        }
    });
    let mut sum = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    out.fill(0.0);
    let mut i = 0;
    keys.for_each_run(j0, j1, |slot0, len| {
        for slot in slot0..slot0 + len {
            let vr = &keys.v[slot * row + head_off..slot * row + head_off + d];
            axpy(out, scores[i], vr);
            i += 1;
        }
    });
    let inv = 1.0 / sum;
    for o in out.iter_mut() {
        *o *= inv;
    }
}

/// One sequence's keys and values of one layer, addressed through its block table.
#[derive(Clone, Copy)]
pub(crate) struct KeySlots<'a> {
    /// `[slots, row]` keys / values of the whole pool.
    pub k: &'a [f32],
    pub v: &'a [f32],
    /// Floats per slot (`num_kv_heads * head_dim`).
    pub row: usize,
    pub blocks: &'a [u32],
    pub block_size: usize,
}

impl KeySlots<'_> {
    /// Calls `f(first_slot, len)` for each run of consecutive slots holding positions
    /// `j0..=j1`, in position order (one run per block touched).
    #[inline]
    fn for_each_run(&self, j0: usize, j1: usize, mut f: impl FnMut(usize, usize)) {
        let bs = self.block_size;
        let mut j = j0;
        while j <= j1 {
            let (b, off) = (j / bs, j % bs);
            let len = (bs - off).min(j1 + 1 - j);
            f(self.blocks[b] as usize * bs + off, len);
            j += len;
        }
    }
}

fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += x * y;
    }
    s
}

/// `y += a * x` (AVX2 when available).
pub(crate) fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2/FMA availability checked at run time.
        unsafe { avx2::axpy(y, a, x) };
        return;
    }
    axpy_scalar(y, a, x)
}

fn axpy_scalar(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
                acc1,
            );
            i += 16;
        }
        while i + 8 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            i += 8;
        }
        let acc = _mm256_add_ps(acc0, acc1);
        let hi = _mm256_extractf128_ps(acc, 1);
        let lo = _mm256_castps256_ps128(acc);
        let s4 = _mm_add_ps(hi, lo);
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        let s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
        let mut s = _mm_cvtss_f32(s1);
        while i < n {
            s += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        s
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) unsafe fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        let n = y.len().min(x.len());
        let (py, px) = (y.as_mut_ptr(), x.as_ptr());
        let va = _mm256_set1_ps(a);
        let mut i = 0;
        while i + 8 <= n {
            let r = _mm256_fmadd_ps(va, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i)));
            _mm256_storeu_ps(py.add(i), r);
            i += 8;
        }
        while i < n {
            *py.add(i) += a * *px.add(i);
            i += 1;
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn attend(
        q: &[f32],
        keys: super::KeySlots<'_>,
        head_off: usize,
        j0: usize,
        j1: usize,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        super::attend_generic(
            q,
            keys,
            head_off,
            j0,
            j1,
            scale,
            scores,
            out,
            |a, b| unsafe { dot(a, b) },
            |y, a, x| unsafe { axpy(y, a, x) },
        )
    }
}

/// One sequence's part of a batched attention call.
pub(crate) struct AttnSeq<'a> {
    /// Keys / values `[pool slots, kv_heads, head_dim]` of this layer.
    pub k: &'a [f32],
    pub v: &'a [f32],
    /// Block table: position `p` is in slot `blocks[p / block_size] * block_size + p % block_size`.
    pub blocks: &'a [u32],
    pub block_size: usize,
    /// Position of the first new token (tokens before it are already cached).
    pub start_pos: usize,
    /// Number of new tokens (query rows) of this sequence.
    pub n_new: usize,
    /// Index of this sequence's first query row in the flattened batch.
    pub q_offset: usize,
}

/// Causal attention for a flattened batch.
///
/// `q`: `[t, q_stride]` with `num_heads` heads of `head_dim` at column 0 of each row (roped);
/// returns `[t, out_k]` (`num_heads * head_dim` columns then zero padding). Query `i` of a
/// sequence at position `p` sees keys `max(0, p + 1 - window)..=p` (`window = None`: all).
/// GQA: query head `h` uses KV head `h / (num_heads / num_kv_heads)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention(
    q: &[f32],
    q_stride: usize,
    seqs: &[AttnSeq<'_>],
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    scale: f32,
    window: Option<usize>,
    out_k: usize,
) -> Vec<f32> {
    let t: usize = seqs.iter().map(|s| s.n_new).sum();
    let mut out = vec![0f32; t * out_k];
    let group = num_heads / num_kv_heads;
    let row = num_kv_heads * head_dim;
    let max_keys = seqs
        .iter()
        .map(|s| s.start_pos + s.n_new)
        .max()
        .unwrap_or(0);
    // Work items: (query row, head), in batch order.
    let mut items: Vec<(u32, u32)> = Vec::with_capacity(t * num_heads);
    for (si, s) in seqs.iter().enumerate() {
        for i in 0..s.n_new {
            for h in 0..num_heads {
                items.push((si as u32, (i * num_heads + h) as u32));
            }
        }
    }
    let use_avx2 = has_avx2();
    let ptr = SharedMut(out.as_mut_ptr());
    let avg_keys = max_keys.max(1);
    let run = |range: std::ops::Range<usize>| {
        let mut scores = vec![0f32; max_keys.max(1)];
        for &(si, ih) in &items[range] {
            let s = &seqs[si as usize];
            let (i, h) = (ih as usize / num_heads, ih as usize % num_heads);
            let pos = s.start_pos + i;
            let j0 = match window {
                Some(w) => (pos + 1).saturating_sub(w),
                None => 0,
            };
            let qr = s.q_offset + i;
            let qv = &q[qr * q_stride + h * head_dim..qr * q_stride + (h + 1) * head_dim];
            // SAFETY: every (row, head) output slice is written by exactly one work item.
            let o = unsafe {
                std::slice::from_raw_parts_mut(ptr.get().add(qr * out_k + h * head_dim), head_dim)
            };
            let head_off = (h / group) * head_dim;
            let keys = KeySlots {
                k: s.k,
                v: s.v,
                row,
                blocks: s.blocks,
                block_size: s.block_size,
            };
            #[cfg(target_arch = "x86_64")]
            if use_avx2 {
                // SAFETY: AVX2/FMA availability checked at run time.
                unsafe { avx2::attend(qv, keys, head_off, j0, pos, scale, &mut scores, o) };
                continue;
            }
            let _ = use_avx2;
            attend_generic(
                qv,
                keys,
                head_off,
                j0,
                pos,
                scale,
                &mut scores,
                o,
                dot_scalar,
                axpy_scalar,
            );
        }
    };
    par_rows(items.len(), avg_keys * head_dim * 4, run);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::too_many_arguments)]
    fn naive(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        row: usize,
        off: usize,
        j0: usize,
        j1: usize,
        scale: f32,
    ) -> Vec<f32> {
        let d = q.len();
        let s: Vec<f32> = (j0..=j1)
            .map(|j| (0..d).map(|t| q[t] * k[j * row + off + t]).sum::<f32>() * scale)
            .collect();
        let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
        let z: f32 = e.iter().sum();
        (0..d)
            .map(|t| {
                (j0..=j1)
                    .zip(&e)
                    .map(|(j, p)| p * v[j * row + off + t])
                    .sum::<f32>()
                    / z
            })
            .collect()
    }

    /// Causal + sliding-window masking and GQA head mapping against a naive implementation,
    /// for a batch of two sequences (one decoding past the window, one prefilling).
    #[test]
    fn attention_matches_naive_with_window_and_gqa() {
        let (heads, kv_heads, d) = (4, 2, 16);
        let row = kv_heads * d;
        let val = |i: usize| ((i * 7919 % 1000) as f32 / 500.0) - 1.0;
        let k1: Vec<f32> = (0..10 * row).map(val).collect();
        let v1: Vec<f32> = (0..10 * row).map(|i| val(i + 3)).collect();
        let k2: Vec<f32> = (0..4 * row).map(|i| val(i + 11)).collect();
        let v2: Vec<f32> = (0..4 * row).map(|i| val(i + 17)).collect();
        let stride = heads * d + 8; // extra columns are ignored
        let q: Vec<f32> = (0..5 * stride).map(|i| val(i + 29)).collect();
        let seqs = [
            AttnSeq {
                k: &k1,
                v: &v1,
                blocks: &[0],
                block_size: 10,
                start_pos: 9,
                n_new: 1,
                q_offset: 0,
            },
            AttnSeq {
                k: &k2,
                v: &v2,
                blocks: &[0],
                block_size: 4,
                start_pos: 0,
                n_new: 4,
                q_offset: 1,
            },
        ];
        for window in [None, Some(3)] {
            let out = attention(
                &q,
                stride,
                &seqs,
                heads,
                kv_heads,
                d,
                0.25,
                window,
                heads * d + 4,
            );
            for (row_i, (s, i)) in [(0, 0), (1, 0), (1, 1), (1, 2), (1, 3)].iter().enumerate() {
                let seq = &seqs[*s];
                let pos = seq.start_pos + i;
                let j0 = window.map_or(0, |w| (pos + 1).saturating_sub(w));
                for h in 0..heads {
                    let qv = &q[row_i * stride + h * d..row_i * stride + (h + 1) * d];
                    let want = naive(qv, seq.k, seq.v, row, (h / 2) * d, j0, pos, 0.25);
                    let got = &out[row_i * (heads * d + 4) + h * d..][..d];
                    for (a, b) in got.iter().zip(&want) {
                        assert!(
                            (a - b).abs() < 1e-5,
                            "window {window:?} row {row_i} head {h}: {a} vs {b}"
                        );
                    }
                }
                assert!(out[row_i * (heads * d + 4) + heads * d..][..4]
                    .iter()
                    .all(|&x| x == 0.0));
            }
        }
    }

    /// Keys scattered over a shuffled block table give bit-identical attention to the same keys
    /// stored contiguously (the summation order over positions is the same).
    #[test]
    fn paged_attention_equals_contiguous_bitwise() {
        let (heads, kv_heads, d) = (4, 2, 8);
        let row = kv_heads * d;
        let val = |i: usize| ((i * 37 % 101) as f32 - 50.0) / 25.0;
        let n = 23; // keys: positions 0..23, 3 blocks of 8 (the last partly used)
        let k: Vec<f32> = (0..n * row).map(|i| val(i + 5)).collect();
        let v: Vec<f32> = (0..n * row).map(|i| val(i + 13)).collect();
        let (bs, table) = (8usize, [5u32, 1, 3]);
        let mut kp = vec![0f32; 6 * bs * row];
        let mut vp = vec![0f32; 6 * bs * row];
        for p in 0..n {
            let slot = table[p / bs] as usize * bs + p % bs;
            kp[slot * row..(slot + 1) * row].copy_from_slice(&k[p * row..(p + 1) * row]);
            vp[slot * row..(slot + 1) * row].copy_from_slice(&v[p * row..(p + 1) * row]);
        }
        let stride = heads * d;
        let q: Vec<f32> = (0..3 * stride).map(|i| val(i + 29)).collect();
        for window in [None, Some(5)] {
            let run = |k: &[f32], v: &[f32], blocks: &[u32], block_size| {
                let seqs = [AttnSeq {
                    k,
                    v,
                    blocks,
                    block_size,
                    start_pos: n - 3,
                    n_new: 3,
                    q_offset: 0,
                }];
                attention(&q, stride, &seqs, heads, kv_heads, d, 0.3, window, stride)
            };
            let contiguous = run(&k, &v, &[0], n);
            let paged = run(&kp, &vp, &table, bs);
            assert_eq!(contiguous, paged, "window {window:?}");
        }
    }
}
