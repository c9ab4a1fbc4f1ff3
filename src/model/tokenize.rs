//! Tokenization as sentence-transformers does it.
//!
//! The trap: MiniLM's `tokenizer.json` itself truncates at 128 and
//! pads every text to 128. sentence-transformers truncates at the model's `max_seq_length`
//! (256) and pads only to the longest text of a batch. So the file's own truncation and padding
//! are replaced here, and padding is done per batch by the model worker.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// One text, tokenized: what the encoder needs, unpadded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids, special tokens included.
    pub ids: Vec<i64>,
    /// Segment ids (all 0 for a single text).
    pub type_ids: Vec<i64>,
}

impl Encoded {
    /// Tokens in this text.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True for a text with no tokens at all (not even special ones).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Why a text could not be tokenized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenizeError {
    /// The text is longer than the model takes and the client asked not to truncate.
    #[error(
        "text {index} is longer than the model's maximum of {max} tokens and truncate is false"
    )]
    TooLong {
        /// Position of the text in its request.
        index: usize,
        /// The model's maximum sequence length.
        max: usize,
    },
    /// The tokenizer itself failed.
    #[error("text {index} could not be tokenized: {message}")]
    Failed {
        /// Position of the text in its request.
        index: usize,
        /// The tokenizer's message.
        message: String,
    },
}

/// A Hugging Face tokenizer set up to truncate at `max_seq_length` and not pad.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    max_len: usize,
}

impl TextTokenizer {
    /// Loads `tokenizer.json` from `dir`, overriding its truncation and padding.
    pub fn load(dir: &Path, max_seq_length: usize) -> Result<TextTokenizer, super::ModelError> {
        let file = dir.join("tokenizer.json");
        let refused = |message: String| super::ModelError::File {
            path: file.clone(),
            message,
        };
        let mut inner = Tokenizer::from_file(&file)
            .map_err(|e| refused(format!("cannot load tokenizer: {e}")))?;
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_seq_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| refused(format!("cannot set truncation: {e}")))?;
        inner.with_padding(None);
        Ok(TextTokenizer {
            inner,
            max_len: max_seq_length,
        })
    }

    /// Tokenizes one text (`index` is its place in the request, for error messages). With
    /// `truncate` false, a text over the maximum is an error instead of being cut.
    pub fn encode(
        &self,
        index: usize,
        text: &str,
        truncate: bool,
    ) -> Result<Encoded, TokenizeError> {
        self.encode_input(index, text.into(), truncate)
    }

    /// Tokenizes a pair of texts as one sequence, as a cross-encoder reads it (BERT:
    /// `[CLS] a [SEP] b [SEP]`, segment ids 1 for `b`). Truncation cuts the longer of the two
    /// first (transformers' `longest_first`).
    pub fn encode_pair(
        &self,
        index: usize,
        first: &str,
        second: &str,
        truncate: bool,
    ) -> Result<Encoded, TokenizeError> {
        self.encode_input(index, (first, second).into(), truncate)
    }

    fn encode_input(
        &self,
        index: usize,
        input: tokenizers::EncodeInput<'_>,
        truncate: bool,
    ) -> Result<Encoded, TokenizeError> {
        let enc = self
            .inner
            .encode_fast(input, true)
            .map_err(|e| TokenizeError::Failed {
                index,
                message: e.to_string(),
            })?;
        if !truncate && !enc.get_overflowing().is_empty() {
            return Err(TokenizeError::TooLong {
                index,
                max: self.max_len,
            });
        }
        Ok(Encoded {
            ids: enc.get_ids().iter().map(|&i| i64::from(i)).collect(),
            type_ids: enc.get_type_ids().iter().map(|&i| i64::from(i)).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minilm() -> TextTokenizer {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2");
        TextTokenizer::load(&dir, 256).expect("run `make setup` first")
    }

    #[test]
    fn truncates_at_max_seq_length_not_the_files_128_and_never_pads() {
        let t = minilm();
        let long = "word ".repeat(400);
        let e = t.encode(0, &long, true).unwrap();
        assert_eq!(e.len(), 256, "truncated at 256, [CLS] and [SEP] included");
        assert_eq!(e.ids[0], 101);
        assert_eq!(*e.ids.last().unwrap(), 102, "[SEP] survives truncation");
        let short = t.encode(0, "Hello world, this is a test.", true).unwrap();
        assert_eq!(short.len(), 10, "no padding to 128");
        assert_eq!(t.encode(0, "", true).unwrap().len(), 2);
    }

    #[test]
    fn truncate_false_refuses_long_texts_naming_them() {
        let t = minilm();
        let err = t.encode(3, &"word ".repeat(300), false).unwrap_err();
        assert_eq!(err, TokenizeError::TooLong { index: 3, max: 256 });
        assert!(err.to_string().contains("text 3"));
        // Exactly at the limit is fine: 254 words + [CLS] + [SEP].
        assert_eq!(t.encode(0, &"word ".repeat(254), false).unwrap().len(), 256);
    }

    #[test]
    fn pairs_get_two_segments_and_truncate_the_longer_text_first() {
        let t = minilm();
        let e = t.encode_pair(0, "a question", "the answer", true).unwrap();
        // [CLS] a question [SEP] the answer [SEP]
        assert_eq!(e.len(), 7);
        assert_eq!(e.type_ids, vec![0, 0, 0, 0, 1, 1, 1]);
        assert_eq!(e.ids[0], 101);
        assert_eq!(e.ids.iter().filter(|&&i| i == 102).count(), 2);
        let long = "word ".repeat(400);
        let e = t.encode_pair(0, "short query", &long, true).unwrap();
        assert_eq!(e.len(), 256);
        assert_eq!(&e.type_ids[..4], &[0, 0, 0, 0], "the query survives whole");
        assert_eq!(*e.ids.last().unwrap(), 102);
        let err = t.encode_pair(2, "q", &long, false).unwrap_err();
        assert_eq!(err, TokenizeError::TooLong { index: 2, max: 256 });
    }
}
