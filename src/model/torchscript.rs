//! TorchScript models (`model.kind: torchscript`, or a folder with `model.pt` and no
//! `model.safetensors`): a traced or scripted module, the format libtorch users and Triton's
//! libtorch backend ship.
//!
//! The contract (README, "Models"):
//! - `forward` takes `input_ids` and `attention_mask`, plus `token_type_ids` when it takes
//!   three (`model.torchscript_inputs`, else detected at load by trying two, then three), all
//!   int64 `[batch, seq]`, padded with `config.json`'s `pad_token_id`, mask 1 for real tokens;
//! - it returns a tensor (or a tuple / list whose first element is one, as a traced
//!   transformers model does; or a dict with `sentence_embedding`, `logits` or
//!   `last_hidden_state`): `[batch, dim]` pooled embeddings, `[batch, seq, dim]` token states
//!   (pooled by the server with `model.pooling`), or `[batch, classes]` logits;
//! - it runs in the precision it was saved in: `model.dtype` must stay `f32` (libtorch's
//!   `Module::to(dtype)` would also convert integer buffers such as a traced BERT's
//!   `position_ids`, and the module would fail); trace it in f16 / bf16 instead;
//! - the folder's `config.json` (the one transformers saved with the traced model) says what
//!   it is: `*ForSequenceClassification` in `architectures` makes it a classifier (a reranker
//!   with one label), with its `id2label` and `problem_type`; else an embedding model.

use tch::{CModule, IValue, Kind, Tensor};

use super::{
    Format, ModelError, ModelSpec, Task,
    bert::{Padded, pool, rows_to_vecs, token_rows},
};
use crate::config::Pooling;

/// A loaded TorchScript module on one device.
pub struct TorchScript {
    module: CModule,
    /// 2 or 3.
    inputs: usize,
    device: tch::Device,
}

impl TorchScript {
    /// Loads `model.pt` onto the spec's device, finds how many inputs
    /// `forward` takes, and checks that its output fits what the spec says the model serves.
    pub fn load(spec: &ModelSpec) -> Result<TorchScript, ModelError> {
        let file = spec.path.join("model.pt");
        let mut module =
            CModule::load_on_device(&file, spec.device).map_err(|e| ModelError::File {
                path: file.clone(),
                message: format!("not a TorchScript module libtorch can load: {e}"),
            })?;
        module.set_eval();
        let configured = match spec.format {
            Format::TorchScript { inputs } => inputs,
            Format::Safetensors(_) => None,
        };
        let mut ts = TorchScript {
            module,
            inputs: configured.unwrap_or(2),
            device: spec.device,
        };
        // A probe: two texts of three tokens each.
        let pad = spec.encoder.pad_token_id;
        let probe = Padded {
            rows: 2,
            cols: 3,
            ids: vec![pad; 6],
            type_ids: vec![0; 6],
            mask: vec![1; 6],
        };
        let out = match (configured, ts.raw(&probe)) {
            (_, Ok(out)) => out,
            (None, Err(two)) => {
                ts.inputs = 3;
                ts.raw(&probe).map_err(|three| {
                    ModelError::Config(format!(
                        "{}: forward fails with 2 inputs ({two}) and with 3 ({three})",
                        file.display()
                    ))
                })?
            }
            (Some(n), Err(e)) => {
                return Err(ModelError::Config(format!(
                    "{}: forward fails with model.torchscript_inputs = {n}: {e}",
                    file.display()
                )));
            }
        };
        let shape = out.size();
        let dim = spec.dim() as i64;
        if let (Task::Embedding, [2, d] | [2, 3, d]) = (spec.task, shape.as_slice())
            && *d != dim
        {
            // /info, ModelInfo and OpenAI's `dimensions` check report config.json's width;
            // a module with its own projection must say its real width there.
            return Err(ModelError::Config(format!(
                "{}: the module's embeddings have {d} dimensions but config.json's hidden_size \
                 is {dim}; set hidden_size to {d} (the width clients will get)",
                file.display()
            )));
        }
        let fits = match (spec.task, shape.as_slice()) {
            (Task::Embedding, [2, _] | [2, 3, _]) => true,
            (Task::Classifier | Task::Reranker, [2, n]) => *n == spec.labels.len() as i64,
            _ => false,
        };
        if !fits {
            return Err(ModelError::Config(format!(
                "{}: a batch of 2 texts × 3 tokens gave an output of shape {shape:?}; a {} \
                 model must give {}",
                file.display(),
                spec.task.as_str(),
                match spec.task {
                    Task::Embedding => "[2, dim] or [2, 3, dim]".to_string(),
                    _ => format!("[2, {}] (config.json's labels)", spec.labels.len()),
                }
            )));
        }
        Ok(ts)
    }

