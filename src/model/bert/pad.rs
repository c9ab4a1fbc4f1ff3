//! A batch padded to its longest text, and what becomes of its token states: pooling, token
//! rows, plain vectors.

use tch::{Kind, TchError, Tensor};

use crate::config::Pooling;
use crate::model::Encoded;

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
