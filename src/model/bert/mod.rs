//! A BERT-family encoder in tch, loading Hugging Face `model.safetensors` (weight names with
//! or without the `bert.` / `roberta.` / `distilbert.` prefix), plus padding and pooling.
//! RoBERTa and XLM-RoBERTa are BERT with position ids counted from `pad_token_id + 1` and no
//! segment types; DistilBERT is BERT with other weight names and no segment types. With a
//! classification head ([`super::heads::Head`]) the rows are logits instead of embeddings.
//!
//! The layer is the standard post-LayerNorm BERT block; the query, key and value projections
//! are fused into one matrix at load time and attention runs through libtorch's
//! `scaled_dot_product_attention` (its fused CPU/GPU kernels), with the padding mask as a
//! boolean mask so padding never changes a text's result.
//!
//! [`linear`] holds the forms of the linear layers, [`weights`] reads the safetensors file,
//! [`pad`] pads a batch and pools its token states.

mod linear;
mod pad;
#[cfg(test)]
mod tests;
mod weights;

use tch::{Kind, TchError, Tensor};

pub use linear::LinearForm;
pub use pad::{Padded, pool, rows_to_vecs, token_rows};
pub(super) use weights::Weights;
use weights::torch_kind;

use super::{EncoderConfig, Family, ModelError, ModelSpec, Task, heads::Head};
use crate::config::Pooling;
use linear::{Linear, Then};

/// Activation of the feed-forward layer.
#[derive(Debug, Clone, Copy)]
enum Activation {
    GeluErf,
    GeluTanh,
    Relu,
}

impl Activation {
    /// As it follows the intermediate product.
    fn then(self) -> Then<'static> {
        match self {
            Activation::GeluErf => Then::GeluErf,
            Activation::GeluTanh => Then::GeluTanh,
            Activation::Relu => Then::Relu,
        }
    }
}

/// One encoder layer's weights; the projections in the form [`Linear`] picks.
struct Layer {
    qkv: Linear,
    attn_out: Linear,
    attn_ln_w: Tensor,
    attn_ln_b: Tensor,
    inter: Linear,
    out: Linear,
    out_ln_w: Tensor,
    out_ln_b: Tensor,
}

/// The encoder's weights on one device, ready for forwards.
pub struct Bert {
    word: Tensor,
    position: Tensor,
    /// Segment embeddings; `None` for families without segments (their ids are ignored).
    token_type: Option<Tensor>,
    /// RoBERTa: positions count from this padding id + 1, over non-padding tokens only.
    position_pad: Option<i64>,
    /// A classifier's head; `None` for an embedding model.
    head: Option<Head>,
    emb_ln_w: Tensor,
    emb_ln_b: Tensor,
    layers: Vec<Layer>,
    heads: i64,
    hidden: i64,
    eps: f64,
    activation: Activation,
    device: tch::Device,
    /// Position embeddings plus segment type 0's, summed once at load: the embedding sum of a
    /// batch whose segment ids are all 0 (every single-text batch) is one gather and one add.
    /// `None` when positions are RoBERTa's (they depend on the ids) or there are no segments.
    position_type0: Option<Tensor>,
}

