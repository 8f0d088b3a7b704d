//! HF-compatible chat templates rendered with minijinja.
//!
//! Chat templates shipped with models (`tokenizer.chat_template` in GGUF metadata, `chat_template`
//! in `tokenizer_config.json`) are Jinja2 templates written against the environment that HF
//! `transformers` sets up in `apply_chat_template`. [`ChatTemplate`] reproduces that environment:
//!
//! - `trim_blocks` and `lstrip_blocks` on, a single trailing newline of the source dropped,
//!   lenient undefined values (Jinja2's default), loop controls (`break` / `continue`);
//! - Python string / dict / list methods (`.strip()`, `.items()`, ...) via `minijinja-contrib`'s
//!   pycompat callback;
//! - variables `messages`, `bos_token`, `eos_token` (left undefined when the model has none, as in
//!   HF), `add_generation_prompt`, `tools` (`none` when absent);
//! - `raise_exception(msg)`, which fails the render with [`TemplateError::Render`]`(msg)`;
//! - `strftime_now(fmt)`, the current UTC time formatted with a C `strftime` subset;
//! - a `tojson` filter that formats like Python's `json.dumps(..., ensure_ascii=False)` (HF's
//!   own `tojson`): `", "` / `": "` separators, non-ASCII kept, no HTML escaping, key order kept;
//!   supports `indent`, `sort_keys` and `separators`.
//!
//! [`GEMMA_CHAT_TEMPLATE`] is a template for Gemma models whose GGUF ships none.

use std::collections::BTreeMap;
use std::io;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Serde, Value};
use minijinja::{Environment, Error, ErrorKind, UndefinedBehavior};

/// Name under which the template is stored in its environment.
const TEMPLATE_NAME: &str = "chat";

/// One chat message as the template sees it (`message.role`, `message.content`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool`, ... (the template decides what it accepts).
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// Convenience constructor.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Errors from compiling or rendering a chat template.
#[derive(thiserror::Error, Debug)]
pub enum TemplateError {
    /// The template source does not compile.
    #[error("chat template syntax error: {0}")]
    Syntax(String),
    /// Rendering failed. For `raise_exception(msg)` the payload is exactly `msg` (the template's
    /// own message for the client, e.g. "Conversation roles must alternate ...").
    #[error("{0}")]
    Render(String),
}

/// Marks an error as coming from the template's `raise_exception`.
#[derive(Debug)]
struct RaisedException(String);

impl std::fmt::Display for RaisedException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

/// A compiled chat template with the model's special tokens. `Send + Sync`; rendering does not
/// mutate it.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source` (a HF Jinja2 chat template).
    ///
    /// `bos_token` / `eos_token`: the model's special token strings (e.g. `"<bos>"`), exposed to
    /// the template as `bos_token` / `eos_token`; `None` leaves the variable undefined (renders
    /// as an empty string).
    ///
    /// Errors: [`TemplateError::Syntax`] when the source does not compile.
    pub fn new(
        source: &str,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(|e| TemplateError::Syntax(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(|e| TemplateError::Syntax(e.to_string()))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.map(str::to_owned),
            eos_token: eos_token.map(str::to_owned),
        })
    }

    /// Renders the prompt for `messages`.
    ///
    /// `add_generation_prompt`: append the opening of an assistant turn. `tools`: the request's
    /// tool list (a JSON array of OpenAI tool objects), `none` in the template when `None`.
    ///
    /// Errors: [`TemplateError::Render`] with the template's message for `raise_exception`, or
    /// minijinja's description of any other failure.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        tools: Option<&serde_json::Value>,
    ) -> Result<String, TemplateError> {
        let mut ctx: BTreeMap<&str, Value> = BTreeMap::new();
        ctx.insert("messages", Value::from(Serde(messages)));
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        ctx.insert(
            "tools",
            tools.map_or(Value::from(()), |t| Value::from(Serde(t))),
        );
        if let Some(bos) = &self.bos_token {
            ctx.insert("bos_token", Value::from(bos.as_str()));
        }
        if let Some(eos) = &self.eos_token {
            ctx.insert("eos_token", Value::from(eos.as_str()));
        }
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| TemplateError::Render(e.to_string()))?;
        template
            .render(Value::from(ctx))
            .map_err(|e| TemplateError::Render(render_error_message(&e)))
    }
}

