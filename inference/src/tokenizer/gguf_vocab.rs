//! Translation of GGUF `tokenizer.ggml.*` metadata into a HF `tokenizers::Tokenizer`.
//!
//! Token types (llama.cpp's `llama_token_type`): 1 normal, 2 unknown, 3 control, 4 user-defined,
//! 5 unused, 6 byte. Control tokens become special added tokens, user-defined tokens become
//! (non-special) added tokens; both are matched literally in input text before the model runs.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
};

use super::TokenizerError;

const TOKEN_NORMAL: i64 = 1;
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

/// SentencePiece's visible space, U+2581.
pub(crate) const SPM_SPACE: char = '\u{2581}';

/// Split regex used by Qwen2 (`pre = qwen2`): like Llama 3's but single digits.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Split regex used by Llama 3 (`pre = llama-bpe` / `llama3`): digits in groups of up to 3.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Result of translating GGUF metadata.
pub(crate) struct Built {
    pub hf: tokenizers::Tokenizer,
    /// add_bos default for this tokenizer type when `tokenizer.ggml.add_bos_token` is absent.
    pub default_add_bos: bool,
}

fn get<'a>(m: &'a HashMap<String, Value>, key: &str) -> Result<&'a Value, TokenizerError> {
    m.get(key)
        .ok_or_else(|| TokenizerError::MissingKey(key.to_string()))
}

fn invalid(key: &str, reason: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::InvalidMetadata {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

/// Any integer metadata value as i64.
fn as_i64(v: &Value) -> Option<i64> {
    Some(match v {
        Value::U8(x) => *x as i64,
        Value::I8(x) => *x as i64,
        Value::U16(x) => *x as i64,
        Value::I16(x) => *x as i64,
        Value::U32(x) => *x as i64,
        Value::I32(x) => *x as i64,
        Value::U64(x) => i64::try_from(*x).ok()?,
        Value::I64(x) => *x,
        _ => return None,
    })
}

pub(crate) fn opt_u32(
    m: &HashMap<String, Value>,
    key: &str,
) -> Result<Option<u32>, TokenizerError> {
    match m.get(key) {
        None => Ok(None),
        Some(v) => {
            let i = as_i64(v).ok_or_else(|| invalid(key, "not an integer"))?;
            // llama.cpp writes -1 (as i32/u32::MAX) for "no such token".
            Ok(u32::try_from(i).ok().filter(|&x| x != u32::MAX))
        }
    }
}

pub(crate) fn opt_bool(
    m: &HashMap<String, Value>,
    key: &str,
) -> Result<Option<bool>, TokenizerError> {
    match m.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => as_i64(v)
            .map(|i| Some(i != 0))
            .ok_or_else(|| invalid(key, "not a bool")),
    }
}

pub(crate) fn opt_string(
    m: &HashMap<String, Value>,
    key: &str,
) -> Result<Option<String>, TokenizerError> {
    match m.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(key, "not a string")),
    }
}

fn string_array(m: &HashMap<String, Value>, key: &str) -> Result<Vec<String>, TokenizerError> {
    let v = get(m, key)?.to_vec().map_err(|e| invalid(key, e))?;
    v.iter()
        .map(|x| x.to_string().cloned().map_err(|e| invalid(key, e)))
        .collect()
}

