//! Bits per character from prompt log-probabilities (`/v1/completions` with `echo`).
//!
//! Each text is sent as `prefix + text`. The server returns one log-probability per prompt token,
//! null for the first (nothing predicts it; for a model with BOS that token is the BOS). The tokens
//! of the prefix alone are asked for once; a text's score is the sum of the log-probabilities of
//! the tokens after those prefix tokens, which must be the same tokens (a tokenizer that merged
//! across the prefix boundary makes the text unscorable: it is counted as skipped). So every
//! character of the text is predicted, by every model, with the same context (the prefix).
//!
//! BPC = (−Σ log-probabilities in nats) / ln 2 / (number of characters), summed over all scored
//! texts before dividing (pooled, not a mean of per-text ratios). Characters are Unicode scalar
//! values of the text.

/// Errors scoring one echoed text.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BpcError {
    /// The echoed tokens do not start with the prefix tokens.
    #[error(
        "the prompt's first {n} tokens are not the prefix's tokens (merged across the boundary)"
    )]
    PrefixMismatch { n: usize },
    /// A token after the prefix has no log-probability.
    #[error("token {index} has no log-probability")]
    MissingLogprob { index: usize },
    /// Nothing after the prefix.
    #[error("no tokens after the prefix")]
    Empty,
}

/// The log-likelihood of one text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextScore {
    /// Σ log-probabilities (nats, ≤ 0) of the text's tokens.
    pub logprob_nats: f64,
    /// Tokens scored.
    pub tokens: usize,
}

/// Scores one echoed prompt: `tokens`/`logprobs` of `prefix + text` (one entry per prompt token,
/// as in the legacy `logprobs` object) against the tokens of the prefix alone.
pub fn score_text(
    prefix_tokens: &[String],
    tokens: &[String],
    logprobs: &[Option<f64>],
) -> Result<TextScore, BpcError> {
    let n = prefix_tokens.len();
    if tokens.len() < n || tokens[..n] != *prefix_tokens {
        return Err(BpcError::PrefixMismatch { n });
    }
    if tokens.len() == n {
        return Err(BpcError::Empty);
    }
    let mut sum = 0.0;
    for i in n..tokens.len() {
        match logprobs.get(i).copied().flatten() {
            Some(lp) => sum += lp,
            None => return Err(BpcError::MissingLogprob { index: i }),
        }
    }
    Ok(TextScore {
        logprob_nats: sum,
        tokens: tokens.len() - n,
    })
}

/// Bits per character for a pooled log-likelihood: −nats / ln 2 / chars. None for no characters.
pub fn bits_per_char(logprob_nats: f64, chars: usize) -> Option<f64> {
    (chars > 0).then(|| -logprob_nats / std::f64::consts::LN_2 / chars as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn bpc_arithmetic() {
        // 4 characters at probability 1/2 each = 1 bit per character.
        let lp = 4.0 * 0.5f64.ln();
        assert!((bits_per_char(lp, 4).unwrap_or(0.0) - 1.0).abs() < 1e-12);
        // 2 tokens of probability 1/16 over 2 characters = 4 bits per character.
        assert!((bits_per_char(2.0 * (1.0f64 / 16.0).ln(), 2).unwrap_or(0.0) - 4.0).abs() < 1e-12);
        assert_eq!(bits_per_char(-1.0, 0), None);
    }

    #[test]
    fn scores_tokens_after_the_prefix() {
        let prefix = s(&["<bos>", "\n"]);
        let toks = s(&["<bos>", "\n", "你好", "啊"]);
        let lps = vec![None, Some(-1.0), Some(-2.0), Some(-0.5)];
        let sc = score_text(&prefix, &toks, &lps).expect("scored");
        assert_eq!(sc.tokens, 2);
        assert!((sc.logprob_nats + 2.5).abs() < 1e-12);
        // No BOS: the prefix is the first token and has no log-probability; not counted.
        let sc = score_text(&s(&["\n"]), &s(&["\n", "喂"]), &[None, Some(-3.0)]).expect("scored");
        assert_eq!((sc.tokens, sc.logprob_nats), (1, -3.0));
    }

    #[test]
    fn rejects_merged_prefix_and_missing_logprobs() {
        let e = score_text(&s(&["\n"]), &s(&["\n喂"]), &[None]).unwrap_err();
        assert_eq!(e, BpcError::PrefixMismatch { n: 1 });
        let e = score_text(&s(&["\n"]), &s(&["\n", "喂"]), &[None, None]).unwrap_err();
        assert_eq!(e, BpcError::MissingLogprob { index: 1 });
        assert_eq!(
            score_text(&s(&["\n"]), &s(&["\n"]), &[None]).unwrap_err(),
            BpcError::Empty
        );
    }
}
