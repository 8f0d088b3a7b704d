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