/// An optional per-token array of `key` (one entry per vocabulary token), each value converted by
/// `conv`; errors name the key when the length or a value is wrong.
fn per_token_array<T>(
    m: &HashMap<String, Value>,
    key: &str,
    len: usize,
    conv: impl Fn(&Value) -> Option<T>,
    what: &str,
) -> Result<Option<Vec<T>>, TokenizerError> {
    let Some(v) = m.get(key) else { return Ok(None) };
    let v = v.to_vec().map_err(|e| invalid(key, e))?;
    if v.len() != len {
        return Err(invalid(
            key,
            format!("length {} != token count {len}", v.len()),
        ));
    }
    v.iter()
        .map(|x| conv(x).ok_or_else(|| invalid(key, what)))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn int_array(
    m: &HashMap<String, Value>,
    key: &str,
    len: usize,
) -> Result<Option<Vec<i64>>, TokenizerError> {
    per_token_array(m, key, len, as_i64, "not an integer")
}

fn float_array(
    m: &HashMap<String, Value>,
    key: &str,
    len: usize,
) -> Result<Option<Vec<f32>>, TokenizerError> {
    let to_f32 = |x: &Value| match x {
        Value::F32(f) => Some(*f),
        Value::F64(f) => Some(*f as f32),
        other => as_i64(other).map(|i| i as f32),
    };
    per_token_array(m, key, len, to_f32, "not a number")
}

/// Builds a HF tokenizer from GGUF metadata.
pub(crate) fn build_from_gguf(m: &HashMap<String, Value>) -> Result<Built, TokenizerError> {
    let model = opt_string(m, "tokenizer.ggml.model")?
        .ok_or_else(|| TokenizerError::MissingKey("tokenizer.ggml.model".into()))?;
    let tokens = string_array(m, "tokenizer.ggml.tokens")?;
    if tokens.is_empty() {
        return Err(invalid("tokenizer.ggml.tokens", "empty"));
    }
    let types = int_array(m, "tokenizer.ggml.token_type", tokens.len())?
        .unwrap_or_else(|| vec![TOKEN_NORMAL; tokens.len()]);
    match model.as_str() {
        "gpt2" => build_gpt2(m, tokens, types),
        "llama" => build_spm(m, tokens, types),
        other => Err(TokenizerError::UnsupportedModel(other.to_string())),
    }
}

/// Registers control tokens as special and user-defined tokens as normal added tokens, both
/// matched on the raw (un-normalized) text, as HF tokenizer.json files declare them.
fn add_added_tokens(hf: &mut tokenizers::Tokenizer, tokens: &[String], types: &[i64]) {
    let mut special = Vec::new();
    let mut user = Vec::new();
    for (tok, &ty) in tokens.iter().zip(types) {
        if tok.is_empty() {
            continue;
        }
        if ty == TOKEN_CONTROL {
            special.push(AddedToken::from(tok.clone(), true).normalized(false));
        } else if ty == TOKEN_USER_DEFINED {
            user.push(AddedToken::from(tok.clone(), false).normalized(false));
        }
    }
    hf.add_special_tokens(&special);
    hf.add_tokens(&user);
}

/// Token string -> id map; the first occurrence wins for duplicated strings.
fn vocab_map(tokens: &[String]) -> Vocab {
    let mut vocab = Vocab::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        vocab.entry(t.clone()).or_insert(i as u32);
    }
    vocab
}

