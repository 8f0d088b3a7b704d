//! The TOML metadata of a prompt template and the typing of its variables.
//!
//! A template file `NAME.toml` (see `prompts/README.md` for the full format):
//!
//! ```toml
//! id = "reply_letter"          # [a-z0-9_-]+, unique with `version`
//! version = "1"                # dot-separated numbers; the highest is the default
//! description = "..."
//! category = "drafting"        # drafting | summarising | hotline | other
//! languages = ["en", "zh-Hant"]
//! template = "reply_letter.jinja"   # optional; default NAME.jinja beside the TOML
//! output_script = "zh-Hant-HK"      # optional: convert output to Traditional (HK)
//!
//! [sampling]                   # optional defaults, used where a request sets none
//! temperature = 0.3
//! max_tokens = 800
//!
//! [[variables]]
//! name = "recipient"
//! type = "string"              # string | integer | number | boolean | enum | list | date
//! description = "..."
//! required = true              # default: true unless `default` is given
//!
//! [response_format]            # optional: structured output
//! name = "hotline_case_record"
//! schema = "case_record.schema.json"
//! ```

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::filters::parse_date;

/// Template groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Drafting,
    Summarising,
    Hotline,
    Other,
}

/// The parsed TOML file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptFile {
    pub id: String,
    pub version: String,
    pub description: String,
    pub category: Category,
    /// BCP 47 tags of the languages the template writes, e.g. `en`, `zh-Hant`.
    pub languages: Vec<String>,
    /// Jinja file, relative to the TOML file; default: the TOML's name with `.jinja`.
    #[serde(default)]
    pub template: Option<String>,
    /// Script conversion applied to the output (`zh-Hant-HK`).
    #[serde(default)]
    pub output_script: Option<String>,
    #[serde(default)]
    pub sampling: SamplingDefaults,
    #[serde(default)]
    pub variables: Vec<VariableSpec>,
    #[serde(default)]
    pub response_format: Option<SchemaRef>,
}

/// Sampling settings a template suggests; a request's own values win.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingDefaults {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    /// Tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<i64>,
}

/// `[response_format]`: a JSON schema file for structured output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRef {
    /// `json_schema.name` (`[A-Za-z0-9_-]{1,64}` as OpenAI requires).
    pub name: String,
    /// JSON schema file, relative to the TOML file.
    pub schema: String,
    #[serde(default)]
    pub description: Option<String>,
}

/// Variable types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VarType {
    String,
    Integer,
    Number,
    Boolean,
    /// One of `values`.
    Enum,
    /// A JSON array of `items`.
    List,
    /// `YYYY-MM-DD`.
    Date,
}

impl VarType {
    fn name(self) -> &'static str {
        match self {
            VarType::String => "a string",
            VarType::Integer => "an integer",
            VarType::Number => "a number",
            VarType::Boolean => "a boolean",
            VarType::Enum => "one of the listed strings",
            VarType::List => "an array",
            VarType::Date => "a date string YYYY-MM-DD",
        }
    }
}

/// One declared variable.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VariableSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: VarType,
    pub description: String,
    /// Default: true when there is no `default`.
    #[serde(default)]
    pub required: Option<bool>,
    /// JSON value (from TOML) used when the variable is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// Allowed values of an `enum`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
    /// Item type of a `list` (not `list` or `enum`); default `string`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<VarType>,
    /// Most characters of a string (each item's, for a list of strings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    /// Most items of a list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_items: Option<usize>,
    /// Bounds of an integer or number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum: Option<f64>,
}

impl VariableSpec {
    /// Whether a request must give it.
    pub fn is_required(&self) -> bool {
        self.required.unwrap_or(self.default.is_none())
    }

