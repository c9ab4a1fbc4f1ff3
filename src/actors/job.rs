//! What one request asks of a model: a [`Job`], built once by the front end from the request's
//! typed body (whatever its protocol) and carried unchanged into the actors. Its parts go where
//! they are used, moved, not copied: the [`Texts`] to a tokenizer thread ([`Tokenize`]), the
//! [`Rows`] to the Router's record of the request, which shapes the rows when the last one is
//! back. So the protocols cannot drift apart on normalisation, truncation or the Matryoshka
//! cut: those are decided here ([`Rows::shape`]) for every one of them.
//!
//! [`Tokenize`]: super::tokenizer::Tokenize

use crate::{
    config::Priority,
    model::{Direction, ModelSpec, Task, TextInput, normalize_l2},
};

/// A request's work: its texts, how its rows are shaped, and how urgent it is.
#[derive(Debug, Clone)]
pub struct Job {
    /// What the tokenizer gets.
    pub texts: Texts,
    /// How the rows come back.
    pub rows: Rows,
    /// The body's `priority` field; `None`: the call's (header, route), else by size.
    pub priority: Option<Priority>,
}

/// The inputs of a [`Job`], as the tokenizer takes them.
#[derive(Debug, Clone)]
pub struct Texts {
    /// Texts or token ids, in order.
    pub inputs: Vec<TextInput>,
    /// Second segments (cross-encoders), one per input; `None` for single texts.
    pub pairs: Option<Vec<String>>,
    /// Truncate over-long inputs (else they fail the request).
    pub truncate: bool,
    /// Which end truncation cuts.
    pub direction: Direction,
}

/// How a [`Job`]'s rows are shaped once the model has run.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    /// L2-normalise; `None` for the model's default. A classifier's logits and token states
    /// never are.
    pub normalize: Option<bool>,
    /// Every token's state instead of the pooled row.
    pub all_tokens: bool,
    /// The Matryoshka cut: keep the first this many dimensions (then normalise). The front
    /// end checks it against the model's width.
    pub dimensions: Option<usize>,
}

impl Job {
    /// `inputs` with the defaults: the model's normalisation, truncation at the right, the
    /// whole row.
    pub fn of(inputs: Vec<TextInput>) -> Job {
        Job {
            texts: Texts {
                inputs,
                pairs: None,
                truncate: true,
                direction: Direction::Right,
            },
            rows: Rows::default(),
            priority: None,
        }
    }
}

impl Rows {
    /// Whether rows of model `spec` are L2-normalised: an embedding model's pooled rows, as the
    /// request asks or else as the model does by default.
    pub fn normalized(&self, spec: &ModelSpec) -> bool {
        spec.task == Task::Embedding && !self.all_tokens && self.normalize.unwrap_or(spec.normalize)
    }

    /// Shapes a request's rows as it asked, the one place this is done for every protocol: the
    /// Matryoshka cut first, then the normalisation (of what is kept), as sentence-transformers'
    /// `truncate_dim` does.
    pub fn shape(&self, spec: &ModelSpec, rows: &mut [Vec<f32>]) {
        let normalize = self.normalized(spec);
        let dimensions = self.dimensions.filter(|_| !self.all_tokens);
        for row in rows {
            cut(row, dimensions, normalize);
        }
    }
}

/// Keeps the first `dimensions` components of `row` (Matryoshka), then L2-normalises what is
/// kept when `normalize`.
pub fn cut(row: &mut Vec<f32>, dimensions: Option<usize>, normalize: bool) {
    if let Some(d) = dimensions {
        row.truncate(d);
    }
    if normalize {
        normalize_l2(row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matryoshka_keeps_the_first_dimensions_then_normalises() {
        let mut row = vec![3.0, 4.0, 12.0];
        cut(&mut row, Some(2), true);
        assert_eq!(row, [0.6, 0.8]);
        let mut row = vec![3.0, 4.0, 12.0];
        cut(&mut row, None, false);
        assert_eq!(row, [3.0, 4.0, 12.0]);
    }
}
