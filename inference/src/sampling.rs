//! Logits processing, token sampling and logprobs.
//!
//! The pipeline for one position follows the usual order of llama.cpp / vLLM:
//!
//! 1. penalties: repetition (HF / llama.cpp style, over prompt + generated tokens), then
//!    presence and frequency (OpenAI style, over generated tokens only);
//! 2. temperature (`0` means greedy: argmax, lowest id on ties, the RNG is not touched);
//! 3. top-k;
//! 4. top-p (nucleus);
//! 5. min-p (relative to the most likely remaining token);
//! 6. a draw from the renormalised distribution with the sequence's own RNG.
//!
//! Each [`Sampler`] owns a ChaCha8 RNG seeded from [`SamplingParams::seed`] (or from OS entropy
//! when no seed is given), so a seeded sequence draws the same tokens from the same logits
//! whatever else the engine runs. Scratch buffers live in the sampler, so a decode step
//! allocates nothing once the buffers have grown to the vocabulary size; top-k / top-p use
//! partial selection instead of sorting the whole vocabulary.
//!
//! Logprobs ([`TokenLogprob`], [`token_logprob`]) always describe the model's raw distribution
//! (log-softmax of the unprocessed logits), like vLLM's default.

use std::cmp::Ordering;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Temperatures at or below this value (and NaN) mean greedy decoding.
const GREEDY_TEMPERATURE: f32 = 1e-5;

/// Logprob reported instead of `-inf` (or NaN) so that values always serialise to JSON; the same
/// floor the OpenAI API uses.
pub const LOGPROB_FLOOR: f32 = -9999.0;

/// Up to this many alternatives, top-n logprobs are collected with a small insertion list
/// instead of a selection over a vocabulary-sized buffer.
const SMALL_TOP_N: usize = 32;

/// Top-p over at most this many candidates sorts them; larger lists use logit buckets.
const SMALL_SORT: usize = 1024;
/// Number of logit buckets for top-p over large candidate lists.
const TOP_P_BUCKETS: usize = 4096;
/// Logit range below the maximum covered by the buckets (`exp(-104)` underflows f32).
const TOP_P_RANGE: f32 = 104.0;

/// Sampling settings of one sequence (OpenAI / vLLM request fields).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; `0` (or anything `<= 1e-5`) means greedy argmax, lowest id on ties.
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of most likely tokens whose cumulative
    /// probability is `>= top_p` (always at least one token). `1.0` = off.
    pub top_p: f32,
    /// Keep only the `top_k` most likely tokens. `0` = off.
    pub top_k: usize,
    /// Drop tokens whose probability is below `min_p` times the largest probability. `0.0` = off.
    pub min_p: f32,
    /// HF / llama.cpp repetition penalty over every distinct token of prompt + generated text:
    /// positive logits are divided by it, negative ones multiplied. `1.0` = off; values that are
    /// not finite and positive are treated as off.
    pub repetition_penalty: f32,
    /// OpenAI presence penalty: subtracted once from the logit of every token generated so far.
    /// `0.0` = off.
    pub presence_penalty: f32,
    /// OpenAI frequency penalty: subtracted `count` times from the logit of every token
    /// generated so far. `0.0` = off.
    pub frequency_penalty: f32,
    /// RNG seed; `None` seeds from OS entropy.
    pub seed: Option<u64>,
    /// `Some(n)`: [`Sampler::sample`] also returns the sampled token's logprob and the `n` most
    /// likely alternatives (`n` may be 0).
    pub top_logprobs: Option<usize>,
}

impl Default for SamplingParams {
    /// Temperature 1.0, every filter and penalty off, random seed, no logprobs.
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            top_logprobs: None,
        }
    }
}

/// Logprob of one token under the model's raw distribution (natural log, `<= 0`), plus the most
/// likely alternatives at the same position, sorted by descending logprob (lower id first on
/// ties). Values that would be `-inf` are reported as [`LOGPROB_FLOOR`].
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    /// The token id the logprob belongs to.
    pub id: u32,
    /// Its logprob.
    pub logprob: f32,
    /// `(id, logprob)` of the top alternatives (may include `id` itself).
    pub top: Vec<(u32, f32)>,
}

/// What the processing steps left to choose from.
enum Choice {
    /// Decided without a draw (greedy or degenerate input).
    Token(u32),
    /// Draw over all of `Sampler::work` (processed logits, `-inf` = excluded); the value is the
    /// maximum of `work`, finite.
    Dense(f32),
    /// Draw over `Sampler::cand` (non-empty, finite logits).
    Sparse,
}

/// Token sampler of one sequence. Owns its RNG and scratch buffers; not shared between
/// sequences.
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// Processed logits, `[vocab_size]`.
    work: Vec<f32>,
    /// `(id, logit)` candidates surviving top-k / top-p / min-p.
    cand: Vec<(u32, f32)>,
    /// Bitset over the vocabulary for the repetition penalty's "seen" set.
    seen: Vec<u64>,
    /// Sorted copy of the generated ids for presence / frequency counts.
    ids: Vec<u32>,
}

