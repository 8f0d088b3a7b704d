//! `GET /health`: 200 while the server runs, with the ids of the models it serves.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::AppState;

/// `{"status": "ok", "models": [...]}`.
pub async fn health(State(state): State<AppState>) -> Json<Value> {
    let mut ids: Vec<&str> = state.models.keys().map(String::as_str).collect();
    ids.sort_unstable();
    Json(json!({"status": "ok", "models": ids}))
}
