//! The Open Inference Protocol (KServe v2, spoken by Triton, KServe and Seldon MLServer),
//! transport-neutral: which model a request names, the model's tensors, decoding BYTES input
//! tensors into texts, and running the model into output tensors. The HTTP (`crate::api::kserve::http`) and
//! gRPC (`crate::api::kserve::grpc`) front ends only translate their wire formats to and from these types.
//!
//! Tensors, by the loaded model's kind (also in the model metadata):
//!
//! | kind | inputs | outputs |
//! | --- | --- | --- |
//! | embedding | `text` BYTES `[n]` or `[n, 1]` | `embedding` FP32 `[n, dim]`; when asked for: `embedding_binary` INT8 and `embedding_ubinary` UINT8 `[n, ceil(dim / 8)]` (signs packed 8 to a byte), `embedding_int8` INT8 and `embedding_uint8` UINT8 `[n, dim]` (with calibration ranges) |
//! | classifier | `text`, optional `text_pair` (BYTES, as many) | `scores` FP32 `[n, labels]` (in label order), `label` BYTES `[n]` (the top label) |
//! | reranker | `text` (queries, or one query for every pair), `text_pair` (documents) | `score` FP32 `[n]` |
//!
//! The quantized outputs are sentence-transformers' `quantize_embeddings` of the FP32 one
//! ([`crate::api::quantized`]), returned only when a request names them.
//!
//! Request parameters: `normalize` (bool, embedding models), `truncate` (bool, default true),
//! `raw_scores` (bool: logits instead of softmax/sigmoid scores). Others are ignored, as the
//! protocol allows.

pub mod grpc;
pub mod http;

use crate::{
    actors::{
        models::{Lease, Pick, Served as Version},
        router::Timings,
    },
    model::{Task, TextInput},
};

use crate::api::{
    Call, Shared,
    error::{ApiError, ErrorKind},
    predict,
};

/// The server's name in the server metadata.
pub const SERVER_NAME: &str = "actor-infer";

/// Protocol extensions this server speaks (server metadata `extensions`).
pub const EXTENSIONS: &[&str] = &["binary_tensor_data", "parameters"];

/// The one place a request's model name (and version) is resolved: a name or version this
/// server does not serve is `model_not_found` (404 / NOT_FOUND), naming what it serves. An empty
/// version (gRPC's default) means "the server's choice".
pub fn model(shared: &Shared, name: &str, version: Option<&str>) -> Result<Lease, ApiError> {
    let m = shared.model(Pick::Named(name))?;
    match version {
        None | Some("") => Ok(m),
        Some(v) if v == m.version.to_string() => Ok(m),
        Some(v) => Err(ApiError::new(
            ErrorKind::ModelNotFound,
            format!(
                "model `{name}` has no version `{v}`; it serves version {} (a reload that \
                 replaces a model serves the next number)",
                m.version
            ),
        )),
    }
}

/// A tensor's name, datatype and shape (-1: any size).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TensorMetadata {
    /// Its name.
    pub name: &'static str,
    /// `BYTES`, `FP32`.
    pub datatype: &'static str,
    /// Dimensions; -1 for a variable one.
    pub shape: Vec<i64>,
}

/// A model's metadata.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelMetadata {
    /// The model's name.
    pub name: String,
    /// Its version serving now (`["1"]` at start; a reload that replaces the model serves
    /// the next number).
    pub versions: Vec<String>,
    /// `actor-infer_<kind>`.
    pub platform: String,
    /// Input tensors.
    pub inputs: Vec<TensorMetadata>,
    /// Output tensors.
    pub outputs: Vec<TensorMetadata>,
}

const fn bytes(name: &'static str) -> (&'static str, &'static str) {
    (name, "BYTES")
}

/// The output tensor of a quantized precision (by sentence-transformers' name): its name,
/// datatype and width for `dim` dimensions; `None` for `float32` (that is `embedding`).
fn quantized_output(precision: &str, dim: usize) -> Option<(&'static str, &'static str, usize)> {
    Some(match precision {
        "int8" => ("embedding_int8", "INT8", dim),
        "uint8" => ("embedding_uint8", "UINT8", dim),
        "binary" => ("embedding_binary", "INT8", dim.div_ceil(8)),
        "ubinary" => ("embedding_ubinary", "UINT8", dim.div_ceil(8)),
        _ => return None,
    })
}

