//! `govlm-eval load`: load test of an OpenAI-compatible endpoint (ours, llama.cpp's
//! `llama-server`, vLLM). Fixed concurrency (a sweep) or an arrival rate, streaming by default;
//! reports TTFT, ITL, TPOT, E2E, throughput, goodput and errors as JSON, Markdown and a PNG.

pub mod arrival;
pub mod client;
pub mod compare;
pub mod dataset;
pub mod output;
pub mod plot;
pub mod runner;
pub mod sse;
pub mod stats;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::report::{fetch_models, ModelInfo, RunInfo};
use arrival::ArrivalKind;
use client::{Endpoint, RequestSpec};
use dataset::DatasetKind;
use output::{LoadReport, ServerInfo, Settings, SCHEMA};
use runner::{Runner, Stop};
use stats::{aggregate, GoodputTargets, Level};

/// Requests per level when neither `--num-requests` nor `--duration` is given.
const DEFAULT_NUM_REQUESTS: usize = 100;

/// Synthetic prompts generated for a duration-bound run (cycled).
const DURATION_PROMPT_POOL: usize = 1024;

/// Arguments of `govlm-eval load`.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Base URL of the OpenAI API (with `/v1`).
    #[arg(long, default_value = "http://127.0.0.1:8080/v1")]
    pub base_url: String,
    /// Bearer token sent with every request.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Model id (default: the first of GET /models).
    #[arg(long)]
    pub model: Option<String>,
    /// Which endpoint to load.
    #[arg(long, value_enum, default_value_t = Endpoint::Chat)]
    pub endpoint: Endpoint,

    /// Fixed concurrencies, run one after the other (e.g. `1,4,16,64`). Default: 1.
    #[arg(long, value_delimiter = ',', conflicts_with = "request_rate")]
    pub concurrency: Vec<usize>,
    /// Arrival rates in requests/s, run one after the other (`inf`: all at once).
    #[arg(long, value_delimiter = ',')]
    pub request_rate: Vec<f64>,
    /// Arrival process for `--request-rate` (seeded with `--seed`).
    #[arg(long, value_enum, default_value_t = ArrivalKind::Poisson)]
    pub arrival: ArrivalKind,
    /// At most this many requests in flight with `--request-rate`.
    #[arg(long)]
    pub max_concurrency: Option<usize>,
    /// Measured requests per level [default: 100].
    #[arg(long, conflicts_with = "duration")]
    pub num_requests: Option<usize>,
    /// Seconds per level instead of a number of requests (requests in flight at the end are
    /// awaited and counted).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Requests sent before each level and left out of its statistics.
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,

    /// Prompt source.
    #[arg(long, value_enum, default_value_t = DatasetKind::Synthetic)]
    pub dataset: DatasetKind,
    /// File or folder for the dataset (hotline default: ../shared/data/hotline; documents
    /// default: ../shared/data/documents; required for jsonl).
    #[arg(long)]
    pub dataset_path: Option<PathBuf>,
    /// JSONL field holding the prompt (`--dataset jsonl`).
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// Characters per document chunk (`--dataset documents`).
    #[arg(long, default_value_t = 1500)]
    pub chunk_chars: usize,
    /// Synthetic prompt length in tokens (about).
    #[arg(long, default_value_t = 128)]
    pub input_tokens: usize,
    /// `max_tokens` of every request.
    #[arg(long, default_value_t = 128)]
    pub output_tokens: usize,
    /// Send `ignore_eos: true`, so every answer is `--output-tokens` long.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Sampling temperature to send (default: the server's).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Ask for whole answers instead of streams (no TTFT, ITL or TPOT).
    #[arg(long)]
    pub no_stream: bool,
    /// Seed for synthetic prompts, prompt order and Poisson arrivals.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Latency targets for goodput in ms, e.g. `ttft:500,tpot:100` (names: ttft, tpot, e2e).
    #[arg(long)]
    pub goodput: Option<GoodputTargets>,
    /// Seconds before a request is given up (counted as a `timeout` error).
    #[arg(long, default_value_t = 600.0)]
    pub timeout: f64,
    /// Reuse connections between requests. By default every request opens its own
    /// connection (as vLLM's benchmark_serving does): servers that close kept-alive
    /// connections (llama.cpp's closes after 5 requests) otherwise race with reuse and
    /// requests fail with "connection closed before message completed".
    #[arg(long)]
    pub keep_alive: bool,

    /// Folder for load.json, load.md and (for a sweep) load.png.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Name of the server in reports and comparisons (e.g. `govlm`, `llama.cpp`).
    #[arg(long)]
    pub server_name: Option<String>,
    /// The model's GGUF file, hashed (SHA-256) into the report.
    #[arg(long)]
    pub model_file: Option<PathBuf>,
    /// The model file's SHA-256, when the file is not at hand.
    #[arg(long)]
    pub model_sha256: Option<String>,
    /// TrueType font for the chart (default: a system font; none: a chart without text).
    #[arg(long)]
    pub font: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// The levels to run and how each stops, after checking the arguments.
