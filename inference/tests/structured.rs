//! Structured output through the engine: outputs constrained by a JSON schema parse and validate
//! (checked with the independent `jsonschema` crate), `json_object` gives an object, a
//! `max_tokens` cut ends with `length`, and constrained sequences batch with free ones without
//! changing anyone's text, on SmolLM2-135M. The vocabularies of the default Qwen2.5 (padding
//! entries) and Gemma 3 (SentencePiece) are checked without loading weights. The hotline
//! case-record schema on the default model runs over HTTP in server/tests/structured.rs.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use candle_core::quantized::gguf_file;
use common::{collect, greedy};
use govlm_inference::chat_template::ChatMessage;
use govlm_inference::config::{DeviceSpec, KvMemory, SchedulerConfig, Source};
use govlm_inference::engine::{EngineHandle, FinishReason, GenerateRequest};
use govlm_inference::sampling::SamplingParams;
use govlm_inference::structured::{
    unusable_token_ids, ResponseFormat, StructuredCompiler, StructuredError,
};
use govlm_inference::tokenizer::Tokenizer;
use serde_json::{json, Value};

const SMOL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

fn engine(file: &str) -> EngineHandle {
    let mut scheduler = SchedulerConfig::defaults_for(DeviceSpec::Cpu);
    scheduler.kv_cache_memory = KvMemory::Bytes(256 << 20);
    common::spawn_engine(file, Source::Gguf, 4096, scheduler, 64)
}

/// Chat prompt ids, as the server renders them.
fn chat_ids(e: &EngineHandle, system: &str, user: &str) -> Vec<u32> {
    let msgs = [
        ChatMessage::new("system", system),
        ChatMessage::new("user", user),
    ];
    let text = e
        .chat_template()
        .render(&msgs, true, None)
        .expect("render chat");
    let tok = e.tokenizer();
    let has_bos = tok
        .bos_token()
        .is_some_and(|b| !b.is_empty() && text.starts_with(b));
    tok.encode(&text, !has_bos).expect("encode")
}

fn request(
    prompt_ids: Vec<u32>,
    max_tokens: usize,
    sampling: SamplingParams,
    constraint: Option<govlm_inference::structured::Constraint>,
) -> GenerateRequest {
    GenerateRequest {
        prompt_ids,
        max_tokens,
        sampling,
        stop: Vec::new(),
        stop_token_ids: Vec::new(),
        ignore_eos: false,
        prompt_logprobs: None,
        priority: Default::default(),
        constraint,
        output_script: None,
    }
}

fn seeded(seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 0.8,
        top_p: 0.95,
        seed: Some(seed),
        ..SamplingParams::default()
    }
}

fn schema_format(schema: &Value) -> ResponseFormat {
    ResponseFormat::JsonSchema {
        name: Some("test".into()),
        schema: schema.clone(),
        strict: true,
    }
}

fn run(
    e: &EngineHandle,
    ids: &[u32],
    max_tokens: usize,
    sampling: SamplingParams,
    format: Option<&ResponseFormat>,
) -> (String, Vec<u32>, FinishReason) {
    let constraint = format.map(|f| {
        e.structured()
            .expect("compiler")
            .compile(f)
            .expect("compile")
    });
    collect(
        e.submit(request(ids.to_vec(), max_tokens, sampling, constraint))
            .expect("submit"),
    )
}

/// Parses `text` and validates it against `schema`; panics with the text on failure.
fn assert_valid(schema: &Value, text: &str, what: &str) -> Value {
    let v: Value = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("{what}: output does not parse ({e}): {text:?}"));
    let validator = jsonschema::validator_for(schema).expect("test schema is valid");
    let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{what}: output does not validate: {errors:?}\n{text}"
    );
    v
}

/// Objects, nested objects, arrays, enums, booleans, integers, a nullable field.
fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 40},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "employed": {"type": "boolean"},
            "role": {"type": "string", "enum": ["engineer", "teacher", "doctor", "other"]},
            "skills": {
                "type": "array",
                "items": {"type": "string", "maxLength": 30},
                "minItems": 1,
                "maxItems": 3
            },
            "address": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 30},
                    "district": {"type": ["string", "null"], "maxLength": 30}
                },
                "required": ["city", "district"],
                "additionalProperties": false
            }
        },
        "required": ["name", "age", "employed", "role", "skills", "address"],
        "additionalProperties": false
    })
}

const PERSON_PROMPT: &str =
    "Describe Mary Chan, a 34 year old teacher in Sha Tin, Hong Kong, as a JSON object.";

#[test]
fn schema_outputs_parse_and_validate_greedy_and_sampled() {
    let e = engine(SMOL);
    let schema = person_schema();
    let fmt = schema_format(&schema);
    let ids = chat_ids(&e, "You answer in JSON.", PERSON_PROMPT);
    for (what, sampling) in [
        ("greedy", greedy()),
        ("seed 1", seeded(1)),
        ("seed 2", seeded(2)),
    ] {
        let (text, _, reason) = run(&e, &ids, 300, sampling, Some(&fmt));
        assert_eq!(reason, FinishReason::Stop, "{what}: {text}");
        let v = assert_valid(&schema, &text, what);
        assert!(v["skills"].as_array().is_some_and(|a| !a.is_empty()));
    }
    // The same seed gives the same document.
    let a = run(&e, &ids, 300, seeded(7), Some(&fmt));
    let b = run(&e, &ids, 300, seeded(7), Some(&fmt));
    assert_eq!(a.0, b.0);
}

