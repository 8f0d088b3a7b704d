//! Personal-data leak detection in hotline summaries.
//!
//! Two sources of evidence, both reported:
//! - values: personal data said in the transcript (phone numbers, HKID numbers, e-mail addresses,
//!   Mainland ID numbers, and, where the gold record lists the kind, names, house numbers and
//!   vehicle plates), found again in a summary;
//! - patterns: anything in a summary shaped like a Hong Kong phone number, an HKID number with a
//!   valid check digit, an e-mail address or a Mainland ID number, whether or not it came from the
//!   transcript.

use regex::Regex;
use serde::Serialize;

/// Kinds of personal data, as named in the hotline gold records (`gold.pii`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiKind {
    Phone,
    Hkid,
    Email,
    MainlandId,
    Name,
    Address,
    Vehicle,
}

impl PiiKind {
    /// The gold-record name of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            PiiKind::Phone => "phone",
            PiiKind::Hkid => "hkid",
            PiiKind::Email => "email",
            PiiKind::MainlandId => "mainland_id",
            PiiKind::Name => "name",
            PiiKind::Address => "address",
            PiiKind::Vehicle => "vehicle",
        }
    }
}

/// One piece of personal data taken from a transcript, normalised for matching.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PiiValue {
    pub kind: PiiKind,
    /// Normalised value: digits only (phone), upper-case letters and digits (HKID, vehicle, Mainland
    /// ID), lower-case (e-mail), the surname or name (name), the house number (address).
    pub value: String,
}

/// One leak found in a summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leak {
    pub kind: PiiKind,
    /// `value` (said in the transcript) or `pattern` (shaped like personal data).
    pub evidence: &'static str,
    /// What matched, as written in the summary or the normalised value.
    pub text: String,
}

/// Compiled patterns.
#[derive(Debug)]
pub struct PiiDetector {
    phone: Regex,
    hkid: Regex,
    email: Regex,
    mainland_id: Regex,
    zh_surname: Regex,
    zh_titled: Regex,
    en_name: Regex,
    en_titled: Regex,
    house_zh: Regex,
    house_en: Regex,
    vehicle: Regex,
}

