//! Quality suites (`govlm-eval quality`): tasks defined as data (TOML + JSONL under
//! `eval/tasks/`), run against any OpenAI-compatible server; reports in `quality.json` and
//! `quality.md`; `--compare A B` shows two runs side by side.

pub mod bpc;
pub mod client;
pub mod drafting;
pub mod facts;
pub mod pii;
pub mod report;
pub mod script;
pub mod suites;
pub mod task;
pub mod text;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use serde_json::{json, Value};

use report::{Meta, QualityReport};
use task::TaskKind;

/// Arguments of `govlm-eval quality`.
#[derive(Debug, Clone, Args)]
pub struct QualityArgs {
    /// Base URL of the OpenAI-compatible server (`http://127.0.0.1:8080` or `.../v1`).
    #[arg(long, required_unless_present = "compare")]
    pub base_url: Option<String>,
    /// Model id to evaluate.
    #[arg(long, required_unless_present = "compare")]
    pub model: Option<String>,
    /// Tasks to run, comma-separated: names of `<tasks-dir>/<name>.toml` or paths to TOML files.
    #[arg(long, value_delimiter = ',', required_unless_present = "compare")]
    pub task: Vec<String>,
    /// Folder for quality.json and quality.md (created if missing).
    #[arg(long, required_unless_present = "compare")]
    pub out: Option<PathBuf>,
    /// At most this many items per task (the first N of its data file).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Per-task item limit overriding --limit, as TASK_ID=N (repeatable), e.g.
    /// `--task-limit cantonese_bpc=200`.
    #[arg(long, value_parser = parse_task_limit)]
    pub task_limit: Vec<(String, usize)>,
    /// Folder of task files (default: `eval/tasks` here, else the one beside the sources).
    #[arg(long)]
    pub tasks_dir: Option<PathBuf>,
    /// The model file (GGUF …): its SHA-256 and size go into the report.
    #[arg(long)]
    pub model_file: Option<PathBuf>,
    /// Bearer token for the server.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Per-request timeout (s).
    #[arg(long, default_value_t = 600)]
    pub timeout_s: u64,
    /// Compare two reports (quality.json files or folders holding one) instead of running:
    /// prints them side by side with differences marked (and writes compare.md into --out).
    #[arg(long, num_args = 2, value_names = ["A", "B"])]
    pub compare: Option<Vec<PathBuf>>,
}

/// Runs the quality suites (or the comparison).
pub async fn run(args: QualityArgs) -> anyhow::Result<()> {
    if let Some(pair) = &args.compare {
        let [a, b] = pair.as_slice() else {
            anyhow::bail!("--compare takes two reports");
        };
        let text = report::compare(&report::read(a)?, &report::read(b)?);
        if let Some(out) = &args.out {
            std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
            std::fs::write(out.join("compare.md"), &text)?;
        }
        print!("{text}");
        return Ok(());
    }
    let (Some(base_url), Some(model), Some(out)) = (&args.base_url, &args.model, &args.out) else {
        anyhow::bail!("--base-url, --model, --task and --out are required");
    };
    let started = Instant::now();
    let date = chrono::Local::now().to_rfc3339();
    let dir = args
        .tasks_dir
        .clone()
        .unwrap_or_else(task::default_tasks_dir);
    let tasks = args
        .task
        .iter()
        .map(|t| task::load(t, &dir))
        .collect::<Result<Vec<_>, _>>()?;
    if tasks.is_empty() {
        anyhow::bail!("no --task given");
    }
    let model_file = match &args.model_file {
        Some(p) => Some(
            crate::report::sha256_file(p).with_context(|| format!("hashing {}", p.display()))?,
        ),
        None => None,
    };
    let client = client::Client::new(
        base_url,
        model,
        args.api_key.clone(),
        Duration::from_secs(args.timeout_s),
    )?;
    let server_model = client.model_info().await;
    let ctx = suites::Ctx {
        client,
        scripts: script::ScriptClassifier::new()?,
        pii: pii::PiiDetector::new()?,
        limit: args.limit,
    };
    let mut results = Vec::new();
    let mut ctx = ctx;
    for t in &tasks {
        ctx.limit = args
            .task_limit
            .iter()
            .find(|(id, _)| *id == t.file.id)
            .map(|(_, n)| *n)
            .or(args.limit);
        let r = match t.file.kind {
            TaskKind::Hotline => suites::hotline(&ctx, t).await,
            TaskKind::Summarise => suites::summarise(&ctx, t).await,
            TaskKind::Bpc => suites::bpc(&ctx, t).await,
            TaskKind::Drafting => suites::drafting(&ctx, t).await,
        }
        .with_context(|| format!("task {}", t.file.id))?;
        results.push(r);
    }
    let settings = json!({
        "tasks": args.task,
        "limit": args.limit,
        "task_limit": args.task_limit.iter().map(|(id, n)| (id.clone(), json!(n))).collect::<serde_json::Map<String, Value>>(),
        "generation": tasks.iter().map(|t| (t.file.id.clone(), json!({
            "max_tokens": t.file.generation.max_tokens,
            "temperature": t.file.generation.temperature,
            "seed": t.file.generation.seed,
        }))).collect::<serde_json::Map<String, Value>>(),
    });
    let report = QualityReport {
        meta: Meta {
            tool: format!("govlm-eval {}", env!("CARGO_PKG_VERSION")),
            model: model.clone(),
            base_url: ctx.client.base.clone(),
            model_file,
            server_model,
            git_commit: git_commit(),
            machine: machine(),
            settings,
            date,
            duration_s: started.elapsed().as_secs_f64(),
        },
        tasks: results,
    };
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(
        out.join("quality.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let md = report::markdown(&report);
    std::fs::write(out.join("quality.md"), &md)?;
    print!("{md}");
    eprintln!("wrote {}/quality.json and quality.md", out.display());
    Ok(())
}

/// Parses `TASK_ID=N`.
fn parse_task_limit(s: &str) -> Result<(String, usize), String> {
    let (id, n) = s
        .split_once('=')
        .ok_or_else(|| format!("expected TASK_ID=N, got `{s}`"))?;
    let n = n.parse::<usize>().map_err(|e| format!("`{n}`: {e}"))?;
    Ok((id.to_string(), n))
}

/// `git rev-parse HEAD` here, with `-dirty` when tracked files changed; None outside a checkout.
fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let commit = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let dirty = std::process::Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .is_some_and(|o| !o.stdout.is_empty());
    Some(if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    })
}

/// CPU model, cores, memory, OS and host name (Linux /proc where available).
fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "memory": mem_kb.map(|k| format!("{:.1} GiB", k as f64 / 1024.0 / 1024.0)).unwrap_or_default(),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "host": host,
    })
}
