//! End-to-end tests of `govlm-eval load` and `compare-load` against an in-process mock
//! OpenAI server that streams known chunks (split at odd byte boundaries, with small delays)
//! and answers 429/500 on a known cycle. Counts and error bookkeeping are asserted; timings
//! are not.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

/// Content chunks the mock sends when `ignore_eos` is not set.
const NATURAL_TOKENS: usize = 5;
/// Prompt tokens the mock reports.
const PROMPT_TOKENS: u64 = 7;

#[derive(Clone, Default)]
struct Mock {
    /// Completion requests received (all models).
    requests: Arc<AtomicUsize>,
    /// Requests received for the model `errors`.
    error_cycle: Arc<AtomicUsize>,
}

async fn models() -> Json<Value> {
    Json(json!({"object": "list", "data": [
        {"id": "ok", "object": "model", "owned_by": "mock", "sha256": "feedface"},
        {"id": "errors", "object": "model", "owned_by": "mock"}
    ]}))
}

fn chunk(chat: bool, text: Option<&str>, finish: Option<&str>) -> String {
    let choice = if chat {
        json!({"index": 0, "delta": {"content": text}, "finish_reason": finish})
    } else {
        json!({"index": 0, "text": text.unwrap_or(""), "finish_reason": finish})
    };
    format!("data: {}\n\n", json!({"id": "x", "choices": [choice]}))
}

/// The SSE body as one string: role chunk, content chunks, finish chunk, usage, [DONE].
fn sse_body(chat: bool, tokens: usize, usage: bool, fail_after: Option<usize>) -> String {
    let words = ["你", "好", " a", " b", " c"];
    let mut s = String::from(": mock stream\n\n");
    if chat {
        s.push_str(&format!(
            "data: {}\n\n",
            json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        ));
    }
    for i in 0..tokens {
        if fail_after == Some(i) {
            s.push_str("data: {\"error\":{\"message\":\"engine failed\",\"code\":500}}\n\n");
            s.push_str("data: [DONE]\n\n");
            return s;
        }
        s.push_str(&chunk(chat, Some(words[i % words.len()]), None));
    }
    s.push_str(&chunk(chat, None, Some("length")));
    if usage {
        s.push_str(&format!(
            "data: {}\n\n",
            json!({"choices": [], "usage": {"prompt_tokens": PROMPT_TOKENS,
                "completion_tokens": tokens, "total_tokens": PROMPT_TOKENS + tokens as u64}})
        ));
    }
    s.push_str("data: [DONE]\r\n\r\n");
    s
}

/// Streams `body` in 7-byte pieces (splitting lines and UTF-8 characters), 1 ms apart.
fn stream_response(body: String) -> Response {
    let bytes = body.into_bytes();
    let pieces: Vec<Bytes> = bytes.chunks(7).map(Bytes::copy_from_slice).collect();
    let stream = futures::stream::unfold(pieces.into_iter(), |mut it| async move {
        let next = it.next()?;
        tokio::time::sleep(Duration::from_millis(1)).await;
        Some((Ok::<Bytes, std::convert::Infallible>(next), it))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn complete(mock: Mock, chat: bool, body: Value) -> Response {
    mock.requests.fetch_add(1, Ordering::SeqCst);
    let model = body["model"].as_str().unwrap_or("").to_string();
    let stream = body["stream"].as_bool().unwrap_or(false);
    let bad = |m: &str| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"message": m}})),
        )
            .into_response()
    };
    if stream && body["stream_options"]["include_usage"] != json!(true) {
        return bad("stream_options.include_usage missing");
    }
    let Some(max_tokens) = body["max_tokens"].as_u64() else {
        return bad("max_tokens missing");
    };
    if chat && body["messages"][0]["content"].as_str().is_none() {
        return bad("messages missing");
    }
    if !chat && body["prompt"].as_str().is_none() {
        return bad("prompt missing");
    }
    let tokens = if body["ignore_eos"] == json!(true) {
        max_tokens as usize
    } else {
        NATURAL_TOKENS.min(max_tokens as usize)
    };
    if model == "errors" {
        match mock.error_cycle.fetch_add(1, Ordering::SeqCst) % 4 {
            1 => {
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    Json(json!({"error": {"message": "slow down", "type": "rate_limit"}})),
                )
                    .into_response()
            }
            3 => return (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
            _ => {}
        }
    }
    if !stream {
        let text = "hello".repeat(tokens);
        let choice = if chat {
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"})
        } else {
            json!({"index": 0, "text": text, "finish_reason": "length"})
        };
        return Json(json!({"id": "x", "choices": [choice],
            "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": tokens}}))
        .into_response();
    }
    let usage = model != "no-usage";
    let fail_after = (model == "stream-error").then_some(2);
    stream_response(sse_body(chat, tokens, usage, fail_after))
}

async fn chat(State(m): State<Mock>, Json(body): Json<Value>) -> Response {
    complete(m, true, body).await
}

async fn completions(State(m): State<Mock>, Json(body): Json<Value>) -> Response {
    complete(m, false, body).await
}