/// The raise_exception message when the error (or one it wraps) came from `raise_exception`,
/// else minijinja's description.
fn render_error_message(err: &Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(raised) = e.downcast_ref::<RaisedException>() {
            return raised.0.clone();
        }
        source = e.source();
    }
    err.to_string()
}

/// `raise_exception(msg)`: fails the render with `msg`.
fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg.clone()).with_source(RaisedException(msg)))
}

/// `strftime_now(fmt)`: the current UTC time formatted with `fmt`.
fn strftime_now(fmt: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_utc(&fmt, secs)
}

/// English month names, January first (for `strftime_now` here and the prompt library's dates).
pub const MONTH_NAMES: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Formats `unix_secs` (UTC) with a C `strftime` subset: `%Y %y %m %d %e %j %H %I %M %S %p %B
/// %b %h %A %a %F %T %D %%`, and the glibc no-padding forms `%-d %-m %-H %-I %-M %-S %-j`.
/// Unknown directives are copied verbatim.
fn format_utc(fmt: &str, unix_secs: u64) -> String {
    const WEEKDAYS: [&str; 7] = [
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
    ];
    let days = unix_secs / 86_400;
    let secs_of_day = unix_secs % 86_400;
    let (hour, minute, second) = (secs_of_day / 3600, secs_of_day / 60 % 60, secs_of_day % 60);
    let (year, month, day) = civil_date(days);
    let weekday = ((days + 4) % 7) as usize; // 1970-01-01 was a Thursday
    let day_of_year = days - days_from_civil_year_start(year) + 1;
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };
    let month_name = MONTH_NAMES[(month - 1) as usize];
    let weekday_name = WEEKDAYS[weekday];

    let mut out = String::with_capacity(fmt.len() + 16);
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let no_pad = chars.peek() == Some(&'-');
        if no_pad {
            chars.next();
        }
        let Some(d) = chars.next() else {
            out.push('%');
            if no_pad {
                out.push('-');
            }
            break;
        };
        let num = |v: u64, width: usize| {
            if no_pad {
                v.to_string()
            } else {
                format!("{v:0width$}")
            }
        };
        match d {
            'Y' => out.push_str(&year.to_string()),
            'y' => out.push_str(&num(year % 100, 2)),
            'm' => out.push_str(&num(month, 2)),
            'd' => out.push_str(&num(day, 2)),
            'e' => out.push_str(&if no_pad {
                day.to_string()
            } else {
                format!("{day:2}")
            }),
            'j' => out.push_str(&num(day_of_year, 3)),
            'H' => out.push_str(&num(hour, 2)),
            'I' => out.push_str(&num(hour12, 2)),
            'M' => out.push_str(&num(minute, 2)),
            'S' => out.push_str(&num(second, 2)),
            'p' => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            'B' => out.push_str(month_name),
            'b' | 'h' => out.push_str(&month_name[..3]),
            'A' => out.push_str(weekday_name),
            'a' => out.push_str(&weekday_name[..3]),
            'F' => out.push_str(&format!("{year}-{month:02}-{day:02}")),
            'T' => out.push_str(&format!("{hour:02}:{minute:02}:{second:02}")),
            'D' => out.push_str(&format!("{month:02}/{day:02}/{:02}", year % 100)),
            '%' => out.push('%'),
            other => {
                out.push('%');
                if no_pad {
                    out.push('-');
                }
                out.push(other);
            }
        }
    }
    out
}

fn is_leap(year: u64) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

/// Days from 1970-01-01 to January 1st of `year` (`year >= 1970`).
fn days_from_civil_year_start(year: u64) -> u64 {
    (1970..year)
        .map(|y| if is_leap(y) { 366 } else { 365 })
        .sum()
}

