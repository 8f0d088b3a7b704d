//! Structured output: OpenAI `response_format` (`json_schema`, `json_object`) enforced by
//! constrained decoding with [`llguidance`].
//!
//! - [`ResponseFormat::parse`] reads the OpenAI request field.
//! - [`StructuredCompiler`] is built once per model from its tokenizer (a byte trie over every
//!   row of the logits; building it for Qwen's 151,936 rows takes a few hundred ms, so
//!   [`crate::engine::EngineHandle::structured`] builds it on first use) and compiles a format
//!   into a [`Constraint`].
//! - A [`Constraint`] is the grammar state of one sequence. At every decode step the engine asks
//!   it for a masked copy of the logits row ([`Constraint::mask_logits`]: tokens the grammar
//!   forbids get `-inf`), samples from that copy, and reports the sampled token
//!   ([`Constraint::consume`]). When the grammar is complete ([`Constraint::is_complete`]) the
//!   sequence ends with finish reason `stop`; a sequence cut by `max_tokens` ends with `length`
//!   and its JSON is incomplete (as with OpenAI and vLLM, clients must check `finish_reason`).
//!
//! Rows of the logits without a vocabulary entry (padded embedding rows), entries the GGUF marks
//! unused or unknown (Qwen's `[PAD151665]`...) and special tokens (`<|im_start|>`, ...) are never
//! allowed; EOS tokens are allowed exactly when the document is
//! complete.
//!
//! JSON is generated compactly with `", "` and `": "` separators and no other whitespace
//! (small models otherwise tend to loop on newlines); a schema may override this with
//! llguidance's `x-guidance` key. Only local `$ref`s (`#/...`) are resolved.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::quantized::gguf_file;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{JsonCompileOptions, Matcher, ParserFactory};
use serde_json::Value;

use crate::tokenizer::Tokenizer;

/// Errors of structured output. `InvalidFormat` and `InvalidSchema` are the client's fault
/// (HTTP 400, param `response_format`); the others are server-side.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StructuredError {
    /// The `response_format` object is malformed; `param` is the path of the field at fault,
    /// e.g. `response_format.json_schema.schema`.
    #[error("{message}")]
    InvalidFormat { param: String, message: String },
    /// The JSON schema cannot be compiled into a grammar (invalid, unsatisfiable, or using an
    /// unsupported feature).
    #[error("invalid JSON schema: {0}")]
    InvalidSchema(String),
    /// The model's tokenizer cannot be used for constrained decoding.
    #[error("structured output is unavailable for this model: {0}")]
    Unavailable(String),
    /// The grammar state failed during generation (e.g. a token the mask forbade was reported).
    #[error("structured output failed: {0}")]
    Decoding(String),
}

/// A validated OpenAI `response_format` that needs constrained decoding (`text` needs none).
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    /// `{"type": "json_object"}`: any JSON object.
    JsonObject,
    /// `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`: a JSON value valid
    /// against `schema`. The schema is enforced whatever `strict` says.
    JsonSchema {
        name: Option<String>,
        schema: Value,
        strict: bool,
    },
}

impl ResponseFormat {
    /// Reads the `response_format` request field. `None`, `null` and `{"type": "text"}` give
    /// `Ok(None)`. Errors: [`StructuredError::InvalidFormat`] naming the field at fault (missing
    /// or unknown `type`, missing `json_schema` or `json_schema.schema`, a schema that is not an
    /// object or boolean, a `name` that is not 1-64 of `a-zA-Z0-9_-`).
    pub fn parse(v: Option<&Value>) -> Result<Option<Self>, StructuredError> {
        let bad = |param: &str, message: String| StructuredError::InvalidFormat {
            param: param.to_string(),
            message,
        };
        let f = match v {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Object(f)) => f,
            Some(_) => {
                return Err(bad(
                    "response_format",
                    "`response_format` must be an object such as {\"type\": \"json_object\"}."
                        .into(),
                ))
            }
        };
        let kind = match f.get("type") {
            Some(Value::String(s)) => s.as_str(),
            _ => return Err(bad(
                "response_format.type",
                "`response_format.type` is required: one of `text`, `json_object`, `json_schema`."
                    .into(),
            )),
        };
        match kind {
            "text" => Ok(None),
            "json_object" => Ok(Some(ResponseFormat::JsonObject)),
            "json_schema" => {
                let Some(Value::Object(js)) = f.get("json_schema") else {
                    return Err(bad(
                        "response_format.json_schema",
                        "`response_format.json_schema` must be an object with `name` and `schema`."
                            .into(),
                    ));
                };
                let name = match js.get("name") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(n))
                        if (1..=64).contains(&n.len())
                            && n
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
                    {
                        Some(n.clone())
                    }
                    Some(_) => {
                        return Err(bad(
                            "response_format.json_schema.name",
                            "`response_format.json_schema.name` must be 1 to 64 characters of a-z, A-Z, 0-9, `_` or `-`."
                                .into(),
                        ))
                    }
                };
                let strict = match js.get("strict") {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => {
                        return Err(bad(
                            "response_format.json_schema.strict",
                            "`response_format.json_schema.strict` must be a boolean.".into(),
                        ))
                    }
                };
                let schema = match js.get("schema") {
                    Some(s @ (Value::Object(_) | Value::Bool(_))) => s.clone(),
                    None | Some(Value::Null) => {
                        return Err(bad(
                            "response_format.json_schema.schema",
                            "`response_format.json_schema.schema` is required: the JSON Schema the output must follow."
                                .into(),
                        ))
                    }
                    Some(_) => {
                        return Err(bad(
                            "response_format.json_schema.schema",
                            "`response_format.json_schema.schema` must be a JSON Schema object."
                                .into(),
                        ))
                    }
                };
                Ok(Some(ResponseFormat::JsonSchema {
                    name,
                    schema,
                    strict,
                }))
            }
            other => Err(bad(
                "response_format.type",
                format!(
                    "`response_format.type` `{other}` is not supported; use `text`, `json_object` or `json_schema`."
                ),
            )),
        }
    }

    /// The JSON schema this format enforces (`{"type": "object"}` for `json_object`).
    pub fn schema(&self) -> Value {
        match self {
            ResponseFormat::JsonObject => serde_json::json!({"type": "object"}),
            ResponseFormat::JsonSchema { schema, .. } => schema.clone(),
        }
    }
}

