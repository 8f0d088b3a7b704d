//! End-to-end tests of the prompt library over HTTP with the real SmolLM2-135M model:
//! `GET /v1/prompts`, `GET /v1/prompts/{id}`, and the `prompt` object of chat completions
//! (rendering, every drafting/summarising template in each language, 400/404 naming the field).

mod common;

use std::sync::{Arc, OnceLock};

use common::{assert_error, post, resolved};
use govlm_inference::config::Source;
use govlm_inference::engine::EngineHandle;
use govlm_server::prompts::{repo_prompts_dir, PromptLibrary};
use govlm_server::AppState;
use serde_json::{json, Value};

const MODEL: &str = "smollm2";
const CONTEXT: usize = 2048;

/// A server with the repository's prompt library.
fn server() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| {
        let model = resolved(
            MODEL,
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            Source::Gguf,
            CONTEXT,
        );
        let engine = EngineHandle::spawn(&model).expect("model loads");
        let mut state = AppState::new(vec![engine]);
        state.prompts = Arc::new(PromptLibrary::load(&repo_prompts_dir()).expect("prompts load"));
        common::serve(state)
    })
}

async fn get(path: &str) -> (u16, Value) {
    let resp = reqwest::get(format!("{}{path}", server()))
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON body"))
}

#[tokio::test]
async fn list_and_get_prompts() {
    let (st, v) = get("/v1/prompts").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "list");
    let data = v["data"].as_array().unwrap();
    let ids: Vec<&str> = data.iter().filter_map(|p| p["id"].as_str()).collect();
    for id in [
        "bilingual_summary",
        "hotline_case_record",
        "internal_memo",
        "key_points",
        "legco_reply",
        "press_release",
        "reply_letter",
        "short_summary",
    ] {
        assert!(ids.contains(&id), "{id} not in {ids:?}");
    }
    let hotline = data
        .iter()
        .find(|p| p["id"] == "hotline_case_record")
        .unwrap();
    assert_eq!(hotline["output"], "json_schema");
    assert_eq!(hotline["versions"], json!(["1"]));

    let (st, v) = get("/v1/prompts/legco_reply").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["version"], "1");
    assert_eq!(v["languages"], json!(["en", "zh-Hant"]));
    let vars = v["variables"].as_array().unwrap();
    let parts = vars.iter().find(|x| x["name"] == "question_parts").unwrap();
    assert_eq!(parts["type"], "list");
    assert_eq!(parts["items"], "string");
    assert_eq!(parts["required"], true);
    assert!(v["template"].as_str().unwrap().contains("主席："));
    assert!(v["response_format"].is_null());

    let (st, v) = get("/v1/prompts/hotline_case_record?version=1").await;
    assert_eq!(st, 200, "{v}");
    let schema = &v["response_format"]["json_schema"]["schema"];
    assert_eq!(
        schema["properties"]["urgency"]["enum"],
        json!(["low", "normal", "high"])
    );
    assert_eq!(v["output_script"], "zh-Hant-HK");

    let (st, v) = get("/v1/prompts/nope").await;
    assert_error(st, &v, 404, Some("id"));
    let (st, v) = get("/v1/prompts/legco_reply?version=7").await;
    assert_error(st, &v, 404, Some("version"));
}

fn chat(prompt: Value, extra: Value) -> Value {
    let mut b = json!({"model": MODEL, "prompt": prompt, "max_tokens": 8, "temperature": 0});
    if let (Some(o), Some(e)) = (b.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    b
}

#[tokio::test]
async fn prompt_object_renders_server_side() {
    let base = server();
    // Without `messages`: the template supplies them.
    let (st, v) = post(
        base,
        "/v1/chat/completions",
        &chat(
            json!({"id": "short_summary", "variables": {"document": "The Government opened a new library in Sha Tin today.", "language": "en"}}),
            json!({}),
        ),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    // The rendered system prompt alone is over 60 tokens.
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 60, "{v}");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 8);

    // Same prompt with a further user turn: more prompt tokens.
    let (st2, v2) = post(
        base,
        "/v1/chat/completions",
        &chat(
            json!({"id": "short_summary", "variables": {"document": "The Government opened a new library in Sha Tin today.", "language": "en"}}),
            json!({"messages": [{"role": "user", "content": "Keep it very short."}]}),
        ),
    )
    .await;
    assert_eq!(st2, 200, "{v2}");
    assert!(v2["usage"]["prompt_tokens"].as_u64() > v["usage"]["prompt_tokens"].as_u64());
}

