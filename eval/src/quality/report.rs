//! The quality report (`quality.json`, `quality.md`) and the side-by-side comparison of two runs.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One number of a task.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Metric {
    pub name: String,
    /// None when it could not be computed (no items of that sort).
    pub value: Option<f64>,
    /// Some(true): higher is better; Some(false): lower is better; None: neither (a ratio to read).
    pub higher_is_better: Option<bool>,
    /// What the number is: `rate` (0..1), `bits/char`, `s`, `ratio`, `count` …
    pub unit: String,
}

impl Metric {
    /// A metric.
    pub fn new(name: &str, value: Option<f64>, higher_is_better: Option<bool>, unit: &str) -> Self {
        Self {
            name: name.into(),
            value,
            higher_is_better,
            unit: unit.into(),
        }
    }
}

/// The result of one task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskResult {
    pub id: String,
    pub kind: String,
    pub description: String,
    /// The data file used.
    pub data: String,
    /// Items run.
    pub n_items: usize,
    pub metrics: Vec<Metric>,
    /// How the metrics were computed, and anything skipped.
    pub notes: Vec<String>,
    /// Per-item details (outputs, scores, errors).
    pub items: Vec<Value>,
}

/// Where and how the run was made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    /// `govlm-eval <version>`.
    pub tool: String,
    pub model: String,
    pub base_url: String,
    /// The hashed model file (`--model-file`), when given.
    pub model_file: Option<crate::report::FileHash>,
    /// What `GET /v1/models/{model}` returned, when it answered.
    pub server_model: Option<Value>,
    /// `git rev-parse HEAD` of the working directory (with `-dirty` when it has changes).
    pub git_commit: Option<String>,
    pub machine: Value,
    /// Tasks, limit and generation settings.
    pub settings: Value,
    /// RFC 3339 start time.
    pub date: String,
    /// Wall time of the whole run (s).
    pub duration_s: f64,
}

/// A whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QualityReport {
    pub meta: Meta,
    pub tasks: Vec<TaskResult>,
}

fn fmt_value(v: Option<f64>, unit: &str) -> String {
    match v {
        None => "–".into(),
        Some(x) if unit == "count" => format!("{x:.0}"),
        Some(x) => format!("{x:.4}"),
    }
}

fn arrow(h: Option<bool>) -> &'static str {
    match h {
        Some(true) => "↑",
        Some(false) => "↓",
        None => "",
    }
}

/// The Markdown report.
pub fn markdown(r: &QualityReport) -> String {
    let m = &r.meta;
    let mut s = String::new();
    let _ = writeln!(s, "# Quality report: {}\n", m.model);
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(s, "| model | `{}` |", m.model);
    match &m.model_file {
        Some(f) => {
            let _ = writeln!(
                s,
                "| model file | `{}` ({} bytes) |",
                f.path.display(),
                f.bytes
            );
            let _ = writeln!(s, "| sha256 | `{}` |", f.sha256);
        }
        None => {
            let _ = writeln!(s, "| model file | not given (`--model-file`) |");
        }
    }
    let _ = writeln!(s, "| server | {} |", m.base_url);
    let _ = writeln!(
        s,
        "| commit | `{}` |",
        m.git_commit.as_deref().unwrap_or("unknown")
    );
    let _ = writeln!(s, "| machine | {} |", machine_line(&m.machine));
    let _ = writeln!(s, "| settings | `{}` |", m.settings);
    let _ = writeln!(s, "| date | {} |", m.date);
    let _ = writeln!(s, "| duration | {:.1} s |", m.duration_s);
    let _ = writeln!(s, "| tool | {} |\n", m.tool);
    for t in &r.tasks {
        let _ = writeln!(s, "## {} ({}, {} items)\n", t.id, t.kind, t.n_items);
        if !t.description.is_empty() {
            let _ = writeln!(s, "{}\n", t.description);
        }
        let _ = writeln!(s, "Data: `{}`\n", t.data);
        let _ = writeln!(s, "| metric | value | unit | better |\n|---|---:|---|---|");
        for x in &t.metrics {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                x.name,
                fmt_value(x.value, &x.unit),
                x.unit,
                arrow(x.higher_is_better)
            );
        }
        if !t.notes.is_empty() {
            let _ = writeln!(s);
            for n in &t.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        let _ = writeln!(s);
    }
    s
}

fn machine_line(m: &Value) -> String {
    let g = |k: &str| {
        m.get(k)
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            })
            .unwrap_or_default()
    };
    format!(
        "{} ({} cores, {}, {} {})",
        g("cpu"),
        g("cores"),
        g("memory"),
        g("os"),
        g("arch")
    )
}

