//! Our forward pass against references on the real model files.
//!
//! - `greedy_*`: for each model, the 6 prompts of `shared/data/reference/llama_cpp_greedy.jsonl`
//!   (llama.cpp's prompt token ids and its 32 greedy output ids on the same GGUF) are decoded
//!   greedily (argmax, lowest id on ties) with our forward pass. Every miss prints the position
//!   and the logit margin between our top two tokens at the first divergence (a near-tie
//!   explains a miss; a large margin is a bug). Required: SmolLM2 5 of 6 prompts; Qwen2.5 4 of 6
//!   and Gemma 3 3 of 6, with every miss at a near-tie (top-2 margin below 0.5).
//!   Why not more: the reference ids depend on llama.cpp's own attention kernel choice. Measured
//!   on this machine with the same llama.cpp (llama-server, 2 threads, `--no-repack`) against the
//!   reference file: Qwen2.5 6/6 with flash attention (its default) and 4/6 without (the same two
//!   prompts we miss); SmolLM2 6/6 and 3/6; Gemma 3 3/6 and 2/6, so the Gemma reference is not
//!   reproducible by llama.cpp itself here. Its CPU flash attention rounds Q, K and V to f16 and
//!   accumulates the weighted V sum in f16; emulating that bit for bit (including the AVX-512
//!   reduction order of its f16 dot product) makes our layers 0-3 agree with llama.cpp's to about
//!   1e-6 relative (llama-eval-callback sums), after which Q8 activation rounding flips in the
//!   Q5_0/Q8_0 matmuls grow the gap to 1e-4 by layer 4 and the near-ties fall differently again
//!   (2-3 of 6). We keep f32 keys, values and softmax: the more accurate choice, and the misses
//!   stay at margins of 0.02-0.36 logits.
//! - `logits_vs_candle_*`: last-row logits of a prompt against candle-transformers'
//!   `quantized_llama` (SmolLM2) and `quantized_qwen2` (Qwen2.5) on the same GGUF. Tolerance:
//!   max |ours - ref| <= 5% (SmolLM2) / 3% (Qwen2.5) of the reference logit range (max - min),
//!   and the same argmax. Measured: about 4.2% / 2%. Both sides use the same weights exactly;
//!   the difference is activation quantization: we quantize activations to Q8_0 and add the
//!   Q4_1 block minimum times the exact f32 block sum, candle (like llama.cpp) uses Q8_1
//!   activations for Q4_1, and the gap compounds over 30 layers.
//!   Gemma 3 has no correct upstream reference (candle's file uses SiLU instead of GELU), so it
//!   is checked by the llama.cpp greedy ids only.

use std::fs::File;

mod common;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use govlm_inference::model::{LogitRows, Model, SeqBatch};

use common::{load_model as load, model_path, top2};

struct Case {
    prompt: String,
    prompt_ids: Vec<u32>,
    output_ids: Vec<u32>,
}

fn cases(file: &str) -> Vec<Case> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/reference/llama_cpp_greedy.jsonl"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let out: Vec<Case> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
        .filter(|v| v["model_file"] == file)
        .map(|v| Case {
            prompt: v["prompt"].as_str().unwrap_or_default().to_string(),
            prompt_ids: serde_json::from_value(v["prompt_token_ids"].clone()).expect("prompt ids"),
            output_ids: serde_json::from_value(v["output_token_ids"].clone()).expect("output ids"),
        })
        .collect();
    assert_eq!(out.len(), 6, "expected 6 reference prompts for {file}");
    out
}

fn greedy(file: &str, min_matches: usize, max_miss_margin: f32) {
    let model = load(file);
    let mut matched = 0;
    let mut report = Vec::new();
    for case in cases(file) {
        let n_out = case.output_ids.len();
        let mut cache = model
            .new_kv_cache(case.prompt_ids.len() + n_out)
            .expect("cache");
        let mut logits = model
            .forward(&mut [SeqBatch {
                tokens: &case.prompt_ids,
                cache: &mut cache,
                logits: LogitRows::Last,
            }])
            .expect("prefill");
        let mut miss = None;
        let mut miss_margin = 0f32;
        for (pos, &want) in case.output_ids.iter().enumerate() {
            let row: Vec<f32> = logits
                .squeeze(0)
                .and_then(|r| r.to_vec1())
                .expect("logits row");
            let (got, margin) = top2(&row);
            if got != want {
                miss_margin = margin;
                miss = Some(format!(
                    "first divergence at output position {pos}: ours {got} (logit {:.4}), llama.cpp {want} \
                     (our logit {:.4}); our top-2 margin {margin:.4}",
                    row[got as usize], row[want as usize]
                ));
                break;
            }
            if pos + 1 < n_out {
                logits = model
                    .forward(&mut [SeqBatch {
                        tokens: &[got],
                        cache: &mut cache,
                        logits: LogitRows::Last,
                    }])
                    .expect("decode");
            }
        }
        match miss {
            None => {
                matched += 1;
                report.push(format!("  match: {:?}", case.prompt));
            }
            Some(m) => {
                report.push(format!("  MISS:  {:?}: {m}", case.prompt));
                assert!(
                    miss_margin < max_miss_margin,
                    "{file}: {:?} diverges with a top-2 margin of {miss_margin} (not a near-tie): {m}",
                    case.prompt
                );
            }
        }
    }
    eprintln!(
        "{file}: {matched}/6 prompts match llama.cpp's 32 greedy tokens\n{}",
        report.join("\n")
    );
    assert!(
        matched >= min_matches,
        "{file}: only {matched}/6 prompts match\n{}",
        report.join("\n")
    );
}

