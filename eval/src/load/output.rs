//! The load report: its JSON form (`load.json`) and its Markdown form (`load.md`).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::stats::{GoodputTargets, LevelResult, Summary};
use crate::report::{ModelInfo, RunInfo};

/// Identifies the JSON layout; bumped when fields change meaning.
pub const SCHEMA: &str = "govlm-eval.load/1";

/// The settings a run used (everything but the API key).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Settings {
    /// `chat` or `completions`.
    pub endpoint: String,
    pub stream: bool,
    /// `hotline`, `documents`, `synthetic`, or `jsonl` for `--dataset-path`.
    pub dataset: String,
    pub dataset_path: Option<String>,
    /// Distinct prompts available (request `i` uses prompt `i % prompts`).
    pub prompts: usize,
    /// Synthetic prompt length in tokens (about), when synthetic.
    pub input_tokens: Option<usize>,
    /// `max_tokens` of every request.
    pub max_tokens: usize,
    pub ignore_eos: bool,
    pub temperature: Option<f64>,
    /// `concurrency` or `rate`.
    pub mode: String,
    pub concurrency: Vec<usize>,
    /// Requests per second per level (rate mode); `inf` is written as null.
    pub request_rate: Vec<Option<f64>>,
    /// `poisson` or `constant` (rate mode).
    pub arrival: Option<String>,
    pub max_concurrency: Option<usize>,
    pub num_requests: Option<usize>,
    pub duration_s: Option<f64>,
    pub warmup: usize,
    pub seed: u64,
    pub goodput: Option<GoodputTargets>,
    pub timeout_s: f64,
    /// Whether connections were reused between requests (else one connection per request).
    #[serde(default)]
    pub keep_alive: bool,
}

/// The server that was measured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServerInfo {
    pub base_url: String,
    /// A name given with `--server-name` (e.g. `govlm`, `llama.cpp`), for comparisons.
    pub name: Option<String>,
    /// `GET /models` `data`, as returned (empty if the server did not answer it).
    pub models: Vec<serde_json::Value>,
}

/// Everything `load.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoadReport {
    pub schema: String,
    pub run: RunInfo,
    pub server: ServerInfo,
    pub model: ModelInfo,
    pub settings: Settings,
    /// One entry per concurrency or rate, in the order run.
    pub levels: Vec<LevelResult>,
}

impl LoadReport {
    /// A short name for tables: the server name, else the base URL.
    pub fn name(&self) -> String {
        self.server
            .name
            .clone()
            .unwrap_or_else(|| self.server.base_url.clone())
    }
}

