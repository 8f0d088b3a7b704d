//! Single-sequence throughput measurement, like llama-bench's `pp` (prompt processing) and `tg`
//! (text generation) tests.

use std::fmt;
use std::time::Instant;

use crate::model::{LogitRows, Model, ModelError, SeqBatch};

/// Results of [`run_bench`]. Rates are tokens per second, mean over repetitions.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Prompt length of the prefill test (tokens).
    pub prompt_tokens: usize,
    /// Number of single-token decode steps of the decode test.
    pub gen_tokens: usize,
    pub repetitions: usize,
    /// Prefill: `prompt_tokens` / time of one forward pass over the whole prompt.
    pub prefill_tokens_per_s: f64,
    /// Standard deviation of the prefill rate over repetitions.
    pub prefill_stddev: f64,
    /// Decode: `gen_tokens` / time of `gen_tokens` single-token forward passes (after a
    /// 1-token context), logits for each step.
    pub decode_tokens_per_s: f64,
    pub decode_stddev: f64,
    /// Threads of candle's CPU pool.
    pub threads: usize,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prompt_tokens > 0 {
            writeln!(
                f,
                "pp{:<5} {:>9.2} ± {:>6.2} tokens/s  ({} threads, {} reps)",
                self.prompt_tokens,
                self.prefill_tokens_per_s,
                self.prefill_stddev,
                self.threads,
                self.repetitions
            )?;
        }
        if self.gen_tokens > 0 {
            writeln!(
                f,
                "tg{:<5} {:>9.2} ± {:>6.2} tokens/s  ({} threads, {} reps)",
                self.gen_tokens,
                self.decode_tokens_per_s,
                self.decode_stddev,
                self.threads,
                self.repetitions
            )?;
        }
        Ok(())
    }
}

fn mean_std(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (0.0, 0.0);
    }
    let m = xs.iter().sum::<f64>() / xs.len() as f64;
    let v = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / xs.len() as f64;
    (m, v.sqrt())
}

/// Measures prefill and decode speed for one sequence.
///
/// Prefill: one forward pass over `prompt_tokens` tokens (logits for the last row only).
/// Decode: `gen_tokens` forward passes of one token each, starting after a 1-token context.
/// Tokens are arbitrary ids below the vocabulary size. One untimed warm-up run precedes the
/// `repetitions` timed runs (at least 1). Either count may be 0 to skip that test.
/// Errors: those of [`Model::forward`].
pub fn run_bench(
    model: &Model,
    prompt_tokens: usize,
    gen_tokens: usize,
    repetitions: usize,
) -> Result<BenchReport, ModelError> {
    let reps = repetitions.max(1);
    let vocab = model.config().vocab_size as u32;
    let token = |i: usize| (1000 + 7 * i as u32) % vocab;
    let prompt: Vec<u32> = (0..prompt_tokens).map(token).collect();
    let mut pp = Vec::new();
    let mut tg = Vec::new();
    for rep in 0..=reps {
        if prompt_tokens > 0 {
            let mut cache = model.new_kv_cache(prompt_tokens)?;
            let t = Instant::now();
            model.forward(&mut [SeqBatch {
                tokens: &prompt,
                cache: &mut cache,
                logits: LogitRows::Last,
            }])?;
            let dt = t.elapsed().as_secs_f64();
            if rep > 0 {
                pp.push(prompt_tokens as f64 / dt);
            }
        }
        if gen_tokens > 0 {
            let mut cache = model.new_kv_cache(gen_tokens + 1)?;
            model.forward(&mut [SeqBatch {
                tokens: &[token(0)],
                cache: &mut cache,
                logits: LogitRows::Last,
            }])?;
            let t = Instant::now();
            for i in 0..gen_tokens {
                let tok = [token(i + 1)];
                model.forward(&mut [SeqBatch {
                    tokens: &tok,
                    cache: &mut cache,
                    logits: LogitRows::Last,
                }])?;
            }
            let dt = t.elapsed().as_secs_f64();
            if rep > 0 {
                tg.push(gen_tokens as f64 / dt);
            }
        }
    }
    let (pm, ps) = mean_std(&pp);
    let (tm, ts) = mean_std(&tg);
    Ok(BenchReport {
        prompt_tokens,
        gen_tokens,
        repetitions: reps,
        prefill_tokens_per_s: pm,
        prefill_stddev: ps,
        decode_tokens_per_s: tm,
        decode_stddev: ts,
        threads: candle_core::utils::barrier_pool().n_workers() + 1,
    })
}
