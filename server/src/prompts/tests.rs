use super::*;
use crate::json::FromBody;
use serde_json::json;

fn lib() -> PromptLibrary {
    PromptLibrary::load(&repo_prompts_dir()).expect("the repository's prompts load")
}

fn render(lib: &PromptLibrary, id: &str, vars: Value) -> RenderedPrompt {
    let t = lib.get(id, None, "prompt").unwrap();
    lib.render(t, vars.as_object(), "prompt.variables")
        .unwrap_or_else(|e| panic!("{id}: {e:?}"))
}

#[test]
fn repository_templates_load() {
    let l = lib();
    let ids: Vec<&str> = l.ids().collect();
    for id in [
        "reply_letter",
        "press_release",
        "legco_reply",
        "internal_memo",
        "short_summary",
        "key_points",
        "bilingual_summary",
        "hotline_case_record",
    ] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    let hotline = l.get("hotline_case_record", None, "prompt").unwrap();
    let (name, schema) = hotline.schema.as_ref().unwrap();
    assert_eq!(name, "hotline_case_record");
    let props = schema["properties"].as_object().unwrap();
    for f in [
        "summary_en",
        "summary_zh_hant",
        "case_type",
        "department",
        "district",
        "location",
        "time_mentioned",
        "urgency",
        "key_facts",
        "follow_up_requested",
    ] {
        assert!(props.contains_key(f), "{f}");
    }
    let districts = schema["properties"]["district"]["enum"].as_array().unwrap();
    assert_eq!(districts.len(), 19, "18 districts and null");
    assert!(districts.contains(&Value::Null));
    let depts = schema["properties"]["department"]["enum"]
        .as_array()
        .unwrap();
    assert_eq!(depts.len(), 16);
}

#[test]
fn legco_reply_conventions_in_both_languages() {
    let l = lib();
    let vars = |lang: &str| {
        json!({
            "language": lang, "member": "the Hon Chan Tai-man", "topic": "Smart government",
            "question_parts": ["how many services are online", "what the timetable is"],
            "answers": ["All 1 100 licence services are online.", "The target is end-2025."],
            "official": "Secretary for Innovation, Technology and Industry",
            "reply_date": "2025-03-27"
        })
    };
    let zh = render(&l, "legco_reply", vars("zh-Hant"));
    let sys = zh.system.unwrap();
    assert!(sys.contains("「主席：」"), "{sys}");
    assert!(
        zh.user.contains("（一）how many") && zh.user.contains("（二）what"),
        "{}",
        zh.user
    );
    assert!(zh.user.contains("二○二五年三月二十七日"), "{}", zh.user);
    assert!(zh.user.contains("（一）至（二）"), "{}", zh.user);
    let en = render(&l, "legco_reply", vars("en"));
    assert!(en.system.unwrap().contains("\"President,\""));
    assert!(
        en.user.contains("(a) how many") && en.user.contains("(b) what"),
        "{}",
        en.user
    );
    assert!(en.user.contains("27 March 2025"), "{}", en.user);
    assert!(en.user.contains("parts (a) to (b)"), "{}", en.user);
    assert!(!en.user.contains("\n\n\n"), "{}", en.user);
}

