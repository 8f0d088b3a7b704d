//! Q8_0 x Q8_0 matmul with AVX512-VNNI on a packed weight layout.
//!
//! Why our own kernel: candle's fast Q8_0 path quantizes activations in 256-value blocks (one
//! scale per 256 values), which loses accuracy on LLM activations with outliers (llama.cpp uses
//! one scale per 32 values for these formats), needs `k % 256 == 0`, and keeps a second copy of
//! the weights. Here activations are quantized per 32 values exactly like llama.cpp's Q8_0
//! (`d = amax / 127` stored as f16, `q = round(x / d)`), and the weights are stored once.
//!
//! Layout: rows padded to a multiple of 16; for each 16-row tile and each 32-value block,
//! 16 f32 scales and 512 bytes `[group of 4 values (8)][row (16)][4 bytes]` holding `q + 128`
//! as u8, so one `vpdpbusd` multiplies 16 rows x 4 values. The `+128` is removed with the
//! activation block sums.

use half::f16;

use super::kernels::{par_rows, SharedMut};

const TILE: usize = 16;
const MAX_MT: usize = 4;

/// Whether this CPU can run the packed kernel.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Packed Q8_0 weight `[n, k]`.
pub(crate) struct PackedQ8 {
    pub n: usize,
    pub k: usize,
    kb: usize,
    n_tiles: usize,
    /// `[n_tiles][kb][16]` weight block scales.
    scales: Vec<f32>,
    /// `[n_tiles][kb][8][16][4]` weight values + 128.
    qs: Vec<u8>,
}

impl PackedQ8 {
    /// Packs Q8_0 blocks (34 bytes: f16 scale, 32 i8) of a `[n, k]` matrix, `k % 32 == 0`.
    pub(crate) fn from_q8_0_bytes(data: &[u8], n: usize, k: usize) -> Self {
        let kb = k / 32;
        let n_tiles = n.div_ceil(TILE);
        let mut scales = vec![0f32; n_tiles * kb * TILE];
        let mut qs = vec![128u8; n_tiles * kb * 512];
        for r in 0..n {
            let (t, rr) = (r / TILE, r % TILE);
            for b in 0..kb {
                let blk = &data[(r * kb + b) * 34..(r * kb + b + 1) * 34];
                scales[(t * kb + b) * TILE + rr] = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                let base = (t * kb + b) * 512;
                for g in 0..8 {
                    for j in 0..4 {
                        qs[base + (g * TILE + rr) * 4 + j] =
                            (blk[2 + g * 4 + j] as i8 as i16 + 128) as u8;
                    }
                }
            }
        }
        Self {
            n,
            k,
            kb,
            n_tiles,
            scales,
            qs,
        }
    }

    /// Bytes held.
    #[allow(dead_code)]
    pub(crate) fn size_in_bytes(&self) -> usize {
        self.scales.len() * 4 + self.qs.len()
    }

