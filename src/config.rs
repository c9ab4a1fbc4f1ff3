//! The experiment configuration: one typed YAML file, validated once at start-up.
//!
//! Precedence, highest first: command-line flags, environment variables
//! (`ACTOR_INFER__SECTION__KEY`, e.g. `ACTOR_INFER__SERVER__HTTP_PORT=9000`), the YAML file,
//! the defaults below. Unknown keys, wrong types and impossible values stop the program before
//! anything starts, with one message that names the key. Relative paths in the YAML are resolved
//! against the YAML file's folder.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Prefix of the environment variables that override YAML keys; `__` separates the levels.
pub const ENV_PREFIX: &str = "ACTOR_INFER";
/// Separator between levels in those variables' names.
pub const ENV_SEPARATOR: &str = "__";

/// A configuration that cannot be used, with the key it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct ConfigError {
    /// Dotted path of the offending key, e.g. `model.instances`; the file for parse errors.
    pub key: String,
    /// What is wrong with it.
    pub problem: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// The whole experiment file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Which experiment this is; shown in logs, `/info` and metrics.
    #[serde(default)]
    pub experiment: Experiment,
    /// Network front ends.
    #[serde(default)]
    pub server: Server,
    /// The model and how it runs, when the experiment serves one (`model:`). Moved into
    /// [`Config::models`] at load: read it through [`Config::model`].
    #[serde(default, skip_serializing)]
    pub model: Option<Model>,
    /// Every model served, in the file's order (`models:`, or `model:` as a list of one).
    #[serde(default)]
    pub models: Vec<Model>,
    /// The tokenizer pool.
    #[serde(default)]
    pub tokenizer: Tokenizer,
    /// How queued texts are grouped into forwards.
    #[serde(default)]
    pub batching: Batching,
    /// The stop sequence.
    #[serde(default)]
    pub shutdown: Shutdown,
    /// Restarts of panicked actors.
    #[serde(default)]
    pub supervision: Supervision,
    /// Log output.
    #[serde(default)]
    pub logging: Logging,
    /// The JSON dashboard.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// What `actor-infer bench` and `scripts/run_experiment.sh` send by default.
    #[serde(default)]
    pub workload: Workload,
    /// OpenTelemetry tracing (off unless `telemetry.otlp_endpoint` is set).
    #[serde(default)]
    pub telemetry: Telemetry,
    /// Models named by their Hugging Face id (`crate::hub`).
    #[serde(default)]
    pub hub: Hub,
    /// Whether the file listed `models:` (error keys then say `models[i]`).
    #[serde(skip)]
    listed: bool,
}

/// An experiment's `workload:` section (read by `bench` and `scripts/run_experiment.sh`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// gRPC or HTTP.
    #[serde(default)]
    pub transport: Option<Transport>,
    /// Requests in flight.
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// Seconds to run.
    #[serde(default)]
    pub duration_seconds: Option<f64>,
    /// Requests to send (instead of a duration).
    #[serde(default)]
    pub requests: Option<u64>,
    /// Texts per request.
    #[serde(default)]
    pub texts_per_request: Option<usize>,
    /// Token length: `N` or `MIN-MAX`.
    #[serde(default)]
    pub tokens: Option<String>,
    /// A file of texts, one per line (relative to the YAML's folder).
    #[serde(default)]
    pub texts_file: Option<PathBuf>,
}

/// Transport `actor-infer bench` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// `actor_infer.v1.InferenceService/Infer`.
    Grpc,
    /// `POST /v1/embeddings`.
    Http,
}

/// `experiment:` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Name of the experiment; defaults to the YAML file's stem.
    #[serde(default)]
    pub name: String,
}

/// `server:` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Address both servers bind; 127.0.0.1 unless configured (containers use 0.0.0.0).
    #[serde(default = "default_host")]
    pub host: String,
    /// gRPC port; 0 picks a free one (it is logged).
    #[serde(default = "default_grpc_port")]
    pub grpc_port: u32,
    /// HTTP port; 0 picks a free one (it is logged).
    #[serde(default = "default_http_port")]
    pub http_port: u32,
    /// actix-web worker threads (async I/O only; inference runs on the model workers).
    #[serde(default = "default_http_workers")]
    pub http_workers: usize,
    /// Admission control: most texts in flight (tokenizing, queued or running) over both
    /// transports. Past it requests are refused at once (429 + `Retry-After` /
    /// RESOURCE_EXHAUSTED), before any queue.
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// Most texts in one request.
    #[serde(default = "default_max_client_batch_size")]
    pub max_client_batch_size: usize,
    /// Most characters (Unicode scalar values) in one text.
    #[serde(default = "default_max_input_chars")]
    pub max_input_chars: usize,
    /// Largest HTTP body and largest gRPC request message, in bytes.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// How long a request may take from arrival to answer; past it, it is answered 504 /
    /// DEADLINE_EXCEEDED and its queued work is dropped before inference. A gRPC client's own
    /// deadline (`grpc-timeout`) wins when it is sooner.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_seconds: f64,
    /// When set, inference routes need `Authorization: Bearer <key>` (HTTP header or gRPC
    /// metadata). Give it through the environment (`ACTOR_INFER__SERVER__API_KEY`) rather than
    /// the YAML where you can; it is never logged or printed.
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// With an API key set: whether `/metrics`, `/info` and the dashboard also need it
    /// (`/health`, `/ready` and gRPC health stay open for probes).
    #[serde(default)]
    pub api_key_protects_metrics: bool,
    /// Show the model folder's path in `/info` and gRPC `ModelInfo` (off: it reveals the
    /// server's file system to any client).
    #[serde(default)]
    pub expose_model_path: bool,
    /// With several models: which one serves the routes that carry no model name (TEI's
    /// `/embed`, `/rerank`, `/predict`, our gRPC calls without `model`), by the kind the
    /// route needs: `embedding`, `reranker`, `classifier`. A kind left out goes to the first
    /// model of that kind, else to the first model listed.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub default_models: std::collections::BTreeMap<String, String>,
}