fn plan(args: &LoadArgs) -> anyhow::Result<(Vec<Level>, Stop)> {
    let levels: Vec<Level> = if !args.request_rate.is_empty() {
        if let Some(r) = args.request_rate.iter().find(|r| r.is_nan() || **r <= 0.0) {
            anyhow::bail!("--request-rate {r}: rates must be positive (or inf)");
        }
        args.request_rate.iter().map(|r| Level::Rate(*r)).collect()
    } else if args.concurrency.is_empty() {
        vec![Level::Concurrency(1)]
    } else {
        if args.concurrency.contains(&0) {
            anyhow::bail!("--concurrency: every level must be at least 1");
        }
        args.concurrency
            .iter()
            .map(|c| Level::Concurrency(*c))
            .collect()
    };
    let stop = match (args.num_requests, args.duration) {
        (Some(0), _) => anyhow::bail!("--num-requests must be at least 1"),
        (Some(n), _) => Stop::Count(n),
        (None, Some(d)) if !(d.is_finite() && d > 0.0) => {
            anyhow::bail!("--duration must be a positive number of seconds")
        }
        (None, Some(d)) => Stop::Duration(d),
        (None, None) => Stop::Count(DEFAULT_NUM_REQUESTS),
    };
    if let Stop::Duration(_) = stop {
        if levels
            .iter()
            .any(|l| matches!(l, Level::Rate(r) if r.is_infinite()))
        {
            anyhow::bail!("--request-rate inf needs --num-requests, not --duration");
        }
    }
    if args.no_stream {
        if let Some(g) = &args.goodput {
            if g.ttft_ms.is_some() || g.tpot_ms.is_some() {
                anyhow::bail!(
                    "--goodput ttft/tpot targets need streaming; with --no-stream use e2e only"
                );
            }
        }
    }
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        anyhow::bail!("--timeout must be a positive number of seconds");
    }
    if args.output_tokens == 0 {
        anyhow::bail!("--output-tokens must be at least 1");
    }
    if args.max_concurrency == Some(0) {
        anyhow::bail!("--max-concurrency must be at least 1");
    }
    Ok((levels, stop))
}

/// The prompts of the run.
fn prompts(args: &LoadArgs, stop: Stop) -> anyhow::Result<Vec<String>> {
    let default_dir = |name: &str| Path::new("../shared/data").join(name);
    let mut p = match args.dataset {
        DatasetKind::Synthetic => {
            let count = match stop {
                Stop::Count(n) => n + args.warmup,
                Stop::Duration(_) => DURATION_PROMPT_POOL,
            };
            return Ok(dataset::synthetic(args.input_tokens, count, args.seed));
        }
        DatasetKind::Hotline => {
            let dir = args
                .dataset_path
                .clone()
                .unwrap_or_else(|| default_dir("hotline"));
            dataset::hotline(&dir).context("hotline dataset (set --dataset-path)")?
        }
        DatasetKind::Documents => {
            let dir = args
                .dataset_path
                .clone()
                .unwrap_or_else(|| default_dir("documents"));
            dataset::documents(&dir, args.chunk_chars).context("documents (set --dataset-path)")?
        }
        DatasetKind::Jsonl => {
            let Some(path) = &args.dataset_path else {
                anyhow::bail!("--dataset jsonl needs --dataset-path FILE");
            };
            let p = dataset::jsonl_field(path, &args.text_field)?;
            if p.is_empty() {
                anyhow::bail!("no prompts in {}", path.display());
            }
            p
        }
    };
    dataset::shuffle(&mut p, args.seed);
    Ok(p)
}

