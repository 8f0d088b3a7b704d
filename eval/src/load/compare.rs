//! `govlm-eval compare-load A.json B.json`: two load reports side by side, per level, with the
//! ratio B/A and which side is better.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;

use super::output::LoadReport;
use super::stats::LevelResult;

/// Arguments of `govlm-eval compare-load`.
#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// The first report (`load.json`), "A".
    pub a: PathBuf,
    /// The second report (`load.json`), "B"; ratios are B/A.
    pub b: PathBuf,
    /// Also write the comparison (Markdown) to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Reads a `load.json`.
///
/// Errors: unreadable file or not a load report.
pub fn read_report(path: &std::path::Path) -> anyhow::Result<LoadReport> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{} is not a govlm-eval load report: {e}", path.display()))
}

/// Whether a bigger value of a metric is better.
#[derive(Clone, Copy)]
enum Better {
    Higher,
    Lower,
}

type Metric = (&'static str, Better, fn(&LevelResult) -> Option<f64>);

const METRICS: &[Metric] = &[
    ("Requests/s", Better::Higher, |l| Some(l.request_throughput)),
    ("Output tok/s", Better::Higher, |l| {
        Some(l.output_throughput)
    }),
    ("Total tok/s", Better::Higher, |l| {
        Some(l.total_token_throughput)
    }),
    ("Goodput (req/s)", Better::Higher, |l| l.goodput),
    ("TTFT p50 (ms)", Better::Lower, |l| l.ttft_ms.map(|s| s.p50)),
    ("TTFT p99 (ms)", Better::Lower, |l| l.ttft_ms.map(|s| s.p99)),
    ("ITL p50 (ms)", Better::Lower, |l| l.itl_ms.map(|s| s.p50)),
    ("ITL p99 (ms)", Better::Lower, |l| l.itl_ms.map(|s| s.p99)),
    ("TPOT p50 (ms)", Better::Lower, |l| l.tpot_ms.map(|s| s.p50)),
    ("TPOT p99 (ms)", Better::Lower, |l| l.tpot_ms.map(|s| s.p99)),
    ("E2E p50 (ms)", Better::Lower, |l| l.e2e_ms.map(|s| s.p50)),
    ("E2E p99 (ms)", Better::Lower, |l| l.e2e_ms.map(|s| s.p99)),
    ("Failed", Better::Lower, |l| Some(l.failed as f64)),
];

fn num(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => {
            if v.abs() >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        }
        _ => "–".to_string(),
    }
}

