//! The batch runner: one tokio task that owns the set of running batches and takes
//! [`Command`]s over a channel. Each batch runs as its own task (a "job"): it validates the input
//! file, then runs the lines not yet finished, at most
//! [`RunnerConfig::max_in_flight`] lines at a time across all batches (a shared semaphore), each
//! through the same pipeline as the HTTP routes at [`Priority::Batch`]. A line answered 429
//! (engine queue full) is retried with exponential backoff instead of failing.
//!
//! Every finished line is committed to SQLite before it counts; the output and error files are
//! written from those rows when the batch ends. A job started on a batch left unfinished by a
//! killed server (see [`Command::Wake`]) skips the lines that already have a row.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use govlm_inference::engine::Priority;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinSet;

use super::files::FileStore;
use super::input::{self, InputLine};
use super::objects::{
    error_file_id, new_batch_id, output_file_id, BatchErrors, BatchObject, BatchStatus, FileObject,
    RequestCounts,
};
use super::store::{self, Store};
use super::{now_s, BatchError, CreateBatchRequest, Endpoint, COMPLETION_WINDOW_S};
use crate::error::ApiError;
use crate::json::FromBody;
use crate::openai::{ChatCompletionRequest, CompletionRequest};
use crate::routes::chat::create_chat_completion;
use crate::routes::completions::create_completion;
use crate::AppState;

/// How batches run.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Most lines (of all batches together) submitted to the engines at once. Keep it below the
    /// engines' `max_waiting` so that interactive requests still find room in the queue.
    pub max_in_flight: usize,
    /// First pause before resubmitting a line answered 429; doubles up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            max_in_flight: 8,
            retry_min: Duration::from_millis(50),
            retry_max: Duration::from_secs(2),
        }
    }
}

/// What the runner task is told.
#[derive(Debug)]
pub enum Command {
    /// Check the input file, store a new batch (`validating`), start it, answer it.
    Create {
        req: CreateBatchRequest,
        endpoint: Endpoint,
        reply: oneshot::Sender<Result<BatchObject, BatchError>>,
    },
    /// Mark a batch `cancelling` and tell its job to stop; answer the batch.
    Cancel {
        id: String,
        reply: oneshot::Sender<Result<BatchObject, BatchError>>,
    },
    /// Start a job for every unfinished batch that has none (sent once at startup).
    Wake,
}

/// What every job shares.
struct Ctx {
    state: AppState,
    store: Store,
    files: FileStore,
    permits: Arc<Semaphore>,
    config: RunnerConfig,
}

/// Starts the runner task on the current runtime; it resumes unfinished batches at once and
/// ends when every sender is dropped (its jobs are then aborted).
pub fn spawn(
    state: AppState,
    store: Store,
    files: FileStore,
    config: RunnerConfig,
) -> mpsc::Sender<Command> {
    let (tx, rx) = mpsc::channel(64);
    let ctx = Arc::new(Ctx {
        state,
        store,
        files,
        permits: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
        config,
    });
    let runner = Runner {
        ctx,
        running: HashMap::new(),
        tasks: JoinSet::new(),
        task_batch: HashMap::new(),
    };
    tokio::spawn(runner.run(rx));
    let _ = tx.try_send(Command::Wake);
    tx
}

/// The runner's own state.
struct Runner {
    ctx: Arc<Ctx>,
    /// Batch id -> its job's cancel flag.
    running: HashMap<String, watch::Sender<bool>>,
    tasks: JoinSet<Result<(), BatchError>>,
    task_batch: HashMap<tokio::task::Id, String>,
}

