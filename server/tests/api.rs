//! End-to-end tests of the OpenAI API with the real SmolLM2-135M model.

mod common;

use std::sync::OnceLock;

use common::{assert_error, post, post_raw, post_stream, resolved, start, TestServer};
use govlm_inference::config::Source;
use serde_json::{json, Value};

const MODEL: &str = "smollm2";
const CONTEXT: usize = 512;
const BODY_LIMIT: usize = 1024 * 1024;

fn server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        start(
            resolved(
                MODEL,
                "SmolLM2-135M-Instruct.Q4_1.gguf",
                Source::Gguf,
                CONTEXT,
            ),
            BODY_LIMIT,
        )
    })
}

/// Tests comparing greedy outputs run one at a time (no batching with other tests' sequences).
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
        .lock()
        .await
}

fn chat_body(content: &str, extra: Value) -> Value {
    let mut b = json!({"model": MODEL, "messages": [{"role": "user", "content": content}]});
    if let (Some(o), Some(e)) = (b.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    b
}

fn chunks(payloads: &[String]) -> Vec<Value> {
    assert_eq!(
        payloads.last().map(String::as_str),
        Some("[DONE]"),
        "{payloads:?}"
    );
    payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).expect("chunk JSON"))
        .collect()
}

fn stream_text(chunks: &[Value], index: usize) -> String {
    chunks
        .iter()
        .flat_map(|c| c["choices"].as_array().cloned().unwrap_or_default())
        .filter(|ch| ch["index"] == index)
        .filter_map(|ch| ch["delta"]["content"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn models_and_health() {
    let s = server();
    let v: Value = reqwest::get(format!("{}/v1/models", s.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], MODEL);
    assert_eq!(v["data"][0]["object"], "model");
    let r = reqwest::get(format!("{}/v1/models/{MODEL}", s.base))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = reqwest::get(format!("{}/v1/models/nope", s.base))
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert_error(status, &body, 404, Some("model"));
    assert_eq!(body["error"]["code"], "model_not_found");
    // A percent-encoded id that is not UTF-8 still gets OpenAI's error JSON.
    let r = reqwest::get(format!("{}/v1/models/%ff", s.base))
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert_error(status, &body, 404, Some("model"));
    let r = reqwest::get(format!("{}/health", s.base)).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn chat_stream_matches_non_stream_with_usage() {
    let s = server();
    let _g = serial().await;
    let body = chat_body(
        "Write one sentence about the sea.",
        json!({"temperature": 0, "max_tokens": 24}),
    );
    let (status, v) = post(&s.base, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL);
    assert!(v["system_fingerprint"].is_string() && v["created"].is_u64());
    let choice = &v["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    let text = choice["message"]["content"].as_str().unwrap().to_string();
    assert!(!text.is_empty());
    let usage = &v["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );

    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});
    let payloads = post_stream(&s.base, "/v1/chat/completions", &sbody).await;
    let cs = chunks(&payloads);
    assert_eq!(cs[0]["object"], "chat.completion.chunk");
    assert_eq!(cs[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(stream_text(&cs, 0), text);
    for c in &cs[..cs.len() - 1] {
        assert!(c["usage"].is_null() && c.get("usage").is_some(), "{c}");
    }
    let finish = cs.iter().rev().find_map(|c| {
        c["choices"][0]["finish_reason"]
            .as_str()
            .map(str::to_string)
    });
    assert_eq!(finish.as_deref(), choice["finish_reason"].as_str());
    let last = cs.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(&last["usage"], usage);

    // Without include_usage: no usage key at all.
    sbody["stream_options"] = Value::Null;
    let cs = chunks(&post_stream(&s.base, "/v1/chat/completions", &sbody).await);
    assert!(cs.iter().all(|c| c.get("usage").is_none()));
    assert_eq!(stream_text(&cs, 0), text);
}

#[tokio::test]
async fn length_finish_with_exact_usage_and_n2() {
    let s = server();
    let body = chat_body(
        "Count to one hundred.",
        json!({"temperature": 0, "max_tokens": 5, "ignore_eos": true}),
    );
    let (status, v) = post(&s.base, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 5);
    let prompt_tokens = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 5);
    assert_eq!(
        v["usage"]["total_tokens"].as_u64().unwrap(),
        prompt_tokens + 5
    );

    let body = chat_body(
        "Tell me a story.",
        json!({"temperature": 0.9, "seed": 3, "n": 2, "max_tokens": 6, "ignore_eos": true}),
    );
    let (status, v) = post(&s.base, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert_eq!(choices[0]["index"], 0);
    assert_eq!(choices[1]["index"], 1);
    assert_eq!(v["usage"]["completion_tokens"], 12);
    assert_eq!(
        v["usage"]["prompt_tokens"].as_u64().unwrap(),
        prompt_tokens_of(s, "Tell me a story.").await
    );
}

async fn prompt_tokens_of(s: &TestServer, content: &str) -> u64 {
    let (_, v) = post(
        &s.base,
        "/v1/chat/completions",
        &chat_body(content, json!({"max_tokens": 1})),
    )
    .await;
    v["usage"]["prompt_tokens"].as_u64().unwrap()
}

#[tokio::test]
async fn seed_reproducible_at_temperature_1() {
    let s = server();
    let body = chat_body(
        "Name a colour and an animal.",
        json!({"temperature": 1.0, "seed": 1234, "max_tokens": 16}),
    );
    let (_, a) = post(&s.base, "/v1/chat/completions", &body).await;
    let (_, b) = post(&s.base, "/v1/chat/completions", &body).await;
    assert_eq!(
        a["choices"][0]["message"]["content"], b["choices"][0]["message"]["content"],
        "{a} {b}"
    );
}

#[tokio::test]
async fn stop_string_across_tokens() {
    let s = server();
    let _g = serial().await;
    let body = chat_body(
        "Describe the city of Amsterdam in two sentences.",
        json!({"temperature": 0, "max_tokens": 32, "logprobs": true, "top_logprobs": 2}),
    );
    let (status, v) = post(&s.base, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert!(!content.is_empty());
    for t in content {
        assert!(t["logprob"].as_f64().unwrap() <= 0.0);
        assert!(t["bytes"].is_array() && t["top_logprobs"].as_array().unwrap().len() <= 2);
    }
    let toks: Vec<String> = content
        .iter()
        .map(|t| t["token"].as_str().unwrap().to_string())
        .collect();
    // A stop string made of the end of one token and the start of the next (not at the very
    // start of the text), e.g. "nt a" across " vibrant" + " and".
    let mut stop = None;
    for w in toks.windows(2).skip(1) {
        let a_end: Vec<char> = w[0].chars().rev().take(2).collect();
        let b_start: String = w[1].chars().take(2).collect();
        let b_ok = b_start.chars().filter(|c| c.is_alphabetic()).count() >= 1
            && b_start.chars().all(|c| c.is_alphabetic() || c == ' ');
        if a_end.len() == 2 && a_end.iter().all(|c| c.is_alphabetic()) && b_ok {
            let a_end: String = a_end.into_iter().rev().collect();
            stop = Some(format!("{a_end}{b_start}"));
            break;
        }
    }
    let stop = stop.unwrap_or_else(|| panic!("no word spans two tokens in {toks:?}"));
    let cut = text
        .find(&stop)
        .unwrap_or_else(|| panic!("stop {stop:?} not in {text:?}"));
    let expected = &text[..cut];
    assert!(
        !expected.is_empty(),
        "stop {stop:?} at the start of {text:?}"
    );

    let body = chat_body(
        "Describe the city of Amsterdam in two sentences.",
        json!({"temperature": 0, "max_tokens": 32, "stop": [stop]}),
    );
    let (status, v) = post(&s.base, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["choices"][0]["message"]["content"], expected,
        "stop {stop:?}"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let cs = chunks(&post_stream(&s.base, "/v1/chat/completions", &sbody).await);
    assert_eq!(stream_text(&cs, 0), expected, "stop {stop:?}");
    let finish = cs.iter().rev().find_map(|c| {
        c["choices"][0]["finish_reason"]
            .as_str()
            .map(str::to_string)
    });
    assert_eq!(finish.as_deref(), Some("stop"));
}

#[tokio::test]
async fn echo_logprobs_scoring() {
    let s = server();
    let prompt = "The capital of France is Paris";
    let body =
        json!({"model": MODEL, "prompt": prompt, "max_tokens": 0, "echo": true, "logprobs": 1});
    let (status, v) = post(&s.base, "/v1/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(v["object"], "text_completion");
    let c = &v["choices"][0];
    assert_eq!(c["text"], prompt);
    let n = v["usage"]["prompt_tokens"].as_u64().unwrap() as usize;
    assert_eq!(v["usage"]["completion_tokens"], 0);
    let lp = &c["logprobs"];
    let tl = lp["token_logprobs"].as_array().unwrap();
    assert_eq!(tl.len(), n);
    assert_eq!(lp["tokens"].as_array().unwrap().len(), n);
    assert_eq!(lp["top_logprobs"].as_array().unwrap().len(), n);
    assert_eq!(lp["text_offset"].as_array().unwrap().len(), n);
    assert!(tl[0].is_null() && lp["top_logprobs"][0].is_null());
    for x in &tl[1..] {
        let f = x.as_f64().expect("finite logprob");
        assert!(f.is_finite() && f <= 0.0, "{f}");
    }
    for t in &lp["top_logprobs"].as_array().unwrap()[1..] {
        assert_eq!(t.as_object().unwrap().len(), 1, "{t}");
    }
    let ids = s.engine.tokenizer().encode(prompt, true).unwrap();
    assert_eq!(ids.len(), n);

    // Streamed echo gives the same text.
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let cs = chunks(&post_stream(&s.base, "/v1/completions", &sbody).await);
    let text: String = cs
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, prompt);
}

/// `text_offset` indexes the choice text by characters, also across byte-fallback tokens that
/// each hold part of an emoji's or a rare CJK character's bytes; streaming gives the same arrays.
#[tokio::test]
async fn text_offsets_follow_multibyte_characters() {
    let s = server();
    let prompt = "x 🎉 中文 y 🎉🎉 end";
    let body = json!({"model": MODEL, "prompt": prompt, "max_tokens": 6, "echo": true,
                      "logprobs": 0, "temperature": 0});
    let (status, v) = post(&s.base, "/v1/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    let c = &v["choices"][0];
    let text: Vec<char> = c["text"].as_str().unwrap().chars().collect();
    let offsets: Vec<usize> = c["logprobs"]["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap() as usize)
        .collect();
    let tokens: Vec<&str> = c["logprobs"]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(tokens.iter().any(|t| t.contains('\u{FFFD}')), "{tokens:?}");
    for (i, (&off, tok)) in offsets.iter().zip(&tokens).enumerate() {
        assert!(
            i == 0 || off >= offsets[i - 1],
            "offsets go back: {offsets:?}"
        );
        if !tok.contains('\u{FFFD}') && !tok.is_empty() {
            let n = tok.chars().count();
            let at: String = text[off..(off + n).min(text.len())].iter().collect();
            assert_eq!(
                &at, tok,
                "token {i} at offset {off}: {offsets:?} {tokens:?}"
            );
        }
    }
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let cs = chunks(&post_stream(&s.base, "/v1/completions", &sbody).await);
    let streamed: Vec<u64> = cs
        .iter()
        .flat_map(|c| {
            c["choices"][0]["logprobs"]["text_offset"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|o| o.as_u64().unwrap())
        .collect();
    let whole: Vec<u64> = offsets.iter().map(|&o| o as u64).collect();
    assert_eq!(streamed, whole);
}

#[tokio::test]
async fn prompt_forms() {
    let s = server();
    let _g = serial().await;
    let p1 = "Once upon a time";
    let p2 = "The weather today is";
    let body = |prompt: Value| json!({"model": MODEL, "prompt": prompt, "max_tokens": 6, "temperature": 0});
    let (status, single) = post(&s.base, "/v1/completions", &body(json!(p1))).await;
    assert_eq!(status, 200, "{single}");
    let t1 = single["choices"][0]["text"].as_str().unwrap().to_string();

    let (status, list) = post(&s.base, "/v1/completions", &body(json!([p1, p2]))).await;
    assert_eq!(status, 200, "{list}");
    let ch = list["choices"].as_array().unwrap();
    assert_eq!(ch.len(), 2);
    assert_eq!(ch[0]["index"], 0);
    assert_eq!(ch[0]["text"], t1.as_str());
    let t2 = ch[1]["text"].as_str().unwrap().to_string();

    let ids1 = s.engine.tokenizer().encode(p1, true).unwrap();
    let ids2 = s.engine.tokenizer().encode(p2, true).unwrap();
    let (status, toks) = post(&s.base, "/v1/completions", &body(json!(ids1))).await;
    assert_eq!(status, 200, "{toks}");
    assert_eq!(toks["choices"][0]["text"], t1.as_str());
    assert_eq!(
        toks["usage"]["prompt_tokens"].as_u64().unwrap() as usize,
        ids1.len()
    );

    let mut b = body(json!([ids1, ids2]));
    b["n"] = json!(2);
    let (status, lists) = post(&s.base, "/v1/completions", &b).await;
    assert_eq!(status, 200, "{lists}");
    let ch = lists["choices"].as_array().unwrap();
    assert_eq!(ch.len(), 4);
    for (i, c) in ch.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["text"], if i < 2 { t1.as_str() } else { t2.as_str() });
    }
    assert_eq!(
        lists["usage"]["prompt_tokens"].as_u64().unwrap() as usize,
        ids1.len() + ids2.len()
    );
    let ct = lists["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(ct > 0 && ct <= 24, "{ct}");
}

#[tokio::test]
async fn errors_are_openai_shaped() {
    let s = server();
    let chat = "/v1/chat/completions";
    let (st, v) = post_raw(
        &s.base,
        chat,
        b"{\"model\": \"smollm2\", \"messages\": [".to_vec(),
    )
    .await;
    assert_error(st, &v, 400, None);

    let (st, v) = post(&s.base, chat, &json!({"model": MODEL, "messages": []})).await;
    assert_error(st, &v, 400, Some("messages"));

    let (st, v) = post(&s.base, chat, &chat_body("hi", json!({"temperature": -1}))).await;
    assert_error(st, &v, 400, Some("temperature"));

    let (st, v) = post(&s.base, chat, &chat_body("hi", json!({"top_p": 2}))).await;
    assert_error(st, &v, 400, Some("top_p"));

    let (st, v) = post(&s.base, chat, &chat_body("hi", json!({"max_tokens": -5}))).await;
    assert_error(st, &v, 400, Some("max_tokens"));

    let (st, v) = post(
        &s.base,
        chat,
        &json!({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_error(st, &v, 404, Some("model"));
    assert_eq!(v["error"]["code"], "model_not_found");

    let (st, v) = post(
        &s.base,
        chat,
        &json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}, {"role": "wizard", "content": "x"}]}),
    )
    .await;
    assert_error(st, &v, 400, Some("messages[1].role"));

    let (st, v) = post(
        &s.base,
        chat,
        &chat_body("hi", json!({"response_format": {"type": "xml"}})),
    )
    .await;
    assert_error(st, &v, 400, Some("response_format"));

    // Over-long prompt: names the context length and the prompt's token count.
    let long = "hello world ".repeat(400);
    let (st, v) = post(&s.base, chat, &chat_body(&long, json!({"max_tokens": 4}))).await;
    assert_error(st, &v, 400, Some("messages"));
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains(&CONTEXT.to_string()), "{msg}");
    let numbers: Vec<usize> = msg
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(numbers.iter().any(|&n| n > CONTEXT), "{msg}");

    // Prompt fits but prompt + max_tokens does not.
    let (st, v) = post(
        &s.base,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "hello", "max_tokens": CONTEXT}),
    )
    .await;
    assert_error(st, &v, 400, Some("max_tokens"));
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains(&CONTEXT.to_string()), "{msg}");

    let (st, v) = post(
        &s.base,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "x", "suffix": "y"}),
    )
    .await;
    assert_error(st, &v, 400, Some("suffix"));

    let (st, v) = post(
        &s.base,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": [1, 99999999]}),
    )
    .await;
    assert_error(st, &v, 400, Some("prompt[1]"));

    // 413 for an oversized body.
    let big = json!({"model": MODEL, "prompt": "a".repeat(BODY_LIMIT + 10)});
    let (st, v) = post(&s.base, "/v1/completions", &big).await;
    assert_error(st, &v, 413, None);

    // Unknown route.
    let r = reqwest::get(format!("{}/v1/nothing", s.base))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].is_string());

    // And the server still answers.
    let (st, v) = post(&s.base, chat, &chat_body("hi", json!({"max_tokens": 2}))).await;
    assert_eq!(st, 200, "{v}");
}

#[tokio::test]
async fn client_disconnect_mid_stream_frees_the_engine() {
    use futures::StreamExt;
    let s = server();
    let body = chat_body(
        "Write a very long essay about rivers.",
        json!({"temperature": 0, "max_tokens": 400, "ignore_eos": true, "stream": true}),
    );
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut bytes = resp.bytes_stream();
    let mut seen = 0;
    while let Some(chunk) = bytes.next().await {
        seen += chunk.unwrap().len();
        if seen > 600 {
            break;
        }
    }
    drop(bytes);
    // The cancelled sequence must not hold up the next request.
    let started = std::time::Instant::now();
    let (st, v) = post(
        &s.base,
        "/v1/chat/completions",
        &chat_body("hi", json!({"max_tokens": 3})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}

#[tokio::test]
async fn batch_larger_than_the_queue_is_served() {
    // 100 prompts > max_waiting (64): the later sequences wait for room instead of a 429.
    // Own server, so that the flood does not give the other tests 429s.
    let s = start(
        resolved(
            MODEL,
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            Source::Gguf,
            CONTEXT,
        ),
        BODY_LIMIT,
    );
    let prompts: Vec<String> = (0..100).map(|i| format!("Item number {i} is")).collect();
    let (st, v) = post(
        &s.base,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": prompts, "max_tokens": 1, "temperature": 0}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 100);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
    }
}
