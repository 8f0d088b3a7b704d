//! End-to-end tests of the Files and Batch APIs with the real SmolLM2-135M model: hotline
//! transcripts run as a batch, per-line errors, validation failures, cancel, 404s, pagination,
//! and a real `govlm serve` process killed with SIGKILL mid-batch that resumes on restart.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::Duration;

use common::{assert_error, model_path, post, resolved};
use govlm_inference::config::Source;
use govlm_inference::engine::EngineHandle;
use govlm_server::batch::runner::RunnerConfig;
use govlm_server::batch::BatchHandle;
use govlm_server::AppState;
use serde_json::{json, Value};

const MODEL: &str = "smollm2";
const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const CONTEXT: usize = 4096;
/// Polls between status checks.
const POLL: Duration = Duration::from_millis(100);
/// Guard against a hung batch (not a performance assertion).
const MAX_POLLS: usize = 12_000;
const TERMINAL: [&str; 4] = ["completed", "failed", "cancelled", "expired"];

/// A fresh directory under the system temp dir.
fn temp_dir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "govlm-batch-{tag}-{}-{n}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The in-process server of this file (SmolLM2), with the Batch API on a temporary data dir.
fn server() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| start_server(MODEL, MODEL_FILE))
}

/// An in-process server of `file` served as `id`, with the prompt library and the Batch API on a
/// temporary data dir.
fn start_server(id: &str, file: &str) -> String {
    let model = resolved(id, file, Source::Gguf, CONTEXT);
    let engine = EngineHandle::spawn(&model).expect("model loads");
    let data_dir = temp_dir("inproc");
    let mut state = AppState::new(vec![engine]);
    let prompts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../prompts");
    state.prompts = std::sync::Arc::new(
        govlm_server::load_prompts(Some(&prompts)).expect("prompt library loads"),
    );
    common::serve_with(state, move |mut state| async move {
        let batch = BatchHandle::start(&data_dir, state.clone(), RunnerConfig::default())
            .await
            .expect("batch service starts");
        state.batch = Some(batch);
        state
    })
}

/// The first `n` calls of the shared hotline dev set: (id, transcript).
fn hotline(n: usize) -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/hotline/dev.jsonl");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .take(n)
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("dev.jsonl line");
            (
                v["id"].as_str().expect("id").to_string(),
                v["transcript"].as_str().expect("transcript").to_string(),
            )
        })
        .collect()
}

/// A batch input line for `/v1/chat/completions` summarising a hotline call.
fn hotline_line(custom_id: &str, transcript: &str) -> Value {
    json!({
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "You are a 1823 hotline officer. Summarise the call in one English sentence."},
                {"role": "user", "content": transcript}
            ],
            "max_tokens": 16,
            "temperature": 0
        }
    })
}

fn jsonl(lines: &[Value]) -> Vec<u8> {
    let mut out = String::new();
    for l in lines {
        out.push_str(&l.to_string());
        out.push('\n');
    }
    out.into_bytes()
}

/// Uploads a file with `purpose`; returns status and body.
async fn upload_as(base: &str, name: &str, bytes: Vec<u8>, purpose: &str) -> (u16, Value) {
    let form = reqwest::multipart::Form::new()
        .text("purpose", purpose.to_string())
        .part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name(name.to_string()),
        );
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/files"))
        .multipart(form)
        .send()
        .await
        .expect("upload");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON body"))
}

/// Uploads a batch input file; returns the file object.
async fn upload(base: &str, name: &str, bytes: Vec<u8>) -> Value {
    let (status, v) = upload_as(base, name, bytes, "batch").await;
    assert_eq!(status, 200, "{v}");
    v
}

async fn get(base: &str, path: &str) -> (u16, Value) {
    let resp = reqwest::get(format!("{base}{path}")).await.expect("GET");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let v = serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON ({status}): {text}"));
    (status, v)
}

