//! One model's keys (`model:` / `models[i]`), its tokenizer pool and batching budget, and their
//! validation.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `model:` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// Folder of a Hugging Face / sentence-transformers model (`config.json`,
    /// `model.safetensors`, `tokenizer.json`, optional `1_Pooling/`, `modules.json`), or, when
    /// no such folder exists, a Hugging Face id (`org/name`, optionally `@revision`), resolved
    /// at load to its snapshot in the Hugging Face cache (`crate::hub`).
    pub path: PathBuf,
    /// The Hub id and revision `path` was resolved from (set at load; `--check` shows it).
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub hub: Option<crate::hub::Resolved>,
    /// Name reported to clients; defaults to the folder's name.
    #[serde(default)]
    pub name: Option<String>,
    /// `auto` (CUDA, then MPS, then CPU), `cpu`, `cuda`, `cuda:N` or `mps`.
    #[serde(default)]
    pub device: Device,
    /// Weights' precision: `f32`, or `f16` / `bf16` on GPUs.
    #[serde(default)]
    pub dtype: DType,
    /// Model worker instances, each a thread owning one copy of the model.
    #[serde(default = "one")]
    pub instances: usize,
    /// Longest input in tokens; defaults to `sentence_bert_config.json`'s `max_seq_length`.
    #[serde(default)]
    pub max_seq_length: Option<usize>,
    /// Pooling; defaults to `1_Pooling/config.json` (mean when absent).
    #[serde(default)]
    pub pooling: Option<Pooling>,
    /// L2-normalise embeddings by default; defaults to whether `modules.json` has a Normalize
    /// module. A request can still ask otherwise.
    #[serde(default)]
    pub normalize: Option<bool>,
    /// libtorch intra-op threads per worker; defaults to cores / instances (at least 1).
    #[serde(default)]
    pub intra_op_threads: Option<usize>,
    /// Pin worker i (and its libtorch threads) to cores i×t .. i×t+t-1, t = intra-op threads
    /// (Linux). Off by default.
    #[serde(default)]
    pub pin_cores: bool,
    /// What the model serves and in which format (see [`ModelKind`]); `auto` reads the folder.
    #[serde(default)]
    pub kind: ModelKind,
    /// Inputs a TorchScript module's `forward` takes: 2 (`input_ids`, `attention_mask`) or 3
    /// (plus `token_type_ids`); unset: detected at load by trying 2, then 3.
    #[serde(default)]
    pub torchscript_inputs: Option<usize>,
    /// This model's tokenizer pool, in place of the top-level `tokenizer:` section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<Tokenizer>,
    /// This model's batching budget, in place of the top-level `batching:` section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batching: Option<Batching>,
    /// Calibration ranges for `int8` / `uint8` embeddings (`model::quantize`); `binary` and
    /// `ubinary` need none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<Quantization>,
}

/// `model.quantization`: where an embedding model's `int8` / `uint8` calibration ranges come
/// from, one of the two (README "Quantized embeddings"). Relative paths are resolved against the
/// YAML file's folder.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quantization {
    /// Per-dimension ranges, `2 × dim` (row 0 each dimension's minimum, row 1 its maximum), as
    /// sentence-transformers' `quantize_embeddings(..., ranges=...)` takes them: JSON
    /// `[[min, ...], [max, ...]]` or a NumPy `.npy` (float32 or float64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranges_file: Option<PathBuf>,
    /// Texts, one per line, embedded at load (after the warm-up); the ranges are their
    /// embeddings' per-dimension minimum and maximum, as `quantize_embeddings(...,
    /// calibration_embeddings=...)` computes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration_file: Option<PathBuf>,
}

impl Model {
    /// The name clients use: `name`, else a Hub id's last part, else the folder's own name
    /// (not the link target's: models/all-MiniLM-L6-v2 is a link into the cache), unless the
    /// path ends in `.` or `..`.
    pub fn served_name(&self) -> String {
        let hub = self.hub.as_ref().map(crate::hub::Resolved::name);
        self.name.clone().or(hub).unwrap_or_else(|| {
            self.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .or_else(|| {
                    self.path
                        .canonicalize()
                        .ok()
                        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
                })
                .unwrap_or_else(|| "model".into())
        })
    }
}

