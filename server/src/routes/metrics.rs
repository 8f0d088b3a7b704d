//! `GET /metrics`: every engine's metrics in the Prometheus text exposition format.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::AppState;

/// The handler. Errors: 500 if encoding fails.
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let encoder = prometheus::TextEncoder::new();
    let text = encoder
        .encode_to_string(&state.registry.gather())
        .map_err(|e| ApiError::internal(format!("cannot encode metrics: {e}")))?;
    Ok(([(CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response())
}