async fn create_batch(base: &str, file_id: &str, endpoint: &str) -> Value {
    let (status, v) = post(
        base,
        "/v1/batches",
        &json!({"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h"}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "batch");
    v
}

/// Polls a batch until it is completed, failed, cancelled or expired.
async fn wait_done(base: &str, id: &str) -> Value {
    for _ in 0..MAX_POLLS {
        let (status, v) = get(base, &format!("/v1/batches/{id}")).await;
        assert_eq!(status, 200, "{v}");
        if TERMINAL.contains(&v["status"].as_str().unwrap_or("")) {
            return v;
        }
        tokio::time::sleep(POLL).await;
    }
    panic!("batch {id} did not finish");
}

/// A result file's lines (empty for a null file id).
async fn result_lines(base: &str, file_id: &Value) -> Vec<Value> {
    let Some(id) = file_id.as_str() else {
        return Vec::new();
    };
    let resp = reqwest::get(format!("{base}/v1/files/{id}/content"))
        .await
        .expect("content");
    assert_eq!(resp.status().as_u16(), 200);
    let text = resp.text().await.expect("text");
    text.lines()
        .map(|l| serde_json::from_str(l).expect("result line is JSON"))
        .collect()
}

/// custom_id -> how often it appears across output and error lines.
fn custom_id_counts(lines: &[Value]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for l in lines {
        if let Some(c) = l["custom_id"].as_str() {
            *m.entry(c.to_string()).or_insert(0) += 1;
        }
    }
    m
}

fn assert_chat_output(line: &Value) {
    assert!(
        line["id"].as_str().unwrap().starts_with("batch_req_"),
        "{line}"
    );
    assert!(line["error"].is_null(), "{line}");
    let resp = &line["response"];
    assert_eq!(resp["status_code"], 200, "{line}");
    assert!(resp["request_id"].is_string(), "{line}");
    let body = &resp["body"];
    assert_eq!(body["object"], "chat.completion", "{line}");
    assert!(
        body["id"].as_str().unwrap().starts_with("chatcmpl-"),
        "{line}"
    );
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert!(body["choices"][0]["message"]["content"].is_string());
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() <= 16);
}

