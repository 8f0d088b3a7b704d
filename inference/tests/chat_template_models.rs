//! Chat templates shipped with the installed models, rendered with `ChatTemplate`.
//!
//! Expected strings were produced with Python Jinja2 3.1 set up the way HF `transformers`
//! renders chat templates (trim_blocks, lstrip_blocks, loop controls, `tojson` =
//! `json.dumps(ensure_ascii=False)`), so these tests check that our renderer matches HF.

use std::path::PathBuf;

use candle_core::quantized::gguf_file;
use govlm_inference::chat_template::{
    ChatMessage, ChatTemplate, TemplateError, GEMMA_CHAT_TEMPLATE,
};

const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
const SMOL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn model_path(file: &str) -> PathBuf {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models")).join(file);
    assert!(
        path.exists(),
        "model file {} is missing: run `make models` first",
        path.display()
    );
    path
}

/// `tokenizer.chat_template` from a GGUF file's metadata.
fn gguf_chat_template(file: &str) -> String {
    let path = model_path(file);
    let mut f = std::fs::File::open(&path).expect("open model file");
    let content = gguf_file::Content::read(&mut f).expect("read GGUF header");
    content
        .metadata
        .get("tokenizer.chat_template")
        .expect("GGUF has tokenizer.chat_template")
        .to_string()
        .expect("chat template is a string")
        .clone()
}

fn qwen() -> ChatTemplate {
    ChatTemplate::new(
        &gguf_chat_template(QWEN),
        Some("<|endoftext|>"),
        Some("<|im_end|>"),
    )
    .expect("qwen template compiles")
}

fn smol() -> ChatTemplate {
    ChatTemplate::new(
        &gguf_chat_template(SMOL),
        Some("<|im_start|>"),
        Some("<|im_end|>"),
    )
    .expect("smollm template compiles")
}

/// The Gemma 3 template from the reference HF tokenizer_config.json.
fn gemma_reference() -> ChatTemplate {
    let path = model_path("reference/gemma3/tokenizer_config.json");
    let text = std::fs::read_to_string(path).expect("read tokenizer_config.json");
    let config: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let source = config["chat_template"]
        .as_str()
        .expect("chat_template string");
    ChatTemplate::new(source, Some("<bos>"), Some("<end_of_turn>"))
        .expect("gemma template compiles")
}

fn gemma_ours() -> ChatTemplate {
    ChatTemplate::new(GEMMA_CHAT_TEMPLATE, Some("<bos>"), Some("<end_of_turn>"))
        .expect("our gemma template compiles")
}

fn m(role: &str, content: &str) -> ChatMessage {
    ChatMessage::new(role, content)
}

fn sys_user() -> Vec<ChatMessage> {
    vec![
        m("system", "You are a helpful assistant."),
        m("user", "Hello!"),
    ]
}

fn multi_turn() -> Vec<ChatMessage> {
    vec![
        m("system", "Be brief."),
        m("user", "Hi"),
        m("assistant", "Hello! How can I help?"),
        m("user", "Tell me a joke."),
    ]
}

fn no_system() -> Vec<ChatMessage> {
    vec![m("user", "Write hello world in Rust.")]
}

fn no_system_no_prompt() -> Vec<ChatMessage> {
    vec![m("user", "Hi"), m("assistant", "Hello.")]
}

fn chinese() -> Vec<ChatMessage> {
    vec![
        m("system", "你是一个乐于助人的助手。"),
        m("user", "你好，请用中文回答：1+1等于几？"),
    ]
}

/// Keys in sorted order so the expectation holds whether or not serde_json keeps insertion
/// order.
fn weather_tools() -> serde_json::Value {
    serde_json::json!([{
        "function": {
            "description": "Get the user's current weather",
            "name": "get_weather",
            "parameters": {
                "properties": {"city": {"description": "City name, e.g. 北京", "type": "string"}},
                "required": ["city"],
                "type": "object"
            }
        },
        "type": "function"
    }])
}

