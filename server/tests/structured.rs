//! Structured output over HTTP: `response_format` `json_schema` / `json_object` on
//! `/v1/chat/completions` (non-stream and stream) and `/v1/completions`, errors for malformed
//! formats and invalid schemas, `finish_reason: "length"` on a cut, and the hotline case-record
//! schema on the default Qwen model over real transcripts.

mod common;

use std::sync::OnceLock;

use common::{assert_error, post, post_stream, resolved, start, TestServer};
use govlm_inference::config::Source;
use serde_json::{json, Value};

const MODEL: &str = "smollm2";

fn smol() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        start(
            resolved(MODEL, "SmolLM2-135M-Instruct.Q4_1.gguf", Source::Gguf, 2048),
            1 << 20,
        )
    })
}

/// Checks `v` against the subset of JSON Schema the tests use (type, enum, properties,
/// required, additionalProperties: false, items, minItems, maxItems, maxLength, minimum,
/// maximum). Returns the violations.
fn violations(schema: &Value, v: &Value, path: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let ok = types.iter().any(|t| match *t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            _ => false,
        });
        if !ok {
            out.push(format!("{path}: {v} is not of type {t}"));
            return out;
        }
    }
    if let Some(Value::Array(options)) = schema.get("enum") {
        if !options.contains(v) {
            out.push(format!("{path}: {v} not in enum"));
        }
    }
    if let (Some(max), Some(s)) = (schema.get("maxLength").and_then(Value::as_u64), v.as_str()) {
        if s.chars().count() as u64 > max {
            out.push(format!("{path}: longer than {max}"));
        }
    }
    if let Some(n) = v.as_f64() {
        if schema
            .get("minimum")
            .and_then(Value::as_f64)
            .is_some_and(|m| n < m)
        {
            out.push(format!("{path}: below minimum"));
        }
        if schema
            .get("maximum")
            .and_then(Value::as_f64)
            .is_some_and(|m| n > m)
        {
            out.push(format!("{path}: above maximum"));
        }
    }
    if let Some(obj) = v.as_object() {
        let props = schema.get("properties").and_then(Value::as_object);
        for r in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !obj.contains_key(r) {
                out.push(format!("{path}: missing required `{r}`"));
            }
        }
        for (k, val) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => out.extend(violations(s, val, &format!("{path}.{k}"))),
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    out.push(format!("{path}: unexpected property `{k}`"))
                }
                None => {}
            }
        }
    }
    if let Some(arr) = v.as_array() {
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
            if (arr.len() as u64) < min {
                out.push(format!("{path}: fewer than {min} items"));
            }
        }
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
            if arr.len() as u64 > max {
                out.push(format!("{path}: more than {max} items"));
            }
        }
        if let Some(items) = schema.get("items") {
            for (i, it) in arr.iter().enumerate() {
                out.extend(violations(items, it, &format!("{path}[{i}]")));
            }
        }
    }
    out
}

fn assert_valid(schema: &Value, text: &str) -> Value {
    let v: Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("does not parse ({e}): {text:?}"));
    let errs = violations(schema, &v, "$");
    assert!(errs.is_empty(), "{errs:?}\n{text}");
    v
}

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 40},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "role": {"type": "string", "enum": ["engineer", "teacher", "doctor", "other"]},
            "languages": {"type": "array", "items": {"type": "string", "maxLength": 20}, "minItems": 1, "maxItems": 3},
            "retired": {"type": "boolean"}
        },
        "required": ["name", "age", "role", "languages", "retired"],
        "additionalProperties": false
    })
}

fn schema_format(schema: &Value) -> Value {
    json!({"type": "json_schema", "json_schema": {"name": "person", "strict": true, "schema": schema}})
}