/// GGUF token types (llama.cpp's `llama_token_type`) that are never text: 2 unknown, 5 unused
/// (e.g. Qwen's `[PAD151665]` rows).
const UNUSABLE_TOKEN_TYPES: [i64; 2] = [2, 5];

/// Ids whose GGUF `tokenizer.ggml.token_type` marks them unknown or unused: vocabulary entries
/// such as `[PAD151665]` that a grammar must never let the model spell. Empty when the metadata
/// has no token types.
pub fn unusable_token_ids(metadata: &HashMap<String, gguf_file::Value>) -> Vec<u32> {
    let Some(gguf_file::Value::Array(types)) = metadata.get("tokenizer.ggml.token_type") else {
        return Vec::new();
    };
    types
        .iter()
        .enumerate()
        .filter(|(_, v)| {
            let t = match v {
                gguf_file::Value::I32(x) => i64::from(*x),
                gguf_file::Value::U32(x) => i64::from(*x),
                gguf_file::Value::I64(x) => *x,
                gguf_file::Value::U64(x) => i64::try_from(*x).unwrap_or(i64::MAX),
                gguf_file::Value::I16(x) => i64::from(*x),
                gguf_file::Value::U16(x) => i64::from(*x),
                gguf_file::Value::I8(x) => i64::from(*x),
                gguf_file::Value::U8(x) => i64::from(*x),
                _ => 1,
            };
            UNUSABLE_TOKEN_TYPES.contains(&t)
        })
        .map(|(i, _)| i as u32)
        .collect()
}

/// Per-model compiler of response formats into [`Constraint`]s. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct StructuredCompiler {
    factory: Arc<ParserFactory>,
    /// Width of a logits row (tokens), which may exceed the tokenizer's vocabulary.
    logits_width: usize,
}

impl std::fmt::Debug for StructuredCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StructuredCompiler")
            .field("logits_width", &self.logits_width)
            .finish()
    }
}

/// llguidance's view of our tokenizer: a byte trie over every logits row, and the real
/// tokenizer for the canonical tokenization of forced text.
struct TokEnv {
    trie: TokTrie,
    tokenizer: Tokenizer,
}

impl TokenizerEnv for TokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    /// The tokenizer's own tokenization when it spells `s` exactly with ordinary tokens (no
    /// added prefix space, no special tokens), else the trie's greedy tokenization.
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        if let Ok(text) = std::str::from_utf8(s) {
            if let Ok(ids) = self.tokenizer.encode(text, false) {
                let exact = ids.iter().all(|&t| {
                    (t as usize) < self.trie.vocab_size() && !self.trie.is_special_token(t)
                }) && {
                    let mut bytes = Vec::with_capacity(s.len());
                    for &t in &ids {
                        bytes.extend_from_slice(self.trie.token(t));
                    }
                    bytes == s
                };
                if exact {
                    return ids;
                }
            }
        }
        self.trie.greedy_tokenize(s)
    }
}

