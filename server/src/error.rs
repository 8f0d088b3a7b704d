//! [`ApiError`]: the one place where errors become HTTP status codes and OpenAI's error JSON
//! `{"error": {"message", "type", "param", "code"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use govlm_inference::chat_template::TemplateError;
use govlm_inference::engine::SubmitError;
use govlm_inference::tokenizer::TokenizerError;
use serde::Serialize;

/// An error answered to the client in OpenAI's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`, e.g. `invalid_request_error`.
    pub kind: &'static str,
    /// The request field at fault, e.g. `messages[2].role`.
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds for a `Retry-After` header (429).
    pub retry_after: Option<u64>,
}

/// The JSON body `{"error": {...}}`.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

/// The inner error object.
#[derive(Debug, Serialize)]
pub struct ErrorDetail<'a> {
    pub message: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub param: Option<&'a str>,
    pub code: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400 naming the request field at fault.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        e.param = Some(param.into());
        e
    }

    /// 400 about the whole request (no single field).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 404 for a `model` that is not served.
    pub fn model_not_found(model: &str) -> Self {
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("The model `{model}` does not exist."),
        );
        e.param = Some("model".into());
        e.code = Some("model_not_found");
        e
    }

    /// 404 for an unknown path.
    pub fn route_not_found(path: &str) -> Self {
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("Unknown URL: {path}"),
        );
        e.code = Some("unknown_url");
        e
    }

    /// 405 for a known path with the wrong method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "Method not allowed",
        )
    }

    /// 413 for a body over `limit` bytes.
    pub fn payload_too_large(limit: usize) -> Self {
        let mut e = Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("Request body is larger than the limit of {limit} bytes."),
        );
        e.code = Some("request_too_large");
        e
    }

    /// 500 for a failure inside the server.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// 503 when a model's engine has stopped.
    pub fn engine_stopped() -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "The model's engine has stopped; the server needs a restart.",
        );
        e.code = Some("engine_unavailable");
        e
    }

    /// The JSON value `{"error": {...}}` (also sent as an SSE event mid-stream).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(ErrorBody {
            error: ErrorDetail {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        })
        .unwrap_or_else(
            |_| serde_json::json!({"error": {"message": "error", "type": "server_error"}}),
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), message = %self.message, "request failed");
        }
        let mut resp = (self.status, axum::Json(self.to_json())).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::QueueFull { model, capacity } => {
                let mut err = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_exceeded",
                    format!(
                        "The server is busy: model `{model}` already has {capacity} sequences waiting (the limit; a request with `n` choices needs `n`). Retry later."
                    ),
                );
                err.code = Some("rate_limit_exceeded");
                err.retry_after = Some(1);
                err
            }
            SubmitError::EngineStopped { model } => {
                let mut err = ApiError::engine_stopped();
                err.message = format!(
                    "The engine of model `{model}` has stopped; the server needs a restart."
                );
                err
            }
        }
    }
}

impl From<crate::batch::BatchError> for ApiError {
    fn from(e: crate::batch::BatchError) -> Self {
        use crate::batch::BatchError as B;
        let message = e.to_string();
        match e {
            B::FileNotFound(_) | B::BatchNotFound(_) => {
                let param = if matches!(e, B::FileNotFound(_)) {
                    "file_id"
                } else {
                    "batch_id"
                };
                let mut err =
                    ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", message);
                err.param = Some(param.into());
                err
            }
            B::Invalid { param, message } => ApiError::invalid(param, message),
            B::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "invalid_request_error", m),
            B::TooLarge(limit) => ApiError::payload_too_large(limit),
            B::Stopped => {
                let mut err = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    "The batch service has stopped; the server needs a restart.",
                );
                err.code = Some("batch_service_unavailable");
                err
            }
            B::Store(_) | B::Io(_) | B::Json(_) => ApiError::internal(message),
        }
    }
}

