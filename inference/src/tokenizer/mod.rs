//! Tokenizers built from GGUF metadata (or a HF `tokenizer.json`), and streaming
//! detokenization.
//!
//! The heavy lifting (BPE merging, added/special-token matching, decoding) is done by the HF
//! `tokenizers` crate; this module only translates GGUF `tokenizer.ggml.*` metadata into an
//! equivalent `tokenizers::Tokenizer` (see [`gguf_vocab`]) and adds the model-level knowledge
//! the engine needs: BOS/EOS handling, end-of-generation ids, per-token text for logprobs.
//!
//! - `gpt2` GGUF tokenizers become byte-level BPE with the pre-tokenizer split regex selected by
//!   `tokenizer.ggml.pre` (qwen2, llama3, smollm/starcoder family, gpt2 default).
//! - `llama` (SentencePiece) GGUF tokenizers become a byte-fallback BPE whose merges are ranked
//!   by the token scores, with `▁` space replacement (as HF converts SentencePiece models).

mod gguf_vocab;
mod stream;

pub use stream::StreamDecoder;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file::Value;

/// Errors from building or using a [`Tokenizer`].
#[derive(thiserror::Error, Debug)]
pub enum TokenizerError {
    /// A required `tokenizer.ggml.*` key is absent from the GGUF metadata.
    #[error("GGUF metadata key `{0}` missing")]
    MissingKey(String),
    /// A metadata value has the wrong type or an impossible value.
    #[error("GGUF metadata key `{key}` invalid: {reason}")]
    InvalidMetadata {
        /// The offending key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `tokenizer.ggml.model` names a tokenizer type we do not implement.
    #[error("unsupported tokenizer model `{0}`")]
    UnsupportedModel(String),
    /// An error from the HF `tokenizers` library (building, encoding, decoding, loading JSON).
    #[error("tokenizers: {0}")]
    Hf(String),
    /// A token id outside the vocabulary was given to `decode`.
    #[error("token id {id} out of range (vocab size {vocab_size})")]
    IdOutOfRange {
        /// The offending id.
        id: u32,
        /// Vocabulary size of the tokenizer.
        vocab_size: usize,
    },
}

impl TokenizerError {
    pub(crate) fn hf(e: impl std::fmt::Display) -> Self {
        TokenizerError::Hf(e.to_string())
    }
}

/// Shared immutable state behind [`Tokenizer`].
#[derive(Debug)]
struct Inner {
    hf: tokenizers::Tokenizer,
    vocab_size: usize,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    bos_text: Option<String>,
    eos_text: Option<String>,
    /// `tokenizer.ggml.add_bos_token` (or its per-type default).
    add_bos: bool,
    /// `tokenizer.ggml.add_eos_token` (default false).
    add_eos: bool,
    eos_ids: Vec<u32>,
    /// Sorted ids of special (control) tokens.
    special_ids: Vec<u32>,
}

/// A text tokenizer for one model. Cheap to clone (`Arc` inside); `Send + Sync`.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

/// Inverse of GPT-2's byte-to-character table (byte-level BPE): printable Latin-1 bytes
/// (`!`..=`~`, `¡`..=`¬`, `®`..=`ÿ`) stand for themselves; the other 68 bytes, in order, are
/// written as U+0100 + their rank.
fn gpt2_char_to_byte(c: char) -> Option<u8> {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let cp = c as u32;
    if cp <= 0xff {
        return printable(cp).then_some(cp as u8);
    }
    let rank = cp.checked_sub(0x100)?;
    (0u32..=0xff)
        .filter(|&b| !printable(b))
        .nth(rank as usize)
        .map(|b| b as u8)
}

/// End-of-turn token strings that end generation when present in the vocabulary.
const END_OF_TURN_TOKENS: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "<end_of_turn>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|end|>",
];

impl Tokenizer {
    /// Builds from GGUF metadata (`tokenizer.ggml.*` keys).
    ///
    /// Errors: [`TokenizerError::MissingKey`] / [`TokenizerError::InvalidMetadata`] for absent or
    /// malformed keys, [`TokenizerError::UnsupportedModel`] for tokenizer types other than `gpt2`
    /// and `llama`, [`TokenizerError::Hf`] if the HF library rejects the vocabulary.
    pub fn from_gguf(metadata: &HashMap<String, Value>) -> Result<Self, TokenizerError> {
        let built = gguf_vocab::build_from_gguf(metadata)?;
        Self::assemble(built.hf, built.default_add_bos, metadata)
    }