/// A secret string: compared in constant time, never printed (`Debug` and serialisation show
/// `<redacted>`).
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// True if `candidate` is the secret. Runs in time independent of where they differ.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        let secret = self.0.as_bytes();
        // Lengths are compared too (in constant time); only the length's equality leaks.
        let same_len = secret.len().ct_eq(&candidate.len());
        let padded: Vec<u8> = candidate
            .iter()
            .copied()
            .chain(std::iter::repeat(0))
            .take(secret.len())
            .collect();
        bool::from(same_len & secret.ct_eq(&padded))
    }

    fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

fn default_max_concurrent_requests() -> usize {
    1024
}
fn default_max_client_batch_size() -> usize {
    256
}
fn default_max_input_chars() -> usize {
    100_000
}
fn default_max_request_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_request_timeout() -> f64 {
    60.0
}

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_grpc_port() -> u32 {
    50051
}
fn default_http_port() -> u32 {
    8080
}
fn default_http_workers() -> usize {
    2
}

impl Default for Server {
    fn default() -> Self {
        Self {
            host: default_host(),
            grpc_port: default_grpc_port(),
            http_port: default_http_port(),
            http_workers: default_http_workers(),
            max_concurrent_requests: default_max_concurrent_requests(),
            max_client_batch_size: default_max_client_batch_size(),
            max_input_chars: default_max_input_chars(),
            max_request_bytes: default_max_request_bytes(),
            request_timeout_seconds: default_request_timeout(),
            api_key: None,
            api_key_protects_metrics: false,
            expose_model_path: false,
            default_models: Default::default(),
        }
    }
}

/// `hub:` section: models whose `path` is a Hugging Face id (README "A model by its Hugging
/// Face id").
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hub {
    /// Download a model named by its id that is not in the Hugging Face cache (from
    /// `HF_ENDPOINT`, at start only, never while `HF_HUB_OFFLINE` is set). Off by default:
    /// nothing is downloaded unless the experiment says so.
    #[serde(default)]
    pub download: bool,
}

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
        }
    }
}

/// `shutdown:` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shutdown {
    /// The whole stop's budget, spent stage by stage; past it the process aborts. Keep it
    /// below the orchestrator's grace period (Docker 10 s, Kubernetes 30 s).
    #[serde(default = "default_shutdown_timeout")]
    pub timeout_seconds: f64,
}

fn default_shutdown_timeout() -> f64 {
    10.0
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            timeout_seconds: default_shutdown_timeout(),
        }
    }
}

/// `supervision:` section: at most `max_restarts` restarts of panicked actors within
/// `window_seconds`; one more and the server stops (non-zero exit) instead of flapping.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Supervision {
    /// Restarts allowed within the window.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: usize,
    /// The window, in seconds.
    #[serde(default = "default_restart_window")]
    pub window_seconds: f64,
}

fn default_max_restarts() -> usize {
    5
}
fn default_restart_window() -> f64 {
    60.0
}

impl Default for Supervision {
    fn default() -> Self {
        Self {
            max_restarts: default_max_restarts(),
            window_seconds: default_restart_window(),
        }
    }
}

/// `metrics:` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// The JSON dashboard's rolling window (throughput, averages, percentiles), in seconds.
    #[serde(default = "default_window")]
    pub window_seconds: f64,
}

fn default_window() -> f64 {
    60.0
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            window_seconds: default_window(),
        }
    }
}

/// `logging:` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logging {
    /// `text` (human-readable) or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `actor_infer=debug,info`. `RUST_LOG` wins if set.
    #[serde(default = "default_log_level")]
    pub level: String,
}

fn default_log_level() -> String {
    "info".into()
}

impl Default for Logging {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: default_log_level(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `telemetry:` section: OpenTelemetry traces exported over OTLP. Off unless `otlp_endpoint` is
/// set; then every request's span (continuing a W3C `traceparent` it carries) and its tokenize,
/// queue, inference and batch spans are exported.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    /// Where the OTLP collector listens, e.g. `http://127.0.0.1:4317` (gRPC) or
    /// `http://127.0.0.1:4318/v1/traces` (HTTP). Unset: no exporter, no tracing layer.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// `grpc` or `http/protobuf` (`http` for short).
    #[serde(default)]
    pub otlp_protocol: OtlpProtocol,
    /// Share of new traces recorded (0..=1). A request whose `traceparent` says "sampled" (or
    /// "not sampled") follows its caller's decision.
    #[serde(default = "default_sampling_ratio")]
    pub sampling_ratio: f64,
    /// The `service.name` resource attribute.
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

fn default_sampling_ratio() -> f64 {
    1.0
}

fn default_service_name() -> String {
    "actor-infer".into()
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            otlp_protocol: OtlpProtocol::default(),
            sampling_ratio: default_sampling_ratio(),
            service_name: default_service_name(),
        }
    }
}

impl Telemetry {
    /// Checks the ratio, the endpoint's scheme and the service name.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.sampling_ratio.is_finite() && (0.0..=1.0).contains(&self.sampling_ratio)) {
            return Err(ConfigError::new(
                "telemetry.sampling_ratio",
                format!("{} must be between 0 and 1", self.sampling_ratio),
            ));
        }
        if let Some(endpoint) = &self.otlp_endpoint
            && !endpoint.starts_with("http://")
        {
            return Err(ConfigError::new(
                "telemetry.otlp_endpoint",
                format!(
                    "{endpoint:?} must be an http:// URL (host and port of the collector; \
                     TLS is not built in: send to a local collector or agent)"
                ),
            ));
        }
        if self.service_name.trim().is_empty() {
            return Err(ConfigError::new(
                "telemetry.service_name",
                "must not be empty",
            ));
        }
        Ok(())
    }
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (port 4317 by convention).
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318, path `/v1/traces`).
    #[serde(rename = "http/protobuf", alias = "http")]
    HttpProtobuf,
}