#[test]
fn every_drafting_and_summarising_template_renders_in_each_language() {
    let l = lib();
    let doc = "政府成立數字政策辦公室。The office leads digital government.";
    let cases = [
        (
            "reply_letter",
            json!({"department": "FEHD", "recipient_name": "Mr Chan", "subject": "Refuse at Pei Ho Street",
            "points": ["The refuse was cleared."], "letter_date": "2025-03-27", "their_letter_date": "2025-03-01"}),
        ),
        (
            "press_release",
            json!({"department": "Digital Policy Office", "headline": "New app", "facts": ["Launched today."],
            "quotes": ["Professor Sun: We are glad."], "release_date": "2025-03-27"}),
        ),
        (
            "internal_memo",
            json!({"sender": "CEO(A)", "addressee": "All staff", "subject": "Fire drill",
            "points": ["Drill on Friday."], "memo_date": "2025-03-27"}),
        ),
        ("short_summary", json!({"document": doc})),
        ("key_points", json!({"document": doc, "max_points": 3})),
    ];
    for (id, vars) in cases {
        for lang in ["en", "zh-Hant"] {
            let mut v = vars.clone();
            v["language"] = json!(lang);
            let r = render(&l, id, v);
            assert!(
                r.system.as_deref().is_some_and(|s| !s.is_empty()),
                "{id}/{lang}"
            );
            assert!(!r.user.is_empty(), "{id}/{lang}");
            let date_ok = if lang == "en" {
                !r.user.contains("2025-") && !r.user.contains("二○")
            } else {
                !r.user.contains("2025-") && !r.user.contains("March")
            };
            assert!(date_ok, "{id}/{lang}: {}", r.user);
        }
    }
    let b = render(&l, "bilingual_summary", json!({"document": doc}));
    assert!(b.system.unwrap().contains("中文："));
    assert!(b.user.contains(doc));
    let r = render(
        &l,
        "reply_letter",
        json!({"language": "zh-Hant", "department": "食物環境衞生署",
        "recipient_name": "陳先生", "subject": "垃圾", "points": ["已清理。"], "letter_date": "2025-03-27",
        "their_letter_date": "2025-03-01"}),
    );
    assert!(r.user.contains("二○二五年三月一日來信收悉"), "{}", r.user);
}

fn chat(v: Value) -> ChatCompletionRequest {
    ChatCompletionRequest::from_body(&v).unwrap()
}

fn expand_err(l: &PromptLibrary, v: Value) -> ApiError {
    let mut r = chat(v);
    expand_chat_request(l, &mut r).unwrap_err()
}

#[test]
fn expand_fills_messages_defaults_and_schema() {
    let l = lib();
    let mut r = chat(json!({
        "prompt": {"id": "hotline_case_record", "variables": {"transcript": "Caller: 喂 有老鼠"}},
        "messages": [{"role": "user", "content": "extra turn"}],
        "top_p": 0.5
    }));
    expand_chat_request(&l, &mut r).unwrap();
    assert!(r.prompt.is_none());
    assert_eq!(r.messages.len(), 3);
    assert_eq!(r.messages[0].role, "system");
    assert_eq!(r.messages[1].role, "user");
    assert!(r.messages[1]
        .content
        .as_ref()
        .and_then(Value::as_str)
        .unwrap()
        .contains("有老鼠"));
    assert_eq!(r.messages[2].role, "user");
    assert_eq!(r.sampling.temperature, Some(0.0));
    assert_eq!(r.sampling.top_p, Some(0.5), "the request's value wins");
    assert_eq!(r.max_tokens, Some(1100));
    assert_eq!(r.response_format.as_ref().unwrap()["type"], "json_schema");
    assert_eq!(
        r.response_format.as_ref().unwrap()["json_schema"]["name"],
        "hotline_case_record"
    );
    assert_eq!(r.chinese_script.as_deref(), Some("zh-Hant-HK"));
    // A second call is a no-op.
    expand_chat_request(&l, &mut r).unwrap();
    assert_eq!(r.messages.len(), 3);

    // The request's own response_format, max tokens and script win.
    let mut r = chat(json!({
        "prompt": {"id": "hotline_case_record", "version": "1", "variables": {"transcript": "x"}},
        "response_format": {"type": "json_object"}, "max_completion_tokens": 7, "chinese_script": "hk"
    }));
    expand_chat_request(&l, &mut r).unwrap();
    assert_eq!(r.response_format.unwrap()["type"], "json_object");
    assert_eq!(r.max_tokens, None);
    assert_eq!(r.chinese_script.as_deref(), Some("hk"));

    // No prompt: untouched.
    let mut r = chat(json!({"messages": [{"role": "user", "content": "hi"}]}));
    expand_chat_request(&l, &mut r).unwrap();
    assert_eq!(r.messages.len(), 1);
    assert!(r.response_format.is_none());
}

