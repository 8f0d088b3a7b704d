//! The OpenAI Files and Batch APIs: JSONL files uploaded with purpose `batch`, and batches that
//! run every line of such a file through `/v1/chat/completions` or `/v1/completions` at
//! [`Priority::Batch`](govlm_inference::engine::Priority), in the capacity interactive requests
//! leave.
//!
//! Module map:
//! - [`objects`]: the JSON shapes (file, batch, list, deleted), field for field as OpenAI's.
//! - [`store`]: SQLite (one thread owns the connection) holding files, batches and the result
//!   of every finished line.
//! - [`files`]: file bytes on disk under `<data_dir>/files/`.
//! - [`input`]: parsing and validating a batch input file.
//! - [`runner`]: the background task that runs batches; it takes commands over a channel.
//!
//! Durability: a line's result is a row in SQLite (committed before the line counts as done);
//! the output and error files are written from those rows only when the batch finishes. A
//! server killed mid-batch resumes on restart with the lines that have no row yet, so every
//! input line ends up in the output or error file exactly once.

pub mod files;
pub mod input;
pub mod objects;
pub mod runner;
pub mod store;

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::AppState;
use files::FileStore;
use objects::{BatchObject, FileDeleted, FileObject, ListObject};
use runner::{Command, RunnerConfig};
use store::Store;

/// Largest uploaded file in bytes (OpenAI's limit for batch input files: 200 MB).
pub const MAX_UPLOAD_BYTES: usize = 200 * 1024 * 1024;
/// Largest number of request lines in one batch input file (OpenAI's limit).
pub const MAX_BATCH_LINES: usize = 50_000;
/// Seconds a batch may take (`completion_window` "24h") before it expires.
pub const COMPLETION_WINDOW_S: i64 = 24 * 3600;
/// Default and largest `limit` of the list endpoints.
pub const DEFAULT_LIST_LIMIT: usize = 20;
pub const MAX_LIST_LIMIT: usize = 100;

/// Errors of the Files and Batch APIs, mapped to HTTP in [`crate::error`].
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// 404: no file with this id.
    #[error("No such File object: {0}")]
    FileNotFound(String),
    /// 404: no batch with this id.
    #[error("No such Batch object: {0}")]
    BatchNotFound(String),
    /// 400 naming the request field at fault.
    #[error("{message}")]
    Invalid { param: String, message: String },
    /// 409: the batch is in a state that does not allow the operation (cancel a finished one).
    #[error("{0}")]
    Conflict(String),
    /// 413: an uploaded file over [`MAX_UPLOAD_BYTES`].
    #[error("the file is larger than {0} bytes")]
    TooLarge(usize),
    /// 500: SQLite failed.
    #[error("batch store error: {0}")]
    Store(#[from] rusqlite::Error),
    /// 500: reading or writing a file under the data dir failed.
    #[error("file storage error: {0}")]
    Io(#[from] std::io::Error),
    /// 500: a stored JSON column no longer parses.
    #[error("stored JSON is corrupt: {0}")]
    Json(#[from] serde_json::Error),
    /// 503: the store thread or the runner task has stopped.
    #[error("the batch service has stopped")]
    Stopped,
}

impl BatchError {
    /// A 400 naming `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        BatchError::Invalid {
            param: param.into(),
            message: message.into(),
        }
    }
}

/// Unix time in seconds.
pub fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The endpoints a batch can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
}

impl Endpoint {
    /// The path as batch requests and input lines spell it (`/v1/chat/completions`).
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
        }
    }

    /// Parses a batch `endpoint` or a line's `url`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "/v1/chat/completions" => Some(Endpoint::ChatCompletions),
            "/v1/completions" => Some(Endpoint::Completions),
            _ => None,
        }
    }
}

/// `POST /v1/batches` body.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct CreateBatchRequest {
    pub input_file_id: String,
    pub endpoint: String,
    pub completion_window: String,
    /// Up to 16 string pairs (keys up to 64 characters, values up to 512).
    #[serde(default)]
    pub metadata: Option<Value>,
}