/// Command-line values that override the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--host`
    pub host: Option<String>,
    /// `--grpc-port`
    pub grpc_port: Option<u32>,
    /// `--http-port`
    pub http_port: Option<u32>,
}

impl Config {
    /// Reads `path`, applies environment variables and `overrides`, resolves relative paths
    /// and validates everything. The error names the key at fault. A model named by its
    /// Hugging Face id is looked up in the cache only, never downloaded (a reload runs this on
    /// the Supervisor's thread): see [`Config::load_at_start`].
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        Self::load_with(path, overrides, None)
    }

    /// [`Config::load`] at start-up: a model named by its Hugging Face id that is not cached is
    /// downloaded when `hub.download` allows it and `HF_HUB_OFFLINE` is not set; `say` prints
    /// the download's progress lines.
    pub fn load_at_start(
        path: &Path,
        overrides: &Overrides,
        say: crate::hub::Say,
    ) -> Result<Config, ConfigError> {
        Self::load_with(path, overrides, Some(say))
    }

    fn load_with(
        path: &Path,
        overrides: &Overrides,
        fetch: Option<crate::hub::Say>,
    ) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        if !path.is_file() {
            return Err(ConfigError::new(
                "--experiment",
                format!("{shown} does not exist or is not a file"),
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new("--experiment", format!("cannot read {shown}: {e}")))?;
        let env = std::env::vars().filter(|(k, _)| k.starts_with(ENV_PREFIX));
        let mut config = Self::from_sources(&text, env, overrides)
            .map_err(|e| ConfigError::new(e.key, format!("{} (in {shown})", e.problem)))?;
        let folder = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let hub = crate::hub::HubEnv::from_env();
        let download = config.hub.download;
        for i in 0..config.models.len() {
            let key = config.model_key(i);
            let m = &mut config.models[i];
            if let Some(q) = &mut m.quantization {
                for file in [&mut q.ranges_file, &mut q.calibration_file]
                    .into_iter()
                    .flatten()
                {
                    if file.is_relative() {
                        *file = folder.join(&*file);
                    }
                }
            }
            if m.path.is_relative() {
                let written = m.path.clone();
                m.path = folder.join(&written);
                // A folder that exists always wins; else an id-shaped path is a Hub id.
                if !m.path.exists()
                    && let Some(id) = written.to_str().and_then(crate::hub::HubId::parse)
                {
                    let weights = if m.kind == ModelKind::Torchscript {
                        crate::hub::Weights::TorchScript
                    } else {
                        crate::hub::Weights::Any
                    };
                    let quiet: crate::hub::Say = std::sync::Arc::new(|_: &str| {});
                    let say = fetch.as_ref().unwrap_or(&quiet);
                    let (snapshot, resolved) =
                        crate::hub::resolve(&id, weights, &hub, download && fetch.is_some(), say)
                            .map_err(|e| {
                            let reload = if fetch.is_none() && download {
                                " (a reload reads the cache only; the server downloads at start)"
                            } else {
                                ""
                            };
                            ConfigError::new(
                                format!("{key}.path"),
                                format!(
                                    "no folder {} exists, so `{}` was read as a Hugging Face id: \
                                 {e}{reload}",
                                    m.path.display(),
                                    written.display()
                                ),
                            )
                        })?;
                    m.path = snapshot;
                    m.hub = Some(resolved);
                }
            }
        }
        if config.experiment.name.is_empty() {
            config.experiment.name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "experiment".into());
        }
        config.validate()?;
        Ok(config)
    }

    /// Builds a configuration from YAML text, environment pairs and overrides, without
    /// touching the file system (paths stay as written). Types are checked, values are not:
    /// call [`Config::validate`] for that.
    pub fn from_sources(
        yaml: &str,
        env: impl Iterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let env: config::Map<String, String> = env.collect();
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(yaml, config::FileFormat::Yaml))
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator(ENV_SEPARATOR)
                    .separator(ENV_SEPARATOR)
                    .try_parsing(true)
                    .source(Some(env)),
            );
        let set = |b: config::ConfigBuilder<_>, key: &str, v: Option<config::Value>| match v {
            Some(v) => b.set_override(key, v),
            None => Ok(b),
        };
        let err = |e: config::ConfigError| ConfigError::new("--experiment", e.to_string());
        builder = set(
            builder,
            "server.host",
            overrides.host.clone().map(Into::into),
        )
        .map_err(err)?;
        builder = set(
            builder,
            "server.grpc_port",
            overrides.grpc_port.map(|p| i64::from(p).into()),
        )
        .map_err(err)?;
        builder = set(
            builder,
            "server.http_port",
            overrides.http_port.map(|p| i64::from(p).into()),
        )
        .map_err(err)?;
        let raw = builder.build().map_err(|e| {
            // A YAML syntax error: config names no key, the file is the best we can say.
            ConfigError::new("file", e.to_string())
        })?;
        refuse_fractions(&raw)?;
        let mut config: Config = serde_path_to_error::deserialize(raw.clone()).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { "file".to_string() } else { key };
            let problem = e.into_inner().to_string();
            ConfigError::new(key.clone(), refused(&raw, &key, problem.trim()))
        })?;
        // `model:` is a list of one; `models:` lists several. Exactly one of the two.
        match (config.model.take(), config.models.is_empty()) {
            (Some(_), false) => {
                return Err(ConfigError::new(
                    "models",
                    "give either `model:` (one model) or `models:` (a list), not both",
                ));
            }
            (Some(m), true) => config.models.push(m),
            (None, true) => {
                return Err(ConfigError::new(
                    "model",
                    "missing: give `model:` with a `path`, or `models:` with a list of them",
                ));
            }
            (None, false) => config.listed = true,
        }
        Ok(config)
    }

    /// The first model listed (the only one of a `model:` experiment).
    pub fn model(&self) -> &Model {
        &self.models[0]
    }

    /// The configuration as one model's pipeline sees it: `models` holds only model `i`, its
    /// own `tokenizer:` and `batching:` replace the top-level ones, and unset intra-op
    /// threads are the machine's cores divided by the instances of every model served.
    pub fn for_model(&self, i: usize) -> Config {
        let mut view = self.clone();
        let mut m = self.models[i].clone();
        if let Some(t) = m.tokenizer.take() {
            view.tokenizer = t;
        }
        if let Some(b) = m.batching.take() {
            view.batching = b;
        }
        if m.intra_op_threads.is_none() {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let all: usize = self.models.iter().map(|m| m.instances).sum();
            m.intra_op_threads = Some((cores / all.max(1)).max(1));
        }
        view.models = vec![m];
        view.listed = false;
        view
    }

    /// Where model `i`'s keys are, as errors name them: `model` or `models[i]`.
    fn model_key(&self, i: usize) -> String {
        if self.listed {
            format!("models[{i}]")
        } else {
            "model".to_string()
        }
    }

    /// Checks values that types cannot: ranges, zeros, files that must exist.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        if s.host.trim().is_empty() {
            return Err(ConfigError::new("server.host", "must not be empty"));
        }
        for (key, port) in [
            ("server.grpc_port", s.grpc_port),
            ("server.http_port", s.http_port),
        ] {
            if port > 65535 {
                return Err(ConfigError::new(
                    key,
                    format!("{port} is out of range (0..=65535; 0 picks a free port)"),
                ));
            }
        }
        if s.grpc_port != 0 && s.grpc_port == s.http_port {
            return Err(ConfigError::new(
                "server.http_port",
                format!("{} is also server.grpc_port; they must differ", s.http_port),
            ));
        }
        if s.http_workers == 0 {
            return Err(ConfigError::new(
                "server.http_workers",
                "must be at least 1",
            ));
        }
        for (key, value) in [
            ("server.max_concurrent_requests", s.max_concurrent_requests),
            ("server.max_client_batch_size", s.max_client_batch_size),
            ("server.max_input_chars", s.max_input_chars),
            ("server.max_request_bytes", s.max_request_bytes),
        ] {
            if value == 0 {
                return Err(ConfigError::new(key, "must be at least 1"));
            }
        }
        if s.max_client_batch_size > s.max_concurrent_requests {
            return Err(ConfigError::new(
                "server.max_client_batch_size",
                format!(
                    "{} is more than server.max_concurrent_requests = {}: such a request could \
                     never be admitted",
                    s.max_client_batch_size, s.max_concurrent_requests
                ),
            ));
        }
        let t = s.request_timeout_seconds;
        if !(t.is_finite() && t > 0.0 && t <= 86_400.0) {
            return Err(ConfigError::new(
                "server.request_timeout_seconds",
                format!("{t} must be more than 0 and at most 86400"),
            ));
        }
        if s.api_key.as_ref().is_some_and(Secret::is_empty) {
            return Err(ConfigError::new(
                "server.api_key",
                "is set but empty; remove it to turn authentication off",
            ));
        }
        let mut names = std::collections::BTreeMap::new();
        for (i, m) in self.models.iter().enumerate() {
            let key = self.model_key(i);
            validate_model(m, &key)?;
            let name = m.served_name();
            if name.is_empty() || name.contains('/') || name.chars().any(char::is_control) {
                return Err(ConfigError::new(
                    format!("{key}.name"),
                    format!("`{name}` cannot name a model: give a name without `/`"),
                ));
            }
            if let Some(first) = names.insert(name.clone(), key.clone()) {
                return Err(ConfigError::new(
                    format!("{key}.name"),
                    format!(
                        "`{name}` is also the name of {first}; every model needs its own \
                         (set `name:`)"
                    ),
                ));
            }
        }
        for (kind, name) in &self.server.default_models {
            if !["embedding", "reranker", "classifier"].contains(&kind.as_str()) {
                return Err(ConfigError::new(
                    format!("server.default_models.{kind}"),
                    "is not a kind of route: use `embedding`, `reranker` or `classifier`",
                ));
            }
            if !names.contains_key(name) {
                return Err(ConfigError::new(
                    format!("server.default_models.{kind}"),
                    format!(
                        "`{name}` is not a model served here ({})",
                        names.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
        validate_pools(&self.tokenizer, &self.batching, "")?;
        let t = self.shutdown.timeout_seconds;
        if !(t.is_finite() && t > 0.0 && t <= 3600.0) {
            return Err(ConfigError::new(
                "shutdown.timeout_seconds",
                format!("{t} must be more than 0 and at most 3600"),
            ));
        }
        let m = self.metrics.window_seconds;
        if !(m.is_finite() && (1.0..=86400.0).contains(&m)) {
            return Err(ConfigError::new(
                "metrics.window_seconds",
                format!("{m} must be between 1 and 86400"),
            ));
        }
        self.telemetry.validate()?;
        let w = self.supervision.window_seconds;
        if !(w.is_finite() && w > 0.0) {
            return Err(ConfigError::new(
                "supervision.window_seconds",
                format!("{w} must be more than 0"),
            ));
        }
        Ok(())
    }

    /// Intra-op threads each worker gets: the configured value, or the machine's cores shared
    /// out between the instances (at least one each).
    pub fn intra_op_threads(&self) -> usize {
        self.model().intra_op_threads.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cores / self.model().instances).max(1)
        })
    }
}