fn settings(args: &LoadArgs, levels: &[Level], stop: Stop, prompts: usize) -> Settings {
    let rate_mode = levels.iter().any(|l| matches!(l, Level::Rate(_)));
    Settings {
        endpoint: match args.endpoint {
            Endpoint::Chat => "chat",
            Endpoint::Completions => "completions",
        }
        .to_string(),
        stream: !args.no_stream,
        dataset: match args.dataset {
            DatasetKind::Hotline => "hotline",
            DatasetKind::Documents => "documents",
            DatasetKind::Synthetic => "synthetic",
            DatasetKind::Jsonl => "jsonl",
        }
        .to_string(),
        dataset_path: args.dataset_path.as_ref().map(|p| p.display().to_string()),
        prompts,
        input_tokens: (args.dataset == DatasetKind::Synthetic).then_some(args.input_tokens),
        max_tokens: args.output_tokens,
        ignore_eos: args.ignore_eos,
        temperature: args.temperature,
        mode: if rate_mode { "rate" } else { "concurrency" }.to_string(),
        concurrency: levels
            .iter()
            .filter_map(|l| match l {
                Level::Concurrency(c) => Some(*c),
                Level::Rate(_) => None,
            })
            .collect(),
        request_rate: levels
            .iter()
            .filter_map(|l| match l {
                Level::Rate(r) => Some(r.is_finite().then_some(*r)),
                Level::Concurrency(_) => None,
            })
            .collect(),
        arrival: rate_mode.then(|| {
            match args.arrival {
                ArrivalKind::Poisson => "poisson",
                ArrivalKind::Constant => "constant",
            }
            .to_string()
        }),
        max_concurrency: if rate_mode {
            args.max_concurrency
        } else {
            None
        },
        num_requests: match stop {
            Stop::Count(n) => Some(n),
            Stop::Duration(_) => None,
        },
        duration_s: match stop {
            Stop::Duration(d) => Some(d),
            Stop::Count(_) => None,
        },
        warmup: args.warmup,
        seed: args.seed,
        goodput: args.goodput,
        timeout_s: args.timeout,
        keep_alive: args.keep_alive,
    }
}

/// Runs the load test and writes the reports.
///
/// Errors: bad arguments, unreadable dataset, no model id known, reports not writable, or no
/// request succeeded at all (the reports are written first).
pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    let (levels, stop) = plan(&args)?;
    let run_info = RunInfo::collect();
    let prompts = prompts(&args, stop)?;
    let mut builder = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(30));
    if !args.keep_alive {
        builder = builder.pool_max_idle_per_host(0);
    }
    let client = builder.build().context("cannot build the HTTP client")?;

    let models = match fetch_models(&client, &args.base_url, args.api_key.as_deref()).await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("govlm-eval: warning: {e:#}");
            Vec::new()
        }
    };
    let model_id = match &args.model {
        Some(m) => m.clone(),
        None => models
            .first()
            .and_then(|m| m.get("id"))
            .and_then(|id| id.as_str())
            .map(str::to_string)
            .context("no --model given and GET /models listed none")?,
    };
    let entry = models
        .iter()
        .find(|m| m.get("id").and_then(|i| i.as_str()) == Some(model_id.as_str()))
        .cloned();
    let model = ModelInfo::build(
        &model_id,
        entry,
        args.model_sha256.as_deref(),
        args.model_file.as_deref(),
    )?;

    let spec = RequestSpec {
        base_url: args.base_url.clone(),
        api_key: args.api_key.clone(),
        model: model_id.clone(),
        endpoint: args.endpoint,
        stream: !args.no_stream,
        max_tokens: args.output_tokens,
        ignore_eos: args.ignore_eos,
        temperature: args.temperature,
        timeout: Duration::from_secs_f64(args.timeout),
    };
    let settings = settings(&args, &levels, stop, prompts.len());
    let runner = Runner {
        client,
        spec: Arc::new(spec),
        prompts: Arc::new(prompts),
        progress: !args.quiet,
        arrival: args.arrival,
        max_concurrency: args.max_concurrency,
        seed: args.seed,
    };

    eprintln!(
        "govlm-eval load: {} at {}, {} level(s)",
        model_id,
        args.base_url,
        levels.len()
    );
    let mut results = Vec::new();
    for level in &levels {
        let lr = runner.run_level(*level, stop, args.warmup).await;
        let r = aggregate(
            *level,
            &lr.results,
            lr.duration_s,
            lr.warmup,
            args.goodput.as_ref(),
        );
        eprintln!(
            "  {}: {} ok, {} failed, {:.2} req/s, {:.1} output tok/s, TTFT p50 {} ms",
            r.label,
            r.completed,
            r.failed,
            r.request_throughput,
            r.output_throughput,
            r.ttft_ms
                .map(|s| format!("{:.1}", s.p50))
                .unwrap_or_else(|| "–".into())
        );
        results.push(r);
    }

    let report = LoadReport {
        schema: SCHEMA.to_string(),
        run: run_info,
        server: ServerInfo {
            base_url: args.base_url.clone(),
            name: args.server_name.clone(),
            models,
        },
        model,
        settings,
        levels: results,
    };
    let md = output::markdown(&report);
    println!("{md}");
    if let Some(dir) = &args.out {
        write_outputs(&report, &md, dir, args.font.as_deref())?;
    }
    if report.levels.iter().all(|l| l.completed == 0) {
        anyhow::bail!("no request succeeded (see the errors above)");
    }
    Ok(())
}

