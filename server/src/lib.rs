//! govlm's OpenAI-compatible HTTP server (axum).
//!
//! Module map (one concern each):
//! - [`openai`]: request/response bodies, field for field as OpenAI's.
//! - [`error`]: [`error::ApiError`], the one place errors become status codes and error JSON.
//! - [`json`]: the JSON body extractor with OpenAI-shaped rejections (400 / 413).
//! - [`validate`]: request fields -> engine requests; each error names its `param`.
//! - [`routes`]: handlers for models, chat, completions, health.
//! - [`sse`]: streaming responses.
//! - [`batch`]: the Files and Batch APIs (SQLite + files under the data dir, a runner task).

pub mod batch;
pub mod error;
pub mod json;
pub mod longdoc;
pub mod openai;
pub mod prompts;
pub mod routes;
pub mod sse;
pub mod validate;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::http::Uri;
use axum::routing::{get, post};
use axum::{Extension, Router};
use govlm_inference::config::{ResolvedModel, ServeConfig};
use govlm_inference::engine::EngineHandle;

use crate::error::ApiError;
use crate::json::BodyLimit;

/// Default largest request body: 4 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    /// Model id -> its engine.
    pub models: Arc<HashMap<String, EngineHandle>>,
    /// Model used when a request names none (else: the only model, if exactly one).
    pub default_model: Option<String>,
    /// Largest request body in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// The Files and Batch APIs (None: those routes answer 404).
    pub batch: Option<batch::BatchHandle>,
    /// The prompt library (`prompts/`): templates for `GET /v1/prompts`, the `prompt` object of
    /// chat requests and `POST /v1/summarize`.
    pub prompts: Arc<prompts::PromptLibrary>,
    /// Simplified -> Traditional (Hong Kong) converter for `chinese_script: "hk"` and templates'
    /// `output_script` (None only if its embedded dictionaries failed to load: logged).
    pub s2hk: Option<govlm_inference::script::ScriptConverter>,
    /// Prometheus registry holding every engine's metrics (`GET /metrics`).
    pub registry: prometheus::Registry,
}

impl AppState {
    /// State serving `engines` (keyed by their model ids) with default limits.
    pub fn new(engines: Vec<EngineHandle>) -> Self {
        let models = engines
            .into_iter()
            .map(|e| (e.model_id().to_string(), e))
            .collect();
        AppState {
            models: Arc::new(models),
            default_model: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            batch: None,
            prompts: Arc::new(prompts::PromptLibrary::empty()),
            s2hk: govlm_inference::script::ScriptConverter::s2hk()
                .inspect_err(|e| tracing::error!("Chinese script conversion is unavailable: {e}"))
                .ok(),
            registry: prometheus::Registry::new(),
        }
    }

    /// [`AppState::new`] whose `/metrics` serves `registry` (the one the engines were spawned
    /// with, see [`EngineHandle::spawn_with_registry`]).
    pub fn with_registry(engines: Vec<EngineHandle>, registry: prometheus::Registry) -> Self {
        Self {
            registry,
            ..Self::new(engines)
        }
    }

    /// The engine for a request's `model`: 404 `model_not_found` for an unknown id; when absent,
    /// the default model (or the only one).
    pub fn engine(&self, model: Option<&str>) -> Result<&EngineHandle, ApiError> {
        match model {
            Some(id) => self
                .models
                .get(id)
                .ok_or_else(|| ApiError::model_not_found(id)),
            None => {
                let fallback = match &self.default_model {
                    Some(d) => self.models.get(d),
                    None if self.models.len() == 1 => self.models.values().next(),
                    None => None,
                };
                fallback.ok_or_else(|| {
                    ApiError::invalid("model", "You must provide a `model` parameter.")
                })
            }
        }
    }
}