impl Bert {
    /// Loads `model.safetensors` from the spec's folder onto its device in its dtype.
    pub fn load(spec: &ModelSpec) -> Result<Bert, ModelError> {
        let c: &EncoderConfig = &spec.encoder;
        let activation = match c.hidden_act.as_str() {
            "gelu" => Activation::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => {
                return Err(ModelError::Config(format!(
                    "config.json: hidden_act `{other}` is not supported (gelu, gelu_new, relu)"
                )));
            }
        };
        let file = spec.path.join("model.safetensors");
        let family = match spec.format {
            super::Format::Safetensors(f) => f,
            super::Format::TorchScript { .. } => {
                return Err(ModelError::Config(
                    "a TorchScript model is not run by the safetensors encoder".into(),
                ));
            }
        };
        let mut w = Weights::open(&file, spec.device, torch_kind(spec.dtype), family)?;
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let form = LinearForm::from_env()?;
        let _guard = tch::no_grad_guard();
        let mut layers = Vec::with_capacity(c.num_hidden_layers as usize);
        for n in 0..c.num_hidden_layers {
            let p = format!("encoder.layer.{n}");
            let q_w = w.take(&format!("{p}.attention.self.query.weight"), &[h, h])?;
            let k_w = w.take(&format!("{p}.attention.self.key.weight"), &[h, h])?;
            let v_w = w.take(&format!("{p}.attention.self.value.weight"), &[h, h])?;
            let q_b = w.take(&format!("{p}.attention.self.query.bias"), &[h])?;
            let k_b = w.take(&format!("{p}.attention.self.key.bias"), &[h])?;
            let v_b = w.take(&format!("{p}.attention.self.value.bias"), &[h])?;
            layers.push(Layer {
                qkv: Linear::new(
                    Tensor::f_cat(&[q_w, k_w, v_w], 0)?,
                    Tensor::f_cat(&[q_b, k_b, v_b], 0)?,
                    form,
                )?,
                attn_out: Linear::new(
                    w.take(&format!("{p}.attention.output.dense.weight"), &[h, h])?,
                    w.take(&format!("{p}.attention.output.dense.bias"), &[h])?,
                    form,
                )?,
                attn_ln_w: w.take(&format!("{p}.attention.output.LayerNorm.weight"), &[h])?,
                attn_ln_b: w.take(&format!("{p}.attention.output.LayerNorm.bias"), &[h])?,
                inter: Linear::new(
                    w.take(&format!("{p}.intermediate.dense.weight"), &[i, h])?,
                    w.take(&format!("{p}.intermediate.dense.bias"), &[i])?,
                    form,
                )?,
                out: Linear::new(
                    w.take(&format!("{p}.output.dense.weight"), &[h, i])?,
                    w.take(&format!("{p}.output.dense.bias"), &[h])?,
                    form,
                )?,
                out_ln_w: w.take(&format!("{p}.output.LayerNorm.weight"), &[h])?,
                out_ln_b: w.take(&format!("{p}.output.LayerNorm.bias"), &[h])?,
            });
        }
        let forms: std::collections::BTreeSet<&str> = layers
            .iter()
            .flat_map(|l| [&l.qkv, &l.attn_out, &l.inter, &l.out])
            .map(Linear::name)
            .collect();
        tracing::info!(
            model = %spec.path.display(),
            linear = forms.into_iter().collect::<Vec<_>>().join("+"),
            asked = ?form,
            "linear layers' form (README \"Performance\"; {} forces one)",
            LinearForm::VAR
        );
        let position = w.take(
            "embeddings.position_embeddings.weight",
            &[c.max_position_embeddings, h],
        )?;
        let token_type = match family {
            Family::DistilBert => None,
            _ => Some(w.take(
                "embeddings.token_type_embeddings.weight",
                &[c.type_vocab_size, h],
            )?),
        };
        let position_pad = family.offset_positions().then_some(c.pad_token_id);
        let position_type0 = match (&token_type, position_pad) {
            (Some(t), None) => Some(position.f_add(&t.f_get(0)?)?),
            _ => None,
        };
        let bert = Bert {
            word: w.take("embeddings.word_embeddings.weight", &[c.vocab_size, h])?,
            position,
            token_type,
            position_pad,
            position_type0,
            head: match spec.task {
                Task::Embedding => None,
                Task::Classifier | Task::Reranker => {
                    Some(Head::load(&mut w, h, spec.labels.len() as i64)?)
                }
            },
            emb_ln_w: w.take("embeddings.LayerNorm.weight", &[h])?,
            emb_ln_b: w.take("embeddings.LayerNorm.bias", &[h])?,
            layers,
            heads: c.num_attention_heads,
            hidden: h,
            eps: c.layer_norm_eps,
            activation,
            device: spec.device,
        };
        drop(w);
        super::memory::trim_heap();
        Ok(bert)
    }