/// Writes load.json, load.md and, for more than one level, load.png into `dir`.
///
/// Errors: the folder or a file cannot be written. A chart that cannot be drawn is a warning.
pub fn write_outputs(
    report: &LoadReport,
    md: &str,
    dir: &Path,
    font: Option<&Path>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let json = serde_json::to_string_pretty(report)?;
    let jp = dir.join("load.json");
    std::fs::write(&jp, json + "\n").with_context(|| format!("cannot write {}", jp.display()))?;
    let mp = dir.join("load.md");
    std::fs::write(&mp, md).with_context(|| format!("cannot write {}", mp.display()))?;
    if report.levels.len() > 1 {
        let pp = dir.join("load.png");
        let x_name = if report.settings.mode == "rate" {
            "requests/s"
        } else {
            "concurrency"
        };
        let font = plot::find_font(font);
        if font.is_none() {
            eprintln!("govlm-eval: no font found (--font): the chart has no text");
        }
        if let Err(e) = plot::draw(&report.levels, x_name, &pp, font.as_deref()) {
            eprintln!("govlm-eval: warning: cannot draw {}: {e:#}", pp.display());
        }
    }
    eprintln!("govlm-eval: reports written to {}", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        load: LoadArgs,
    }

    fn parse(args: &[&str]) -> Result<LoadArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied())).map(|c| c.load)
    }

    #[test]
    fn sweep_and_rate_plans() {
        let a = parse(&["--concurrency", "1,4,16", "--num-requests", "8"]).unwrap();
        let (levels, stop) = plan(&a).unwrap();
        assert_eq!(
            levels,
            vec![
                Level::Concurrency(1),
                Level::Concurrency(4),
                Level::Concurrency(16)
            ]
        );
        assert_eq!(stop, Stop::Count(8));
        let a = parse(&["--request-rate", "2.5,inf", "--arrival", "constant"]).unwrap();
        let (levels, stop) = plan(&a).unwrap();
        assert_eq!(levels, vec![Level::Rate(2.5), Level::Rate(f64::INFINITY)]);
        assert_eq!(stop, Stop::Count(DEFAULT_NUM_REQUESTS));
        let (levels, _) = plan(&parse(&[]).unwrap()).unwrap();
        assert_eq!(levels, vec![Level::Concurrency(1)]);
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(parse(&["--concurrency", "1", "--request-rate", "2"]).is_err());
        assert!(parse(&["--num-requests", "1", "--duration", "2"]).is_err());
        assert!(parse(&["--goodput", "speed:1"]).is_err());
        assert!(plan(&parse(&["--concurrency", "0"]).unwrap()).is_err());
        assert!(plan(&parse(&["--request-rate=-1"]).unwrap()).is_err());
        assert!(plan(&parse(&["--duration", "0"]).unwrap()).is_err());
        assert!(plan(&parse(&["--request-rate", "inf", "--duration", "5"]).unwrap()).is_err());
        assert!(plan(&parse(&["--no-stream", "--goodput", "ttft:100"]).unwrap()).is_err());
        assert!(plan(&parse(&["--no-stream", "--goodput", "e2e:100"]).unwrap()).is_ok());
        let a = parse(&["--dataset", "jsonl"]).unwrap();
        assert!(prompts(&a, Stop::Count(1)).is_err());
    }

    #[test]
    fn synthetic_prompt_pool_covers_warmup_and_requests() {
        let a = parse(&[
            "--num-requests",
            "5",
            "--warmup",
            "2",
            "--input-tokens",
            "3",
        ])
        .unwrap();
        let p = prompts(&a, Stop::Count(5)).unwrap();
        assert_eq!(p.len(), 7);
        assert!(p.iter().all(|x| x.split(' ').count() == 3));
    }
}
