//! Gemma 3 (no chat template in its GGUF; the built-in "gemma" template) answers a chat with a
//! system message, and completions work for the base model.

mod common;

use common::{post, resolved, start};
use govlm_inference::chat_template::ChatMessage;
use govlm_inference::config::Source;
use serde_json::json;

#[tokio::test]
async fn gemma_chat_with_system_message() {
    let s = start(
        resolved("gemma", "gemma-3-270m-q4_k_m.gguf", Source::Gemma, 1024),
        1024 * 1024,
    );
    let body = json!({
        "model": "gemma",
        "messages": [
            {"role": "system", "content": "You answer in one word."},
            {"role": "user", "content": "What colour is the sky?"}
        ],
        "max_tokens": 8,
        "temperature": 0
    });
    let (status, v) = post(&s.base, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
    // The template writes <bos> itself: exactly one BOS, not two.
    let messages = [
        ChatMessage::new("system", "You answer in one word."),
        ChatMessage::new("user", "What colour is the sky?"),
    ];
    let rendered = s
        .engine
        .chat_template()
        .render(&messages, true, None)
        .unwrap();
    let bos = s.engine.tokenizer().bos_token().unwrap().to_string();
    assert!(rendered.starts_with(&bos), "{rendered}");
    let ids = s.engine.tokenizer().encode(&rendered, false).unwrap();
    assert_eq!(
        ids.iter()
            .filter(|&&i| Some(i) == s.engine.tokenizer().bos_token_id())
            .count(),
        1
    );
    assert_eq!(
        v["usage"]["prompt_tokens"].as_u64().unwrap() as usize,
        ids.len(),
        "{v}"
    );

    let (status, v) = post(
        &s.base,
        "/v1/completions",
        &json!({"model": "gemma", "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(v["choices"][0]["text"].is_string());
}