    /// Checks the spec itself (at load); the message names what is wrong.
    pub fn check_spec(&self) -> Result<(), String> {
        let n = &self.name;
        let ident = !n.is_empty()
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !n.starts_with(|c: char| c.is_ascii_digit());
        if !ident {
            return Err(format!("variable name `{n}` is not an identifier"));
        }
        if self.required == Some(true) && self.default.is_some() {
            return Err(format!("variable `{n}` is required but has a default"));
        }
        match (self.kind, &self.values) {
            (VarType::Enum, None) => return Err(format!("enum variable `{n}` needs `values`")),
            (VarType::Enum, Some(v)) if v.is_empty() => {
                return Err(format!("enum variable `{n}` has empty `values`"))
            }
            (VarType::Enum, _) | (_, None) => {}
            (_, Some(_)) => return Err(format!("`values` is only for enum variables (`{n}`)")),
        }
        match (self.kind, self.items) {
            (VarType::List, Some(VarType::List | VarType::Enum)) => {
                return Err(format!("list variable `{n}`: items cannot be list or enum"))
            }
            (VarType::List, _) | (_, None) => {}
            (_, Some(_)) => return Err(format!("`items` is only for list variables (`{n}`)")),
        }
        if self.max_items.is_some() && self.kind != VarType::List {
            return Err(format!("`max_items` is only for list variables (`{n}`)"));
        }
        if (self.minimum.is_some() || self.maximum.is_some())
            && !matches!(self.kind, VarType::Integer | VarType::Number)
        {
            return Err(format!(
                "`minimum`/`maximum` are only for integer or number variables (`{n}`)"
            ));
        }
        if let Some(d) = &self.default {
            self.check_value(d)
                .map_err(|(_, m)| format!("the default of variable `{n}` is invalid: {m}"))?;
        }
        Ok(())
    }

    /// A value of the right type for test renders at load time.
    pub fn sample(&self) -> Value {
        if let Some(d) = &self.default {
            return d.clone();
        }
        let scalar = |t: VarType| match t {
            VarType::Integer => Value::from(self.minimum.map(|m| m.ceil() as i64).unwrap_or(1)),
            VarType::Number => Value::from(self.minimum.unwrap_or(1.0)),
            VarType::Boolean => Value::Bool(true),
            VarType::Date => Value::from("2025-03-27"),
            _ => Value::from("sample"),
        };
        match self.kind {
            VarType::Enum => Value::from(
                self.values
                    .as_ref()
                    .and_then(|v| v.first().cloned())
                    .unwrap_or_default(),
            ),
            VarType::List => Value::Array(vec![scalar(self.items.unwrap_or(VarType::String)); 2]),
            t => scalar(t),
        }
    }

    /// Checks a request's value. Errors: (sub-path such as `[2]` or empty, message).
    pub fn check_value(&self, v: &Value) -> Result<(), (String, String)> {
        let err = |path: String, m: String| Err((path, m));
        match self.kind {
            VarType::List => {
                let Value::Array(items) = v else {
                    return err(
                        String::new(),
                        format!("must be an array; got {}", kind_of(v)),
                    );
                };
                if let Some(max) = self.max_items {
                    if items.len() > max {
                        return err(
                            String::new(),
                            format!("must have at most {max} items; got {}", items.len()),
                        );
                    }
                }
                let t = self.items.unwrap_or(VarType::String);
                for (i, item) in items.iter().enumerate() {
                    if let Err(m) = self.check_scalar(t, item) {
                        return err(format!("[{i}]"), m);
                    }
                }
                Ok(())
            }
            t => self.check_scalar(t, v).map_err(|m| (String::new(), m)),
        }
    }

    fn check_scalar(&self, t: VarType, v: &Value) -> Result<(), String> {
        let wrong = || format!("must be {}; got {}", t.name(), kind_of(v));
        match t {
            VarType::String => {
                let s = v.as_str().ok_or_else(wrong)?;
                if let Some(max) = self.max_length {
                    let n = s.chars().count();
                    if n > max {
                        return Err(format!("must be at most {max} characters; got {n}"));
                    }
                }
                Ok(())
            }
            VarType::Integer => {
                let x = v.as_i64().ok_or_else(wrong)?;
                self.check_bounds(x as f64)
            }
            VarType::Number => {
                let x = v.as_f64().ok_or_else(wrong)?;
                self.check_bounds(x)
            }
            VarType::Boolean => v.as_bool().map(|_| ()).ok_or_else(wrong),
            VarType::Enum => {
                let s = v.as_str().ok_or_else(wrong)?;
                let values = self.values.as_deref().unwrap_or_default();
                if values.iter().any(|x| x == s) {
                    Ok(())
                } else {
                    Err(format!("must be one of {values:?}; got `{s}`"))
                }
            }
            VarType::Date => {
                let s = v.as_str().ok_or_else(wrong)?;
                parse_date(s)
                    .map(|_| ())
                    .ok_or_else(|| format!("must be a date YYYY-MM-DD; got `{s}`"))
            }
            VarType::List => Err(wrong()),
        }
    }

