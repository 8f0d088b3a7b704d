//! End-to-end: `govlm-eval load` against the real `govlm` server with SmolLM2-135M on a free
//! port: a concurrency sweep of 1,2 with 4 requests each and `ignore_eos`, then the JSON
//! report is checked (every request succeeded with exactly the requested output tokens, the
//! model file hash, the files written).
//!
//! Needs the workspace built (`cargo test --release --workspace` builds `govlm` too; alone:
//! `cargo build --release -p govlm-server` first).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use sha2::{Digest, Sha256};

const MODEL_ID: &str = "smollm2-135m-instruct";
const MODEL_FILE: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
const OUTPUT_TOKENS: u64 = 8;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("eval/ has a parent")
        .to_path_buf()
}

/// `govlm` of the same target folder as this test, else `<repo>/target/release/govlm`.
fn govlm_binary() -> PathBuf {
    let name = format!("govlm{}", std::env::consts::EXE_SUFFIX);
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent()?.parent().map(|d| d.join(&name)));
    let candidates = beside
        .into_iter()
        .chain([repo_root().join("target/release").join(&name)]);
    for c in candidates {
        if c.is_file() {
            return c;
        }
    }
    panic!("the govlm binary is not built: run `cargo build --release -p govlm-server` (or test the whole workspace)");
}

/// The server process, killed when dropped.
struct Server {
    child: Child,
    base_url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server() -> Server {
    let mut child = Command::new(govlm_binary())
        .args([
            "serve",
            "--config",
            "models.toml",
            "--model",
            MODEL_ID,
            "--port",
            "0",
        ])
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("govlm starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    // Reads the server's log to find its address, then keeps draining it.
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                if let Some(tx) = tx.take() {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
            }
        }
    });
    let mut server = Server {
        child,
        base_url: String::new(),
    };
    let addr = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("govlm prints its address");
    server.base_url = format!("http://{addr}/v1");
    server
}

#[test]
fn load_sweep_against_govlm_with_smollm2() {
    let server = start_server();
    let dir = std::env::temp_dir().join(format!("govlm-eval-real-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let model_file = repo_root().join(MODEL_FILE);
    let out = Command::new(env!("CARGO_BIN_EXE_govlm-eval"))
        .args([
            "load",
            "--base-url",
            &server.base_url,
            "--concurrency",
            "1,2",
        ])
        .args(["--num-requests", "4", "--input-tokens", "16"])
        .args([
            "--output-tokens",
            &OUTPUT_TOKENS.to_string(),
            "--ignore-eos",
        ])
        .args(["--server-name", "govlm", "--timeout", "120", "--quiet"])
        .arg("--model-file")
        .arg(&model_file)
        .arg("--out")
        .arg(&dir)
        .env_remove("OPENAI_API_KEY")
        .output()
        .expect("govlm-eval runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "govlm-eval failed: {stderr}");
    drop(server);

    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("load.json")).unwrap()).unwrap();
    assert_eq!(j["model"]["id"], MODEL_ID);
    assert_eq!(j["model"]["server_entry"]["id"], MODEL_ID);
    let sha = format!("{:x}", Sha256::digest(std::fs::read(&model_file).unwrap()));
    assert_eq!(j["model"]["sha256"], sha.as_str());
    assert_eq!(j["model"]["file"]["sha256"], sha.as_str());
    let levels = j["levels"].as_array().unwrap();
    assert_eq!(levels.len(), 2);
    for (l, c) in levels.iter().zip([1u64, 2]) {
        assert_eq!(l["concurrency"], c);
        assert_eq!(l["completed"], 4, "{l}");
        assert_eq!(l["failed"], 0, "{l}");
        assert_eq!(l["total_output_tokens"], 4 * OUTPUT_TOKENS);
        assert_eq!(l["output_tokens_per_request"]["min"], OUTPUT_TOKENS as f64);
        assert_eq!(l["output_tokens_per_request"]["max"], OUTPUT_TOKENS as f64);
        assert_eq!(
            l["output_tokens_counted_from_chunks"], 0,
            "govlm sends usage"
        );
        assert!(l["total_prompt_tokens"].as_u64().unwrap() >= 4 * 16);
        assert_eq!(l["ttft_ms"]["n"], 4);
        assert_eq!(l["tpot_ms"]["n"], 4);
        assert!(l["itl_ms"]["n"].as_u64().unwrap() >= 4);
        assert!(l["output_throughput"].as_f64().unwrap() > 0.0);
    }
    let md = std::fs::read_to_string(dir.join("load.md")).unwrap();
    assert!(md.contains("| concurrency 2 | 4 | 0 |"), "{md}");
    let png = std::fs::read(dir.join("load.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    std::fs::remove_dir_all(&dir).unwrap();
}
