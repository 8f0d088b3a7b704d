//! Chinese script conversion of generated text: Simplified -> Traditional Chinese in the Hong Kong
//! standard (OpenCC's `s2hk` configuration, through the pure-Rust `ferrous-opencc` crate with its
//! embedded dictionaries), for whole texts and for text arriving in streamed deltas.
//!
//! OpenCC converts phrase by phrase (longest dictionary match first), so a delta cannot be
//! converted on its own: `软` then `件` must become `軟件` exactly as `软件` would. The
//! [`StreamingConverter`] therefore holds back the tail of the text after the last *boundary*
//! character and converts only up to it. A boundary is any character that no `s2hk` dictionary key
//! contains: everything except Han ideographs and the two symbols `〇` and `．` that occur inside
//! phrase keys. Punctuation (`。，「」`), whitespace, newlines, Latin letters and digits are all
//! boundaries, so the held tail is normally a few characters. Because no dictionary match can
//! cross a boundary, converting in pieces cut at boundaries gives exactly the same text as
//! converting the whole.
//!
//! Held text is capped at [`DEFAULT_MAX_HOLD_CHARS`] characters: past that the converter releases
//! all but the last [`MAX_PHRASE_CHARS`] characters even without a boundary (a run of that many
//! Han characters without punctuation is rare in model output; there a phrase spanning the cut may
//! convert character by character instead). Deltas are `&str`, so a character is never split.

use std::sync::Arc;

use ferrous_opencc::config::BuiltinConfig;
use ferrous_opencc::OpenCC;

/// Longest `s2hk` dictionary key, in characters (STPhrases: 16).
pub const MAX_PHRASE_CHARS: usize = 16;
/// Default cap on the text a [`StreamingConverter`] holds back, in characters.
pub const DEFAULT_MAX_HOLD_CHARS: usize = 64;

/// Error building a converter (the embedded dictionaries failed to load: a build problem, not
/// an input problem).
#[derive(Debug, thiserror::Error)]
#[error("cannot load the OpenCC `{config}` dictionaries: {message}")]
pub struct ScriptError {
    pub config: &'static str,
    pub message: String,
}

/// A target script for generated Chinese text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChineseScript {
    /// Traditional Chinese, Hong Kong standard (OpenCC `s2hk`).
    HongKong,
}

impl ChineseScript {
    /// Every accepted spelling: `hk`, `s2hk`, `zh-Hant-HK` (BCP 47, case-insensitive), `zh-HK`.
    pub const ACCEPTED: &'static [&'static str] = &["hk", "s2hk", "zh-Hant-HK", "zh-HK"];

    /// Parses a request option or template `output_script` value; `None` if not accepted.
    pub fn parse(s: &str) -> Option<Self> {
        let t = s.trim();
        Self::ACCEPTED
            .iter()
            .any(|a| a.eq_ignore_ascii_case(t))
            .then_some(ChineseScript::HongKong)
    }

    /// Canonical BCP 47 tag, e.g. `zh-Hant-HK`.
    pub fn tag(self) -> &'static str {
        match self {
            ChineseScript::HongKong => "zh-Hant-HK",
        }
    }
}

/// A loaded converter; cheap to clone (the dictionaries are shared).
#[derive(Clone)]
pub struct ScriptConverter {
    opencc: Arc<OpenCC>,
    script: ChineseScript,
}

impl std::fmt::Debug for ScriptConverter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptConverter")
            .field("script", &self.script)
            .finish()
    }
}

impl ScriptConverter {
    /// Loads the converter for `script` from the embedded dictionaries (a few ms; do it once at
    /// startup and clone).
    pub fn new(script: ChineseScript) -> Result<Self, ScriptError> {
        let (config, name) = match script {
            ChineseScript::HongKong => (BuiltinConfig::S2hk, "s2hk"),
        };
        let opencc = OpenCC::from_config(config).map_err(|e| ScriptError {
            config: name,
            message: e.to_string(),
        })?;
        Ok(ScriptConverter {
            opencc: Arc::new(opencc),
            script,
        })
    }

    /// The Simplified -> Traditional (Hong Kong) converter.
    pub fn s2hk() -> Result<Self, ScriptError> {
        Self::new(ChineseScript::HongKong)
    }

    /// The script this converter produces.
    pub fn script(&self) -> ChineseScript {
        self.script
    }

    /// Converts a whole text. Non-Chinese text is returned unchanged.
    pub fn convert(&self, text: &str) -> String {
        if !text.chars().any(is_phrase_char) {
            return text.to_string();
        }
        self.opencc.convert(text)
    }

    /// A converter for one stream of deltas (one choice of a response).
    pub fn streaming(&self) -> StreamingConverter {
        StreamingConverter {
            converter: self.clone(),
            held: String::new(),
            max_hold_chars: DEFAULT_MAX_HOLD_CHARS,
        }
    }
}

/// True for characters that can be part of an `s2hk` dictionary key: Han ideographs (and other
/// CJK letters) plus `〇` and `．`. Every other character is a safe cut point.
pub fn is_phrase_char(c: char) -> bool {
    (c as u32 >= 0x2E80 && c.is_alphabetic()) || c == '〇' || c == '．'
}

/// Converts text that arrives in pieces; the concatenated outputs of [`push`](Self::push) and
/// [`finish`](Self::finish) equal converting the concatenated input at once (see the module doc
/// for the one exception: a boundary-free run longer than the hold cap).
#[derive(Debug, Clone)]
pub struct StreamingConverter {
    converter: ScriptConverter,
    held: String,
    max_hold_chars: usize,
}