/// `model.kind`: what the model serves, or that it is a TorchScript module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Decided by the folder: `model.safetensors` or `model.pt`, and `config.json`'s
    /// `architectures` (`*ForSequenceClassification`: a classifier, a reranker with one label).
    #[default]
    Auto,
    /// Pooled embeddings (`/embed`, `/v1/embeddings`).
    Embedding,
    /// A sequence classifier's scores per label (`/predict`).
    Classifier,
    /// A cross-encoder: one relevance score per (query, text) pair (`/rerank`, `/predict`).
    Reranker,
    /// A TorchScript module (`model.pt`); what it serves is read from `config.json`.
    Torchscript,
}

/// `model.device`: where the model runs, as written (`auto`, `cpu`, `cuda`, `cuda:N`, `mps`).
/// Resolved against what the host offers at start (`model::device::Probe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Device {
    /// A CUDA GPU if one is usable, then MPS, then the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// NVIDIA GPU number N (`cuda` is `cuda:0`).
    Cuda(usize),
    /// Apple's GPU.
    Mps,
}

/// A `model.device` that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a device; expected auto, cpu, cuda, cuda:N or mps")]
pub struct DeviceParseError(String);

impl Device {
    /// Parses `auto`, `cpu`, `cuda`, `cuda:N` or `mps`.
    pub fn parse(s: &str) -> Result<Device, DeviceParseError> {
        match s.trim() {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            "mps" => Ok(Device::Mps),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Device::Cuda(n)),
                _ => Err(DeviceParseError(other.to_string())),
            },
        }
    }
}

impl TryFrom<String> for Device {
    type Error = DeviceParseError;
    fn try_from(s: String) -> Result<Device, DeviceParseError> {
        Device::parse(&s)
    }
}

impl From<Device> for String {
    fn from(d: Device) -> String {
        d.to_string()
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Auto => f.write_str("auto"),
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
            Device::Mps => f.write_str("mps"),
        }
    }
}
fn one() -> usize {
    1
}

/// Numeric precision of the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// 32-bit float: the reference precision.
    #[default]
    F32,
    /// 16-bit float (GPUs).
    F16,
    /// bfloat16 (GPUs).
    Bf16,
}

impl DType {
    /// Name as written in the YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
        }
    }
}

/// How token states become one vector per text (sentence-transformers' pooling modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Mean of the token states under the attention mask.
    Mean,
    /// The first (`[CLS]`) token's state.
    Cls,
    /// Element-wise maximum over the real tokens.
    Max,
    /// Sum divided by the square root of the length.
    MeanSqrtLen,
    /// The last real token's state.
    LastToken,
}

impl Pooling {
    /// Name as written in the YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Max => "max",
            Pooling::MeanSqrtLen => "mean_sqrt_len",
            Pooling::LastToken => "last_token",
        }
    }
}

/// `tokenizer:` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tokenizer {
    /// Tokenizer threads (the original workflow's case C remedy is raising this).
    #[serde(default = "one")]
    pub workers: usize,
}

impl Default for Tokenizer {
    fn default() -> Self {
        Self { workers: 1 }
    }
}

/// `batching:` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batching {
    /// Most texts in one forward.
    #[serde(default = "default_max_batch_size")]
    pub max_batch_size: usize,
    /// Most padded tokens (texts × longest text) in one forward.
    #[serde(default = "default_max_batch_tokens")]
    pub max_batch_tokens: usize,
    /// Hold a batch that is not full for up to this long so more texts can join it; 0 (the
    /// default) takes what is queued the moment a worker is free.
    #[serde(default)]
    pub max_wait_ms: f64,
    /// Most texts waiting (being tokenized or queued for a worker); past it requests are
    /// refused at once with 429 / RESOURCE_EXHAUSTED instead of queueing without bound.
    #[serde(default = "default_max_queue_texts")]
    pub max_queue_texts: usize,
    /// While interactive requests are about (waiting, or one seen within
    /// `interactive_window_ms`), batch-priority texts join a forward only while its expected
    /// duration stays within this many milliseconds. `auto` (the default): three times the
    /// expected forward of one short text (16 tokens), from the cost the workers measure at
    /// warm-up and every forward since; `0`: no budget (and no tail budget).
    #[serde(default)]
    pub latency_budget_ms: LatencyBudget,
    /// The longer budget of a *tail* forward: while interactive requests are about but none
    /// waits, a forward of batch work may run up to this many milliseconds when fewer than
    /// `tail_share` of the interactive requests lately found one running, so batch work keeps
    /// most of its rate. `auto` (the default): twelve times the expected forward of one short
    /// text; `0`: no tail forwards.
    #[serde(default)]
    pub tail_budget_ms: LatencyBudget,
    /// The share of interactive requests (0 to 1) that may find a tail forward running: below
    /// one half, the median query waits behind at most one forward within the latency budget.
    #[serde(default = "default_tail_share")]
    pub tail_share: f64,
    /// Requests that say no priority (and whose route has none in
    /// `server.route_priorities`) are interactive when they hold at most this many texts,
    /// batch otherwise; 0: batch always.
    #[serde(default = "default_interactive_max_texts")]
    pub interactive_max_texts: usize,
    /// How long after the last interactive request the latency budget still applies, so a
    /// query arriving between two others does not find a long batch running.
    #[serde(default = "default_interactive_window_ms")]
    pub interactive_window_ms: f64,
    /// Aging: a request whose texts have waited this long since it last had one in a forward
    /// gets one into the next forward, ahead of everything newer, whatever its priority and
    /// the latency budget (nothing starves).
    #[serde(default = "default_aging_ms")]
    pub aging_ms: f64,
    /// Of the model's `instances`, how many only run forwards that hold interactive texts
    /// (idle otherwise); 0 (the default): every worker takes any batch. Less than `instances`.
    #[serde(default)]
    pub reserved_interactive_instances: usize,
}