#[test]
fn json_object_mode_gives_an_object() {
    let e = engine(SMOL);
    let ids = chat_ids(
        &e,
        "You answer in JSON.",
        "Give the capital cities of France and Japan.",
    );
    let (text, _, reason) = run(&e, &ids, 200, greedy(), Some(&ResponseFormat::JsonObject));
    assert_eq!(reason, FinishReason::Stop, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert!(v.is_object(), "{text}");
}

#[test]
fn max_tokens_cut_ends_with_length() {
    let e = engine(SMOL);
    let ids = chat_ids(&e, "You answer in JSON.", PERSON_PROMPT);
    let fmt = schema_format(&person_schema());
    let (text, toks, reason) = run(&e, &ids, 6, greedy(), Some(&fmt));
    assert_eq!(reason, FinishReason::Length, "{text}");
    assert_eq!(toks.len(), 6);
    // Truncated, so not a complete document; but it is the start of the greedy document.
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");
    let (full, _, _) = run(&e, &ids, 300, greedy(), Some(&fmt));
    assert!(full.starts_with(&text), "{text:?} vs {full:?}");
}

#[test]
fn constrained_and_free_requests_batch_without_changing_results() {
    let e = engine(SMOL);
    let person = schema_format(&person_schema());
    let list = schema_format(&json!({
        "type": "object",
        "properties": {"planets": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 4}},
        "required": ["planets"],
        "additionalProperties": false
    }));
    let p1 = chat_ids(&e, "You answer in JSON.", PERSON_PROMPT);
    let p2 = chat_ids(
        &e,
        "You answer in JSON.",
        "List the first planets of the solar system.",
    );
    let p3 = chat_ids(
        &e,
        "You are helpful.",
        "Write one sentence about Hong Kong.",
    );
    let cases: Vec<(Vec<u32>, SamplingParams, Option<&ResponseFormat>)> = vec![
        (p1.clone(), greedy(), Some(&person)),
        (p3.clone(), greedy(), None),
        (p2.clone(), seeded(3), Some(&list)),
        (p1.clone(), seeded(4), None),
        (p2.clone(), greedy(), Some(&list)),
    ];
    let alone: Vec<_> = cases
        .iter()
        .map(|(ids, s, f)| run(&e, ids, 120, s.clone(), *f))
        .collect();
    let compiler = e.structured().expect("compiler");
    let rxs: Vec<_> = cases
        .iter()
        .map(|(ids, s, f)| {
            let c = f.map(|f| compiler.compile(f).expect("compile"));
            e.submit(request(ids.clone(), 120, s.clone(), c))
                .expect("submit")
        })
        .collect();
    let together: Vec<_> = rxs.into_iter().map(collect).collect();
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a.0, t.0, "case {i}: text differs alone vs batched");
        assert_eq!(a.2, t.2, "case {i}: finish reason differs");
    }
    // Clones of one compiled constraint are independent (the `n` choices of one request).
    let c = compiler.compile(&person).expect("compile");
    let rxs: Vec<_> = (0..2)
        .map(|_| {
            e.submit(request(p1.clone(), 120, greedy(), Some(c.clone())))
                .expect("submit")
        })
        .collect();
    let outs: Vec<_> = rxs.into_iter().map(collect).collect();
    assert_eq!(outs[0].0, alone[0].0);
    assert_eq!(outs[1].0, alone[0].0);
}

#[test]
fn invalid_schemas_are_rejected_at_compile_time() {
    let tok_engine = engine(SMOL);
    let compiler = tok_engine.structured().expect("compiler");
    for bad in [
        json!({"type": "nosuchtype"}),
        json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}, "required": ["a"]}),
        json!({"type": "integer", "minimum": 5, "maximum": 1}),
        json!({"type": "string", "pattern": "(["}),
    ] {
        match compiler.compile(&schema_format(&bad)) {
            Err(StructuredError::InvalidSchema(msg)) => {
                assert!(!msg.is_empty() && !msg.contains('\n'), "{msg:?}");
                if bad.get("pattern").is_some() {
                    // The reason, not just "regex parse error:".
                    assert!(msg.contains("unclosed"), "{msg:?}");
                }
            }
            other => panic!("{bad}: expected InvalidSchema, got {other:?}"),
        }
    }
}

/// A compiler built straight from a GGUF file's tokenizer (no model weights needed).
fn compiler_from_gguf(file: &str) -> (Tokenizer, StructuredCompiler, std::time::Duration) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models")
        .join(file);
    let mut f = std::fs::File::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run `make models`)", path.display()));
    let content = gguf_file::Content::read(&mut f).expect("read GGUF");
    let tokenizer = Tokenizer::from_gguf(&content.metadata).expect("tokenizer");
    let excluded = unusable_token_ids(&content.metadata);
    let t0 = Instant::now();
    let compiler =
        StructuredCompiler::new(&tokenizer, tokenizer.vocab_size(), &excluded).expect("compiler");
    (tokenizer, compiler, t0.elapsed())
}

