//! Facts every report states: the machine, the git commit, the date, and the model (id, the
//! server's own description of it, and the SHA-256 of its file when the user names the file or
//! the server reports a hash). Shared by `govlm-eval load` and `govlm-eval quality`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The machine a report was made on, read from `/proc` where it exists.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    /// CPU model name (`model name` of /proc/cpuinfo); `None` where unreadable.
    pub cpu_model: Option<String>,
    /// Logical CPUs the process may use.
    pub cpu_cores: usize,
    /// Total memory in bytes (`MemTotal` of /proc/meminfo); `None` where unreadable.
    pub ram_bytes: Option<u64>,
    /// `std::env::consts::OS`, e.g. `linux`.
    pub os: String,
    /// `std::env::consts::ARCH`, e.g. `x86_64`.
    pub arch: String,
}

impl Machine {
    /// Reads the machine's facts; never fails (unknown facts are `None`).
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            cpu_model: parse_cpu_model(&cpuinfo),
            cpu_cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            ram_bytes: parse_mem_total(&meminfo),
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
        }
    }

    /// One line for people, e.g. `AMD EPYC, 2 cores, 23.5 GiB RAM, linux/x86_64`.
    pub fn describe(&self) -> String {
        let ram = self
            .ram_bytes
            .map(|b| format!("{:.1} GiB RAM", b as f64 / (1u64 << 30) as f64))
            .unwrap_or_else(|| "RAM unknown".to_string());
        format!(
            "{}, {} cores, {}, {}/{}",
            self.cpu_model.as_deref().unwrap_or("unknown CPU"),
            self.cpu_cores,
            ram,
            self.os,
            self.arch
        )
    }
}

/// First `model name` (x86) or `Model`/`Hardware` (ARM) value of /proc/cpuinfo text.
fn parse_cpu_model(cpuinfo: &str) -> Option<String> {
    for key in ["model name", "Model", "Hardware", "cpu model"] {
        for line in cpuinfo.lines() {
            if let Some((k, v)) = line.split_once(':') {
                if k.trim() == key && !v.trim().is_empty() {
                    return Some(v.trim().to_string());
                }
            }
        }
    }
    None
}

/// `MemTotal` of /proc/meminfo text, in bytes.
fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut parts = line["MemTotal:".len()..].split_whitespace();
    let n: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => Some(n * 1024),
        Some(_) => None,
    }
}

/// The git commit of the working directory the tool runs in.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GitInfo {
    /// Full commit hash of `HEAD`.
    pub commit: String,
    /// Whether tracked files differ from `HEAD` (`git status --porcelain --untracked-files=no`).
    pub dirty: bool,
}

impl GitInfo {
    /// `HEAD` of the repository containing `dir`; `None` outside a repository or without git.
    pub fn detect(dir: &Path) -> Option<Self> {
        let run = |args: &[&str]| -> Option<String> {
            let out = std::process::Command::new("git")
                .args(args)
                .current_dir(dir)
                .stderr(std::process::Stdio::null())
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        let commit = run(&["rev-parse", "HEAD"])?;
        let dirty = run(&["status", "--porcelain", "--untracked-files=no"])
            .map(|s| !s.is_empty())
            .unwrap_or(false);
        Some(GitInfo { commit, dirty })
    }
}

/// Size and SHA-256 of a model file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileHash {
    /// The path as given.
    pub path: PathBuf,
    /// File size in bytes.
    pub bytes: u64,
    /// Lower-case hex SHA-256 of the contents.
    pub sha256: String,
}

/// Hashes a file with SHA-256, reading it in 1 MiB blocks.
///
/// Errors: the file cannot be opened or read.
pub fn sha256_file(path: &Path) -> std::io::Result<FileHash> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok(FileHash {
        path: path.to_path_buf(),
        bytes,
        sha256: hex(&hasher.finalize()),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// When, where and with what a report was made.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunInfo {
    /// `govlm-eval`.
    pub tool: String,
    /// Version of this crate.
    pub tool_version: String,
    /// Start of the run, RFC 3339 in UTC, e.g. `2026-11-29T10:41:06Z`.
    pub date: String,
    /// Commit of the repository the tool was run in, if any.
    pub git: Option<GitInfo>,
    /// The machine the tool ran on (the client; the server may be elsewhere).
    pub machine: Machine,
    /// The command line, with the value of `--api-key` replaced by `***`.
    pub command_line: Vec<String>,
}

impl RunInfo {
    /// Collects the facts now, for the current directory and process arguments.
    pub fn collect() -> Self {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        RunInfo {
            tool: "govlm-eval".to_string(),
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            date: now_rfc3339(),
            git: GitInfo::detect(&cwd),
            machine: Machine::detect(),
            command_line: redact_args(std::env::args()),
        }
    }
}

/// The current time as RFC 3339 in UTC, seconds precision.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Replaces secret values (`--api-key X`, `--api-key=X`) in a command line by `***`.
pub fn redact_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut hide_next = false;
    for a in args {
        if hide_next {
            out.push("***".to_string());
            hide_next = false;
        } else if a == "--api-key" {
            out.push(a);
            hide_next = true;
        } else if a.starts_with("--api-key=") {
            out.push("--api-key=***".to_string());
        } else {
            out.push(a);
        }
    }
    out
}

