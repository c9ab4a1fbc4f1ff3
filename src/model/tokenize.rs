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
    /// A token id given as input is not in the vocabulary.
    #[error("input {index} holds token id {id}, outside the vocabulary of {vocab} tokens")]
    UnknownId {
        /// Position of the input in its request.
        index: usize,
        /// The id.
        id: u32,
        /// The vocabulary's size.
        vocab: usize,
    },
    /// Token ids given as input are empty.
    #[error("input {index} is an empty list of token ids")]
    NoIds {
        /// Position of the input in its request.
        index: usize,
    },
}

/// One input as clients give it: a text, or token ids already made (TEI accepts both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextInput {
    /// A text to tokenize.
    Text(String),
    /// Token ids, used as they are (no special tokens added).
    Ids(Vec<u32>),
}

impl TextInput {
    /// Its length in characters (a text) or ids, what `server.max_input_chars` bounds.
    pub fn chars(&self) -> usize {
        match self {
            TextInput::Text(t) => t.chars().count(),
            TextInput::Ids(ids) => ids.len(),
        }
    }

    /// An upper bound of [`TextInput::chars`] that costs nothing to compute.
    pub fn len_bound(&self) -> usize {
        match self {
            TextInput::Text(t) => t.len(),
            TextInput::Ids(ids) => ids.len(),
        }
    }
}

impl From<String> for TextInput {
    fn from(s: String) -> Self {
        TextInput::Text(s)
    }
}

impl From<&str> for TextInput {
    fn from(s: &str) -> Self {
        TextInput::Text(s.to_string())
    }
}

/// Which end of an over-long text truncation cuts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Direction {
    /// Keep the beginning (sentence-transformers' and TEI's default).
    #[default]
    Right,
    /// Keep the end.
    Left,
}

/// One token of a text, as `/tokenize` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// Its id.
    pub id: u32,
    /// The text it covers (a special token's own string).
    pub text: String,
    /// A special token (`[CLS]`, `[SEP]`).
    pub special: bool,
    /// Character offsets in the input (none for a special token).
    pub span: Option<(usize, usize)>,
}

/// A Hugging Face tokenizer set up to truncate at `max_seq_length` and not pad: one copy per
/// truncation direction.
#[derive(Clone)]
pub struct TextTokenizer {
    right: Tokenizer,
    left: Tokenizer,
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
        let base = Tokenizer::from_file(&file)
            .map_err(|e| refused(format!("cannot load tokenizer: {e}")))?;
        let truncating = |direction| -> Result<Tokenizer, super::ModelError> {
            let mut t = base.clone();
            t.with_truncation(Some(TruncationParams {
                direction,
                max_length: max_seq_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| refused(format!("cannot set truncation: {e}")))?;
            t.with_padding(None);
            Ok(t)
        };
        Ok(TextTokenizer {
            right: truncating(TruncationDirection::Right)?,
            left: truncating(TruncationDirection::Left)?,
            max_len: max_seq_length,
        })
    }

    fn by(&self, direction: Direction) -> &Tokenizer {
        match direction {
            Direction::Right => &self.right,
            Direction::Left => &self.left,
        }
    }

    /// Tokenizes one text (`index` is its place in the request, for error messages). With
    /// `truncate` false, a text over the maximum is an error instead of being cut.
    pub fn encode(
        &self,
        index: usize,
        text: &str,
        truncate: bool,
    ) -> Result<Encoded, TokenizeError> {
        self.encode_input(
            index,
            &TextInput::Text(text.into()),
            None,
            truncate,
            Direction::Right,
        )
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
        self.encode_input(
            index,
            &TextInput::Text(first.into()),
            Some(second),
            truncate,
            Direction::Right,
        )
    }

    /// Tokenizes one input: a text (with its second segment `pair`, if any) or token ids
    /// (used as they are, checked against the vocabulary), truncated at `direction`'s end, or
    /// refused when over-long and `truncate` is false.
    pub fn encode_input(
        &self,
        index: usize,
        input: &TextInput,
        pair: Option<&str>,
        truncate: bool,
        direction: Direction,
    ) -> Result<Encoded, TokenizeError> {
        let text = match input {
            TextInput::Text(t) => t.as_str(),
            TextInput::Ids(ids) => return self.encode_ids(index, ids, truncate, direction),
        };
        let input: tokenizers::EncodeInput<'_> = match pair {
            Some(second) => (text, second).into(),
            None => text.into(),
        };
        let enc =
            self.by(direction)
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

    fn encode_ids(
        &self,
        index: usize,
        ids: &[u32],
        truncate: bool,
        direction: Direction,
    ) -> Result<Encoded, TokenizeError> {
        if ids.is_empty() {
            return Err(TokenizeError::NoIds { index });
        }
        let vocab = self.right.get_vocab_size(true);
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(TokenizeError::UnknownId { index, id, vocab });
        }
        let ids = if ids.len() <= self.max_len {
            ids
        } else if !truncate {
            return Err(TokenizeError::TooLong {
                index,
                max: self.max_len,
            });
        } else {
            match direction {
                Direction::Right => &ids[..self.max_len],
                Direction::Left => &ids[ids.len() - self.max_len..],
            }
        };
        Ok(Encoded {
            ids: ids.iter().map(|&i| i64::from(i)).collect(),
            type_ids: vec![0; ids.len()],
        })
    }