/// Starts the mock on a free port; returns its base URL and state.
async fn start_mock() -> (String, Mock) {
    let mock = Mock::default();
    let app = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .with_state(mock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/v1"), mock)
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn eval(args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_govlm-eval"))
        .args(args)
        .env_remove("OPENAI_API_KEY")
        .kill_on_drop(true)
        .output()
        .await
        .expect("govlm-eval runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("govlm-eval-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn read_json(p: &Path) -> Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_sweep_counts_tokens_and_writes_reports() {
    let (base, mock) = start_mock().await;
    let dir = out_dir("sweep");
    let d = dir.to_str().unwrap();
    let r = eval(&[
        "load",
        "--base-url",
        &base,
        "--concurrency",
        "1,3",
        "--num-requests",
        "6",
        "--warmup",
        "2",
        "--ignore-eos",
        "--output-tokens",
        "4",
        "--input-tokens",
        "10",
        "--goodput",
        "e2e:600000",
        "--server-name",
        "mock",
        "--out",
        d,
        "--quiet",
    ])
    .await;
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    // 2 levels × (2 warmup + 6 measured).
    assert_eq!(mock.requests.load(Ordering::SeqCst), 16);

    let j = read_json(&dir.join("load.json"));
    assert_eq!(j["schema"], "govlm-eval.load/1");
    assert_eq!(
        j["model"]["id"], "ok",
        "the first model of /models is the default"
    );
    assert_eq!(
        j["model"]["sha256"], "feedface",
        "the server-reported hash is kept"
    );
    assert_eq!(j["server"]["name"], "mock");
    assert_eq!(j["settings"]["concurrency"], json!([1, 3]));
    assert_eq!(j["settings"]["max_tokens"], 4);
    assert!(j["run"]["machine"]["cpu_cores"].as_u64().unwrap() >= 1);
    assert!(j["run"]["date"].as_str().unwrap().ends_with('Z'));
    let levels = j["levels"].as_array().unwrap();
    assert_eq!(levels.len(), 2);
    for (l, c) in levels.iter().zip([1, 3]) {
        assert_eq!(l["concurrency"], c);
        assert_eq!(l["label"], format!("concurrency {c}"));
        assert_eq!(
            (l["completed"].as_u64(), l["failed"].as_u64()),
            (Some(6), Some(0))
        );
        assert_eq!(l["warmup_requests"], 2);
        assert_eq!(l["total_output_tokens"], 24);
        assert_eq!(l["total_prompt_tokens"], 6 * PROMPT_TOKENS);
        assert_eq!(l["output_tokens_per_request"]["min"], 4.0);
        assert_eq!(l["output_tokens_per_request"]["max"], 4.0);
        assert_eq!(l["output_tokens_counted_from_chunks"], 0);
        assert_eq!(l["ttft_ms"]["n"], 6);
        assert_eq!(l["itl_ms"]["n"], 6 * 3, "3 gaps between 4 content chunks");
        assert_eq!(l["tpot_ms"]["n"], 6);
        assert_eq!(l["e2e_ms"]["n"], 6);
        assert_eq!(l["good_requests"], 6);
        assert!(l["errors"].as_object().unwrap().is_empty());
        assert!(l["request_throughput"].as_f64().unwrap() > 0.0);
    }

    let md = std::fs::read_to_string(dir.join("load.md")).unwrap();
    assert!(md.contains("| concurrency 3 | 6 | 0 |"), "{md}");
    assert!(md.contains("| concurrency 1 | TTFT |"));
    assert!(r.stdout.contains("## Throughput"));
    let png = std::fs::read(dir.join("load.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));

    // The report compared with itself: every ratio is 1.
    let jp = dir.join("load.json");
    let cmp_out = dir.join("compare.md");
    let c = eval(&[
        "compare-load",
        jp.to_str().unwrap(),
        jp.to_str().unwrap(),
        "--out",
        cmp_out.to_str().unwrap(),
    ])
    .await;
    assert_eq!(c.code, 0, "{}", c.stderr);
    assert!(c.stdout.contains("A = mock, B = mock"));
    assert!(c.stdout.contains("## concurrency 3"));
    assert!(c.stdout.contains("| Output tok/s |"));
    assert!(c.stdout.contains("1.00×"));
    assert_eq!(std::fs::read_to_string(&cmp_out).unwrap(), c.stdout);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_counted_by_status_with_the_first_body() {
    let (base, mock) = start_mock().await;
    let dir = out_dir("errors");
    let r = eval(&[
        "load",
        "--base-url",
        &base,
        "--model",
        "errors",
        "--concurrency",
        "2",
        "--num-requests",
        "8",
        "--output-tokens",
        "3",
        "--out",
        dir.to_str().unwrap(),
        "--quiet",
    ])
    .await;
    assert_eq!(r.code, 0, "some requests succeeded: {}", r.stderr);
    assert_eq!(mock.error_cycle.load(Ordering::SeqCst), 8);
    let j = read_json(&dir.join("load.json"));
    let l = &j["levels"][0];
    assert_eq!(
        (l["completed"].as_u64(), l["failed"].as_u64()),
        (Some(4), Some(4))
    );
    assert_eq!(l["errors"]["http_429"]["count"], 2);
    assert!(l["errors"]["http_429"]["first"]
        .as_str()
        .unwrap()
        .contains("slow down"));
    assert_eq!(l["errors"]["http_500"]["count"], 2);
    assert_eq!(l["errors"]["http_500"]["first"], "boom");
    assert_eq!(l["total_output_tokens"], 4 * 3);
    assert!(
        !dir.join("load.png").exists(),
        "no chart for a single level"
    );
    let md = std::fs::read_to_string(dir.join("load.md")).unwrap();
    assert!(md.contains("`http_429` × 2"), "{md}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_fallback_stream_errors_and_whole_answers() {
    let (base, _mock) = start_mock().await;

    // No usage chunk: output tokens are the content chunks.
    let dir = out_dir("nousage");
    let r = eval(&[
        "load",
        "--base-url",
        &base,
        "--model",
        "no-usage",
        "--endpoint",
        "completions",
        "--num-requests",
        "3",
        "--out",
        dir.to_str().unwrap(),
        "--quiet",
    ])
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let l = &read_json(&dir.join("load.json"))["levels"][0];
    assert_eq!(l["completed"], 3);
    assert_eq!(l["total_output_tokens"], 3 * NATURAL_TOKENS as u64);
    assert_eq!(l["output_tokens_counted_from_chunks"], 3);
    assert_eq!(l["total_prompt_tokens"], 0);
    std::fs::remove_dir_all(&dir).unwrap();

    // An error event inside the stream fails the request; all failed: exit code 1, reports kept.
    let dir = out_dir("streamerr");
    let r = eval(&[
        "load",
        "--base-url",
        &base,
        "--model",
        "stream-error",
        "--num-requests",
        "2",
        "--out",
        dir.to_str().unwrap(),
        "--quiet",
    ])
    .await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no request succeeded"), "{}", r.stderr);
    let l = &read_json(&dir.join("load.json"))["levels"][0];
    assert_eq!(l["errors"]["stream_error"]["count"], 2);
    assert!(l["errors"]["stream_error"]["first"]
        .as_str()
        .unwrap()
        .contains("engine failed"));
    std::fs::remove_dir_all(&dir).unwrap();

    // Not streaming: tokens from usage, no TTFT.
    let dir = out_dir("nostream");
    let r = eval(&[
        "load",
        "--base-url",
        &base,
        "--model",
        "ok",
        "--no-stream",
        "--ignore-eos",
        "--output-tokens",
        "6",
        "--num-requests",
        "2",
        "--out",
        dir.to_str().unwrap(),
        "--quiet",
    ])
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j = read_json(&dir.join("load.json"));
    assert_eq!(j["settings"]["stream"], false);
    let l = &j["levels"][0];
    assert_eq!(l["total_output_tokens"], 12);
    assert!(l["ttft_ms"].is_null() && l["itl_ms"].is_null());
    assert_eq!(l["e2e_ms"]["n"], 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_mode_duration_mode_and_unreachable_servers() {
    let (base, mock) = start_mock().await;

    let dir = out_dir("rate");
    let r = eval(&[
        "load",
        "--base-url",
        &base,
        "--request-rate",
        "200,inf",
        "--arrival",
        "poisson",
        "--seed",
        "3",
        "--num-requests",
        "5",
        "--output-tokens",
        "2",
        "--dataset",
        "hotline",
        "--dataset-path",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/hotline"),
        "--out",
        dir.to_str().unwrap(),
        "--quiet",
    ])
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(mock.requests.load(Ordering::SeqCst), 10);
    let j = read_json(&dir.join("load.json"));
    assert_eq!(j["settings"]["mode"], "rate");
    assert_eq!(j["settings"]["request_rate"], json!([200.0, null]));
    assert_eq!(j["settings"]["prompts"], 10);
    let levels = j["levels"].as_array().unwrap();
    assert_eq!(levels[0]["label"], "rate 200 req/s");
    assert_eq!(levels[1]["label"], "rate inf");
    assert!(levels.iter().all(|l| l["completed"] == 5));
    assert!(dir.join("load.png").exists());
    std::fs::remove_dir_all(&dir).unwrap();

    let r = eval(&[
        "load",
        "--base-url",
        &base,
        "--concurrency",
        "2",
        "--duration",
        "0.3",
        "--quiet",
    ])
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("| concurrency 2 |"));

    // A closed port: connection errors, counted, exit code 1.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let dir = out_dir("closed");
    let r = eval(&[
        "load",
        "--base-url",
        &format!("http://127.0.0.1:{port}/v1"),
        "--model",
        "x",
        "--num-requests",
        "2",
        "--out",
        dir.to_str().unwrap(),
        "--quiet",
    ])
    .await;
    assert_eq!(r.code, 1);
    let l = &read_json(&dir.join("load.json"))["levels"][0];
    assert_eq!(l["failed"], 2);
    assert_eq!(l["errors"]["connect"]["count"], 2);
    std::fs::remove_dir_all(&dir).unwrap();

    // Bad arguments are refused before any request.
    let r = eval(&["load", "--base-url", &base, "--concurrency", "0"]).await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("at least 1"), "{}", r.stderr);
}
