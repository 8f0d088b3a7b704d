//! govlm's OpenAI-compatible HTTP server (axum).
//!
//! Module map (one concern each):
//! - [`openai`]: request/response bodies, field for field as OpenAI's.
//! - [`error`]: [`error::ApiError`], the one place errors become status codes and error JSON.
//! - [`json`]: the JSON body extractor with OpenAI-shaped rejections (400 / 413).
//! - [`validate`]: request fields -> engine requests; each error names its `param`.
//! - [`routes`]: handlers for models, chat, completions, health.
//! - [`sse`]: streaming responses.

pub mod error;
pub mod json;
pub mod openai;
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
        .route("/health", get(routes::health::health))
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
}

/// Loads the models of `models.toml` (each on its own engine thread).
pub async fn load_engines(
    config: &ServerConfig,
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
        let engine = tokio::task::spawn_blocking(move || {
            EngineHandle::spawn(&m).map_err(anyhow::Error::from)
        })
        .await
        .context("model loading task panicked")?
        .with_context(|| format!("cannot load model `{id}`"))?;
        engines.push(engine);
    }
    Ok((engines, default_model))
}

/// Loads every model, then serves until Ctrl-C / SIGTERM.
pub async fn serve(config: ServerConfig) -> anyhow::Result<()> {
    let (engines, default_model) = load_engines(&config).await?;
    let mut state = AppState::new(engines);
    state.default_model = default_model;
    state.max_body_bytes = config.max_body_bytes;
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