#[tokio::test]
async fn hotline_batch_completes_with_bad_lines_in_the_error_file() {
    let base = server();
    let calls = hotline(4);
    let mut lines: Vec<Value> = calls.iter().map(|(id, t)| hotline_line(id, t)).collect();
    let mut bad_body = hotline_line("bad-body", "hello");
    bad_body["body"]["temperature"] = json!("hot");
    lines.push(bad_body);
    let mut bad_url = hotline_line("bad-url", "hello");
    bad_url["url"] = json!("/v1/embeddings");
    lines.push(bad_url);
    let mut bytes = jsonl(&lines);
    bytes.extend_from_slice(b"this line is not JSON\n");

    let file = upload(base, "hotline.jsonl", bytes.clone()).await;
    assert_eq!(file["object"], "file");
    assert_eq!(file["purpose"], "batch");
    assert_eq!(file["filename"], "hotline.jsonl");
    assert_eq!(file["bytes"], bytes.len());
    assert_eq!(file["status"], "processed");
    let fid = file["id"].as_str().unwrap().to_string();
    let (status, got) = get(base, &format!("/v1/files/{fid}")).await;
    assert_eq!(status, 200);
    assert_eq!(got, file);
    let content = reqwest::get(format!("{base}/v1/files/{fid}/content"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(content.as_ref(), bytes.as_slice());

    let (status, created) = post(
        base,
        "/v1/batches",
        &json!({"input_file_id": fid, "endpoint": "/v1/chat/completions",
                "completion_window": "24h", "metadata": {"job": "hotline"}}),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["status"], "validating");
    assert_eq!(created["endpoint"], "/v1/chat/completions");
    assert_eq!(created["completion_window"], "24h");
    assert_eq!(created["input_file_id"], fid.as_str());
    assert!(created["id"].as_str().unwrap().starts_with("batch_"));
    assert!(created["expires_at"].as_i64().unwrap() > created["created_at"].as_i64().unwrap());
    let id = created["id"].as_str().unwrap();

    let done = wait_done(base, id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["request_counts"],
        json!({"total": 7, "completed": 4, "failed": 3})
    );
    assert_eq!(done["metadata"], json!({"job": "hotline"}));
    for t in ["in_progress_at", "finalizing_at", "completed_at"] {
        assert!(done[t].is_i64(), "{t}: {done}");
    }
    assert!(done["errors"].is_null());

    let out = result_lines(base, &done["output_file_id"]).await;
    let err = result_lines(base, &done["error_file_id"]).await;
    assert_eq!(out.len(), 4);
    assert_eq!(err.len(), 3);
    for l in &out {
        assert_chat_output(l);
    }
    let all: Vec<Value> = out.iter().chain(err.iter()).cloned().collect();
    let counts = custom_id_counts(&all);
    for (cid, _) in &calls {
        assert_eq!(counts.get(cid), Some(&1), "{cid}: {counts:?}");
    }
    assert_eq!(counts.get("bad-body"), Some(&1));
    assert_eq!(counts.get("bad-url"), Some(&1));
    let ids: HashSet<&str> = all.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), all.len(), "line ids are unique");

    let by_cid = |c: &str| err.iter().find(|l| l["custom_id"] == c).cloned().unwrap();
    let bb = by_cid("bad-body");
    assert_eq!(bb["response"]["status_code"], 400, "{bb}");
    assert_eq!(
        bb["response"]["body"]["error"]["param"], "temperature",
        "{bb}"
    );
    assert_eq!(
        bb["response"]["body"]["error"]["type"],
        "invalid_request_error"
    );
    assert!(bb["error"].is_null());
    let bu = by_cid("bad-url");
    assert!(bu["response"].is_null(), "{bu}");
    assert_eq!(bu["error"]["code"], "mismatched_url", "{bu}");
    let bj = err.iter().find(|l| l["custom_id"].is_null()).unwrap();
    assert_eq!(bj["error"]["code"], "invalid_json_line", "{bj}");
    assert!(
        bj["error"]["message"].as_str().unwrap().contains("7"),
        "{bj}"
    );

    let (status, of) = get(
        base,
        &format!("/v1/files/{}", done["output_file_id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(of["purpose"], "batch_output");
}

#[tokio::test]
async fn completions_endpoint_batch() {
    let base = server();
    let lines: Vec<Value> = (0..2)
        .map(|i| {
            json!({"custom_id": format!("c{i}"), "method": "POST", "url": "/v1/completions",
                   "body": {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 4,
                            "temperature": 0}})
        })
        .collect();
    let file = upload(base, "completions.jsonl", jsonl(&lines)).await;
    let b = create_batch(base, file["id"].as_str().unwrap(), "/v1/completions").await;
    let done = wait_done(base, b["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(done["error_file_id"].is_null(), "{done}");
    let out = result_lines(base, &done["output_file_id"]).await;
    assert_eq!(out.len(), 2);
    for l in &out {
        let body = &l["response"]["body"];
        assert_eq!(body["object"], "text_completion", "{l}");
        assert!(body["choices"][0]["text"].is_string());
    }
    assert_eq!(
        custom_id_counts(&out),
        HashMap::from([("c0".to_string(), 1), ("c1".to_string(), 1)])
    );
}

/// A tiny input whose `custom_id` is used twice (fails validation without running a line).
fn duplicate_file() -> Vec<u8> {
    jsonl(&[hotline_line("same", "a"), hotline_line("same", "b")])
}

#[tokio::test]
async fn duplicate_custom_id_fails_the_whole_batch() {
    let base = server();
    let file = upload(base, "dup.jsonl", duplicate_file()).await;
    let b = create_batch(base, file["id"].as_str().unwrap(), "/v1/chat/completions").await;
    let done = wait_done(base, b["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert!(done["failed_at"].is_i64());
    assert_eq!(done["errors"]["object"], "list");
    let e = &done["errors"]["data"][0];
    assert_eq!(e["code"], "duplicate_custom_id", "{done}");
    assert_eq!(e["line"], 2);
    assert_eq!(e["param"], "custom_id");
    assert!(done["output_file_id"].is_null() && done["error_file_id"].is_null());
    // A failed batch cannot be cancelled.
    let (status, v) = post(
        base,
        &format!("/v1/batches/{}/cancel", b["id"].as_str().unwrap()),
        &json!({}),
    )
    .await;
    assert_error(status, &v, 409, None);
}

#[tokio::test]
async fn cancel_stops_the_batch_with_partial_output() {
    let base = server();
    let lines: Vec<Value> = (0..10)
        .map(|i| {
            let mut l = hotline_line(&format!("long-{i}"), "Count from one to one thousand.");
            l["body"]["max_tokens"] = json!(400);
            l["body"]["ignore_eos"] = json!(true);
            l
        })
        .collect();
    let file = upload(base, "long.jsonl", jsonl(&lines)).await;
    let b = create_batch(base, file["id"].as_str().unwrap(), "/v1/chat/completions").await;
    let id = b["id"].as_str().unwrap();
    let (status, c) = post(base, &format!("/v1/batches/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["status"], "cancelling", "{c}");
    assert!(c["cancelling_at"].is_i64());
    let done = wait_done(base, id).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    assert!(done["cancelled_at"].is_i64());
    let counts = &done["request_counts"];
    // 0 when the cancel came before the input file was read.
    assert!(counts["total"] == 10 || counts["total"] == 0, "{done}");
    let finished = counts["completed"].as_u64().unwrap() + counts["failed"].as_u64().unwrap();
    assert!(finished < 10, "{done}");
    let mut all = result_lines(base, &done["output_file_id"]).await;
    all.extend(result_lines(base, &done["error_file_id"]).await);
    assert_eq!(all.len() as u64, finished);
    assert!(custom_id_counts(&all).values().all(|&n| n == 1));
    // Cancelling again answers the cancelled batch.
    let (status, again) = post(base, &format!("/v1/batches/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["status"], "cancelled");
}

#[tokio::test]
async fn unknown_ids_are_404_and_bad_params_are_400() {
    let base = server();
    for path in [
        "/v1/files/file-nope",
        "/v1/files/file-nope/content",
        "/v1/files/..%2Fgovlm.sqlite3/content",
    ] {
        let (status, v) = get(base, path).await;
        assert_error(status, &v, 404, Some("file_id"));
    }
    let (status, v) = get(base, "/v1/batches/batch_nope").await;
    assert_error(status, &v, 404, Some("batch_id"));
    let (status, v) = post(base, "/v1/batches/batch_nope/cancel", &json!({})).await;
    assert_error(status, &v, 404, Some("batch_id"));
    let resp = reqwest::Client::new()
        .delete(format!("{base}/v1/files/file-nope"))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    assert_error(status, &resp.json().await.unwrap(), 404, Some("file_id"));

    let (status, v) = upload_as(base, "x.jsonl", duplicate_file(), "fine-tune").await;
    assert_error(status, &v, 400, Some("purpose"));
    let form = reqwest::multipart::Form::new().text("purpose", "batch");
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/files"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    assert_error(status, &resp.json().await.unwrap(), 400, Some("file"));

    let file = upload(base, "ok.jsonl", duplicate_file()).await;
    let fid = file["id"].as_str().unwrap();
    for (body, param) in [
        (
            json!({"input_file_id": "file-nope", "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
            "input_file_id",
        ),
        (
            json!({"endpoint": "/v1/chat/completions", "completion_window": "24h"}),
            "input_file_id",
        ),
        (
            json!({"input_file_id": fid, "endpoint": "/v1/embeddings", "completion_window": "24h"}),
            "endpoint",
        ),
        (
            json!({"input_file_id": fid, "endpoint": "/v1/chat/completions", "completion_window": "48h"}),
            "completion_window",
        ),
        (
            json!({"input_file_id": fid, "endpoint": "/v1/chat/completions", "completion_window": "24h", "metadata": {"k": 1}}),
            "metadata.k",
        ),
    ] {
        let (status, v) = post(base, "/v1/batches", &body).await;
        assert_error(status, &v, 400, Some(param));
    }

    // Deleting a file removes it.
    let resp = reqwest::Client::new()
        .delete(format!("{base}/v1/files/{fid}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v, json!({"id": fid, "object": "file", "deleted": true}));
    let (status, v) = get(base, &format!("/v1/files/{fid}")).await;
    assert_error(status, &v, 404, Some("file_id"));
}

#[tokio::test]
async fn lists_paginate_with_after_and_limit() {
    let base = server();
    let file = upload(base, "page.jsonl", duplicate_file()).await;
    let fid = file["id"].as_str().unwrap();
    let mut mine = Vec::new();
    for _ in 0..3 {
        let b = create_batch(base, fid, "/v1/chat/completions").await;
        mine.push(b["id"].as_str().unwrap().to_string());
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let q = match &after {
            Some(a) => format!("/v1/batches?limit=2&after={a}"),
            None => "/v1/batches?limit=2".to_string(),
        };
        let (status, page) = get(base, &q).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["object"], "list");
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 2);
        seen.extend(data.iter().map(|b| b["id"].as_str().unwrap().to_string()));
        if page["has_more"] != true {
            break;
        }
        assert_eq!(page["last_id"], data.last().unwrap()["id"]);
        after = page["last_id"].as_str().map(str::to_string);
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no batch on two pages");
    let order: Vec<&String> = seen.iter().filter(|id| mine.contains(id)).collect();
    assert_eq!(order, mine.iter().rev().collect::<Vec<_>>(), "newest first");
    let (status, v) = get(base, "/v1/batches?limit=0").await;
    assert_error(status, &v, 400, Some("limit"));

    let (status, files) = get(base, "/v1/files?purpose=batch&limit=100").await;
    assert_eq!(status, 200);
    assert!(files["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["id"] == fid));
}

/// A `govlm serve` process, killed (SIGKILL) when dropped.
struct Served {
    child: Child,
    base: String,
}

impl Served {
    /// Starts the binary on a free port with `config` and `data_dir`; waits for it to listen.
    fn start(config: &Path, data_dir: &Path) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_govlm"))
            .args(["serve", "--host", "127.0.0.1", "--port", "0", "--config"])
            .arg(config)
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("govlm starts");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Reads stderr to the end, so that the server never blocks on a full pipe.
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("govlm: listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                    }
                } else {
                    eprintln!("[govlm] {line}");
                }
            }
        });
        let base = rx.recv().expect("govlm prints its address");
        Served { child, base }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn killed_server_resumes_the_batch_on_restart() {
    let dir = temp_dir("kill");
    let data_dir = dir.join("data");
    let config = dir.join("models.toml");
    std::fs::write(
        &config,
        format!(
            "default_model = \"{MODEL}\"\n\n[[models]]\nid = \"{MODEL}\"\ngguf = \"{}\"\ncontext_length = {CONTEXT}\n",
            model_path(MODEL_FILE).display()
        ),
    )
    .expect("write models.toml");

    let total = 12;
    let lines: Vec<Value> = (0..total)
        .map(|i| {
            let mut l = hotline_line(&format!("line-{i:02}"), "Count from one to one hundred.");
            // Different lengths, so lines finish one by one and the kill lands mid-batch.
            l["body"]["max_tokens"] = json!(24 + 24 * i);
            l["body"]["ignore_eos"] = json!(true);
            l
        })
        .collect();

    let mut first = Served::start(&config, &data_dir);
    let file = upload(&first.base, "resume.jsonl", jsonl(&lines)).await;
    let b = create_batch(
        &first.base,
        file["id"].as_str().unwrap(),
        "/v1/chat/completions",
    )
    .await;
    let id = b["id"].as_str().unwrap().to_string();
    let mut finished_before = 0;
    for _ in 0..MAX_POLLS {
        let (_, v) = get(&first.base, &format!("/v1/batches/{id}")).await;
        let c = &v["request_counts"];
        finished_before = c["completed"].as_u64().unwrap_or(0) + c["failed"].as_u64().unwrap_or(0);
        if finished_before > 0 {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    first.kill();
    assert!(finished_before > 0, "some lines finished before the kill");
    assert!(
        finished_before < total as u64,
        "the kill came before the batch finished ({finished_before} of {total} done)"
    );

    let second = Served::start(&config, &data_dir);
    let done = wait_done(&second.base, &id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["request_counts"],
        json!({"total": total, "completed": total, "failed": 0})
    );
    let out = result_lines(&second.base, &done["output_file_id"]).await;
    assert_eq!(out.len(), total);
    let counts = custom_id_counts(&out);
    for i in 0..total {
        assert_eq!(counts.get(&format!("line-{i:02}")), Some(&1), "{counts:?}");
    }
    for l in &out {
        assert_eq!(l["response"]["status_code"], 200, "{l}");
        let i: usize = l["custom_id"].as_str().unwrap()["line-".len()..]
            .parse()
            .unwrap();
        assert_eq!(
            l["response"]["body"]["usage"]["completion_tokens"],
            24 + 24 * i,
            "{l}"
        );
    }
    drop(second);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The hotline case-record schema of the prompt library.
fn hotline_validator() -> jsonschema::Validator {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../prompts/hotline/case_record.schema.json");
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("schema file")).expect("JSON");
    jsonschema::validator_for(&schema).expect("valid schema")
}

/// The default model (Qwen2.5-Coder-0.5B): the hotline pipeline's model.
const DEFAULT_MODEL: &str = "qwen";

/// The `hotline_case_record` template as a chat request body for the default model.
fn case_record_body(transcript: &str) -> Value {
    json!({
        "model": DEFAULT_MODEL,
        "prompt": {"id": "hotline_case_record", "variables": {"transcript": transcript}}
    })
}

fn assert_case_record(id: &str, body: &Value, validator: &jsonschema::Validator) {
    let content = body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("{id}: no content in {body}"));
    assert_eq!(
        body["choices"][0]["finish_reason"], "stop",
        "{id}: {content}"
    );
    let record: Value = serde_json::from_str(content)
        .unwrap_or_else(|e| panic!("{id}: output is not JSON ({e}): {content}"));
    let errors: Vec<String> = validator
        .iter_errors(&record)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{id}: {errors:?} in {content}");
}

/// Every call of the hotline dev set, through the Batch API and through chat completions, gives a
/// case record that parses and validates against the schema (constrained decoding from the
/// template's `response_format`).
#[tokio::test]
async fn every_hotline_call_gives_a_valid_case_record() {
    let base = &start_server(DEFAULT_MODEL, "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    let validator = hotline_validator();
    let calls = hotline(usize::MAX);
    assert_eq!(calls.len(), 10);
    let lines: Vec<Value> = calls
        .iter()
        .map(|(id, t)| {
            json!({"custom_id": id, "method": "POST", "url": "/v1/chat/completions",
                   "body": case_record_body(t)})
        })
        .collect();
    let file = upload(base, "hotline.jsonl", jsonl(&lines)).await;
    let batch = create_batch(base, file["id"].as_str().unwrap(), "/v1/chat/completions").await;
    // Meanwhile, the same calls through chat completions.
    let bodies: Vec<Value> = calls.iter().map(|(_, t)| case_record_body(t)).collect();
    let chats =
        futures::future::join_all(bodies.iter().map(|b| post(base, "/v1/chat/completions", b)))
            .await;
    for ((id, _), (status, body)) in calls.iter().zip(&chats) {
        assert_eq!(*status, 200, "{id}: {body}");
        assert_case_record(id, body, &validator);
    }
    let done = wait_done(base, batch["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(result_lines(base, &done["error_file_id"]).await.is_empty());
    let out = result_lines(base, &done["output_file_id"]).await;
    assert_eq!(out.len(), calls.len());
    for line in &out {
        let id = line["custom_id"].as_str().unwrap();
        assert_eq!(line["response"]["status_code"], 200, "{line}");
        assert_case_record(id, &line["response"]["body"], &validator);
    }
}