impl Sampler {
    /// Creates a sampler; the RNG is seeded from `params.seed`, or from OS entropy when `None`.
    pub fn new(params: SamplingParams) -> Self {
        let seed = params.seed.unwrap_or_else(rand::random::<u64>);
        Sampler {
            params,
            rng: ChaCha8Rng::seed_from_u64(seed),
            work: Vec::new(),
            cand: Vec::new(),
            seen: Vec::new(),
            ids: Vec::new(),
        }
    }

    /// The parameters this sampler was built with.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token.
    ///
    /// `logits`: `[vocab_size]` f32 raw logits for one position. `prompt_ids` / `generated_ids`
    /// feed the penalties (ids `>= vocab_size` are ignored). NaN logits are treated as `-inf`;
    /// `+inf` logits share all probability. Never panics; an empty `logits` slice gives token 0.
    ///
    /// Returns the token and, when `top_logprobs` is set, its logprob under the raw
    /// distribution with the top alternatives.
    pub fn sample(
        &mut self,
        logits: &[f32],
        prompt_ids: &[u32],
        generated_ids: &[u32],
    ) -> (u32, Option<TokenLogprob>) {
        let token = match self.process(logits, prompt_ids, generated_ids) {
            Choice::Token(t) => t,
            Choice::Dense(max) => self.draw_dense(max),
            Choice::Sparse => self.draw_sparse(),
        };
        let logprob = self
            .params
            .top_logprobs
            .map(|n| token_logprob(logits, token, n));
        (token, logprob)
    }

    fn has_penalties(&self) -> bool {
        let p = &self.params;
        repetition_active(p.repetition_penalty)
            || (p.presence_penalty != 0.0 && p.presence_penalty.is_finite())
            || (p.frequency_penalty != 0.0 && p.frequency_penalty.is_finite())
    }

    /// Runs penalties, temperature and the filters; leaves the distribution to draw from in
    /// `work` or `cand`.
    fn process(&mut self, logits: &[f32], prompt_ids: &[u32], generated_ids: &[u32]) -> Choice {
        if logits.is_empty() {
            return Choice::Token(0);
        }
        let t = self.params.temperature;
        // NaN counts as greedy too.
        let greedy = t.is_nan() || t <= GREEDY_TEMPERATURE;
        let penalties = self.has_penalties();
        if greedy && !penalties {
            return Choice::Token(argmax(logits));
        }

        self.work.clear();
        self.work.extend(
            logits
                .iter()
                .map(|&x| if x.is_nan() { f32::NEG_INFINITY } else { x }),
        );
        if penalties {
            self.apply_penalties(prompt_ids, generated_ids);
        }
        if greedy {
            return Choice::Token(argmax(&self.work));
        }

        let mut pos_inf = false;
        for x in self.work.iter_mut() {
            *x /= t;
            pos_inf |= *x == f32::INFINITY;
        }
        if pos_inf {
            // Tokens at +inf share all the probability mass equally.
            for x in self.work.iter_mut() {
                *x = if *x == f32::INFINITY {
                    0.0
                } else {
                    f32::NEG_INFINITY
                };
            }
        }
        let max = self.work.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY {
            // Everything was masked: fall back to the raw argmax.
            return Choice::Token(argmax(logits));
        }

        let p = &self.params;
        let n = self.work.len();
        let top_k_on = p.top_k > 0 && p.top_k < n;
        let top_p_on = p.top_p < 1.0;
        let min_p_on = p.min_p > 0.0;
        if !(top_k_on || top_p_on || min_p_on) {
            return Choice::Dense(max);
        }
        let (top_k, top_p, min_p) = (p.top_k, p.top_p, p.min_p);

        // With top-k on a large vocabulary, only logits in the top buckets become candidates
        // (a superset of the top k), so the selection below runs on a short list.
        let bucket_limit = if top_k_on && n > SMALL_SORT {
            top_k_bucket(&self.work, max, top_k)
        } else {
            TOP_P_BUCKETS - 1
        };
        let scale = (TOP_P_BUCKETS - 1) as f32 / TOP_P_RANGE;
        self.cand.clear();
        self.cand.extend(
            self.work
                .iter()
                .enumerate()
                .filter(|(_, &x)| {
                    x > f32::NEG_INFINITY && logit_bucket(x, max, scale) <= bucket_limit
                })
                .map(|(i, &x)| (i as u32, x)),
        );
        if top_k_on && top_k < self.cand.len() {
            self.cand.select_nth_unstable_by(top_k - 1, cmp_desc);
            self.cand.truncate(top_k);
        }
        if top_p_on {
            apply_top_p(&mut self.cand, top_p);
        }
        if min_p_on {
            let max = self
                .cand
                .iter()
                .map(|c| c.1)
                .fold(f32::NEG_INFINITY, f32::max);
            // p_i >= min_p * p_max  <=>  logit_i >= logit_max + ln(min_p)
            let threshold = max + min_p.ln();
            self.cand.retain(|c| c.1 >= threshold || c.1 == max);
        }
        Choice::Sparse
    }

