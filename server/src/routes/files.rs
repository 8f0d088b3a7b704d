//! The Files API: `POST /v1/files` (multipart: `file`, `purpose` = `batch`), `GET /v1/files`,
//! `GET /v1/files/{id}`, `GET /v1/files/{id}/content`, `DELETE /v1/files/{id}`.

use axum::extract::multipart::{Multipart, MultipartError, MultipartRejection};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::io::AsyncWriteExt;

use crate::batch::objects::{FileDeleted, FileObject, ListObject};
use crate::batch::{BatchError, BatchHandle, ListQuery, MAX_UPLOAD_BYTES};
use crate::error::ApiError;
use crate::AppState;

/// The Files/Batch service of the server; 404 when the server runs without one.
pub fn batch_api(state: &AppState) -> Result<&BatchHandle, ApiError> {
    state.batch.as_ref().ok_or_else(|| {
        let mut e = ApiError::route_not_found("/v1/files");
        e.message = "The Files and Batch APIs are not enabled on this server.".into();
        e
    })
}

fn multipart_error(e: MultipartError) -> ApiError {
    if e.status().as_u16() == 413 {
        BatchError::TooLarge(MAX_UPLOAD_BYTES).into()
    } else {
        ApiError::bad_request(format!(
            "Could not read the multipart body: {}",
            e.body_text()
        ))
    }
}

/// A multipart upload in progress: the `file` part streamed to a temporary file.
struct Upload {
    tmp: std::path::PathBuf,
    bytes: u64,
    filename: String,
}

async fn read_parts(
    api: &BatchHandle,
    mut multipart: Multipart,
    upload: &mut Option<Upload>,
) -> Result<Option<String>, ApiError> {
    let mut purpose = None;
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        match field.name() {
            Some("purpose") => {
                purpose = Some(
                    field
                        .text()
                        .await
                        .map_err(multipart_error)?
                        .trim()
                        .to_string(),
                );
            }
            Some("file") if upload.is_none() => {
                let filename = field
                    .file_name()
                    .filter(|n| !n.is_empty())
                    .unwrap_or("upload.jsonl")
                    .to_string();
                let tmp = api.file_store().temp_path();
                let mut out = tokio::fs::File::create(&tmp)
                    .await
                    .map_err(BatchError::from)?;
                *upload = Some(Upload {
                    tmp,
                    bytes: 0,
                    filename,
                });
                while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                    out.write_all(&chunk).await.map_err(BatchError::from)?;
                    if let Some(u) = upload.as_mut() {
                        u.bytes += chunk.len() as u64;
                        if u.bytes > MAX_UPLOAD_BYTES as u64 {
                            return Err(BatchError::TooLarge(MAX_UPLOAD_BYTES).into());
                        }
                    }
                }
                out.flush().await.map_err(BatchError::from)?;
            }
            _ => {}
        }
    }
    Ok(purpose)
}

/// `POST /v1/files`: stores a JSONL file for batches. Errors: 400 naming `file` or `purpose`
/// (missing, or a purpose other than `batch`), 413 over 200 MB.
pub async fn upload_file(
    State(state): State<AppState>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<FileObject>, ApiError> {
    let api = batch_api(&state)?;
    let multipart = multipart.map_err(|e| {
        ApiError::bad_request(format!(
            "Send the file as multipart/form-data with the fields `file` and `purpose`: {}",
            e.body_text()
        ))
    })?;
    let mut upload = None;
    let purpose = read_parts(api, multipart, &mut upload).await;
    let (purpose, upload) = match (purpose, upload) {
        (Ok(Some(p)), Some(u)) => (p, u),
        (result, upload) => {
            if let Some(u) = upload {
                api.file_store().discard(u.tmp).await;
            }
            return Err(match result {
                Err(e) => e,
                Ok(None) => {
                    ApiError::invalid("purpose", "Missing the `purpose` field (use `batch`).")
                }
                Ok(Some(_)) => ApiError::invalid("file", "Missing the `file` field."),
            });
        }
    };
    Ok(Json(
        api.add_file(upload.tmp, upload.bytes, upload.filename, purpose)
            .await?,
    ))
}

/// `GET /v1/files`: a page of files (`after`, `limit`, `order`, `purpose`).
pub async fn list_files(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<ListObject<FileObject>>, ApiError> {
    Ok(Json(batch_api(&state)?.list_files(q).await?))
}

/// `GET /v1/files/{id}`. Errors: 404.
pub async fn get_file(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<FileObject>, ApiError> {
    Ok(Json(batch_api(&state)?.file(&id).await?))
}

/// `GET /v1/files/{id}/content`: the file's bytes. Errors: 404.
pub async fn file_content(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let bytes = batch_api(&state)?.file_content(&id).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// `DELETE /v1/files/{id}`. Errors: 404.
pub async fn delete_file(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<FileDeleted>, ApiError> {
    Ok(Json(batch_api(&state)?.delete_file(&id).await?))
}