impl CreateBatchRequest {
    /// Checks `endpoint`, `completion_window` and `metadata` (the file is checked by the
    /// runner). Errors: 400 naming the field.
    pub fn validate(&self) -> Result<Endpoint, BatchError> {
        let endpoint = Endpoint::parse(&self.endpoint).ok_or_else(|| {
            BatchError::invalid(
                "endpoint",
                format!(
                    "Invalid endpoint `{}`: supported are `/v1/chat/completions` and `/v1/completions`.",
                    self.endpoint
                ),
            )
        })?;
        if self.completion_window != "24h" {
            return Err(BatchError::invalid(
                "completion_window",
                format!(
                    "Invalid completion_window `{}`: only `24h` is supported.",
                    self.completion_window
                ),
            ));
        }
        match &self.metadata {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                if m.len() > 16 {
                    return Err(BatchError::invalid(
                        "metadata",
                        "`metadata` has more than 16 keys.",
                    ));
                }
                for (k, v) in m {
                    if k.chars().count() > 64 {
                        return Err(BatchError::invalid(
                            "metadata",
                            format!("The `metadata` key `{k}` is longer than 64 characters."),
                        ));
                    }
                    match v.as_str() {
                        Some(s) if s.chars().count() <= 512 => {}
                        Some(_) => {
                            return Err(BatchError::invalid(
                                format!("metadata.{k}"),
                                "`metadata` values are at most 512 characters.",
                            ))
                        }
                        None => {
                            return Err(BatchError::invalid(
                                format!("metadata.{k}"),
                                "`metadata` values must be strings.",
                            ))
                        }
                    }
                }
            }
            Some(_) => {
                return Err(BatchError::invalid(
                    "metadata",
                    "`metadata` must be an object of string values.",
                ))
            }
        }
        Ok(endpoint)
    }
}

/// Query of the list endpoints: `after` (an id: the page starts after it), `limit` (1..=100,
/// default 20), and for files `order` (`asc`/`desc` by creation, default `desc`) and `purpose`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    pub after: Option<String>,
    #[serde(default)]
    pub limit: Option<String>,
    #[serde(default)]
    pub order: Option<String>,
    #[serde(default)]
    pub purpose: Option<String>,
}

/// A checked [`ListQuery`].
#[derive(Debug, Clone)]
pub struct ListParams {
    pub after: Option<String>,
    pub limit: usize,
    /// Oldest first.
    pub ascending: bool,
    pub purpose: Option<String>,
}

impl ListQuery {
    /// Errors: 400 naming `limit` or `order`.
    pub fn params(self) -> Result<ListParams, BatchError> {
        let limit = match self.limit.as_deref() {
            None | Some("") => DEFAULT_LIST_LIMIT,
            Some(s) => match s.parse::<usize>() {
                Ok(n) if (1..=MAX_LIST_LIMIT).contains(&n) => n,
                _ => {
                    return Err(BatchError::invalid(
                        "limit",
                        format!(
                            "`limit` must be an integer from 1 to {MAX_LIST_LIMIT}; got `{s}`."
                        ),
                    ))
                }
            },
        };
        let ascending = match self.order.as_deref() {
            None | Some("") | Some("desc") => false,
            Some("asc") => true,
            Some(o) => {
                return Err(BatchError::invalid(
                    "order",
                    format!("`order` must be `asc` or `desc`; got `{o}`."),
                ))
            }
        };
        Ok(ListParams {
            after: self.after.filter(|a| !a.is_empty()),
            limit,
            ascending,
            purpose: self.purpose.filter(|p| !p.is_empty()),
        })
    }
}

/// The Files and Batch APIs' entry point, held in [`AppState`]: cheap to clone. Reads go to the
/// store directly; creating and cancelling batches go to the runner task.
#[derive(Clone)]
pub struct BatchHandle {
    store: Store,
    files: FileStore,
    commands: mpsc::Sender<Command>,
}