/// `batching.latency_budget_ms` and `batching.tail_budget_ms`: `auto` or milliseconds (`0`:
/// none).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum LatencyBudget {
    /// A multiple of the expected forward of one short text, as the workers measure it.
    #[default]
    Auto,
    /// This many milliseconds; 0 turns the budget off.
    Millis(f64),
}

impl Serialize for LatencyBudget {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            LatencyBudget::Auto => s.serialize_str("auto"),
            LatencyBudget::Millis(ms) => s.serialize_f64(*ms),
        }
    }
}

impl<'de> Deserialize<'de> for LatencyBudget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected `auto` or a number of milliseconds"))?
        {
            Raw::Number(ms) => Ok(LatencyBudget::Millis(ms)),
            Raw::Text(t) if t.trim().eq_ignore_ascii_case("auto") => Ok(LatencyBudget::Auto),
            // The environment gives numbers as text.
            Raw::Text(t) => t.trim().parse().map(LatencyBudget::Millis).map_err(|_| {
                serde::de::Error::custom(format!("`{t}` is not `auto` or a number of milliseconds"))
            }),
        }
    }
}

fn default_interactive_max_texts() -> usize {
    8
}

fn default_interactive_window_ms() -> f64 {
    1000.0
}

fn default_aging_ms() -> f64 {
    2000.0
}

fn default_tail_share() -> f64 {
    0.3
}

fn default_max_queue_texts() -> usize {
    4096
}

fn default_max_batch_size() -> usize {
    64
}
fn default_max_batch_tokens() -> usize {
    16384
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            max_batch_size: default_max_batch_size(),
            max_batch_tokens: default_max_batch_tokens(),
            max_wait_ms: 0.0,
            max_queue_texts: default_max_queue_texts(),
            latency_budget_ms: LatencyBudget::Auto,
            tail_budget_ms: LatencyBudget::Auto,
            tail_share: default_tail_share(),
            interactive_max_texts: default_interactive_max_texts(),
            interactive_window_ms: default_interactive_window_ms(),
            aging_ms: default_aging_ms(),
            reserved_interactive_instances: 0,
        }
    }
}