impl StreamingConverter {
    /// Sets the cap on held-back text in characters (at least [`MAX_PHRASE_CHARS`] + 1).
    pub fn with_max_hold_chars(mut self, chars: usize) -> Self {
        self.max_hold_chars = chars.max(MAX_PHRASE_CHARS + 1);
        self
    }

    /// Adds a delta; returns the converted text that is now safe to send (may be empty).
    pub fn push(&mut self, delta: &str) -> String {
        self.held.push_str(delta);
        // Cut after the last boundary character.
        let cut = self
            .held
            .char_indices()
            .rev()
            .find(|&(_, c)| !is_phrase_char(c))
            .map(|(i, c)| i + c.len_utf8());
        let cut = match cut {
            Some(i) => i,
            None => {
                let n = self.held.chars().count();
                if n <= self.max_hold_chars {
                    return String::new();
                }
                // Keep the last MAX_PHRASE_CHARS characters, release the rest.
                self.held
                    .char_indices()
                    .nth(n - MAX_PHRASE_CHARS)
                    .map(|(i, _)| i)
                    .unwrap_or(self.held.len())
            }
        };
        if cut == 0 {
            return String::new();
        }
        let rest = self.held.split_off(cut);
        let ready = std::mem::replace(&mut self.held, rest);
        self.converter.convert(&ready)
    }

    /// Converts and returns whatever is still held (call once, at the end of the stream).
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.held);
        self.converter.convert(&rest)
    }

    /// Characters currently held back.
    pub fn held_chars(&self) -> usize {
        self.held.chars().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv() -> ScriptConverter {
        ScriptConverter::s2hk().expect("embedded s2hk dictionaries load")
    }

    #[test]
    fn known_s2hk_pairs() {
        let c = conv();
        let mut wrong = Vec::new();
        // Phrases and characters as OpenCC s2hk converts them (checked against the crate's
        // s2hk output; s2hk keeps the Hong Kong vocabulary 軟件/信息, unlike s2twp's 軟體/資訊).
        for (s, t) in [
            ("软件", "軟件"),
            ("信息", "信息"),
            ("网络", "網絡"),
            ("政府", "政府"),
            ("香港特别行政区", "香港特別行政區"),
            ("立法会", "立法會"),
            ("发展", "發展"),
            ("头发", "頭髮"),
            ("里面", "裏面"),
            ("着", "着"),
            ("为了", "為了"),
            ("说明", "説明"), // HK variant 説 (OpenCC HKVariants)
            ("后来", "後來"),
            ("皇后", "皇后"),
        ] {
            let got = c.convert(s);
            if got != t {
                wrong.push(format!("s2hk({s}) = {got}, want {t}"));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
        // Non-Chinese text is untouched.
        assert_eq!(c.convert("Hello, world. 123"), "Hello, world. 123");
        // Already-Traditional text stays as it is.
        assert_eq!(c.convert("香港特別行政區政府"), "香港特別行政區政府");
    }

    #[test]
    fn script_option_spellings() {
        assert_eq!(ChineseScript::parse("hk"), Some(ChineseScript::HongKong));
        assert_eq!(
            ChineseScript::parse("zh-hant-hk"),
            Some(ChineseScript::HongKong)
        );
        assert_eq!(ChineseScript::parse("s2hk"), Some(ChineseScript::HongKong));
        assert_eq!(ChineseScript::parse("tw"), None);
        assert_eq!(ChineseScript::HongKong.tag(), "zh-Hant-HK");
    }

    const TEXT: &str = "我们的软件开发团队正在为香港特别行政区政府发展新的网络信息系统。\
        头发里面有着许多问题，后来皇后说明了一切！Mixed English text, 数字 123 与软件。\
        “引号”和「引号」\n换行后继续发展";

    #[test]
    fn one_char_deltas_equal_whole_text() {
        let c = conv();
        let whole = c.convert(TEXT);
        assert!(whole.contains("軟件") && whole.contains("頭髮"), "{whole}");
        let mut s = c.streaming();
        let mut out = String::new();
        for ch in TEXT.chars() {
            out.push_str(&s.push(&ch.to_string()));
        }
        out.push_str(&s.finish());
        assert_eq!(out, whole);
    }

    #[test]
    fn uneven_deltas_equal_whole_text() {
        let c = conv();
        let whole = c.convert(TEXT);
        let chars: Vec<char> = TEXT.chars().collect();
        for step in [2usize, 3, 5, 7, 11] {
            let mut s = c.streaming();
            let mut out = String::new();
            for piece in chars.chunks(step) {
                let d: String = piece.iter().collect();
                out.push_str(&s.push(&d));
            }
            out.push_str(&s.finish());
            assert_eq!(out, whole, "step {step}");
        }
    }

    #[test]
    fn phrase_is_held_until_a_boundary() {
        let c = conv();
        let mut s = c.streaming();
        assert_eq!(s.push("软"), "");
        assert_eq!(s.push("件"), "");
        assert_eq!(s.held_chars(), 2);
        assert_eq!(s.push("。"), "軟件。");
        assert_eq!(s.held_chars(), 0);
        assert_eq!(s.push("头"), "");
        assert_eq!(s.finish(), "頭");
    }

    #[test]
    fn hold_is_capped() {
        let c = conv();
        let mut s = c.streaming().with_max_hold_chars(20);
        let mut out = String::new();
        for _ in 0..30 {
            out.push_str(&s.push("发"));
            assert!(s.held_chars() <= 20);
        }
        out.push_str(&s.finish());
        assert_eq!(out.chars().count(), 30);
        assert!(out.chars().all(|c| c == '發'), "{out}");
    }
}