    /// Token states `[rows, cols, hidden]` for a padded batch (in the weights' dtype), and the
    /// attention mask. Every libtorch call is the fallible one (`f_*`): an error (out of
    /// memory, say) comes back as an error, never as a panic.
    pub fn forward(&self, batch: &Padded) -> Result<(Tensor, Tensor), TchError> {
        let (b, l) = (batch.rows as i64, batch.cols as i64);
        let dev = self.device;
        // A batch without padding (every single text, and texts of one length) needs no
        // attention mask (nor the masking work in the attention kernel).
        let padded = batch.mask.contains(&0);
        let ids = Tensor::f_from_slice(&batch.ids)?
            .f_view([b, l])?
            .f_to_device(dev)?;
        let mask = Tensor::f_from_slice(&batch.mask)?
            .f_view([b, l])?
            .f_to_device(dev)?;
        let h = self.hidden;
        let word = Tensor::f_embedding(&self.word, &ids, -1, false, false)?;
        let x = match &self.position_type0 {
            // BERT's positions are 0..l, the same for every row: a slice broadcast over the
            // rows, with segment 0 already added in.
            Some(pt0) if batch.type_ids.iter().all(|&t| t == 0) => {
                word.f_add(&pt0.f_narrow(0, 0, l)?)?
            }
            _ => {
                let positions = match self.position_pad {
                    None => Tensor::f_arange(l, (Kind::Int64, dev))?.f_unsqueeze(0)?,
                    // transformers' create_position_ids_from_input_ids: real tokens count up
                    // from pad + 1, padding tokens sit at pad.
                    Some(pad) => {
                        let real = ids.f_ne(pad)?.f_to_kind(Kind::Int64)?;
                        real.f_cumsum(1, Kind::Int64)?
                            .f_mul(&real)?
                            .f_add_scalar(pad)?
                    }
                };
                let mut x = word.f_add(&Tensor::f_embedding(
                    &self.position,
                    &positions,
                    -1,
                    false,
                    false,
                )?)?;
                if let Some(token_type) = &self.token_type {
                    // RoBERTa has one segment type: its tokenizers give no segment ids, so 0.
                    let types = if self.position_pad.is_some() {
                        Tensor::f_zeros([b, l], (Kind::Int64, dev))?
                    } else {
                        Tensor::f_from_slice(&batch.type_ids)?
                            .f_view([b, l])?
                            .f_to_device(dev)?
                    };
                    x = x.f_add(&Tensor::f_embedding(token_type, &types, -1, false, false)?)?;
                }
                x
            }
        };
        let mut x = x.f_layer_norm(
            [h],
            Some(&self.emb_ln_w),
            Some(&self.emb_ln_b),
            self.eps,
            true,
        )?;
        // Boolean mask, true where a key may be attended to: [b, 1, 1, l].
        let attend = if padded {
            Some(mask.f_to_kind(Kind::Bool)?.f_view([b, 1, 1, l])?)
        } else {
            None
        };
        for layer in &self.layers {
            x = self.layer(layer, &x, attend.as_ref())?;
        }
        Ok((x, mask))
    }

    /// One encoder layer, op by op: states `[b, l, hidden]` in and out; `attend` is the
    /// boolean attention mask `[b, 1, 1, l]` (`None` for a batch without padding).
    fn layer(
        &self,
        layer: &Layer,
        x: &Tensor,
        attend: Option<&Tensor>,
    ) -> Result<Tensor, TchError> {
        let (b, l, h) = x.size3()?;
        let heads = self.heads;
        let head_dim = h / heads;
        // Each intermediate is dropped as soon as the next op has read it, and the activation
        // and the residual adds run on a product's fresh output (in the panel kernel's
        // epilogue where it runs, else in place): a large batch's forward then holds about half
        // the activations at once (docs/cpu-forward.md, "Resident memory"), and skips two
        // allocations per layer.
        let ctx = {
            let qkv = layer
                .qkv
                .forward(x)?
                .f_view([b, l, 3, heads, head_dim])?
                .f_permute([2, 0, 3, 1, 4])?;
            let (q, k, v) = (qkv.f_get(0)?, qkv.f_get(1)?, qkv.f_get(2)?);
            Tensor::f_scaled_dot_product_attention(&q, &k, &v, attend, 0.0, false, None, false)?
                .f_transpose(1, 2)?
                .f_reshape([b, l, h])?
        };
        let projected = layer.attn_out.forward_then(&ctx, Then::Add(x))?;
        drop(ctx);
        let attn = projected.f_layer_norm(
            [h],
            Some(&layer.attn_ln_w),
            Some(&layer.attn_ln_b),
            self.eps,
            true,
        )?;
        drop(projected);
        let inter = layer.inter.forward_then(&attn, self.activation.then())?;
        let out = layer.out.forward_then(&inter, Then::Add(&attn))?;
        drop(inter);
        drop(attn);
        out.f_layer_norm(
            [h],
            Some(&layer.out_ln_w),
            Some(&layer.out_ln_b),
            self.eps,
            true,
        )
    }

    /// Forward plus pooling: one f32 vector per text, on the CPU, not normalised. A
    /// classifier's rows are its logits (the head reads the first token's state). Rows marked
    /// in `tokens` get their token states instead (every real token's vector, flattened).
    pub fn embed(
        &self,
        batch: &Padded,
        pooling: Pooling,
        tokens: &[bool],
    ) -> Result<Vec<Vec<f32>>, TchError> {
        let _guard = tch::no_grad_guard();
        let (states, mask) = self.forward(batch)?;
        let rows = match &self.head {
            // Without padding, mean pooling is the plain mean over the tokens.
            None if pooling == Pooling::Mean && !batch.mask.contains(&0) => {
                states.f_mean_dim([1i64].as_slice(), false, Kind::Float)?
            }
            None => pool(&states, &mask, pooling)?,
            Some(head) => head.logits(&states)?,
        };
        let mut out = rows_to_vecs(&rows)?;
        token_rows(&states, batch, tokens, &mut out)?;
        Ok(out)
    }
}
