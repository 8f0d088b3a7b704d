//! Batch invariance, bit for bit: a sequence's logits do not depend on what else shares its
//! forward pass. Greedy decoding (and seeded sampling) of a request must give the same tokens
//! alone and under load, and near-ties make any numeric drift visible as a different token, so
//! the check here is exact equality, not a tolerance. Run on all three architectures, with the
//! other rows including a long prefill (more than 32 rows) and single-token decodes.

mod common;

use govlm_inference::model::{LogitRows, SeqBatch};

use common::load_model as load;

fn row(t: candle_core::Tensor, i: usize) -> Vec<f32> {
    t.get(i).expect("row").to_vec1::<f32>().expect("logits")
}

fn check(file: &str) {
    let model = load(file);
    let vocab = model.config().vocab_size as u32;
    let prompt: Vec<u32> = (0..7).map(|i| (300 + 17 * i) % vocab).collect();
    let other_prompt: Vec<u32> = (0..40).map(|i| (500 + 13 * i) % vocab).collect();
    let steps = 6usize;

    // Alone: prefill, then single-token decodes of fixed inputs.
    let inputs: Vec<u32> = (0..steps as u32).map(|i| (900 + 31 * i) % vocab).collect();
    let mut cache = model.new_kv_cache(64).expect("cache");
    let mut alone = vec![row(
        model
            .forward(&mut [SeqBatch {
                tokens: &prompt,
                cache: &mut cache,
                logits: LogitRows::Last,
            }])
            .expect("fwd"),
        0,
    )];
    for &t in &inputs {
        let out = model
            .forward(&mut [SeqBatch {
                tokens: &[t],
                cache: &mut cache,
                logits: LogitRows::Last,
            }])
            .expect("fwd");
        alone.push(row(out, 0));
    }

    // Together: at step 0 another sequence decodes beside our prefill; at step 2 a 40-token prefill
    // joins our decode; then both decode.
    let mut cache = model.new_kv_cache(64).expect("cache");
    let mut other_cache = model.new_kv_cache(128).expect("cache");
    let warm = [7u32 % vocab, 8 % vocab, 9 % vocab];
    model
        .forward(&mut [SeqBatch {
            tokens: &warm,
            cache: &mut other_cache,
            logits: LogitRows::None,
        }])
        .expect("fwd");
    let mut other_input = vec![11 % vocab];
    let mut together = Vec::new();
    for step in 0..=steps {
        let ours: Vec<u32> = if step == 0 {
            prompt.clone()
        } else {
            vec![inputs[step - 1]]
        };
        let theirs: Vec<u32> = if step == 2 {
            other_prompt.clone()
        } else {
            other_input.clone()
        };
        let out = model
            .forward(&mut [
                SeqBatch {
                    tokens: &theirs,
                    cache: &mut other_cache,
                    logits: LogitRows::All,
                },
                SeqBatch {
                    tokens: &ours,
                    cache: &mut cache,
                    logits: LogitRows::Last,
                },
            ])
            .expect("fwd");
        together.push(row(out, theirs.len()));
        other_input = vec![(40 + step as u32) % vocab];
    }
    for (step, (a, t)) in alone.iter().zip(&together).enumerate() {
        let diff = a
            .iter()
            .zip(t)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            diff == 0.0,
            "{file}: step {step}: logits differ alone vs batched (max abs diff {diff})"
        );
    }
}

#[test]
fn smollm2_logits_do_not_depend_on_the_batch() {
    check("SmolLM2-135M-Instruct.Q4_1.gguf");
}

#[test]
fn qwen2_logits_do_not_depend_on_the_batch() {
    check("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
}

#[test]
fn gemma3_logits_do_not_depend_on_the_batch() {
    check("gemma-3-270m-q4_k_m.gguf");
}
