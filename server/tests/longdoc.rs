//! Map-reduce summarisation of a long document (`POST /v1/summarize`) with SmolLM2-135M
//! configured to a small context (1024 tokens), so that the shared LegCo speech needs many chunks.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::{assert_error, post};
use govlm_inference::config::ServeConfig;
use govlm_inference::engine::EngineHandle;
use govlm_server::prompts::{repo_prompts_dir, PromptLibrary};
use govlm_server::AppState;
use serde_json::json;

const CONTEXT: usize = 1024;

/// A server for a temp models.toml with `context_length = 1024`.
fn start() -> String {
    let gguf = common::model_path("SmolLM2-135M-Instruct.Q4_1.gguf");
    let dir = std::env::temp_dir().join(format!("govlm-longdoc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let toml_path = dir.join("models.toml");
    std::fs::write(
        &toml_path,
        format!(
            "[[models]]\nid = \"smollm2-small-context\"\ngguf = \"{}\"\ncontext_length = {CONTEXT}\ndevice = \"cpu\"\n",
            gguf.display()
        ),
    )
    .expect("write models.toml");
    let cfg = ServeConfig::load(&toml_path).expect("models.toml parses");
    let resolved = cfg.resolve(&toml_path).expect("models.toml resolves");
    assert_eq!(resolved[0].context_length, Some(CONTEXT));
    let engine = EngineHandle::spawn(&resolved[0]).expect("model loads");
    let mut state = AppState::new(vec![engine]);
    state.prompts = Arc::new(PromptLibrary::load(&repo_prompts_dir()).expect("prompts load"));
    common::serve(state)
}

/// The first paragraphs (about 1 200 characters, many times the chunk budget for SmolLM2's
/// tokenizer) of the shared LegCo speech; the whole speech takes minutes on 2 CPU cores.
fn document() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/documents/legco-smart-government-closing-speech.zh-Hant.txt");
    let full = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut out = String::new();
    for para in full.split_inclusive('\n') {
        if out.chars().count() > 1200 {
            break;
        }
        out.push_str(para);
    }
    out
}

#[tokio::test]
async fn long_document_is_summarised_by_map_reduce() {
    let base = start();
    let doc = document();
    let (st, v) = post(
        &base,
        "/v1/summarize",
        &json!({"document": doc, "style": "short_summary", "language": "en", "max_tokens": 24, "temperature": 0}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    eprintln!(
        "chunks {} rounds {} budget {} chunk_tokens {} usage {}",
        v["chunks"], v["rounds"], v["chunk_budget"], v["chunk_tokens"], v["usage"]
    );
    let chunks = v["chunks"].as_u64().unwrap();
    assert!(chunks > 1, "{v}");
    let budget = v["chunk_budget"].as_u64().unwrap();
    assert!(budget > 0 && (budget as usize) < CONTEXT);
    let tokens: Vec<u64> = v["chunk_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    assert_eq!(tokens.len() as u64, chunks);
    assert!(
        tokens.iter().all(|&t| t > 0 && t <= budget),
        "{tokens:?} over {budget}"
    );
    assert!(v["rounds"].as_u64().unwrap() >= 2, "{v}");
    assert!(!v["summary"].as_str().unwrap().trim().is_empty(), "{v}");
    let usage = &v["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > tokens.iter().sum::<u64>());
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
        )
    );
    // Chinese is detected as the language when none is given; a short document is one chunk.
    let (st, v) = post(
        &base,
        "/v1/summarize",
        &json!({"document": "政府今日宣布在沙田開設新圖書館。", "style": "key_points", "max_tokens": 8}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["chunks"], 1);
    assert_eq!(v["rounds"], 1);
    assert_eq!(v["language"], "zh-Hant");

    // Errors name the field.
    let (st, v) = post(
        &base,
        "/v1/summarize",
        &json!({"document": "x", "style": "poem"}),
    )
    .await;
    assert_error(st, &v, 400, Some("style"));
    let (st, v) = post(&base, "/v1/summarize", &json!({"document": "  "})).await;
    assert_error(st, &v, 400, Some("document"));
    let (st, v) = post(&base, "/v1/summarize", &json!({"style": "short_summary"})).await;
    assert_error(st, &v, 400, Some("document"));
    let (st, v) = post(
        &base,
        "/v1/summarize",
        &json!({"document": "x", "max_tokens": 1000}),
    )
    .await;
    assert_error(st, &v, 400, Some("max_tokens"));
}