fn f(v: f64) -> String {
    if !v.is_finite() {
        "–".to_string()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(f).unwrap_or_else(|| "–".to_string())
}

/// Escapes text for a Markdown table cell or inline code on one line.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// The Markdown report.
pub fn markdown(r: &LoadReport) -> String {
    let mut s = String::new();
    let s_ = &mut s;
    let _ = writeln!(s_, "# Load test: {} at {}\n", r.model.id, r.server.base_url);
    let _ = writeln!(s_, "| | |\n|---|---|");
    let _ = writeln!(s_, "| Date | {} |", r.run.date);
    if let Some(n) = &r.server.name {
        let _ = writeln!(s_, "| Server | {} |", cell(n));
    }
    let _ = writeln!(
        s_,
        "| Model | `{}`{} |",
        cell(&r.model.id),
        r.model
            .sha256
            .as_ref()
            .map(|h| format!(", SHA-256 `{h}`"))
            .unwrap_or_default()
    );
    if let Some(g) = &r.run.git {
        let _ = writeln!(
            s_,
            "| Commit | `{}`{} |",
            g.commit,
            if g.dirty {
                " (with uncommitted changes)"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(
        s_,
        "| Client machine | {} |",
        cell(&r.run.machine.describe())
    );
    let st = &r.settings;
    let _ = writeln!(
        s_,
        "| Endpoint | `{}`, {}, {} |",
        st.endpoint,
        if st.stream {
            "streaming"
        } else {
            "not streaming"
        },
        if st.keep_alive {
            "connections reused"
        } else {
            "one connection per request"
        }
    );
    let prompts = match (&st.dataset_path, st.input_tokens) {
        (_, Some(n)) if st.dataset == "synthetic" => format!("synthetic, about {n} tokens"),
        (Some(p), _) => format!("{} (`{}`), {} distinct", st.dataset, cell(p), st.prompts),
        (None, _) => format!("{}, {} distinct", st.dataset, st.prompts),
    };
    let _ = writeln!(s_, "| Prompts | {prompts} |");
    let _ = writeln!(
        s_,
        "| Output | max_tokens {}{}{} |",
        st.max_tokens,
        if st.ignore_eos { ", ignore_eos" } else { "" },
        st.temperature
            .map(|t| format!(", temperature {t}"))
            .unwrap_or_default()
    );
    let stop = match (st.num_requests, st.duration_s) {
        (Some(n), _) => format!("{n} requests per level"),
        (None, Some(d)) => format!("{d} s per level"),
        (None, None) => String::new(),
    };
    let shape = if st.mode == "rate" {
        format!(
            "{} arrivals (seed {}){}",
            st.arrival.as_deref().unwrap_or("poisson"),
            st.seed,
            st.max_concurrency
                .map(|c| format!(", at most {c} in flight"))
                .unwrap_or_default()
        )
    } else {
        "fixed concurrency".to_string()
    };
    let _ = writeln!(s_, "| Load | {shape}; {stop}, after {} warmup |", st.warmup);
    if let Some(g) = &st.goodput {
        let mut parts = Vec::new();
        if let Some(v) = g.ttft_ms {
            parts.push(format!("TTFT ≤ {v} ms"));
        }
        if let Some(v) = g.tpot_ms {
            parts.push(format!("TPOT ≤ {v} ms"));
        }
        if let Some(v) = g.e2e_ms {
            parts.push(format!("E2E ≤ {v} ms"));
        }
        let _ = writeln!(s_, "| Goodput targets | {} |", parts.join(", "));
    }

    let _ = writeln!(s_, "\n## Throughput\n");
    let _ = writeln!(
        s_,
        "| Level | OK | Failed | Duration (s) | Requests/s | Output tok/s | Total tok/s | Goodput (req/s) | Prompt tok/req | Output tok/req |"
    );
    let _ = writeln!(s_, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for l in &r.levels {
        let _ = writeln!(
            s_,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            l.label,
            l.completed,
            l.failed,
            f(l.duration_s),
            f(l.request_throughput),
            f(l.output_throughput),
            f(l.total_token_throughput),
            opt(l.goodput),
            opt(l.prompt_tokens_per_request.map(|x| x.mean)),
            opt(l.output_tokens_per_request.map(|x| x.mean)),
        );
    }

    let _ = writeln!(s_, "\n## Latency (ms)\n");
    let _ = writeln!(s_, "| Level | Metric | Mean | P50 | P90 | P99 |");
    let _ = writeln!(s_, "|---|---|--:|--:|--:|--:|");
    for l in &r.levels {
        let rows: [(&str, &Option<Summary>); 4] = [
            ("TTFT", &l.ttft_ms),
            ("ITL", &l.itl_ms),
            ("TPOT", &l.tpot_ms),
            ("E2E", &l.e2e_ms),
        ];
        for (name, m) in rows {
            match m {
                Some(m) => {
                    let _ = writeln!(
                        s_,
                        "| {} | {name} | {} | {} | {} | {} |",
                        l.label,
                        f(m.mean),
                        f(m.p50),
                        f(m.p90),
                        f(m.p99)
                    );
                }
                None => {
                    let _ = writeln!(s_, "| {} | {name} | – | – | – | – |", l.label);
                }
            }
        }
    }

    let counted: usize = r
        .levels
        .iter()
        .map(|l| l.output_tokens_counted_from_chunks)
        .sum();
    if counted > 0 {
        let _ = writeln!(
            s_,
            "\nThe server sent no `usage` for {counted} requests: their output tokens are counted as content chunks."
        );
    }

    let with_errors: Vec<&LevelResult> = r
        .levels
        .iter()
        .filter(|l| !l.errors.is_empty() || l.warmup_failed > 0)
        .collect();
    if !with_errors.is_empty() {
        let _ = writeln!(s_, "\n## Errors\n");
        for l in with_errors {
            if l.warmup_failed > 0 {
                let _ = writeln!(
                    s_,
                    "- {}: {} warmup requests failed",
                    l.label, l.warmup_failed
                );
            }
            for (kind, e) in &l.errors {
                let _ = writeln!(
                    s_,
                    "- {}: `{kind}` × {}; first: `{}`",
                    l.label,
                    e.count,
                    cell(&crate::report::truncate(&e.first, 300)).replace('`', "'")
                );
            }
        }
    }
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::load::stats::{aggregate, Level, RequestResult};
    use crate::report::Machine;

    pub(crate) fn sample_report() -> LoadReport {
        let ok = RequestResult {
            ttft: Some(0.1),
            itl: vec![0.05, 0.05],
            e2e: 0.2,
            output_tokens: 3,
            prompt_tokens: Some(10),
            usage_reported: true,
            ..Default::default()
        };
        let bad = RequestResult {
            error: Some(("http_429".into(), "too | many\nrequests".into())),
            ..Default::default()
        };
        let levels = vec![
            aggregate(
                Level::Concurrency(1),
                &[ok.clone(), ok.clone()],
                0.4,
                (0, 0),
                None,
            ),
            aggregate(Level::Concurrency(4), &[ok.clone(), bad], 0.2, (1, 1), None),
        ];
        LoadReport {
            schema: SCHEMA.into(),
            run: RunInfo {
                tool: "govlm-eval".into(),
                tool_version: "0".into(),
                date: "2026-01-01T00:00:00Z".into(),
                git: None,
                machine: Machine {
                    cpu_model: Some("CPU".into()),
                    cpu_cores: 2,
                    ram_bytes: Some(1 << 30),
                    os: "linux".into(),
                    arch: "x86_64".into(),
                },
                command_line: vec![],
            },
            server: ServerInfo {
                base_url: "http://127.0.0.1:1/v1".into(),
                name: Some("mock".into()),
                models: vec![],
            },
            model: ModelInfo {
                id: "m".into(),
                server_entry: None,
                sha256: Some("ab".into()),
                file: None,
            },
            settings: Settings {
                endpoint: "chat".into(),
                stream: true,
                dataset: "synthetic".into(),
                dataset_path: None,
                prompts: 2,
                input_tokens: Some(10),
                max_tokens: 3,
                ignore_eos: true,
                temperature: None,
                mode: "concurrency".into(),
                concurrency: vec![1, 4],
                request_rate: vec![],
                arrival: None,
                max_concurrency: None,
                num_requests: Some(2),
                duration_s: None,
                warmup: 0,
                seed: 0,
                goodput: None,
                timeout_s: 60.0,
                keep_alive: false,
            },
            levels,
        }
    }

    #[test]
    fn markdown_has_tables_and_errors() {
        let md = markdown(&sample_report());
        assert!(md.contains("| concurrency 1 | 2 | 0 |"), "{md}");
        assert!(
            md.contains("| concurrency 4 | TTFT | 100 | 100 | 100 | 100 |"),
            "{md}"
        );
        assert!(
            md.contains("`http_429` × 1; first: `too \\| many requests`"),
            "{md}"
        );
        assert!(md.contains("1 warmup requests failed"));
        assert!(md.contains("SHA-256 `ab`"));
    }

    #[test]
    fn json_round_trips() {
        let r = sample_report();
        let text = serde_json::to_string_pretty(&r).unwrap();
        let back: LoadReport = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
    }
}
