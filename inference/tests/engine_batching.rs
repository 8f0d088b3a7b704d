//! The engine thread runs concurrent requests together in one flattened forward pass per step.
//! These tests check that batching never changes a result: greedy and seeded requests return the
//! same tokens alone and together with other, different requests.

mod common;

use common::{greedy, request};
use govlm_inference::config::{DeviceSpec, SchedulerConfig, Source};
use govlm_inference::engine::{EngineHandle, Event, FinishReason};
use govlm_inference::sampling::SamplingParams;

fn engine(file: &str) -> EngineHandle {
    common::spawn_engine(
        file,
        Source::Gemma,
        2048,
        SchedulerConfig::defaults_for(DeviceSpec::Cpu),
        64,
    )
}

/// Collects a request's events into (text, generated ids, finish reason); with EOS ignored,
/// usage counts exactly the generated tokens.
fn collect(rx: tokio::sync::mpsc::UnboundedReceiver<Event>) -> (String, Vec<u32>, FinishReason) {
    let (text, ids, reason, completion_tokens) = common::collect_with_usage(rx);
    assert_eq!(completion_tokens, ids.len());
    (text, ids, reason)
}

const PROMPTS: [&str; 5] = [
    "The history of Hong Kong",
    "Dear Sir or Madam,\n\nThank you for your letter of",
    "香港特別行政區政府",
    "A list of the planets of the solar system, in order from the Sun:",
    "def fibonacci(n):",
];

fn batch_equals_alone(file: &str) {
    let e = engine(file);
    let alone: Vec<_> = PROMPTS
        .iter()
        .enumerate()
        .map(|(i, p)| {
            collect(
                e.submit(request(&e, p, 12 + 3 * i, greedy()))
                    .expect("submit"),
            )
        })
        .collect();
    // All at once: different prompt lengths, so prefill and decode steps mix in one batch.
    let rxs: Vec<_> = PROMPTS
        .iter()
        .enumerate()
        .map(|(i, p)| {
            e.submit(request(&e, p, 12 + 3 * i, greedy()))
                .expect("submit")
        })
        .collect();
    let together: Vec<_> = rxs.into_iter().map(collect).collect();
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(
            a.1, t.1,
            "{file}: prompt {i} ({:?}) differs alone vs batched",
            PROMPTS[i]
        );
        assert_eq!(a.0, t.0);
        assert_eq!(a.2, FinishReason::Length);
    }
}

#[test]
fn smollm2_batch_equals_alone() {
    batch_equals_alone("SmolLM2-135M-Instruct.Q4_1.gguf");
}

#[test]
fn gemma3_batch_equals_alone() {
    batch_equals_alone("gemma-3-270m-q4_k_m.gguf");
}

#[test]
fn seeded_sampling_is_reproducible_under_load() {
    let e = engine("SmolLM2-135M-Instruct.Q4_1.gguf");
    let seeded = SamplingParams {
        temperature: 1.0,
        seed: Some(1234),
        ..SamplingParams::default()
    };
    let alone = collect(
        e.submit(request(&e, PROMPTS[0], 20, seeded.clone()))
            .expect("submit"),
    );
    let mut rxs = vec![e
        .submit(request(&e, PROMPTS[0], 20, seeded.clone()))
        .expect("submit")];
    for p in &PROMPTS[1..] {
        let other = SamplingParams {
            temperature: 1.0,
            seed: None,
            ..SamplingParams::default()
        };
        rxs.push(e.submit(request(&e, p, 20, other)).expect("submit"));
    }
    let mut results: Vec<_> = rxs.into_iter().map(collect).collect();
    assert_eq!(
        alone.1,
        results.remove(0).1,
        "seeded request changed under load"
    );
}

#[test]
fn dropped_receiver_cancels_and_engine_keeps_serving() {
    let e = engine("SmolLM2-135M-Instruct.Q4_1.gguf");
    let rx = e
        .submit(request(&e, PROMPTS[0], 500, greedy()))
        .expect("submit");
    drop(rx);
    let (_, ids, reason) = collect(
        e.submit(request(&e, PROMPTS[1], 5, greedy()))
            .expect("submit"),
    );
    assert_eq!((ids.len(), reason), (5, FinishReason::Length));
}

#[test]
fn stop_string_split_across_tokens_is_never_emitted() {
    let e = engine("SmolLM2-135M-Instruct.Q4_1.gguf");
    let (full, _, _) = collect(
        e.submit(request(&e, PROMPTS[0], 24, greedy()))
            .expect("submit"),
    );
    // A stop string that starts inside the output: the text must end right before it.
    let words: Vec<&str> = full.split_whitespace().collect();
    assert!(words.len() > 4, "greedy output too short: {full:?}");
    let stop = format!("{} {}", words[2], words[3]);
    let cut = full.find(&stop).expect("stop string present");
    let mut req = request(&e, PROMPTS[0], 24, greedy());
    req.stop = vec![stop.clone()];
    let (text, _, reason) = collect(e.submit(req).expect("submit"));
    assert_eq!(reason, FinishReason::Stop);
    assert_eq!(
        text,
        full[..cut],
        "text must end before the stop string {stop:?}"
    );
}

#[test]
fn prompt_logprobs_cover_every_prompt_token() {
    let e = engine("SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut req = request(&e, "The capital of France is Paris", 0, greedy());
    req.prompt_logprobs = Some(1);
    let n = req.prompt_ids.len();
    let mut rx = e.submit(req).expect("submit");
    match rx.blocking_recv() {
        Some(Event::PromptLogprobs(lp)) => {
            assert_eq!(lp.len(), n - 1);
            assert!(lp.iter().all(|t| t.logprob.is_finite() && t.logprob <= 0.0));
        }
        other => panic!("expected prompt logprobs, got {other:?}"),
    }
    match rx.blocking_recv() {
        Some(Event::Finished {
            reason,
            completion_tokens,
            prompt_tokens,
        }) => {
            assert_eq!(
                (reason, completion_tokens, prompt_tokens),
                (FinishReason::Length, 0, n)
            );
        }
        other => panic!("expected Finished, got {other:?}"),
    }
}

#[test]
fn character_cut_by_max_tokens_is_dropped_not_replaced() {
    // llama.cpp's 32 greedy tokens for this prompt on SmolLM2 end inside a multi-byte character
    // (see shared/data/reference); every max_tokens up to 32 must give clean text.
    let e = engine("SmolLM2-135M-Instruct.Q4_1.gguf");
    let (full, _, _) = collect(
        e.submit(request(&e, PROMPTS[2], 32, greedy()))
            .expect("submit"),
    );
    for max_tokens in [29, 30, 31, 32] {
        let (text, ids, _) = collect(
            e.submit(request(&e, PROMPTS[2], max_tokens, greedy()))
                .expect("submit"),
        );
        assert_eq!(ids.len(), max_tokens);
        assert!(
            !text.contains('\u{FFFD}'),
            "max_tokens {max_tokens}: {text:?}"
        );
        assert!(
            full.starts_with(&text),
            "{text:?} is not a prefix of {full:?}"
        );
    }
}
