//! The prompt library: task templates loaded from `prompts/` at startup (TOML metadata + a Jinja
//! file with `{% block system %}` and `{% block user %}`, optionally a JSON schema), listed by
//! `GET /v1/prompts`, and rendered server-side when a chat request carries
//! `"prompt": {"id", "version"?, "variables"?}` (see [`expand_chat_request`]).
//!
//! Every template is checked at load: TOML fields, variable specs and defaults, sampling defaults,
//! the schema file, Jinja syntax, that the template uses only declared variables, and a test
//! render of each language. Any failure is a startup error naming the file.

pub mod filters;
pub mod spec;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use govlm_inference::script::ChineseScript;
use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::openai::{ChatCompletionRequest, ChatMessageIn, SamplingFields};
use spec::{describe_variable, Category, PromptFile, SamplingDefaults, VarType, VariableSpec};

/// A template that failed to load: the file and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("prompt template {}: {message}", path.display())]
pub struct PromptLoadError {
    pub path: PathBuf,
    pub message: String,
}

fn load_err(path: &Path, message: impl Into<String>) -> PromptLoadError {
    PromptLoadError {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// One loaded template version.
#[derive(Debug, Clone)]
pub struct PromptTemplate {
    pub id: String,
    pub version: String,
    pub description: String,
    pub category: Category,
    pub languages: Vec<String>,
    pub output_script: Option<ChineseScript>,
    pub sampling: SamplingDefaults,
    pub variables: Vec<VariableSpec>,
    /// `(name, schema)` for structured output.
    pub schema: Option<(String, Value)>,
    /// The TOML file it was loaded from.
    pub file: PathBuf,
    /// Name of its Jinja file in the library's environment (relative path).
    template_name: String,
}

/// A rendered template: the messages it contributes.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedPrompt {
    /// None when the system block is absent or renders empty.
    pub system: Option<String>,
    pub user: String,
}

/// All templates, by id, each id's versions in ascending order.
pub struct PromptLibrary {
    env: Environment<'static>,
    templates: BTreeMap<String, Vec<PromptTemplate>>,
    dir: Option<PathBuf>,
}

impl std::fmt::Debug for PromptLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptLibrary")
            .field("dir", &self.dir)
            .field("ids", &self.templates.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Default for PromptLibrary {
    fn default() -> Self {
        Self::empty()
    }
}

/// Compares versions as dot-separated numbers (`2` < `10`, `1.2` < `1.10`); non-numeric parts
/// compare as text.
fn version_key(v: &str) -> Vec<(u64, String)> {
    v.split('.')
        .map(|p| (p.parse::<u64>().unwrap_or(u64::MAX), p.to_string()))
        .collect()
}

fn new_env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .unwrap_or_default(),
    );
    filters::register(&mut env);
    env
}

impl PromptLibrary {
    /// A library with no templates.
    pub fn empty() -> Self {
        PromptLibrary {
            env: new_env(),
            templates: BTreeMap::new(),
            dir: None,
        }
    }

    /// Loads and checks every `*.toml` under `dir` (recursively). Every `*.jinja` file must
    /// belong to a template. Errors name the file.
    pub fn load(dir: &Path) -> Result<Self, PromptLoadError> {
        if !dir.is_dir() {
            return Err(load_err(dir, "is not a directory"));
        }
        let mut files = Vec::new();
        walk(dir, &mut files)?;
        files.sort();
        let mut lib = PromptLibrary {
            env: new_env(),
            templates: BTreeMap::new(),
            dir: Some(dir.to_path_buf()),
        };
        let mut used_jinja = HashSet::new();
        for f in files.iter().filter(|f| has_ext(f, "toml")) {
            let t = lib.load_one(dir, f)?;
            used_jinja.insert(dir.join(&t.template_name));
            if let Some(existing) = lib
                .templates
                .get(&t.id)
                .and_then(|vs| vs.iter().find(|x| x.version == t.version))
            {
                return Err(load_err(
                    f,
                    format!(
                        "id `{}` version `{}` is also defined in {}",
                        t.id,
                        t.version,
                        existing.file.display()
                    ),
                ));
            }
            lib.templates.entry(t.id.clone()).or_default().push(t);
        }
        for f in files.iter().filter(|f| has_ext(f, "jinja")) {
            if !used_jinja.contains(f) {
                return Err(load_err(
                    f,
                    "no template TOML refers to this Jinja file (name it in `template = ...`)",
                ));
            }
        }
        for versions in lib.templates.values_mut() {
            versions.sort_by_key(|a| version_key(&a.version));
        }
        Ok(lib)
    }

