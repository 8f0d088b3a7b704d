//! End-to-end: `govlm-eval quality` against a real `govlm serve` (SmolLM2-135M) with one small
//! task of each kind (`--limit 2`), checking the report's structure (not the model's quality),
//! then `--compare` of the run with itself.
//!
//! Needs target/release/govlm (`cargo build --release -p govlm-server`) and the SmolLM2 model
//! (`make models`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const SMOL_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn start_server(tmp: &Path, model: &Path) -> (Server, String) {
    let bin = repo().join("target/release/govlm");
    assert!(
        bin.is_file(),
        "{} missing: cargo build --release -p govlm-server",
        bin.display()
    );
    let config = tmp.join("models.toml");
    std::fs::write(
        &config,
        format!("default_model = \"smollm2\"\n\n[[models]]\nid = \"smollm2\"\ngguf = \"{}\"\ncontext_length = 2048\n", model.display()),
    )
    .expect("write config");
    let port = free_port();
    let log = std::fs::File::create(tmp.join("server.log")).expect("log");
    let child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start govlm");
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /health HTTP/1.0\r\nHost: x\r\n\r\n");
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            if buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200") {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "govlm not healthy: {}",
            std::fs::read_to_string(tmp.join("server.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    (server, format!("http://127.0.0.1:{port}"))
}

fn write_tasks(tmp: &Path) -> Vec<String> {
    let r = repo();
    let hotline = tmp.join("hotline_small.toml");
    std::fs::write(
        &hotline,
        format!(
            r#"id = "hotline_small"
kind = "hotline"
data = "{data}"
system_prompt = "Answer with the case record JSON object only."
user_template = "Transcript:\n{{transcript}}"
[generation]
max_tokens = 48
[hotline]
schema = "{schema}"
"#,
            data = r.join("../shared/data/hotline/dev.jsonl").display(),
            schema = r
                .join("eval/tasks/hotline/case_record.schema.json")
                .display(),
        ),
    )
    .expect("write");
    std::fs::write(
        tmp.join("drafts.jsonl"),
        concat!(
            r#"{"id":"d1","lang":"en","form":"legco_reply","prompt":"Write one sentence starting with President,"}"#, "\n",
            r#"{"id":"d2","lang":"zh-Hant","form":"legco_reply","prompt":"Say hello."}"#, "\n",
            r#"{"id":"d3","lang":"en","form":"legco_reply","prompt":"not reached with --limit 2"}"#, "\n",
        ),
    )
    .expect("write");
    let drafting = tmp.join("drafting_small.toml");
    std::fs::write(
        &drafting,
        r#"id = "drafting_small"
kind = "drafting"
data = "drafts.jsonl"
user_template = "{prompt}"
[generation]
max_tokens = 24
[[drafting.checks]]
name = "opening"
lang = "en"
kind = "starts_with"
values = ["President,"]
[[drafting.checks]]
name = "zh_punct"
lang = "zh-Hant"
kind = "full_width_punct_share_min"
min = 0.9
"#,
    )
    .expect("write");
    std::fs::write(
        tmp.join("texts.jsonl"),
        "{\"id\":\"t1\",\"text\":\"The cat sat on the mat.\"}\n{\"id\":\"t2\",\"text\":\"Hello world, again.\"}\n",
    )
    .expect("write");
    let bpc = tmp.join("bpc_small.toml");
    std::fs::write(&bpc, "id = \"bpc_small\"\nkind = \"bpc\"\ndata = \"texts.jsonl\"\n[bpc]\nprefix = \"\\n\"\nbatch = 2\n").expect("write");
    [hotline, drafting, bpc]
        .iter()
        .map(|p| p.display().to_string())
        .collect()
}

fn metric(task: &Value, name: &str) -> Option<f64> {
    task["metrics"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)?["value"]
        .as_f64()
}

#[test]
fn quality_run_writes_reports_and_compares() {
    let tmp = std::env::temp_dir().join(format!("govlm-eval-quality-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).expect("tmp");
    let model = repo().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(model.is_file(), "{} missing: make models", model.display());
    let (_server, base) = start_server(&tmp, &model);
    let tasks = write_tasks(&tmp);
    let out = tmp.join("out");
    let run = Command::new(env!("CARGO_BIN_EXE_govlm-eval"))
        .args([
            "quality",
            "--base-url",
            &base,
            "--model",
            "smollm2",
            "--limit",
            "2",
            "--task",
            &tasks.join(","),
        ])
        .arg("--out")
        .arg(&out)
        .arg("--model-file")
        .arg(&model)
        .stderr(Stdio::inherit())
        .output()
        .expect("run govlm-eval");
    assert!(
        run.status.success(),
        "govlm-eval failed: {}",
        String::from_utf8_lossy(&run.stdout)
    );

    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("quality.json")).expect("quality.json"),
    )
    .expect("JSON");
    let meta = &report["meta"];
    assert_eq!(meta["model"], "smollm2");
    assert_eq!(meta["model_file"]["sha256"], SMOL_SHA256);
    assert!(meta["date"].as_str().is_some_and(|d| d.len() >= 19));
    assert!(meta["machine"]["cores"].as_u64().is_some_and(|c| c >= 1));
    assert_eq!(meta["settings"]["limit"], 2);
    let tasks = report["tasks"].as_array().expect("tasks");
    let ids: Vec<&str> = tasks.iter().filter_map(|t| t["id"].as_str()).collect();
    assert_eq!(ids, ["hotline_small", "drafting_small", "bpc_small"]);
    for t in tasks {
        assert_eq!(t["n_items"], 2, "{}", t["id"]);
        assert_eq!(t["items"].as_array().map(Vec::len), Some(2), "{}", t["id"]);
        assert_eq!(
            metric(t, "request_error_rate"),
            Some(0.0),
            "{}: {}",
            t["id"],
            t["items"]
        );
        for m in t["metrics"].as_array().expect("metrics") {
            if m["unit"] == "rate" {
                if let Some(v) = m["value"].as_f64() {
                    assert!((0.0..=1.0).contains(&v), "{}: {m}", t["id"]);
                }
            }
        }
    }
    let hot = &tasks[0];
    for name in [
        "schema_valid_rate",
        "json_parse_rate",
        "case_type_accuracy",
        "department_accuracy",
        "district_accuracy",
        "urgency_accuracy",
    ] {
        assert!(metric(hot, name).is_some(), "{name} missing");
    }
    assert!(hot["items"][0]["output"].is_string());
    let draft = &tasks[1];
    assert!(metric(draft, "check:opening").is_some());
    assert!(metric(draft, "all_checks_pass_rate").is_some());
    let bpc = &tasks[2];
    let b = metric(bpc, "bits_per_char").expect("bpc");
    assert!(b.is_finite() && b > 0.0, "{b}");
    assert_eq!(metric(bpc, "chars_scored"), Some(42.0)); // 23 + 19 characters
    let md = std::fs::read_to_string(out.join("quality.md")).expect("quality.md");
    assert!(md.contains("## bpc_small") && md.contains(SMOL_SHA256));

    let cmp = Command::new(env!("CARGO_BIN_EXE_govlm-eval"))
        .args(["quality", "--compare"])
        .arg(&out)
        .arg(out.join("quality.json"))
        .output()
        .expect("compare");
    assert!(cmp.status.success());
    let text = String::from_utf8_lossy(&cmp.stdout);
    assert!(
        text.contains("## hotline_small") && text.contains("bits_per_char"),
        "{text}"
    );
    assert!(
        !text.contains("worse") && !text.contains("better") && text.contains(" = |"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&tmp);
}
