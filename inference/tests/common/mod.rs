//! Helpers shared by the engine crate's end-to-end tests: model files installed by `make models`.
#![allow(dead_code)]

use std::fs::File;
use std::path::PathBuf;

use candle_core::quantized::gguf_file;
use candle_core::Device;
use govlm_inference::model::Model;

/// Path of an installed model file; panics with the fix when it is missing.
pub fn model_path(file: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models")
        .join(file);
    assert!(
        p.is_file(),
        "model file {} is missing: run `make models` first",
        p.display()
    );
    p
}

/// Loads a model file on the CPU.
pub fn load_model(file: &str) -> Model {
    let path = model_path(file);
    let mut f = File::open(&path).expect("open model file");
    let content = gguf_file::Content::read(&mut f).expect("read GGUF");
    Model::load(&content, &mut f, &Device::Cpu).expect("load model")
}

/// Starts an engine for an installed model file, served as `test` on the CPU, with a 2,048-token
/// context and `chat_template` (Gemma's template for models whose GGUF has none).
pub fn spawn_engine(
    file: &str,
    chat_template: govlm_inference::config::Source,
    context_length: usize,
    scheduler: govlm_inference::config::SchedulerConfig,
    max_waiting: usize,
) -> govlm_inference::engine::EngineHandle {
    use govlm_inference::config::{DeviceSpec, ResolvedModel, Source};
    govlm_inference::engine::EngineHandle::spawn(&ResolvedModel {
        id: "test".into(),
        gguf: model_path(file),
        tokenizer: Source::Gguf,
        chat_template,
        context_length: Some(context_length),
        device: DeviceSpec::Cpu,
        max_waiting,
        scheduler,
    })
    .expect("spawn engine")
}

/// A request for `prompt` (BOS added where the model wants it) that ignores EOS.
pub fn request(
    engine: &govlm_inference::engine::EngineHandle,
    prompt: &str,
    max_tokens: usize,
    sampling: govlm_inference::sampling::SamplingParams,
) -> govlm_inference::engine::GenerateRequest {
    govlm_inference::engine::GenerateRequest {
        prompt_ids: engine.tokenizer().encode(prompt, true).expect("encode"),
        max_tokens,
        sampling,
        stop: Vec::new(),
        stop_token_ids: Vec::new(),
        ignore_eos: true,
        prompt_logprobs: None,
        priority: Default::default(),
        constraint: None,
        output_script: None,
    }
}

/// Greedy decoding.
pub fn greedy() -> govlm_inference::sampling::SamplingParams {
    govlm_inference::sampling::SamplingParams {
        temperature: 0.0,
        ..Default::default()
    }
}

/// A request's events collected into (text, generated ids, finish reason, the usage's
/// completion tokens); panics on an engine error or a stream closed without `Finished`.
pub fn collect_with_usage(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<govlm_inference::engine::Event>,
) -> (
    String,
    Vec<u32>,
    govlm_inference::engine::FinishReason,
    usize,
) {
    use govlm_inference::engine::Event;
    let mut text = String::new();
    let mut ids = Vec::new();
    loop {
        match rx
            .blocking_recv()
            .expect("engine closed the stream without Finished")
        {
            Event::Delta { text: t, tokens } => {
                text.push_str(&t);
                ids.extend(tokens.iter().map(|t| t.id));
            }
            Event::Finished {
                reason,
                completion_tokens,
                ..
            } => return (text, ids, reason, completion_tokens),
            Event::PromptLogprobs(_) => {}
            Event::Error(e) => panic!("engine error: {e}"),
        }
    }
}

/// [`collect_with_usage`] without the usage count.
pub fn collect(
    rx: tokio::sync::mpsc::UnboundedReceiver<govlm_inference::engine::Event>,
) -> (String, Vec<u32>, govlm_inference::engine::FinishReason) {
    let (text, ids, reason, _) = collect_with_usage(rx);
    (text, ids, reason)
}

/// (argmax with lowest id on ties, margin between the top two logits).
pub fn top2(row: &[f32]) -> (u32, f32) {
    let mut best = 0usize;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    let second = row
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != best)
        .map(|(_, &v)| v)
        .fold(f32::NEG_INFINITY, f32::max);
    (best as u32, row[best] - second)
}
