//! Per-token cost of structured output (constrained decoding) against an unconstrained sampling
//! step on the same logits row, on the default model's tokenizer (Qwen2.5, 151,936 rows).
//!
//! `cargo bench -p govlm-inference --bench structured`
//!
//! The constrained runs replay a fixed, schema-valid hotline case record token by token: each
//! step computes the grammar mask, applies it to a copy of the logits row, samples, and advances
//! the grammar with the record's next token. Benchmarks (criterion; per-token figures are
//! `time / tokens`, shown as `thrpt` in elements per second):
//! - `sample/greedy`, `sample/t0.7_p0.9`: one unconstrained sampling step.
//! - `mask_only`: grammar mask + masked copy + grammar advance per token, no sampling.
//! - `constrained/greedy`, `constrained/t0.7_p0.9`: the whole constrained step per token.
//!
//! Before criterion runs, a short summary (build time of the per-model compiler, per-token
//! means and the ratio constrained / unconstrained) is printed from a plain timing loop.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file;
use criterion::{BenchmarkId, Criterion, Throughput};
use govlm_inference::sampling::{Sampler, SamplingParams};
use govlm_inference::structured::{
    unusable_token_ids, Constraint, ResponseFormat, StructuredCompiler,
};
use govlm_inference::tokenizer::Tokenizer;
use serde_json::json;

const MODEL: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

/// A case record valid against [`schema`], in the compact form the grammar generates.
const RECORD: &str = r#"{"summary_en": "The caller complained that rubbish has piled up for a week outside Pei Ho Street market in Sham Shui Po, with rats at night.", "summary_zh_hant": "來電者投訴深水埗北河街街市外垃圾堆積一星期無人清理，晚上有老鼠出沒。", "case_type": "complaint", "department": "FEHD", "district": "Sham Shui Po", "location": "Pei Ho Street market, near Kweilin Street", "time_mentioned": "for a week", "urgency": "normal", "key_facts": ["rubbish piled up for a week", "rats at night", "near Kweilin Street"], "follow_up_requested": true}"#;

fn schema() -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {
            "summary_en": {"type": "string"},
            "summary_zh_hant": {"type": "string"},
            "case_type": {"enum": ["enquiry", "complaint", "suggestion", "compliment"]},
            "department": {"enum": ["FEHD", "HD", "TD", "HyD", "WSD", "BD", "LCSD", "SWD",
                "EMSD", "LandsD", "DSD", "EPD", "AFCD", "LD", "ImmD", "HKPF"]},
            "district": {"enum": ["Central and Western", "Wan Chai", "Eastern", "Southern",
                "Yau Tsim Mong", "Sham Shui Po", "Kowloon City", "Wong Tai Sin", "Kwun Tong",
                "Kwai Tsing", "Tsuen Wan", "Tuen Mun", "Yuen Long", "North", "Tai Po",
                "Sha Tin", "Sai Kung", "Islands", null]},
            "location": {"type": "string"},
            "time_mentioned": {"type": ["string", "null"]},
            "urgency": {"enum": ["low", "normal", "high"]},
            "key_facts": {"type": "array", "items": {"type": "string"}},
            "follow_up_requested": {"type": "boolean"}
        },
        "required": ["summary_en", "summary_zh_hant", "case_type", "department", "district",
            "location", "time_mentioned", "urgency", "key_facts", "follow_up_requested"],
        "additionalProperties": false
    })
}

/// A deterministic logits row shaped like a language model's: roughly normal (sigma 2) noise
/// with ~30 tokens far above it, so that top-p keeps a short list as it does on real output
/// (a flat row would make top-p sort the whole vocabulary).
fn logits_row(width: usize) -> Vec<f32> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut uniform = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..width)
        .map(|i| {
            let normal = (uniform() + uniform() + uniform() + uniform() - 2.0) * 3.5;
            if i % 5000 == 17 {
                normal + 14.0
            } else {
                normal
            }
        })
        .collect()
}

fn sampled() -> SamplingParams {
    SamplingParams {
        temperature: 0.7,
        top_p: 0.9,
        seed: Some(1),
        ..SamplingParams::default()
    }
}

fn greedy() -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        ..SamplingParams::default()
    }
}

/// One constrained pass over the record; `sampler: None` measures the mask alone.
fn replay(fresh: &Constraint, tokens: &[u32], logits: &[f32], sampler: Option<&mut Sampler>) {
    let mut c = fresh.clone();
    let mut sampler = sampler;
    for &t in tokens {
        let masked = c.mask_logits(logits).expect("mask");
        if let Some(s) = sampler.as_deref_mut() {
            std::hint::black_box(s.sample(masked, &[], &[]));
        } else {
            std::hint::black_box(masked[t as usize]);
        }
        c.consume(t).expect("the record is valid");
    }
    assert!(c.is_complete() || c.is_accepting());
}