fn chat(model: &str, content: &str, extra: Value) -> Value {
    let mut b = json!({"model": model, "messages": [{"role": "user", "content": content}]});
    if let (Some(o), Some(e)) = (b.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    b
}

const PERSON: &str = "Describe Mary Chan, a 34 year old teacher from Hong Kong, as JSON.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_schema_chat_non_stream_and_stream_validate() {
    let s = smol();
    let schema = person_schema();
    let body = chat(
        MODEL,
        PERSON,
        json!({"temperature": 0, "max_tokens": 300, "response_format": schema_format(&schema)}),
    );
    let (status, resp) = post(&s.base, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{resp}");
    let choice = &resp["choices"][0];
    assert_eq!(choice["finish_reason"], "stop", "{resp}");
    let text = choice["message"]["content"].as_str().expect("content");
    assert_valid(&schema, text);

    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    let payloads = post_stream(&s.base, "/v1/chat/completions", &stream_body).await;
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).expect("chunk JSON"))
        .collect();
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_valid(&schema, &streamed);
    assert_eq!(streamed, text, "stream and non-stream differ");
    let finish: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, vec![&json!("stop")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_object_with_n2_sampled_choices() {
    let s = smol();
    let body = chat(
        MODEL,
        "List two fruits and their colours as JSON.",
        json!({"temperature": 0.9, "seed": 5, "n": 2, "max_tokens": 200,
               "response_format": {"type": "json_object"}}),
    );
    let (status, resp) = post(&s.base, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{resp}");
    for c in resp["choices"].as_array().expect("choices") {
        let text = c["message"]["content"].as_str().expect("content");
        if c["finish_reason"] == "stop" {
            let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
            assert!(v.is_object(), "{text}");
        } else {
            assert_eq!(c["finish_reason"], "length");
            assert!(text.starts_with('{'), "{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tokens_cut_reports_length() {
    let s = smol();
    let body = chat(
        MODEL,
        PERSON,
        json!({"temperature": 0, "max_tokens": 5, "response_format": schema_format(&person_schema())}),
    );
    let (status, resp) = post(&s.base, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["choices"][0]["finish_reason"], "length");
    let text = resp["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    assert!(text.starts_with('{'), "{text}");
    assert_eq!(resp["usage"]["completion_tokens"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_accept_response_format() {
    let s = smol();
    let schema = json!({"type": "object", "properties": {"answer": {"type": "integer"}},
                        "required": ["answer"], "additionalProperties": false});
    let body = json!({"model": MODEL, "prompt": "Two plus two as JSON:", "max_tokens": 40,
                      "temperature": 0, "response_format": schema_format(&schema)});
    let (status, resp) = post(&s.base, "/v1/completions", &body).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["choices"][0]["finish_reason"], "stop", "{resp}");
    assert_valid(&schema, resp["choices"][0]["text"].as_str().expect("text"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_formats_and_invalid_schemas_are_400() {
    let s = smol();
    let cases = [
        (json!({"type": "xml"}), "xml"),
        (json!({"type": "json_schema"}), "json_schema"),
        (
            json!({"type": "json_schema", "json_schema": {"name": "x"}}),
            "schema",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nosuchtype"}}}),
            "schema",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema":
                {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}, "required": ["a"]}}}),
            "schema",
        ),
        (json!("json"), "response_format"),
    ];
    for (format, mentions) in cases {
        let body = chat(
            MODEL,
            "Hi",
            json!({"max_tokens": 5, "response_format": format}),
        );
        let (status, resp) = post(&s.base, "/v1/chat/completions", &body).await;
        assert_error(status, &resp, 400, Some("response_format"));
        let msg = resp["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(mentions), "{format}: {msg}");
    }
    // `text` is plain generation.
    let body = chat(
        MODEL,
        "Hi",
        json!({"max_tokens": 3, "response_format": {"type": "text"}}),
    );
    let (status, resp) = post(&s.base, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{resp}");
}

/// The case-record schema of the hotline task (issue 4, `shared/data/hotline/README.md`), with
/// length bounds so that a small model cannot ramble past `max_tokens`.
fn hotline_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "summary_en": {"type": "string", "maxLength": 400},
            "summary_zh_hant": {"type": "string", "maxLength": 200},
            "case_type": {"type": "string", "enum": ["enquiry", "complaint", "suggestion", "compliment"]},
            "department": {"type": "string", "enum": [
                "FEHD", "HD", "TD", "HyD", "WSD", "BD", "LCSD", "SWD", "EMSD", "LandsD",
                "DSD", "EPD", "AFCD", "LD", "ImmD", "HKPF"]},
            "district": {"enum": [
                "Central and Western", "Wan Chai", "Eastern", "Southern", "Yau Tsim Mong",
                "Sham Shui Po", "Kowloon City", "Wong Tai Sin", "Kwun Tong", "Kwai Tsing",
                "Tsuen Wan", "Tuen Mun", "Yuen Long", "North", "Tai Po", "Sha Tin", "Sai Kung",
                "Islands", null]},
            "location": {"type": "string", "maxLength": 120},
            "time_mentioned": {"type": ["string", "null"], "maxLength": 60},
            "urgency": {"type": "string", "enum": ["low", "normal", "high"]},
            "key_facts": {"type": "array", "items": {"type": "string", "maxLength": 100}, "maxItems": 5},
            "follow_up_requested": {"type": "boolean"}
        },
        "required": ["summary_en", "summary_zh_hant", "case_type", "department", "district",
                     "location", "time_mentioned", "urgency", "key_facts", "follow_up_requested"],
        "additionalProperties": false
    })
}

/// The key real case: hotline transcripts to case records on the default model, one streamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hotline_case_records_on_default_model_validate() {
    let s = start(
        resolved(
            "qwen",
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            Source::Gguf,
            4096,
        ),
        1 << 20,
    );
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/hotline/dev.jsonl");
    let lines =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let calls: Vec<Value> = lines
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &Value| v["id"] == "dev-03" || v["id"] == "dev-02")
        .collect();
    assert_eq!(calls.len(), 2);
    let schema = hotline_schema();
    let system = "You turn 1823 hotline call transcripts into case records. Reply with one JSON \
                  object: summary_en (English), summary_zh_hant (Traditional Chinese), case_type, \
                  department (abbreviation), district (or null), location, time_mentioned (or \
                  null), urgency, key_facts, follow_up_requested.";
    for (i, call) in calls.iter().enumerate() {
        let body = json!({
            "model": "qwen",
            "messages": [{"role": "system", "content": system},
                         {"role": "user", "content": call["transcript"]}],
            "temperature": 0,
            "max_tokens": 700,
            "stream": i == 1,
            "response_format": {"type": "json_schema", "json_schema":
                {"name": "hotline_case", "strict": true, "schema": schema}},
        });
        let text = if i == 1 {
            let payloads = post_stream(&s.base, "/v1/chat/completions", &body).await;
            let chunks: Vec<Value> = payloads
                .iter()
                .filter(|p| p.as_str() != "[DONE]")
                .map(|p| serde_json::from_str(p).expect("chunk JSON"))
                .collect();
            let finish = chunks
                .iter()
                .map(|c| &c["choices"][0]["finish_reason"])
                .find(|f| !f.is_null())
                .cloned();
            assert_eq!(finish, Some(json!("stop")), "{}", call["id"]);
            chunks
                .iter()
                .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
                .collect::<String>()
        } else {
            let (status, resp) = post(&s.base, "/v1/chat/completions", &body).await;
            assert_eq!(status, 200, "{resp}");
            assert_eq!(resp["choices"][0]["finish_reason"], "stop", "{resp}");
            resp["choices"][0]["message"]["content"]
                .as_str()
                .expect("content")
                .to_string()
        };
        let record = assert_valid(&schema, &text);
        eprintln!("{}: {record}", call["id"]);
    }
}
