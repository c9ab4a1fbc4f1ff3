//! The model: what a Hugging Face / sentence-transformers folder says ([`ModelSpec`]), the
//! tokenizer ([`TextTokenizer`]), the BERT-family encoder written with tch ([`bert::Bert`]) and
//! pooling. Nothing here knows about actors; the actors in `crate::actors` own these values.

pub mod bert;
pub mod calibrate;
pub mod cpu;
pub mod device;
pub mod gemm;
pub mod heads;
pub mod memory;
pub mod mkl;
pub mod quantize;
mod tokenize;
pub mod torchscript;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::Deserialize;

pub use device::device_name;
pub use tokenize::{Direction, Encoded, TextInput, TextTokenizer, TokenInfo, TokenizeError};

use crate::config::{self, DType, ModelKind, Pooling};

/// The subset of Hugging Face's `config.json` a BERT-family encoder needs. DistilBERT's own
/// names (`dim`, `n_layers`, `n_heads`, `hidden_dim`, `activation`) are read as aliases.
#[derive(Debug, Clone, Deserialize)]
pub struct EncoderConfig {
    /// `bert`, `roberta`, `xlm-roberta`, `distilbert`, ...
    #[serde(default)]
    pub model_type: String,
    /// The classes transformers saved the model as (`BertModel`,
    /// `BertForSequenceClassification`, ...).
    #[serde(default)]
    pub architectures: Vec<String>,
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Width of the token states.
    #[serde(alias = "dim")]
    pub hidden_size: i64,
    /// Encoder layers.
    #[serde(alias = "n_layers")]
    pub num_hidden_layers: i64,
    /// Attention heads per layer.
    #[serde(alias = "n_heads")]
    pub num_attention_heads: i64,
    /// Width of the feed-forward layer.
    #[serde(alias = "hidden_dim")]
    pub intermediate_size: i64,
    /// Positions the model was trained with.
    pub max_position_embeddings: i64,
    /// Segment types (2 for BERT, 1 for RoBERTa, none for DistilBERT).
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: i64,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// `gelu` (erf), `gelu_new` / `gelu_pytorch_tanh` (tanh), or `relu`.
    #[serde(default = "default_act", alias = "activation")]
    pub hidden_act: String,
    /// Padding token id.
    #[serde(default)]
    pub pad_token_id: i64,
    /// A classifier's labels by index (`{"0": "negative", ...}`).
    #[serde(default)]
    pub id2label: Option<std::collections::BTreeMap<String, String>>,
    /// `single_label_classification`, `multi_label_classification` or `regression`.
    #[serde(default)]
    pub problem_type: Option<String>,
}

/// Which encoder architecture the weights are (from `config.json`'s `model_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// BERT (and MiniLM, which is a BERT).
    Bert,
    /// RoBERTa: position ids start past the padding index, no segment types.
    Roberta,
    /// XLM-RoBERTa: RoBERTa's architecture.
    XlmRoberta,
    /// DistilBERT: its own weight names, no segment types.
    DistilBert,
}

impl Family {
    fn from_model_type(t: &str) -> Result<Family, ModelError> {
        match t {
            "bert" | "" => Ok(Family::Bert),
            "roberta" | "camembert" => Ok(Family::Roberta),
            "xlm-roberta" => Ok(Family::XlmRoberta),
            "distilbert" => Ok(Family::DistilBert),
            other => Err(ModelError::Config(format!(
                "config.json: model_type `{other}` is not supported \
                 (bert, roberta, xlm-roberta, camembert, distilbert)"
            ))),
        }
    }

    /// Name as `config.json` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Bert => "bert",
            Family::Roberta => "roberta",
            Family::XlmRoberta => "xlm-roberta",
            Family::DistilBert => "distilbert",
        }
    }

    /// RoBERTa-style position ids (counting from `pad_token_id + 1`).
    pub fn offset_positions(self) -> bool {
        matches!(self, Family::Roberta | Family::XlmRoberta)
    }
}