/// The application: every route, OpenAI-shaped 404/405/413 errors, the body limit.
pub fn router(state: AppState) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/v1/models", get(routes::models::list_models))
        .route("/v1/models/{*id}", get(routes::models::get_model))
        .route("/v1/chat/completions", post(routes::chat::chat_completions))
        .route("/v1/completions", post(routes::completions::completions))
        .route(
            "/v1/files",
            post(routes::files::upload_file)
                .layer(DefaultBodyLimit::max(batch::MAX_UPLOAD_BYTES))
                .get(routes::files::list_files),
        )
        .route(
            "/v1/files/{id}",
            get(routes::files::get_file).delete(routes::files::delete_file),
        )
        .route("/v1/files/{id}/content", get(routes::files::file_content))
        .route(
            "/v1/batches",
            post(routes::batches::create_batch).get(routes::batches::list_batches),
        )
        .route("/v1/batches/{id}", get(routes::batches::get_batch))
        .route(
            "/v1/batches/{id}/cancel",
            post(routes::batches::cancel_batch),
        )
        .route("/v1/prompts", get(routes::prompts::list_prompts))
        .route("/v1/prompts/{id}", get(routes::prompts::get_prompt))
        .route("/v1/summarize", post(routes::summarize::summarize))
        .route("/health", get(routes::health::health))
        .route("/metrics", get(routes::metrics::metrics))
        .fallback(|uri: Uri| async move { ApiError::route_not_found(uri.path()) })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(limit))
        .layer(Extension(BodyLimit(limit)))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// What `govlm serve` needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Path of `models.toml`.
    pub models_toml: PathBuf,
    pub host: String,
    pub port: u16,
    /// Serve only this model id from the file.
    pub only_model: Option<String>,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Where the Files and Batch APIs keep their SQLite database and file bytes.
    pub data_dir: PathBuf,
    /// The prompt library directory; None: `prompts` if it exists, else no templates.
    pub prompts_dir: Option<PathBuf>,
}

/// Loads the models of `models.toml` (each on its own engine thread), registering their metrics
/// in `registry`.
pub async fn load_engines(
    config: &ServerConfig,
    registry: &prometheus::Registry,
) -> anyhow::Result<(Vec<EngineHandle>, Option<String>)> {
    let serve_cfg = ServeConfig::load(&config.models_toml)?;
    let mut resolved: Vec<ResolvedModel> = serve_cfg.resolve(&config.models_toml)?;
    if let Some(only) = &config.only_model {
        resolved.retain(|m| &m.id == only);
        if resolved.is_empty() {
            anyhow::bail!(
                "--model `{only}` is not among the [[models]] ids of {}",
                config.models_toml.display()
            );
        }
    }
    let default_model = match &config.only_model {
        Some(only) => Some(only.clone()),
        None => serve_cfg.default_model.clone(),
    };
    let mut engines = Vec::with_capacity(resolved.len());
    for m in resolved {
        tracing::info!(model = %m.id, gguf = %m.gguf.display(), "loading model");
        let id = m.id.clone();
        let registry = registry.clone();
        let engine = tokio::task::spawn_blocking(move || {
            EngineHandle::spawn_with_registry(&m, &registry).map_err(anyhow::Error::from)
        })
        .await
        .context("model loading task panicked")?
        .with_context(|| format!("cannot load model `{id}`"))?;
        engines.push(engine);
    }
    Ok((engines, default_model))
}

/// Loads the prompt library: `dir`, or `prompts` when it exists (an empty library otherwise).
/// Any bad template is an error naming its file.
pub fn load_prompts(dir: Option<&std::path::Path>) -> anyhow::Result<prompts::PromptLibrary> {
    let default = std::path::Path::new("prompts");
    let dir = match dir {
        Some(d) => d,
        None if default.is_dir() => default,
        None => {
            tracing::warn!(
                "no prompts/ directory here and no --prompts-dir: serving no prompt templates"
            );
            return Ok(prompts::PromptLibrary::empty());
        }
    };
    let lib = prompts::PromptLibrary::load(dir)?;
    tracing::info!(dir = %dir.display(), templates = lib.len(), "loaded the prompt library");
    Ok(lib)
}

/// Loads every model, then serves until Ctrl-C / SIGTERM.
pub async fn serve(config: ServerConfig) -> anyhow::Result<()> {
    let prompt_library = load_prompts(config.prompts_dir.as_deref())?;
    let registry = prometheus::Registry::new();
    let (engines, default_model) = load_engines(&config, &registry).await?;
    let mut state = AppState::with_registry(engines, registry);
    state.prompts = Arc::new(prompt_library);
    state.default_model = default_model;
    state.max_body_bytes = config.max_body_bytes;
    let batch = batch::BatchHandle::start(
        &config.data_dir,
        state.clone(),
        batch::runner::RunnerConfig::default(),
    )
    .await
    .with_context(|| format!("cannot open the data dir {}", config.data_dir.display()))?;
    state.batch = Some(batch);
    let addr: SocketAddr = tokio::net::lookup_host((config.host.as_str(), config.port))
        .await
        .with_context(|| format!("cannot resolve --host {}", config.host))?
        .next()
        .with_context(|| format!("--host {} resolves to no address", config.host))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let mut ids: Vec<&String> = state.models.keys().collect();
    ids.sort();
    tracing::info!(%local, models = ?ids, "serving the OpenAI API");
    eprintln!("govlm: listening on http://{local} (models: {ids:?})");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
