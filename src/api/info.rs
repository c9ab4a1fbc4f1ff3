//! What `/info`, `/v1/models`, gRPC `ModelInfo` and TEI's `Info` tell of a served model:
//! [`ModelInfo`], TEI's fields (so TEI's clients read them) and ours.

use serde::Serialize;

use super::{Shared, predict};
use crate::{
    actors::models::Served,
    model::{Task, device_name},
};

/// What `/info` and `ModelInfo` tell: TEI's fields (so TEI's clients read them) and ours.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModelInfo {
    /// TEI: the model's Hugging Face id when it was named by one (`org/name`), else its name.
    pub model_id: String,
    /// TEI: the commit of the Hugging Face snapshot served (none: served from a local folder).
    pub model_sha: Option<String>,
    /// TEI: `float32`, `float16` or `bfloat16`.
    pub model_dtype: &'static str,
    /// TEI: `{"embedding": {"pooling": ...}}`, `{"classifier": {"id2label", "label2id"}}` or
    /// `{"reranker": {...}}`.
    #[schema(value_type = Object)]
    pub model_type: serde_json::Value,
    /// TEI: `server.max_concurrent_requests` (texts in flight).
    pub max_concurrent_requests: usize,
    /// TEI: the longest input, in tokens.
    pub max_input_length: usize,
    /// TEI: `batching.max_batch_tokens`.
    pub max_batch_tokens: usize,
    /// TEI: `batching.max_batch_size`.
    pub max_batch_requests: Option<usize>,
    /// TEI: `server.max_client_batch_size`.
    pub max_client_batch_size: usize,
    /// TEI: whether `truncate` defaults to true (here it does, as sentence-transformers).
    pub auto_truncate: bool,
    /// TEI: `tokenizer.workers`.
    pub tokenization_workers: usize,
    /// TEI: the server's version.
    pub version: &'static str,
    /// TEI: the build's git commit (none).
    pub sha: Option<String>,
    /// TEI: the image's label (none).
    pub docker_label: Option<String>,
    /// Model name (as `model_id`).
    pub model: String,
    /// The model folder: only with `server.expose_model_path` (it reveals the file system).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The Hugging Face id, revision and commit the model was resolved from (`{"id",
    /// "revision", "commit"}`); absent for a model served from a folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub hub: Option<crate::hub::Resolved>,
    /// With `model.quantization`: `{"ranges": {"source", "file", "texts", "dim", "normalized",
    /// "fingerprint"}}`, the int8/uint8 calibration ranges this version uses.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub quantization: Option<serde_json::Value>,
    /// What kind of model this is: `embedding`, `classifier` or `reranker`.
    pub kind: &'static str,
    /// The encoder family (`bert`, `roberta`, `xlm-roberta`, `distilbert`) or `torchscript`.
    pub family: &'static str,
    /// The HTTP routes and gRPC methods this model serves (inference only).
    pub routes: &'static [&'static str],
    /// A classifier's labels, by index; empty for an embedding model.
    pub labels: Vec<String>,
    /// How a classifier's logits become scores (`softmax`, `sigmoid`, `none`); empty for an
    /// embedding model.
    pub activation: &'static str,
    /// Embedding width.
    pub embedding_dim: usize,
    /// Longest input, in tokens (as `max_input_length`).
    pub max_sequence_length: usize,
    /// sentence-transformers' prompts a request may name (`prompt_name`).
    pub prompts: std::collections::BTreeMap<String, String>,
    /// The prompt applied when a request names none.
    pub default_prompt_name: Option<String>,
    /// Where the model runs.
    pub device: String,
    /// Weights' precision (`f32`, `f16`, `bf16`).
    pub dtype: &'static str,
    /// Pooling.
    pub pooling: &'static str,
    /// Normalised by default.
    pub normalize: bool,
    /// Model worker instances.
    pub workers: usize,
    /// Tokenizer threads (as `tokenization_workers`).
    pub tokenizer_workers: usize,
    /// Experiment name.
    pub experiment: String,
    /// Which version of the model this is: 1 at start, one more each time a reload replaces
    /// it (as `X-Model-Version` says `name@version`).
    pub model_version: u64,
}

impl Shared {
    /// Model `m`'s facts for `/info` and `ModelInfo`.
    pub fn info(&self, m: &Served) -> ModelInfo {
        let s = &m.spec;
        let c = &m.settings;
        let server = &self.config.server;
        let classes = || {
            serde_json::json!({
                "id2label": s.labels.iter().enumerate()
                    .map(|(i, l)| (i.to_string(), serde_json::Value::from(l.clone())))
                    .collect::<serde_json::Map<_, _>>(),
                "label2id": s.labels.iter().enumerate()
                    .map(|(i, l)| (l.clone(), serde_json::Value::from(i)))
                    .collect::<serde_json::Map<_, _>>(),
            })
        };
        let hub = c.model.hub.clone();
        ModelInfo {
            model_id: hub
                .as_ref()
                .map_or_else(|| s.name.clone(), |h| h.id.clone()),
            model_sha: hub.as_ref().map(|h| h.commit.clone()),
            hub,
            quantization: s
                .calibration
                .as_ref()
                .map(|c| serde_json::json!({ "ranges": c.get().map(|c| c.info()) })),
            model_dtype: match s.dtype {
                crate::config::DType::F32 => "float32",
                crate::config::DType::F16 => "float16",
                crate::config::DType::Bf16 => "bfloat16",
            },
            model_type: match s.task {
                Task::Embedding => {
                    serde_json::json!({"embedding": {"pooling": s.pooling.as_str()}})
                }
                Task::Classifier => serde_json::json!({"classifier": classes()}),
                Task::Reranker => serde_json::json!({"reranker": classes()}),
            },
            max_concurrent_requests: server.max_concurrent_requests,
            max_input_length: s.max_seq_length,
            max_batch_tokens: c.batching.max_batch_tokens,
            max_batch_requests: Some(c.batching.max_batch_size),
            max_client_batch_size: server.max_client_batch_size,
            auto_truncate: true,
            tokenization_workers: c.tokenizer.workers,
            sha: None,
            docker_label: None,
            model: s.name.clone(),
            path: server
                .expose_model_path
                .then(|| s.path.display().to_string()),
            prompts: s.prompts.clone(),
            default_prompt_name: s.default_prompt.clone(),
            kind: s.task.as_str(),
            family: s.format.as_str(),
            routes: s.task.routes(),
            labels: s.labels.clone(),
            activation: match s.task {
                Task::Embedding => "",
                _ => predict::activation(s.problem_type),
            },
            embedding_dim: s.dim(),
            max_sequence_length: s.max_seq_length,
            device: device_name(s.device),
            dtype: s.dtype.as_str(),
            pooling: s.pooling.as_str(),
            normalize: s.normalize,
            workers: c.model.instances,
            tokenizer_workers: c.tokenizer.workers,
            model_version: m.version,
            experiment: self.config.experiment.name.clone(),
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}