    fn load_one(&mut self, root: &Path, path: &Path) -> Result<PromptTemplate, PromptLoadError> {
        let text = std::fs::read_to_string(path).map_err(|e| load_err(path, e.to_string()))?;
        let pf: PromptFile = toml::from_str(&text).map_err(|e| load_err(path, e.to_string()))?;
        let bad = |m: String| load_err(path, m);
        let id_ok = |s: &str, extra: &[char]| {
            !s.is_empty()
                && s.len() <= 64
                && s.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || extra.contains(&c)
                })
        };
        if !id_ok(&pf.id, &['-']) {
            return Err(bad(format!("id `{}` must match [a-z0-9_-]{{1,64}}", pf.id)));
        }
        if !id_ok(&pf.version, &['.']) {
            return Err(bad(format!(
                "version `{}` must be dot-separated numbers, e.g. `1` or `1.2`",
                pf.version
            )));
        }
        if pf.languages.is_empty() {
            return Err(bad("`languages` must list at least one language".into()));
        }
        if pf.description.trim().is_empty() {
            return Err(bad("`description` must not be empty".into()));
        }
        let output_script = match &pf.output_script {
            None => None,
            Some(s) => Some(ChineseScript::parse(s).ok_or_else(|| {
                bad(format!(
                    "output_script `{s}` is not one of {:?}",
                    ChineseScript::ACCEPTED
                ))
            })?),
        };
        let mut names = HashSet::new();
        for v in &pf.variables {
            v.check_spec().map_err(&bad)?;
            if !names.insert(v.name.clone()) {
                return Err(bad(format!("variable `{}` is declared twice", v.name)));
            }
        }
        if let Some(lang) = pf.variables.iter().find(|v| v.name == "language") {
            let values: Vec<String> = lang.values.clone().unwrap_or_default();
            if lang.kind != VarType::Enum || values != pf.languages {
                return Err(bad(
                    "a `language` variable must be an enum whose values equal `languages`".into(),
                ));
            }
        }
        check_sampling(&pf.sampling).map_err(&bad)?;
        let dir = path.parent().unwrap_or(root);
        let schema = match &pf.response_format {
            None => None,
            Some(r) => {
                let name_ok = !r.name.is_empty()
                    && r.name.len() <= 64
                    && r.name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if !name_ok {
                    return Err(bad(format!(
                        "response_format.name `{}` must match [A-Za-z0-9_-]{{1,64}}",
                        r.name
                    )));
                }
                let sp = dir.join(&r.schema);
                let st = std::fs::read_to_string(&sp)
                    .map_err(|e| load_err(&sp, format!("cannot read the schema: {e}")))?;
                let sv: Value = serde_json::from_str(&st)
                    .map_err(|e| load_err(&sp, format!("the schema is not JSON: {e}")))?;
                check_schema(&sv).map_err(|m| load_err(&sp, m))?;
                Some((r.name.clone(), sv))
            }
        };
        let jinja_path = match &pf.template {
            Some(t) => dir.join(t),
            None => path.with_extension("jinja"),
        };
        let source = std::fs::read_to_string(&jinja_path)
            .map_err(|e| load_err(&jinja_path, format!("cannot read the template: {e}")))?;
        let rel = jinja_path
            .strip_prefix(root)
            .unwrap_or(&jinja_path)
            .to_string_lossy()
            .replace('\\', "/");
        self.env
            .add_template_owned(rel.clone(), source)
            .map_err(|e| load_err(&jinja_path, format!("Jinja syntax error: {e:#}")))?;
        let template = PromptTemplate {
            id: pf.id,
            version: pf.version,
            description: pf.description.trim().to_string(),
            category: pf.category,
            languages: pf.languages,
            output_script,
            sampling: pf.sampling,
            variables: pf.variables,
            schema,
            file: path.to_path_buf(),
            template_name: rel,
        };
        self.check_template(&template)
            .map_err(|m| load_err(&jinja_path, m))?;
        Ok(template)
    }

    /// Undeclared variables, blocks, and a test render per language.
    fn check_template(&self, t: &PromptTemplate) -> Result<(), String> {
        let tmpl = self
            .env
            .get_template(&t.template_name)
            .map_err(|e| format!("{e:#}"))?;
        let declared: HashSet<&str> = t.variables.iter().map(|v| v.name.as_str()).collect();
        let mut unknown: Vec<String> = tmpl
            .undeclared_variables(false)
            .into_iter()
            .filter(|n| !declared.contains(n.as_str()) && !filters::GLOBALS.contains(&n.as_str()))
            .collect();
        unknown.sort();
        if !unknown.is_empty() {
            return Err(format!(
                "the template uses undeclared variables {unknown:?}; declare them in [[variables]]"
            ));
        }
        let mut samples: Map<String, Value> = t
            .variables
            .iter()
            .map(|v| (v.name.clone(), v.sample()))
            .collect();
        let langs: Vec<Option<String>> = if declared.contains("language") {
            t.languages.iter().cloned().map(Some).collect()
        } else {
            vec![None]
        };
        for lang in langs {
            if let Some(l) = &lang {
                samples.insert("language".into(), Value::from(l.clone()));
            }
            let r = self
                .render_values(t, &samples)
                .map_err(|e| format!("test render failed: {e}"))?;
            if r.user.trim().is_empty() {
                return Err("the `user` block renders empty (define `{% block user %}`)".into());
            }
            // Also with every optional variable absent.
            let required_only: Map<String, Value> = samples
                .iter()
                .filter(|(k, _)| {
                    t.variables
                        .iter()
                        .any(|v| &v.name == *k && (v.is_required() || v.default.is_some()))
                        || *k == "language"
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            self.render_values(t, &required_only)
                .map_err(|e| format!("test render without optional variables failed: {e}"))?;
        }
        Ok(())
    }

    /// Template ids, sorted.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.templates.keys().map(String::as_str)
    }

    /// Number of template ids.
    pub fn len(&self) -> usize {
        self.templates.len()
    }

    /// Whether the library has no templates.
    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }

    /// Versions of `id`, ascending.
    pub fn versions(&self, id: &str) -> Option<&[PromptTemplate]> {
        self.templates.get(id).map(Vec::as_slice)
    }

    /// A template: the given version, or the highest. Errors: 404 naming `prompt.id` /
    /// `prompt.version` (`param_prefix` is `prompt` for chat requests, empty for the prompts route).
    pub fn get(
        &self,
        id: &str,
        version: Option<&str>,
        param_prefix: &str,
    ) -> Result<&PromptTemplate, ApiError> {
        let p = |f: &str| {
            if param_prefix.is_empty() {
                f.to_string()
            } else {
                format!("{param_prefix}.{f}")
            }
        };
        let versions = self.templates.get(id).ok_or_else(|| {
            prompt_not_found(&p("id"), format!("The prompt `{id}` does not exist."))
        })?;
        match version {
            None => versions.last().ok_or_else(|| {
                prompt_not_found(&p("id"), format!("The prompt `{id}` does not exist."))
            }),
            Some(v) => versions.iter().find(|t| t.version == v).ok_or_else(|| {
                let have: Vec<&str> = versions.iter().map(|t| t.version.as_str()).collect();
                prompt_not_found(
                    &p("version"),
                    format!("The prompt `{id}` has no version `{v}`; versions: {have:?}."),
                )
            }),
        }
    }

    /// Checks a request's variables against `t` (errors name `{param}.NAME`), fills defaults,
    /// and renders.
    pub fn render(
        &self,
        t: &PromptTemplate,
        variables: Option<&Map<String, Value>>,
        param: &str,
    ) -> Result<RenderedPrompt, ApiError> {
        let empty = Map::new();
        let given = variables.unwrap_or(&empty);
        if let Some(k) = given
            .keys()
            .find(|k| !t.variables.iter().any(|v| &v.name == *k))
        {
            let known: Vec<&str> = t.variables.iter().map(|v| v.name.as_str()).collect();
            return Err(ApiError::invalid(
                format!("{param}.{k}"),
                format!(
                    "Unknown variable `{k}` for prompt `{}`; its variables are {known:?}.",
                    t.id
                ),
            ));
        }
        let mut values = Map::new();
        for v in &t.variables {
            let p = format!("{param}.{}", v.name);
            match given.get(&v.name) {
                Some(Value::Null) | None if v.is_required() => {
                    return Err(ApiError::invalid(
                        p,
                        format!(
                            "Missing required variable `{}` ({}) for prompt `{}`.",
                            v.name, v.description, t.id
                        ),
                    ))
                }
                Some(Value::Null) | None => {
                    if let Some(d) = &v.default {
                        values.insert(v.name.clone(), d.clone());
                    }
                }
                // A required text or list left blank would render an incomplete document.
                Some(x) if v.is_required() && is_blank(x) => {
                    return Err(ApiError::invalid(
                        p,
                        format!(
                            "Required variable `{}` ({}) for prompt `{}` is empty.",
                            v.name, v.description, t.id
                        ),
                    ))
                }
                Some(x) => {
                    v.check_value(x).map_err(|(sub, m)| {
                        ApiError::invalid(
                            format!("{p}{sub}"),
                            format!("Variable `{}{sub}` {m}.", v.name),
                        )
                    })?;
                    values.insert(v.name.clone(), x.clone());
                }
            }
        }
        self.render_values(t, &values).map_err(|e| {
            ApiError::invalid(
                param.to_string(),
                format!("The prompt `{}` failed to render: {e}", t.id),
            )
        })
    }

    /// Renders with checked values; absent optional variables are `none`.
    fn render_values(
        &self,
        t: &PromptTemplate,
        values: &Map<String, Value>,
    ) -> Result<RenderedPrompt, String> {
        let mut ctx: BTreeMap<String, minijinja::Value> = BTreeMap::new();
        for v in &t.variables {
            let val = values
                .get(&v.name)
                .map(|x| minijinja::Value::from(minijinja::value::Serde(x)))
                .unwrap_or(minijinja::Value::from(()));
            ctx.insert(v.name.clone(), val);
        }
        let tmpl = self
            .env
            .get_template(&t.template_name)
            .map_err(|e| format!("{e:#}"))?;
        let mut captured = tmpl
            .render_captured(minijinja::Value::from(ctx))
            .map_err(|e| format!("{e:#}"))?;
        let system = match captured.with_state_mut(|st| st.render_block("system")) {
            Ok(s) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
            Err(e) if e.kind() == minijinja::ErrorKind::UnknownBlock => None,
            Err(e) => return Err(format!("{e:#}")),
        };
        let user = match captured.with_state_mut(|st| st.render_block("user")) {
            Ok(s) => s.trim().to_string(),
            Err(e) if e.kind() == minijinja::ErrorKind::UnknownBlock => {
                return Err("the template has no `{% block user %}`".into())
            }
            Err(e) => return Err(format!("{e:#}")),
        };
        Ok(RenderedPrompt { system, user })
    }

    /// `GET /v1/prompts` entry of an id: its latest version, with every version listed.
    pub fn summary(&self, id: &str) -> Option<Value> {
        let versions = self.templates.get(id)?;
        let t = versions.last()?;
        Some(json!({
            "id": t.id,
            "object": "prompt",
            "version": t.version,
            "versions": versions.iter().map(|v| v.version.as_str()).collect::<Vec<_>>(),
            "description": t.description,
            "category": t.category,
            "languages": t.languages,
            "output": if t.schema.is_some() { "json_schema" } else { "text" },
        }))
    }

    /// `GET /v1/prompts/{id}` body: one version in full (variables, sampling defaults, schema,
    /// the Jinja source).
    pub fn detail(&self, t: &PromptTemplate) -> Value {
        let versions: Vec<&str> = self
            .templates
            .get(&t.id)
            .map(|vs| vs.iter().map(|v| v.version.as_str()).collect())
            .unwrap_or_default();
        let source = self
            .env
            .get_template(&t.template_name)
            .map(|x| x.source().to_string())
            .unwrap_or_default();
        json!({
            "id": t.id,
            "object": "prompt",
            "version": t.version,
            "versions": versions,
            "description": t.description,
            "category": t.category,
            "languages": t.languages,
            "output_script": t.output_script.map(|s| s.tag()),
            "variables": t.variables.iter().map(describe_variable).collect::<Vec<_>>(),
            "sampling": t.sampling,
            "response_format": t.response_format(),
            "template": source,
        })
    }
}

