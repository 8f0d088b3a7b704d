//! Text units shared by the metrics: mixed Chinese/English tokenization, LCS and ROUGE-L.
//!
//! Tokens: every Han character is one token (character level for Chinese); every maximal run of
//! other letters and digits is one lowercased token (word level for English); whitespace and
//! punctuation separate tokens and are not tokens themselves.

use serde::Serialize;

/// Whether `c` is a Han ideograph (CJK Unified Ideographs, extensions A to H, compatibility).
pub fn is_han(c: char) -> bool {
    matches!(c as u32,
        0x3400..=0x4DBF
        | 0x4E00..=0x9FFF
        | 0xF900..=0xFAFF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2EBEF
        | 0x2F800..=0x2FA1F
        | 0x30000..=0x323AF
        | 0x3007 // 〇 (ideographic number zero, used in dates such as 二〇二五)
    )
}

/// Whether the text has at least one Han character.
pub fn has_han(text: &str) -> bool {
    text.chars().any(is_han)
}

/// Splits text into tokens: one per Han character, one per run of other alphanumerics
/// (lowercased). Empty text gives no tokens.
pub fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in text.chars() {
        if is_han(c) {
            if !word.is_empty() {
                out.push(std::mem::take(&mut word));
            }
            out.push(c.to_string());
        } else if c.is_alphanumeric() {
            word.extend(c.to_lowercase());
        } else if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// Length of the longest common subsequence of `a` and `b` (O(len(a)·len(b)) time, O(len(b))
/// memory).
pub fn lcs_len<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    if a.is_empty() || b.is_empty() {
        return 0;
    }
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// ROUGE-L scores in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RougeL {
    /// LCS / candidate tokens.
    pub precision: f64,
    /// LCS / reference tokens.
    pub recall: f64,
    /// Harmonic mean of precision and recall (beta = 1); 0 when both are 0.
    pub f1: f64,
}

/// ROUGE-L of `candidate` against `reference` on [`tokens`] (so character level for Chinese,
/// word level for English). An empty candidate or reference gives all zeros.
pub fn rouge_l(candidate: &str, reference: &str) -> RougeL {
    let c = tokens(candidate);
    let r = tokens(reference);
    let lcs = lcs_len(&c, &r) as f64;
    if lcs == 0.0 {
        return RougeL {
            precision: 0.0,
            recall: 0.0,
            f1: 0.0,
        };
    }
    let precision = lcs / c.len() as f64;
    let recall = lcs / r.len() as f64;
    let f1 = 2.0 * precision * recall / (precision + recall);
    RougeL {
        precision,
        recall,
        f1,
    }
}

/// Replaces every `{name}` in `template` with `vars[name]` (strings as they are, other JSON values
/// as JSON text). Unknown names are left as they are.
pub fn render(template: &str, vars: &serde_json::Map<String, serde_json::Value>) -> String {
    let mut out = template.to_string();
    for (k, v) in vars {
        let needle = format!("{{{k}}}");
        if out.contains(&needle) {
            let s = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out = out.replace(&needle, &s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_mix_characters_and_words() {
        assert_eq!(
            tokens("Hello, 香港 World-2025!"),
            vec!["hello", "香", "港", "world", "2025"]
        );
        assert!(tokens("  ,。 ").is_empty());
    }

    #[test]
    fn lcs_known_values() {
        let a: Vec<char> = "ABCBDAB".chars().collect();
        let b: Vec<char> = "BDCABA".chars().collect();
        assert_eq!(lcs_len(&a, &b), 4);
        assert_eq!(lcs_len::<char>(&[], &b), 0);
    }

    #[test]
    fn rouge_l_english_word_level() {
        // LCS of "the cat sat on the mat" / "the cat was on the mat" = the cat on the mat (5).
        let r = rouge_l("the cat sat on the mat", "the cat was on the mat");
        assert!((r.precision - 5.0 / 6.0).abs() < 1e-12);
        assert!((r.recall - 5.0 / 6.0).abs() < 1e-12);
        assert!((r.f1 - 5.0 / 6.0).abs() < 1e-12);
        // Police example from the ROUGE paper: LCS("police killed the gunman",
        // "police kill the gunman") = 3 of 4 words.
        let r = rouge_l("police kill the gunman", "police killed the gunman");
        assert!((r.f1 - 0.75).abs() < 1e-12);
    }

    #[test]
    fn rouge_l_chinese_character_level() {
        // Reference 加速數字政府建設 (8 characters); candidate 加快政府數字化建設 (9):
        // LCS = 加 數 字 建 設 or 加 政 府 建 設 = 5.
        let r = rouge_l("加快政府數字化建設", "加速數字政府建設");
        assert!((r.precision - 5.0 / 9.0).abs() < 1e-12, "{r:?}");
        assert!((r.recall - 5.0 / 8.0).abs() < 1e-12, "{r:?}");
        assert_eq!(rouge_l("", "加速").f1, 0.0);
        assert_eq!(rouge_l("完全相同", "完全相同").f1, 1.0);
    }

    #[test]
    fn render_fills_known_names_only() {
        let vars = serde_json::json!({"a": "x", "n": 3});
        let vars = vars.as_object().cloned().unwrap_or_default();
        assert_eq!(render("{a}-{n}-{b}", &vars), "x-3-{b}");
    }
}
