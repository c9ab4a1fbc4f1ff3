//! An embedding model's `int8` / `uint8` calibration ranges (`model.quantization`): read from a
//! ranges file with the model's metadata ([`Calibrator::from_config`]), or computed from a file
//! of texts by the first model worker to finish its warm-up ([`Calibrator::ensure`], called from
//! `actors::model_worker`), then shared read-only by every request of that model version.
//!
//! The ranges describe what the server outputs by default: the full width, L2-normalised when
//! the model normalises. [`Calibration::ranges_for`] gives the ranges of another output (a
//! Matryoshka cut, normalisation on or off): computed from the calibration texts' embeddings,
//! which are kept; a ranges file only covers the default output.

use std::{
    borrow::Cow,
    path::Path,
    sync::{Arc, Mutex},
    time::Instant,
};

use serde::Serialize;

use super::{
    Model, ModelError, ModelSpec, Task,
    bert::Padded,
    normalize_l2,
    quantize::{QuantizeError, Ranges},
};
use crate::config;

/// Most calibration texts a file may hold.
pub const MAX_TEXTS: usize = 100_000;
/// Texts per calibration forward.
const BATCH: usize = 32;

/// Where a model's ranges come from, and (once known) the ranges. Shared by the model's
/// workers: the first to finish its warm-up computes them under the lock while the others wait.
#[derive(Debug)]
pub struct Calibrator {
    source: Source,
    /// `None` until computed (texts) or from the start (ranges file). Held while computing, so
    /// the other workers of this model wait for the one result instead of computing it again.
    done: Mutex<Option<Arc<Calibration>>>,
}

#[derive(Debug)]
enum Source {
    /// A ranges file: known from the start.
    File,
    /// Texts to embed once the model is loaded.
    Texts { file: String, texts: Vec<String> },
}

/// A model's calibration: where it came from and the ranges of its default output.
pub struct Calibration {
    source: &'static str,
    file: String,
    texts: usize,
    /// The ranges of the default output (full width, normalised as the model is by default).
    pub ranges: Ranges,
    normalized: bool,
    /// The texts' pooled embeddings before any normalisation (empty for a ranges file).
    raw: Vec<Vec<f32>>,
    /// Ranges of other outputs (width, normalised), computed from `raw` once each.
    derived: Mutex<std::collections::HashMap<(usize, bool), Arc<Ranges>>>,
}

impl std::fmt::Debug for Calibration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Calibration")
            .field("info", &self.info())
            .finish()
    }
}

/// What `/info` says about the ranges in use (`quantization`).
#[derive(Debug, Clone, Serialize)]
pub struct CalibrationInfo {
    /// `ranges_file` or `calibration_file`.
    pub source: &'static str,
    /// The file's name (not its folder).
    pub file: String,
    /// Texts embedded (0 for a ranges file).
    pub texts: usize,
    /// Dimensions covered.
    pub dim: usize,
    /// Whether the ranges are of L2-normalised embeddings (the model's default output).
    pub normalized: bool,
    /// A digest of the float32 ranges ([`Ranges::fingerprint`]).
    pub fingerprint: String,
}

impl Calibration {
    /// Where the ranges came from, for `/info`.
    pub fn info(&self) -> CalibrationInfo {
        CalibrationInfo {
            source: self.source,
            file: self.file.clone(),
            texts: self.texts,
            dim: self.ranges.dim(),
            normalized: self.normalized,
            fingerprint: self.ranges.fingerprint(),
        }
    }

    /// The ranges for rows cut to their first `dims` dimensions and normalised (or not) after
    /// the cut, as the server outputs them. A ranges file covers only the default output (the
    /// full width, normalised as the model is by default); calibration texts cover any.
    pub fn ranges_for(
        &self,
        dims: usize,
        normalize: bool,
    ) -> Result<Cow<'_, Ranges>, QuantizeError> {
        if let Some(r) = self
            .derived
            .lock()
            .expect("never poisoned")
            .get(&(dims, normalize))
        {
            return Ok(Cow::Owned(Ranges::clone(r)));
        }
        let full = self.ranges.dim();
        if dims == full && normalize == self.normalized {
            return Ok(Cow::Borrowed(&self.ranges));
        }
        if self.raw.is_empty() {
            return Err(QuantizeError::File {
                path: self.file.clone(),
                message: format!(
                    "these ranges are for the model's default output ({full} dimensions, {}), \
                     not for {dims} dimensions {}; give calibration texts \
                     (model.quantization.calibration_file) to quantize other outputs",
                    if self.normalized {
                        "normalised"
                    } else {
                        "not normalised"
                    },
                    if normalize {
                        "normalised"
                    } else {
                        "not normalised"
                    }
                ),
            });
        }
        let rows: Vec<Vec<f32>> = self
            .raw
            .iter()
            .map(|r| {
                let mut r = r[..dims.min(r.len())].to_vec();
                if normalize {
                    normalize_l2(&mut r);
                }
                r
            })
            .collect();
        let ranges = Ranges::of(&rows)?;
        self.derived
            .lock()
            .expect("never poisoned")
            .insert((dims, normalize), Arc::new(ranges.clone()));
        Ok(Cow::Owned(ranges))
    }
}

