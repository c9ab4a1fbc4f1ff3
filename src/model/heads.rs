//! Sequence-classification heads of transformers' `*ForSequenceClassification` models. Each
//! reads the first token's state and is one dense layer, an activation and an output layer:
//!
//! | family | dense | activation | output |
//! | --- | --- | --- | --- |
//! | BERT | `bert.pooler.dense` (the pooler) | tanh | `classifier` |
//! | RoBERTa, XLM-RoBERTa | `classifier.dense` | tanh | `classifier.out_proj` |
//! | DistilBERT | `pre_classifier` | ReLU | `classifier` |
//!
//! (Dropout sits between them in training only.) The output is the logits, `[rows, labels]`;
//! turning them into scores is the API's job (`crate::api::predict`).

use tch::Tensor;

use super::{Family, ModelError, bert::Weights};

#[derive(Debug, Clone, Copy)]
enum Activation {
    Tanh,
    Relu,
}

/// A classification head on one device.
pub struct Head {
    dense_w: Tensor,
    dense_b: Tensor,
    activation: Activation,
    out_w: Tensor,
    out_b: Tensor,
}

impl Head {
    /// Takes the head's weights for the family of `w` (hidden width `h`, `labels` outputs).
    pub(super) fn load(w: &mut Weights, h: i64, labels: i64) -> Result<Head, ModelError> {
        let (dense, activation, out) = match w.family() {
            Family::Bert => ("pooler.dense", Activation::Tanh, "classifier"),
            Family::Roberta | Family::XlmRoberta => {
                ("classifier.dense", Activation::Tanh, "classifier.out_proj")
            }
            Family::DistilBert => ("pre_classifier", Activation::Relu, "classifier"),
        };
        Ok(Head {
            dense_w: w.take(&format!("{dense}.weight"), &[h, h])?,
            dense_b: w.take(&format!("{dense}.bias"), &[h])?,
            activation,
            out_w: w.take(&format!("{out}.weight"), &[labels, h])?,
            out_b: w.take(&format!("{out}.bias"), &[labels])?,
        })
    }

    /// Logits `[rows, labels]` from token states `[rows, cols, hidden]`.
    pub fn logits(&self, states: &Tensor) -> Result<Tensor, tch::TchError> {
        let first = states.f_select(1, 0)?;
        let x = first.f_linear(&self.dense_w, Some(&self.dense_b))?;
        let x = match self.activation {
            Activation::Tanh => x.f_tanh()?,
            Activation::Relu => x.f_relu()?,
        };
        x.f_linear(&self.out_w, Some(&self.out_b))
    }
}