/// (year, month 1-12, day 1-31) of the day `days` after 1970-01-01.
fn civil_date(mut days: u64) -> (u64, u64, u64) {
    let mut year = 1970;
    loop {
        let len = if is_leap(year) { 366 } else { 365 };
        if days < len {
            break;
        }
        days -= len;
        year += 1;
    }
    let feb = if is_leap(year) { 29 } else { 28 };
    let lengths = [31, feb, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let mut month = 1;
    for len in lengths {
        if days < len {
            break;
        }
        days -= len;
        month += 1;
    }
    (year, month, days + 1)
}

/// `value | tojson(indent=None, sort_keys=False, separators=None, ensure_ascii=...)`, formatted
/// like Python's `json.dumps(value, ensure_ascii=False, ...)`.
fn tojson(value: &Value, indent: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let indent = match indent {
        Some(v) => Some(v),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    let indent: Option<String> = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_owned()),
            None => Some(" ".repeat(usize::try_from(v)?)),
        },
    };
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    // Output never escapes non-ASCII; the argument is accepted for compatibility.
    let _ = kwargs.get::<Option<Value>>("ensure_ascii")?;
    let separators = kwargs.get::<Option<Value>>("separators")?;
    kwargs.assert_all_used()?;

    let (item_sep, key_sep) = match separators {
        Some(seps) if !seps.is_none() && !seps.is_undefined() => {
            let item = seps.get_item_by_index(0)?;
            let key = seps.get_item_by_index(1)?;
            match (item.as_str(), key.as_str()) {
                (Some(i), Some(k)) => (i.to_owned(), k.to_owned()),
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be a pair of strings",
                    ))
                }
            }
        }
        _ if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        _ => (", ".to_owned(), ": ".to_owned()),
    };
    let formatter = PyJsonFormatter {
        item_sep: item_sep.into_bytes(),
        key_sep: key_sep.into_bytes(),
        indent: indent.map(String::into_bytes),
        level: 0,
        has_value: false,
    };
    let mut out = Vec::new();
    let result = {
        let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
        if sort_keys {
            serde_json::to_value(value)
                .and_then(|v| serde::Serialize::serialize(&sorted_keys(v), &mut ser))
        } else {
            serde::Serialize::serialize(value, &mut ser)
        }
    };
    result.map_err(|e| {
        Error::new(ErrorKind::InvalidOperation, "cannot serialize to JSON").with_source(e)
    })?;
    let text = String::from_utf8(out).map_err(|e| {
        Error::new(ErrorKind::InvalidOperation, "invalid UTF-8 in JSON").with_source(e)
    })?;
    Ok(Value::from_safe_string(text))
}

/// `v` with every object's keys in sorted order (whether or not serde_json keeps insertion
/// order).
fn sorted_keys(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<(String, serde_json::Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sorted_keys(v)))
                    .collect(),
            )
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(sorted_keys).collect())
        }
        other => other,
    }
}

/// serde_json formatter producing Python `json.dumps` layout.
struct PyJsonFormatter {
    item_sep: Vec<u8>,
    key_sep: Vec<u8>,
    indent: Option<Vec<u8>>,
    level: usize,
    has_value: bool,
}

impl PyJsonFormatter {
    fn newline<W: ?Sized + io::Write>(&self, w: &mut W) -> io::Result<()> {
        if let Some(indent) = &self.indent {
            w.write_all(b"\n")?;
            for _ in 0..self.level {
                w.write_all(indent)?;
            }
        }
        Ok(())
    }

    fn open<W: ?Sized + io::Write>(&mut self, w: &mut W, c: &[u8]) -> io::Result<()> {
        self.level += 1;
        self.has_value = false;
        w.write_all(c)
    }

    fn close<W: ?Sized + io::Write>(&mut self, w: &mut W, c: &[u8]) -> io::Result<()> {
        self.level -= 1;
        if self.has_value {
            self.newline(w)?;
        }
        self.has_value = true;
        w.write_all(c)
    }

    fn item<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if !first {
            w.write_all(&self.item_sep)?;
        }
        self.newline(w)
    }
}