/// Feeds `doc`, tokenized by the model's own tokenizer, through a fresh constraint: every token
/// must be allowed by the mask, and the document must end complete.
fn replay_document(
    tokenizer: &Tokenizer,
    compiler: &StructuredCompiler,
    format: &ResponseFormat,
    doc: &str,
) {
    let mut c = compiler.compile(format).expect("compile");
    let zeros = vec![0.0f32; compiler.logits_width()];
    let ids = tokenizer.encode(doc, false).expect("encode");
    for (i, &t) in ids.iter().enumerate() {
        let masked = c.mask_logits(&zeros).expect("mask");
        assert_eq!(
            masked[t as usize],
            0.0,
            "token {i} ({t}, {:?}) of {doc:?} is masked",
            tokenizer.token_text(t)
        );
        c.consume(t).expect("consume");
    }
    assert!(
        c.is_complete() || c.is_accepting(),
        "{doc:?} is not complete"
    );
}

/// Qwen (the default model): padding entries of the vocabulary and special tokens are never
/// allowed; a case record in the grammar's own layout, tokenized naturally, is accepted.
#[test]
fn qwen_vocabulary_masks_padding_and_specials() {
    let (tok, compiler, build) = compiler_from_gguf(QWEN);
    eprintln!(
        "structured compiler for {} logits rows built in {build:?}",
        compiler.logits_width()
    );
    let vocab = tok.vocab_size();
    // Qwen's GGUF pads its vocabulary to the embedding's 151,936 rows with unused `[PAD...]`
    // entries (token type 5).
    let padding: Vec<usize> = (0..vocab)
        .filter(|&i| tok.token_text(i as u32).starts_with("[PAD"))
        .collect();
    assert!(padding.len() > 200, "{} padding entries", padding.len());

    // Inside a JSON string almost everything is allowed, but never padding, specials or EOS.
    let mut c = compiler
        .compile(&schema_format(&json!({"type": "string"})))
        .expect("compile");
    let quote = tok.encode("\"", false).expect("encode");
    assert_eq!(quote.len(), 1);
    let zeros = vec![0.0f32; compiler.logits_width()];
    assert_eq!(c.mask_logits(&zeros).expect("mask")[quote[0] as usize], 0.0);
    c.consume(quote[0]).expect("consume quote");
    let inside = c.mask_logits(&zeros).expect("mask").to_vec();
    let allowed = inside.iter().filter(|x| **x == 0.0).count();
    assert!(
        allowed > vocab / 2,
        "only {allowed} tokens allowed inside a string"
    );
    for &id in &padding {
        assert_eq!(inside[id], f32::NEG_INFINITY, "padding entry {id} allowed");
    }
    for id in 0..vocab as u32 {
        if tok.is_special(id) {
            assert_eq!(inside[id as usize], f32::NEG_INFINITY, "special token {id}");
        }
    }
    for &eos in tok.eos_token_ids() {
        assert_eq!(
            inside[eos as usize],
            f32::NEG_INFINITY,
            "EOS inside an open string"
        );
    }
    // Logits rows beyond the mask (a wider embedding) are forbidden too.
    let wider = vec![0.0f32; compiler.logits_width() + 64];
    let masked = c.mask_logits(&wider).expect("mask");
    assert!(masked[compiler.logits_width()..]
        .iter()
        .all(|x| *x == f32::NEG_INFINITY));

    let record = r#"{"case_type": "complaint", "department": "FEHD", "district": "Sham Shui Po", "facts": ["rubbish piled up for a week", "老鼠走來走去"], "urgent": false}"#;
    let schema = json!({
        "type": "object",
        "properties": {
            "case_type": {"enum": ["enquiry", "complaint", "suggestion", "compliment"]},
            "department": {"enum": ["FEHD", "HD", "TD", "HyD"]},
            "district": {"type": ["string", "null"]},
            "facts": {"type": "array", "items": {"type": "string"}},
            "urgent": {"type": "boolean"}
        },
        "required": ["case_type", "department", "district", "facts", "urgent"],
        "additionalProperties": false
    });
    replay_document(&tok, &compiler, &schema_format(&schema), record);
}

/// Gemma's SentencePiece vocabulary (`▁` spaces, byte-fallback pieces) gives the same text to
/// the grammar as the detokenizer does.
#[test]
fn gemma_sentencepiece_vocabulary_replays_documents() {
    let (tok, compiler, build) = compiler_from_gguf("gemma-3-270m-q4_k_m.gguf");
    eprintln!(
        "gemma: structured compiler for {} logits rows built in {build:?}",
        compiler.logits_width()
    );
    replay_document(
        &tok,
        &compiler,
        &ResponseFormat::JsonObject,
        r#"{"name": "Mary Chan", "city": "香港 Sha Tin", "tags": ["a b", "ü"], "n": 3}"#,
    );
}