impl StructuredCompiler {
    /// Builds the token trie and grammar factory for `tokenizer`, whose logits rows are
    /// `logits_width` wide (`>= tokenizer.vocab_size()`; extra rows are never allowed).
    /// `excluded` ids (see [`unusable_token_ids`]) are never allowed either.
    ///
    /// Cost: one pass over the vocabulary plus llguidance's lexer slices; a few hundred ms for a
    /// 151,936-token vocabulary. Errors: [`StructuredError::Unavailable`] when the tokenizer has
    /// no EOS token or llguidance rejects the vocabulary.
    pub fn new(
        tokenizer: &Tokenizer,
        logits_width: usize,
        excluded: &[u32],
    ) -> Result<Self, StructuredError> {
        let width = logits_width.max(tokenizer.vocab_size());
        let eos = tokenizer.eos_token_ids();
        let Some(&first_eos) = eos.first() else {
            return Err(StructuredError::Unavailable(
                "the tokenizer has no end-of-sequence token".into(),
            ));
        };
        let real = tokenizer.vocab_size();
        let mut usable = vec![true; width];
        for &id in excluded {
            if let Some(u) = usable.get_mut(id as usize) {
                *u = false;
            }
        }
        let words: Vec<Vec<u8>> = (0..width)
            .map(|i| {
                let id = i as u32;
                if i >= real || (!usable[i] && !eos.contains(&id)) {
                    return Vec::new();
                }
                let bytes = tokenizer.token_bytes(id);
                if bytes.is_empty() {
                    return bytes;
                }
                if tokenizer.is_special(id) || eos.contains(&id) {
                    // llguidance's convention: special tokens start with 0xFF, which never
                    // occurs in UTF-8 text, so the grammar can never spell them.
                    let mut marked = Vec::with_capacity(bytes.len() + 1);
                    marked.push(TokTrie::SPECIAL_TOKEN_MARKER);
                    marked.extend_from_slice(&bytes);
                    return marked;
                }
                bytes
            })
            .collect();
        let info = TokRxInfo {
            vocab_size: width as u32,
            tok_eos: first_eos,
            tok_bos: tokenizer.bos_token_id(),
            tok_pad: None,
            tok_unk: None,
            tok_end_of_turn: None,
        };
        let trie = std::panic::catch_unwind(|| TokTrie::from(&info, &words).with_eos_tokens(eos))
            .map_err(|_| {
            StructuredError::Unavailable("cannot build the token trie of the vocabulary".into())
        })?;
        let env: llguidance::toktrie::TokEnv = Arc::new(TokEnv {
            trie,
            tokenizer: tokenizer.clone(),
        });
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| StructuredError::Unavailable(e.to_string()))?;
        factory.quiet();
        Ok(StructuredCompiler {
            factory: Arc::new(factory),
            logits_width: width,
        })
    }

    /// Width of the logits rows masks are made for (tokens).
    pub fn logits_width(&self) -> usize {
        self.logits_width
    }

    /// Compiles `format` into a fresh [`Constraint`] positioned at the start of the output.
    /// Cost: from well under a millisecond to tens of ms for very large schemas.
    /// Errors: [`StructuredError::InvalidSchema`] with llguidance's explanation.
    pub fn compile(&self, format: &ResponseFormat) -> Result<Constraint, StructuredError> {
        let mut schema = format.schema();
        if let Value::Object(map) = &mut schema {
            if !map.contains_key("x-guidance") {
                let opts = JsonCompileOptions {
                    item_separator: ", ".into(),
                    key_separator: ": ".into(),
                    whitespace_flexible: false,
                    ..JsonCompileOptions::default()
                };
                if let Ok(v) = serde_json::to_value(&opts) {
                    map.insert("x-guidance".into(), v);
                }
            }
        }
        let parser = self
            .factory
            .create_parser(TopLevelGrammar::from_json_schema(schema))
            .map_err(|e| StructuredError::InvalidSchema(one_line(&e.to_string())))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(StructuredError::InvalidSchema(one_line(&e)));
        }
        Ok(Constraint {
            matcher,
            scratch: Vec::new(),
            consumed: 0,
        })
    }
}

/// An llguidance error as one line of at most 500 bytes: its lines (a regex error spans several:
/// the message, the pattern, a caret, the reason) joined by spaces, cut where an appended grammar
/// would make it long.
fn one_line(s: &str) -> String {
    let line = s
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '^'))
        .collect::<Vec<_>>()
        .join(" ");
    if line.len() > 500 {
        let mut end = 500;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &line[..end])
    } else {
        line
    }
}

/// The grammar state of one sequence (see the module docs). Cloning gives an independent state
/// (used for the `n` choices of one request).
pub struct Constraint {
    matcher: Matcher,
    /// The masked logits row of the current step (`[logits width]` f32).
    scratch: Vec<f32>,
    /// Tokens consumed so far.
    consumed: usize,
}