impl Calibrator {
    /// Reads `model.quantization`'s file: the ranges at once (checked against the model's
    /// width `dim`), or the calibration texts, embedded later by [`Calibrator::ensure`].
    pub fn from_config(
        q: &config::Quantization,
        task: Task,
        dim: usize,
        normalize: bool,
    ) -> Result<Calibrator, ModelError> {
        if task != Task::Embedding {
            return Err(ModelError::Config(format!(
                "model.quantization: this model's kind is {}; only an embedding model's outputs \
                 are quantized",
                task.as_str()
            )));
        }
        let name = |p: &Path| {
            p.file_name().map_or_else(
                || p.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        };
        if let Some(path) = &q.ranges_file {
            let ranges = Ranges::read(path)
                .map_err(|e| ModelError::Config(format!("model.quantization.ranges_file: {e}")))?;
            if ranges.dim() != dim {
                return Err(ModelError::Config(format!(
                    "model.quantization.ranges_file: {} has ranges for {} dimensions; this \
                     model's embeddings have {dim}",
                    path.display(),
                    ranges.dim()
                )));
            }
            let c = Calibration {
                source: "ranges_file",
                file: name(path),
                texts: 0,
                ranges,
                normalized: normalize,
                raw: Vec::new(),
                derived: Mutex::default(),
            };
            return Ok(Calibrator {
                source: Source::File,
                done: Mutex::new(Some(Arc::new(c))),
            });
        }
        let path = q
            .calibration_file
            .as_ref()
            .expect("config validation: one of the two files is set");
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::File {
            path: path.clone(),
            message: format!("model.quantization.calibration_file: {e}"),
        })?;
        let texts: Vec<String> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect();
        if texts.is_empty() || texts.len() > MAX_TEXTS {
            return Err(ModelError::Config(format!(
                "model.quantization.calibration_file: {} has {} non-empty lines; give 1 to \
                 {MAX_TEXTS} texts, one per line (sentence-transformers advises at least 100)",
                path.display(),
                texts.len()
            )));
        }
        Ok(Calibrator {
            source: Source::Texts {
                file: name(path),
                texts,
            },
            done: Mutex::new(None),
        })
    }

    /// The calibration, once known.
    pub fn get(&self) -> Option<Arc<Calibration>> {
        self.done
            .lock()
            .expect("a calibration never panics while holding the lock")
            .clone()
    }

    /// Computes the ranges from the calibration texts with `model` unless they are known:
    /// called by every worker after its warm-up, so the first one computes them and the others
    /// (waiting on the lock) find them done. The texts are embedded as requests are: the
    /// model's default prompt prepended, truncated at `max_seq_length`, pooled, then
    /// normalised when the model normalises by default.
    pub fn ensure(&self, spec: &ModelSpec, model: &Model) -> Result<(), ModelError> {
        let Source::Texts { file, texts } = &self.source else {
            return Ok(());
        };
        let mut done = self
            .done
            .lock()
            .expect("a calibration never panics while holding the lock");
        if done.is_some() {
            return Ok(());
        }
        let started = Instant::now();
        let tokenizer = super::tokenize::TextTokenizer::load(&spec.path, spec.max_seq_length)?;
        let prompt = spec
            .default_prompt
            .as_ref()
            .and_then(|n| spec.prompts.get(n))
            .cloned()
            .unwrap_or_default();
        let encoded = texts
            .iter()
            .enumerate()
            .map(|(i, t)| tokenizer.encode(i, &format!("{prompt}{t}"), true))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ModelError::Config(format!("model.quantization.calibration_file: {e}")))?;
        // Batches of similar lengths, so padding stays small.
        let mut order: Vec<usize> = (0..encoded.len()).collect();
        order.sort_by_key(|&i| encoded[i].len());
        let mut raw = vec![Vec::new(); encoded.len()];
        for chunk in order.chunks(BATCH) {
            let batch = Padded::new(
                chunk.iter().map(|&i| &encoded[i]),
                spec.encoder.pad_token_id,
            );
            let rows = model.run(&batch, spec.pooling, &[])?;
            for (&i, row) in chunk.iter().zip(rows) {
                raw[i] = row;
            }
        }
        let ranges = Ranges::of(
            &raw.iter()
                .map(|r| {
                    let mut r = r.clone();
                    if spec.normalize {
                        normalize_l2(&mut r);
                    }
                    r
                })
                .collect::<Vec<_>>(),
        )
        .map_err(|e| ModelError::Config(format!("model.quantization.calibration_file: {e}")))?;
        let c = Calibration {
            source: "calibration_file",
            file: file.clone(),
            texts: texts.len(),
            ranges,
            normalized: spec.normalize,
            raw,
            derived: Mutex::default(),
        };
        tracing::info!(
            model = %spec.name,
            file = %file,
            texts = texts.len(),
            fingerprint = %c.ranges.fingerprint(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "int8/uint8 calibration ranges computed"
        );
        *done = Some(Arc::new(c));
        Ok(())
    }
}