impl serde_json::ser::Formatter for PyJsonFormatter {
    fn begin_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open(w, b"[")
    }
    fn end_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.close(w, b"]")
    }
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.item(w, first)
    }
    fn end_array_value<W: ?Sized + io::Write>(&mut self, _w: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }
    fn begin_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open(w, b"{")
    }
    fn end_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.close(w, b"}")
    }
    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.item(w, first)
    }
    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(&self.key_sep)
    }
    fn end_object_value<W: ?Sized + io::Write>(&mut self, _w: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }
}

/// The standard Gemma chat template (for Gemma GGUFs that ship none), written in our own words:
/// turns `<start_of_turn>user\n...<end_of_turn>\n`, `model` role for assistant, system text
/// prepended to the first user turn.
///
/// Details: `bos_token` first; system text (untrimmed) followed by a blank line is put at the
/// start of the next user turn (a system message with no user turn after it becomes a user turn
/// of its own); user and assistant text is trimmed; the generation prompt is
/// `<start_of_turn>model\n`. Content may also be a list of `{"type": "text", "text": ...}` parts.
/// Any role other than system / user / assistant fails with `raise_exception` naming the role.
pub const GEMMA_CHAT_TEMPLATE: &str = r#"{{- bos_token -}}
{%- set state = namespace(pending_system="", text="") -%}
{%- for message in messages -%}
    {%- set state.text = "" -%}
    {%- if message.content is string -%}
        {%- set state.text = message.content -%}
    {%- else -%}
        {%- for part in message.content -%}
            {%- if part.type == "text" -%}
                {%- set state.text = state.text + (part.text if message.role == "system" else part.text | trim) -%}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {%- if message.role == "system" -%}
        {%- set state.pending_system = state.pending_system + state.text + "\n\n" -%}
    {%- elif message.role == "user" -%}
        {{- "<start_of_turn>user\n" + state.pending_system + (state.text | trim) + "<end_of_turn>\n" -}}
        {%- set state.pending_system = "" -%}
    {%- elif message.role == "assistant" -%}
        {{- "<start_of_turn>model\n" + (state.text | trim) + "<end_of_turn>\n" -}}
    {%- else -%}
        {{- raise_exception("Unsupported chat role '" ~ message.role ~ "': the Gemma chat template accepts system, user and assistant") -}}
    {%- endif -%}
{%- endfor -%}
{%- if state.pending_system -%}
    {{- "<start_of_turn>user\n" + state.pending_system[:-2] + "<end_of_turn>\n" -}}
{%- endif -%}
{%- if add_generation_prompt -%}
    {{- "<start_of_turn>model\n" -}}
{%- endif -%}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(pairs: &[(&str, &str)]) -> Vec<ChatMessage> {
        pairs
            .iter()
            .map(|(r, c)| ChatMessage::new(*r, *c))
            .collect()
    }

    #[test]
    fn raise_exception_message_is_returned_verbatim() {
        let t = ChatTemplate::new(
            "{% if messages | length == 0 %}{{ raise_exception('No messages given!') }}{% endif %}ok",
            None,
            None,
        )
        .expect("compiles");
        match t.render(&[], true, None) {
            Err(TemplateError::Render(msg)) => assert_eq!(msg, "No messages given!"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            t.render(&msgs(&[("user", "hi")]), true, None)
                .expect("renders"),
            "ok"
        );
    }

    #[test]
    fn syntax_errors_are_reported() {
        let err = ChatTemplate::new("{% for m in messages %}", None, None).expect_err("bad");
        assert!(matches!(err, TemplateError::Syntax(_)), "{err:?}");
    }

    #[test]
    fn other_render_errors_are_reported() {
        let t = ChatTemplate::new("{{ messages[0].content + 1 }}", None, None).expect("compiles");
        assert!(matches!(
            t.render(&msgs(&[("user", "x")]), false, None),
            Err(TemplateError::Render(_))
        ));
    }

    #[test]
    fn hf_environment_basics() {
        let src = "{% for m in messages %}\n  {{ m.role | upper }}: {{ m.content.strip() }}|\n{% endfor %}\n{{ bos_token }}{{ eos_token }}{% if tools is none %}no tools{% endif %}{{ undefined_thing }}\n";
        let t = ChatTemplate::new(src, Some("<s>"), None).expect("compiles");
        let out = t
            .render(
                &msgs(&[("user", "  hi "), ("assistant", "yo")]),
                false,
                None,
            )
            .expect("renders");
        // trim_blocks + lstrip_blocks (block tags only), trailing newline dropped, undefined
        // renders empty; same as Jinja2 with HF's settings.
        assert_eq!(out, "  USER: hi|\n  ASSISTANT: yo|\n<s>no tools");
    }

    #[test]
    fn tojson_formats_like_python() {
        let t = ChatTemplate::new(
            concat!(
                "{% set d = {'name': \"it's <b>\", 'n': 1.5, 'z': [], 'a': '中文', 'o': {'y': none, 'x': true}} %}",
                "{{ d | tojson }}|{{ [d.o] | tojson(indent=2) }}|{{ d.o | tojson(separators=(',', ':')) }}|",
                "{{ d | tojson(sort_keys=true) }}|{{ tools | tojson }}",
            ),
            None,
            None,
        )
        .expect("compiles");
        let tools = serde_json::json!([{"k": "v\n\"q\""}]);
        let out = t.render(&[], false, Some(&tools)).expect("renders");
        let want = [
            r#"{"name": "it's <b>", "n": 1.5, "z": [], "a": "中文", "o": {"y": null, "x": true}}"#,
            "[\n  {\n    \"y\": null,\n    \"x\": true\n  }\n]",
            r#"{"y":null,"x":true}"#,
            r#"{"a": "中文", "n": 1.5, "name": "it's <b>", "o": {"x": true, "y": null}, "z": []}"#,
            r#"[{"k": "v\n\"q\""}]"#,
        ]
        .join("|");
        assert_eq!(out, want);
    }

    #[test]
    fn strftime_formats_dates() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let t = 1_709_211_909;
        assert_eq!(format_utc("%Y-%m-%d %H:%M:%S", t), "2024-02-29 13:05:09");
        assert_eq!(format_utc("%d %b %Y", t), "29 Feb 2024");
        assert_eq!(
            format_utc("%A, %B %-d %I%p %j %%", t),
            "Thursday, February 29 01PM 060 %"
        );
        assert_eq!(format_utc("%F %T %q", 0), "1970-01-01 00:00:00 %q");
        let t = ChatTemplate::new("{{ strftime_now('%Y') }}", None, None).expect("compiles");
        let year: u32 = t
            .render(&[], false, None)
            .expect("renders")
            .parse()
            .expect("a year");
        assert!(year >= 2024);
    }

    #[test]
    fn gemma_template_renders_turns() {
        let t =
            ChatTemplate::new(GEMMA_CHAT_TEMPLATE, Some("<bos>"), Some("<eos>")).expect("compiles");
        let out = t
            .render(
                &msgs(&[
                    ("system", "Be brief."),
                    ("user", " Hi "),
                    ("assistant", "Hello!"),
                    ("user", "Bye"),
                ]),
                true,
                None,
            )
            .expect("renders");
        assert_eq!(
            out,
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
        );
        let out = t
            .render(&msgs(&[("system", "Only system")]), false, None)
            .expect("renders");
        assert_eq!(out, "<bos><start_of_turn>user\nOnly system<end_of_turn>\n");
    }

    #[test]
    fn gemma_template_rejects_unknown_roles() {
        let t = ChatTemplate::new(GEMMA_CHAT_TEMPLATE, Some("<bos>"), None).expect("compiles");
        match t.render(&msgs(&[("user", "hi"), ("tool", "42")]), true, None) {
            Err(TemplateError::Render(msg)) => {
                assert!(msg.contains("'tool'"), "{msg}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn chat_template_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<ChatTemplate>();
    }
}
