//! Task definitions: one TOML file per task (under `eval/tasks/` by default) naming a JSONL data
//! file, the prompts and the kind-specific settings. See eval/README.md for the format.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::drafting::Check;

/// Errors loading a task or its data.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("task `{name}`: no file {path}")]
    NotFound { name: String, path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Toml {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{path}:{line}: {message}")]
    Jsonl {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("task `{id}`: {message}")]
    Invalid { id: String, message: String },
}

/// The kinds of task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Hotline transcript -> case record JSON (schema validity, field accuracy, key facts, PII).
    Hotline,
    /// Summaries: ROUGE-L against references where given, length, script.
    Summarise,
    /// Bits per character from prompt log-probabilities.
    Bpc,
    /// Drafting with format checks.
    Drafting,
}

/// Generation settings sent with every chat request of a task.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Generation {
    /// `max_tokens` (tokens).
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// `temperature` (0 = greedy).
    #[serde(default)]
    pub temperature: f64,
    /// `seed`, when set.
    #[serde(default)]
    pub seed: Option<u64>,
}

fn default_max_tokens() -> u32 {
    512
}

impl Default for Generation {
    fn default() -> Self {
        Self {
            max_tokens: default_max_tokens(),
            temperature: 0.0,
            seed: None,
        }
    }
}

/// `[hotline]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HotlineSpec {
    /// JSON schema of the case record, relative to the TOML file.
    pub schema: String,
    /// Send the schema as `response_format: {type: json_schema}` (default true).
    #[serde(default = "yes")]
    pub response_format: bool,
    /// Coverage at which a key fact counts as recalled (default 0.6).
    #[serde(default = "default_fact_threshold")]
    pub fact_threshold: f64,
}

fn yes() -> bool {
    true
}

fn default_fact_threshold() -> f64 {
    0.6
}

/// `[bpc]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BpcSpec {
    /// Context put before every text (not scored; must not be empty). Default "\n".
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Texts per `/v1/completions` request (default 8).
    #[serde(default = "default_batch")]
    pub batch: usize,
}

fn default_prefix() -> String {
    "\n".into()
}

fn default_batch() -> usize {
    8
}

/// `[drafting]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DraftingSpec {
    /// Format checks.
    #[serde(default)]
    pub checks: Vec<Check>,
}

/// A task file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskFile {
    /// Task id (reports use it; compare matches tasks by it).
    pub id: String,
    pub kind: TaskKind,
    #[serde(default)]
    pub description: String,
    /// JSONL data file, relative to the TOML file.
    pub data: String,
    /// System prompt of chat tasks.
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// User message template of chat tasks: `{field}` is replaced by the item's field.
    #[serde(default)]
    pub user_template: Option<String>,
    #[serde(default)]
    pub generation: Generation,
    #[serde(default)]
    pub hotline: Option<HotlineSpec>,
    #[serde(default)]
    pub bpc: Option<BpcSpec>,
    #[serde(default)]
    pub drafting: Option<DraftingSpec>,
}

/// A loaded task.
#[derive(Debug, Clone)]
pub struct Task {
    pub file: TaskFile,
    /// The TOML file.
    pub path: PathBuf,
    /// The data file (resolved).
    pub data_path: PathBuf,
}

impl Task {
    /// Resolves a path given relative to the task file.
    pub fn resolve(&self, rel: &str) -> PathBuf {
        resolve(&self.path, rel)
    }
}

fn resolve(base_file: &Path, rel: &str) -> PathBuf {
    let p = Path::new(rel);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_file.parent().unwrap_or(Path::new(".")).join(p)
    }
}

/// The default tasks folder: `eval/tasks` under the current directory when it exists, else the
/// one beside this crate's sources.
pub fn default_tasks_dir() -> PathBuf {
    let here = PathBuf::from("eval/tasks");
    if here.is_dir() {
        here
    } else {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tasks"))
    }
}