    /// Uses a HF tokenizer.json for the vocabulary/merges, GGUF metadata still gives
    /// BOS/EOS/add_bos. The tokenizer.json post-processor is not used: BOS/EOS are added by
    /// [`Tokenizer::encode`] according to the GGUF metadata.
    ///
    /// Errors: [`TokenizerError::Hf`] if the file cannot be read or parsed,
    /// [`TokenizerError::InvalidMetadata`] for malformed BOS/EOS keys.
    pub fn from_tokenizer_json(
        path: &Path,
        metadata: &HashMap<String, Value>,
    ) -> Result<Self, TokenizerError> {
        let hf = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| TokenizerError::Hf(format!("loading {}: {e}", path.display())))?;
        let model = gguf_vocab::opt_string(metadata, "tokenizer.ggml.model")?;
        let default_add_bos = matches!(model.as_deref(), Some("llama"));
        Self::assemble(hf, default_add_bos, metadata)
    }

    fn assemble(
        hf: tokenizers::Tokenizer,
        default_add_bos: bool,
        metadata: &HashMap<String, Value>,
    ) -> Result<Self, TokenizerError> {
        let vocab_size = hf.get_vocab_size(true);
        let in_vocab = |id: u32| (id as usize) < vocab_size;
        let bos_id =
            gguf_vocab::opt_u32(metadata, "tokenizer.ggml.bos_token_id")?.filter(|&i| in_vocab(i));
        let eos_id =
            gguf_vocab::opt_u32(metadata, "tokenizer.ggml.eos_token_id")?.filter(|&i| in_vocab(i));
        let eot_id =
            gguf_vocab::opt_u32(metadata, "tokenizer.ggml.eot_token_id")?.filter(|&i| in_vocab(i));
        let add_bos = gguf_vocab::opt_bool(metadata, "tokenizer.ggml.add_bos_token")?
            .unwrap_or(default_add_bos)
            && bos_id.is_some();
        let add_eos = gguf_vocab::opt_bool(metadata, "tokenizer.ggml.add_eos_token")?
            .unwrap_or(false)
            && eos_id.is_some();

        let mut eos_ids: Vec<u32> = Vec::new();
        let mut push = |id: u32| {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        };
        if let Some(id) = eos_id {
            push(id);
        }
        if let Some(id) = eot_id {
            push(id);
        }
        for t in END_OF_TURN_TOKENS {
            if let Some(id) = hf.token_to_id(t) {
                push(id);
            }
        }

        let mut special_ids: Vec<u32> = hf
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .collect();
        special_ids.sort_unstable();

        let bos_text = bos_id.and_then(|id| hf.id_to_token(id));
        let eos_text = eos_id.and_then(|id| hf.id_to_token(id));
        Ok(Tokenizer {
            inner: Arc::new(Inner {
                hf,
                vocab_size,
                bos_id,
                eos_id,
                bos_text,
                eos_text,
                add_bos,
                add_eos,
                eos_ids,
                special_ids,
            }),
        })
    }

    /// Encodes text; special tokens written in the text (e.g. "<|im_start|>") are parsed as
    /// special tokens. `add_bos`: prepend BOS if the model's metadata says so (add_bos_token);
    /// likewise EOS is appended when `add_bos` is true and the metadata's add_eos_token is set.
    ///
    /// Errors: [`TokenizerError::Hf`] if the HF library fails on the input.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, TokenizerError> {
        let inner = &self.inner;
        let enc = inner
            .hf
            .encode_fast(text, false)
            .map_err(TokenizerError::hf)?;
        let body = enc.get_ids();
        let mut ids = Vec::with_capacity(body.len() + 2);
        if add_bos && inner.add_bos {
            if let Some(b) = inner.bos_id {
                ids.push(b);
            }
        }
        ids.extend_from_slice(body);
        if add_bos && inner.add_eos {
            if let Some(e) = inner.eos_id {
                ids.push(e);
            }
        }
        Ok(ids)
    }

    /// Decodes ids to text. `skip_special_tokens`: drop special (control) tokens such as
    /// `<|im_end|>` from the text. Bytes that do not form valid UTF-8 become U+FFFD.
    ///
    /// Errors: [`TokenizerError::IdOutOfRange`] for ids `>= vocab_size()`,
    /// [`TokenizerError::Hf`] if the HF decoder fails.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.inner.vocab_size) {
            return Err(TokenizerError::IdOutOfRange {
                id,
                vocab_size: self.inner.vocab_size,
            });
        }
        self.inner
            .hf
            .decode(ids, skip_special_tokens)
            .map_err(TokenizerError::hf)
    }

    /// The text of one token as shown in logprobs (lossy for partial UTF-8 bytes). Special
    /// tokens give their literal text (e.g. `<|im_end|>`); unknown ids give an empty string.
    pub fn token_text(&self, id: u32) -> String {
        if id as usize >= self.inner.vocab_size {
            return String::new();
        }
        match self.inner.hf.decode(&[id], false) {
            Ok(s) => s,
            Err(_) => self.inner.hf.id_to_token(id).unwrap_or_default(),
        }
    }

    /// The exact bytes of one token (for logprobs' `bytes`): a token holding part of a UTF-8
    /// character gives those raw bytes, not U+FFFD. Byte-level BPE pieces are mapped back through
    /// GPT-2's byte-to-character table, SentencePiece `<0xNN>` pieces give that byte and `▁` a
    /// space; added and special tokens give their text. Unknown ids give no bytes.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let hf = &self.inner.hf;
        let Some(piece) = hf.id_to_token(id) else {
            return Vec::new();
        };
        if self.is_special(id) {
            return piece.into_bytes();
        }
        // (The borrowed map: `Tokenizer::get_added_tokens_decoder` clones it on every call.)
        if hf
            .get_added_vocabulary()
            .get_added_tokens_decoder()
            .contains_key(&id)
        {
            // User-defined pieces (e.g. Gemma's runs of spaces) are stored with `▁` for space.
            return piece.replace('\u{2581}', " ").into_bytes();
        }
        if let Some(b) = piece
            .strip_prefix("<0x")
            .and_then(|h| h.strip_suffix('>'))
            .filter(|h| h.len() == 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            return vec![b];
        }
        if matches!(
            hf.get_decoder(),
            Some(tokenizers::DecoderWrapper::ByteLevel(_))
        ) {
            let bytes: Option<Vec<u8>> = piece.chars().map(gpt2_char_to_byte).collect();
            if let Some(bytes) = bytes {
                return bytes;
            }
        }
        piece.replace('\u{2581}', " ").into_bytes()
    }

    /// Number of token ids (including added/special tokens).
    pub fn vocab_size(&self) -> usize {
        self.inner.vocab_size
    }

    /// The BOS token string, e.g. `"<bos>"`, if the model has one.
    pub fn bos_token(&self) -> Option<&str> {
        self.inner.bos_text.as_deref()
    }

    /// The EOS token string (from `tokenizer.ggml.eos_token_id`), e.g. `"<|im_end|>"`.
    pub fn eos_token(&self) -> Option<&str> {
        self.inner.eos_text.as_deref()
    }

    /// The BOS token id, if any.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.inner.bos_id
    }

    /// Whether `encode(.., true)` prepends BOS (metadata `add_bos_token`).
    pub fn adds_bos(&self) -> bool {
        self.inner.add_bos
    }

    /// Ids that end generation: eos_token_id plus e.g. <|im_end|>, <|endoftext|>,
    /// <end_of_turn>, eot_token_id (those present in the vocabulary).
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.inner.eos_ids
    }

    /// Whether `id` is a special (control) token, e.g. `<bos>`, `<|im_start|>`.
    pub fn is_special(&self, id: u32) -> bool {
        self.inner.special_ids.binary_search(&id).is_ok()
    }

    /// The underlying HF tokenizer.
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        &self.inner.hf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Value {
        Value::String(v.to_string())
    }
    fn arr_s(v: &[&str]) -> Value {
        Value::Array(v.iter().map(|x| s(x)).collect())
    }
    fn arr_i(v: &[i32]) -> Value {
        Value::Array(v.iter().map(|&x| Value::I32(x)).collect())
    }
    fn arr_f(v: &[f32]) -> Value {
        Value::Array(v.iter().map(|&x| Value::F32(x)).collect())
    }

    /// A tiny SentencePiece-style vocabulary.
    fn spm_meta() -> HashMap<String, Value> {
        let mut toks: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        let mut types = vec![2, 3, 3];
        let mut scores = vec![0.0f32, 0.0, 0.0];
        for b in 0..256u32 {
            toks.push(format!("<0x{b:02X}>"));
            types.push(6);
            scores.push(0.0);
        }
        let normal = [
            "▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "ll", "llo", "▁hello", "he", "hello",
            "▁w", "or", "▁wor", "▁world", "ld",
        ];
        let score_of = [
            -1.0f32, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0, -8.0, -9.0, -10.0, -11.0, -12.0, -13.0,
            -14.0, -15.0, -16.0, -17.0, -18.0, -30.0,
        ];
        for (t, sc) in normal.iter().zip(score_of) {
            toks.push((*t).to_string());
            types.push(1);
            scores.push(sc);
        }
        toks.push("  ".into());
        types.push(4);
        scores.push(-1000.0);
        let mut m = HashMap::new();
        m.insert("tokenizer.ggml.model".into(), s("llama"));
        let tr: Vec<&str> = toks.iter().map(|x| x.as_str()).collect();
        m.insert("tokenizer.ggml.tokens".into(), arr_s(&tr));
        m.insert("tokenizer.ggml.token_type".into(), arr_i(&types));
        m.insert("tokenizer.ggml.scores".into(), arr_f(&scores));
        m.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(1));
        m.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(2));
        m.insert("tokenizer.ggml.unknown_token_id".into(), Value::U32(0));
        m.insert("tokenizer.ggml.add_space_prefix".into(), Value::Bool(false));
        m
    }

    #[test]
    fn spm_merges_follow_scores_and_bos() {
        let t = Tokenizer::from_gguf(&spm_meta()).expect("build");
        let ids = t.encode("hello world", true).expect("encode");
        let toks: Vec<String> = ids
            .iter()
            .map(|&i| t.hf().id_to_token(i).unwrap_or_default())
            .collect();
        assert_eq!(toks, ["<s>", "hello", "▁world"]);
        assert_eq!(t.decode(&ids, true).expect("decode"), "hello world");
        assert_eq!(t.decode(&ids, false).expect("decode"), "<s>hello world");
        assert_eq!(t.bos_token(), Some("<s>"));
        assert_eq!(t.eos_token(), Some("</s>"));
        assert!(t.is_special(1) && !t.is_special(5));
        assert_eq!(t.eos_token_ids(), &[2]);
    }

    #[test]
    fn spm_byte_fallback_and_user_defined_spaces() {
        let t = Tokenizer::from_gguf(&spm_meta()).expect("build");
        let ids = t.encode("é", false).expect("encode");
        // U+00E9 is not in the vocabulary: two byte tokens 0xC3 0xA9.
        assert_eq!(ids, vec![3 + 0xC3, 3 + 0xA9]);
        assert_eq!(t.decode(&ids, true).expect("decode"), "é");
        assert_eq!(t.token_text(3 + 0xC3), "\u{FFFD}");
        // the user-defined "  " token (stored with a real space in GGUF) is reachable.
        let ids = t.encode("h  w", false).expect("encode");
        let last = (t.vocab_size() - 1) as u32;
        assert!(ids.contains(&last), "{ids:?}");
        assert_eq!(t.decode(&ids, true).expect("decode"), "h  w");
    }

    #[test]
    fn tokenizer_is_clone_send_sync() {
        fn check<T: Clone + Send + Sync>() {}
        check::<Tokenizer>();
        fn check_send<T: Send>() {}
        check_send::<StreamDecoder>();
    }

    #[test]
    fn stream_decoder_small_vocab() {
        let t = Tokenizer::from_gguf(&spm_meta()).expect("build");
        let ids = t.encode("hello é world", true).expect("encode");
        let mut d = StreamDecoder::new(t.clone());
        let mut out = String::new();
        for &id in &ids {
            let delta = d.push(id).expect("push");
            assert!(!delta.contains('\u{FFFD}'), "{delta:?}");
            out.push_str(&delta);
        }
        out.push_str(&d.finish());
        assert_eq!(out, "hello é world");
        // A dangling lead byte comes out lossy only at finish().
        let mut d = StreamDecoder::new(t);
        assert_eq!(d.push(3 + 0xC3).expect("push"), "");
        assert_eq!(d.finish(), "\u{FFFD}");
    }

    #[test]
    fn out_of_range_id_is_an_error() {
        let t = Tokenizer::from_gguf(&spm_meta()).expect("build");
        assert!(matches!(
            t.decode(&[1_000_000], true),
            Err(TokenizerError::IdOutOfRange { .. })
        ));
        assert_eq!(t.token_text(1_000_000), "");
    }

    #[test]
    fn missing_tokens_key_is_an_error() {
        let mut m = spm_meta();
        m.remove("tokenizer.ggml.tokens");
        assert!(matches!(
            Tokenizer::from_gguf(&m),
            Err(TokenizerError::MissingKey(_))
        ));
        let mut m = spm_meta();
        m.insert("tokenizer.ggml.model".into(), s("rwkv"));
        assert!(matches!(
            Tokenizer::from_gguf(&m),
            Err(TokenizerError::UnsupportedModel(_))
        ));
    }
}
