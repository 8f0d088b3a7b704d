//! The Batch API: `POST /v1/batches`, `GET /v1/batches` (`after`, `limit`),
//! `GET /v1/batches/{id}`, `POST /v1/batches/{id}/cancel`.

use axum::extract::{Path, Query, State};
use axum::Json;
use serde_json::Value;

use crate::batch::objects::{BatchObject, ListObject};
use crate::batch::{CreateBatchRequest, ListQuery};
use crate::error::ApiError;
use crate::json::{from_value, FromBody, OpenAiJson};
use crate::routes::files::batch_api;
use crate::AppState;

impl FromBody for CreateBatchRequest {
    fn from_body(value: &Value) -> Result<Self, ApiError> {
        from_value(value)
    }
}

/// `POST /v1/batches`: creates a batch (status `validating`) over an uploaded file. Errors: 400
/// naming `input_file_id` (unknown, or not purpose `batch`), `endpoint`, `completion_window` or
/// `metadata`.
pub async fn create_batch(
    State(state): State<AppState>,
    OpenAiJson(req): OpenAiJson<CreateBatchRequest>,
) -> Result<Json<BatchObject>, ApiError> {
    Ok(Json(batch_api(&state)?.create_batch(req).await?))
}

/// `GET /v1/batches`: a page of batches, newest first.
pub async fn list_batches(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<ListObject<BatchObject>>, ApiError> {
    Ok(Json(batch_api(&state)?.list_batches(q).await?))
}

/// `GET /v1/batches/{id}`. Errors: 404.
pub async fn get_batch(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<BatchObject>, ApiError> {
    Ok(Json(batch_api(&state)?.batch(&id).await?))
}

/// `POST /v1/batches/{id}/cancel`. Errors: 404; 409 when the batch already ended.
pub async fn cancel_batch(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<BatchObject>, ApiError> {
    Ok(Json(batch_api(&state)?.cancel_batch(&id).await?))
}