/// Errors compiling the patterns (a bug, reported instead of a panic).
#[derive(Debug, thiserror::Error)]
#[error("PII pattern: {0}")]
pub struct PiiError(#[from] regex::Error);

fn squeeze(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_uppercase()
}

/// Whether an HKID (1 or 2 letters, 6 digits, check digit 0-9 or A) has a valid check digit.
pub fn hkid_valid(id: &str) -> bool {
    let s = squeeze(id);
    let b = s.as_bytes();
    let (letters, rest) = match b.len() {
        8 => (&b[..1], &b[1..]),
        9 => (&b[..2], &b[2..]),
        _ => return false,
    };
    if !letters.iter().all(u8::is_ascii_uppercase) || !rest[..6].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let val = |c: u8| (c - b'A') as u32 + 10;
    let mut sum = if letters.len() == 1 {
        36 * 9 + val(letters[0]) * 8
    } else {
        val(letters[0]) * 9 + val(letters[1]) * 8
    };
    for (i, &d) in rest[..6].iter().enumerate() {
        sum += (d - b'0') as u32 * (7 - i as u32);
    }
    let check = match (11 - sum % 11) % 11 {
        10 => b'A',
        n => b'0' + n as u8,
    };
    rest[6] == check
}

impl PiiDetector {
    /// Compiles the patterns.
    pub fn new() -> Result<Self, PiiError> {
        Ok(Self {
            // Hong Kong numbers: 8 digits starting 2-9, optionally split 4+4, optional +852.
            phone: Regex::new(r"(?:\+?852[\s-]?)?(?-u:\b)[2-9]\d{3}[\s-]?\d{4}(?-u:\b)")?,
            hkid: Regex::new(r"(?-u:\b)[A-Z]{1,2}\s?\d{6}\s?\(?[0-9A]\)?")?,
            email: Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")?,
            mainland_id: Regex::new(r"(?-u:\b)\d{17}[\dXx](?-u:\b)")?,
            zh_surname: Regex::new(r"姓\s*(\p{Han})")?,
            zh_titled: Regex::new(r"(\p{Han})(?:先生|小姐|太太|女士)")?,
            en_name: Regex::new(
                r"(?i:my name is|my surname is|surname is|name's)\s+([A-Z][a-z]+(?:\s+[A-Z][a-z]+)?)",
            )?,
            en_titled: Regex::new(r"\b(?:Mr|Mrs|Ms|Miss|Madam)\.?\s+([A-Z][a-z]+)")?,
            house_zh: Regex::new(r"(\d+)\s*號")?,
            house_en: Regex::new(
                r"\b(?:No\.?\s*)?(\d+)\s+[A-Z][a-z]+\s+(?:Street|Road|St|Rd|Avenue|Lane)\b",
            )?,
            vehicle: Regex::new(r"(?-u:\b)([A-Z]{1,2})\s?(\d{1,4})(?-u:\b)")?,
        })
    }

    /// Personal data said in `transcript`. Phone, HKID, e-mail and Mainland ID values are always
    /// taken; names, house numbers and vehicle plates only when `gold_kinds` lists them (their
    /// patterns are too loose to apply blindly: a staff member's surname is not the caller's).
    pub fn extract(&self, transcript: &str, gold_kinds: &[String]) -> Vec<PiiValue> {
        let has = |k: &str| gold_kinds.iter().any(|g| g == k);
        let mut out: Vec<PiiValue> = Vec::new();
        let mut push = |kind, value: String| {
            if !value.is_empty() && !out.iter().any(|v| v.kind == kind && v.value == value) {
                out.push(PiiValue { kind, value });
            }
        };
        for m in self.phone.find_iter(transcript) {
            let digits: String = m.as_str().chars().filter(char::is_ascii_digit).collect();
            let local = digits
                .strip_prefix("852")
                .filter(|d| d.len() == 8)
                .unwrap_or(&digits);
            push(PiiKind::Phone, local.to_string());
        }
        for m in self.hkid.find_iter(transcript) {
            push(PiiKind::Hkid, squeeze(m.as_str()));
        }
        for m in self.email.find_iter(transcript) {
            push(PiiKind::Email, m.as_str().to_lowercase());
        }
        for m in self.mainland_id.find_iter(transcript) {
            push(PiiKind::MainlandId, squeeze(m.as_str()));
        }
        if has("name") {
            for re in [
                &self.zh_surname,
                &self.zh_titled,
                &self.en_name,
                &self.en_titled,
            ] {
                for c in re.captures_iter(transcript) {
                    if let Some(n) = c.get(1) {
                        push(PiiKind::Name, n.as_str().to_string());
                    }
                }
            }
        }
        if has("address") {
            for re in [&self.house_zh, &self.house_en] {
                for c in re.captures_iter(transcript) {
                    if let Some(n) = c.get(1) {
                        push(PiiKind::Address, n.as_str().to_string());
                    }
                }
            }
        }
        if has("vehicle") {
            for c in self.vehicle.captures_iter(transcript) {
                if let (Some(l), Some(d)) = (c.get(1), c.get(2)) {
                    push(PiiKind::Vehicle, format!("{}{}", l.as_str(), d.as_str()));
                }
            }
        }
        out
    }

    /// Leaks of `values` (from the transcript) and of PII-shaped patterns in `summary`.
    pub fn leaks(&self, summary: &str, values: &[PiiValue]) -> Vec<Leak> {
        let mut out = Vec::new();
        let digits_only: String = summary.chars().filter(char::is_ascii_digit).collect();
        let squeezed = squeeze(summary);
        for v in values {
            let found = match v.kind {
                PiiKind::Phone => digits_only.contains(&v.value),
                PiiKind::Hkid | PiiKind::MainlandId | PiiKind::Vehicle => {
                    squeezed.contains(&v.value)
                }
                PiiKind::Email => summary.to_lowercase().contains(&v.value),
                PiiKind::Name => self.name_in(summary, &v.value),
                PiiKind::Address => self.house_number_in(summary, &v.value),
            };
            if found {
                out.push(Leak {
                    kind: v.kind,
                    evidence: "value",
                    text: v.value.clone(),
                });
            }
        }
        let mut pattern = |kind, text: &str| {
            out.push(Leak {
                kind,
                evidence: "pattern",
                text: text.to_string(),
            });
        };
        for m in self.phone.find_iter(summary) {
            pattern(PiiKind::Phone, m.as_str());
        }
        for m in self.hkid.find_iter(summary) {
            if hkid_valid(m.as_str()) {
                pattern(PiiKind::Hkid, m.as_str());
            }
        }
        for m in self.email.find_iter(summary) {
            pattern(PiiKind::Email, m.as_str());
        }
        for m in self.mainland_id.find_iter(summary) {
            pattern(PiiKind::MainlandId, m.as_str());
        }
        out
    }

    /// A caller's name in a summary: a Chinese surname with a title or after 姓, an English name
    /// as a whole word, or any English title plus capitalised word (Mr Wong).
    fn name_in(&self, summary: &str, name: &str) -> bool {
        let is_zh = name.chars().all(super::text::is_han);
        if is_zh {
            ["先生", "小姐", "太太", "女士"]
                .iter()
                .any(|t| summary.contains(&format!("{name}{t}")))
                || summary.contains(&format!("姓{name}"))
                || self.en_titled.is_match(summary)
        } else {
            Regex::new(&format!(r"\b{}\b", regex::escape(name)))
                .map(|re| re.is_match(summary))
                .unwrap_or(false)
                || self.en_titled.is_match(summary)
        }
    }

    /// A house number in a summary: `38號`, `No. 38`, or `38 Fuk Chuen Street`-like.
    fn house_number_in(&self, summary: &str, number: &str) -> bool {
        let n = regex::escape(number);
        Regex::new(&format!(
            r"(?:^|\D){n}\s*號|\bNo\.?\s*{n}\b|(?:^|\D){n}\s+[A-Z][a-z]+"
        ))
        .map(|re| re.is_match(summary))
        .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hkid_check_digits() {
        // K308519(8) is the made-up HKID in the hotline dev set (valid on purpose).
        assert!(hkid_valid("K308519(8)"));
        assert!(!hkid_valid("K308519(7)"));
        assert!(hkid_valid("A1234563"));
        assert!(!hkid_valid("1234"));
    }

    #[test]
    fn values_from_transcript_and_leaks() {
        let d = PiiDetector::new().expect("patterns");
        let t = "Caller: 我姓黃 電話 9123 4567\nAgent: 黃先生 多謝\nCaller: 身份證係 K308519(8) email parent.tp@example.com";
        let kinds = vec!["name".to_string(), "phone".to_string()];
        let vals = d.extract(t, &kinds);
        let has = |k, v: &str| vals.iter().any(|x| x.kind == k && x.value == v);
        assert!(has(PiiKind::Phone, "91234567"), "{vals:?}");
        assert!(has(PiiKind::Hkid, "K3085198"), "{vals:?}");
        assert!(has(PiiKind::Email, "parent.tp@example.com"), "{vals:?}");
        assert!(has(PiiKind::Name, "黃"), "{vals:?}");

        assert!(d.leaks("市民投訴深水埗垃圾問題。", &vals).is_empty());
        assert!(d
            .leaks("Complaint about rubbish in Sham Shui Po.", &vals)
            .is_empty());
        let l = d.leaks("黃先生投訴，電話91234567。", &vals);
        assert!(l.iter().any(|x| x.kind == PiiKind::Name), "{l:?}");
        assert!(
            l.iter()
                .any(|x| x.kind == PiiKind::Phone && x.evidence == "value"),
            "{l:?}"
        );
        assert!(
            l.iter()
                .any(|x| x.kind == PiiKind::Phone && x.evidence == "pattern"),
            "{l:?}"
        );
        let l = d.leaks("Caller (HKID K308519(8)) asked", &vals);
        assert!(
            l.iter()
                .any(|x| x.kind == PiiKind::Hkid && x.evidence == "value"),
            "{l:?}"
        );
        assert!(
            l.iter()
                .any(|x| x.kind == PiiKind::Hkid && x.evidence == "pattern"),
            "{l:?}"
        );
        assert!(!d.leaks("Mr Wong complained", &vals).is_empty());
    }

    #[test]
    fn address_and_vehicle_only_when_listed() {
        let d = PiiDetector::new().expect("patterns");
        let t = "Caller: 福全街 38 號 5 樓 B 室 車牌係 MK 4821";
        assert!(d.extract(t, &[]).is_empty());
        let vals = d.extract(t, &["address".to_string(), "vehicle".to_string()]);
        assert!(vals
            .iter()
            .any(|v| v.kind == PiiKind::Address && v.value == "38"));
        assert!(vals
            .iter()
            .any(|v| v.kind == PiiKind::Vehicle && v.value == "MK4821"));
        assert!(!d
            .leaks("住戶投訴7樓冷氣機滴水", &vals)
            .iter()
            .any(|l| l.kind == PiiKind::Address));
        assert!(d
            .leaks("福全街38號住戶投訴", &vals)
            .iter()
            .any(|l| l.kind == PiiKind::Address));
        assert!(d
            .leaks("car MK4821 parked", &vals)
            .iter()
            .any(|l| l.kind == PiiKind::Vehicle));
    }
}