/// The comparison as Markdown. Levels are matched by label (`concurrency 4`); levels only one
/// side has are listed at the end.
pub fn compare(a: &LoadReport, b: &LoadReport) -> String {
    let mut s = String::new();
    let (an, bn) = (a.name(), b.name());
    let _ = writeln!(s, "# Load comparison: A = {an}, B = {bn}\n");
    let _ = writeln!(s, "| | A | B |\n|---|---|---|");
    let _ = writeln!(
        s,
        "| Server | {} | {} |",
        a.server.base_url, b.server.base_url
    );
    let _ = writeln!(s, "| Model | `{}` | `{}` |", a.model.id, b.model.id);
    let sha = |r: &LoadReport| r.model.sha256.clone().unwrap_or_else(|| "–".into());
    let _ = writeln!(s, "| Model SHA-256 | {} | {} |", sha(a), sha(b));
    let _ = writeln!(s, "| Date | {} | {} |", a.run.date, b.run.date);
    let _ = writeln!(
        s,
        "| Endpoint | {}{} | {}{} |",
        a.settings.endpoint,
        if a.settings.stream { ", streaming" } else { "" },
        b.settings.endpoint,
        if b.settings.stream { ", streaming" } else { "" }
    );
    let _ = writeln!(
        s,
        "| Prompts / max_tokens | {} / {} | {} / {} |",
        a.settings.dataset, a.settings.max_tokens, b.settings.dataset, b.settings.max_tokens
    );
    let mut warnings = Vec::new();
    if a.model.sha256.is_some() && b.model.sha256.is_some() && a.model.sha256 != b.model.sha256 {
        warnings.push("the model files differ (SHA-256)");
    }
    if a.settings.dataset != b.settings.dataset
        || a.settings.max_tokens != b.settings.max_tokens
        || a.settings.input_tokens != b.settings.input_tokens
        || a.settings.ignore_eos != b.settings.ignore_eos
        || a.settings.endpoint != b.settings.endpoint
        || a.settings.stream != b.settings.stream
    {
        warnings.push("the runs used different prompts or request settings");
    }
    for w in warnings {
        let _ = writeln!(s, "\n**Note:** {w}.");
    }
    for la in &a.levels {
        let Some(lb) = b.levels.iter().find(|l| l.label == la.label) else {
            continue;
        };
        let _ = writeln!(s, "\n## {}\n", la.label);
        let _ = writeln!(
            s,
            "| Metric | A | B | B/A | Better |\n|---|--:|--:|--:|---|"
        );
        for (name, better, get) in METRICS {
            let (va, vb) = (get(la), get(lb));
            let ratio = match (va, vb) {
                (Some(x), Some(y)) if x != 0.0 && x.is_finite() && y.is_finite() => {
                    format!("{:.2}×", y / x)
                }
                _ => "–".to_string(),
            };
            let winner = match (va, vb) {
                (Some(x), Some(y)) if x.is_finite() && y.is_finite() && x != y => {
                    let b_wins = match better {
                        Better::Higher => y > x,
                        Better::Lower => y < x,
                    };
                    if b_wins {
                        "B"
                    } else {
                        "A"
                    }
                }
                _ => "",
            };
            let (ta, tb) = if *name == "Failed" {
                let int = |v: Option<f64>| v.map(|x| format!("{x:.0}")).unwrap_or_default();
                (int(va), int(vb))
            } else {
                (num(va), num(vb))
            };
            let _ = writeln!(s, "| {name} | {ta} | {tb} | {ratio} | {winner} |");
        }
    }
    let only = |x: &LoadReport, y: &LoadReport| -> Vec<String> {
        x.levels
            .iter()
            .filter(|l| !y.levels.iter().any(|m| m.label == l.label))
            .map(|l| l.label.clone())
            .collect()
    };
    let (oa, ob) = (only(a, b), only(b, a));
    if !oa.is_empty() {
        let _ = writeln!(s, "\nOnly in A: {}", oa.join(", "));
    }
    if !ob.is_empty() {
        let _ = writeln!(s, "\nOnly in B: {}", ob.join(", "));
    }
    s
}

/// Runs `compare-load`: prints the comparison, and writes it to `--out` if given.
///
/// Errors: a report cannot be read, or the output cannot be written.
pub fn run(args: CompareArgs) -> anyhow::Result<()> {
    let a = read_report(&args.a)?;
    let b = read_report(&args.b)?;
    let md = compare(&a, &b);
    print!("{md}");
    if let Some(out) = &args.out {
        std::fs::write(out, &md)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::output::tests::sample_report;

    #[test]
    fn side_by_side_with_ratios() {
        let a = sample_report();
        let mut b = sample_report();
        b.server.name = Some("other".into());
        b.levels[0].output_throughput = a.levels[0].output_throughput * 2.0;
        b.levels[0].ttft_ms.as_mut().unwrap().p50 *= 3.0;
        b.levels.pop();
        let md = compare(&a, &b);
        assert!(md.contains("A = mock, B = other"), "{md}");
        assert!(md.contains("## concurrency 1"));
        assert!(
            md.contains("| Output tok/s | 15.00 | 30.00 | 2.00× | B |"),
            "{md}"
        );
        assert!(
            md.contains("| TTFT p50 (ms) | 100 | 300 | 3.00× | A |"),
            "{md}"
        );
        assert!(md.contains("Only in A: concurrency 4"));
        assert!(!md.contains("**Note:**"));
    }
}