#[tokio::test]
async fn each_drafting_and_summarising_template_runs_in_each_language() {
    let base = server();
    let doc = "政府今日宣布在沙田開設新圖書館。The Government opened a new library in Sha Tin.";
    let cases = [
        (
            "reply_letter",
            json!({"department": "Leisure and Cultural Services Department", "recipient_name": "Mr Chan",
            "subject": "Library opening hours", "points": ["The library opens at 10 am daily."], "letter_date": "2025-03-27"}),
        ),
        (
            "press_release",
            json!({"department": "Leisure and Cultural Services Department", "headline": "New library in Sha Tin",
            "facts": ["The library opens on 1 April."], "release_date": "2025-03-27"}),
        ),
        (
            "legco_reply",
            json!({"member": "the Hon Chan Tai-man", "topic": "Libraries", "question_parts": ["when it opens"],
            "answers": ["It opens on 1 April."], "official": "Secretary for Culture, Sports and Tourism", "reply_date": "2025-03-27"}),
        ),
        (
            "internal_memo",
            json!({"sender": "Chief Librarian", "addressee": "All branch librarians", "subject": "Opening",
            "points": ["The new library opens on 1 April."], "memo_date": "2025-03-27"}),
        ),
        ("short_summary", json!({"document": doc})),
        ("key_points", json!({"document": doc, "max_points": 2})),
    ];
    let mut bodies = Vec::new();
    for (id, vars) in &cases {
        for lang in ["en", "zh-Hant"] {
            let mut v = vars.clone();
            v["language"] = json!(lang);
            bodies.push((
                format!("{id}/{lang}"),
                chat(json!({"id": id, "variables": v}), json!({"max_tokens": 4})),
            ));
        }
    }
    bodies.push((
        "bilingual_summary".into(),
        chat(
            json!({"id": "bilingual_summary", "variables": {"document": doc}}),
            json!({"max_tokens": 4}),
        ),
    ));
    let results = futures::future::join_all(bodies.iter().map(|(name, b)| async move {
        (name.clone(), post(base, "/v1/chat/completions", b).await)
    }))
    .await;
    for (name, (st, v)) in results {
        assert_eq!(st, 200, "{name}: {v}");
        assert!(
            v["usage"]["prompt_tokens"].as_u64().unwrap() > 60,
            "{name}: {v}"
        );
        assert!(
            v["choices"][0]["message"]["content"].is_string(),
            "{name}: {v}"
        );
    }
}

#[tokio::test]
async fn bad_prompt_objects_name_the_field() {
    let base = server();
    let url = "/v1/chat/completions";
    let case = |p: Value| chat(p, json!({}));
    let (st, v) = post(
        base,
        url,
        &case(json!({"id": "hotline_case_record", "variables": {}})),
    )
    .await;
    assert_error(st, &v, 400, Some("prompt.variables.transcript"));
    let (st, v) = post(
        base,
        url,
        &case(json!({"id": "hotline_case_record", "variables": {"transcript": 42}})),
    )
    .await;
    assert_error(st, &v, 400, Some("prompt.variables.transcript"));
    // Required variables may not be blank.
    let (st, v) = post(
        base,
        url,
        &case(json!({"id": "hotline_case_record", "variables": {"transcript": "  "}})),
    )
    .await;
    assert_error(st, &v, 400, Some("prompt.variables.transcript"));
    let (st, v) = post(
        base,
        url,
        &case(json!({"id": "legco_reply", "variables": {"member": "m", "topic": "t", "question_parts": [],
            "answers": ["b"], "official": "o"}})),
    )
    .await;
    assert_error(st, &v, 400, Some("prompt.variables.question_parts"));
    let (st, v) = post(
        base,
        url,
        &case(json!({"id": "hotline_case_record", "variables": {"transcript": "x", "caller_name": "y"}})),
    )
    .await;
    assert_error(st, &v, 400, Some("prompt.variables.caller_name"));
    let (st, v) = post(
        base,
        url,
        &case(json!({"id": "legco_reply", "variables": {"member": "m", "topic": "t", "question_parts": ["a", 2],
            "answers": ["b"], "official": "o"}})),
    )
    .await;
    assert_error(st, &v, 400, Some("prompt.variables.question_parts[1]"));
    let (st, v) = post(
        base,
        url,
        &case(json!({"id": "key_points", "variables": {"document": "x", "language": "fr"}})),
    )
    .await;
    assert_error(st, &v, 400, Some("prompt.variables.language"));
    let (st, v) = post(base, url, &case(json!({"id": "no_such_prompt"}))).await;
    assert_error(st, &v, 404, Some("prompt.id"));
    assert_eq!(v["error"]["code"], "prompt_not_found");
    let (st, v) = post(
        base,
        url,
        &case(json!({"id": "key_points", "version": "3", "variables": {"document": "x"}})),
    )
    .await;
    assert_error(st, &v, 404, Some("prompt.version"));
    let (st, v) = post(base, url, &case(json!("key_points"))).await;
    assert_error(st, &v, 400, Some("prompt"));
}

