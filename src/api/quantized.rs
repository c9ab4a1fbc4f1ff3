//! An embedding's output type, per request: `output_dtype` on TEI `/embed`, OpenAI
//! `/v1/embeddings` (which the `openai` client sends through `extra_body`) and our gRPC `Infer`;
//! the `embedding_int8`, `embedding_uint8`, `embedding_binary` and `embedding_ubinary` outputs
//! of KServe v2. The rows are quantized as they are served (after the Matryoshka cut and the
//! normalisation), exactly as sentence-transformers' `quantize_embeddings` does
//! ([`crate::model::quantize`]); `int8` and `uint8` use the model's calibration ranges for that
//! width and normalisation (`model.quantization`, shown in `/info`).

use std::borrow::Cow;

use base64::Engine;

use crate::{
    actors::models::Served as Version,
    model::quantize::{self, Precision, Ranges},
};

use super::error::{ApiError, ErrorKind};

/// The precisions a request may name for `m`: `float32`, `binary`, `ubinary` always, `int8`
/// and `uint8` when the model has calibration ranges.
pub fn offered(m: &Version) -> Vec<&'static str> {
    Precision::ALL
        .into_iter()
        .filter(|p| !p.needs_ranges() || m.spec.calibration.is_some())
        .map(Precision::as_str)
        .collect()
}

/// The request's `output_dtype` (absent: `float32`), refused naming what `m` offers.
pub fn precision(m: &Version, name: Option<&str>) -> Result<Precision, ApiError> {
    let Some(name) = name else {
        return Ok(Precision::Float32);
    };
    let offered = offered(m);
    match Precision::parse(name) {
        Ok(p) if offered.contains(&p.as_str()) => Ok(p),
        Ok(p) => Err(ApiError::validation(format!(
            "output_dtype `{}` needs calibration ranges, and model `{}` has none (set \
             model.quantization.ranges_file or calibration_file); it offers {}",
            p.as_str(),
            m.name,
            offered.join(", ")
        ))),
        Err(_) => Err(ApiError::validation(format!(
            "output_dtype `{name}` is not one of {}",
            offered.join(", ")
        ))),
    }
}

/// One served embedding: its numbers, or its bytes in a quantized precision.
pub enum Row {
    /// As computed.
    Float(Vec<f32>),
    /// [`quantize::quantize`]'s bytes.
    Quantized(Vec<u8>, Precision),
}

impl Row {
    /// As JSON: an array of numbers (signed for `int8` and `binary`), or with `base64` the
    /// bytes (little-endian f32 for `float32`) in standard base64.
    pub fn json(self, base64: bool) -> Json {
        let bytes = match (self, base64) {
            (Row::Float(v), false) => return Json::Floats(v),
            (Row::Quantized(b, p), false) => return Json::Ints(quantize::values(&b, p)),
            (Row::Float(v), true) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            (Row::Quantized(b, _), true) => b,
        };
        Json::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
    }
}

/// A served row as it goes into a JSON body, serialised straight from its numbers (no
/// `serde_json::Value` per number).
#[derive(Debug)]
pub enum Json {
    /// Floats: each written as the f64 it widens to (the digits clients always got).
    Floats(Vec<f32>),
    /// A quantized row's values.
    Ints(Vec<i16>),
    /// Bytes in base64.
    Base64(String),
}

impl serde::Serialize for Json {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Floats(v) => Floats(v).serialize(s),
            Json::Ints(v) => v.serialize(s),
            Json::Base64(b) => s.serialize_str(b),
        }
    }
}

/// A slice of f32 as a JSON array, each number widened to f64 as `serde_json::Value` would
/// (so the text is what it always was), without building one.
pub struct Floats<'a>(pub &'a [f32]);

impl serde::Serialize for Floats<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for x in self.0 {
            seq.serialize_element(&f64::from(*x))?;
        }
        seq.end()
    }
}

/// `rows` (as served: cut, and normalised when `normalized`) in `precision`.
pub fn rows(
    m: &Version,
    rows: Vec<Vec<f32>>,
    precision: Precision,
    normalized: bool,
) -> Result<Vec<Row>, ApiError> {
    if precision == Precision::Float32 {
        return Ok(rows.into_iter().map(Row::Float).collect());
    }
    let Some(width) = rows.first().map(Vec::len) else {
        return Ok(Vec::new());
    };
    let ranges = ranges(m, precision, width, normalized)?;
    rows.iter()
        .map(|r| {
            quantize::quantize(r, precision, ranges.as_deref())
                .map(|b| Row::Quantized(b, precision))
                .map_err(|e| ApiError::new(ErrorKind::Internal, e.to_string()))
        })
        .collect()
}

/// The ranges `precision` needs for rows of `width` dimensions (normalised or not); `None`
/// for the binary precisions.
fn ranges(
    m: &Version,
    precision: Precision,
    width: usize,
    normalized: bool,
) -> Result<Option<Cow<'static, Ranges>>, ApiError> {
    if !precision.needs_ranges() {
        return Ok(None);
    }
    let calibration = m
        .spec
        .calibration
        .as_ref()
        .ok_or_else(|| precision_error(m, precision))?
        .get()
        .ok_or_else(|| {
            ApiError::new(
                ErrorKind::NotReady,
                format!(
                    "model `{}`'s calibration ranges are not computed yet; retry when it is \
                     ready",
                    m.name
                ),
            )
        })?;
    calibration
        .ranges_for(width, normalized)
        .map(|r| Some(Cow::Owned(r.into_owned())))
        .map_err(|e| ApiError::validation(format!("output_dtype `{}`: {e}", precision.as_str())))
}

fn precision_error(m: &Version, p: Precision) -> ApiError {
    match precision(m, Some(p.as_str())) {
        Err(e) => e,
        Ok(_) => ApiError::new(ErrorKind::Internal, "calibration vanished"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_serialise_as_their_values_did() {
        let v = vec![0.1f32, -2.5, 1e-7, 3.0];
        let direct = serde_json::to_string(&Row::Float(v.clone()).json(false)).unwrap();
        let via_value = serde_json::to_string(&serde_json::Value::from(v.clone())).unwrap();
        assert_eq!(direct, via_value);
        let b = serde_json::to_string(&Row::Float(v).json(true)).unwrap();
        assert!(b.starts_with('"') && b.len() > 2, "{b}");
    }
}