/// What the model serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// One pooled vector per text.
    Embedding,
    /// One score per label per text (or text pair).
    Classifier,
    /// One relevance score per (query, text) pair: a classifier with one label.
    Reranker,
}

impl Task {
    /// Name as `/info` reports it.
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Embedding => "embedding",
            Task::Classifier => "classifier",
            Task::Reranker => "reranker",
        }
    }

    /// The HTTP routes and gRPC methods that serve this kind of model.
    pub fn routes(self) -> &'static [&'static str] {
        match self {
            Task::Embedding => &["POST /embed", "POST /v1/embeddings", "gRPC Infer"],
            Task::Classifier => &["POST /predict", "gRPC Infer"],
            Task::Reranker => &["POST /rerank", "POST /predict", "gRPC Rerank", "gRPC Infer"],
        }
    }
}

/// How the weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `model.safetensors`, run by our own encoder.
    Safetensors(Family),
    /// `model.pt`, a traced or scripted module; `inputs` is 2, 3 or unknown (detected).
    TorchScript {
        /// `forward`'s inputs, if configured.
        inputs: Option<usize>,
    },
}

impl Format {
    /// `bert`, `roberta`, ... or `torchscript`.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Safetensors(f) => f.as_str(),
            Format::TorchScript { .. } => "torchscript",
        }
    }
}

/// How a classifier's logits become scores (transformers' text-classification pipeline rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemType {
    /// Softmax over the labels (several labels, `single_label_classification` or unset).
    SingleLabel,
    /// Sigmoid per label (`multi_label_classification`, or a single label).
    MultiLabel,
    /// The raw logits (`regression`).
    Regression,
}

impl ProblemType {
    /// transformers' rule: `problem_type` when set, else sigmoid for one label and softmax for
    /// several.
    pub fn from_config(
        problem_type: Option<&str>,
        labels: usize,
    ) -> Result<ProblemType, ModelError> {
        match problem_type {
            Some("single_label_classification") => Ok(ProblemType::SingleLabel),
            Some("multi_label_classification") => Ok(ProblemType::MultiLabel),
            Some("regression") => Ok(ProblemType::Regression),
            None if labels == 1 => Ok(ProblemType::MultiLabel),
            None => Ok(ProblemType::SingleLabel),
            Some(other) => Err(ModelError::Config(format!(
                "config.json: problem_type `{other}` is not one of single_label_classification, \
                 multi_label_classification, regression"
            ))),
        }
    }

    /// Name as `/info` reports it.
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemType::SingleLabel => "single_label_classification",
            ProblemType::MultiLabel => "multi_label_classification",
            ProblemType::Regression => "regression",
        }
    }
}

fn default_type_vocab() -> i64 {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}

/// Everything about the model that is read from its folder and the configuration once, at
/// start-up, and shared (read-only) by the tokenizers, the workers and the API.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// Name shown to clients.
    pub name: String,
    /// The model folder.
    pub path: PathBuf,
    /// The encoder's shape.
    pub encoder: EncoderConfig,
    /// Longest input in tokens (special tokens included).
    pub max_seq_length: usize,
    /// How token states become one vector.
    pub pooling: Pooling,
    /// Whether embeddings are L2-normalised unless a request says otherwise.
    pub normalize: bool,
    /// The device, resolved once at start (`device::select`).
    pub device: tch::Device,
    /// Weights' precision.
    pub dtype: DType,
    /// What the model serves.
    pub task: Task,
    /// How the weights are stored, and which encoder runs them.
    pub format: Format,
    /// A classifier's labels, by index (empty for an embedding model).
    pub labels: Vec<String>,
    /// How a classifier's logits become scores.
    pub problem_type: ProblemType,
    /// sentence-transformers' prompts (`config_sentence_transformers.json`), by name: the text
    /// a `prompt_name` prepends.
    pub prompts: std::collections::BTreeMap<String, String>,
    /// The prompt applied when a request names none (`default_prompt_name`).
    pub default_prompt: Option<String>,
    /// Token ids an input may hold: 0 up to one less than this (the tokenizer's vocabulary,
    /// added tokens included: what tokenizing checks ids against).
    pub vocab_size: usize,
    /// `int8` / `uint8` calibration ranges (`model.quantization`), when configured.
    pub calibration: Option<Arc<calibrate::Calibrator>>,
}