/// Loads a task by name (`<dir>/<name>.toml`) or by path (anything ending in `.toml`).
pub fn load(name: &str, dir: &Path) -> Result<Task, TaskError> {
    let path = if name.ends_with(".toml") {
        PathBuf::from(name)
    } else {
        dir.join(format!("{name}.toml"))
    };
    if !path.is_file() {
        return Err(TaskError::NotFound {
            name: name.to_string(),
            path,
        });
    }
    let text = std::fs::read_to_string(&path).map_err(|source| TaskError::Io {
        path: path.clone(),
        source,
    })?;
    let file: TaskFile = toml::from_str(&text).map_err(|source| TaskError::Toml {
        path: path.clone(),
        source,
    })?;
    let invalid = |m: &str| TaskError::Invalid {
        id: file.id.clone(),
        message: m.to_string(),
    };
    match file.kind {
        TaskKind::Hotline if file.hotline.is_none() => {
            return Err(invalid("kind hotline needs [hotline]"))
        }
        TaskKind::Bpc => {
            let b = file.bpc.clone().unwrap_or(BpcSpec {
                prefix: default_prefix(),
                batch: default_batch(),
            });
            if b.prefix.is_empty() || b.batch == 0 {
                return Err(invalid(
                    "[bpc] prefix must not be empty and batch must be > 0",
                ));
            }
        }
        TaskKind::Drafting => {
            if let Some(d) = &file.drafting {
                super::drafting::validate(&d.checks).map_err(|e| invalid(&e.to_string()))?;
            }
        }
        _ => {}
    }
    if file.kind != TaskKind::Bpc && file.user_template.is_none() && file.kind != TaskKind::Drafting
    {
        return Err(invalid("chat tasks need user_template"));
    }
    let data_path = resolve(&path, &file.data);
    Ok(Task {
        file,
        path,
        data_path,
    })
}

/// Reads a JSONL file of objects (blank lines skipped), at most `limit` of them.
pub fn read_jsonl(path: &Path, limit: Option<usize>) -> Result<Vec<Map<String, Value>>, TaskError> {
    let text = std::fs::read_to_string(path).map_err(|source| TaskError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if limit.is_some_and(|n| out.len() >= n) {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(m)) => out.push(m),
            Ok(_) => {
                return Err(TaskError::Jsonl {
                    path: path.to_path_buf(),
                    line: i + 1,
                    message: "not an object".into(),
                })
            }
            Err(e) => {
                return Err(TaskError::Jsonl {
                    path: path.to_path_buf(),
                    line: i + 1,
                    message: e.to_string(),
                })
            }
        }
    }
    Ok(out)
}

/// A string field of an item ("" when absent or not a string).
pub fn str_field<'a>(item: &'a Map<String, Value>, key: &str) -> &'a str {
    item.get(key).and_then(Value::as_str).unwrap_or("")
}

/// The text of `file` (relative to `base_file`), lines `lines[0]..=lines[1]` (1-based) when given.
pub fn read_lines(
    base_file: &Path,
    file: &str,
    lines: Option<(usize, usize)>,
) -> Result<String, TaskError> {
    let path = resolve(base_file, file);
    let text = std::fs::read_to_string(&path).map_err(|source| TaskError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(match lines {
        None => text,
        Some((a, b)) => text
            .lines()
            .skip(a.saturating_sub(1))
            .take(b.saturating_add(1).saturating_sub(a.max(1)))
            .collect::<Vec<_>>()
            .join("\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_tasks_load() {
        let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tasks"));
        for name in ["hotline", "summarise", "drafting", "cantonese_bpc"] {
            let t = load(name, &dir).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(t.file.id, name);
        }
        assert!(matches!(
            load("nope", &dir),
            Err(TaskError::NotFound { .. })
        ));
    }

    #[test]
    fn line_ranges() {
        let dir = std::env::temp_dir().join(format!("govlm-eval-lines-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let f = dir.join("doc.txt");
        std::fs::write(&f, "one\ntwo\nthree\nfour\n").expect("write");
        let base = dir.join("data.jsonl");
        assert_eq!(
            read_lines(&base, "doc.txt", Some((2, 3))).expect("read"),
            "two\nthree"
        );
        assert_eq!(
            read_lines(&base, "doc.txt", Some((4, 4))).expect("read"),
            "four"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