/// Errors reading a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a quality report: {source}")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Reads a `quality.json` (or the folder holding one).
pub fn read(path: &Path) -> Result<QualityReport, ReportError> {
    let p = if path.is_dir() {
        path.join("quality.json")
    } else {
        path.to_path_buf()
    };
    let name = p.display().to_string();
    let text = std::fs::read_to_string(&p).map_err(|source| ReportError::Io {
        path: name.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ReportError::Json { path: name, source })
}

/// Relative tolerance under which two values count as equal in the comparison.
const EQUAL_TOL: f64 = 1e-9;

/// Marks the change from `a` to `b`: `=` equal, `better`/`worse` when the metric has a direction,
/// `changed` when it has none, `new`/`gone` when one side is missing.
pub fn mark(a: Option<f64>, b: Option<f64>, higher_is_better: Option<bool>) -> &'static str {
    match (a, b) {
        (None, None) => "",
        (None, Some(_)) => "new",
        (Some(_), None) => "gone",
        (Some(x), Some(y)) => {
            if (x - y).abs() <= EQUAL_TOL * x.abs().max(y.abs()).max(1.0) {
                "="
            } else {
                match higher_is_better {
                    Some(h) if (y > x) == h => "better",
                    Some(_) => "worse",
                    None => "changed",
                }
            }
        }
    }
}

/// Two runs side by side (Markdown): metadata, then every metric of every task in either run with
/// both values, the difference B − A and a mark (see [`mark`]; `**` around a value that got worse).
pub fn compare(a: &QualityReport, b: &QualityReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Quality comparison\n");
    let _ = writeln!(s, "| | A | B |\n|---|---|---|");
    let row = |s: &mut String, k: &str, x: String, y: String| {
        let m = if x != y { " ≠" } else { "" };
        let _ = writeln!(s, "| {k}{m} | {x} | {y} |");
    };
    row(&mut s, "model", a.meta.model.clone(), b.meta.model.clone());
    let sha = |r: &QualityReport| {
        r.meta
            .model_file
            .as_ref()
            .map(|f| f.sha256.chars().take(16).collect())
            .unwrap_or_else(|| "–".into())
    };
    row(&mut s, "model sha256", sha(a), sha(b));
    row(
        &mut s,
        "server",
        a.meta.base_url.clone(),
        b.meta.base_url.clone(),
    );
    row(
        &mut s,
        "commit",
        a.meta.git_commit.clone().unwrap_or_default(),
        b.meta.git_commit.clone().unwrap_or_default(),
    );
    row(
        &mut s,
        "machine",
        machine_line(&a.meta.machine),
        machine_line(&b.meta.machine),
    );
    row(
        &mut s,
        "settings",
        a.meta.settings.to_string(),
        b.meta.settings.to_string(),
    );
    row(&mut s, "date", a.meta.date.clone(), b.meta.date.clone());
    let _ = writeln!(s);
    let ids: BTreeSet<&str> = a
        .tasks
        .iter()
        .chain(&b.tasks)
        .map(|t| t.id.as_str())
        .collect();
    for id in ids {
        let ta = a.tasks.iter().find(|t| t.id == id);
        let tb = b.tasks.iter().find(|t| t.id == id);
        let n = |t: Option<&TaskResult>| {
            t.map(|t| t.n_items.to_string())
                .unwrap_or_else(|| "–".into())
        };
        let _ = writeln!(s, "## {id} (items: A {}, B {})\n", n(ta), n(tb));
        let _ = writeln!(s, "| metric | A | B | B − A | |\n|---|---:|---:|---:|---|");
        let mut names: Vec<&str> = Vec::new();
        for t in [ta, tb].into_iter().flatten() {
            for m in &t.metrics {
                if !names.contains(&m.name.as_str()) {
                    names.push(&m.name);
                }
            }
        }
        for name in names {
            let ma = ta.and_then(|t| t.metrics.iter().find(|m| m.name == name));
            let mb = tb.and_then(|t| t.metrics.iter().find(|m| m.name == name));
            let unit = ma.or(mb).map(|m| m.unit.as_str()).unwrap_or("");
            let hib = ma.or(mb).and_then(|m| m.higher_is_better);
            let va = ma.and_then(|m| m.value);
            let vb = mb.and_then(|m| m.value);
            let mk = mark(va, vb, hib);
            let diff = match (va, vb) {
                (Some(x), Some(y)) => format!("{:+.4}", y - x),
                _ => "–".into(),
            };
            let vb_s = if mk == "worse" {
                format!("**{}**", fmt_value(vb, unit))
            } else {
                fmt_value(vb, unit)
            };
            let _ = writeln!(
                s,
                "| {name} {} | {} | {} | {diff} | {mk} |",
                arrow(hib),
                fmt_value(va, unit),
                vb_s
            );
        }
        let _ = writeln!(s);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks() {
        assert_eq!(mark(Some(0.5), Some(0.5), Some(true)), "=");
        assert_eq!(mark(Some(0.5), Some(0.6), Some(true)), "better");
        assert_eq!(mark(Some(0.5), Some(0.6), Some(false)), "worse");
        assert_eq!(mark(Some(1.0), Some(2.0), None), "changed");
        assert_eq!(mark(None, Some(2.0), None), "new");
        assert_eq!(mark(Some(1.0), None, None), "gone");
    }
}