impl Runner {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd).await,
                    None => break,
                },
                Some(done) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    let (tid, outcome) = match done {
                        Ok((tid, r)) => (tid, r.map_err(|e| e.to_string())),
                        Err(e) => (e.id(), Err(format!("job task failed: {e}"))),
                    };
                    let batch = self.task_batch.remove(&tid).unwrap_or_default();
                    self.running.remove(&batch);
                    if let Err(e) = outcome {
                        tracing::error!(batch = %batch, error = %e, "batch job stopped");
                    }
                }
            }
        }
    }

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Create {
                req,
                endpoint,
                reply,
            } => {
                let r = self.create(req, endpoint).await;
                let _ = reply.send(r);
            }
            Command::Cancel { id, reply } => {
                let r = self.cancel(&id).await;
                let _ = reply.send(r);
            }
            Command::Wake => match self.ctx.store.call(store::unfinished_batches).await {
                Ok(ids) => {
                    for id in ids {
                        tracing::info!(batch = %id, "resuming batch");
                        self.start(id);
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot list unfinished batches"),
            },
        }
    }

    async fn create(
        &mut self,
        req: CreateBatchRequest,
        endpoint: Endpoint,
    ) -> Result<BatchObject, BatchError> {
        let fid = req.input_file_id.clone();
        let file = self
            .ctx
            .store
            .call(move |db| store::get_file(db, &fid))
            .await?
            .ok_or_else(|| {
                BatchError::invalid(
                    "input_file_id",
                    format!("No such File object: {}", req.input_file_id),
                )
            })?;
        if file.purpose != "batch" {
            return Err(BatchError::invalid(
                "input_file_id",
                format!(
                    "The file {} has purpose `{}`; a batch input file needs purpose `batch`.",
                    file.id, file.purpose
                ),
            ));
        }
        let now = now_s();
        let batch = BatchObject {
            id: new_batch_id(),
            object: "batch",
            endpoint: endpoint.as_str().to_string(),
            errors: None,
            input_file_id: file.id,
            completion_window: req.completion_window,
            status: BatchStatus::Validating,
            output_file_id: None,
            error_file_id: None,
            created_at: now,
            in_progress_at: None,
            expires_at: Some(now + COMPLETION_WINDOW_S),
            finalizing_at: None,
            completed_at: None,
            failed_at: None,
            expired_at: None,
            cancelling_at: None,
            cancelled_at: None,
            request_counts: RequestCounts::default(),
            metadata: req.metadata.filter(|m| !m.is_null()),
        };
        let b = batch.clone();
        self.ctx
            .store
            .call(move |db| store::insert_batch(db, &b))
            .await?;
        tracing::info!(batch = %batch.id, file = %batch.input_file_id, "batch created");
        self.start(batch.id.clone());
        Ok(batch)
    }

    async fn cancel(&mut self, id: &str) -> Result<BatchObject, BatchError> {
        let key = id.to_string();
        let now = now_s();
        let batch = self
            .ctx
            .store
            .call(move |db| store::set_cancelling(db, &key, now))
            .await?
            .ok_or_else(|| BatchError::BatchNotFound(id.to_string()))?;
        match batch.status {
            BatchStatus::Cancelling => {
                match self.running.get(id) {
                    Some(flag) => {
                        flag.send_replace(true);
                    }
                    None => self.start(id.to_string()),
                }
                Ok(batch)
            }
            BatchStatus::Cancelled => Ok(batch),
            s => Err(BatchError::Conflict(format!(
                "Cannot cancel the batch {id}: its status is `{}`.",
                s.as_str()
            ))),
        }
    }

    /// Starts a job for batch `id` unless one runs.
    fn start(&mut self, id: String) {
        if self.running.contains_key(&id) {
            return;
        }
        let (flag, cancel) = watch::channel(false);
        let ctx = self.ctx.clone();
        let handle = self.tasks.spawn(run_job(ctx, id.clone(), cancel));
        self.task_batch.insert(handle.id(), id.clone());
        self.running.insert(id, flag);
    }
}

/// How the line loop of a job ended.
enum Outcome {
    /// Every line finished.
    Done,
    Cancelled,
    Expired,
    /// The runner is gone (server shutting down): leave the batch as it is.
    Stopped,
}

async fn fail(ctx: &Ctx, id: &str, errors: BatchErrors, total: usize) -> Result<(), BatchError> {
    tracing::info!(batch = %id, error = %errors.data[0].message, "batch failed validation");
    let key = id.to_string();
    let now = now_s();
    ctx.store
        .call(move |db| store::set_failed(db, &key, &errors, total, now))
        .await
}