    fn apply_penalties(&mut self, prompt_ids: &[u32], generated_ids: &[u32]) {
        let n = self.work.len();
        let rp = self.params.repetition_penalty;
        if repetition_active(rp) {
            self.seen.clear();
            self.seen.resize(n.div_ceil(64), 0);
            for &id in prompt_ids.iter().chain(generated_ids) {
                let i = id as usize;
                if i >= n {
                    continue;
                }
                let (word, bit) = (i / 64, 1u64 << (i % 64));
                if self.seen[word] & bit == 0 {
                    self.seen[word] |= bit;
                    let x = &mut self.work[i];
                    *x = if *x > 0.0 { *x / rp } else { *x * rp };
                }
            }
        }

        let pp = finite_or_zero(self.params.presence_penalty);
        let fp = finite_or_zero(self.params.frequency_penalty);
        if pp != 0.0 || fp != 0.0 {
            self.ids.clear();
            self.ids.extend(
                generated_ids
                    .iter()
                    .copied()
                    .filter(|&id| (id as usize) < n),
            );
            self.ids.sort_unstable();
            for run in self.ids.chunk_by(|a, b| a == b) {
                let count = run.len() as f32;
                self.work[run[0] as usize] -= pp + fp * count;
            }
        }
    }

    /// Uniform f64 in `[0, 1)` from exactly one RNG step (portable across rand versions).
    fn uniform(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Draws from softmax(`work`); `max` is the (finite) maximum of `work`.
    fn draw_dense(&mut self, max: f32) -> u32 {
        for x in self.work.iter_mut() {
            *x = fast_exp(*x - max);
        }
        let target = self.uniform() * sum_weights(&self.work);
        pick_index(&self.work, target) as u32
    }

    /// Draws from softmax over `cand` (non-empty); uses `work` for the weights.
    fn draw_sparse(&mut self) -> u32 {
        let max = self
            .cand
            .iter()
            .map(|c| c.1)
            .fold(f32::NEG_INFINITY, f32::max);
        self.work.clear();
        self.work
            .extend(self.cand.iter().map(|c| fast_exp(c.1 - max)));
        let target = self.uniform() * sum_weights(&self.work);
        let index = pick_index(&self.work, target);
        self.cand.get(index).map_or(0, |c| c.0)
    }

    /// The processed distribution as `(id, probability)` pairs with non-zero probability, in id
    /// order (for tests and diagnostics; does not touch the RNG).
    #[cfg(test)]
    fn distribution(&mut self, logits: &[f32], prompt: &[u32], gen: &[u32]) -> Vec<(u32, f64)> {
        let mut out: Vec<(u32, f64)> = match self.process(logits, prompt, gen) {
            Choice::Token(t) => vec![(t, 1.0)],
            Choice::Dense(max) => self
                .work
                .iter()
                .enumerate()
                .map(|(i, &x)| (i as u32, ((x - max) as f64).exp()))
                .filter(|p| p.1 > 0.0)
                .collect(),
            Choice::Sparse => {
                let max = self
                    .cand
                    .iter()
                    .map(|c| c.1)
                    .fold(f32::NEG_INFINITY, f32::max);
                self.cand
                    .iter()
                    .map(|&(i, x)| (i, ((x - max) as f64).exp()))
                    .collect()
            }
        };
        let total: f64 = out.iter().map(|p| p.1).sum();
        for p in out.iter_mut() {
            p.1 /= total;
        }
        out.sort_by_key(|p| p.0);
        out
    }
}

fn repetition_active(rp: f32) -> bool {
    rp.is_finite() && rp > 0.0 && rp != 1.0
}

fn finite_or_zero(x: f32) -> f32 {
    if x.is_finite() {
        x
    } else {
        0.0
    }
}

/// `e^x` for `x <= 0` (as used here: logit minus the maximum), vectorisable, relative error
/// around 1e-7 near 0 and below 1e-5 over the whole range; 0 below -87 (and for `-inf`).
#[inline(always)]
fn fast_exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let clamped = x.max(-87.0);
    let t = clamped * std::f32::consts::LOG2_E;
    let shifted = t + MAGIC;
    let k = shifted - MAGIC;
    let k_int = (shifted.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    // e^x = 2^k * e^g with |g| <= ln2 / 2; degree-6 Taylor series for e^g.
    let g = (t - k) * std::f32::consts::LN_2;
    let poly = 1.0
        + g * (1.0
            + g * (0.5
                + g * (1.0 / 6.0 + g * (1.0 / 24.0 + g * (1.0 / 120.0 + g * (1.0 / 720.0))))));
    let scale = f32::from_bits((k_int.wrapping_add(127) as u32) << 23);
    if x < -87.0 {
        0.0
    } else {
        poly * scale
    }
}

/// Block size for weight sums and scans (the same blocks in both, so they agree).
const BLOCK: usize = 256;

/// Sum of one block in 8 f32 lanes (vectorisable).
fn block_sum(block: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let mut chunks = block.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            lanes[l] += c[l];
        }
    }
    let mut s: f32 = lanes.iter().sum();
    for &r in chunks.remainder() {
        s += r;
    }
    s
}

/// Sum of non-negative weights.
fn sum_weights(ws: &[f32]) -> f64 {
    ws.chunks(BLOCK).map(|b| f64::from(block_sum(b))).sum()
}

