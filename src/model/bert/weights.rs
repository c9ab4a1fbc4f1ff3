//! The weights of a `model.safetensors` file, read tensor by tensor as the encoder takes them.
//!
//! Why not `Tensor::read_safetensors`: it reads the whole file into one buffer and copies every
//! tensor out of it, so loading held the file twice (182 MB for all-MiniLM-L6-v2's 91 MB), and
//! that moment set the process's peak resident memory. Here only the header is parsed up front;
//! [`Weights::take`] reads one tensor's bytes straight into its own storage (`pread`), so the
//! load never holds more than the tensors it keeps plus the one being converted.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use crate::config::DType;
use crate::model::{Family, ModelError};

/// libtorch's element type for a configured dtype.
pub(in crate::model) fn torch_kind(d: DType) -> Kind {
    match d {
        DType::F32 => Kind::Float,
        DType::F16 => Kind::Half,
        DType::Bf16 => Kind::BFloat16,
    }
}

/// Where one tensor lies in the file, from the header.
struct Entry {
    kind: Result<Kind, String>,
    shape: Vec<i64>,
    /// Byte range in the file (absolute).
    start: u64,
    end: u64,
}

/// Named tensors from a safetensors file, found with or without the family's prefix
/// (`bert.`, `roberta.`, `distilbert.`: how transformers saves a model with a head).
pub(in crate::model) struct Weights {
    file: std::fs::File,
    path: PathBuf,
    map: HashMap<String, Entry>,
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

/// libtorch's element type for a safetensors dtype name.
fn kind_of(dtype: &str) -> Result<Kind, String> {
    Ok(match dtype {
        "F32" => Kind::Float,
        "F16" => Kind::Half,
        "BF16" => Kind::BFloat16,
        "F64" => Kind::Double,
        "I64" => Kind::Int64,
        "I32" => Kind::Int,
        "I16" => Kind::Int16,
        "I8" => Kind::Int8,
        "U8" => Kind::Uint8,
        "BOOL" => Kind::Bool,
        other => return Err(format!("dtype {other} is not supported")),
    })
}

impl Weights {
    /// Parses the header of the safetensors file at `path`; the tensors are read by
    /// [`Weights::take`], converted to `kind` on `device`.
    pub(in crate::model) fn open(
        path: &Path,
        device: tch::Device,
        kind: Kind,
        family: Family,
    ) -> Result<Weights, ModelError> {
        let bad = |message: String| ModelError::File {
            path: path.into(),
            message,
        };
        let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
        let size = file.metadata().map_err(|e| bad(e.to_string()))?.len();
        let mut len = [0u8; 8];
        file.read_exact_at(&mut len, 0)
            .map_err(|e| bad(format!("not a safetensors file (no header: {e})")))?;
        let n = u64::from_le_bytes(len);
        // safetensors' own bound on the header (100 MB).
        if n > 100_000_000 || 8 + n > size {
            return Err(bad(format!(
                "not a safetensors file (a header of {n} bytes in a file of {size})"
            )));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact_at(&mut header, 8)
            .map_err(|e| bad(e.to_string()))?;
        let header: HashMap<String, serde_json::Value> = serde_json::from_slice(&header)
            .map_err(|e| bad(format!("not a safetensors header: {e}")))?;
        let mut map = HashMap::with_capacity(header.len());
        for (name, v) in header {
            if name == "__metadata__" {
                continue;
            }
            let entry = (|| -> Option<Entry> {
                let dtype = v.get("dtype")?.as_str()?;
                let shape = v
                    .get("shape")?
                    .as_array()?
                    .iter()
                    .map(|d| d.as_i64())
                    .collect::<Option<Vec<i64>>>()?;
                let off = v.get("data_offsets")?.as_array()?;
                let (a, b) = (off.first()?.as_u64()?, off.get(1)?.as_u64()?);
                (a <= b && 8 + n + b <= size).then_some(Entry {
                    kind: kind_of(dtype),
                    shape,
                    start: 8 + n + a,
                    end: 8 + n + b,
                })
            })()
            .ok_or_else(|| bad(format!("the header's entry for `{name}` is malformed")))?;
            map.insert(name, entry);
        }
        Ok(Weights {
            file,
            path: path.into(),
            map,
            device,
            kind,
            family,
        })
    }

    /// The family whose names these are.
    pub(in crate::model) fn family(&self) -> Family {
        self.family
    }

    /// Reads the tensor `name` (BERT's name; mapped for the family), checking its shape, in
    /// the model's dtype on its device.
    pub(in crate::model) fn take(
        &mut self,
        name: &str,
        shape: &[i64],
    ) -> Result<Tensor, ModelError> {
        let name = family_name(self.family, name);
        let name = name.as_str();
        let prefix = match self.family {
            Family::Bert => "bert.",
            Family::Roberta | Family::XlmRoberta => "roberta.",
            Family::DistilBert => "distilbert.",
        };
        let e = self
            .map
            .remove(name)
            .or_else(|| self.map.remove(&format!("{prefix}{name}")))
            .ok_or_else(|| ModelError::Weights(format!("no tensor named `{name}`")))?;
        if e.shape != shape {
            return Err(ModelError::Weights(format!(
                "`{name}` has shape {:?}, config.json implies {shape:?}",
                e.shape
            )));
        }
        let kind = e
            .kind
            .map_err(|m| ModelError::Weights(format!("`{name}`: {m}")))?;
        let t = Tensor::f_empty(shape, (kind, tch::Device::Cpu))?;
        let bytes = t.numel() * kind.elt_size_in_bytes();
        if bytes as u64 != e.end - e.start {
            return Err(ModelError::Weights(format!(
                "`{name}`: {} bytes in the file for {bytes} of {kind:?} {shape:?}",
                e.end - e.start
            )));
        }
        // SAFETY: `t` is a fresh contiguous CPU tensor of exactly `bytes` bytes, alive and not
        // shared while this slice lives.
        let dst = unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut u8, bytes) };
        self.file
            .read_exact_at(dst, e.start)
            .map_err(|err| ModelError::File {
                path: self.path.clone(),
                message: format!("reading `{name}`: {err}"),
            })?;
        Ok(t.f_to_kind(self.kind)?.f_to_device(self.device)?)
    }
}
