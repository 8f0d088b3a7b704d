//! The Files and Batch API objects, field for field as OpenAI's (what the official clients
//! parse). Timestamps are Unix seconds.

use serde::Serialize;
use serde_json::Value;

/// A new file id: `file-<32 hex>`.
pub fn new_file_id() -> String {
    format!("file-{}", uuid::Uuid::new_v4().simple())
}

/// A new batch id: `batch_<32 hex>`.
pub fn new_batch_id() -> String {
    format!("batch_{}", uuid::Uuid::new_v4().simple())
}

/// The id of a batch's output file (fixed per batch, so that finishing twice after a crash
/// writes the same file).
pub fn output_file_id(batch_id: &str) -> String {
    format!("file-{}-output", batch_id.trim_start_matches("batch_"))
}

/// The id of a batch's error file.
pub fn error_file_id(batch_id: &str) -> String {
    format!("file-{}-errors", batch_id.trim_start_matches("batch_"))
}

/// `file` object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileObject {
    pub id: String,
    pub object: &'static str,
    /// Size in bytes.
    pub bytes: u64,
    pub created_at: i64,
    pub filename: String,
    /// `batch` (uploads) or `batch_output` (output and error files).
    pub purpose: String,
    /// Always `processed`.
    pub status: &'static str,
    pub status_details: Option<String>,
    /// Files do not expire here.
    pub expires_at: Option<i64>,
}

impl FileObject {
    /// A file object with status `processed`.
    pub fn new(id: String, bytes: u64, filename: String, purpose: String, created_at: i64) -> Self {
        FileObject {
            id,
            object: "file",
            bytes,
            created_at,
            filename,
            purpose,
            status: "processed",
            status_details: None,
            expires_at: None,
        }
    }
}

/// Answer of `DELETE /v1/files/{id}`.
#[derive(Debug, Clone, Serialize)]
pub struct FileDeleted {
    pub id: String,
    pub object: &'static str,
    pub deleted: bool,
}

/// A page of a list endpoint: `{"object":"list","data":[...],"first_id","last_id","has_more"}`.
#[derive(Debug, Clone, Serialize)]
pub struct ListObject<T> {
    pub object: &'static str,
    pub data: Vec<T>,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    pub has_more: bool,
}

impl<T> ListObject<T> {
    /// A page of `data`, with ids taken by `id`.
    pub fn new(data: Vec<T>, has_more: bool, id: impl Fn(&T) -> String) -> Self {
        ListObject {
            object: "list",
            first_id: data.first().map(&id),
            last_id: data.last().map(&id),
            data,
            has_more,
        }
    }
}

/// A batch's lifecycle: `validating` -> `in_progress` -> `finalizing` -> `completed`; or
/// `failed` (validation), `cancelling` -> `cancelled`, `expired` (past `expires_at`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    Validating,
    Failed,
    InProgress,
    Finalizing,
    Completed,
    Expired,
    Cancelling,
    Cancelled,
}

impl BatchStatus {
    /// As OpenAI spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Validating => "validating",
            BatchStatus::Failed => "failed",
            BatchStatus::InProgress => "in_progress",
            BatchStatus::Finalizing => "finalizing",
            BatchStatus::Completed => "completed",
            BatchStatus::Expired => "expired",
            BatchStatus::Cancelling => "cancelling",
            BatchStatus::Cancelled => "cancelled",
        }
    }

    /// Parses [`BatchStatus::as_str`]'s spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "validating" => BatchStatus::Validating,
            "failed" => BatchStatus::Failed,
            "in_progress" => BatchStatus::InProgress,
            "finalizing" => BatchStatus::Finalizing,
            "completed" => BatchStatus::Completed,
            "expired" => BatchStatus::Expired,
            "cancelling" => BatchStatus::Cancelling,
            "cancelled" => BatchStatus::Cancelled,
            _ => return None,
        })
    }

    /// Completed, failed, expired or cancelled: nothing more happens.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            BatchStatus::Completed
                | BatchStatus::Failed
                | BatchStatus::Expired
                | BatchStatus::Cancelled
        )
    }
}

/// `request_counts` of a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RequestCounts {
    /// Lines in the input file.
    pub total: u64,
    /// Lines in the output file so far.
    pub completed: u64,
    /// Lines in the error file so far.
    pub failed: u64,
}

/// One validation error of a failed batch (`errors.data[]`).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct BatchErrorItem {
    pub code: String,
    pub message: String,
    pub param: Option<String>,
    /// 1-based line of the input file.
    pub line: Option<u64>,
}

/// `errors` of a failed batch: `{"object":"list","data":[...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct BatchErrors {
    pub object: String,
    pub data: Vec<BatchErrorItem>,
}

impl BatchErrors {
    /// A list of one error.
    pub fn one(
        code: &str,
        message: impl Into<String>,
        param: Option<&str>,
        line: Option<u64>,
    ) -> Self {
        BatchErrors {
            object: "list".into(),
            data: vec![BatchErrorItem {
                code: code.into(),
                message: message.into(),
                param: param.map(str::to_string),
                line,
            }],
        }
    }
}

/// `batch` object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchObject {
    pub id: String,
    pub object: &'static str,
    /// `/v1/chat/completions` or `/v1/completions`.
    pub endpoint: String,
    pub errors: Option<BatchErrors>,
    pub input_file_id: String,
    /// Always `24h`.
    pub completion_window: String,
    pub status: BatchStatus,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub created_at: i64,
    pub in_progress_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub finalizing_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub expired_at: Option<i64>,
    pub cancelling_at: Option<i64>,
    pub cancelled_at: Option<i64>,
    pub request_counts: RequestCounts,
    /// String pairs given at creation, or null.
    pub metadata: Option<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_and_serialises_as_openai() {
        for s in [
            BatchStatus::Validating,
            BatchStatus::Failed,
            BatchStatus::InProgress,
            BatchStatus::Finalizing,
            BatchStatus::Completed,
            BatchStatus::Expired,
            BatchStatus::Cancelling,
            BatchStatus::Cancelled,
        ] {
            assert_eq!(BatchStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(BatchStatus::parse("done"), None);
    }

    #[test]
    fn list_object_ids() {
        let l = ListObject::new(vec!["a".to_string(), "b".to_string()], true, |s| s.clone());
        let v = serde_json::to_value(&l).unwrap();
        assert_eq!(v["object"], "list");
        assert_eq!(v["first_id"], "a");
        assert_eq!(v["last_id"], "b");
        assert_eq!(v["has_more"], true);
    }

    #[test]
    fn result_file_ids_are_fixed_per_batch() {
        let b = new_batch_id();
        assert_eq!(output_file_id(&b), output_file_id(&b));
        assert_ne!(output_file_id(&b), error_file_id(&b));
        assert!(output_file_id(&b).starts_with("file-"));
    }
}
