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

use std::collections::HashMap;

use tch::{Kind, TchError, Tensor};

use super::{Encoded, EncoderConfig, Family, ModelError, ModelSpec, Task, heads::Head};
use crate::config::{DType, Pooling};

/// Activation of the feed-forward layer.
#[derive(Debug, Clone, Copy)]
enum Activation {
    GeluErf,
    GeluTanh,
    Relu,
}

struct Layer {
    qkv_w: Tensor,
    qkv_b: Tensor,
    attn_out_w: Tensor,
    attn_out_b: Tensor,
    attn_ln_w: Tensor,
    attn_ln_b: Tensor,
    inter_w: Tensor,
    inter_b: Tensor,
    out_w: Tensor,
    out_b: Tensor,
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

/// Texts padded to the longest one, as flat row-major arrays (what becomes tensors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Padded {
    /// Texts in the batch.
    pub rows: usize,
    /// Tokens per row (the longest text).
    pub cols: usize,
    /// `rows × cols` token ids, padding with `pad_id`.
    pub ids: Vec<i64>,
    /// `rows × cols` segment ids.
    pub type_ids: Vec<i64>,
    /// `rows × cols` attention mask: 1 for a real token, 0 for padding.
    pub mask: Vec<i64>,
}

impl Padded {
    /// Pads `texts` to the longest of them (sentence-transformers' `padding=True`).
    pub fn new<'a>(texts: impl IntoIterator<Item = &'a Encoded>, pad_id: i64) -> Padded {
        let texts: Vec<&Encoded> = texts.into_iter().collect();
        let rows = texts.len();
        let cols = texts.iter().map(|t| t.len()).max().unwrap_or(0).max(1);
        let mut p = Padded {
            rows,
            cols,
            ids: vec![pad_id; rows * cols],
            type_ids: vec![0; rows * cols],
            mask: vec![0; rows * cols],
        };
        for (r, t) in texts.iter().enumerate() {
            let row = r * cols;
            p.ids[row..row + t.len()].copy_from_slice(&t.ids);
            p.type_ids[row..row + t.len()].copy_from_slice(&t.type_ids);
            p.mask[row..row + t.len()].fill(1);
        }
        p
    }

    /// Padded tokens in the batch (rows × cols), what the token budget counts.
    pub fn padded_tokens(&self) -> usize {
        self.rows * self.cols
    }
}

pub(super) fn torch_kind(d: DType) -> Kind {
    match d {
        DType::F32 => Kind::Float,
        DType::F16 => Kind::Half,
        DType::Bf16 => Kind::BFloat16,
    }
}

/// Named tensors from a safetensors file, found with or without the family's prefix
/// (`bert.`, `roberta.`, `distilbert.`: how transformers saves a model with a head).
pub(super) struct Weights {
    map: HashMap<String, Tensor>,
    device: tch::Device,
    kind: Kind,
    family: Family,
}

/// DistilBERT's name for a BERT weight name (`encoder.layer.0.attention.self.query.weight` →
/// `transformer.layer.0.attention.q_lin.weight`); other families use BERT's names.
fn family_name(family: Family, name: &str) -> String {
    if family != Family::DistilBert {
        return name.to_string();
    }
    let mut n = name.replace("encoder.layer.", "transformer.layer.");
    for (bert, distil) in [
        (".attention.self.query.", ".attention.q_lin."),
        (".attention.self.key.", ".attention.k_lin."),
        (".attention.self.value.", ".attention.v_lin."),
        (".attention.output.dense.", ".attention.out_lin."),
        (".attention.output.LayerNorm.", ".sa_layer_norm."),
        (".intermediate.dense.", ".ffn.lin1."),
        (".output.dense.", ".ffn.lin2."),
        (".output.LayerNorm.", ".output_layer_norm."),
    ] {
        n = n.replace(bert, distil);
    }
    n
}

impl Weights {
    /// The family whose names these are.
    pub(super) fn family(&self) -> Family {
        self.family
    }