    /// Runs `forward` on a padded batch; the output tensor as the module returns it.
    fn raw(&self, batch: &Padded) -> Result<Tensor, ModelError> {
        let (b, l) = (batch.rows as i64, batch.cols as i64);
        let t = |v: &[i64]| -> Result<IValue, tch::TchError> {
            Ok(IValue::Tensor(
                Tensor::f_from_slice(v)?
                    .f_view([b, l])?
                    .f_to_device(self.device)?,
            ))
        };
        let mut args = vec![t(&batch.ids)?, t(&batch.mask)?];
        if self.inputs == 3 {
            args.push(t(&batch.type_ids)?);
        }
        let _guard = tch::no_grad_guard();
        let out = self.module.forward_is(&args)?;
        first_tensor(out)
    }

    /// One row per text: pooled embeddings (token states are pooled here) or logits, f32 on
    /// the CPU. A module that refuses the batch (a shape it does not take, say) is an error
    /// for this batch, not a panic.
    /// Rows marked in `tokens` get their token states, which a module that returns pooled
    /// embeddings does not have (an error).
    pub fn run(
        &self,
        batch: &Padded,
        pooling: Pooling,
        tokens: &[bool],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let out = self.raw(batch)?;
        if out.dim() == 3 {
            let (b, l) = (batch.rows as i64, batch.cols as i64);
            let mask = Tensor::f_from_slice(&batch.mask)?
                .f_view([b, l])?
                .f_to_device(self.device)?;
            let mut rows = rows_to_vecs(&pool(&out, &mask, pooling)?)?;
            token_rows(&out, batch, tokens, &mut rows)?;
            Ok(rows)
        } else if tokens.iter().any(|&t| t) {
            Err(ModelError::Config(
                "this TorchScript module returns pooled embeddings, not token states: it cannot \
                 serve /embed_all"
                    .into(),
            ))
        } else {
            Ok(rows_to_vecs(&out.f_to_kind(Kind::Float)?)?)
        }
    }
}

/// The output tensor of a module's result: itself, the first of a tuple or list, or a dict's
/// `sentence_embedding`, `logits` or `last_hidden_state`.
fn first_tensor(v: IValue) -> Result<Tensor, ModelError> {
    let refused = |what: String| ModelError::Config(format!("the TorchScript module {what}"));
    match v {
        IValue::Tensor(t) => Ok(t),
        IValue::Tuple(items) | IValue::GenericList(items) => match items.into_iter().next() {
            Some(first) => first_tensor(first),
            None => Err(refused("returned an empty tuple".into())),
        },
        IValue::TensorList(items) => items
            .into_iter()
            .next()
            .ok_or_else(|| refused("returned an empty list".into())),
        IValue::GenericDict(entries) => {
            for key in ["sentence_embedding", "logits", "last_hidden_state"] {
                if let Some((_, v)) = entries
                    .iter()
                    .find(|(k, _)| matches!(k, IValue::String(s) if s == key))
                    && let IValue::Tensor(t) = v
                {
                    return Ok(t.shallow_clone());
                }
            }
            Err(refused(
                "returned a dict without sentence_embedding, logits or last_hidden_state".into(),
            ))
        }
        other => Err(refused(format!(
            "returned {other:?}, not a tensor or a tuple of tensors"
        ))),
    }
}