#[test]
fn expand_errors_name_the_variable() {
    let l = lib();
    let p = |v: Value| expand_err(&l, json!({ "prompt": v }));
    let e = p(json!({"id": "hotline_case_record", "variables": {}}));
    assert_eq!(e.status.as_u16(), 400);
    assert_eq!(e.param.as_deref(), Some("prompt.variables.transcript"));
    assert!(e.message.contains("Missing"), "{}", e.message);
    let e = p(json!({"id": "hotline_case_record", "variables": {"transcript": 5}}));
    assert_eq!(e.param.as_deref(), Some("prompt.variables.transcript"));
    assert!(e.message.contains("string"), "{}", e.message);
    let e =
        p(json!({"id": "hotline_case_record", "variables": {"transcript": "x", "caller": "y"}}));
    assert_eq!(e.param.as_deref(), Some("prompt.variables.caller"));
    let e = p(
        json!({"id": "hotline_case_record", "variables": {"transcript": "x", "call_date": "yesterday"}}),
    );
    assert_eq!(e.param.as_deref(), Some("prompt.variables.call_date"));
    let e = p(json!({"id": "key_points", "variables": {"document": "x", "max_points": 0}}));
    assert_eq!(e.param.as_deref(), Some("prompt.variables.max_points"));
    let e = p(json!({"id": "key_points", "variables": {"document": "x", "language": "fr"}}));
    assert_eq!(e.param.as_deref(), Some("prompt.variables.language"));
    let e = p(
        json!({"id": "internal_memo", "variables": {"sender": "a", "addressee": "b", "subject": "c", "points": ["ok", 3]}}),
    );
    assert_eq!(e.param.as_deref(), Some("prompt.variables.points[1]"));
    let e = p(json!({"id": "nope"}));
    assert_eq!(e.status.as_u16(), 404);
    assert_eq!(e.param.as_deref(), Some("prompt.id"));
    assert_eq!(e.code, Some("prompt_not_found"));
    let e = p(json!({"id": "key_points", "version": "9", "variables": {"document": "x"}}));
    assert_eq!(e.status.as_u16(), 404);
    assert_eq!(e.param.as_deref(), Some("prompt.version"));
    assert_eq!(p(json!("key_points")).param.as_deref(), Some("prompt"));
    assert_eq!(
        p(json!({"variables": {}})).param.as_deref(),
        Some("prompt.id")
    );
    assert_eq!(
        p(json!({"id": "key_points", "vars": {}})).param.as_deref(),
        Some("prompt.vars")
    );
    assert_eq!(
        p(json!({"id": "key_points", "variables": []}))
            .param
            .as_deref(),
        Some("prompt.variables")
    );
    let e = chinese_script(Some("tw")).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("chinese_script"));
    assert_eq!(
        chinese_script(Some("hk")).unwrap(),
        Some(ChineseScript::HongKong)
    );
}