fn build_gpt2(
    m: &HashMap<String, Value>,
    tokens: Vec<String>,
    types: Vec<i64>,
) -> Result<Built, TokenizerError> {
    let pre = opt_string(m, "tokenizer.ggml.pre")?.unwrap_or_else(|| "default".to_string());
    let merges_raw = string_array(m, "tokenizer.ggml.merges")?;
    let mut merges = Vec::with_capacity(merges_raw.len());
    for (i, line) in merges_raw.iter().enumerate() {
        let (a, b) = line.split_once(' ').ok_or_else(|| {
            invalid(
                "tokenizer.ggml.merges",
                format!("entry {i} `{line}` has no space"),
            )
        })?;
        merges.push((a.to_string(), b.to_string()));
    }
    let vocab = vocab_map(&tokens);

    let byte_level_split = || PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, true));
    let byte_level_only = || PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false));
    let split = |re: &str| -> Result<PreTokenizerWrapper, TokenizerError> {
        Split::new(
            SplitPattern::Regex(re.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map(PreTokenizerWrapper::Split)
        .map_err(TokenizerError::hf)
    };

    let mut normalizer: Option<NormalizerWrapper> = None;
    let mut ignore_merges = false;
    let mut default_add_bos = false;
    let pre_tok = match pre.as_str() {
        "qwen2" => {
            normalizer = Some(NormalizerWrapper::NFC(NFC));
            PreTokenizerWrapper::Sequence(PreSequence::new(vec![
                split(QWEN2_REGEX)?,
                byte_level_only(),
            ]))
        }
        "llama3" | "llama-bpe" | "llama-v3" => {
            ignore_merges = true;
            default_add_bos = true;
            PreTokenizerWrapper::Sequence(PreSequence::new(vec![
                split(LLAMA3_REGEX)?,
                byte_level_only(),
            ]))
        }
        // llama.cpp: a single-digit split followed by the GPT-2 regex.
        "smollm" | "starcoder" | "refact" | "codeshell" | "command-r" | "exaone" | "minerva-7b" => {
            PreTokenizerWrapper::Sequence(PreSequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                byte_level_split(),
            ]))
        }
        "default" | "gpt2" | "gpt-2" => byte_level_split(),
        other => {
            tracing::warn!(
                pre = other,
                "unknown tokenizer.ggml.pre; using the GPT-2 split regex"
            );
            byte_level_split()
        }
    };

    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(TokenizerError::hf)?;
    let mut hf = tokenizers::Tokenizer::new(bpe);
    hf.with_normalizer(normalizer);
    hf.with_pre_tokenizer(Some(pre_tok));
    hf.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::new(
        false, false, false,
    ))));
    add_added_tokens(&mut hf, &tokens, &types);
    Ok(Built {
        hf,
        default_add_bos,
    })
}

