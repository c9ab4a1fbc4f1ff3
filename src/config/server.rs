//! `server:` and the other sections about the front ends: the experiment's name, the bench's
//! `workload:`, priorities, the API key and `hub:`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
    /// The priority of requests that name none (no `X-Priority` header, no `priority`
    /// field), by route as the request's log line names it (`/embed`, `/v1/embeddings`,
    /// `Infer`, `tei.v1.Embed/Embed`, ...; [`PRIORITY_ROUTES`]). A route left out follows
    /// `batching.interactive_max_texts`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub route_priorities: std::collections::BTreeMap<String, Priority>,
}

/// The routes `server.route_priorities` may name: the inference routes, as the request's span
/// (and log line) names them; the HTTP front end checks that its routes are all here.
pub const PRIORITY_ROUTES: &[&str] = &[
    "/",
    "/invocations",
    "/embed",
    "/embed_all",
    "/embeddings",
    "/v1/embeddings",
    "/similarity",
    "/predict",
    "/rerank",
    "/v2/models/{name}/infer",
    "Infer",
    "Rerank",
    "ModelInfer",
    "tei.v1.Embed/Embed",
    "tei.v1.Embed/EmbedStream",
    "tei.v1.Embed/EmbedAll",
    "tei.v1.Embed/EmbedAllStream",
    "tei.v1.Predict/Predict",
    "tei.v1.Predict/PredictPair",
    "tei.v1.Predict/PredictStream",
    "tei.v1.Predict/PredictPairStream",
    "tei.v1.Rerank/Rerank",
    "tei.v1.Rerank/RerankStream",
];

/// How urgent a request is. `interactive` texts go first and are never held back by the latency
/// budget; `batch` texts fill what room is left and wait their turn (aging keeps them from
/// starving). Requests say it with the `X-Priority` header or a `priority` field; `high` and
/// `low` are accepted for the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Someone waits for the answer: a query.
    #[serde(alias = "high")]
    Interactive,
    /// Throughput work: indexing, backfills.
    #[serde(alias = "low")]
    Batch,
}

impl Priority {
    /// Both, in label order.
    pub const ALL: [Priority; 2] = [Priority::Interactive, Priority::Batch];

    /// The name requests, metrics and the configuration use.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Interactive => "interactive",
            Priority::Batch => "batch",
        }
    }

    /// Reads a priority as requests give it (`interactive` or `high`, `batch` or `low`, in
    /// lower case: exactly what the OpenAPI document lists); the error names the accepted values.
    pub fn parse(s: &str) -> Result<Priority, String> {
        match s {
            "interactive" | "high" => Ok(Priority::Interactive),
            "batch" | "low" => Ok(Priority::Batch),
            _ => Err(format!(
                "priority `{s}` is not one of `interactive` (or `high`) and `batch` (or `low`)"
            )),
        }
    }
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

    pub(super) fn is_empty(&self) -> bool {
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
            route_priorities: Default::default(),
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
