//! `GET /v1/models` and `GET /v1/models/{id}`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::Json;
use govlm_inference::engine::EngineHandle;

use crate::error::ApiError;
use crate::openai::{ModelList, ModelObject};
use crate::AppState;

fn model_object(e: &EngineHandle) -> ModelObject {
    let info = e.info();
    ModelObject {
        id: e.model_id().to_string(),
        object: "model",
        created: info.created,
        owned_by: info.owned_by.clone(),
        max_model_len: info.context_length,
    }
}

/// Every served model, sorted by id.
pub async fn list_models(State(state): State<AppState>) -> Json<ModelList> {
    let mut data: Vec<ModelObject> = state.models.values().map(model_object).collect();
    data.sort_by(|a, b| a.id.cmp(&b.id));
    Json(ModelList {
        object: "list",
        data,
    })
}

/// One model; 404 `model_not_found` for an unknown id (also one that is not valid UTF-8 once
/// percent-decoded, which axum's `Path` would answer in plain text).
pub async fn get_model(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ModelObject>, ApiError> {
    let Ok(Path(id)) = id else {
        return Err(ApiError::model_not_found("<invalid UTF-8>"));
    };
    state
        .models
        .get(&id)
        .map(|e| Json(model_object(e)))
        .ok_or_else(|| ApiError::model_not_found(&id))
}
