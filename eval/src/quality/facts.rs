//! Recall of gold key facts in generated summaries.
//!
//! A fact is a short phrase. Its content units are its Han characters (character-level matching
//! for Chinese) and its words, lowercased, without a small list of function words, with number
//! words written as digits (ten -> 10) and a plural `s` removed from words of 4+ letters. A fact's
//! coverage is the share of its content units found among the summary's units; the fact counts
//! as recalled when coverage reaches the threshold.

use std::collections::HashSet;

use super::text::tokens;

const STOPWORDS: &[&str] = &[
    "a", "an", "the", "of", "for", "to", "in", "on", "at", "or", "and", "with", "by", "from", "is",
    "are", "was", "be", "about", "as", "it", "its", "that", "this",
];

const NUMBERS: &[(&str, &str)] = &[
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
    ("eleven", "11"),
    ("twelve", "12"),
    ("fifteen", "15"),
    ("twenty", "20"),
    ("thirty", "30"),
    ("hundred", "100"),
    ("first", "1st"),
    ("second", "2nd"),
    ("third", "3rd"),
];

fn normalise(tok: String) -> String {
    if let Some((_, d)) = NUMBERS.iter().find(|(w, _)| *w == tok) {
        return (*d).to_string();
    }
    if tok.len() >= 4 && tok.is_ascii() && tok.ends_with('s') && !tok.ends_with("ss") {
        return tok[..tok.len() - 1].to_string();
    }
    tok
}

/// Content units of a text (see the module docs).
pub fn units(text: &str) -> Vec<String> {
    tokens(text)
        .into_iter()
        .filter(|t| !STOPWORDS.contains(&t.as_str()))
        .map(normalise)
        .collect()
}

/// Share of the fact's content units present in the summary, in [0, 1]; None for a fact with no
/// content units.
pub fn coverage(fact: &str, summary_units: &HashSet<String>) -> Option<f64> {
    let f = units(fact);
    if f.is_empty() {
        return None;
    }
    let hit = f.iter().filter(|u| summary_units.contains(*u)).count();
    Some(hit as f64 / f.len() as f64)
}

/// Per-record key-fact scores.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FactScore {
    /// Facts whose coverage reached the threshold.
    pub recalled: usize,
    /// Facts with content units.
    pub total: usize,
    /// Mean coverage over those facts.
    pub mean_coverage: f64,
}

/// Scores `facts` against the concatenated `summaries`.
pub fn score(facts: &[String], summaries: &[&str], threshold: f64) -> FactScore {
    let set: HashSet<String> = summaries.iter().flat_map(|s| units(s)).collect();
    let covs: Vec<f64> = facts.iter().filter_map(|f| coverage(f, &set)).collect();
    let total = covs.len();
    FactScore {
        recalled: covs.iter().filter(|&&c| c >= threshold).count(),
        total,
        mean_coverage: if total == 0 {
            0.0
        } else {
            covs.iter().sum::<f64>() / total as f64
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn english_facts_word_level() {
        let s = score(
            &[
                "rubbish piled up for a week".into(),
                "rats at night".into(),
                "about ten working days".into(),
            ],
            &["Rubbish has piled up for one week; rats appear at night. Replacement in 10 working days."],
            0.6,
        );
        assert_eq!(s.total, 3);
        // "rubbish piled up week" all present; "rat night" present; "10 working day" present.
        assert_eq!(s.recalled, 3, "{s:?}");
        let s = score(&["water main burst".into()], &["A pipe leaked."], 0.6);
        assert_eq!((s.recalled, s.total), (0, 1));
        assert_eq!(s.mean_coverage, 0.0);
    }

    #[test]
    fn chinese_facts_character_level() {
        // 北河街街市 -> units 北 河 街 街 市: all in the summary.
        let s = score(
            &["北河街街市".into(), "老鼠".into()],
            &["深水埗北河街街市垃圾堆積"],
            0.6,
        );
        assert_eq!((s.recalled, s.total), (1, 2), "{s:?}");
        assert!((s.mean_coverage - 0.5).abs() < 1e-12);
    }
}