/// SentencePiece vocabulary as a byte-fallback BPE (merges ranked by token score).
fn build_spm(
    m: &HashMap<String, Value>,
    mut tokens: Vec<String>,
    types: Vec<i64>,
) -> Result<Built, TokenizerError> {
    let scores = float_array(m, "tokenizer.ggml.scores", tokens.len())?
        .unwrap_or_else(|| (0..tokens.len()).map(|i| -(i as f32)).collect());
    let add_space_prefix = opt_bool(m, "tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
    // User-defined tokens are stored with real spaces in GGUF; in the SentencePiece vocabulary
    // (and HF's conversion) they use U+2581.
    for (tok, &ty) in tokens.iter_mut().zip(&types) {
        if ty == TOKEN_USER_DEFINED && tok.contains(' ') {
            *tok = tok.replace(' ', "\u{2581}");
        }
    }
    let vocab = vocab_map(&tokens);
    let merges = spm_merges(&tokens, &types, &scores, &vocab);
    let unk = opt_u32(m, "tokenizer.ggml.unknown_token_id")?
        .and_then(|i| tokens.get(i as usize).cloned())
        .filter(|t| vocab.contains_key(t));

    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(u) = unk {
        builder = builder.unk_token(u);
    }
    let bpe = builder.build().map_err(TokenizerError::hf)?;
    let mut hf = tokenizers::Tokenizer::new(bpe);

    let replace_space = Replace::new(" ", "\u{2581}").map_err(TokenizerError::hf)?;
    let normalizer = if add_space_prefix {
        NormalizerWrapper::Sequence(NormalizerSequence::new(vec![
            NormalizerWrapper::Prepend(Prepend::new("\u{2581}".to_string())),
            NormalizerWrapper::Replace(replace_space),
        ]))
    } else {
        NormalizerWrapper::Replace(replace_space)
    };
    hf.with_normalizer(Some(normalizer));
    hf.with_pre_tokenizer(None::<PreTokenizerWrapper>);
    let mut decoders = vec![
        DecoderWrapper::Replace(Replace::new("\u{2581}", " ").map_err(TokenizerError::hf)?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    if add_space_prefix {
        decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }
    hf.with_decoder(Some(DecoderWrapper::Sequence(DecoderSequence::new(
        decoders,
    ))));
    add_added_tokens(&mut hf, &tokens, &types);
    Ok(Built {
        hf,
        default_add_bos: true,
    })
}

/// Whether a user-defined token is a whitespace run that SentencePiece builds by merging
/// (runs of `▁`, newlines or tabs); such runs are merged before any normal piece.
fn is_whitespace_run(tok: &str) -> bool {
    tok.chars().count() > 1
        && tok
            .chars()
            .all(|c| matches!(c, SPM_SPACE | '\n' | '\t' | '\r'))
}

/// Derives BPE merges from a SentencePiece vocabulary: for every normal piece (and every
/// user-defined whitespace run), each split into two pieces that are both in the vocabulary is
/// a merge. Whitespace runs come first (longer results first), then normal pieces by score
/// descending (ties: lower id first), splits of one piece ordered by (left id, right id).
pub(crate) fn spm_merges(
    tokens: &[String],
    types: &[i64],
    scores: &[f32],
    vocab: &Vocab,
) -> Vec<(String, String)> {
    // (group, sort key, merged id, left id, right id)
    let mut entries: Vec<(u8, f32, u32, u32, u32)> = Vec::new();
    for (i, tok) in tokens.iter().enumerate() {
        let ty = types.get(i).copied().unwrap_or(TOKEN_NORMAL);
        let group = if ty == TOKEN_NORMAL {
            1u8
        } else if ty == TOKEN_USER_DEFINED && is_whitespace_run(tok) {
            0u8
        } else {
            continue;
        };
        if vocab.get(tok.as_str()) != Some(&(i as u32)) {
            continue; // duplicate string; only the first id is reachable
        }
        let key = if group == 0 {
            -(tok.chars().count() as f32)
        } else {
            -scores.get(i).copied().unwrap_or(0.0)
        };
        for (pos, _) in tok.char_indices().skip(1) {
            let (l, r) = tok.split_at(pos);
            if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r)) {
                entries.push((group, key, i as u32, li, ri));
            }
        }
    }
    entries.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(a.1.total_cmp(&b.1))
            .then(a.2.cmp(&b.2))
            .then(a.3.cmp(&b.3))
            .then(a.4.cmp(&b.4))
    });
    entries
        .into_iter()
        .map(|(_, _, _, l, r)| (tokens[l as usize].clone(), tokens[r as usize].clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_ranked_by_score() {
        let toks: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let types = vec![1; 6];
        let scores = vec![0.0, 0.0, 0.0, -5.0, -1.0, -2.0];
        let vocab = vocab_map(&toks);
        let m = spm_merges(&toks, &types, &scores, &vocab);
        let m: Vec<(&str, &str)> = m.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(m, [("b", "c"), ("a", "bc"), ("ab", "c"), ("a", "b")]);
    }

    #[test]
    fn whitespace_runs_first() {
        let toks: Vec<String> = ["▁", "x", "▁x", "▁▁"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let types = vec![1, 1, 1, 4];
        let scores = vec![0.0, 0.0, -1.0, -1000.0];
        let vocab = vocab_map(&toks);
        let m = spm_merges(&toks, &types, &scores, &vocab);
        assert_eq!(m[0], ("▁".to_string(), "▁".to_string()));
        assert_eq!(m[1], ("▁".to_string(), "x".to_string()));
        assert!(is_whitespace_run("\n\n") && !is_whitespace_run("\n") && !is_whitespace_run("<b>"));
    }

    #[test]
    fn int_helpers() {
        let mut m = HashMap::new();
        m.insert("k".to_string(), Value::I32(-1));
        assert_eq!(opt_u32(&m, "k").ok().flatten(), None);
        m.insert("k".to_string(), Value::U32(7));
        assert_eq!(opt_u32(&m, "k").ok().flatten(), Some(7));
        m.insert("k".to_string(), Value::String("x".into()));
        assert!(opt_u32(&m, "k").is_err());
        assert!(opt_bool(&m, "missing").ok().flatten().is_none());
    }
}