impl Clone for Constraint {
    fn clone(&self) -> Self {
        Constraint {
            matcher: self.matcher.deep_clone(),
            scratch: Vec::new(),
            consumed: self.consumed,
        }
    }
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("consumed_tokens", &self.consumed)
            .field("stopped", &self.matcher.is_stopped())
            .finish()
    }
}

impl Constraint {
    /// Returns a copy of `logits` (one row, `[width]` f32) in which every token the grammar
    /// forbids at this position is `-inf`. Tokens beyond the mask (padded rows) are forbidden.
    /// The copy lives in the constraint and is overwritten by the next call.
    ///
    /// Errors: [`StructuredError::Decoding`] when the grammar state has failed or no token is
    /// allowed.
    pub fn mask_logits(&mut self, logits: &[f32]) -> Result<&[f32], StructuredError> {
        let mask = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| StructuredError::Decoding(one_line(&e.to_string())))?;
        self.scratch.clear();
        self.scratch.resize(logits.len(), f32::NEG_INFINITY);
        let mut any = false;
        let words = mask.as_slice();
        for (w, &bits) in words.iter().enumerate() {
            if bits == 0 {
                continue;
            }
            let base = w * 32;
            if base >= logits.len() {
                break;
            }
            let end = (base + 32).min(logits.len());
            if bits == u32::MAX {
                self.scratch[base..end].copy_from_slice(&logits[base..end]);
                any = true;
                continue;
            }
            let mut b = bits;
            while b != 0 {
                let i = base + b.trailing_zeros() as usize;
                if i >= end {
                    break;
                }
                self.scratch[i] = logits[i];
                any = true;
                b &= b - 1;
            }
        }
        if !any {
            return Err(StructuredError::Decoding(
                "the grammar allows no token at this position".into(),
            ));
        }
        Ok(&self.scratch)
    }

    /// Advances the grammar by the token sampled from the masked logits.
    /// Errors: [`StructuredError::Decoding`] when the grammar does not accept `id`.
    pub fn consume(&mut self, id: u32) -> Result<(), StructuredError> {
        self.matcher
            .consume_token(id)
            .map_err(|e| StructuredError::Decoding(one_line(&e.to_string())))?;
        self.consumed += 1;
        Ok(())
    }

    /// Whether the output is a complete document and nothing but EOS may follow: the sequence
    /// should end with finish reason `stop`.
    pub fn is_complete(&self) -> bool {
        self.matcher.is_stopped() && !self.matcher.is_error()
    }

    /// Whether the document could end here (EOS is allowed at this position).
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }

    /// Tokens consumed so far.
    pub fn consumed_tokens(&self) -> usize {
        self.consumed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parse_formats() {
        assert_eq!(ResponseFormat::parse(None).unwrap(), None);
        assert_eq!(ResponseFormat::parse(Some(&Value::Null)).unwrap(), None);
        assert_eq!(
            ResponseFormat::parse(Some(&json!({"type": "text"}))).unwrap(),
            None
        );
        assert_eq!(
            ResponseFormat::parse(Some(&json!({"type": "json_object"}))).unwrap(),
            Some(ResponseFormat::JsonObject)
        );
        let f = ResponseFormat::parse(Some(&json!({"type": "json_schema", "json_schema":
            {"name": "case", "strict": true, "schema": {"type": "object"}}})))
        .unwrap();
        assert_eq!(
            f,
            Some(ResponseFormat::JsonSchema {
                name: Some("case".into()),
                schema: json!({"type": "object"}),
                strict: true
            })
        );
    }

    #[test]
    fn parse_errors_name_the_field() {
        let param = |v: Value| match ResponseFormat::parse(Some(&v)).unwrap_err() {
            StructuredError::InvalidFormat { param, .. } => param,
            e => panic!("unexpected {e:?}"),
        };
        assert_eq!(param(json!("json")), "response_format");
        assert_eq!(param(json!({})), "response_format.type");
        assert_eq!(param(json!({"type": "xml"})), "response_format.type");
        assert_eq!(
            param(json!({"type": "json_schema"})),
            "response_format.json_schema"
        );
        assert_eq!(
            param(json!({"type": "json_schema", "json_schema": {"name": "x"}})),
            "response_format.json_schema.schema"
        );
        assert_eq!(
            param(json!({"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}})),
            "response_format.json_schema.name"
        );
        assert_eq!(
            param(json!({"type": "json_schema", "json_schema": {"schema": {}, "strict": "yes"}})),
            "response_format.json_schema.strict"
        );
    }

    #[test]
    fn one_line_is_bounded() {
        assert_eq!(
            one_line("regex parse error:\n    ([\n     ^\nerror: x"),
            "regex parse error: ([ error: x"
        );
        assert!(one_line(&"é".repeat(400)).ends_with("..."));
    }
}