fn mean_per_token(f: &mut dyn FnMut(), tokens: usize, min: Duration) -> Duration {
    let start = Instant::now();
    let mut runs = 0u32;
    while start.elapsed() < min || runs < 3 {
        f();
        runs += 1;
    }
    start.elapsed() / (runs * tokens as u32)
}

fn main() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models")
        .join(MODEL);
    let mut file = std::fs::File::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run `make models`)", path.display()));
    let content = gguf_file::Content::read(&mut file).expect("read GGUF");
    let tokenizer = Tokenizer::from_gguf(&content.metadata).expect("tokenizer");
    let excluded = unusable_token_ids(&content.metadata);
    let width = tokenizer.vocab_size();

    let t0 = Instant::now();
    let compiler = StructuredCompiler::new(&tokenizer, width, &excluded).expect("compiler");
    let build = t0.elapsed();
    let format = ResponseFormat::JsonSchema {
        name: Some("hotline_case".into()),
        schema: schema(),
        strict: true,
    };
    let t1 = Instant::now();
    let fresh = compiler.compile(&format).expect("compile");
    let compile = t1.elapsed();
    let tokens = tokenizer.encode(RECORD, false).expect("encode");
    let logits = logits_row(width);
    let n = tokens.len();

    // Plain timing summary.
    let mut g = Sampler::new(greedy());
    let mut s = Sampler::new(sampled());
    let min = Duration::from_secs(2);
    let greedy_step = mean_per_token(
        &mut || {
            for _ in 0..n {
                std::hint::black_box(g.sample(&logits, &[], &[]));
            }
        },
        n,
        min,
    );
    let sampled_step = mean_per_token(
        &mut || {
            for _ in 0..n {
                std::hint::black_box(s.sample(&logits, &[], &[]));
            }
        },
        n,
        min,
    );
    let mask_only = mean_per_token(&mut || replay(&fresh, &tokens, &logits, None), n, min);
    let mut g2 = Sampler::new(greedy());
    let constrained_greedy = mean_per_token(
        &mut || replay(&fresh, &tokens, &logits, Some(&mut g2)),
        n,
        min,
    );
    let mut s2 = Sampler::new(sampled());
    let constrained_sampled = mean_per_token(
        &mut || replay(&fresh, &tokens, &logits, Some(&mut s2)),
        n,
        min,
    );
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("structured output, {width}-row vocabulary, {n}-token hotline record:");
    println!(
        "  compiler build (trie + lexer slices): {:.0} ms",
        build.as_secs_f64() * 1e3
    );
    println!("  schema compile: {:.2} ms", compile.as_secs_f64() * 1e3);
    println!(
        "  unconstrained step, greedy:        {:8.1} us/token",
        us(greedy_step)
    );
    println!(
        "  unconstrained step, t=0.7 p=0.9:   {:8.1} us/token",
        us(sampled_step)
    );
    println!(
        "  mask only (mask + copy + advance): {:8.1} us/token",
        us(mask_only)
    );
    println!(
        "  constrained step, greedy:          {:8.1} us/token  ({:.1}x the unconstrained step)",
        us(constrained_greedy),
        us(constrained_greedy) / us(greedy_step)
    );
    println!(
        "  constrained step, t=0.7 p=0.9:     {:8.1} us/token  ({:.1}x the unconstrained step)",
        us(constrained_sampled),
        us(constrained_sampled) / us(sampled_step)
    );

    // Criterion.
    let mut c = Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    {
        let mut group = c.benchmark_group("sample");
        group.throughput(Throughput::Elements(1));
        group.bench_function("greedy", |b| {
            let mut smp = Sampler::new(greedy());
            b.iter(|| smp.sample(&logits, &[], &[]))
        });
        group.bench_function("t0.7_p0.9", |b| {
            let mut smp = Sampler::new(sampled());
            b.iter(|| smp.sample(&logits, &[], &[]))
        });
        group.finish();
    }
    {
        let mut group = c.benchmark_group("structured");
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new("mask_only", n), |b| {
            b.iter(|| replay(&fresh, &tokens, &logits, None))
        });
        group.bench_function(BenchmarkId::new("constrained_greedy", n), |b| {
            let mut smp = Sampler::new(greedy());
            b.iter(|| replay(&fresh, &tokens, &logits, Some(&mut smp)))
        });
        group.bench_function(BenchmarkId::new("constrained_t0.7_p0.9", n), |b| {
            let mut smp = Sampler::new(sampled());
            b.iter(|| replay(&fresh, &tokens, &logits, Some(&mut smp)))
        });
        group.finish();
    }
    c.final_summary();
}
