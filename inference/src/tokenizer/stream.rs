//! Incremental detokenization for streaming.
//!
//! Uses the prefix-offset / read-offset technique: the text for new tokens is computed by
//! decoding a short window that starts a few tokens back (so decoders that depend on context,
//! such as SentencePiece's leading-space handling, see the same neighbours as a full decode)
//! and emitting only what extends the window's already-emitted text. While the window's text
//! ends in U+FFFD (a character split over tokens), nothing is emitted.

use super::{Tokenizer, TokenizerError};

const REPLACEMENT: char = '\u{FFFD}';

/// Incremental detokenizer for streaming: never emits a partial UTF-8 character (no U+FFFD
/// from a character split over tokens). Special tokens are skipped in the text.
///
/// Invariant: the concatenation of every `push` result and `finish()` equals
/// `tokenizer.decode(all_pushed_ids, true)`.
#[derive(Debug, Clone)]
pub struct StreamDecoder {
    tokenizer: Tokenizer,
    /// Non-special ids pushed so far (special ids produce no text when skipped).
    ids: Vec<u32>,
    /// Start of the decode window.
    prefix_offset: usize,
    /// End of the already-emitted part of the window.
    read_offset: usize,
}

impl StreamDecoder {
    /// A decoder with no tokens yet. `Tokenizer` is cheap to clone (Arc inside).
    pub fn new(tokenizer: Tokenizer) -> Self {
        StreamDecoder {
            tokenizer,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    /// Adds one generated token; returns the newly completed text (may be empty).
    ///
    /// Errors: [`TokenizerError::IdOutOfRange`] for an id outside the vocabulary (the id is
    /// not recorded), [`TokenizerError::Hf`] if decoding fails.
    pub fn push(&mut self, id: u32) -> Result<String, TokenizerError> {
        if id as usize >= self.tokenizer.vocab_size() {
            return Err(TokenizerError::IdOutOfRange {
                id,
                vocab_size: self.tokenizer.vocab_size(),
            });
        }
        if self.tokenizer.is_special(id) {
            return Ok(String::new());
        }
        self.ids.push(id);
        let prefix_text = self
            .tokenizer
            .decode(&self.ids[self.prefix_offset..self.read_offset], true)?;
        let new_text = self
            .tokenizer
            .decode(&self.ids[self.prefix_offset..], true)?;
        if new_text.len() <= prefix_text.len() || new_text.ends_with(REPLACEMENT) {
            return Ok(String::new());
        }
        match new_text.get(prefix_text.len()..) {
            Some(delta) if new_text.starts_with(prefix_text.as_str()) => {
                let delta = delta.to_string();
                self.prefix_offset = self.read_offset;
                self.read_offset = self.ids.len();
                Ok(delta)
            }
            // The decoder rewrote earlier text (not prefix-stable): wait for more tokens.
            _ => Ok(String::new()),
        }
    }

    /// Returns any text still held back (at end of generation; lossy: an incomplete
    /// character becomes U+FFFD). The decoder can keep being used afterwards.
    pub fn finish(&mut self) -> String {
        if self.read_offset >= self.ids.len() {
            return String::new();
        }
        let window = &self.ids[self.prefix_offset..];
        let prefix = &self.ids[self.prefix_offset..self.read_offset];
        let (Ok(prefix_text), Ok(new_text)) = (
            self.tokenizer.decode(prefix, true),
            self.tokenizer.decode(window, true),
        ) else {
            return String::new();
        };
        let out = if new_text.starts_with(prefix_text.as_str()) {
            new_text
                .get(prefix_text.len()..)
                .unwrap_or_default()
                .to_string()
        } else {
            new_text
        };
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        out
    }
}