/// The metadata of `spec`: its tensors, by kind (see the module's table).
pub fn metadata(m: &Version) -> ModelMetadata {
    let spec = &*m.spec;
    let t = |(name, datatype): (&'static str, &'static str), shape: Vec<i64>| TensorMetadata {
        name,
        datatype,
        shape,
    };
    let (inputs, outputs) = match spec.task {
        Task::Embedding => (
            vec![t(bytes("text"), vec![-1])],
            std::iter::once(t(("embedding", "FP32"), vec![-1, spec.dim() as i64]))
                .chain(
                    crate::api::quantized::offered(m)
                        .into_iter()
                        .filter_map(|p| {
                            let (name, datatype, width) = quantized_output(p, spec.dim())?;
                            Some(t((name, datatype), vec![-1, width as i64]))
                        }),
                )
                .collect(),
        ),
        Task::Classifier => (
            vec![t(bytes("text"), vec![-1]), t(bytes("text_pair"), vec![-1])],
            vec![
                t(("scores", "FP32"), vec![-1, spec.labels.len() as i64]),
                t(bytes("label"), vec![-1]),
            ],
        ),
        Task::Reranker => (
            vec![t(bytes("text"), vec![-1]), t(bytes("text_pair"), vec![-1])],
            vec![t(("score", "FP32"), vec![-1])],
        ),
    };
    ModelMetadata {
        name: spec.name.clone(),
        versions: vec![m.version.to_string()],
        platform: format!("actor-infer_{}", spec.task.as_str()),
        inputs,
        outputs,
    }
}

/// An input tensor as a transport decoded it: BYTES elements still as bytes.
#[derive(Debug, Clone)]
pub struct InputTensor {
    /// Its name.
    pub name: String,
    /// Its datatype as sent.
    pub datatype: String,
    /// Its shape as sent.
    pub shape: Vec<i64>,
    /// Its elements, row-major.
    pub elements: Vec<Vec<u8>>,
}

impl InputTensor {
    /// The tensor's texts: BYTES, shape `[n]` or `[n, 1]` with n elements, each UTF-8.
    fn texts(self) -> Result<Vec<String>, ApiError> {
        let name = &self.name;
        if self.datatype != "BYTES" {
            return Err(ApiError::validation(format!(
                "input `{name}` has datatype {}; it must be BYTES (UTF-8 texts)",
                self.datatype
            )));
        }
        let n = self.elements.len() as i64;
        let shape_ok = match self.shape.as_slice() {
            [rows] => *rows == n,
            [rows, 1] => *rows == n,
            _ => false,
        };
        if !shape_ok {
            return Err(ApiError::validation(format!(
                "input `{name}` has shape {:?} and {n} elements; send shape [{n}] or [{n}, 1]",
                self.shape
            )));
        }
        self.elements
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                String::from_utf8(e).map_err(|_| {
                    ApiError::validation(format!("input `{name}` element {i} is not UTF-8"))
                })
            })
            .collect()
    }
}

/// The request parameters this server reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct Parameters {
    /// L2-normalise embeddings (the model's default when unset).
    pub normalize: Option<bool>,
    /// Truncate over-long texts (default true).
    pub truncate: Option<bool>,
    /// Logits instead of scores.
    pub raw_scores: Option<bool>,
}

/// A decoded inference request.
#[derive(Debug, Clone)]
pub struct InferRequest {
    /// The inputs.
    pub inputs: Vec<InputTensor>,
    /// The outputs asked for, in order; `None`: every output.
    pub outputs: Option<Vec<String>>,
    /// Its parameters.
    pub parameters: Parameters,
}

/// An output tensor's values.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// FP32, row-major.
    Fp32(Vec<f32>),
    /// BYTES elements.
    Bytes(Vec<Vec<u8>>),
    /// INT8, as two's-complement bytes, row-major.
    Int8(Vec<u8>),
    /// UINT8, row-major.
    Uint8(Vec<u8>),
}

impl Data {
    /// The protocol's datatype name.
    pub fn datatype(&self) -> &'static str {
        match self {
            Data::Fp32(_) => "FP32",
            Data::Bytes(_) => "BYTES",
            Data::Int8(_) => "INT8",
            Data::Uint8(_) => "UINT8",
        }
    }

    /// The binary tensor encoding: little-endian FP32 values; INT8 and UINT8 a byte each;
    /// BYTES elements each as a little-endian u32 length and the bytes.
    pub fn to_raw(&self) -> Vec<u8> {
        match self {
            Data::Fp32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::Int8(v) | Data::Uint8(v) => v.clone(),
            Data::Bytes(v) => {
                let mut out = Vec::with_capacity(v.iter().map(|e| e.len() + 4).sum());
                for e in v {
                    out.extend_from_slice(&(e.len() as u32).to_le_bytes());
                    out.extend_from_slice(e);
                }
                out
            }
        }
    }
}