    fn check_bounds(&self, x: f64) -> Result<(), String> {
        if let Some(min) = self.minimum {
            if x < min {
                return Err(format!("must be at least {min}; got {x}"));
            }
        }
        if let Some(max) = self.maximum {
            if x > max {
                return Err(format!("must be at most {max}; got {x}"));
            }
        }
        Ok(())
    }
}

/// `a string`, `an array`… for messages.
pub fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A variable in the API's description of a template.
pub fn describe_variable(v: &VariableSpec) -> Value {
    let mut m = match serde_json::to_value(v) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    m.insert("required".into(), Value::Bool(v.is_required()));
    if v.kind == VarType::List && v.items.is_none() {
        m.insert("items".into(), Value::from("string"));
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn var(v: Value) -> VariableSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn required_follows_default() {
        let v = var(json!({"name": "a", "type": "string", "description": "d"}));
        assert!(v.is_required());
        let v = var(json!({"name": "a", "type": "string", "description": "d", "default": "x"}));
        assert!(!v.is_required());
        let v = var(json!({"name": "a", "type": "string", "description": "d", "required": false}));
        assert!(!v.is_required());
    }

    #[test]
    fn spec_errors() {
        let bad = |v: Value| var(v).check_spec().unwrap_err();
        assert!(
            bad(json!({"name": "1a", "type": "string", "description": ""})).contains("identifier")
        );
        assert!(bad(json!({"name": "a", "type": "enum", "description": ""})).contains("values"));
        assert!(
            bad(json!({"name": "a", "type": "string", "description": "", "values": ["x"]}))
                .contains("only for enum")
        );
        assert!(
            bad(json!({"name": "a", "type": "integer", "description": "", "default": "x"}))
                .contains("default")
        );
        assert!(bad(json!({"name": "a", "type": "string", "description": "", "required": true, "default": "x"}))
            .contains("required"));
        assert!(
            bad(json!({"name": "a", "type": "list", "items": "list", "description": ""}))
                .contains("items")
        );
    }

    #[test]
    fn values_are_typed() {
        let e =
            var(json!({"name": "u", "type": "enum", "values": ["low", "high"], "description": ""}));
        assert!(e.check_value(&json!("low")).is_ok());
        assert!(e
            .check_value(&json!("mid"))
            .unwrap_err()
            .1
            .contains("one of"));
        let i = var(
            json!({"name": "n", "type": "integer", "minimum": 1, "maximum": 10, "description": ""}),
        );
        assert!(i.check_value(&json!(3)).is_ok());
        assert!(i
            .check_value(&json!(3.5))
            .unwrap_err()
            .1
            .contains("integer"));
        assert!(i.check_value(&json!(11)).unwrap_err().1.contains("at most"));
        assert!(i
            .check_value(&json!("3"))
            .unwrap_err()
            .1
            .contains("a string"));
        let l = var(json!({"name": "l", "type": "list", "max_items": 3, "description": ""}));
        assert!(l.check_value(&json!(["a", "b"])).is_ok());
        assert_eq!(l.check_value(&json!(["a", 2])).unwrap_err().0, "[1]");
        assert!(l.check_value(&json!(["a", "b", "c", "d"])).is_err());
        assert!(l.check_value(&json!("a")).is_err());
        let d = var(json!({"name": "d", "type": "date", "description": ""}));
        assert!(d.check_value(&json!("2025-03-27")).is_ok());
        assert!(d.check_value(&json!("2025-02-30")).is_err());
        let s = var(json!({"name": "s", "type": "string", "max_length": 3, "description": ""}));
        assert!(s.check_value(&json!("香港政")).is_ok());
        assert!(s.check_value(&json!("香港政府")).is_err());
        let b = var(json!({"name": "b", "type": "boolean", "description": ""}));
        assert!(b.check_value(&json!(true)).is_ok());
        assert!(b.check_value(&json!(1)).is_err());
    }
}
