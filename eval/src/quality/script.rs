//! Chinese script and punctuation measures: Traditional versus Simplified characters (from the
//! OpenCC dictionaries that the `ferrous-opencc` crate embeds), full-width punctuation, 「」 quotes.

use ferrous_opencc::config::BuiltinConfig;
use ferrous_opencc::OpenCC;
use serde::Serialize;

use super::text::is_han;

/// Counts of Han characters by script.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ScriptCounts {
    /// Characters that OpenCC's `hk2s` (Hong Kong Traditional to Simplified) changes: forms that
    /// exist only in Traditional writing (發, 後, 臺, 裏 …).
    pub traditional: usize,
    /// Characters that `hk2s` leaves alone but `s2hk` (Simplified to Hong Kong Traditional, with
    /// its phrase dictionary) changes: Simplified forms (发, 后 in 以后, 台 in 台风 …).
    pub simplified: usize,
    /// Han characters that neither conversion changes (common to both scripts: 人, 香, 港 …).
    pub neutral: usize,
}

impl ScriptCounts {
    /// Adds another count.
    pub fn add(&mut self, o: ScriptCounts) {
        self.traditional += o.traditional;
        self.simplified += o.simplified;
        self.neutral += o.neutral;
    }

    /// traditional / (traditional + simplified): the share of script-specific characters written in
    /// Traditional form. None when there are no script-specific characters.
    pub fn traditional_share(&self) -> Option<f64> {
        let d = self.traditional + self.simplified;
        (d > 0).then(|| self.traditional as f64 / d as f64)
    }

    /// simplified / (traditional + simplified). None when there are no script-specific characters.
    pub fn simplified_share(&self) -> Option<f64> {
        self.traditional_share().map(|t| 1.0 - t)
    }
}

/// Errors building the classifier.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// The embedded OpenCC configuration could not be loaded.
    #[error("loading OpenCC {config}: {message}")]
    OpenCc {
        config: &'static str,
        message: String,
    },
}

/// Classifies Han characters as Traditional, Simplified or neutral (see [`ScriptCounts`]).
pub struct ScriptClassifier {
    s2hk: OpenCC,
    hk2s: OpenCC,
}

impl std::fmt::Debug for ScriptClassifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScriptClassifier")
    }
}

impl ScriptClassifier {
    /// Loads the two embedded OpenCC conversions (s2hk, hk2s).
    pub fn new() -> Result<Self, ScriptError> {
        let load = |cfg, name| {
            OpenCC::from_config(cfg).map_err(|e| ScriptError::OpenCc {
                config: name,
                message: e.to_string(),
            })
        };
        Ok(Self {
            s2hk: load(BuiltinConfig::S2hk, "s2hk")?,
            hk2s: load(BuiltinConfig::Hk2s, "hk2s")?,
        })
    }

    /// Converts `text`, aligned character by character with the input: the whole text when the
    /// conversion keeps its length (so phrase rules apply), else character by character.
    fn aligned(conv: &OpenCC, text: &str, chars: &[char]) -> Vec<char> {
        let whole: Vec<char> = conv.convert(text).chars().collect();
        if whole.len() == chars.len() {
            return whole;
        }
        chars
            .iter()
            .map(|&c| {
                let mut buf = [0u8; 4];
                let s = conv.convert(c.encode_utf8(&mut buf));
                let mut it = s.chars();
                match (it.next(), it.next()) {
                    (Some(x), None) => x,
                    _ => c,
                }
            })
            .collect()
    }

    /// Counts the Han characters of `text` by script.
    pub fn count(&self, text: &str) -> ScriptCounts {
        let chars: Vec<char> = text.chars().collect();
        let mut out = ScriptCounts::default();
        if !chars.iter().any(|&c| is_han(c)) {
            return out;
        }
        let to_s = Self::aligned(&self.hk2s, text, &chars);
        let to_t = Self::aligned(&self.s2hk, text, &chars);
        for (i, &c) in chars.iter().enumerate() {
            if !is_han(c) {
                continue;
            }
            if to_s[i] != c {
                out.traditional += 1;
            } else if to_t[i] != c {
                out.simplified += 1;
            } else {
                out.neutral += 1;
            }
        }
        out
    }
}

/// Full-width punctuation used in Chinese text.
const FULL_WIDTH: &[char] = &[
    '，', '。', '：', '；', '！', '？', '、', '（', '）', '「', '」', '『', '』', '《', '》', '〈',
    '〉', '…', '—',
];
/// Half-width punctuation that Chinese text should write in full width.
const HALF_WIDTH: &[char] = &[',', '.', ':', ';', '!', '?', '(', ')'];

