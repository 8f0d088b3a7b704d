//! `GET /v1/prompts` and `GET /v1/prompts/{id}`: the prompt library (see [`crate::prompts`]).

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::AppState;

/// `{"object": "list", "data": [{id, object: "prompt", version, versions, description, category,
/// languages, output}]}`, sorted by id.
pub async fn list_prompts(State(state): State<AppState>) -> Json<Value> {
    let lib = &state.prompts;
    let data: Vec<Value> = lib.ids().filter_map(|id| lib.summary(id)).collect();
    Json(json!({"object": "list", "data": data}))
}

/// Query of `GET /v1/prompts/{id}`.
#[derive(Debug, Deserialize)]
pub struct VersionQuery {
    /// A version; default the highest.
    pub version: Option<String>,
}

/// One template version in full: variables, sampling defaults, response_format, Jinja source.
/// 404 `prompt_not_found` for an unknown id or version.
pub async fn get_prompt(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<VersionQuery>,
) -> Result<Json<Value>, ApiError> {
    let t = state.prompts.get(&id, q.version.as_deref(), "")?;
    Ok(Json(state.prompts.detail(t)))
}