impl From<TemplateError> for ApiError {
    fn from(e: TemplateError) -> Self {
        let message = match e {
            TemplateError::Syntax(m) => format!("The model's chat template is invalid: {m}"),
            TemplateError::Render(m) => m,
        };
        ApiError::invalid("messages", message)
    }
}

impl From<govlm_inference::structured::StructuredError> for ApiError {
    /// Format, schema and availability errors are the request's fault (400, param
    /// `response_format`); a grammar failure during generation is a 500.
    fn from(e: govlm_inference::structured::StructuredError) -> Self {
        use govlm_inference::structured::StructuredError as S;
        match e {
            S::InvalidFormat { message, .. } => ApiError::invalid("response_format", message),
            S::InvalidSchema(m) => ApiError::invalid(
                "response_format",
                format!("Invalid schema in `response_format.json_schema.schema`: {m}"),
            ),
            S::Unavailable(_) => ApiError::invalid("response_format", e.to_string()),
            S::Decoding(_) => ApiError::internal(e.to_string()),
        }
    }
}

impl From<TokenizerError> for ApiError {
    fn from(e: TokenizerError) -> Self {
        ApiError::internal(format!("tokenizer error: {e}"))
    }
}

impl From<serde_path_to_error::Error<serde_json::Error>> for ApiError {
    fn from(e: serde_path_to_error::Error<serde_json::Error>) -> Self {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                ApiError::bad_request(format!(
                    "We could not parse the JSON body of your request: {inner}. \
                 The body must be valid JSON."
                ))
            }
            _ => {
                let param = top_param(&path, &inner);
                let message = if path.is_empty() || path == "." {
                    format!("Invalid request body: {inner}")
                } else {
                    format!("Invalid value for `{path}`: {inner}")
                };
                match param {
                    Some(p) => ApiError::invalid(p, message),
                    None => ApiError::bad_request(message),
                }
            }
        }
    }
}

/// The `param` for a body that parsed as JSON but not as the request: the failing field's path,
/// or the missing field's name.
fn top_param(path: &str, inner: &serde_json::Error) -> Option<String> {
    if !path.is_empty() && path != "." {
        return Some(path.to_string());
    }
    // "missing field `messages` at line 1 column 2"
    let msg = inner.to_string();
    let rest = msg.strip_prefix("missing field `")?;
    let end = rest.find('`')?;
    Some(rest[..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn error_json_shape() {
        let e = ApiError::invalid("temperature", "bad");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            e.to_json(),
            json!({"error": {"message": "bad", "type": "invalid_request_error", "param": "temperature", "code": null}})
        );
        let e = ApiError::model_not_found("x");
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(e.to_json()["error"]["code"], "model_not_found");
        assert_eq!(e.to_json()["error"]["param"], "model");
    }

    #[test]
    fn queue_full_is_429_with_retry_after() {
        let e = ApiError::from(SubmitError::QueueFull {
            model: "m".into(),
            capacity: 4,
        });
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        let resp = e.into_response();
        assert_eq!(resp.headers().get(header::RETRY_AFTER).unwrap(), "1");
        let e = ApiError::from(SubmitError::EngineStopped { model: "m".into() });
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn template_error_is_400_with_message() {
        let e = ApiError::from(TemplateError::Render(
            "Conversation roles must alternate".into(),
        ));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("alternate"));
    }

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct T {
        a: Vec<Inner>,
    }
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Inner {
        b: f64,
    }

    fn parse(s: &str) -> ApiError {
        let mut de = serde_json::Deserializer::from_str(s);
        ApiError::from(serde_path_to_error::deserialize::<_, T>(&mut de).unwrap_err())
    }

    #[test]
    fn json_errors_name_the_field() {
        let e = parse("{\"a\": [{\"b\": \"x\"}]}");
        assert_eq!(e.param.as_deref(), Some("a[0].b"), "{e:?}");
        let e = parse("{}");
        assert_eq!(e.param.as_deref(), Some("a"), "{e:?}");
        let e = parse("{\"a\": ");
        assert_eq!(e.param, None);
        assert!(e.message.contains("parse the JSON"), "{e:?}");
    }
}