/// One batch from its stored status to the end.
async fn run_job(
    ctx: Arc<Ctx>,
    id: String,
    mut cancel: watch::Receiver<bool>,
) -> Result<(), BatchError> {
    let key = id.clone();
    let Some(batch) = ctx.store.call(move |db| store::get_batch(db, &key)).await? else {
        return Ok(());
    };
    match batch.status {
        s if s.is_terminal() => return Ok(()),
        BatchStatus::Cancelling => return finalize(&ctx, &id, BatchStatus::Cancelled).await,
        BatchStatus::Finalizing => return finalize(&ctx, &id, BatchStatus::Completed).await,
        _ => {}
    }
    let Some(endpoint) = Endpoint::parse(&batch.endpoint) else {
        let errors = BatchErrors::one(
            "invalid_endpoint",
            format!("Unsupported endpoint `{}`.", batch.endpoint),
            Some("endpoint"),
            None,
        );
        return fail(&ctx, &id, errors, 0).await;
    };
    let bytes = match ctx.files.read(&batch.input_file_id).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let errors = BatchErrors::one(
                "missing_input_file",
                format!("The input file {} no longer exists.", batch.input_file_id),
                Some("input_file_id"),
                None,
            );
            return fail(&ctx, &id, errors, 0).await;
        }
        Err(e) => return Err(e.into()),
    };
    let lines = match input::parse(&bytes, endpoint) {
        Ok(lines) => lines,
        Err(errors) => return fail(&ctx, &id, errors, 0).await,
    };
    drop(bytes);
    if batch.status == BatchStatus::Validating {
        let (key, total, now) = (id.clone(), lines.len(), now_s());
        ctx.store
            .call(move |db| store::set_in_progress(db, &key, total, now))
            .await?;
        tracing::info!(batch = %id, lines = total, "batch in progress");
    }
    let key = id.clone();
    let done = ctx
        .store
        .call(move |db| store::done_lines(db, &key))
        .await?;
    let pending: Vec<InputLine> = lines
        .into_iter()
        .filter(|l| !done.contains(&l.line()))
        .collect();
    let outcome = run_lines(&ctx, &id, endpoint, pending, batch.expires_at, &mut cancel).await?;
    match outcome {
        Outcome::Done => finalize(&ctx, &id, BatchStatus::Completed).await,
        Outcome::Cancelled => finalize(&ctx, &id, BatchStatus::Cancelled).await,
        Outcome::Expired => finalize(&ctx, &id, BatchStatus::Expired).await,
        Outcome::Stopped => Ok(()),
    }
}

/// A finished line: its row in `batch_lines`.
struct LineResult {
    line: u64,
    custom_id: Option<String>,
    ok: bool,
    json: Value,
}

async fn record(ctx: &Ctx, batch_id: &str, r: LineResult) -> Result<(), BatchError> {
    let key = batch_id.to_string();
    let text = serde_json::to_string(&r.json)?;
    ctx.store
        .call(move |db| store::record_line(db, &key, r.line, r.custom_id.as_deref(), r.ok, &text))
        .await
}

fn request_line_id() -> String {
    format!("batch_req_{}", uuid::Uuid::new_v4().simple())
}

/// The error-file entry of a line that could not run.
fn invalid_line(line: u64, custom_id: Option<String>, code: &str, message: String) -> LineResult {
    let json = json!({
        "id": request_line_id(),
        "custom_id": custom_id,
        "response": null,
        "error": {"code": code, "message": message},
    });
    LineResult {
        line,
        custom_id,
        ok: false,
        json,
    }
}

/// Runs `pending` lines until all are done, the batch is cancelled or expires.
async fn run_lines(
    ctx: &Arc<Ctx>,
    batch_id: &str,
    endpoint: Endpoint,
    pending: Vec<InputLine>,
    expires_at: Option<i64>,
    cancel: &mut watch::Receiver<bool>,
) -> Result<Outcome, BatchError> {
    let mut inflight: JoinSet<LineResult> = JoinSet::new();
    let mut inflight_lines: HashMap<tokio::task::Id, (u64, String)> = HashMap::new();
    let mut pending = pending.into_iter();
    let mut next = pending.next();
    loop {
        if *cancel.borrow() {
            return Ok(Outcome::Cancelled);
        }
        if expires_at.is_some_and(|e| now_s() >= e) {
            return Ok(Outcome::Expired);
        }
        if let Some(InputLine::Invalid { .. }) = &next {
            if let Some(InputLine::Invalid {
                line,
                custom_id,
                code,
                message,
            }) = next.take()
            {
                record(ctx, batch_id, invalid_line(line, custom_id, code, message)).await?;
            }
            next = pending.next();
            continue;
        }
        if next.is_none() && inflight.is_empty() {
            return Ok(Outcome::Done);
        }
        tokio::select! {
            changed = cancel.changed() => {
                if changed.is_err() {
                    return Ok(Outcome::Stopped);
                }
            }
            permit = ctx.permits.clone().acquire_owned(), if next.is_some() => {
                let Ok(permit) = permit else {
                    return Ok(Outcome::Stopped);
                };
                if let Some(InputLine::Request { line, custom_id, body }) = next.take() {
                    let c = ctx.clone();
                    let cid = custom_id.clone();
                    let handle = inflight.spawn(async move {
                        let r = run_request(&c, endpoint, line, custom_id, body).await;
                        drop(permit);
                        r
                    });
                    inflight_lines.insert(handle.id(), (line, cid));
                }
                next = pending.next();
            }
            Some(done) = inflight.join_next_with_id(), if !inflight.is_empty() => {
                let result = match done {
                    Ok((tid, r)) => {
                        inflight_lines.remove(&tid);
                        Some(r)
                    }
                    Err(e) => inflight_lines.remove(&e.id()).map(|(line, cid)| {
                        let err = ApiError::internal(format!("the request failed: {e}"));
                        response_line(line, cid, Err(err))
                    }),
                };
                if let Some(result) = result {
                    record(ctx, batch_id, result).await?;
                }
            }
        }
    }
}