/// First index where the running sum of `ws` exceeds `target` (`0 <= target < sum_weights`);
/// the last positive weight if rounding runs past the end; 0 if there is none.
fn pick_index(ws: &[f32], target: f64) -> usize {
    let mut acc = 0.0f64;
    let mut last = 0usize;
    for (b, block) in ws.chunks(BLOCK).enumerate() {
        let s = f64::from(block_sum(block));
        if s > 0.0 {
            if target < acc + s {
                let mut inner = acc;
                for (j, &w) in block.iter().enumerate() {
                    if w > 0.0 {
                        inner += f64::from(w);
                        last = b * BLOCK + j;
                        if target < inner {
                            return last;
                        }
                    }
                }
            } else if let Some(j) = block.iter().rposition(|&w| w > 0.0) {
                last = b * BLOCK + j;
            }
        }
        acc += s;
    }
    last
}

/// Bucket of logit `x` below the maximum `max`: `(max - x) * scale`, capped at the last bucket.
#[inline(always)]
fn logit_bucket(x: f32, max: f32, scale: f32) -> usize {
    (((max - x) * scale) as usize).min(TOP_P_BUCKETS - 1)
}

/// The first logit bucket (width `TOP_P_RANGE / (TOP_P_BUCKETS - 1)` below `max`) by which at
/// least `k` finite logits of `xs` have been counted; the last bucket if there are fewer.
fn top_k_bucket(xs: &[f32], max: f32, k: usize) -> usize {
    let scale = (TOP_P_BUCKETS - 1) as f32 / TOP_P_RANGE;
    let mut counts = [0u32; TOP_P_BUCKETS];
    for &x in xs {
        if x > f32::NEG_INFINITY {
            counts[logit_bucket(x, max, scale)] += 1;
        }
    }
    let mut seen = 0usize;
    for (b, &c) in counts.iter().enumerate() {
        seen += c as usize;
        if seen >= k {
            return b;
        }
    }
    TOP_P_BUCKETS - 1
}

/// Descending by logit, ascending by id on ties. Inputs never hold NaN.
fn cmp_desc(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    b.1.partial_cmp(&a.1)
        .unwrap_or(Ordering::Equal)
        .then(a.0.cmp(&b.0))
}

/// Index of the largest non-NaN value, lowest index on ties; 0 when there is none.
fn argmax(xs: &[f32]) -> u32 {
    // Maximum in 8 lanes (vectorisable; NaN never wins a `>` comparison), then its first index.
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            lanes[l] = if c[l] > lanes[l] { c[l] } else { lanes[l] };
        }
    }
    let mut best_val = f32::NEG_INFINITY;
    for &x in lanes.iter().chain(chunks.remainder()) {
        if x > best_val {
            best_val = x;
        }
    }
    if best_val == f32::NEG_INFINITY {
        // Everything is -inf or NaN: the first -inf, if any.
        return xs.iter().position(|x| !x.is_nan()).unwrap_or(0) as u32;
    }
    xs.iter().position(|&x| x == best_val).unwrap_or(0) as u32
}

/// Keeps the smallest set of most likely tokens of `cand` whose cumulative probability is
/// `>= top_p` (at least one token).
///
/// Small candidate lists are sorted. Large ones (the full vocabulary) avoid a sort: candidates
/// are bucketed by logit, bucket masses locate the bucket where the cumulative probability
/// crosses `top_p`, and only that bucket is sorted. `cand` holds finite logits; on return the
/// kept tokens are at the front (not sorted).
fn apply_top_p(cand: &mut Vec<(u32, f32)>, top_p: f32) {
    let n = cand.len();
    if n <= 1 {
        return;
    }
    let (max, min) = cand
        .iter()
        .fold((f32::NEG_INFINITY, f32::INFINITY), |(hi, lo), c| {
            (hi.max(c.1), lo.min(c.1))
        });
    if n <= SMALL_SORT {
        let total: f64 = cand.iter().map(|c| f64::from(fast_exp(c.1 - max))).sum();
        let target = f64::from(top_p.max(0.0)) * total;
        cand.sort_unstable_by(cmp_desc);
        let mut cum = 0.0f64;
        for i in 0..n {
            cum += f64::from(fast_exp(cand[i].1 - max));
            if cum >= target {
                cand.truncate(i + 1);
                return;
            }
        }
        return;
    }

    // Bucket 0 holds the largest logits. Logits more than TOP_P_RANGE below the max carry no
    // f32 probability mass and share the last bucket.
    let lo = min.max(max - TOP_P_RANGE);
    let width = max - lo;
    let scale = if width > 0.0 {
        (TOP_P_BUCKETS - 1) as f32 / width
    } else {
        0.0
    };
    let bucket = |x: f32| (((max - x) * scale) as usize).min(TOP_P_BUCKETS - 1);
    let mut mass = [0.0f64; TOP_P_BUCKETS];
    for c in cand.iter() {
        mass[bucket(c.1)] += f64::from(fast_exp(c.1 - max));
    }
    let total: f64 = mass.iter().sum();
    let target = f64::from(top_p.max(0.0)) * total;
    let mut cum = 0.0f64;
    let mut boundary = TOP_P_BUCKETS - 1;
    for (b, m) in mass.iter().enumerate() {
        if cum + m >= target {
            boundary = b;
            break;
        }
        cum += m;
    }
    if boundary == TOP_P_BUCKETS - 1 && cum + mass[boundary] < target {
        return; // rounding: the whole list is the nucleus
    }

    // Move buckets above the boundary to the front, then the boundary bucket; drop the rest.
    let mut kept = 0;
    for i in 0..n {
        if bucket(cand[i].1) < boundary {
            cand.swap(kept, i);
            kept += 1;
        }
    }
    let mut edge = kept;
    for i in kept..n {
        if bucket(cand[i].1) == boundary {
            cand.swap(edge, i);
            edge += 1;
        }
    }
    cand.truncate(edge);
    cand[kept..].sort_unstable_by(cmp_desc);
    for i in kept..edge {
        cum += f64::from(fast_exp(cand[i].1 - max));
        if cum >= target {
            cand.truncate(i + 1);
            return;
        }
    }
}