impl PromptTemplate {
    /// The `response_format` this template sets: `{"type":"json_schema","json_schema":{…}}`, or
    /// null for free text.
    pub fn response_format(&self) -> Value {
        match &self.schema {
            Some((name, schema)) => json!({
                "type": "json_schema",
                "json_schema": {"name": name, "strict": true, "schema": schema}
            }),
            None => Value::Null,
        }
    }
}

fn prompt_not_found(param: &str, message: String) -> ApiError {
    let mut e = ApiError::invalid(param.to_string(), message);
    e.status = axum::http::StatusCode::NOT_FOUND;
    e.code = Some("prompt_not_found");
    e
}

fn has_ext(p: &Path, ext: &str) -> bool {
    p.extension().and_then(|e| e.to_str()) == Some(ext)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), PromptLoadError> {
    let rd = std::fs::read_dir(dir).map_err(|e| load_err(dir, e.to_string()))?;
    for entry in rd {
        let entry = entry.map_err(|e| load_err(dir, e.to_string()))?;
        let p = entry.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// Sampling defaults must pass the same checks as a request's fields.
fn check_sampling(s: &SamplingDefaults) -> Result<(), String> {
    let fields = SamplingFields {
        temperature: s.temperature,
        top_p: s.top_p,
        top_k: s.top_k,
        min_p: s.min_p,
        repetition_penalty: s.repetition_penalty,
        presence_penalty: s.presence_penalty,
        frequency_penalty: s.frequency_penalty,
        ..Default::default()
    };
    crate::validate::common(&fields, usize::MAX)
        .map_err(|e| format!("[sampling]: {}", e.message))?;
    if let Some(m) = s.max_tokens {
        if m < 1 {
            return Err(format!("[sampling] max_tokens must be at least 1; got {m}"));
        }
    }
    Ok(())
}

/// The minimum a structured-output schema needs: an object schema with `properties`, whose
/// An empty or whitespace-only string, or an empty list.
fn is_blank(v: &Value) -> bool {
    match v {
        Value::String(s) => s.trim().is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// `required` names are properties.
fn check_schema(s: &Value) -> Result<(), String> {
    let o = s.as_object().ok_or("the schema must be a JSON object")?;
    if o.get("type") != Some(&Value::from("object")) {
        return Err("the schema's top-level `type` must be \"object\"".into());
    }
    let props = o
        .get("properties")
        .and_then(Value::as_object)
        .ok_or("the schema needs `properties`")?;
    if let Some(req) = o.get("required") {
        let req = req.as_array().ok_or("`required` must be an array")?;
        for r in req {
            let name = r.as_str().ok_or("`required` must hold strings")?;
            if !props.contains_key(name) {
                return Err(format!(
                    "`required` names `{name}`, which is not a property"
                ));
            }
        }
    }
    Ok(())
}

/// Parses the request's `chinese_script` option (param `chinese_script`).
pub fn chinese_script(option: Option<&str>) -> Result<Option<ChineseScript>, ApiError> {
    match option {
        None => Ok(None),
        Some(s) => ChineseScript::parse(s).map(Some).ok_or_else(|| {
            ApiError::invalid(
                "chinese_script",
                format!(
                    "`chinese_script` must be one of {:?}; got `{s}`.",
                    ChineseScript::ACCEPTED
                ),
            )
        }),
    }
}

/// Expands a chat request's `prompt` object in place; a request without one is left unchanged.
///
/// - `prompt` must be `{"id": string, "version"?: string|integer, "variables"?: object}`; other
///   keys are 400 errors naming `prompt.KEY`.
/// - Unknown id / version: 404 `prompt_not_found` naming `prompt.id` / `prompt.version`.
/// - Missing, unknown or wrongly typed variables: 400 naming `prompt.variables.NAME` (list items:
///   `prompt.variables.NAME[i]`).
/// - The rendered system (if any) and user messages are put before the request's own `messages`
///   (which may be empty; any given are further turns).
/// - The template's sampling defaults fill the sampling fields the request leaves unset
///   (`max_tokens` only when neither `max_tokens` nor `max_completion_tokens` is set).
/// - A template with a JSON schema sets `response_format` to `json_schema` when the request has
///   none; a template's `output_script` sets `chinese_script` when the request has none.
/// - `prompt` is taken (set to None), so a second call is a no-op.
pub fn expand_chat_request(
    library: &PromptLibrary,
    req: &mut ChatCompletionRequest,
) -> Result<(), ApiError> {
    let prompt = match req.prompt.take() {
        None | Some(Value::Null) => return Ok(()),
        Some(p) => p,
    };
    let obj = prompt.as_object().ok_or_else(|| {
        ApiError::invalid(
            "prompt",
            "`prompt` must be an object {\"id\", \"version\", \"variables\"}.",
        )
    })?;
    if let Some(k) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "id" | "version" | "variables"))
    {
        return Err(ApiError::invalid(
            format!("prompt.{k}"),
            format!("Unknown field `{k}` in `prompt`; expected `id`, `version`, `variables`."),
        ));
    }
    let id = obj
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid("prompt.id", "`prompt.id` must be a string."))?;
    let version = match obj.get("version") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) if n.is_u64() => Some(n.to_string()),
        Some(_) => {
            return Err(ApiError::invalid(
                "prompt.version",
                "`prompt.version` must be a string such as \"1\".",
            ))
        }
    };
    let variables = match obj.get("variables") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m),
        Some(_) => {
            return Err(ApiError::invalid(
                "prompt.variables",
                "`prompt.variables` must be an object of variable name -> value.",
            ))
        }
    };
    let t = library.get(id, version.as_deref(), "prompt")?;
    let rendered = library.render(t, variables, "prompt.variables")?;

    let mut messages = Vec::with_capacity(req.messages.len() + 2);
    if let Some(s) = rendered.system {
        messages.push(text_message("system", s));
    }
    messages.push(text_message("user", rendered.user));
    messages.append(&mut req.messages);
    req.messages = messages;

    apply_sampling_defaults(&t.sampling, req);
    if t.schema.is_some() && req.response_format.as_ref().is_none_or(Value::is_null) {
        req.response_format = Some(t.response_format());
    }
    if req.chinese_script.is_none() {
        req.chinese_script = t.output_script.map(|s| s.tag().to_string());
    }
    Ok(())
}

fn text_message(role: &str, content: String) -> ChatMessageIn {
    ChatMessageIn {
        role: role.to_string(),
        content: Some(Value::String(content)),
        name: None,
    }
}

fn apply_sampling_defaults(d: &SamplingDefaults, req: &mut ChatCompletionRequest) {
    let s = &mut req.sampling;
    s.temperature = s.temperature.or(d.temperature);
    s.top_p = s.top_p.or(d.top_p);
    s.top_k = s.top_k.or(d.top_k);
    s.min_p = s.min_p.or(d.min_p);
    s.repetition_penalty = s.repetition_penalty.or(d.repetition_penalty);
    s.presence_penalty = s.presence_penalty.or(d.presence_penalty);
    s.frequency_penalty = s.frequency_penalty.or(d.frequency_penalty);
    if req.max_tokens.is_none() && req.max_completion_tokens.is_none() {
        req.max_tokens = d.max_tokens;
    }
}

/// The repository's `prompts/` directory (for tests).
pub fn repo_prompts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("prompts")
}

#[cfg(test)]
mod tests;