/// The output- or error-file entry of a line that ran: OpenAI's
/// `{"id","custom_id","response":{"status_code","request_id","body"},"error":null}`.
fn response_line(line: u64, custom_id: String, result: Result<Value, ApiError>) -> LineResult {
    let request_id = format!("req_{}", uuid::Uuid::new_v4().simple());
    let (ok, status, body) = match result {
        Ok(body) => (true, 200, body),
        Err(e) => (false, e.status.as_u16(), e.to_json()),
    };
    let json = json!({
        "id": request_line_id(),
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": request_id, "body": body},
        "error": null,
    });
    LineResult {
        line,
        custom_id: Some(custom_id),
        ok,
        json,
    }
}

/// The line's request once, through the route's own pipeline.
async fn call_endpoint(
    state: &AppState,
    endpoint: Endpoint,
    body: &Value,
) -> Result<Value, ApiError> {
    let value = match endpoint {
        Endpoint::ChatCompletions => {
            let req = ChatCompletionRequest::from_body(body)?;
            serde_json::to_value(create_chat_completion(state, req, Priority::Batch).await?)
        }
        Endpoint::Completions => {
            let req = CompletionRequest::from_body(body)?;
            serde_json::to_value(create_completion(state, req, Priority::Batch).await?)
        }
    };
    value.map_err(|e| ApiError::internal(format!("cannot serialise the response: {e}")))
}

/// Runs one request line, retrying while the engine's queue is full (429).
async fn run_request(
    ctx: &Ctx,
    endpoint: Endpoint,
    line: u64,
    custom_id: String,
    body: Value,
) -> LineResult {
    let mut delay = ctx.config.retry_min;
    loop {
        match call_endpoint(&ctx.state, endpoint, &body).await {
            Err(e) if e.status.as_u16() == 429 => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(ctx.config.retry_max);
            }
            r => return response_line(line, custom_id, r),
        }
    }
}

/// Writes the output and error files from the finished lines and ends the batch as `status`
/// (one transaction). Safe to repeat after a crash: the file ids are fixed per batch.
async fn finalize(ctx: &Ctx, id: &str, status: BatchStatus) -> Result<(), BatchError> {
    if status == BatchStatus::Completed {
        let (key, now) = (id.to_string(), now_s());
        ctx.store
            .call(move |db| store::set_finalizing(db, &key, now))
            .await?;
    }
    let key = id.to_string();
    let (out, err) = ctx
        .store
        .call(move |db| store::result_files(db, &key))
        .await?;
    let now = now_s();
    let mut written = Vec::new();
    for (text, file_id, name) in [
        (out, output_file_id(id), format!("{id}_output.jsonl")),
        (err, error_file_id(id), format!("{id}_error.jsonl")),
    ] {
        if text.is_empty() {
            written.push(None);
            continue;
        }
        let f = FileObject::new(file_id, text.len() as u64, name, "batch_output".into(), now);
        ctx.files.write(&f.id, text.into_bytes()).await?;
        written.push(Some(f));
    }
    let error = written.pop().flatten();
    let output = written.pop().flatten();
    let key = id.to_string();
    ctx.store
        .call(move |db| store::finish(db, &key, status, output.as_ref(), error.as_ref(), now))
        .await?;
    tracing::info!(batch = %id, status = status.as_str(), "batch finished");
    Ok(())
}
