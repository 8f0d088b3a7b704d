//! Batching invariants of `Model::forward` on SmolLM2: a flattened batch of 3 sequences of
//! different lengths (prefill mixed with decode steps) gives the same logits as each sequence
//! run alone, and a prompt prefilled in 2 chunks gives the same logits as one-shot prefill.
//! Tolerance: |a - b| <= 1e-4 * max(1, |b|) per logit.

mod common;

use govlm_inference::model::{LogitRows, Model, SeqBatch};

fn load() -> Model {
    common::load_model("SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn rows(t: candle_core::Tensor) -> Vec<Vec<f32>> {
    t.to_vec2::<f32>().expect("logits")
}

fn assert_close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: length");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-4 * y.abs().max(1.0),
            "{what}: logit {i}: {x} vs {y}"
        );
    }
}

#[test]
fn flattened_batch_equals_sequences_alone() {
    let model = load();
    let a: Vec<u32> = vec![1, 504, 1463, 282, 14469, 14442, 506, 1986];
    let b: Vec<u32> = vec![1, 35097, 8957, 355, 7473];
    let c: Vec<u32> = vec![1, 378, 23962, 52, 30, 27, 2, 33, 1456, 6033, 28];
    // Steps: (a tokens, b tokens, c tokens) fed per forward call.
    let plan: [(
        std::ops::Range<usize>,
        std::ops::Range<usize>,
        std::ops::Range<usize>,
    ); 3] = [(0..6, 0..3, 0..0), (6..7, 3..5, 0..9), (7..8, 5..5, 9..11)];
    let seqs = [&a, &b, &c];

    // Each sequence alone, step by step with the same chunking.
    let mut alone: Vec<Vec<Vec<f32>>> = vec![Vec::new(); 3];
    for (si, s) in seqs.iter().enumerate() {
        let mut cache = model.new_kv_cache(32).expect("cache");
        for step in &plan {
            let r = [step.0.clone(), step.1.clone(), step.2.clone()][si].clone();
            if r.is_empty() {
                continue;
            }
            let out = model
                .forward(&mut [SeqBatch {
                    tokens: &s[r],
                    cache: &mut cache,
                    logits: LogitRows::All,
                }])
                .expect("forward alone");
            alone[si].extend(rows(out));
        }
    }

    // All together, one forward per step.
    let mut caches: Vec<_> = (0..3)
        .map(|_| model.new_kv_cache(32).expect("cache"))
        .collect();
    let mut together: Vec<Vec<Vec<f32>>> = vec![Vec::new(); 3];
    for step in &plan {
        let ranges = [step.0.clone(), step.1.clone(), step.2.clone()];
        let mut batch = Vec::new();
        let mut order = Vec::new();
        for (si, (cache, r)) in caches.iter_mut().zip(ranges.iter()).enumerate() {
            if r.is_empty() {
                continue;
            }
            // Sequence 1 asks only for its last row: check the row selection too.
            let logits = if si == 1 {
                LogitRows::Last
            } else {
                LogitRows::All
            };
            order.push((si, if si == 1 { 1 } else { r.len() }, r.len()));
            batch.push(SeqBatch {
                tokens: &seqs[si][r.clone()],
                cache,
                logits,
            });
        }
        let out = rows(model.forward(&mut batch).expect("forward batch"));
        let mut at = 0;
        for (si, n_rows, n_tok) in order {
            if si == 1 {
                // Pad with the alone rows we skip so indices line up.
                let before = together[1].len();
                together[1].extend(alone[1][before..before + n_tok - 1].iter().cloned());
            }
            together[si].extend(out[at..at + n_rows].iter().cloned());
            at += n_rows;
        }
        assert_eq!(at, out.len(), "row count");
    }
    for si in 0..3 {
        assert_eq!(alone[si].len(), together[si].len(), "seq {si} rows");
        for (i, (x, y)) in together[si].iter().zip(&alone[si]).enumerate() {
            assert_close(x, y, &format!("seq {si} token {i}"));
        }
        assert_eq!(caches[si].len(), seqs[si].len());
    }
}

#[test]
fn chunked_prefill_equals_one_shot() {
    let model = load();
    let prompt: Vec<u32> = vec![
        1, 504, 1463, 282, 14469, 14442, 506, 1986, 351, 3275, 314, 6319, 411,
    ];
    let mut c1 = model.new_kv_cache(prompt.len() + 1).expect("cache");
    let one = rows(
        model
            .forward(&mut [SeqBatch {
                tokens: &prompt,
                cache: &mut c1,
                logits: LogitRows::All,
            }])
            .expect("one shot"),
    );
    let mut c2 = model.new_kv_cache(prompt.len() + 1).expect("cache");
    let none = model
        .forward(&mut [SeqBatch {
            tokens: &prompt[..5],
            cache: &mut c2,
            logits: LogitRows::None,
        }])
        .expect("chunk 1");
    assert_eq!(none.dims(), &[0, model.config().vocab_size]);
    let two = rows(
        model
            .forward(&mut [SeqBatch {
                tokens: &prompt[5..],
                cache: &mut c2,
                logits: LogitRows::All,
            }])
            .expect("chunk 2"),
    );
    assert_eq!(two.len(), prompt.len() - 5);
    for (i, row) in two.iter().enumerate() {
        assert_close(row, &one[5 + i], &format!("token {}", 5 + i));
    }
    // Then one decode step from each cache agrees too.
    let next = [one.len() as u32 + 100];
    let a = rows(
        model
            .forward(&mut [SeqBatch {
                tokens: &next,
                cache: &mut c1,
                logits: LogitRows::Last,
            }])
            .expect("decode"),
    );
    let b = rows(
        model
            .forward(&mut [SeqBatch {
                tokens: &next,
                cache: &mut c2,
                logits: LogitRows::Last,
            }])
            .expect("decode"),
    );
    assert_close(&a[0], &b[0], "decode after prefill");
    // A full cache is an error, not a panic.
    assert!(model
        .forward(&mut [SeqBatch {
            tokens: &next,
            cache: &mut c1,
            logits: LogitRows::Last
        }])
        .is_err());
}