/// `config_sentence_transformers.json`'s prompts.
#[derive(Deserialize, Default)]
struct StConfig {
    #[serde(default)]
    prompts: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    default_prompt_name: Option<String>,
}

/// A model folder that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file is missing or unreadable.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The weights lack a tensor, or a tensor has the wrong shape.
    #[error("model weights: {0}")]
    Weights(String),
    /// libtorch refused something.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// The configuration asks for something the model cannot do.
    #[error("{0}")]
    Config(String),
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::File {
        path: path.into(),
        message: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::File {
        path: path.into(),
        message: format!("not the expected JSON: {e}"),
    })
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

#[derive(Deserialize)]
struct TokenizerConfig {
    model_max_length: Option<f64>,
}

/// `1_Pooling/config.json`: sentence-transformers before 6 writes one `pooling_mode_*` flag
/// per mode; 6 writes `pooling_mode` (a name, or a list of one).
#[derive(Deserialize, Default)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode: Option<serde_json::Value>,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

#[derive(Deserialize)]
struct StModule {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: String,
}

impl ModelSpec {
    /// Reads the model folder's metadata (not the weights) and merges the configuration's
    /// choices over the folder's own defaults. `device` is `model.device` as resolved at start
    /// (`device::Probe::resolve`).
    pub fn load(cfg: &config::Model, device: tch::Device) -> Result<ModelSpec, ModelError> {
        let dir = &cfg.path;
        let encoder: EncoderConfig = read_json(&dir.join("config.json"))?;
        if encoder.hidden_size % encoder.num_attention_heads != 0 {
            return Err(ModelError::Config(format!(
                "config.json: hidden_size {} is not a multiple of num_attention_heads {}",
                encoder.hidden_size, encoder.num_attention_heads
            )));
        }
        // sentence-transformers' modules.json: where pooling lives and whether Normalize is on.
        let modules: Vec<StModule> = if dir.join("modules.json").is_file() {
            read_json(&dir.join("modules.json"))?
        } else {
            Vec::new()
        };
        let pooling_dir = modules
            .iter()
            .find(|m| m.kind.ends_with(".Pooling"))
            .map(|m| dir.join(&m.path))
            .unwrap_or_else(|| dir.join("1_Pooling"));
        let folder_pooling = if pooling_dir.join("config.json").is_file() {
            let p: PoolingConfig = read_json(&pooling_dir.join("config.json"))?;
            let mode = match &p.pooling_mode {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Array(v)) if v.len() == 1 => {
                    v[0].as_str().map(str::to_owned)
                }
                Some(other) => {
                    return Err(ModelError::Config(format!(
                        "1_Pooling/config.json: pooling_mode {other} is not supported \
                         (one of cls, max, mean, mean_sqrt_len_tokens, lasttoken)"
                    )));
                }
                None => None,
            };
            if let Some(mode) = mode {
                match mode.as_str() {
                    "cls" => Pooling::Cls,
                    "max" => Pooling::Max,
                    "mean" => Pooling::Mean,
                    "mean_sqrt_len_tokens" => Pooling::MeanSqrtLen,
                    "lasttoken" => Pooling::LastToken,
                    other => {
                        return Err(ModelError::Config(format!(
                            "1_Pooling/config.json: pooling_mode `{other}` is not supported \
                             (cls, max, mean, mean_sqrt_len_tokens, lasttoken)"
                        )));
                    }
                }
            } else if p.pooling_mode_cls_token {
                Pooling::Cls
            } else if p.pooling_mode_max_tokens {
                Pooling::Max
            } else if p.pooling_mode_mean_sqrt_len_tokens {
                Pooling::MeanSqrtLen
            } else if p.pooling_mode_lasttoken {
                Pooling::LastToken
            } else {
                // pooling_mode_mean_tokens, or no flag at all.
                Pooling::Mean
            }
        } else {
            Pooling::Mean
        };
        let folder_normalize = modules.iter().any(|m| m.kind.ends_with(".Normalize"));
        let st_max = if dir.join("sentence_bert_config.json").is_file() {
            read_json::<SentenceBertConfig>(&dir.join("sentence_bert_config.json"))?.max_seq_length
        } else {
            None
        };
        let format = if cfg.kind == ModelKind::Torchscript
            || (!dir.join("model.safetensors").is_file() && dir.join("model.pt").is_file())
        {
            Format::TorchScript {
                inputs: cfg.torchscript_inputs,
            }
        } else {
            Format::Safetensors(Family::from_model_type(&encoder.model_type)?)
        };
        if matches!(format, Format::TorchScript { .. }) && cfg.dtype != DType::F32 {
            return Err(ModelError::Config(format!(
                "model.dtype: {} is not applied to a TorchScript module (converting it would \
                 also convert its integer buffers); it runs in the precision it was traced in, \
                 so trace it in that precision and keep model.dtype f32",
                cfg.dtype.as_str()
            )));
        }
        // RoBERTa's positions start at pad_token_id + 1, so two positions are never used.
        let family_offset = match format {
            Format::Safetensors(f) if f.offset_positions() => encoder.pad_token_id + 1,
            Format::TorchScript { .. }
                if Family::from_model_type(&encoder.model_type)
                    .is_ok_and(Family::offset_positions) =>
            {
                encoder.pad_token_id + 1
            }
            _ => 0,
        };
        let labels: Vec<String> = match &encoder.id2label {
            Some(map) => {
                let mut pairs: Vec<(usize, String)> = map
                    .iter()
                    .map(|(k, v)| {
                        k.parse::<usize>().map(|i| (i, v.clone())).map_err(|_| {
                            ModelError::Config(format!(
                                "config.json: id2label key `{k}` is not an index"
                            ))
                        })
                    })
                    .collect::<Result<_, _>>()?;
                pairs.sort();
                if pairs.iter().enumerate().any(|(n, (i, _))| n != *i) {
                    return Err(ModelError::Config(
                        "config.json: id2label's keys are not 0..n".into(),
                    ));
                }
                pairs.into_iter().map(|(_, v)| v).collect()
            }
            None => Vec::new(),
        };
        let classifier_folder = encoder
            .architectures
            .iter()
            .any(|a| a.ends_with("ForSequenceClassification"));
        let task = match cfg.kind {
            ModelKind::Embedding => Task::Embedding,
            ModelKind::Classifier => Task::Classifier,
            ModelKind::Reranker => Task::Reranker,
            ModelKind::Auto | ModelKind::Torchscript if classifier_folder => {
                if labels.len() == 1 {
                    Task::Reranker
                } else {
                    Task::Classifier
                }
            }
            ModelKind::Auto | ModelKind::Torchscript => Task::Embedding,
        };
        let labels = if task == Task::Embedding {
            Vec::new()
        } else if labels.is_empty() {
            // transformers' default when config.json names none.
            vec!["LABEL_0".to_string(), "LABEL_1".to_string()]
        } else {
            labels
        };
        if task == Task::Reranker && labels.len() != 1 {
            return Err(ModelError::Config(format!(
                "model.kind: reranker needs a model with one label; config.json's id2label has {}",
                labels.len()
            )));
        }
        let problem_type = ProblemType::from_config(encoder.problem_type.as_deref(), labels.len())?;
        let positions = (encoder.max_position_embeddings - family_offset).max(1) as usize;
        // sentence-transformers 6 keeps the maximum in the tokenizer's `model_max_length`
        // (transformers writes a huge number there when there is none).
        let tokenizer_max = if dir.join("tokenizer_config.json").is_file() {
            read_json::<TokenizerConfig>(&dir.join("tokenizer_config.json"))?
                .model_max_length
                .filter(|&n| n >= 1.0 && n <= positions as f64)
                .map(|n| n as usize)
        } else {
            None
        };
        let max_seq_length = cfg
            .max_seq_length
            .or(st_max)
            .or(tokenizer_max)
            .unwrap_or(positions);
        if max_seq_length > positions {
            return Err(ModelError::Config(format!(
                "model.max_seq_length {max_seq_length} is more than the model's \
                 max_position_embeddings {positions}"
            )));
        }
        let st_config: StConfig = if dir.join("config_sentence_transformers.json").is_file() {
            read_json(&dir.join("config_sentence_transformers.json"))?
        } else {
            StConfig::default()
        };
        if let Some(name) = &st_config.default_prompt_name
            && !st_config.prompts.contains_key(name)
        {
            return Err(ModelError::Config(format!(
                "config_sentence_transformers.json: default_prompt_name `{name}` is not one of \
                 its prompts"
            )));
        }
        let name = cfg.served_name();
        let vocab_size = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| ModelError::File {
                path: dir.join("tokenizer.json"),
                message: format!("cannot load tokenizer: {e}"),
            })?
            .get_vocab_size(true);
        let normalize = task == Task::Embedding && cfg.normalize.unwrap_or(folder_normalize);
        let calibration = cfg
            .quantization
            .as_ref()
            .map(|q| {
                calibrate::Calibrator::from_config(q, task, encoder.hidden_size as usize, normalize)
            })
            .transpose()?
            .map(Arc::new);
        Ok(ModelSpec {
            name,
            path: dir.clone(),
            encoder,
            max_seq_length,
            pooling: cfg.pooling.unwrap_or(folder_pooling),
            // A classifier's rows are logits: never normalised.
            normalize,
            device,
            dtype: cfg.dtype,
            task,
            format,
            labels,
            problem_type,
            prompts: st_config.prompts,
            default_prompt: st_config.default_prompt_name,
            vocab_size,
            calibration,
        })
    }

    /// Width of the embeddings.
    pub fn dim(&self) -> usize {
        self.encoder.hidden_size as usize
    }
}

