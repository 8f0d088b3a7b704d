//! `GET /metrics`, and what it shows when clients disconnect or the waiting queue is full.

mod common;

use std::time::{Duration, Instant};

use futures::StreamExt;
use govlm_inference::config::{DeviceSpec, SchedulerConfig};
use serde_json::json;

const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The value of a metric line `name{model="m"} value` (None if absent).
fn metric(text: &str, name: &str) -> Option<f64> {
    let prefix = format!("{name}{{model=\"m\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

async fn scrape(base: &str) -> String {
    let resp = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("GET /metrics");
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/plain"), "{ct}");
    resp.text().await.expect("body")
}

async fn wait_for(base: &str, what: &str, cond: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = scrape(base).await;
        if cond(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn server(f: impl FnOnce(&mut SchedulerConfig), max_waiting: usize) -> common::TestServer {
    let mut m = common::resolved("m", SMOLLM2, govlm_inference::config::Source::Gguf, 2048);
    m.max_waiting = max_waiting;
    m.scheduler = SchedulerConfig::defaults_for(DeviceSpec::Cpu);
    f(&mut m.scheduler);
    common::start(m, 1 << 20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_tokens_and_latencies() {
    let s = server(|_| {}, 64);
    let text = scrape(&s.base).await;
    let blocks = s.engine.info().kv_blocks as f64;
    assert_eq!(metric(&text, "govlm_kv_blocks_free"), Some(blocks));
    assert_eq!(metric(&text, "govlm_kv_blocks_used"), Some(0.0));
    let (status, body) = common::post(
        &s.base,
        "/v1/completions",
        &json!({"prompt": "The capital of France is", "max_tokens": 5, "ignore_eos": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let prompt_tokens = body["usage"]["prompt_tokens"].as_f64().unwrap();
    let text = wait_for(&s.base, "finished request", |t| {
        metric(t, "govlm_generation_tokens_total") == Some(5.0)
    })
    .await;
    assert_eq!(
        metric(&text, "govlm_prompt_tokens_total"),
        Some(prompt_tokens)
    );
    assert_eq!(
        metric(&text, "govlm_time_to_first_token_seconds_count"),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "govlm_inter_token_latency_seconds_count"),
        Some(4.0)
    );
    assert_eq!(
        metric(&text, "govlm_e2e_request_latency_seconds_count"),
        Some(1.0)
    );
    assert_eq!(metric(&text, "govlm_running_sequences"), Some(0.0));
    assert!(metric(&text, "govlm_step_batch_tokens_count").unwrap() >= 5.0);
    assert!(text.contains("govlm_requests_finished_total{model=\"m\",reason=\"length\"} 1"));
    // The prompt's full blocks stay cached after the request.
    assert_eq!(metric(&text, "govlm_kv_blocks_used"), Some(0.0));
}

/// A streaming client that goes away mid-stream, and a non-streaming one that times out, both
/// have their sequences cancelled and their blocks freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnects_cancel_and_free_blocks() {
    let s = server(|_| {}, 64);
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{}/v1/chat/completions", s.base))
        .json(&json!({
            "messages": [{"role": "user", "content": "Tell me a very long story."}],
            "max_tokens": 1500, "ignore_eos": true, "stream": true
        }))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    let mut body = resp.bytes_stream();
    let mut seen = 0;
    while seen < 3 {
        let chunk = body.next().await.expect("chunk").expect("bytes");
        seen += String::from_utf8_lossy(&chunk).matches("data: ").count();
    }
    wait_for(&s.base, "blocks in use", |t| {
        metric(t, "govlm_kv_blocks_used").is_some_and(|b| b > 0.0)
    })
    .await;
    drop(body);
    wait_for(&s.base, "streaming cancel", |t| {
        metric(t, "govlm_requests_cancelled_total") == Some(1.0)
            && metric(t, "govlm_kv_blocks_used") == Some(0.0)
    })
    .await;

    let timed_out = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap()
        .post(format!("{}/v1/completions", s.base))
        .json(&json!({"prompt": "Once upon a time", "max_tokens": 1500, "ignore_eos": true}))
        .send()
        .await;
    assert!(timed_out.is_err(), "expected the client to time out");
    wait_for(&s.base, "non-streaming cancel", |t| {
        metric(t, "govlm_requests_cancelled_total") == Some(2.0)
            && metric(t, "govlm_kv_blocks_used") == Some(0.0)
            && metric(t, "govlm_running_sequences") == Some(0.0)
    })
    .await;
}

/// One running sequence, one waiting slot: the next request gets 429 with Retry-After at once,
/// counted in the metrics; the accepted ones complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_429_with_retry_after() {
    let s = server(|c| c.max_num_seqs = 1, 1);
    // The running request is a long stream held open until the 429 is seen, so a fast machine
    // cannot finish it before the second request is queued behind it.
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/completions", s.base))
        .json(
            &json!({"prompt": "Once upon a time", "max_tokens": 1500, "ignore_eos": true,
                      "stream": true}),
        )
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    let mut long = resp.bytes_stream();
    let first = long.next().await.expect("chunk").expect("bytes");
    assert!(String::from_utf8_lossy(&first).contains("data: "));
    wait_for(&s.base, "first request running", |t| {
        metric(t, "govlm_running_sequences") == Some(1.0)
    })
    .await;
    let waiting = {
        let base = s.base.clone();
        tokio::spawn(async move {
            common::post(
                &base,
                "/v1/completions",
                &json!({"prompt": "Hello", "max_tokens": 3, "ignore_eos": true}),
            )
            .await
        })
    };
    wait_for(&s.base, "second request waiting", |t| {
        metric(t, "govlm_waiting_sequences") == Some(1.0)
    })
    .await;
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/completions", s.base))
        .json(&json!({"prompt": "Hi", "max_tokens": 3}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 429);
    assert!(resp.headers().get("retry-after").is_some());
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_exceeded", "{body}");
    let text = scrape(&s.base).await;
    assert_eq!(metric(&text, "govlm_requests_rejected_total"), Some(1.0));
    // The long client leaves; the queued request then runs and completes.
    drop(long);
    let (status, body) = waiting.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 3);
    wait_for(&s.base, "cancel counted", |t| {
        metric(t, "govlm_requests_cancelled_total") == Some(1.0)
            && metric(t, "govlm_kv_blocks_used") == Some(0.0)
    })
    .await;
}