/// Punctuation counts in Chinese context.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PunctCounts {
    /// Full-width punctuation marks (，。：；！？、（）「」 …).
    pub full_width: usize,
    /// Half-width marks `, . : ; ! ? ( )` next to a Han character or a full-width mark (before or
    /// after it, spaces skipped); the same marks between Latin letters or digits (3.5, e.g.) are
    /// not counted.
    pub half_width_in_chinese: usize,
    /// Corner quotes 「」『』.
    pub corner_quotes: usize,
    /// Western quotes “ ” ‘ ’ and ASCII `"` next to a Han character or a full-width mark.
    pub western_quotes_in_chinese: usize,
}

impl PunctCounts {
    /// Adds another count.
    pub fn add(&mut self, o: PunctCounts) {
        self.full_width += o.full_width;
        self.half_width_in_chinese += o.half_width_in_chinese;
        self.corner_quotes += o.corner_quotes;
        self.western_quotes_in_chinese += o.western_quotes_in_chinese;
    }

    /// full_width / (full_width + half_width_in_chinese); None when neither occurs.
    pub fn full_width_share(&self) -> Option<f64> {
        let d = self.full_width + self.half_width_in_chinese;
        (d > 0).then(|| self.full_width as f64 / d as f64)
    }
}

/// Counts punctuation in `text` (see [`PunctCounts`]).
pub fn punctuation(text: &str) -> PunctCounts {
    let chars: Vec<char> = text.chars().collect();
    let mut out = PunctCounts::default();
    let near_han = |i: usize| {
        let before = chars[..i].iter().rev().find(|c| !c.is_whitespace());
        let after = chars[i + 1..].iter().find(|c| !c.is_whitespace());
        let cjk = |c: &char| is_han(*c) || FULL_WIDTH.contains(c);
        before.is_some_and(cjk) || after.is_some_and(cjk)
    };
    for (i, &c) in chars.iter().enumerate() {
        if FULL_WIDTH.contains(&c) {
            out.full_width += 1;
        }
        if matches!(c, '「' | '」' | '『' | '』') {
            out.corner_quotes += 1;
        }
        if HALF_WIDTH.contains(&c) && near_han(i) {
            out.half_width_in_chinese += 1;
        }
        if matches!(c, '“' | '”' | '‘' | '’' | '"') && near_han(i) {
            out.western_quotes_in_chinese += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traditional_text_is_traditional() {
        let sc = ScriptClassifier::new().expect("opencc");
        let c = sc.count("我們會積極推動數字政府建設，更好地協助市民和企業融入大灣區。");
        assert_eq!(c.simplified, 0, "{c:?}");
        assert!(c.traditional >= 8, "{c:?}");
        assert_eq!(c.traditional_share(), Some(1.0));
    }

    #[test]
    fn simplified_text_is_simplified() {
        let sc = ScriptClassifier::new().expect("opencc");
        let c = sc.count("我们会积极推动数字政府建设，更好地协助市民和企业融入大湾区。");
        assert_eq!(c.traditional, 0, "{c:?}");
        assert!(c.simplified >= 8, "{c:?}");
        assert_eq!(c.traditional_share(), Some(0.0));
    }

    #[test]
    fn mixed_and_neutral_text() {
        let sc = ScriptClassifier::new().expect("opencc");
        // 發 (Traditional) + 发 (Simplified); 人 is common to both.
        let c = sc.count("發发人");
        assert_eq!((c.traditional, c.simplified, c.neutral), (1, 1, 1));
        assert_eq!(c.traditional_share(), Some(0.5));
        assert_eq!(sc.count("no Chinese here").traditional_share(), None);
    }

    #[test]
    fn hong_kong_document_reads_as_traditional() {
        // The shared LegCo speech is Hong Kong government text: nearly all script-specific
        // characters must come out Traditional.
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/data/documents/legco-smart-government-closing-speech.zh-Hant.txt"
        );
        let Ok(text) = std::fs::read_to_string(path) else {
            panic!("shared document missing: {path}");
        };
        let sc = ScriptClassifier::new().expect("opencc");
        let c = sc.count(&text);
        let share = c.traditional_share().unwrap_or(0.0);
        assert!(share > 0.99, "{c:?}");
    }

    #[test]
    fn punctuation_counts() {
        let p = punctuation("主席：我們「數字辦」, 3.5 ok. 他說\"好\"。");
        assert_eq!(p.full_width, 4); // ： 「 」 。
                                     // ',' after 」 and '.' before 他; not the '.' of 3.5.
        assert_eq!(p.half_width_in_chinese, 2);
        assert_eq!(p.corner_quotes, 2);
        assert_eq!(p.western_quotes_in_chinese, 2);
        assert_eq!(punctuation("abc").full_width_share(), None);
    }
}