/// Splits a binary BYTES tensor (`[u32 LE length][bytes]`, repeated) into its elements.
pub fn split_raw_bytes(name: &str, mut raw: &[u8]) -> Result<Vec<Vec<u8>>, ApiError> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        let bad = || {
            ApiError::validation(format!(
                "input `{name}`: its binary BYTES data is cut short (each element is a 4-byte \
                 little-endian length, then that many bytes)"
            ))
        };
        let len: [u8; 4] = raw.get(..4).ok_or_else(bad)?.try_into().expect("4 bytes");
        let len = u32::from_le_bytes(len) as usize;
        let element = raw.get(4..4 + len).ok_or_else(bad)?;
        out.push(element.to_vec());
        raw = &raw[4 + len..];
    }
    Ok(out)
}

/// An output tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputTensor {
    /// Its name.
    pub name: &'static str,
    /// Its shape.
    pub shape: Vec<i64>,
    /// Its values.
    pub data: Data,
}

/// What one inference answers.
#[derive(Debug)]
pub struct Inferred {
    /// The outputs, in the order asked for (or the metadata's).
    pub outputs: Vec<OutputTensor>,
    /// Texts (or pairs) answered.
    pub texts: usize,
    /// Where the time went.
    pub timings: Timings,
}

/// Runs `request` on the loaded model (already looked up with [`model`]), through
/// [`Shared::infer`]: the same limits, admission control and deadline as every route.
pub async fn infer(
    shared: &Shared,
    m: &Version,
    request: InferRequest,
    call: Call,
) -> Result<Inferred, ApiError> {
    let spec = &*m.spec;
    let meta = metadata(m);
    let names: Vec<&'static str> = meta.outputs.iter().map(|t| t.name).collect();
    let wanted: Vec<&'static str> = match &request.outputs {
        // The quantized outputs only when asked for.
        None => names
            .iter()
            .copied()
            .filter(|n| !n.starts_with("embedding_"))
            .collect(),
        Some(asked) => asked
            .iter()
            .map(|a| {
                names.iter().copied().find(|n| n == a).ok_or_else(|| {
                    // `embedding_int8` without calibration ranges says what it needs.
                    if let Some(p) = a.strip_prefix("embedding_")
                        && spec.task == Task::Embedding
                        && let Err(e) = crate::api::quantized::precision(m, Some(p))
                        && quantized_output(p, 1).is_some()
                    {
                        return e;
                    }
                    ApiError::validation(format!(
                        "unknown output `{a}`; this model's outputs are {}",
                        names.join(", ")
                    ))
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let input_names: Vec<&str> = meta.inputs.iter().map(|t| t.name).collect();
    let (mut text, mut pair) = (None, None);
    for tensor in request.inputs {
        let slot = match tensor.name.as_str() {
            "text" => &mut text,
            "text_pair" if input_names.contains(&"text_pair") => &mut pair,
            other => {
                return Err(ApiError::validation(format!(
                    "unknown input `{other}`; this {} model's inputs are {}",
                    spec.task.as_str(),
                    input_names.join(", ")
                )));
            }
        };
        if slot.is_some() {
            return Err(ApiError::validation(format!(
                "input `{}` is given twice",
                tensor.name
            )));
        }
        *slot = Some(tensor.texts()?);
    }
    let text = text.ok_or_else(|| ApiError::validation("the input tensor `text` is missing"))?;
    let p = request.parameters;
    let truncate = p.truncate.unwrap_or(true);
    let raw = p.raw_scores.unwrap_or(false);
    let mut outputs = Vec::with_capacity(wanted.len());
    let (texts, timings) = match spec.task {
        Task::Embedding => {
            let out = shared
                .embed(
                    m,
                    {
                        let mut job = job(text, None, truncate);
                        job.rows.normalize = p.normalize;
                        job
                    },
                    call,
                )
                .await?;
            let n = out.embeddings.len();
            let dim = out.embeddings.first().map_or(spec.dim(), Vec::len);
            let normalized = p.normalize.unwrap_or(spec.normalize);
            for name in &wanted {
                let Some(precision) = name.strip_prefix("embedding_") else {
                    continue;
                };
                let (_, datatype, width) =
                    quantized_output(precision, dim).expect("a quantized output");
                let precision = crate::api::quantized::precision(m, Some(precision))?;
                let bytes: Vec<u8> =
                    crate::api::quantized::rows(m, out.embeddings.clone(), precision, normalized)?
                        .into_iter()
                        .flat_map(|r| match r {
                            crate::api::quantized::Row::Quantized(b, _) => b,
                            crate::api::quantized::Row::Float(_) => {
                                unreachable!("a quantized precision")
                            }
                        })
                        .collect();
                outputs.push(OutputTensor {
                    name,
                    shape: vec![n as i64, width as i64],
                    data: if datatype == "INT8" {
                        Data::Int8(bytes)
                    } else {
                        Data::Uint8(bytes)
                    },
                });
            }
            outputs.push(OutputTensor {
                name: "embedding",
                shape: vec![n as i64, dim as i64],
                data: Data::Fp32(out.embeddings.into_iter().flatten().collect()),
            });
            (n, out.timings)
        }
        Task::Classifier => {
            let out = shared.infer(m, job(text, pair, truncate), call).await?;
            let n = out.embeddings.len();
            let labels = spec
                .labels
                .len()
                .max(out.embeddings.first().map_or(0, Vec::len));
            let mut scores = Vec::with_capacity(n * labels);
            let mut top = Vec::with_capacity(n);
            for row in &out.embeddings {
                let s = predict::scores(row, spec.problem_type, raw);
                let best = predict::order(&s).first().copied().unwrap_or(0);
                top.push(predict::label(&spec.labels, best).into_bytes());
                scores.extend(s);
            }
            outputs.push(OutputTensor {
                name: "scores",
                shape: vec![n as i64, labels as i64],
                data: Data::Fp32(scores),
            });
            outputs.push(OutputTensor {
                name: "label",
                shape: vec![n as i64],
                data: Data::Bytes(top),
            });
            (n, out.timings)
        }
        Task::Reranker => {
            let pair = pair.ok_or_else(|| {
                ApiError::validation(
                    "a reranker scores pairs: send `text` (the query) and `text_pair` (the \
                     documents)",
                )
            })?;
            // One query for every document, or one query per document.
            let text = match text.as_slice() {
                [query] if pair.len() > 1 => vec![query.clone(); pair.len()],
                _ => text,
            };
            let out = shared
                .infer(m, job(text, Some(pair), truncate), call)
                .await?;
            let n = out.embeddings.len();
            let scores = out
                .embeddings
                .iter()
                .map(|row| predict::relevance(row, raw))
                .collect();
            outputs.push(OutputTensor {
                name: "score",
                shape: vec![n as i64],
                data: Data::Fp32(scores),
            });
            (n, out.timings)
        }
    };
    let outputs = wanted
        .iter()
        .filter_map(|w| outputs.iter().position(|o| o.name == *w))
        .map(|i| outputs[i].clone())
        .collect();
    Ok(Inferred {
        outputs,
        texts,
        timings,
    })
}

/// The pipeline's job for the texts of a `BYTES` tensor (and their second segments).
fn job(texts: Vec<String>, pairs: Option<Vec<String>>, truncate: bool) -> crate::api::Job {
    let mut job = crate::api::Job::of(texts.into_iter().map(TextInput::Text).collect());
    job.texts.pairs = pairs;
    job.texts.truncate = truncate;
    job
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_bytes_round_trip_and_refuse_cut_data() {
        let d = Data::Bytes(vec![b"hello".to_vec(), Vec::new(), "é".as_bytes().to_vec()]);
        let raw = d.to_raw();
        assert_eq!(&raw[..4], &5u32.to_le_bytes());
        assert_eq!(
            split_raw_bytes("text", &raw).unwrap(),
            vec![b"hello".to_vec(), Vec::new(), "é".as_bytes().to_vec()]
        );
        let e = split_raw_bytes("text", &raw[..raw.len() - 1]).unwrap_err();
        assert!(e.message.contains("input `text`"), "{}", e.message);
        assert!(split_raw_bytes("text", &[1, 0]).is_err());
        assert_eq!(
            Data::Fp32(vec![1.0, -2.5]).to_raw(),
            [1f32.to_le_bytes(), (-2.5f32).to_le_bytes()].concat()
        );
    }

    #[test]
    fn text_tensors_take_n_or_n_by_1_utf8_bytes() {
        let t = |shape: Vec<i64>, dt: &str, e: Vec<&[u8]>| InputTensor {
            name: "text".into(),
            datatype: dt.into(),
            shape,
            elements: e.into_iter().map(<[u8]>::to_vec).collect(),
        };
        assert_eq!(
            t(vec![2], "BYTES", vec![b"a", b"b"]).texts().unwrap(),
            ["a", "b"]
        );
        assert_eq!(
            t(vec![2, 1], "BYTES", vec![b"a", b"b"])
                .texts()
                .unwrap()
                .len(),
            2
        );
        for bad in [
            t(vec![3], "BYTES", vec![b"a", b"b"]),
            t(vec![1, 2], "BYTES", vec![b"a", b"b"]),
            t(vec![2], "FP32", vec![b"a", b"b"]),
            t(vec![1], "BYTES", vec![&[0xff, 0xfe]]),
        ] {
            let e = bad.texts().unwrap_err();
            assert_eq!(e.kind, ErrorKind::Validation);
            assert!(e.message.contains("`text`"), "{}", e.message);
        }
    }
}