/// Checks one model's own keys; `key` is where it sits (`model` or `models[i]`).
fn validate_model(m: &Model, key: &str) -> Result<(), ConfigError> {
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
fn validate_pools(
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
    Ok(())
}

// ---------------------------------------------------------------- what each key accepts
//
// serde and the `config` crate word a refused value in their own terms (`enum DType does not
// have variant constructor f8`, `expected an unsigned 64 bit or less integer`) and round a
// fraction given for a count (`instances: 2.5` ran 3 workers). Every key whose values are a
// closed set or a number is listed here with what it accepts, in the words of the README's
// table; a refused value is answered with that.

/// What a key accepts: the variants of an enum-like key, or a number's range.
#[derive(Debug, Clone, PartialEq)]
enum Accepts {
    /// One of these spellings.
    OneOf(&'static [&'static str]),
    /// A whole number, within this range (said in words).
    Whole(&'static str),
    /// A number (fractions allowed), within this range (said in words).
    Number(&'static str),
}

impl std::fmt::Display for Accepts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Accepts::OneOf(names) => write!(f, "one of {}", names.join(", ")),
            Accepts::Whole(range) => write!(f, "a whole number {range}"),
            Accepts::Number(range) => write!(f, "a number {range}"),
        }
    }
}

/// The names serde reads for the enum `T`: the variant list serde hands a deserializer.
fn variants<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    use serde::de::{Error as _, value::Error};
    struct Probe<'a>(&'a std::cell::Cell<&'static [&'static str]>);
    impl<'de> serde::Deserializer<'de> for Probe<'_> {
        type Error = Error;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
            Err(Error::custom("not an enum"))
        }
        fn deserialize_enum<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            variants: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Error> {
            self.0.set(variants);
            Err(Error::custom("probed"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map struct
            identifier ignored_any
        }
    }
    let seen = std::cell::Cell::new(&[][..]);
    let _ = T::deserialize(Probe(&seen));
    seen.get()
}