/// `chinese_script: "hk"` gives the same text streamed and not, and that text is the `s2hk`
/// conversion of what the same request returns without the option.
#[tokio::test]
async fn chinese_script_converts_streamed_and_whole_text_alike() {
    let base = server();
    let body = |extra: Value| {
        let mut b = json!({
            "model": MODEL, "max_tokens": 24, "temperature": 0,
            "messages": [{"role": "user", "content": "请用简体中文介绍香港的经济和历史。"}]
        });
        if let (Some(o), Some(e)) = (b.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                o.insert(k.clone(), v.clone());
            }
        }
        b
    };
    let (st, plain) = post(base, "/v1/chat/completions", &body(json!({}))).await;
    assert_eq!(st, 200, "{plain}");
    let (st, hk) = post(
        base,
        "/v1/chat/completions",
        &body(json!({"chinese_script": "hk"})),
    )
    .await;
    assert_eq!(st, 200, "{hk}");
    let plain = plain["choices"][0]["message"]["content"].as_str().unwrap();
    let hk = hk["choices"][0]["message"]["content"].as_str().unwrap();
    let conv = govlm_inference::script::ScriptConverter::s2hk().unwrap();
    assert_eq!(hk, conv.convert(plain));
    assert_ne!(hk, plain, "the model answers in Simplified characters here");

    let events = common::post_stream(
        base,
        "/v1/chat/completions",
        &body(json!({"chinese_script": "hk", "stream": true})),
    )
    .await;
    let mut streamed = String::new();
    for e in events.iter().filter(|e| e.as_str() != "[DONE]") {
        let v: Value = serde_json::from_str(e).expect("chunk JSON");
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            assert!(!t.contains('\u{FFFD}'), "{t:?}");
            streamed.push_str(t);
        }
    }
    assert_eq!(streamed, hk);

    // The same option on /v1/completions converts the generated text (not the echoed prompt).
    let completion = |extra: Value| {
        let mut b = json!({"model": MODEL, "prompt": "香港的经济发展和历史：", "max_tokens": 16,
                           "temperature": 0, "echo": true});
        if let (Some(o), Some(e)) = (b.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                o.insert(k.clone(), v.clone());
            }
        }
        b
    };
    let (st, plain) = post(base, "/v1/completions", &completion(json!({}))).await;
    assert_eq!(st, 200, "{plain}");
    let (st, hk) = post(
        base,
        "/v1/completions",
        &completion(json!({"chinese_script": "hk"})),
    )
    .await;
    assert_eq!(st, 200, "{hk}");
    let prompt = "香港的经济发展和历史：";
    let plain = plain["choices"][0]["text"].as_str().unwrap();
    let hk = hk["choices"][0]["text"].as_str().unwrap();
    assert!(hk.starts_with(prompt), "{hk:?}");
    assert_eq!(&hk[prompt.len()..], conv.convert(&plain[prompt.len()..]));
}