impl BatchHandle {
    /// Opens (or creates) `<data_dir>/govlm.sqlite3` and `<data_dir>/files/`, starts the runner
    /// task on the current tokio runtime and resumes every unfinished batch. `state` is what
    /// batch lines run against (its own `batch` field is not used).
    /// Errors: the data dir or the database cannot be opened.
    pub async fn start(
        data_dir: &Path,
        state: AppState,
        config: RunnerConfig,
    ) -> Result<BatchHandle, BatchError> {
        let dir: PathBuf = data_dir.to_path_buf();
        let (store, files) = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            let files = FileStore::open(dir.join("files"))?;
            let store = Store::open(&dir.join("govlm.sqlite3"))?;
            Ok::<_, BatchError>((store, files))
        })
        .await
        .map_err(|_| BatchError::Stopped)??;
        let commands = runner::spawn(state, store.clone(), files.clone(), config);
        Ok(BatchHandle {
            store,
            files,
            commands,
        })
    }

    /// The file store (upload, content).
    pub fn file_store(&self) -> &FileStore {
        &self.files
    }

    /// Saves an uploaded file whose bytes are already at `tmp` (see [`FileStore::temp_path`]).
    /// Errors: 400 `purpose` other than `batch`.
    pub async fn add_file(
        &self,
        tmp: PathBuf,
        bytes: u64,
        filename: String,
        purpose: String,
    ) -> Result<FileObject, BatchError> {
        if purpose != "batch" {
            self.files.discard(tmp).await;
            return Err(BatchError::invalid(
                "purpose",
                format!("Invalid purpose `{purpose}`: this server accepts only `batch`."),
            ));
        }
        let file = FileObject::new(objects::new_file_id(), bytes, filename, purpose, now_s());
        self.files.commit(tmp, &file.id).await?;
        let f = file.clone();
        if let Err(e) = self.store.call(move |db| store::insert_file(db, &f)).await {
            self.files.remove(&file.id).await;
            return Err(e);
        }
        Ok(file)
    }

    /// A file's metadata. Errors: 404.
    pub async fn file(&self, id: &str) -> Result<FileObject, BatchError> {
        let key = id.to_string();
        self.store
            .call(move |db| store::get_file(db, &key))
            .await?
            .ok_or_else(|| BatchError::FileNotFound(id.to_string()))
    }

    /// A file's bytes. Errors: 404.
    pub async fn file_content(&self, id: &str) -> Result<Vec<u8>, BatchError> {
        let file = self.file(id).await?;
        match self.files.read(&file.id).await {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(BatchError::FileNotFound(id.to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A page of files. Errors: 400 bad `limit`/`order`.
    pub async fn list_files(&self, q: ListQuery) -> Result<ListObject<FileObject>, BatchError> {
        let p = q.params()?;
        let (data, has_more) = self.store.call(move |db| store::list_files(db, &p)).await?;
        Ok(ListObject::new(data, has_more, |f| f.id.clone()))
    }

    /// Deletes a file's metadata and bytes. Errors: 404.
    pub async fn delete_file(&self, id: &str) -> Result<FileDeleted, BatchError> {
        let key = id.to_string();
        if !self
            .store
            .call(move |db| store::delete_file(db, &key))
            .await?
        {
            return Err(BatchError::FileNotFound(id.to_string()));
        }
        self.files.remove(id).await;
        Ok(FileDeleted {
            id: id.to_string(),
            object: "file",
            deleted: true,
        })
    }

    /// Creates a batch (status `validating`) and starts it. Errors: 400 naming `endpoint`,
    /// `completion_window`, `metadata` or `input_file_id` (unknown file or not purpose `batch`).
    pub async fn create_batch(&self, req: CreateBatchRequest) -> Result<BatchObject, BatchError> {
        let endpoint = req.validate()?;
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Create {
                req,
                endpoint,
                reply,
            })
            .await
            .map_err(|_| BatchError::Stopped)?;
        rx.await.map_err(|_| BatchError::Stopped)?
    }

    /// A batch with its current request counts. Errors: 404.
    pub async fn batch(&self, id: &str) -> Result<BatchObject, BatchError> {
        let key = id.to_string();
        self.store
            .call(move |db| store::get_batch(db, &key))
            .await?
            .ok_or_else(|| BatchError::BatchNotFound(id.to_string()))
    }

    /// A page of batches, newest first. Errors: 400 bad `limit`.
    pub async fn list_batches(&self, q: ListQuery) -> Result<ListObject<BatchObject>, BatchError> {
        let p = q.params()?;
        let (data, has_more) = self
            .store
            .call(move |db| store::list_batches(db, &p))
            .await?;
        Ok(ListObject::new(data, has_more, |b| b.id.clone()))
    }

    /// Cancels a batch: it stops starting lines and ends as `cancelled` with the lines finished
    /// so far. Answers the batch as `cancelling` (or as it is, if already cancelling or
    /// cancelled). Errors: 404; 409 when it already completed, failed or expired.
    pub async fn cancel_batch(&self, id: &str) -> Result<BatchObject, BatchError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Cancel {
                id: id.to_string(),
                reply,
            })
            .await
            .map_err(|_| BatchError::Stopped)?;
        rx.await.map_err(|_| BatchError::Stopped)?
    }
}
