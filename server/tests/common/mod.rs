//! Shared helpers of the end-to-end tests: a real server on 127.0.0.1:0 with a real model.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::mpsc;

use govlm_inference::config::{DeviceSpec, ResolvedModel, SchedulerConfig, Source};
use govlm_inference::engine::EngineHandle;
use govlm_server::{router, AppState};
use serde_json::Value;

/// A model file under models/; panics if it is missing.
pub fn model_path(file: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("models")
        .join(file);
    assert!(
        p.is_file(),
        "model file {} is missing: run `make models` first",
        p.display()
    );
    p
}

/// A ResolvedModel for a GGUF under models/.
pub fn resolved(
    id: &str,
    file: &str,
    chat_template: Source,
    context_length: usize,
) -> ResolvedModel {
    ResolvedModel {
        id: id.to_string(),
        gguf: model_path(file),
        tokenizer: Source::Gguf,
        chat_template,
        context_length: Some(context_length),
        device: DeviceSpec::Cpu,
        max_waiting: 64,
        scheduler: SchedulerConfig::defaults_for(DeviceSpec::Cpu),
    }
}

/// A running server and the engine it serves (for its tokenizer).
pub struct TestServer {
    pub base: String,
    pub engine: EngineHandle,
}

/// Starts the real router on a free port in a thread with its own runtime; lives until the test
/// process exits.
pub fn start(model: ResolvedModel, max_body_bytes: usize) -> TestServer {
    let registry = prometheus::Registry::new();
    let engine = EngineHandle::spawn_with_registry(&model, &registry).expect("model loads");
    let mut state = AppState::with_registry(vec![engine.clone()], registry);
    state.max_body_bytes = max_body_bytes;
    let base = serve(state);
    TestServer { base, engine }
}

/// Serves `state` with the real router on a free port, in a thread with its own runtime (lives
/// until the test process exits); returns the base URL.
pub fn serve(state: AppState) -> String {
    serve_with(state, |s| async move { s })
}

/// [`serve`], after `setup` has adapted the state on the server's runtime (for services that
/// must start there, such as the Batch API).
pub fn serve_with<F, Fut>(state: AppState, setup: F) -> String
where
    F: FnOnce(AppState) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = AppState>,
{
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let state = setup(state).await;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(listener.local_addr().expect("addr"))
                .expect("send addr");
            axum::serve(listener, router(state)).await.expect("serve");
        });
    });
    let addr = rx.recv().expect("server started");
    format!("http://{addr}")
}

/// POSTs JSON; returns status and parsed body.
pub async fn post(base: &str, path: &str, body: &Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let v =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON body ({status}): {text}"));
    (status, v)
}

/// POSTs raw bytes as JSON content.
pub async fn post_raw(base: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let v =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON body ({status}): {text}"));
    (status, v)
}

/// POSTs a streaming request; returns the `data:` payloads in order (including `[DONE]`).
pub async fn post_stream(base: &str, path: &str, body: &Value) -> Vec<String> {
    let resp = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(ct.starts_with("text/event-stream"), "content-type {ct}");
    let text = resp.text().await.expect("body");
    let mut out = Vec::new();
    for event in text.split("\n\n") {
        for line in event.lines() {
            if let Some(d) = line.strip_prefix("data: ") {
                out.push(d.to_string());
            } else if let Some(d) = line.strip_prefix("data:") {
                out.push(d.to_string());
            }
        }
    }
    out
}

/// Asserts an OpenAI-shaped error with the given status and param.
pub fn assert_error(status: u16, body: &Value, want_status: u16, want_param: Option<&str>) {
    assert_eq!(status, want_status, "{body}");
    let err = &body["error"];
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(err["type"].is_string(), "{body}");
    assert!(
        err.get("param").is_some() && err.get("code").is_some(),
        "{body}"
    );
    match want_param {
        Some(p) => assert_eq!(err["param"], p, "{body}"),
        None => assert!(err["param"].is_null(), "{body}"),
    }
}