/// Log-softmax of `logits` (raw, unprocessed) at `id`, plus the `top_n` most likely tokens
/// sorted by descending logprob (lower id first on ties).
///
/// `logits`: `[vocab_size]` f32. NaN logits count as `-inf`; an `id` outside the vocabulary or
/// a token with zero probability gets [`LOGPROB_FLOOR`]. Never panics.
pub fn token_logprob(logits: &[f32], id: u32, top_n: usize) -> TokenLogprob {
    let clean = |x: f32| if x.is_nan() { f32::NEG_INFINITY } else { x };
    let max = logits
        .iter()
        .map(|&x| clean(x))
        .fold(f32::NEG_INFINITY, f32::max);
    // logprob(x) = x - lse, with the degenerate cases of +inf and all -inf handled apart.
    let logprob_of: Box<dyn Fn(f32) -> f32> = if max == f32::INFINITY {
        let count = logits.iter().filter(|&&x| x == f32::INFINITY).count();
        let lp = -(count as f32).ln();
        Box::new(move |x: f32| {
            if x == f32::INFINITY {
                lp
            } else {
                f32::NEG_INFINITY
            }
        })
    } else if max == f32::NEG_INFINITY {
        let lp = -(logits.len().max(1) as f32).ln();
        Box::new(move |_| lp)
    } else {
        let sum: f64 = logits
            .iter()
            .map(|&x| f64::from(fast_exp(clean(x) - max)))
            .sum();
        let lse = f64::from(max) + sum.ln();
        Box::new(move |x: f32| (f64::from(x) - lse) as f32)
    };
    let floor = |v: f32| if v.is_finite() { v } else { LOGPROB_FLOOR };

    let logprob = logits
        .get(id as usize)
        .map_or(LOGPROB_FLOOR, |&x| floor(logprob_of(clean(x))));

    let top_n = top_n.min(logits.len());
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(top_n);
    if top_n == 0 {
    } else if top_n <= SMALL_TOP_N {
        for (i, &x) in logits.iter().enumerate() {
            let x = clean(x);
            if top.len() == top_n {
                match top.last() {
                    Some(last) if x > last.1 => {
                        top.pop();
                    }
                    _ => continue,
                }
            }
            // Insert after every entry >= x, so equal logits keep id order.
            let pos = top.partition_point(|e| e.1 >= x);
            top.insert(pos, (i as u32, x));
        }
    } else {
        top.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &x)| (i as u32, clean(x))),
        );
        if top_n < top.len() {
            top.select_nth_unstable_by(top_n - 1, cmp_desc);
            top.truncate(top_n);
        }
        top.sort_unstable_by(cmp_desc);
    }
    for e in top.iter_mut() {
        e.1 = floor(logprob_of(e.1));
    }
    TokenLogprob { id, logprob, top }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SamplingParams {
        SamplingParams {
            seed: Some(42),
            ..SamplingParams::default()
        }
    }

    fn softmax(xs: &[f32]) -> Vec<f64> {
        let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f64> = xs.iter().map(|&x| f64::from(x - max).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn fast_exp_is_accurate() {
        let mut x = 0.0f32;
        while x > -87.0 {
            let want = f64::from(x).exp();
            let got = f64::from(fast_exp(x));
            assert!(
                ((got - want) / want).abs() < 2e-5,
                "x={x} got {got} want {want}"
            );
            x -= 0.0137;
        }
        assert_eq!(fast_exp(0.0), 1.0);
        assert_eq!(fast_exp(-100.0), 0.0);
        assert_eq!(fast_exp(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn pick_index_walks_blocks() {
        let mut ws = vec![0.0f32; 1000];
        ws[3] = 1.0;
        ws[700] = 2.0;
        ws[999] = 1.0;
        assert_eq!(pick_index(&ws, 0.0), 3);
        assert_eq!(pick_index(&ws, 0.99), 3);
        assert_eq!(pick_index(&ws, 1.0), 700);
        assert_eq!(pick_index(&ws, 2.99), 700);
        assert_eq!(pick_index(&ws, 3.5), 999);
        assert_eq!(pick_index(&ws, 10.0), 999);
        assert_eq!(sum_weights(&ws), 4.0);
    }

    #[test]
    fn greedy_picks_lowest_id_on_ties() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.0,
            ..params()
        });
        let (t, lp) = s.sample(&[1.0, 3.0, 3.0, 2.0], &[], &[]);
        assert_eq!(t, 1);
        assert!(lp.is_none());
        // Greedy does not touch the RNG: the next stochastic draw is unaffected.
        let before = s.rng.clone().next_u64();
        s.sample(&[0.0, 5.0, 5.0], &[], &[]);
        assert_eq!(s.rng.clone().next_u64(), before);
    }

    #[test]
    fn temperature_scales_the_distribution() {
        let logits = [1.0f32, 0.0, -1.0];
        for t in [0.5f32, 1.0, 2.0] {
            let mut s = Sampler::new(SamplingParams {
                temperature: t,
                ..params()
            });
            let d = s.distribution(&logits, &[], &[]);
            let scaled: Vec<f32> = logits.iter().map(|x| x / t).collect();
            let want = softmax(&scaled);
            assert_eq!(d.len(), 3);
            for (i, p) in d {
                assert!(close(p, want[i as usize], 1e-6), "t={t} id={i}");
            }
        }
        // Very low temperature concentrates on the argmax.
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.01,
            ..params()
        });
        for _ in 0..100 {
            assert_eq!(s.sample(&logits, &[], &[]).0, 0);
        }
    }

    #[test]
    fn top_k_one_equals_greedy() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut s = Sampler::new(SamplingParams {
            top_k: 1,
            temperature: 1.5,
            ..params()
        });
        for _ in 0..50 {
            let logits: Vec<f32> = (0..1000)
                .map(|_| (rng.next_u32() % 1000) as f32 / 100.0)
                .collect();
            assert_eq!(s.sample(&logits, &[], &[]).0, argmax(&logits));
        }
    }

    #[test]
    fn top_k_keeps_k_best() {
        let mut s = Sampler::new(SamplingParams {
            top_k: 2,
            ..params()
        });
        let logits = [0.0f32, 3.0, 1.0, 2.0];
        let d = s.distribution(&logits, &[], &[]);
        let ids: Vec<u32> = d.iter().map(|p| p.0).collect();
        assert_eq!(ids, vec![1, 3]);
        let want = softmax(&[3.0, 2.0]);
        assert!(close(d[0].1, want[0], 1e-6));
    }

    #[test]
    fn top_p_tiny_equals_greedy() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut s = Sampler::new(SamplingParams {
            top_p: 1e-6,
            ..params()
        });
        for _ in 0..20 {
            let logits: Vec<f32> = (0..5000)
                .map(|_| (rng.next_u32() % 10_000) as f32 / 1000.0)
                .collect();
            assert_eq!(s.sample(&logits, &[], &[]).0, argmax(&logits));
        }
    }

    #[test]
    fn top_k_on_a_large_vocab_matches_a_full_sort() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        // Many exact ties and a wide spread, so bucket edges and tie-breaking both matter.
        let logits: Vec<f32> = (0..60_000)
            .map(|_| (rng.next_u32() % 4000) as f32 / 20.0 - 150.0)
            .collect();
        for top_k in [1usize, 5, 40, 1000, 59_999] {
            let mut order: Vec<usize> = (0..logits.len()).collect();
            order.sort_by(|&a, &b| logits[b].partial_cmp(&logits[a]).unwrap().then(a.cmp(&b)));
            let mut want: Vec<u32> = order[..top_k].iter().map(|&i| i as u32).collect();
            want.sort();
            let mut s = Sampler::new(SamplingParams { top_k, ..params() });
            s.process(&logits, &[], &[]);
            let mut got: Vec<u32> = s.cand.iter().map(|c| c.0).collect();
            got.sort();
            assert_eq!(got, want, "top_k={top_k}");
            let t = s.sample(&logits, &[], &[]).0;
            assert!(want.binary_search(&t).is_ok());
        }
    }

    #[test]
    fn top_p_keeps_smallest_nucleus() {
        // probabilities 0.4, 0.3, 0.2, 0.1
        let logits: Vec<f32> = [0.4f32, 0.3, 0.2, 0.1].iter().map(|p| p.ln()).collect();
        let ids = |top_p: f32| {
            let mut s = Sampler::new(SamplingParams { top_p, ..params() });
            s.distribution(&logits, &[], &[])
                .iter()
                .map(|p| p.0)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(0.3), vec![0]);
        assert_eq!(ids(0.5), vec![0, 1]);
        assert_eq!(ids(0.75), vec![0, 1, 2]);
        assert_eq!(ids(0.95), vec![0, 1, 2, 3]);
        // Renormalised over the nucleus.
        let mut s = Sampler::new(SamplingParams {
            top_p: 0.5,
            ..params()
        });
        let d = s.distribution(&logits, &[], &[]);
        assert!(close(d[0].1, 0.4 / 0.7, 1e-6));
    }

    #[test]
    fn top_p_on_a_large_vocab_matches_a_full_sort() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let flat: Vec<f32> = (0..50_000)
            .map(|_| (rng.next_u32() % 100_000) as f32 / 5000.0)
            .collect();
        // Peaked like a language model: a few large logits over a long tail.
        let peaked: Vec<f32> = (0..50_000)
            .map(|i| {
                if i % 997 == 0 {
                    25.0 - (i / 997) as f32 * 0.3
                } else {
                    (rng.next_u32() % 1000) as f32 / 100.0
                }
            })
            .collect();
        let mut equal = vec![1.0f32; 5000];
        equal[4321] = f32::NEG_INFINITY;
        for logits in [&flat, &peaked, &equal] {
            for top_p in [0.0f32, 0.1, 0.5, 0.9, 0.99] {
                let probs = softmax(logits);
                let mut order: Vec<usize> = (0..logits.len()).filter(|&i| probs[i] > 0.0).collect();
                order.sort_by(|&a, &b| logits[b].partial_cmp(&logits[a]).unwrap().then(a.cmp(&b)));
                let mut cum = 0.0;
                let mut want = Vec::new();
                for &i in &order {
                    cum += probs[i];
                    want.push(i as u32);
                    if cum >= f64::from(top_p) {
                        break;
                    }
                }
                want.sort();
                let mut s = Sampler::new(SamplingParams { top_p, ..params() });
                let got: Vec<u32> = s
                    .distribution(logits, &[], &[])
                    .iter()
                    .map(|p| p.0)
                    .collect();
                assert_eq!(got.len(), want.len(), "top_p={top_p}");
                assert_eq!(got, want, "top_p={top_p}");
            }
        }
    }

    #[test]
    fn min_p_filters_relative_to_max() {
        // probabilities 0.5, 0.3, 0.15, 0.05
        let logits: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let ids = |min_p: f32| {
            let mut s = Sampler::new(SamplingParams { min_p, ..params() });
            s.distribution(&logits, &[], &[])
                .iter()
                .map(|p| p.0)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(0.05), vec![0, 1, 2, 3]);
        assert_eq!(ids(0.2), vec![0, 1, 2]); // threshold 0.1
        assert_eq!(ids(0.5), vec![0, 1]); // threshold 0.25
        assert_eq!(ids(0.9), vec![0]);
        assert_eq!(ids(1.0), vec![0]);
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative() {
        let logits = [2.0f32, -1.0, 1.0, 0.5];
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 2.0,
            ..params()
        });
        // Token 0 in the prompt, token 1 generated twice (penalised once), 3 untouched.
        let d = s.distribution(&logits, &[0, 99], &[1, 1]);
        let want = softmax(&[1.0, -2.0, 1.0, 0.5]);
        for (i, p) in d {
            assert!(close(p, want[i as usize], 1e-6), "id {i}");
        }
        // Greedy still sees the penalty: token 0 (2.0 -> 0.8) loses to token 2 (1.0).
        let mut g = Sampler::new(SamplingParams {
            temperature: 0.0,
            repetition_penalty: 2.5,
            ..params()
        });
        assert_eq!(g.sample(&logits, &[0], &[]).0, 2);
    }

    #[test]
    fn presence_penalty_applies_once_per_generated_token() {
        let logits = [1.0f32, 1.0, 1.0];
        let mut s = Sampler::new(SamplingParams {
            presence_penalty: 0.5,
            ..params()
        });
        // The prompt does not count for presence.
        let d = s.distribution(&logits, &[2, 2], &[0, 0, 0, 1]);
        let want = softmax(&[0.5, 0.5, 1.0]);
        for (i, p) in d {
            assert!(close(p, want[i as usize], 1e-6), "id {i}");
        }
    }

    #[test]
    fn frequency_penalty_scales_with_count() {
        let logits = [1.0f32, 1.0, 1.0];
        let mut s = Sampler::new(SamplingParams {
            frequency_penalty: 0.25,
            presence_penalty: 0.1,
            ..params()
        });
        let d = s.distribution(&logits, &[1], &[0, 0, 0, 1, 7_000]);
        let want = softmax(&[1.0 - 0.1 - 0.75, 1.0 - 0.1 - 0.25, 1.0]);
        for (i, p) in d {
            assert!(close(p, want[i as usize], 1e-6), "id {i}");
        }
        // Negative penalties encourage repetition.
        let mut g = Sampler::new(SamplingParams {
            temperature: 0.0,
            frequency_penalty: -1.0,
            ..params()
        });
        assert_eq!(g.sample(&logits, &[], &[2]).0, 2);
    }

    #[test]
    fn same_seed_same_tokens_and_different_seeds_differ() {
        let logits: Vec<f32> = (0..64).map(|i| ((i * 37) % 11) as f32 / 4.0).collect();
        let run = |seed: u64| {
            let mut s = Sampler::new(SamplingParams {
                seed: Some(seed),
                top_k: 40,
                top_p: 0.95,
                ..SamplingParams::default()
            });
            (0..300)
                .map(|_| s.sample(&logits, &[], &[]).0)
                .collect::<Vec<u32>>()
        };
        assert_eq!(run(1234), run(1234));
        assert_ne!(run(1234), run(1235));
        // Same for the dense path (no filters).
        let dense = |seed: u64| {
            let mut s = Sampler::new(SamplingParams {
                seed: Some(seed),
                ..SamplingParams::default()
            });
            (0..300)
                .map(|_| s.sample(&logits, &[], &[]).0)
                .collect::<Vec<u32>>()
        };
        assert_eq!(dense(5), dense(5));
        assert_ne!(dense(5), dense(6));
        // Unseeded samplers work too.
        let mut s = Sampler::new(SamplingParams::default());
        assert!((s.sample(&logits, &[], &[]).0 as usize) < logits.len());
    }

    #[test]
    fn empirical_distribution_matches_softmax() {
        let logits: Vec<f32> = [0.1f32, 0.2, 0.3, 0.4]
            .iter()
            .map(|p| p.ln() + 3.0)
            .collect();
        let draws = 20_000;
        for top_k in [0usize, 4] {
            let mut s = Sampler::new(SamplingParams {
                top_k,
                seed: Some(2024),
                ..SamplingParams::default()
            });
            let mut counts = [0usize; 4];
            for _ in 0..draws {
                counts[s.sample(&logits, &[], &[]).0 as usize] += 1;
            }
            for (i, want) in [0.1, 0.2, 0.3, 0.4].iter().enumerate() {
                let got = counts[i] as f64 / draws as f64;
                // ~6 standard deviations; the seed is fixed anyway.
                assert!(close(got, *want, 0.02), "top_k={top_k} id={i} got {got}");
            }
        }
    }

    #[test]
    fn logprobs_match_hand_computation() {
        // log_softmax([1, 2, 3]) = x - ln(e + e^2 + e^3)
        let logits = [1.0f32, 2.0, 3.0];
        let lse = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        let lp = token_logprob(&logits, 0, 2);
        assert_eq!(lp.id, 0);
        assert!(close(lp.logprob as f64, 1.0 - lse, 1e-6));
        assert_eq!(lp.top.len(), 2);
        assert_eq!(lp.top[0].0, 2);
        assert!(close(lp.top[0].1 as f64, 3.0 - lse, 1e-6));
        assert_eq!(lp.top[1].0, 1);
        assert!(close(lp.top[1].1 as f64, 2.0 - lse, 1e-6));
        // 3 - ln(e + e^2 + e^3) = -0.4076059644443804, computed by hand.
        assert!(close(lp.top[0].1 as f64, -0.40760596, 1e-6));

        // The sampler reports the raw distribution, not the processed one.
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.0,
            repetition_penalty: 3.0,
            top_logprobs: Some(1),
            ..params()
        });
        let (t, lp) = s.sample(&logits, &[2], &[]);
        assert_eq!(t, 1);
        let lp = lp.expect("logprobs requested");
        assert_eq!(lp.id, 1);
        assert!(close(lp.logprob as f64, 2.0 - lse, 1e-6));
        assert_eq!(lp.top, vec![(2, (3.0 - lse) as f32)]);
    }

    #[test]
    fn top_logprobs_large_n_and_ties() {
        let logits: Vec<f32> = (0..200).map(|i| (i % 10) as f32).collect();
        let small = token_logprob(&logits, 5, 20);
        let large = token_logprob(&logits, 5, 40);
        assert_eq!(small.top[..], large.top[..20]);
        // Ties sorted by id: the first ten are the 9s at ids 9, 19, 29, ...
        let ids: Vec<u32> = large.top.iter().take(3).map(|e| e.0).collect();
        assert_eq!(ids, vec![9, 19, 29]);
        for w in large.top.windows(2) {
            assert!(w[0].1 >= w[1].1);
        }
        // n larger than the vocabulary.
        assert_eq!(token_logprob(&[0.0, 1.0], 0, 10).top.len(), 2);
        // id out of range.
        assert_eq!(token_logprob(&[0.0, 1.0], 5, 0).logprob, LOGPROB_FLOOR);
    }

    #[test]
    fn nan_and_inf_logits_do_not_panic() {
        let nan = f32::NAN;
        let inf = f32::INFINITY;
        let ninf = f32::NEG_INFINITY;
        let cases: Vec<Vec<f32>> = vec![
            vec![nan, 1.0, nan, 0.5],
            vec![nan, nan, nan],
            vec![ninf, ninf],
            vec![0.0, inf, 1.0, inf],
            vec![ninf, 2.0, nan, inf],
            vec![],
        ];
        let configs = [
            SamplingParams {
                temperature: 0.0,
                ..params()
            },
            params(),
            SamplingParams {
                top_k: 2,
                top_p: 0.5,
                min_p: 0.1,
                repetition_penalty: 1.3,
                presence_penalty: 0.5,
                frequency_penalty: 0.5,
                top_logprobs: Some(3),
                ..params()
            },
        ];
        for cfg in configs {
            for logits in &cases {
                let mut s = Sampler::new(cfg.clone());
                for _ in 0..20 {
                    let (t, lp) = s.sample(logits, &[0, 1], &[1]);
                    assert!(logits.is_empty() || (t as usize) < logits.len());
                    if let Some(lp) = lp {
                        assert!(lp.logprob.is_finite());
                        assert!(lp.top.iter().all(|e| e.1.is_finite()));
                    }
                }
            }
        }
        // NaN is never chosen when something else is available, +inf always wins.
        let mut s = Sampler::new(params());
        for _ in 0..50 {
            assert_eq!(s.sample(&[nan, 1.0, nan], &[], &[]).0, 1);
            let t = s.sample(&[0.0, inf, 1.0, inf], &[], &[]).0;
            assert!(t == 1 || t == 3);
        }
        let lp = token_logprob(&[0.0, inf, 1.0, inf], 1, 4);
        assert!(close(lp.logprob as f64, -(2f64.ln()), 1e-6));
        let lp = token_logprob(&[nan, 0.0], 0, 0);
        assert_eq!(lp.logprob, LOGPROB_FLOOR);
    }
}
