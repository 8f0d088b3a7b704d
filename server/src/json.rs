//! [`OpenAiJson`]: a JSON body extractor whose rejections are OpenAI-shaped errors (axum's own
//! `Json` rejects with plain text). Bodies over the router's `DefaultBodyLimit` give 413.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;
use crate::openai::{ChatCompletionRequest, CompletionRequest, SamplingFields};

/// A request body parsed as JSON into `T`; type errors name the failing field as `param`.
#[derive(Debug)]
pub struct OpenAiJson<T>(pub T);

/// Largest request body in bytes (the router's `DefaultBodyLimit`), carried as an extension so
/// that the 413 message can name it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// A request body type built from the parsed JSON value.
pub trait FromBody: Sized {
    /// Converts the body; errors name the failing field as `param`.
    fn from_body(value: &Value) -> Result<Self, ApiError>;
}

/// Deserializes `T` from a JSON value, keeping the path of a failing field.
pub fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T, ApiError> {
    Ok(serde_path_to_error::deserialize(value)?)
}

impl FromBody for ChatCompletionRequest {
    fn from_body(value: &Value) -> Result<Self, ApiError> {
        let mut req: ChatCompletionRequest = from_value(value)?;
        req.sampling = from_value::<SamplingFields>(value)?;
        Ok(req)
    }
}

impl FromBody for CompletionRequest {
    fn from_body(value: &Value) -> Result<Self, ApiError> {
        let mut req: CompletionRequest = from_value(value)?;
        req.sampling = from_value::<SamplingFields>(value)?;
        Ok(req)
    }
}

impl<T, S> FromRequest<S> for OpenAiJson<T>
where
    T: FromBody,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req.extensions().get::<BodyLimit>().map(|l| l.0);
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::payload_too_large(limit.unwrap_or(0))
            } else {
                ApiError::bad_request(format!("Could not read the request body: {rej}"))
            }
        })?;
        parse_body(&bytes).map(OpenAiJson)
    }
}

/// Parses a JSON body into `T`, mapping errors to [`ApiError`] with the failing field as `param`.
pub fn parse_body<T: FromBody>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "The request body is empty; send a JSON object (Content-Type: application/json).",
        ));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        // serde_json stops at 128 levels of nesting; such a body may be valid JSON.
        if e.to_string().starts_with("recursion limit exceeded") {
            ApiError::bad_request(format!(
                "The JSON body nests arrays/objects more than 128 levels deep (at line {}, column {}); \
                 flatten it (for example a `response_format` schema).",
                e.line(),
                e.column()
            ))
        } else {
            ApiError::bad_request(format!(
                "We could not parse the JSON body of your request: {e}. The body must be valid JSON."
            ))
        }
    })?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "The request body must be a JSON object.",
        ));
    }
    T::from_body(&value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_deep_json_says_so() {
        let body = format!("{{\"a\": {}{}}}", "[".repeat(200), "]".repeat(200));
        let e = parse_body::<ChatCompletionRequest>(body.as_bytes()).unwrap_err();
        assert!(e.message.contains("128 levels"), "{}", e.message);
    }

    #[test]
    fn malformed_json_is_400_without_param() {
        let e = parse_body::<ChatCompletionRequest>(b"{\"model\": ").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.param, None);
        let e = parse_body::<ChatCompletionRequest>(b"").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = parse_body::<ChatCompletionRequest>(b"{} x").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = parse_body::<ChatCompletionRequest>(br#"{"model":"m","messages":[{"role":5}]}"#)
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"), "{e:?}");
        // `messages` may be absent when a `prompt` object supplies them; an empty conversation
        // is rejected later (validate::chat_messages, param `messages`).
        let r = parse_body::<ChatCompletionRequest>(br#"{"model":"m"}"#).unwrap();
        assert!(r.messages.is_empty());
        let e = parse_body::<ChatCompletionRequest>(br#"{"messages":[],"temperature":"hot"}"#)
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("temperature"), "{e:?}");
        let e = parse_body::<CompletionRequest>(br#"{"prompt":"x","max_tokens":1.5}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"), "{e:?}");
        let e = parse_body::<CompletionRequest>(br#"{"prompt":"x","n":"2"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("n"), "{e:?}");
    }
}
