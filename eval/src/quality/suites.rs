//! The four task kinds: each runs its items against the server and computes its metrics.

use serde_json::{json, Map, Value};

use super::bpc;
use super::client::{Client, ClientError};
use super::drafting;
use super::facts;
use super::pii::PiiDetector;
use super::report::{Metric, TaskResult};
use super::script::{punctuation, PunctCounts, ScriptClassifier, ScriptCounts};
use super::task::{read_jsonl, read_lines, str_field, BpcSpec, Task, TaskError};
use super::text::{render, rouge_l, tokens};

/// What every suite needs.
#[derive(Debug)]
pub struct Ctx {
    pub client: Client,
    pub scripts: ScriptClassifier,
    pub pii: PiiDetector,
    /// Items per task (None: all).
    pub limit: Option<usize>,
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn rate(num: usize, den: usize) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

fn result(
    task: &Task,
    n_items: usize,
    metrics: Vec<Metric>,
    notes: Vec<String>,
    items: Vec<Value>,
) -> TaskResult {
    TaskResult {
        id: task.file.id.clone(),
        kind: serde_json::to_value(task.file.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        description: task.file.description.clone(),
        data: task.data_path.display().to_string(),
        n_items,
        metrics,
        notes,
        items,
    }
}

fn generation_body(task: &Task) -> Value {
    let g = &task.file.generation;
    let mut b = json!({"max_tokens": g.max_tokens, "temperature": g.temperature});
    if let Some(seed) = g.seed {
        b["seed"] = json!(seed);
    }
    b
}

/// Chat messages of an item: its own `messages` array if it has one, else the task's system
/// prompt and its user template filled from the item's fields.
fn messages(task: &Task, item: &Map<String, Value>) -> Value {
    if let Some(m) = item.get("messages").filter(|m| m.is_array()) {
        return m.clone();
    }
    let mut msgs = Vec::new();
    if let Some(sys) = &task.file.system_prompt {
        msgs.push(json!({"role": "system", "content": render(sys, item)}));
    }
    let user = task
        .file
        .user_template
        .as_deref()
        .map(|t| render(t, item))
        .unwrap_or_else(|| str_field(item, "prompt").to_string());
    msgs.push(json!({"role": "user", "content": user}));
    Value::Array(msgs)
}

fn progress(task: &Task, i: usize, n: usize, what: &str) {
    eprintln!("[{}] {}/{} {}", task.file.id, i + 1, n, what);
}

/// Parses model output as JSON leniently: the whole text, else inside a ``` fence, else from the
/// first `{` to the last `}`.
pub fn lenient_json(text: &str) -> Option<Value> {
    let t = text.trim();
    if let Ok(v) = serde_json::from_str::<Value>(t) {
        return Some(v);
    }
    if let Some(start) = t.find("```") {
        let rest = &t[start + 3..];
        let rest = rest.strip_prefix("json").unwrap_or(rest);
        if let Some(end) = rest.find("```") {
            if let Ok(v) = serde_json::from_str::<Value>(rest[..end].trim()) {
                return Some(v);
            }
        }
    }
    let (a, b) = (t.find('{')?, t.rfind('}')?);
    (a < b)
        .then(|| serde_json::from_str::<Value>(&t[a..=b]).ok())
        .flatten()
}

fn norm_label(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() && s.trim().to_lowercase() != "null" => Some(
            s.trim()
                .to_lowercase()
                .replace('&', "and")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        ),
        _ => None,
    }
}

/// Hotline extraction.
pub async fn hotline(ctx: &Ctx, task: &Task) -> Result<TaskResult, TaskError> {
    let Some(spec) = &task.file.hotline else {
        return Err(TaskError::Invalid {
            id: task.file.id.clone(),
            message: "no [hotline]".into(),
        });
    };
    let schema_path = task.resolve(&spec.schema);
    let schema_text = std::fs::read_to_string(&schema_path).map_err(|source| TaskError::Io {
        path: schema_path.clone(),
        source,
    })?;
    let schema: Value = serde_json::from_str(&schema_text).map_err(|e| TaskError::Invalid {
        id: task.file.id.clone(),
        message: format!("schema: {e}"),
    })?;
    let validator = jsonschema::validator_for(&schema).map_err(|e| TaskError::Invalid {
        id: task.file.id.clone(),
        message: format!("schema: {e}"),
    })?;
    let rows = read_jsonl(&task.data_path, ctx.limit)?;
    let mut extra = generation_body(task);
    if spec.response_format {
        extra["response_format"] = json!({
            "type": "json_schema",
            "json_schema": {"name": "hotline_case_record", "strict": true, "schema": schema},
        });
    }
    let fields = ["case_type", "department", "district", "urgency"];
    let (mut n_valid, mut n_parsed_strict, mut n_parsed, mut n_err, mut n_len) = (0, 0, 0, 0, 0);
    let mut correct = [0usize; 4];
    let (mut recalled, mut facts_total, mut coverages) = (0usize, 0usize, Vec::new());
    let (mut leaked_items, mut leak_checked) = (0usize, 0usize);
    let mut script = ScriptCounts::default();
    let mut latencies = Vec::new();
    let mut items = Vec::new();
    let mut rf_rejected: Option<String> = None;
    for (i, row) in rows.iter().enumerate() {
        let id = str_field(row, "id").to_string();
        progress(task, i, rows.len(), &id);
        let gold = row.get("gold").cloned().unwrap_or(Value::Null);
        let mut item = json!({"id": id});
        let msgs = messages(task, row);
        let mut res = ctx.client.chat(&msgs, &extra).await;
        if let Err(ClientError::Status {
            status: 400,
            message,
        }) = &res
        {
            if extra.get("response_format").is_some() && message.contains("response_format") {
                // The server cannot constrain output to the schema: ask without it (the prompt
                // still asks for the JSON object) and say so in the report.
                rf_rejected = Some(message.clone());
                if let Some(o) = extra.as_object_mut() {
                    o.remove("response_format");
                }
                res = ctx.client.chat(&msgs, &extra).await;
            }
        }
        let out = match res {
            Ok(o) => o,
            Err(e) => {
                n_err += 1;
                item["error"] = json!(e.to_string());
                items.push(item);
                continue;
            }
        };
        latencies.push(out.latency_s);
        if out.finish_reason.as_deref() == Some("length") {
            n_len += 1;
        }
        item["finish_reason"] = json!(out.finish_reason);
        item["completion_tokens"] = json!(out.completion_tokens);
        item["latency_s"] = json!(out.latency_s);
        let strict = serde_json::from_str::<Value>(out.content.trim()).ok();
        let valid = strict.as_ref().is_some_and(|v| validator.is_valid(v));
        n_parsed_strict += usize::from(strict.is_some());
        n_valid += usize::from(valid);
        item["json_parses"] = json!(strict.is_some());
        item["schema_valid"] = json!(valid);
        if let Some(v) = &strict {
            let errs: Vec<String> = validator
                .iter_errors(v)
                .take(5)
                .map(|e| e.to_string())
                .collect();
            if !errs.is_empty() {
                item["schema_errors"] = json!(errs);
            }
        }
        let parsed = strict.or_else(|| lenient_json(&out.content));
        item["output"] = json!(out.content);
        let Some(rec) = parsed.filter(Value::is_object) else {
            items.push(item);
            continue;
        };
        n_parsed += 1;
        let mut field_ok = Map::new();
        for (k, f) in fields.iter().enumerate() {
            let ok = norm_label(&rec[*f]) == norm_label(&gold[*f]);
            correct[k] += usize::from(ok);
            field_ok.insert((*f).to_string(), json!(ok));
        }
        item["correct"] = Value::Object(field_ok);
        let s_en = rec["summary_en"].as_str().unwrap_or("");
        let s_zh = rec["summary_zh_hant"].as_str().unwrap_or("");
        let gold_facts: Vec<String> = gold["key_facts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let fs = facts::score(&gold_facts, &[s_en, s_zh], spec.fact_threshold);
        recalled += fs.recalled;
        facts_total += fs.total;
        if fs.total > 0 {
            coverages.push(fs.mean_coverage);
        }
        item["key_facts"] = json!(fs);
        let gold_pii: Vec<String> = gold["pii"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let values = ctx.pii.extract(str_field(row, "transcript"), &gold_pii);
        let leaks = ctx.pii.leaks(&format!("{s_en}\n{s_zh}"), &values);
        leak_checked += 1;
        leaked_items += usize::from(!leaks.is_empty());
        item["pii_leaks"] = json!(leaks);
        script.add(ctx.scripts.count(s_zh));
        items.push(item);
    }
    let n = rows.len();
    let metrics = vec![
        Metric::new("schema_valid_rate", rate(n_valid, n), Some(true), "rate"),
        Metric::new(
            "json_parse_rate",
            rate(n_parsed_strict, n),
            Some(true),
            "rate",
        ),
        Metric::new(
            "response_format_accepted",
            spec.response_format
                .then(|| if rf_rejected.is_some() { 0.0 } else { 1.0 }),
            Some(true),
            "rate",
        ),
        Metric::new(
            "case_type_accuracy",
            rate(correct[0], n),
            Some(true),
            "rate",
        ),
        Metric::new(
            "department_accuracy",
            rate(correct[1], n),
            Some(true),
            "rate",
        ),
        Metric::new("district_accuracy", rate(correct[2], n), Some(true), "rate"),
        Metric::new("urgency_accuracy", rate(correct[3], n), Some(true), "rate"),
        Metric::new(
            "key_fact_recall",
            rate(recalled, facts_total),
            Some(true),
            "rate",
        ),
        Metric::new("key_fact_coverage", mean(&coverages), Some(true), "rate"),
        Metric::new(
            "pii_leak_rate",
            rate(leaked_items, leak_checked),
            Some(false),
            "rate",
        ),
        Metric::new(
            "summary_zh_traditional_share",
            script.traditional_share(),
            Some(true),
            "rate",
        ),
        Metric::new("truncated_rate", rate(n_len, n), Some(false), "rate"),
        Metric::new("request_error_rate", rate(n_err, n), Some(false), "rate"),
        Metric::new("mean_latency_s", mean(&latencies), Some(false), "s"),
    ];
    let mut notes = vec![
        "schema_valid_rate / json_parse_rate: the whole output parses as JSON (and validates against the schema); no repair.".into(),
        format!("Field accuracies are over all {n} items: outputs are parsed leniently for them (code fences, text around the object); unparseable outputs and request errors count as wrong. {n_parsed} outputs parsed leniently."),
        format!("key_fact_recall: gold key facts whose content-word/character coverage in summary_en + summary_zh_hant reaches {}; key_fact_coverage: mean coverage per record.", spec.fact_threshold),
        "pii_leak_rate: share of parsed records whose summaries contain personal data said in the transcript (or any PII-shaped string: HK phone, HKID with valid check digit, e-mail, Mainland ID).".into(),
    ];
    notes.push(match (&rf_rejected, spec.response_format) {
        (Some(m), _) => format!("The server rejected `response_format: json_schema` ({m}); the items were run without it, so the JSON comes from the prompt alone (not constrained decoding)."),
        (None, true) => "Requests carried `response_format: {type: json_schema, strict: true}` with the schema.".into(),
        (None, false) => "Requests carried no response_format (prompt-only JSON).".into(),
    });
    Ok(result(task, n, metrics, notes, items))
}

/// Summarisation.
pub async fn summarise(ctx: &Ctx, task: &Task) -> Result<TaskResult, TaskError> {
    let rows = read_jsonl(&task.data_path, ctx.limit)?;
    let extra = generation_body(task);
    let (mut f1, mut p, mut r, mut len_ratio, mut compression) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut script = ScriptCounts::default();
    let mut punct = PunctCounts::default();
    let (mut n_err, mut n_ref) = (0, 0);
    let mut items = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let id = str_field(row, "id").to_string();
        progress(task, i, rows.len(), &id);
        let mut vars = row.clone();
        let lines = |k: &str| {
            row.get(k)
                .and_then(Value::as_array)
                .and_then(|a| Some((a.first()?.as_u64()? as usize, a.get(1)?.as_u64()? as usize)))
        };
        let source = match row.get("source").and_then(Value::as_str) {
            Some(s) => s.to_string(),
            None => read_lines(
                &task.data_path,
                str_field(row, "source_file"),
                lines("lines"),
            )?,
        };
        let reference = match row.get("reference").and_then(Value::as_str) {
            Some(s) => Some(s.to_string()),
            None => match row.get("reference_line").and_then(Value::as_u64) {
                Some(l) => Some(read_lines(
                    &task.data_path,
                    str_field(row, "source_file"),
                    Some((l as usize, l as usize)),
                )?),
                None => None,
            },
        };
        vars.insert("source".into(), json!(source));
        let lang = str_field(row, "lang").to_string();
        let mut item = json!({"id": id, "lang": lang, "reference": reference});
        let out = match ctx.client.chat(&messages(task, &vars), &extra).await {
            Ok(o) => o,
            Err(e) => {
                n_err += 1;
                item["error"] = json!(e.to_string());
                items.push(item);
                continue;
            }
        };
        let text = out.content.trim().to_string();
        let n_out = tokens(&text).len() as f64;
        let n_src = tokens(&source).len().max(1) as f64;
        compression.push(n_out / n_src);
        item["compression"] = json!(n_out / n_src);
        if let Some(reference) = &reference {
            n_ref += 1;
            let rl = rouge_l(&text, reference);
            f1.push(rl.f1);
            p.push(rl.precision);
            r.push(rl.recall);
            let lr = n_out / tokens(reference).len().max(1) as f64;
            len_ratio.push(lr);
            item["rouge_l"] = json!(rl);
            item["length_ratio"] = json!(lr);
        }
        if lang.starts_with("zh") || lang.starts_with("yue") {
            let c = ctx.scripts.count(&text);
            script.add(c);
            punct.add(punctuation(&text));
            item["script"] = json!(c);
        }
        item["finish_reason"] = json!(out.finish_reason);
        item["output"] = json!(text);
        items.push(item);
    }
    let n = rows.len();
    let metrics = vec![
        Metric::new("rougeL_f1", mean(&f1), Some(true), "rate"),
        Metric::new("rougeL_precision", mean(&p), Some(true), "rate"),
        Metric::new("rougeL_recall", mean(&r), Some(true), "rate"),
        Metric::new("length_ratio", mean(&len_ratio), None, "ratio"),
        Metric::new("compression", mean(&compression), None, "ratio"),
        Metric::new(
            "traditional_share",
            script.traditional_share(),
            Some(true),
            "rate",
        ),
        Metric::new(
            "simplified_share",
            script.simplified_share(),
            Some(false),
            "rate",
        ),
        Metric::new(
            "full_width_punct_share",
            punct.full_width_share(),
            Some(true),
            "rate",
        ),
        Metric::new("items_with_reference", Some(n_ref as f64), None, "count"),
        Metric::new("request_error_rate", rate(n_err, n), Some(false), "rate"),
    ];
    let notes = vec![
        "ROUGE-L (F1, beta 1) on tokens: one per Han character, one per lowercased English word; averaged over items that have a reference. Items without a reference get length and script measures only.".into(),
        "length_ratio = output tokens / reference tokens; compression = output tokens / source tokens (same tokens as ROUGE).".into(),
        "traditional_share = Traditional-only / (Traditional-only + Simplified-only) Han characters of Chinese outputs, pooled (OpenCC hk2s/s2hk dictionaries).".into(),
    ];
    Ok(result(task, n, metrics, notes, items))
}

/// Cantonese (or any) language modelling: bits per character.
pub async fn bpc(ctx: &Ctx, task: &Task) -> Result<TaskResult, TaskError> {
    let spec = task.file.bpc.clone().unwrap_or(BpcSpec {
        prefix: "\n".into(),
        batch: 8,
    });
    let rows = read_jsonl(&task.data_path, ctx.limit)?;
    let invalid = |m: String| TaskError::Invalid {
        id: task.file.id.clone(),
        message: m,
    };
    let prefix = ctx
        .client
        .echo_logprobs(std::slice::from_ref(&spec.prefix))
        .await
        .map_err(|e| invalid(format!("scoring the prefix: {e}")))?;
    let prefix_tokens = prefix
        .into_iter()
        .next()
        .map(|p| p.tokens)
        .unwrap_or_default();
    let (mut nats, mut chars, mut toks, mut skipped, mut n_err) =
        (0.0f64, 0usize, 0usize, 0usize, 0usize);
    let mut items = Vec::new();
    for (b, chunk) in rows.chunks(spec.batch).enumerate() {
        progress(
            task,
            ((b + 1) * spec.batch).min(rows.len()) - 1,
            rows.len(),
            "texts",
        );
        let prompts: Vec<String> = chunk
            .iter()
            .map(|r| format!("{}{}", spec.prefix, str_field(r, "text")))
            .collect();
        let echoed = match ctx.client.echo_logprobs(&prompts).await {
            Ok(e) => e,
            Err(e) => {
                n_err += chunk.len();
                for r in chunk {
                    items.push(json!({"id": str_field(r, "id"), "error": e.to_string()}));
                }
                continue;
            }
        };
        for (r, e) in chunk.iter().zip(echoed) {
            let text = str_field(r, "text");
            let n_chars = text.chars().count();
            match bpc::score_text(&prefix_tokens, &e.tokens, &e.token_logprobs) {
                Ok(s) => {
                    nats += s.logprob_nats;
                    chars += n_chars;
                    toks += s.tokens;
                    items.push(json!({"id": str_field(r, "id"), "chars": n_chars, "tokens": s.tokens, "logprob_nats": s.logprob_nats, "bpc": bpc::bits_per_char(s.logprob_nats, n_chars)}));
                }
                Err(err) => {
                    skipped += 1;
                    items.push(json!({"id": str_field(r, "id"), "skipped": err.to_string()}));
                }
            }
        }
    }
    let metrics = vec![
        Metric::new(
            "bits_per_char",
            bpc::bits_per_char(nats, chars),
            Some(false),
            "bits/char",
        ),
        Metric::new("tokens_per_char", rate(toks, chars), None, "ratio"),
        Metric::new("chars_scored", Some(chars as f64), None, "count"),
        Metric::new("texts_skipped", Some(skipped as f64), Some(false), "count"),
        Metric::new(
            "request_error_rate",
            rate(n_err, rows.len()),
            Some(false),
            "rate",
        ),
    ];
    let notes = vec![format!(
        "BPC = -(sum of prompt log-probabilities of each text's tokens, nats) / ln 2 / (characters), pooled over texts. Each text is sent after the prefix {:?} ({} prefix token(s): {:?}), which is not scored; every character of the text is.",
        spec.prefix,
        prefix_tokens.len(),
        prefix_tokens
    )];
    Ok(result(task, rows.len(), metrics, notes, items))
}

/// Drafting with format checks.
pub async fn drafting(ctx: &Ctx, task: &Task) -> Result<TaskResult, TaskError> {
    let checks = task
        .file
        .drafting
        .as_ref()
        .map(|d| d.checks.clone())
        .unwrap_or_default();
    let rows = read_jsonl(&task.data_path, ctx.limit)?;
    let extra = generation_body(task);
    let mut pass: Vec<(usize, usize)> = vec![(0, 0); checks.len()];
    let (mut all_pass, mut n_err) = (0, 0);
    let mut script = ScriptCounts::default();
    let mut punct = PunctCounts::default();
    let mut items = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let id = str_field(row, "id").to_string();
        progress(task, i, rows.len(), &id);
        let (form, lang) = (
            str_field(row, "form").to_string(),
            str_field(row, "lang").to_string(),
        );
        let mut item = json!({"id": id, "form": form, "lang": lang});
        let out = match ctx.client.chat(&messages(task, row), &extra).await {
            Ok(o) => o,
            Err(e) => {
                n_err += 1;
                item["error"] = json!(e.to_string());
                items.push(item);
                continue;
            }
        };
        let text = out.content.trim().to_string();
        let mut results = Map::new();
        let mut ok_all = true;
        for (k, c) in checks.iter().enumerate() {
            if !c.applies(&form, &lang) {
                continue;
            }
            let ok = drafting::run(c, &text, &ctx.scripts);
            pass[k].1 += 1;
            pass[k].0 += usize::from(ok);
            ok_all &= ok;
            results.insert(c.name.clone(), json!(ok));
        }
        all_pass += usize::from(ok_all);
        if lang.starts_with("zh") || lang.starts_with("yue") {
            script.add(ctx.scripts.count(&text));
            punct.add(punctuation(&text));
        }
        item["checks"] = Value::Object(results);
        item["finish_reason"] = json!(out.finish_reason);
        item["output"] = json!(text);
        items.push(item);
    }
    let n = rows.len();
    let mut metrics = vec![Metric::new(
        "all_checks_pass_rate",
        rate(all_pass, n),
        Some(true),
        "rate",
    )];
    for (c, (ok, total)) in checks.iter().zip(&pass) {
        metrics.push(Metric::new(
            &format!("check:{}", c.name),
            rate(*ok, *total),
            Some(true),
            "rate",
        ));
    }
    metrics.push(Metric::new(
        "traditional_share",
        script.traditional_share(),
        Some(true),
        "rate",
    ));
    metrics.push(Metric::new(
        "full_width_punct_share",
        punct.full_width_share(),
        Some(true),
        "rate",
    ));
    metrics.push(Metric::new(
        "request_error_rate",
        rate(n_err, n),
        Some(false),
        "rate",
    ));
    let notes = vec!["check:NAME = pass rate over the items the check applies to (by form and language); all_checks_pass_rate over all items (request errors fail).".into()];
    Ok(result(task, n, metrics, notes, items))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_json_forms() {
        assert!(lenient_json("{\"a\":1}").is_some());
        assert!(lenient_json("```json\n{\"a\":1}\n```").is_some());
        assert!(lenient_json("Here: {\"a\":1} done").is_some());
        assert!(lenient_json("no json").is_none());
    }

    #[test]
    fn labels_normalise() {
        assert_eq!(
            norm_label(&json!("Central & Western")),
            norm_label(&json!("central and  western"))
        );
        assert_eq!(norm_label(&json!(null)), norm_label(&json!("")));
        assert_eq!(norm_label(&json!("null")), None);
    }
}