/// L2-normalises `v` in place (sentence-transformers' Normalize: divide by max(‖v‖, 1e-12)).
pub fn normalize_l2(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}

/// A loaded model of any supported format: what a model worker owns.
pub enum Model {
    /// `model.safetensors`, run by our BERT-family encoder.
    Encoder(bert::Bert),
    /// `model.pt`, run by libtorch's TorchScript interpreter.
    TorchScript(torchscript::TorchScript),
}

impl Model {
    /// Loads the model the spec describes onto its device.
    pub fn load(spec: &ModelSpec) -> Result<Model, ModelError> {
        if spec.device == tch::Device::Cpu {
            tracing::debug!(
                overridden = mkl::vendor_check_overridden(),
                "MKL's CPU vendor check (see model::mkl)"
            );
        }
        match spec.format {
            Format::Safetensors(_) => bert::Bert::load(spec).map(Model::Encoder),
            Format::TorchScript { .. } => {
                torchscript::TorchScript::load(spec).map(Model::TorchScript)
            }
        }
    }

    /// One f32 row per text of a padded batch: a pooled embedding (not normalised) or a
    /// classifier's logits. libtorch's errors (out of memory, a module refusing the input)
    /// are errors, not panics.
    /// Rows marked in `tokens` get every real token's state (flattened) instead of the pooled
    /// row (`/embed_all`); `tokens` may be empty (none).
    pub fn run(
        &self,
        batch: &bert::Padded,
        pooling: Pooling,
        tokens: &[bool],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        match self {
            Model::Encoder(m) => Ok(m.embed(batch, pooling, tokens)?),
            Model::TorchScript(m) => m.run(batch, pooling, tokens),
        }
    }
}