    /// Takes the tensor `name` (BERT's name; mapped for the family), checking its shape, in
    /// the model's dtype on its device.
    pub(super) fn take(&mut self, name: &str, shape: &[i64]) -> Result<Tensor, ModelError> {
        let name = family_name(self.family, name);
        let name = name.as_str();
        let prefix = match self.family {
            Family::Bert => "bert.",
            Family::Roberta | Family::XlmRoberta => "roberta.",
            Family::DistilBert => "distilbert.",
        };
        let t = self
            .map
            .remove(name)
            .or_else(|| self.map.remove(&format!("{prefix}{name}")))
            .ok_or_else(|| ModelError::Weights(format!("no tensor named `{name}`")))?;
        if t.size() != shape {
            return Err(ModelError::Weights(format!(
                "`{name}` has shape {:?}, config.json implies {shape:?}",
                t.size()
            )));
        }
        Ok(t.f_to_kind(self.kind)?.f_to_device(self.device)?)
    }
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
        let tensors = Tensor::read_safetensors(&file).map_err(|e| ModelError::File {
            path: file.clone(),
            message: e.to_string(),
        })?;
        let family = match spec.format {
            super::Format::Safetensors(f) => f,
            super::Format::TorchScript { .. } => {
                return Err(ModelError::Config(
                    "a TorchScript model is not run by the safetensors encoder".into(),
                ));
            }
        };
        let mut w = Weights {
            map: tensors.into_iter().collect(),
            device: spec.device,
            kind: torch_kind(spec.dtype),
            family,
        };
        let (h, i) = (c.hidden_size, c.intermediate_size);
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
                qkv_w: Tensor::f_cat(&[q_w, k_w, v_w], 0)?,
                qkv_b: Tensor::f_cat(&[q_b, k_b, v_b], 0)?,
                attn_out_w: w.take(&format!("{p}.attention.output.dense.weight"), &[h, h])?,
                attn_out_b: w.take(&format!("{p}.attention.output.dense.bias"), &[h])?,
                attn_ln_w: w.take(&format!("{p}.attention.output.LayerNorm.weight"), &[h])?,
                attn_ln_b: w.take(&format!("{p}.attention.output.LayerNorm.bias"), &[h])?,
                inter_w: w.take(&format!("{p}.intermediate.dense.weight"), &[i, h])?,
                inter_b: w.take(&format!("{p}.intermediate.dense.bias"), &[i])?,
                out_w: w.take(&format!("{p}.output.dense.weight"), &[h, i])?,
                out_b: w.take(&format!("{p}.output.dense.bias"), &[h])?,
                out_ln_w: w.take(&format!("{p}.output.LayerNorm.weight"), &[h])?,
                out_ln_b: w.take(&format!("{p}.output.LayerNorm.bias"), &[h])?,
            });
        }
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
        Ok(Bert {
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
        })
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
        let qkv = x
            .f_linear(&layer.qkv_w, Some(&layer.qkv_b))?
            .f_view([b, l, 3, heads, head_dim])?
            .f_permute([2, 0, 3, 1, 4])?;
        let (q, k, v) = (qkv.f_get(0)?, qkv.f_get(1)?, qkv.f_get(2)?);
        let ctx =
            Tensor::f_scaled_dot_product_attention(&q, &k, &v, attend, 0.0, false, None, false)?
                .f_transpose(1, 2)?
                .f_reshape([b, l, h])?;
        let attn = ctx
            .f_linear(&layer.attn_out_w, Some(&layer.attn_out_b))?
            .f_add(x)?
            .f_layer_norm(
                [h],
                Some(&layer.attn_ln_w),
                Some(&layer.attn_ln_b),
                self.eps,
                true,
            )?;
        let inter = attn.f_linear(&layer.inter_w, Some(&layer.inter_b))?;
        let inter = match self.activation {
            Activation::GeluErf => inter.f_gelu("none")?,
            Activation::GeluTanh => inter.f_gelu("tanh")?,
            Activation::Relu => inter.f_relu()?,
        };
        inter
            .f_linear(&layer.out_w, Some(&layer.out_b))?
            .f_add(&attn)?
            .f_layer_norm(
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

/// Replaces the rows marked in `tokens` by their token states `[len, hidden]` (real tokens only,
/// flattened, f32 on the CPU), from `states` `[rows, cols, hidden]`.
pub fn token_rows(
    states: &Tensor,
    batch: &Padded,
    tokens: &[bool],
    out: &mut [Vec<f32>],
) -> Result<(), TchError> {
    if !tokens.iter().any(|&t| t) {
        return Ok(());
    }
    let states = states
        .f_to_kind(Kind::Float)?
        .f_to_device(tch::Device::Cpu)?;
    for (i, _) in tokens.iter().enumerate().filter(|(_, t)| **t) {
        let len: i64 = batch.mask[i * batch.cols..(i + 1) * batch.cols]
            .iter()
            .sum();
        let row = states
            .f_get(i as i64)?
            .f_narrow(0, 0, len)?
            .f_contiguous()?
            .f_flatten(0, -1)?;
        out[i] = Vec::<f32>::try_from(row)?;
    }
    Ok(())
}

/// A `[rows, width]` tensor as one f32 vector per row, on the CPU.
pub fn rows_to_vecs(rows: &Tensor) -> Result<Vec<Vec<f32>>, TchError> {
    let rows = rows
        .f_to_kind(Kind::Float)?
        .f_to_device(tch::Device::Cpu)?
        .f_contiguous()?;
    let dim = rows.size()[1] as usize;
    let flat = Vec::<f32>::try_from(rows.f_flatten(0, -1)?)?;
    Ok(flat.chunks(dim.max(1)).map(<[f32]>::to_vec).collect())
}

/// sentence-transformers' pooling of token states `[b, l, h]` under `mask` `[b, l]`, in f32.
pub fn pool(states: &Tensor, mask: &Tensor, pooling: Pooling) -> Result<Tensor, TchError> {
    let states = states.f_to_kind(Kind::Float)?;
    let maskf = mask.f_to_kind(Kind::Float)?.f_unsqueeze(-1)?;
    let dim1 = [1i64];
    match pooling {
        Pooling::Cls => states.f_select(1, 0),
        Pooling::Mean | Pooling::MeanSqrtLen => {
            let sum =
                states
                    .f_mul(&maskf)?
                    .f_sum_dim_intlist(dim1.as_slice(), false, Kind::Float)?;
            let count = maskf
                .f_sum_dim_intlist(dim1.as_slice(), false, Kind::Float)?
                .f_clamp_min(1e-9)?;
            if pooling == Pooling::Mean {
                sum.f_div(&count)
            } else {
                sum.f_div(&count.f_sqrt()?)
            }
        }
        Pooling::Max => states
            .f_masked_fill(&maskf.f_eq(0.0)?, -1e9)?
            .f_amax(dim1.as_slice(), false),
        Pooling::LastToken => {
            let last = mask
                .f_sum_dim_intlist(dim1.as_slice(), false, Kind::Int64)?
                .f_sub_scalar(1)?
                .f_clamp_min(0)?
                .f_view([-1, 1, 1])?
                .f_expand([-1, 1, states.size()[2]], false)?;
            states.f_gather(1, &last, false)?.f_squeeze_dim(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config, model::ModelSpec};

    /// A tiny BERT with random weights, written to `dir` the way transformers lays it out.
    fn tiny_model(dir: &std::path::Path, prefix: &str, skip: Option<&str>) {
        let (v, h, i, p, layers) = (50i64, 32i64, 64i64, 40i64, 2i64);
        std::fs::write(
            dir.join("config.json"),
            serde_json::json!({
                "model_type": "bert", "vocab_size": v, "hidden_size": h,
                "num_hidden_layers": layers, "num_attention_heads": 4, "intermediate_size": i,
                "max_position_embeddings": p, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
                "hidden_act": "gelu", "pad_token_id": 0
            })
            .to_string(),
        )
        .unwrap();
        // The spec reads the vocabulary's size from the tokenizer, as the server does.
        let vocab: serde_json::Map<String, serde_json::Value> = (0..v)
            .map(|t| (format!("t{t}"), serde_json::json!(t)))
            .collect();
        std::fs::write(
            dir.join("tokenizer.json"),
            serde_json::json!({
                "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
                "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
                "post_processor": null, "decoder": null,
                "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t1"}
            })
            .to_string(),
        )
        .unwrap();
        tch::manual_seed(7);
        let r = |shape: &[i64]| Tensor::randn(shape, (Kind::Float, tch::Device::Cpu)) * 0.2;
        let mut named: Vec<(String, Tensor)> = vec![
            ("embeddings.word_embeddings.weight".into(), r(&[v, h])),
            ("embeddings.position_embeddings.weight".into(), r(&[p, h])),
            ("embeddings.token_type_embeddings.weight".into(), r(&[2, h])),
            ("embeddings.LayerNorm.weight".into(), r(&[h]) + 1.0),
            ("embeddings.LayerNorm.bias".into(), r(&[h])),
        ];
        for l in 0..layers {
            let n = |s: &str| format!("encoder.layer.{l}.{s}");
            for proj in ["query", "key", "value"] {
                named.push((n(&format!("attention.self.{proj}.weight")), r(&[h, h])));
                named.push((n(&format!("attention.self.{proj}.bias")), r(&[h])));
            }
            named.push((n("attention.output.dense.weight"), r(&[h, h])));
            named.push((n("attention.output.dense.bias"), r(&[h])));
            named.push((n("attention.output.LayerNorm.weight"), r(&[h]) + 1.0));
            named.push((n("attention.output.LayerNorm.bias"), r(&[h])));
            named.push((n("intermediate.dense.weight"), r(&[i, h])));
            named.push((n("intermediate.dense.bias"), r(&[i])));
            named.push((n("output.dense.weight"), r(&[h, i])));
            named.push((n("output.dense.bias"), r(&[h])));
            named.push((n("output.LayerNorm.weight"), r(&[h]) + 1.0));
            named.push((n("output.LayerNorm.bias"), r(&[h])));
        }
        let named: Vec<(String, Tensor)> = named
            .into_iter()
            .filter(|(n, _)| Some(n.as_str()) != skip)
            .map(|(n, t)| (format!("{prefix}{n}"), t))
            .collect();
        Tensor::write_safetensors(&named, dir.join("model.safetensors")).unwrap();
    }

    fn spec(dir: &std::path::Path) -> ModelSpec {
        let cfg: config::Model =
            serde_yaml_like(&format!("path: {}\ndevice: cpu\n", dir.display()));
        ModelSpec::load(&cfg, tch::Device::Cpu).unwrap()
    }

    fn serde_yaml_like(yaml: &str) -> config::Model {
        config::Config::from_sources(
            &format!("model:\n  {}", yaml.replace('\n', "\n  ")),
            std::iter::empty(),
            &config::Overrides::default(),
        )
        .unwrap()
        .models
        .remove(0)
    }

    fn text(ids: &[i64]) -> Encoded {
        Encoded {
            ids: ids.to_vec(),
            type_ids: vec![0; ids.len()],
        }
    }

    fn close(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn padding_never_changes_a_texts_embedding() {
        let dir = tempfile::tempdir().unwrap();
        tiny_model(dir.path(), "", None);
        let model = Bert::load(&spec(dir.path())).unwrap();
        let short = text(&[2, 7, 9, 3]);
        let long = text(&[2, 11, 12, 13, 14, 15, 16, 17, 18, 3]);
        for pooling in [
            Pooling::Mean,
            Pooling::Cls,
            Pooling::Max,
            Pooling::MeanSqrtLen,
            Pooling::LastToken,
        ] {
            let alone = model
                .embed(&Padded::new([&short], 0), pooling, &[])
                .unwrap();
            let batched = model
                .embed(&Padded::new([&long, &short], 0), pooling, &[false, false])
                .unwrap();
            assert_eq!(batched.len(), 2);
            assert_eq!(alone[0].len(), 32);
            let d = close(&alone[0], &batched[1]);
            assert!(d < 1e-5, "{pooling:?}: padding changed the result by {d}");
            assert!(
                close(&batched[0], &batched[1]) > 1e-3,
                "different texts differ"
            );
        }
    }

    #[test]
    fn weights_load_with_or_without_the_bert_prefix() {
        let plain = tempfile::tempdir().unwrap();
        let prefixed = tempfile::tempdir().unwrap();
        tiny_model(plain.path(), "", None);
        tiny_model(prefixed.path(), "bert.", None);
        let t = text(&[2, 5, 6, 3]);
        let a = Bert::load(&spec(plain.path()))
            .unwrap()
            .embed(&Padded::new([&t], 0), Pooling::Mean, &[])
            .unwrap();
        let b = Bert::load(&spec(prefixed.path()))
            .unwrap()
            .embed(&Padded::new([&t], 0), Pooling::Mean, &[])
            .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn token_rows_hold_each_real_tokens_state_and_pool_to_the_embedding() {
        let dir = tempfile::tempdir().unwrap();
        tiny_model(dir.path(), "", None);
        let model = Bert::load(&spec(dir.path())).unwrap();
        let (short, long) = (text(&[2, 7, 9, 3]), text(&[2, 11, 12, 13, 14, 3]));
        let batch = Padded::new([&long, &short], 0);
        let pooled = model.embed(&batch, Pooling::Mean, &[false, false]).unwrap();
        let rows = model.embed(&batch, Pooling::Mean, &[false, true]).unwrap();
        assert_eq!(rows[0], pooled[0], "an unmarked row stays pooled");
        assert_eq!(
            rows[1].len(),
            4 * 32,
            "4 real tokens × hidden 32, no padding"
        );
        let mean: Vec<f32> = (0..32)
            .map(|d| (0..4).map(|t| rows[1][t * 32 + d]).sum::<f32>() / 4.0)
            .collect();
        assert!(
            close(&mean, &pooled[1]) < 1e-5,
            "mean of the token states is the pooled row"
        );
    }

    #[test]
    fn a_missing_tensor_is_named() {
        let dir = tempfile::tempdir().unwrap();
        tiny_model(dir.path(), "", Some("encoder.layer.1.output.dense.bias"));
        let err = Bert::load(&spec(dir.path())).err().expect("load must fail");
        assert!(
            err.to_string()
                .contains("encoder.layer.1.output.dense.bias"),
            "{err}"
        );
    }

    #[test]
    fn pooling_follows_sentence_transformers() {
        // states [1, 3, 2]; the third token is padding.
        let states = Tensor::from_slice(&[1.0f32, 10.0, 3.0, -2.0, 100.0, 100.0]).view([1, 3, 2]);
        let mask = Tensor::from_slice(&[1i64, 1, 0]).view([1, 2 + 1]);
        let get =
            |p| Vec::<f32>::try_from(pool(&states, &mask, p).unwrap().flatten(0, -1)).unwrap();
        assert_eq!(get(Pooling::Mean), vec![2.0, 4.0]);
        assert_eq!(get(Pooling::Cls), vec![1.0, 10.0]);
        assert_eq!(get(Pooling::Max), vec![3.0, 10.0]);
        assert_eq!(get(Pooling::LastToken), vec![3.0, -2.0]);
        let s = get(Pooling::MeanSqrtLen);
        assert!((s[0] - 4.0 / 2f32.sqrt()).abs() < 1e-6 && (s[1] - 8.0 / 2f32.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn padded_batches_pad_to_the_longest_text_only() {
        let p = Padded::new([&text(&[2, 3]), &text(&[2, 9, 9, 3])], 0);
        assert_eq!((p.rows, p.cols), (2, 4));
        assert_eq!(p.ids, vec![2, 3, 0, 0, 2, 9, 9, 3]);
        assert_eq!(p.mask, vec![1, 1, 0, 0, 1, 1, 1, 1]);
        assert_eq!(p.padded_tokens(), 8);
    }
}