/// What the key at `key` accepts (`models[1].dtype` is read as `model.dtype`), if it is a
/// closed set or a number.
fn accepts(key: &str) -> Option<Accepts> {
    use Accepts::{Number, OneOf, Whole};
    // `models[1].batching.max_batch_size` → `model.batching.max_batch_size`; a model's own
    // `tokenizer:` and `batching:` sections take what the top-level ones take.
    let key = match key.strip_prefix("models[") {
        Some(rest) => format!("model{}", &rest[rest.find(']')? + 1..]),
        None => key.to_string(),
    };
    let key = key
        .strip_prefix("model.")
        .filter(|k| k.starts_with("tokenizer.") || k.starts_with("batching."))
        .map_or(key.clone(), str::to_string);
    Some(match key.as_str() {
        "model.dtype" => OneOf(variants::<DType>()),
        "model.kind" => OneOf(variants::<ModelKind>()),
        "model.pooling" => OneOf(variants::<Pooling>()),
        "logging.format" => OneOf(variants::<LogFormat>()),
        "telemetry.otlp_protocol" => OneOf(&["grpc", "http/protobuf", "http"]),
        "workload.transport" => OneOf(variants::<Transport>()),
        "server.grpc_port" | "server.http_port" => Whole("from 0 to 65535 (0 picks a free port)"),
        "server.http_workers"
        | "server.max_concurrent_requests"
        | "server.max_client_batch_size"
        | "server.max_input_chars"
        | "server.max_request_bytes"
        | "model.instances"
        | "model.intra_op_threads"
        | "model.max_seq_length"
        | "tokenizer.workers"
        | "batching.max_batch_size"
        | "batching.max_batch_tokens"
        | "batching.max_queue_texts"
        | "workload.concurrency"
        | "workload.requests"
        | "workload.texts_per_request" => Whole("of at least 1"),
        "model.torchscript_inputs" => {
            Whole("2 (input_ids, attention_mask) or 3 (plus token_type_ids)")
        }
        "supervision.max_restarts" => Whole("of at least 0"),
        "server.request_timeout_seconds" => Number("more than 0 and at most 86400"),
        "shutdown.timeout_seconds" => Number("more than 0 and at most 3600"),
        "metrics.window_seconds" => Number("from 1 to 86400"),
        "supervision.window_seconds" | "workload.duration_seconds" => Number("more than 0"),
        "batching.max_wait_ms" => Number("from 0 to 10000"),
        "telemetry.sampling_ratio" => Number("from 0 to 1"),
        _ => return None,
    })
}

/// The problem to report for a value serde refused at `key`: what was given and what the
/// key accepts, when the key is in [`accepts`]; else serde's words without the `config`
/// crate's repetition of the key and the file.
fn refused(raw: &config::Config, key: &str, problem: &str) -> String {
    let problem = problem
        .split(" for key `")
        .next()
        .unwrap_or(problem)
        .to_string();
    let Some(accepted) = accepts(key) else {
        return problem;
    };
    match raw.get::<config::Value>(key) {
        Ok(v) => format!("`{v}` is not accepted; give {accepted}"),
        Err(_) => format!("{problem}; give {accepted}"),
    }
}