    /// `x`: `[m, k]` f32 (row stride `x_stride >= k`); returns `[m, n]` f32.
    pub(crate) fn matmul(&self, x: &[f32], m: usize, x_stride: usize) -> Vec<f32> {
        let kb = self.kb;
        // Quantize activations per 32-value block like ggml's quantize_row_q8_0.
        let mut aq = vec![0i8; m * self.k];
        let mut ad = vec![0f32; m * kb];
        let mut asum = vec![0f32; m * kb];
        {
            let (pq, pd, ps) = (
                SharedMut(aq.as_mut_ptr() as *mut f32),
                SharedMut(ad.as_mut_ptr()),
                SharedMut(asum.as_mut_ptr()),
            );
            let k = self.k;
            par_rows(m, k * 8, |range| {
                for r in range {
                    let xr = &x[r * x_stride..r * x_stride + k];
                    // SAFETY: each row's output ranges are written by one worker only.
                    let (q, d, s) = unsafe {
                        (
                            std::slice::from_raw_parts_mut((pq.get() as *mut i8).add(r * k), k),
                            std::slice::from_raw_parts_mut(pd.get().add(r * kb), kb),
                            std::slice::from_raw_parts_mut(ps.get().add(r * kb), kb),
                        )
                    };
                    for b in 0..kb {
                        let xb = &xr[b * 32..b * 32 + 32];
                        let amax = xb.iter().fold(0f32, |a, &v| a.max(v.abs()));
                        let dd = amax / 127.0;
                        let id = if dd != 0.0 { 1.0 / dd } else { 0.0 };
                        let mut sum = 0i32;
                        for (qv, &v) in q[b * 32..b * 32 + 32].iter_mut().zip(xb) {
                            *qv = (v * id).round() as i8;
                            sum += *qv as i32;
                        }
                        d[b] = f16::from_f32(dd).to_f32();
                        s[b] = (128 * sum) as f32;
                    }
                }
            });
        }
        let n = self.n;
        let mut out = vec![0f32; m * n];
        let m_groups = m.div_ceil(MAX_MT);
        let units = self.n_tiles * m_groups;
        let po = SharedMut(out.as_mut_ptr());
        let (aq, ad, asum) = (&aq, &ad, &asum);
        let run = |range: std::ops::Range<usize>| {
            for u in range {
                let (t, g) = (u / m_groups, u % m_groups);
                let m0 = g * MAX_MT;
                let mt = (m - m0).min(MAX_MT);
                let mut res = [[0f32; TILE]; MAX_MT];
                #[cfg(target_arch = "x86_64")]
                // SAFETY: only constructed when `available()` holds.
                unsafe {
                    vnni::tile(self, t, aq, ad, asum, m0, mt, &mut res)
                };
                for (i, row) in res.iter().enumerate().take(mt) {
                    let c0 = t * TILE;
                    let cols = TILE.min(n - c0);
                    // SAFETY: each (row, tile) block is written by exactly one unit.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            row.as_ptr(),
                            po.get().add((m0 + i) * n + c0),
                            cols,
                        )
                    };
                }
            }
        };
        par_rows(units, 16 * self.k * MAX_MT.min(m) * 2, run);
        out
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::{PackedQ8, MAX_MT, TILE};
    use std::arch::x86_64::*;

    /// One 16-column tile for `mt <= 4` activation rows starting at `m0`.
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile(
        w: &PackedQ8,
        t: usize,
        aq: &[i8],
        ad: &[f32],
        asum: &[f32],
        m0: usize,
        mt: usize,
        res: &mut [[f32; TILE]; MAX_MT],
    ) {
        let kb = w.kb;
        let k = w.k;
        let mut acc = [_mm512_setzero_ps(); MAX_MT];
        let wq = w.qs.as_ptr().add(t * kb * 512);
        let ws = w.scales.as_ptr().add(t * kb * TILE);
        for b in 0..kb {
            let wp = wq.add(b * 512);
            let w0 = _mm512_loadu_si512(wp as *const _);
            let w1 = _mm512_loadu_si512(wp.add(64) as *const _);
            let w2 = _mm512_loadu_si512(wp.add(128) as *const _);
            let w3 = _mm512_loadu_si512(wp.add(192) as *const _);
            let w4 = _mm512_loadu_si512(wp.add(256) as *const _);
            let w5 = _mm512_loadu_si512(wp.add(320) as *const _);
            let w6 = _mm512_loadu_si512(wp.add(384) as *const _);
            let w7 = _mm512_loadu_si512(wp.add(448) as *const _);
            let scale = _mm512_loadu_ps(ws.add(b * TILE));
            for i in 0..mt {
                let r = m0 + i;
                let a = aq.as_ptr().add(r * k + b * 32) as *const i32;
                let bc = |j: usize| _mm512_set1_epi32(std::ptr::read_unaligned(a.add(j)));
                let mut s0 = _mm512_setzero_si512();
                let mut s1 = _mm512_setzero_si512();
                s0 = _mm512_dpbusd_epi32(s0, w0, bc(0));
                s1 = _mm512_dpbusd_epi32(s1, w1, bc(1));
                s0 = _mm512_dpbusd_epi32(s0, w2, bc(2));
                s1 = _mm512_dpbusd_epi32(s1, w3, bc(3));
                s0 = _mm512_dpbusd_epi32(s0, w4, bc(4));
                s1 = _mm512_dpbusd_epi32(s1, w5, bc(5));
                s0 = _mm512_dpbusd_epi32(s0, w6, bc(6));
                s1 = _mm512_dpbusd_epi32(s1, w7, bc(7));
                let s = _mm512_add_epi32(s0, s1);
                let f = _mm512_sub_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(asum[r * kb + b]));
                acc[i] = _mm512_fmadd_ps(
                    f,
                    _mm512_mul_ps(scale, _mm512_set1_ps(ad[r * kb + b])),
                    acc[i],
                );
            }
        }
        for (r, a) in res.iter_mut().zip(&acc).take(mt) {
            _mm512_storeu_ps(r.as_mut_ptr(), *a);
        }
    }
}
