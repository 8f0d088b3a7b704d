//! Format checks for drafted documents (LegCo replies, press releases), defined as data in the
//! task TOML (`[[drafting.checks]]`), each applied to the items whose `form`/`lang` it names.

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::script::{punctuation, ScriptClassifier};

/// What a check tests.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum CheckKind {
    /// The first non-blank line, trimmed, starts with one of `values`.
    StartsWith { values: Vec<String> },
    /// The text contains one of `values`.
    ContainsAny { values: Vec<String> },
    /// `pattern` (Rust regex syntax, multi-line mode) matches at least `min` times.
    RegexMinCount { pattern: String, min: usize },
    /// The last non-blank line, trimmed, matches `pattern`.
    LastLineMatches { pattern: String },
    /// Traditional share of script-specific Han characters ≥ `min` (no such characters: pass).
    TraditionalShareMin { min: f64 },
    /// Full-width share of punctuation in Chinese context ≥ `min` (no punctuation: fail).
    FullWidthPunctShareMin { min: f64 },
    /// Quotations in Chinese use 「」/『』: no Western quotes next to Chinese text (none at all:
    /// pass).
    CornerQuotes,
}

/// One check with its filters.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Check {
    /// Name shown in reports (unique within the task).
    pub name: String,
    /// Applies only to items with this `form` (any form if absent).
    #[serde(default)]
    pub form: Option<String>,
    /// Applies only to items with this `lang` (any language if absent).
    #[serde(default)]
    pub lang: Option<String>,
    #[serde(flatten)]
    pub kind: CheckKind,
}

impl Check {
    /// Whether this check applies to an item of `form` and `lang`.
    pub fn applies(&self, form: &str, lang: &str) -> bool {
        self.form.as_deref().is_none_or(|f| f == form)
            && self.lang.as_deref().is_none_or(|l| l == lang)
    }
}

/// Errors in a check definition.
#[derive(Debug, thiserror::Error)]
#[error("check `{name}`: bad pattern: {source}")]
pub struct CheckError {
    pub name: String,
    #[source]
    pub source: regex::Error,
}

/// Validates the patterns of `checks` (so a bad task file fails before any request).
pub fn validate(checks: &[Check]) -> Result<(), CheckError> {
    for c in checks {
        if let CheckKind::RegexMinCount { pattern, .. } | CheckKind::LastLineMatches { pattern } =
            &c.kind
        {
            compile(pattern).map_err(|source| CheckError {
                name: c.name.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

fn compile(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("(?m){pattern}"))
}

/// Runs one check on `text`.
pub fn run(check: &Check, text: &str, scripts: &ScriptClassifier) -> bool {
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let last = text
        .lines()
        .map(str::trim)
        .rev()
        .find(|l| !l.is_empty())
        .unwrap_or("");
    match &check.kind {
        CheckKind::StartsWith { values } => values.iter().any(|v| first.starts_with(v.as_str())),
        CheckKind::ContainsAny { values } => values.iter().any(|v| text.contains(v.as_str())),
        CheckKind::RegexMinCount { pattern, min } => {
            compile(pattern).is_ok_and(|re| re.find_iter(text).count() >= *min)
        }
        CheckKind::LastLineMatches { pattern } => {
            compile(pattern).is_ok_and(|re| re.is_match(last))
        }
        CheckKind::TraditionalShareMin { min } => scripts
            .count(text)
            .traditional_share()
            .is_none_or(|s| s >= *min),
        CheckKind::FullWidthPunctShareMin { min } => punctuation(text)
            .full_width_share()
            .is_some_and(|s| s >= *min),
        CheckKind::CornerQuotes => punctuation(text).western_quotes_in_chinese == 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(toml_text: &str) -> Check {
        toml::from_str(toml_text).expect("check parses")
    }

    #[test]
    fn legco_reply_checks() {
        let sc = ScriptClassifier::new().expect("opencc");
        let opening =
            check("name = \"opening\"\nkind = \"starts_with\"\nvalues = [\"President,\"]");
        let parts = check(
            "name = \"parts\"\nkind = \"regex_min_count\"\npattern = '^\\s*(\\([a-z]\\)|[0-9]+\\.)\\s'\nmin = 2",
        );
        let reply =
            "President,\n\nMy reply is as follows:\n\n(a) The scheme started in 2024.\n(b) No.\n";
        assert!(run(&opening, reply, &sc));
        assert!(run(&parts, reply, &sc));
        assert!(!run(&parts, "President,\nYes.", &sc));
        assert!(!run(&opening, "Dear Sir,\n(a) x", &sc));

        let zh_parts = check(
            "name = \"zh_parts\"\nkind = \"regex_min_count\"\npattern = '[(（][一二三四五六七八九十]+[)）]'\nmin = 2",
        );
        let zh = "主席：\n\n（一）數字辦已於二○二四年成立。\n（二）政府會「加快」推動。";
        assert!(run(&zh_parts, zh, &sc));
        let trad = check("name = \"t\"\nkind = \"traditional_share_min\"\nmin = 0.95");
        assert!(run(&trad, zh, &sc));
        assert!(!run(&trad, "主席：\n（一）数字办已成立。", &sc));
        let fw = check("name = \"fw\"\nkind = \"full_width_punct_share_min\"\nmin = 0.9");
        assert!(run(&fw, zh, &sc));
        assert!(!run(&fw, "主席:\n數字辦已成立,政府會推動.", &sc));
        let q = check("name = \"q\"\nkind = \"corner_quotes\"");
        assert!(run(&q, zh, &sc));
        assert!(!run(&q, "政府會“加快”推動。", &sc));
        let last = check("name = \"ends\"\nkind = \"last_line_matches\"\npattern = '^Ends/'");
        assert!(run(
            &last,
            "Title\n\nBody.\n\nEnds/Thursday, March 27, 2025\n",
            &sc
        ));
    }

    #[test]
    fn filters_and_bad_patterns() {
        let c =
            check("name = \"x\"\nform = \"legco_reply\"\nlang = \"en\"\nkind = \"corner_quotes\"");
        assert!(c.applies("legco_reply", "en"));
        assert!(!c.applies("legco_reply", "zh"));
        assert!(!c.applies("press_release", "en"));
        let bad = check("name = \"bad\"\nkind = \"regex_min_count\"\npattern = '('\nmin = 1");
        assert!(validate(&[bad]).is_err());
    }
}