/// A temporary prompts directory with the given files; removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(files: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "govlm-prompts-test-{}",
            uuid::Uuid::new_v4().simple()
        ));
        for (name, text) in files {
            let p = dir.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const GOOD_TOML: &str = r#"
id = "t"
version = "1"
description = "d"
category = "other"
languages = ["en"]
[[variables]]
name = "x"
type = "string"
description = "x"
"#;

fn load_error(files: &[(&str, &str)]) -> String {
    let d = TempDir::new(files);
    PromptLibrary::load(&d.0).unwrap_err().to_string()
}

#[test]
fn bad_templates_are_load_errors_naming_the_file() {
    let d = TempDir::new(&[
        ("a/t.toml", GOOD_TOML),
        ("a/t.jinja", "{% block user %}{{ x }}{% endblock %}"),
    ]);
    let l = PromptLibrary::load(&d.0).unwrap();
    assert_eq!(l.len(), 1);
    let e = load_error(&[
        ("t.toml", GOOD_TOML),
        ("t.jinja", "{% block user %}{{ x }{% endblock %}"),
    ]);
    assert!(e.contains("t.jinja") && e.contains("syntax"), "{e}");
    let e = load_error(&[
        ("t.toml", GOOD_TOML),
        ("t.jinja", "{% block user %}{{ y }}{% endblock %}"),
    ]);
    assert!(
        e.contains("t.jinja") && e.contains("undeclared") && e.contains("\"y\""),
        "{e}"
    );
    let e = load_error(&[
        ("t.toml", GOOD_TOML),
        ("t.jinja", "{% block system %}{{ x }}{% endblock %}"),
    ]);
    assert!(e.contains("block user"), "{e}");
    let e = load_error(&[("t.toml", "id = \"t\"\n"), ("t.jinja", "")]);
    assert!(e.contains("t.toml") && e.contains("missing field"), "{e}");
    let e = load_error(&[
        (
            "t.toml",
            &GOOD_TOML.replace("\"string\"", "\"integer\"\ndefault = \"x\""),
        ),
        ("t.jinja", "{% block user %}{{ x }}{% endblock %}"),
    ]);
    assert!(e.contains("t.toml") && e.contains("default"), "{e}");
    let e = load_error(&[
        (
            "t.toml",
            &format!("{GOOD_TOML}\n[sampling]\ntemperature = 5\n"),
        ),
        ("t.jinja", "{% block user %}{{ x }}{% endblock %}"),
    ]);
    assert!(e.contains("temperature"), "{e}");
    let e = load_error(&[
        ("t.toml", GOOD_TOML),
        ("t.jinja", "{% block user %}{{ x }}{% endblock %}"),
        ("orphan.jinja", ""),
    ]);
    assert!(e.contains("orphan.jinja"), "{e}");
    let e = load_error(&[
        ("t.toml", GOOD_TOML),
        ("t.jinja", "{% block user %}{{ x }}{% endblock %}"),
        ("u.toml", GOOD_TOML),
        ("u.jinja", "{% block user %}{{ x }}{% endblock %}"),
    ]);
    assert!(e.contains("also defined"), "{e}");
    let e = load_error(&[
        (
            "t.toml",
            &format!("{GOOD_TOML}\n[response_format]\nname = \"r\"\nschema = \"s.json\"\n"),
        ),
        ("t.jinja", "{% block user %}{{ x }}{% endblock %}"),
        ("s.json", "{\"type\": \"array\"}"),
    ]);
    assert!(e.contains("s.json") && e.contains("object"), "{e}");
    // A render-time failure found by the test render (bad date filter input).
    let e = load_error(&[
        ("t.toml", GOOD_TOML),
        ("t.jinja", "{% block user %}{{ x | zh_date }}{% endblock %}"),
    ]);
    assert!(e.contains("test render") && e.contains("YYYY-MM-DD"), "{e}");
}

#[test]
fn versions_pick_the_highest_by_number() {
    let d = TempDir::new(&[
        (
            "t2.toml",
            &GOOD_TOML.replace("version = \"1\"", "version = \"2\""),
        ),
        ("t2.jinja", "{% block user %}two {{ x }}{% endblock %}"),
        (
            "t10.toml",
            &GOOD_TOML.replace("version = \"1\"", "version = \"10\""),
        ),
        ("t10.jinja", "{% block user %}ten {{ x }}{% endblock %}"),
    ]);
    let l = PromptLibrary::load(&d.0).unwrap();
    assert_eq!(l.get("t", None, "").unwrap().version, "10");
    let t2 = l.get("t", Some("2"), "").unwrap();
    let r = l
        .render(t2, json!({"x": "a"}).as_object(), "variables")
        .unwrap();
    assert_eq!(r.user, "two a");
    assert_eq!(r.system, None);
    assert_eq!(l.summary("t").unwrap()["versions"], json!(["2", "10"]));
}