/// Refuses a fraction given for a key that takes a whole number (the `config` crate would
/// round it: `instances: 2.5` ran 3 workers).
fn refuse_fractions(raw: &config::Config) -> Result<(), ConfigError> {
    fn walk(v: &serde_json::Value, key: &str) -> Result<(), ConfigError> {
        match v {
            serde_json::Value::Object(m) => m.iter().try_for_each(|(k, v)| {
                walk(
                    v,
                    &if key.is_empty() {
                        k.clone()
                    } else {
                        format!("{key}.{k}")
                    },
                )
            }),
            serde_json::Value::Array(items) => items
                .iter()
                .enumerate()
                .try_for_each(|(i, v)| walk(v, &format!("{key}[{i}]"))),
            serde_json::Value::Number(n) if n.is_f64() => match accepts(key) {
                Some(a @ Accepts::Whole(_)) if n.as_f64().is_some_and(|f| f.fract() != 0.0) => Err(
                    ConfigError::new(key, format!("`{n}` is not accepted; give {a}")),
                ),
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }
    // A tree the file cannot be read as is reported by the typed reading that follows.
    raw.clone()
        .try_deserialize::<serde_json::Value>()
        .map_or(Ok(()), |tree| walk(&tree, ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str, env: &[(&str, &str)], o: &Overrides) -> Result<Config, ConfigError> {
        Config::from_sources(
            yaml,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            o,
        )
    }

    const MIN: &str = "model:\n  path: m\n";

    #[test]
    fn a_refused_value_is_answered_with_what_the_key_accepts() {
        // (section YAML, the key named, the words the message must hold)
        let table: &[(&str, &str, &[&str])] = &[
            (
                "model:\n  path: m\n  dtype: f8\n",
                "model.dtype",
                &["`f8`", "one of f32, f16, bf16"],
            ),
            (
                "model:\n  path: m\n  kind: ranker\n",
                "model.kind",
                &[
                    "`ranker`",
                    "one of auto, embedding, classifier, reranker, torchscript",
                ],
            ),
            (
                "model:\n  path: m\n  pooling: avg\n",
                "model.pooling",
                &["`avg`", "mean, cls, max, mean_sqrt_len, last_token"],
            ),
            (
                "model:\n  path: m\n  instances: -2\n",
                "model.instances",
                &["`-2`", "a whole number of at least 1"],
            ),
            (
                "model:\n  path: m\n  instances: 2.5\n",
                "model.instances",
                &["`2.5`", "a whole number of at least 1"],
            ),
            (
                "model:\n  path: m\n  instances: many\n",
                "model.instances",
                &["`many`", "a whole number"],
            ),
            (
                "model:\n  path: m\nbatching:\n  max_batch_size: -3\n",
                "batching.max_batch_size",
                &["`-3`", "a whole number of at least 1"],
            ),
            (
                "model:\n  path: m\nbatching:\n  max_wait_ms: soon\n",
                "batching.max_wait_ms",
                &["`soon`", "a number from 0 to 10000"],
            ),
            (
                "model:\n  path: m\nserver:\n  grpc_port: -1\n",
                "server.grpc_port",
                &["`-1`", "from 0 to 65535"],
            ),
            (
                "model:\n  path: m\nserver:\n  max_client_batch_size: 1.5\n",
                "server.max_client_batch_size",
                &["`1.5`", "at least 1"],
            ),
            (
                "model:\n  path: m\nlogging:\n  format: xml\n",
                "logging.format",
                &["`xml`", "one of text, json"],
            ),
            (
                "model:\n  path: m\ntelemetry:\n  otlp_protocol: udp\n",
                "telemetry.otlp_protocol",
                &["`udp`", "grpc, http/protobuf, http"],
            ),
            (
                "model:\n  path: m\nmetrics:\n  window_seconds: abc\n",
                "metrics.window_seconds",
                &["`abc`", "a number from 1 to 86400"],
            ),
            (
                "model:\n  path: m\nworkload:\n  transport: udp\n",
                "workload.transport",
                &["`udp`", "one of grpc, http"],
            ),
            (
                "models:\n  - path: a\n  - path: b\n    dtype: f64\n",
                "models[1].dtype",
                &["`f64`", "one of f32, f16, bf16"],
            ),
            (
                "models:\n  - path: a\n    batching:\n      max_batch_tokens: -5\n",
                "models[0].batching.max_batch_tokens",
                &["`-5`", "at least 1"],
            ),
        ];
        for (yaml, key, words) in table {
            let e = load(yaml, &[], &Overrides::default()).unwrap_err();
            assert_eq!(e.key, *key, "{yaml}: {e:?}");
            for w in *words {
                assert!(e.problem.contains(w), "{yaml}: `{}` lacks `{w}`", e.problem);
            }
            // Nothing of serde's or the config crate's own wording is left.
            for jargon in ["variant constructor", "64 bit", "for key `", "invalid type"] {
                assert!(!e.problem.contains(jargon), "{yaml}: {}", e.problem);
            }
        }
        // From the environment too: a string where a number is taken.
        let e = load(
            MIN,
            &[("ACTOR_INFER__BATCHING__MAX_BATCH_SIZE", "lots")],
            &Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(e.key, "batching.max_batch_size");
        assert!(
            e.problem
                .contains("`lots` is not accepted; give a whole number of at least 1"),
            "{}",
            e.problem
        );
        // A whole number written as a float is still that number.
        let c = load(
            "model:\n  path: m\n  instances: 2.0\n",
            &[],
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.model().instances, 2);
    }

    #[test]
    fn defaults_fill_what_the_file_leaves_out() {
        let c = load(MIN, &[], &Overrides::default()).unwrap();
        assert_eq!(c.server.host, "127.0.0.1");
        assert_eq!(c.server.grpc_port, 50051);
        assert_eq!(c.server.http_port, 8080);
        assert_eq!(c.models[0].device, Device::Auto);
        assert_eq!(c.models[0].dtype, DType::F32);
        assert_eq!(c.models[0].instances, 1);
        assert_eq!(c.shutdown.timeout_seconds, 10.0);
    }

    #[test]
    fn several_models_each_with_their_own_pools_share_the_cores() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a", "b"] {
            let m = dir.path().join(name);
            std::fs::create_dir(&m).unwrap();
            for f in ["config.json", "tokenizer.json", "model.safetensors"] {
                std::fs::write(m.join(f), "{}").unwrap();
            }
        }
        let yaml = |b_name: &str, extra: &str| {
            format!(
                "server:\n  default_models:\n    reranker: r\n{extra}models:\n  - path: {0}/a\n    instances: 2\n  - path: {0}/b\n    name: {b_name}\n    tokenizer:\n      workers: 3\n    batching:\n      max_batch_size: 4\n",
                dir.path().display()
            )
        };
        let c = load(&yaml("r", ""), &[], &Overrides::default()).unwrap();
        c.validate().unwrap();
        assert_eq!(c.models.len(), 2);
        assert_eq!(c.model().served_name(), "a");
        let (a, b) = (c.for_model(0), c.for_model(1));
        assert_eq!((a.tokenizer.workers, a.batching.max_batch_size), (1, 64));
        assert_eq!((b.tokenizer.workers, b.batching.max_batch_size), (3, 4));
        assert_eq!(b.model().served_name(), "r");
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(
            a.intra_op_threads(),
            (cores / 3).max(1),
            "three instances in all share the cores"
        );
        // Two models of one name, a default naming no model, both `model:` and `models:`.
        let e = load(&yaml("a", ""), &[], &Overrides::default())
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "models[1].name");
        assert!(e.problem.contains("models[0]"), "{e}");
        let e = load(&yaml("x", ""), &[], &Overrides::default())
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "server.default_models.reranker");
        assert!(e.problem.contains("a, x"), "{e}");
        let e = load(
            &yaml("r", "model:\n  path: m\n"),
            &[],
            &Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(e.key, "models");
        let e = load("server:\n  host: h\n", &[], &Overrides::default()).unwrap_err();
        assert_eq!(e.key, "model");
        // A model's own sections are checked under its key.
        let mut c = load(&yaml("r", ""), &[], &Overrides::default()).unwrap();
        c.models[1].batching.as_mut().unwrap().max_batch_size = 0;
        assert_eq!(
            c.validate().unwrap_err().key,
            "models[1].batching.max_batch_size"
        );
    }

    #[test]
    fn unknown_key_is_named_with_its_path() {
        let e = load(
            "model:\n  path: m\n  instanses: 2\n",
            &[],
            &Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(e.key, "model.instanses");
        assert!(e.problem.contains("unknown field"), "{e}");
    }

    #[test]
    fn wrong_type_is_named_with_its_path() {
        let e = load(
            "model:\n  path: m\nserver:\n  grpc_port: lots\n",
            &[],
            &Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(e.key, "server.grpc_port", "{e}");
    }

    #[test]
    fn precedence_is_flags_then_env_then_yaml() {
        let yaml = "model:\n  path: m\nserver:\n  grpc_port: 1000\n  http_port: 1001\n";
        let env = [
            ("ACTOR_INFER__SERVER__GRPC_PORT", "2000"),
            ("ACTOR_INFER__SERVER__HTTP_PORT", "2001"),
            ("ACTOR_INFER__MODEL__INSTANCES", "3"),
        ];
        let o = Overrides {
            http_port: Some(3001),
            ..Default::default()
        };
        let c = load(yaml, &env, &o).unwrap();
        assert_eq!(c.server.grpc_port, 2000);
        assert_eq!(c.server.http_port, 3001);
        assert_eq!(c.models[0].instances, 3);
    }

    #[test]
    fn impossible_values_are_refused_by_key() {
        let mut c = load(MIN, &[], &Overrides::default()).unwrap();
        c.models[0].instances = 0;
        assert_eq!(c.validate().unwrap_err().key, "model.instances");
        let mut c = load(MIN, &[], &Overrides::default()).unwrap();
        c.server.http_port = 70000;
        assert_eq!(c.validate().unwrap_err().key, "server.http_port");
        let e = load(&format!("{MIN}  device: tpu\n"), &[], &Overrides::default()).unwrap_err();
        assert_eq!(e.key, "model.device");
        assert!(e.problem.contains("`tpu` is not a device"), "{}", e.problem);
        let c = load(
            MIN,
            &[("ACTOR_INFER__MODEL__DEVICE", "cuda:1")],
            &Overrides::default(),
        );
        assert_eq!(c.unwrap().models[0].device, Device::Cuda(1));
        let mut c = load(MIN, &[], &Overrides::default()).unwrap();
        c.models[0].path = "/nonexistent/model".into();
        let e = c.validate().unwrap_err();
        assert_eq!(e.key, "model.path");
        assert!(e.problem.contains("/nonexistent/model"));
    }

    #[test]
    fn telemetry_is_off_by_default_and_checked_by_key() {
        let c = load(MIN, &[], &Overrides::default()).unwrap();
        assert_eq!(c.telemetry.otlp_endpoint, None);
        assert_eq!(c.telemetry.otlp_protocol, OtlpProtocol::Grpc);
        assert_eq!(c.telemetry.sampling_ratio, 1.0);
        let c = load(
            &format!("{MIN}telemetry:\n  otlp_protocol: http\n  sampling_ratio: 0.25\n"),
            &[(
                "ACTOR_INFER__TELEMETRY__OTLP_ENDPOINT",
                "http://127.0.0.1:4318",
            )],
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.telemetry.otlp_protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(
            c.telemetry.otlp_endpoint.as_deref(),
            Some("http://127.0.0.1:4318")
        );
        assert_eq!(c.telemetry.sampling_ratio, 0.25);
        let mut t = c.telemetry.clone();
        t.sampling_ratio = 1.5;
        assert_eq!(t.validate().unwrap_err().key, "telemetry.sampling_ratio");
        t.sampling_ratio = 0.0;
        t.otlp_endpoint = Some("https://collector:4317".into());
        assert_eq!(t.validate().unwrap_err().key, "telemetry.otlp_endpoint");
        t.otlp_endpoint = Some("http://collector:4317".into());
        t.validate().unwrap();
        let e = load(
            &format!("{MIN}telemetry:\n  otlp_protocol: zipkin\n"),
            &[],
            &Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(e.key, "telemetry.otlp_protocol", "{e}");
    }

    #[test]
    fn model_kind_and_torchscript_inputs_are_checked_by_key() {
        let c = load(
            "model:\n  path: m\n  kind: reranker\n",
            &[],
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.models[0].kind, ModelKind::Reranker);
        let e = load(
            "model:\n  path: m\n  kind: ranker\n",
            &[],
            &Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(e.key, "model.kind", "{e}");
        let dir = tempfile::tempdir().unwrap();
        for f in ["config.json", "tokenizer.json", "model.pt"] {
            std::fs::write(dir.path().join(f), "{}").unwrap();
        }
        let mut c = load(MIN, &[], &Overrides::default()).unwrap();
        c.models[0].path = dir.path().into();
        c.models[0].kind = ModelKind::Torchscript;
        c.validate()
            .expect("model.pt is enough for a TorchScript model");
        c.models[0].torchscript_inputs = Some(4);
        assert_eq!(c.validate().unwrap_err().key, "model.torchscript_inputs");
        std::fs::remove_file(dir.path().join("model.pt")).unwrap();
        c.models[0].torchscript_inputs = None;
        let e = c.validate().unwrap_err();
        assert!(
            e.key == "model.path" && e.problem.contains("model.pt"),
            "{e}"
        );
    }

    #[test]
    fn bad_enum_value_names_the_key() {
        let e = load(
            "model:\n  path: m\n  dtype: f64\n",
            &[],
            &Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(e.key, "model.dtype", "{e}");
    }

    #[test]
    fn secrets_match_exactly_and_never_print() {
        let k = Secret::new("s3cret");
        assert!(k.matches(b"s3cret"));
        for wrong in [&b""[..], b"s3cre", b"s3cret ", b"S3cret", b"s3cret\0"] {
            assert!(!k.matches(wrong), "{wrong:?}");
        }
        assert_eq!(format!("{k:?}"), "<redacted>");
        assert_eq!(serde_json::to_string(&k).unwrap(), "\"<redacted>\"");
    }

    #[test]
    fn a_numeric_api_key_from_the_environment_is_still_a_string() {
        let c = load(
            MIN,
            &[("ACTOR_INFER__SERVER__API_KEY", "12345")],
            &Overrides::default(),
        )
        .unwrap();
        assert!(c.server.api_key.unwrap().matches(b"12345"));
    }

    #[test]
    fn limits_that_could_never_admit_a_request_are_refused() {
        let mut c = load(MIN, &[], &Overrides::default()).unwrap();
        c.server.max_client_batch_size = c.server.max_concurrent_requests + 1;
        assert_eq!(
            c.validate().unwrap_err().key,
            "server.max_client_batch_size"
        );
        let mut c = load(MIN, &[], &Overrides::default()).unwrap();
        c.server.request_timeout_seconds = 0.0;
        assert_eq!(
            c.validate().unwrap_err().key,
            "server.request_timeout_seconds"
        );
        let mut c = load(MIN, &[], &Overrides::default()).unwrap();
        c.server.api_key = Some(Secret::new(" "));
        assert_eq!(c.validate().unwrap_err().key, "server.api_key");
    }

    mod fuzz {
        //! Fuzzing of the YAML loader (property tests): arbitrary text and arbitrary mixes of
        //! real keys and odd values either load or fail with an error naming a key; nothing
        //! panics.
        use super::*;
        use proptest::prelude::*;

        const KEYS: &[&str] = &[
            "server.host",
            "server.grpc_port",
            "server.http_port",
            "server.http_workers",
            "server.max_concurrent_requests",
            "server.max_client_batch_size",
            "server.max_input_chars",
            "server.max_request_bytes",
            "server.request_timeout_seconds",
            "server.api_key",
            "model.path",
            "model.device",
            "model.dtype",
            "model.instances",
            "model.pooling",
            "model.max_seq_length",
            "batching.max_batch_size",
            "batching.max_wait_ms",
            "shutdown.timeout_seconds",
            "logging.format",
            "metrics.window_seconds",
            "workload.concurrency",
            "telemetry.otlp_endpoint",
            "telemetry.sampling_ratio",
            "nonsense.key",
        ];

        fn value() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<i64>().prop_map(|v| v.to_string()),
                any::<f64>().prop_map(|v| v.to_string()),
                Just("-1".to_string()),
                Just("~".to_string()),
                Just("[1, 2]".to_string()),
                Just("{a: 1}".to_string()),
                Just("\"\"".to_string()),
                "[a-z0-9:._/-]{0,12}",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1000))]

            #[test]
            fn arbitrary_text_never_panics(yaml in "\\PC{0,200}") {
                if let Ok(c) = Config::from_sources(&yaml, std::iter::empty(), &Overrides::default()) {
                    let _ = c.validate();
                }
            }

            #[test]
            fn real_keys_with_odd_values_load_or_name_a_key(
                pairs in proptest::collection::vec((proptest::sample::select(KEYS), value()), 0..8)
            ) {
                let mut yaml = String::from("model:\n  path: m\n");
                let mut sections: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
                for (key, v) in &pairs {
                    let (section, field) = key.split_once('.').unwrap();
                    sections.entry(section).or_default().push(format!("  {field}: {v}\n"));
                }
                for (section, fields) in &sections {
                    let body: String = fields.concat();
                    if *section == "model" {
                        yaml = format!("model:\n  path: m\n{body}");
                    } else {
                        yaml.push_str(&format!("{section}:\n{body}"));
                    }
                }
                match Config::from_sources(&yaml, std::iter::empty(), &Overrides::default()) {
                    Ok(c) => {
                        if let Err(e) = c.validate() {
                            prop_assert!(!e.key.is_empty() && !e.problem.is_empty());
                        }
                    }
                    Err(e) => prop_assert!(!e.key.is_empty() && !e.problem.is_empty(), "{e}"),
                }
            }
        }
    }
}