/// The model a report is about.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelInfo {
    /// Model id as sent in requests.
    pub id: String,
    /// The server's entry for it in `GET /v1/models`, as returned; `None` if not listed.
    pub server_entry: Option<serde_json::Value>,
    /// SHA-256 of the model file: given by the user, hashed from `--model-file`, or reported by
    /// the server (`sha256`, `file_sha256` or `gguf_sha256` in its model entry).
    pub sha256: Option<String>,
    /// The model file hashed, when the user named one.
    pub file: Option<FileHash>,
}

impl ModelInfo {
    /// Builds the model facts; hashes `model_file` when given.
    ///
    /// Errors: `model_file` cannot be read; `sha256` given and `model_file` hashes differently.
    pub fn build(
        id: &str,
        server_entry: Option<serde_json::Value>,
        sha256: Option<&str>,
        model_file: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let file = match model_file {
            Some(p) => Some(
                sha256_file(p)
                    .map_err(|e| anyhow::anyhow!("cannot hash model file {}: {e}", p.display()))?,
            ),
            None => None,
        };
        let from_server = server_entry.as_ref().and_then(|e| {
            ["sha256", "file_sha256", "gguf_sha256"]
                .iter()
                .find_map(|k| e.get(*k).and_then(|v| v.as_str()).map(str::to_string))
        });
        let given = sha256.map(|s| s.trim().to_ascii_lowercase());
        if let (Some(g), Some(f)) = (&given, &file) {
            if *g != f.sha256 {
                anyhow::bail!(
                    "--model-sha256 {g} does not match the SHA-256 of {} ({})",
                    f.path.display(),
                    f.sha256
                );
            }
        }
        let sha256 = given
            .or_else(|| file.as_ref().map(|f| f.sha256.clone()))
            .or(from_server);
        Ok(ModelInfo {
            id: id.to_string(),
            server_entry,
            sha256,
            file,
        })
    }
}

/// Joins an OpenAI base URL (`http://host:port/v1`, with or without a trailing slash) and a
/// path (`models`, `chat/completions`).
pub fn join_url(base_url: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base_url.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// `GET {base_url}/models`: the `data` array of the answer.
///
/// Errors: transport errors, a non-2xx status (with the body), or an answer without `data`.
pub async fn fetch_models(
    client: &reqwest::Client,
    base_url: &str,
    api_key: Option<&str>,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut req = client
        .get(join_url(base_url, "models"))
        .timeout(Duration::from_secs(30));
    if let Some(k) = api_key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await?;
    let status = resp.status();
    let body = resp.text().await?;
    if !status.is_success() {
        anyhow::bail!("GET /models answered {status}: {}", truncate(&body, 500));
    }
    let v: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| anyhow::anyhow!("GET /models: answer is not JSON ({e})"))?;
    match v.get("data").and_then(|d| d.as_array()) {
        Some(a) => Ok(a.clone()),
        None => anyhow::bail!("GET /models: answer has no `data` array"),
    }
}

/// At most `max` bytes of `s`, cut at a character boundary, with `…` appended when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_memory_are_parsed() {
        let cpu = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(parse_cpu_model(cpu).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(parse_cpu_model("processor : 0\n"), None);
        let mem = "MemTotal:       24684092 kB\nMemFree:  1 kB\n";
        assert_eq!(parse_mem_total(mem), Some(24684092 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn sha256_of_a_file() {
        let dir = std::env::temp_dir().join(format!("govlm-eval-sha-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("abc.bin");
        std::fs::write(&p, b"abc").unwrap();
        let h = sha256_file(&p).unwrap();
        assert_eq!(h.bytes, 3);
        assert_eq!(
            h.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let wrong = ModelInfo::build("m", None, Some("00"), Some(&p));
        assert!(wrong.is_err());
        let ok = ModelInfo::build("m", None, None, Some(&p)).unwrap();
        assert_eq!(ok.sha256.as_deref(), Some(h.sha256.as_str()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn server_reported_hash_is_used() {
        let entry = serde_json::json!({"id": "m", "sha256": "abcd"});
        let m = ModelInfo::build("m", Some(entry), None, None).unwrap();
        assert_eq!(m.sha256.as_deref(), Some("abcd"));
    }

    #[test]
    fn api_key_is_redacted_and_urls_join() {
        let args = ["x", "--api-key", "sk-1", "--api-key=sk-2", "--model", "m"].map(String::from);
        assert_eq!(
            redact_args(args),
            ["x", "--api-key", "***", "--api-key=***", "--model", "m"]
        );
        assert_eq!(
            join_url("http://h:1/v1/", "/models"),
            "http://h:1/v1/models"
        );
        assert_eq!(join_url("http://h:1/v1", "models"), "http://h:1/v1/models");
        assert_eq!(truncate("héllo", 2), "h…");
    }
}