/// Checks one model's own keys; `key` is where it sits (`model` or `models[i]`).
pub(super) fn validate_model(m: &Model, key: &str) -> Result<(), ConfigError> {
    if m.instances == 0 {
        return Err(ConfigError::new(
            format!("{key}.instances"),
            "must be at least 1",
        ));
    }
    if m.intra_op_threads == Some(0) {
        return Err(ConfigError::new(
            format!("{key}.intra_op_threads"),
            "must be at least 1",
        ));
    }
    if m.max_seq_length == Some(0) {
        return Err(ConfigError::new(
            format!("{key}.max_seq_length"),
            "must be at least 1",
        ));
    }
    if !m.path.is_dir() {
        return Err(ConfigError::new(
            format!("{key}.path"),
            format!(
                "{} is not a folder (run `make setup` to fetch the default model)",
                m.path.display()
            ),
        ));
    }
    for file in ["config.json", "tokenizer.json"] {
        if !m.path.join(file).is_file() {
            return Err(ConfigError::new(
                format!("{key}.path"),
                format!("{} has no {file}", m.path.display()),
            ));
        }
    }
    let weights = if m.kind == ModelKind::Torchscript {
        &["model.pt"][..]
    } else {
        &["model.safetensors", "model.pt"][..]
    };
    if !weights.iter().any(|f| m.path.join(f).is_file()) {
        return Err(ConfigError::new(
            format!("{key}.path"),
            format!("{} has no {}", m.path.display(), weights.join(" or ")),
        ));
    }
    if let Some(q) = &m.quantization {
        let files = [
            ("ranges_file", &q.ranges_file),
            ("calibration_file", &q.calibration_file),
        ];
        let set: Vec<_> = files.iter().filter(|(_, f)| f.is_some()).collect();
        if set.len() != 1 {
            return Err(ConfigError::new(
                format!("{key}.quantization"),
                "give exactly one of ranges_file (per-dimension ranges) and calibration_file \
                 (texts to compute them from)",
            ));
        }
        let (name, file) = set[0];
        let file = file.as_ref().expect("filtered on is_some");
        if !file.is_file() {
            return Err(ConfigError::new(
                format!("{key}.quantization.{name}"),
                format!("{} does not exist or is not a file", file.display()),
            ));
        }
    }
    if let Some(n) = m.torchscript_inputs
        && !(2..=3).contains(&n)
    {
        return Err(ConfigError::new(
            format!("{key}.torchscript_inputs"),
            format!("{n} is not 2 (input_ids, attention_mask) or 3 (plus token_type_ids)"),
        ));
    }
    if m.tokenizer.is_some() || m.batching.is_some() {
        let t = m.tokenizer.clone().unwrap_or_default();
        let b = m.batching.clone().unwrap_or_default();
        validate_pools(&t, &b, &format!("{key}."))?;
    }
    Ok(())
}

/// Checks a tokenizer pool and a batching budget; `prefix` is empty for the top-level
/// sections, `models[i].` for a model's own.
pub(super) fn validate_pools(
    tokenizer: &Tokenizer,
    batching: &Batching,
    prefix: &str,
) -> Result<(), ConfigError> {
    if tokenizer.workers == 0 {
        return Err(ConfigError::new(
            format!("{prefix}tokenizer.workers"),
            "must be at least 1",
        ));
    }
    let b = batching;
    if b.max_batch_size == 0 {
        return Err(ConfigError::new(
            format!("{prefix}batching.max_batch_size"),
            "must be at least 1",
        ));
    }
    if b.max_batch_tokens == 0 {
        return Err(ConfigError::new(
            format!("{prefix}batching.max_batch_tokens"),
            "must be at least 1",
        ));
    }
    if b.max_queue_texts == 0 {
        return Err(ConfigError::new(
            format!("{prefix}batching.max_queue_texts"),
            "must be at least 1",
        ));
    }
    if !(b.max_wait_ms.is_finite() && (0.0..=10_000.0).contains(&b.max_wait_ms)) {
        return Err(ConfigError::new(
            format!("{prefix}batching.max_wait_ms"),
            format!("{} must be between 0 and 10000", b.max_wait_ms),
        ));
    }
    for (key, budget) in [
        ("latency_budget_ms", b.latency_budget_ms),
        ("tail_budget_ms", b.tail_budget_ms),
    ] {
        if let LatencyBudget::Millis(ms) = budget
            && !(ms.is_finite() && (0.0..=600_000.0).contains(&ms))
        {
            return Err(ConfigError::new(
                format!("{prefix}batching.{key}"),
                format!("{ms} must be `auto` or between 0 (none) and 600000"),
            ));
        }
    }
    if !(b.tail_share.is_finite() && (0.0..=1.0).contains(&b.tail_share)) {
        return Err(ConfigError::new(
            format!("{prefix}batching.tail_share"),
            format!("{} must be between 0 and 1", b.tail_share),
        ));
    }
    for (key, ms) in [
        ("interactive_window_ms", b.interactive_window_ms),
        ("aging_ms", b.aging_ms),
    ] {
        if !(ms.is_finite() && (0.0..=3_600_000.0).contains(&ms)) {
            return Err(ConfigError::new(
                format!("{prefix}batching.{key}"),
                format!("{ms} must be between 0 and 3600000"),
            ));
        }
    }
    Ok(())
}