    /// Every token of `text` with its text, whether it is special, and its character offsets
    /// (what `/tokenize` answers; no truncation).
    pub fn inspect(
        &self,
        index: usize,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<Vec<TokenInfo>, TokenizeError> {
        let mut t = self.right.clone();
        t.with_truncation(None).map_err(|e| TokenizeError::Failed {
            index,
            message: e.to_string(),
        })?;
        let enc = t
            .encode_char_offsets(text, add_special_tokens)
            .map_err(|e| TokenizeError::Failed {
                index,
                message: e.to_string(),
            })?;
        Ok(enc
            .get_ids()
            .iter()
            .zip(enc.get_offsets())
            .zip(enc.get_special_tokens_mask())
            .zip(enc.get_tokens())
            .map(|(((&id, &(start, stop)), &special), token)| {
                if special == 1 {
                    TokenInfo {
                        id,
                        text: token.clone(),
                        special: true,
                        span: None,
                    }
                } else {
                    TokenInfo {
                        id,
                        text: text.chars().skip(start).take(stop - start).collect(),
                        special: false,
                        span: Some((start, stop)),
                    }
                }
            })
            .collect())
    }

    /// The text of token ids (what `/decode` answers).
    pub fn decode(
        &self,
        index: usize,
        ids: &[u32],
        skip_special_tokens: bool,
    ) -> Result<String, TokenizeError> {
        let vocab = self.right.get_vocab_size(true);
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(TokenizeError::UnknownId { index, id, vocab });
        }
        self.right
            .decode(ids, skip_special_tokens)
            .map_err(|e| TokenizeError::Failed {
                index,
                message: e.to_string(),
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
    fn truncation_keeps_the_end_asked_for_and_ids_are_taken_as_given() {
        let t = minilm();
        let long = (0..300)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        let input = TextInput::Text(long);
        let right = t
            .encode_input(0, &input, None, true, Direction::Right)
            .unwrap();
        let left = t
            .encode_input(0, &input, None, true, Direction::Left)
            .unwrap();
        assert_eq!((right.len(), left.len()), (256, 256));
        assert_ne!(right.ids[1], left.ids[1], "different ends kept");
        assert_eq!(
            (left.ids[0], *left.ids.last().unwrap()),
            (101, 102),
            "specials kept"
        );
        let ids = TextInput::Ids(vec![101, 7592, 102]);
        let e = t
            .encode_input(0, &ids, None, false, Direction::Right)
            .unwrap();
        assert_eq!(e.ids, vec![101, 7592, 102]);
        let bad = TextInput::Ids(vec![101, 99_999]);
        let err = t
            .encode_input(4, &bad, None, true, Direction::Right)
            .unwrap_err();
        assert_eq!(
            err,
            TokenizeError::UnknownId {
                index: 4,
                id: 99_999,
                vocab: 30522
            }
        );
    }

    #[test]
    fn inspect_and_decode_round_trip() {
        let t = minilm();
        let tokens = t.inspect(0, "Hello world", true).unwrap();
        let texts: Vec<&str> = tokens.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(texts, ["[CLS]", "Hello", "world", "[SEP]"]);
        assert_eq!(tokens[2].span, Some((6, 11)));
        assert!(tokens[0].special && !tokens[1].special);
        let ids: Vec<u32> = tokens.iter().map(|t| t.id).collect();
        assert_eq!(t.decode(0, &ids, true).unwrap(), "hello world");
        assert_eq!(t.decode(0, &ids, false).unwrap(), "[CLS] hello world [SEP]");
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