#[test]
fn qwen_system_and_user() {
    let out = qwen().render(&sys_user(), true, None).expect("renders");
    assert_eq!(
        out,
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn qwen_multi_turn() {
    let out = qwen().render(&multi_turn(), true, None).expect("renders");
    assert_eq!(
        out,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n<|im_start|>user\nTell me a joke.<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn qwen_without_system_injects_default() {
    let out = qwen().render(&no_system(), true, None).expect("renders");
    assert_eq!(
        out,
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\nWrite hello world in Rust.<|im_end|>\n<|im_start|>assistant\n"
    );
    let out = qwen()
        .render(&no_system_no_prompt(), false, None)
        .expect("renders");
    assert_eq!(
        out,
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"
    );
}

#[test]
fn qwen_with_tools() {
    let tools = weather_tools();
    let out = qwen()
        .render(
            &[m("user", "What's the weather in Beijing?")],
            true,
            Some(&tools),
        )
        .expect("renders");
    let want = concat!(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n",
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n",
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n",
        r#"{"function": {"description": "Get the user's current weather", "name": "get_weather", "parameters": {"properties": {"city": {"description": "City name, e.g. 北京", "type": "string"}}, "required": ["city"], "type": "object"}}, "type": "function"}"#,
        "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n",
        r#"{"name": <function-name>, "arguments": <args-json-object>}"#,
        "\n</tool_call><|im_end|>\n<|im_start|>user\nWhat's the weather in Beijing?<|im_end|>\n<|im_start|>assistant\n",
    );
    assert_eq!(out, want);
    // With a system message, its text replaces the default one in the tools preamble.
    let out = qwen()
        .render(
            &[m("system", "Use tools."), m("user", "Weather?")],
            true,
            Some(&tools),
        )
        .expect("renders");
    assert!(
        out.starts_with("<|im_start|>system\nUse tools.\n\n# Tools\n"),
        "{out}"
    );
    assert!(
        out.ends_with("<|im_start|>user\nWeather?<|im_end|>\n<|im_start|>assistant\n"),
        "{out}"
    );
    // An empty tools list counts as no tools.
    let empty = serde_json::json!([]);
    assert_eq!(
        qwen()
            .render(&no_system(), true, Some(&empty))
            .expect("renders"),
        qwen().render(&no_system(), true, None).expect("renders")
    );
}

#[test]
fn qwen_chinese() {
    let out = qwen().render(&chinese(), true, None).expect("renders");
    assert_eq!(
        out,
        "<|im_start|>system\n你是一个乐于助人的助手。<|im_end|>\n<|im_start|>user\n你好，请用中文回答：1+1等于几？<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn smollm_system_and_user() {
    let out = smol().render(&sys_user(), true, None).expect("renders");
    assert_eq!(
        out,
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn smollm_multi_turn() {
    let out = smol().render(&multi_turn(), true, None).expect("renders");
    assert_eq!(
        out,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n<|im_start|>user\nTell me a joke.<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn smollm_without_system_injects_default() {
    let out = smol().render(&no_system(), true, None).expect("renders");
    assert_eq!(
        out,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWrite hello world in Rust.<|im_end|>\n<|im_start|>assistant\n"
    );
    let out = smol()
        .render(&no_system_no_prompt(), false, None)
        .expect("renders");
    assert_eq!(
        out,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"
    );
}

#[test]
fn smollm_ignores_tools() {
    let tools = weather_tools();
    let out = smol()
        .render(
            &[m("user", "What's the weather in Beijing?")],
            true,
            Some(&tools),
        )
        .expect("renders");
    assert_eq!(
        out,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat's the weather in Beijing?<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn smollm_chinese() {
    let out = smol().render(&chinese(), true, None).expect("renders");
    assert_eq!(
        out,
        "<|im_start|>system\n你是一个乐于助人的助手。<|im_end|>\n<|im_start|>user\n你好，请用中文回答：1+1等于几？<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn gemma_reference_template_renders_expected_strings() {
    let reference = gemma_reference();
    let cases: [(Vec<ChatMessage>, bool, &str); 5] = [
        (
            sys_user(),
            true,
            "<bos><start_of_turn>user\nYou are a helpful assistant.\n\nHello!<end_of_turn>\n<start_of_turn>model\n",
        ),
        (
            multi_turn(),
            true,
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello! How can I help?<end_of_turn>\n<start_of_turn>user\nTell me a joke.<end_of_turn>\n<start_of_turn>model\n",
        ),
        (
            no_system(),
            true,
            "<bos><start_of_turn>user\nWrite hello world in Rust.<end_of_turn>\n<start_of_turn>model\n",
        ),
        (
            no_system_no_prompt(),
            false,
            "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n",
        ),
        (
            chinese(),
            true,
            "<bos><start_of_turn>user\n你是一个乐于助人的助手。\n\n你好，请用中文回答：1+1等于几？<end_of_turn>\n<start_of_turn>model\n",
        ),
    ];
    for (messages, agp, want) in cases {
        assert_eq!(
            reference.render(&messages, agp, None).expect("renders"),
            want
        );
        assert_eq!(
            gemma_ours().render(&messages, agp, None).expect("renders"),
            want
        );
    }
}

#[test]
fn gemma_own_template_matches_reference() {
    let reference = gemma_reference();
    let ours = gemma_ours();
    let conversations = vec![
        sys_user(),
        multi_turn(),
        no_system(),
        no_system_no_prompt(),
        chinese(),
        // Surrounding whitespace is trimmed from user/assistant turns, kept in system text.
        vec![
            m("system", " Keep it short. "),
            m("user", "\n  Hi there  \n"),
            m("assistant", " Hey! "),
        ],
        vec![
            m("user", "a"),
            m("assistant", "b"),
            m("user", "c"),
            m("assistant", "d"),
            m("user", "e"),
        ],
        vec![m("user", "Emoji 🎉 and tabs\t?"), m("assistant", "Sure 😀")],
    ];
    for messages in &conversations {
        for agp in [true, false] {
            let want = reference
                .render(messages, agp, None)
                .expect("reference renders");
            let got = ours.render(messages, agp, None).expect("ours renders");
            assert_eq!(
                got, want,
                "messages {messages:?} add_generation_prompt={agp}"
            );
        }
    }
}

#[test]
fn gemma_templates_reject_bad_conversations() {
    // The reference rejects roles out of order; ours rejects roles it does not know.
    let bad_order = vec![m("assistant", "first")];
    match gemma_reference().render(&bad_order, true, None) {
        Err(TemplateError::Render(msg)) => assert!(msg.contains("alternate"), "{msg}"),
        other => panic!("unexpected {other:?}"),
    }
    match gemma_ours().render(&[m("user", "hi"), m("tool", "{}")], true, None) {
        Err(TemplateError::Render(msg)) => assert!(msg.contains("'tool'"), "{msg}"),
        other => panic!("unexpected {other:?}"),
    }
}