#[test]
fn greedy_smollm2_matches_llama_cpp() {
    greedy("SmolLM2-135M-Instruct.Q4_1.gguf", 5, f32::INFINITY);
}

#[test]
fn greedy_qwen2_matches_llama_cpp() {
    greedy("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", 4, 0.5);
}

#[test]
fn greedy_gemma3_matches_llama_cpp() {
    greedy("gemma-3-270m-q4_k_m.gguf", 3, 0.5);
}

fn compare_last_row(ours: &[f32], reference: &[f32], what: &str, tol: f32) {
    assert_eq!(ours.len(), reference.len(), "{what}: vocab size");
    let max = reference.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let min = reference.iter().copied().fold(f32::INFINITY, f32::min);
    let range = max - min;
    let max_diff = ours
        .iter()
        .zip(reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let (a1, _) = top2(ours);
    let (a2, m2) = top2(reference);
    eprintln!(
        "{what}: max |diff| {max_diff:.4} = {:.3}% of range {range:.2}; argmax ours {a1} ref {a2} (ref margin {m2:.3})",
        100.0 * max_diff / range
    );
    assert!(
        max_diff <= tol * range,
        "{what}: logits differ by {max_diff} (range {range})"
    );
    assert_eq!(a1, a2, "{what}: argmax differs");
}

fn our_last_logits(model: &Model, ids: &[u32]) -> Vec<f32> {
    let mut cache = model.new_kv_cache(ids.len()).expect("cache");
    let t = model
        .forward(&mut [SeqBatch {
            tokens: ids,
            cache: &mut cache,
            logits: LogitRows::Last,
        }])
        .expect("forward");
    t.squeeze(0).and_then(|r| r.to_vec1()).expect("row")
}

/// Last-row logits of a candle-transformers reference model on the same file and prompt.
fn reference_last_row(
    file: &str,
    ids: &[u32],
    forward: impl FnOnce(gguf_file::Content, &mut File, &Tensor) -> Tensor,
) -> Vec<f32> {
    let mut f = File::open(model_path(file)).expect("open");
    let content = gguf_file::Content::read(&mut f).expect("gguf");
    let input = Tensor::new(ids, &Device::Cpu)
        .and_then(|t| t.unsqueeze(0))
        .expect("input");
    forward(content, &mut f, &input)
        .flatten_all()
        .and_then(|t| t.to_vec1())
        .expect("reference row")
}

#[test]
fn logits_vs_candle_quantized_llama() {
    use candle_transformers::models::quantized_llama::ModelWeights;
    let file = "SmolLM2-135M-Instruct.Q4_1.gguf";
    let ids = cases(file).remove(0).prompt_ids;
    let ours = our_last_logits(&load(file), &ids);
    let r = reference_last_row(file, &ids, |content, f, input| {
        let mut m = ModelWeights::from_gguf(content, f, &Device::Cpu).expect("reference model");
        m.forward(input, 0).expect("reference forward")
    });
    compare_last_row(&ours, &r, file, 0.05);
}

#[test]
fn logits_vs_candle_quantized_qwen2() {
    use candle_transformers::models::quantized_qwen2::ModelWeights;
    let file = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
    let ids = cases(file).remove(0).prompt_ids;
    let ours = our_last_logits(&load(file), &ids);
    let r = reference_last_row(file, &ids, |content, f, input| {
        let mut m = ModelWeights::from_gguf(content, f, &Device::Cpu).expect("reference model");
        m.forward(input, 0).expect("reference forward")
    });
    compare_last_row(&ours, &r, file, 0.03);
}
