//! The front ends: HTTP (actix-web, [`http`]) and gRPC (tonic, [`grpc`]). Both turn requests
//! into typed [`Embed`] messages for the Router through [`Shared::infer`], so validation, the
//! refusal rules and the errors ([`error`]) are the same on both.

pub mod access;
pub mod error;
pub mod grpc;
pub mod http;
pub mod oip;
pub mod openapi;
pub mod predict;
pub mod quantized;
pub mod tei;
pub mod tei_grpc;
pub mod telemetry;
pub mod unavailable;
pub mod v2;
pub mod v2_grpc;

use std::{
    net::TcpListener,
    sync::Arc,
    time::{Duration, Instant},
};

use actix::{Addr, Arbiter};
use actix_rt::ArbiterHandle;
use serde::Serialize;
use tokio::sync::{oneshot, watch};

use crate::{
    actors::{
        Admission, Lifecycle,
        metrics::{Metrics, Recorder, Snapshot},
        models::{Catalog, Directory, Lease, Pick, Served},
        router::{Embed, EmbedOutput, Timings, TokenizerWork, Tokens},
        supervisor::{Shutdown, StopReason, Supervisor},
    },
    config::{Config, Priority},
    model::{Direction, Task, TextInput, device_name},
};
use error::{ApiError, ErrorKind};

/// What both front ends share. The models appear in the directory once they are loaded;
/// until then inference routes answer "not ready".
pub struct Shared {
    /// The validated configuration, as the server started (a model's own is
    /// [`Served::config`]).
    pub config: Arc<Config>,
    /// The models serving now.
    pub directory: Arc<Directory>,
    /// Readiness and stop flags.
    pub lifecycle: Arc<Lifecycle>,
    /// The Metrics actor (renders `/metrics`).
    pub metrics: Addr<Metrics>,
    /// Metric handles.
    pub recorder: Recorder,
    /// Texts in flight against `server.max_concurrent_requests`.
    pub admission: Arc<Admission>,
    /// The Supervisor (reloads).
    pub supervisor: Addr<Supervisor>,
}

/// The running front ends: actix-web on the System's arbiter, tonic on an arbiter of its own.
pub struct Servers {
    /// actix-web's handle; `stop(true)` finishes in-flight requests.
    http: actix_web::dev::ServerHandle,
    /// Firing it makes tonic stop accepting and finish in-flight calls.
    grpc_stop: oneshot::Sender<()>,
    /// Resolves when the gRPC server has ended.
    grpc_done: oneshot::Receiver<()>,
    /// The gRPC server's thread; stopping it closes connections that outlive the grace.
    grpc_arbiter: Arbiter,
}

/// How long the gRPC server may wait for clients to close idle connections.
const FRONT_END_GRACE: Duration = Duration::from_millis(500);

impl Servers {
    /// Starts both front ends on their listeners. gRPC health follows `readiness`; a front
    /// end that ends while the server is not stopping stops the server (exit 1).
    pub fn start(
        http: TcpListener,
        grpc: TcpListener,
        shared: Arc<Shared>,
        readiness: watch::Receiver<bool>,
        supervisor: Addr<Supervisor>,
    ) -> std::io::Result<Servers> {
        let server = http::serve(http, shared.clone())?;
        let handle = server.handle();
        let (sup, life) = (supervisor.clone(), shared.lifecycle.clone());
        actix_rt::spawn(async move {
            let result = server.await;
            if !life.is_stopping() {
                sup.do_send(Shutdown(StopReason::Fatal(format!(
                    "the HTTP server ended unexpectedly: {result:?}"
                ))));
            }
        });
        let (health, health_service) = grpc::health();
        let (grpc_stop, grpc_stop_rx) = oneshot::channel();
        let (grpc_done_tx, grpc_done) = oneshot::channel();
        let grpc_arbiter = Arbiter::new();
        // gRPC health follows readiness (the Supervisor's switch).
        grpc_arbiter.spawn(async move {
            let mut readiness = readiness;
            loop {
                let serving = *readiness.borrow_and_update();
                health.set(serving).await;
                if readiness.changed().await.is_err() {
                    break;
                }
            }
        });
        let life = shared.lifecycle.clone();
        grpc_arbiter.spawn(async move {
            let result = grpc::serve(grpc, shared, health_service, grpc_stop_rx).await;
            if let Err(e) = result {
                supervisor.do_send(Shutdown(StopReason::Fatal(e.to_string())));
            } else if !life.is_stopping() {
                supervisor.do_send(Shutdown(StopReason::Fatal(
                    "the gRPC server ended unexpectedly".into(),
                )));
            }
            let _ = grpc_done_tx.send(());
        });
        Ok(Servers {
            http: handle,
            grpc_stop,
            grpc_done,
            grpc_arbiter,
        })
    }

    /// The gRPC server's thread, to stop once everything else has.
    pub fn grpc_arbiter(&self) -> ArbiterHandle {
        self.grpc_arbiter.handle()
    }

    /// Stops both: they stop accepting, finish what they hold and close their connections.
    /// False if that did not happen by `deadline`.
    pub async fn stop(self, deadline: Instant) -> bool {
        let _ = self.grpc_stop.send(());
        // Requests are drained; what is left are idle keep-alive connections. actix-web closes
        // its own; tonic waits for clients to hang up, so after a short grace the gRPC arbiter
        // is stopped, which drops its connections.
        let grace = (Instant::now() + FRONT_END_GRACE).min(deadline);
        let mut grpc_done = self.grpc_done;
        let grpc_ended = tokio::time::timeout_at(grace.into(), &mut grpc_done)
            .await
            .is_ok();
        if !grpc_ended {
            tracing::info!("closing idle gRPC connections");
            self.grpc_arbiter.stop();
        }
        let http = self.http;
        let both = async move {
            http.stop(true).await;
            if !grpc_ended {
                let _ = grpc_done.await;
            }
        };
        tokio::time::timeout_at(deadline.into(), both).await.is_ok()
    }
}

/// One inference call as the front ends hand it down: its tracing span (which carries the
/// request id across actors and threads) and its deadline.
pub struct Call {
    /// The request's span.
    pub span: tracing::Span,
    /// When it must be answered by.
    pub deadline: Deadline,
    /// The model version the request went to, once chosen (its metrics label, the
    /// `X-Model-Version` header).
    pub chosen: Chosen,
    /// Its priority from the transport (`X-Priority`) or the route's default
    /// (`server.route_priorities`); a `priority` field in the body ([`Job::priority`]) wins.
    pub priority: Option<Priority>,
    /// What its access line will say (tokens, texts, timings, trace id).
    pub detail: access::Detail,
}

/// Where a [`Call`] notes the model version it went to.
#[derive(Clone, Default)]
pub struct Chosen(Arc<std::sync::OnceLock<Arc<Served>>>);

impl Chosen {
    /// The version chosen, if any.
    pub fn get(&self) -> Option<&Arc<Served>> {
        self.0.get()
    }

    /// The metric handles of the chosen model (`model=""` when none was chosen).
    pub fn recorder<'a>(&'a self, shared: &'a Shared) -> &'a Recorder {
        self.get().map_or(&shared.recorder, |m| &m.recorder)
    }
}

impl Call {
    /// A new call's opening.
    pub fn new(span: tracing::Span, deadline: Deadline) -> Call {
        Call {
            span,
            deadline,
            chosen: Chosen::default(),
            priority: None,
            detail: access::Detail::default(),
        }
    }

    /// [`Shared::model`], noting the version chosen for this call.
    pub fn model(&self, shared: &Shared, pick: Pick<'_>) -> Result<Lease, ApiError> {
        let lease = shared.model(pick)?;
        self.chose(&lease);
        Ok(lease)
    }

    /// Notes the version this call went to (the first noted stays).
    pub fn chose(&self, lease: &Lease) {
        let _ = self.chosen.0.set(lease.served());
    }
}

/// When a request must be answered by, and why.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    /// The instant.
    pub at: Instant,
    /// The timeout it came from.
    pub limit: Duration,
    /// Whose timeout it is (for the error message).
    pub source: &'static str,
}

impl Deadline {
    /// The error for a request past this deadline.
    pub fn exceeded(&self) -> ApiError {
        ApiError::deadline_exceeded(self.limit, self.source)
    }
}

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

/// What a route asks of the model: its inputs and how to run them.
#[derive(Debug, Clone)]
pub struct Job {
    /// Texts or token ids, in order.
    pub inputs: Vec<TextInput>,
    /// Second segments (cross-encoders), one per input.
    pub pairs: Option<Vec<String>>,
    /// L2-normalise; `None` for the model's default.
    pub normalize: Option<bool>,
    /// Truncate over-long inputs (else they fail the request).
    pub truncate: bool,
    /// Which end truncation cuts.
    pub direction: Direction,
    /// Every token's state instead of the pooled row.
    pub all_tokens: bool,
    /// The body's `priority` field; `None`: the call's (header, route), else by size.
    pub priority: Option<Priority>,
}

impl Job {
    /// `inputs` with the defaults: the model's normalisation, truncation at the right.
    pub fn of(inputs: Vec<TextInput>) -> Job {
        Job {
            inputs,
            pairs: None,
            normalize: None,
            truncate: true,
            direction: Direction::Right,
            all_tokens: false,
            priority: None,
        }
    }
}

/// Parses a request's priority as the `priority` field or the `X-Priority` header (`source`)
/// gives it: `interactive` (or `high`), `batch` (or `low`); `None` when absent. A
/// bad value is a validation error that names the accepted values.
pub fn priority(value: Option<&str>, source: &str) -> Result<Option<Priority>, ApiError> {
    value
        .map(|v| Priority::parse(v).map_err(|e| ApiError::validation(format!("{source}: {e}"))))
        .transpose()
}

/// Parses `truncation_direction`: `right` or `left`, or TEI's own spellings `Right` and `Left`
/// (what the OpenAPI document lists).
pub fn direction(s: Option<&str>) -> Result<Direction, ApiError> {
    match s {
        None | Some("right" | "Right") => Ok(Direction::Right),
        Some("left" | "Left") => Ok(Direction::Left),
        Some(other) => Err(ApiError::validation(format!(
            "truncation_direction `{other}` is not one of right, left, Right, Left"
        ))),
    }
}

impl Shared {
    /// A lease on the model `pick` chooses, for one request: it is not stopped by a reload
    /// until the lease is dropped. A name no model has answers `model_not_found`, listing the
    /// models served.
    pub fn model(&self, pick: Pick<'_>) -> Result<Lease, ApiError> {
        self.directory.lease(pick).map_err(|catalog| {
            if self.lifecycle.is_stopping() {
                ApiError::shutting_down()
            } else if catalog.models.is_empty() {
                ApiError::not_ready()
            } else {
                let name = match pick {
                    Pick::Named(n) | Pick::NamedOrOnly(n) => n,
                    _ => "",
                };
                ApiError::new(
                    ErrorKind::ModelNotFound,
                    format!(
                        "model `{name}` is not served here; the models are: {}",
                        catalog.names().join(", ")
                    ),
                )
            }
        })
    }

    /// The models serving now.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.directory.catalog()
    }

    /// Embeds through the Router: [`Shared::infer`] for embedding models only (a classifier
    /// answers `wrong_model_kind`).
    pub async fn embed(&self, m: &Served, job: Job, call: Call) -> Result<EmbedOutput, ApiError> {
        require(m, &[Task::Embedding], "embeddings (/embed, /v1/embeddings)")?;
        self.infer(m, job, call).await
    }

    /// Prepends sentence-transformers' prompt to each text: the one `prompt_name` names, else
    /// the model's default prompt (none: the texts as they are). An unknown name is refused,
    /// listing the prompts there are.
    pub fn prompted(
        &self,
        m: &Served,
        inputs: Vec<TextInput>,
        prompt_name: Option<&str>,
    ) -> Result<Vec<TextInput>, ApiError> {
        let prompts = &m.spec.prompts;
        let prompt = match prompt_name {
            Some(name) => Some(prompts.get(name).ok_or_else(|| {
                ApiError::validation(format!(
                    "prompt_name `{name}` is not one of this model's prompts ({}; \
                     config_sentence_transformers.json)",
                    if prompts.is_empty() {
                        "it has none".to_string()
                    } else {
                        prompts.keys().cloned().collect::<Vec<_>>().join(", ")
                    }
                ))
            })?),
            None => m.spec.default_prompt.as_ref().and_then(|n| prompts.get(n)),
        };
        let Some(prompt) = prompt.filter(|p| !p.is_empty()) else {
            return Ok(inputs);
        };
        inputs
            .into_iter()
            .map(|i| match i {
                TextInput::Text(t) => Ok(TextInput::Text(format!("{prompt}{t}"))),
                TextInput::Ids(_) if prompt_name.is_some() => Err(ApiError::validation(
                    "prompt_name applies to texts, not to token ids",
                )),
                ids => Ok(ids),
            })
            .collect()
    }

    /// Runs a job through the Router within the call's deadline: one row per input, an
    /// embedding, a classifier's logits, or token states. Checks, in order: the input is not
    /// empty and within `server.max_client_batch_size` inputs of `server.max_input_chars`
    /// characters each; the server is ready and not stopping; the inputs fit under
    /// `server.max_concurrent_requests` (admission control, before any queue). Dropping the
    /// returned future cancels the request's queued work.
    pub async fn infer(&self, m: &Served, job: Job, call: Call) -> Result<EmbedOutput, ApiError> {
        let Call {
            span,
            deadline,
            priority,
            detail,
            ..
        } = call;
        if let Some(p) = &job.pairs {
            if p.len() != job.inputs.len() {
                return Err(ApiError::validation(format!(
                    "{} second segments for {} texts; give one per text",
                    p.len(),
                    job.inputs.len()
                )));
            }
            self.check_count(p.len())?;
            self.check_lengths(p.iter().map(|t| (t.len(), || t.chars().count())))?;
        }
        self.check_count(job.inputs.len())?;
        self.check_lengths(job.inputs.iter().map(|t| (t.len_bound(), || t.chars())))?;
        let permit = self.admit(job.inputs.len())?;
        let n = job.inputs.len();
        let receiver = m
            .router
            .send(Embed {
                inputs: job.inputs,
                pairs: job.pairs,
                normalize: job.normalize,
                truncate: job.truncate,
                direction: job.direction,
                all_tokens: job.all_tokens,
                span,
                sent: Instant::now(),
                deadline: deadline.at,
                permit,
                priority: job.priority.or(priority),
            })
            .await
            .map_err(|_| ApiError::shutting_down())??;
        let out = match tokio::time::timeout_at(deadline.at.into(), receiver).await {
            Ok(Ok(answer)) => answer?,
            Ok(Err(_)) => {
                return Err(ApiError::internal(
                    "the request was dropped inside the server",
                ));
            }
            // Dropping the receiver here makes the Router skip whatever is still queued.
            Err(_) => return Err(deadline.exceeded()),
        };
        if out.embeddings.len() != n {
            return Err(ApiError::internal(format!(
                "{} rows came back for {n} inputs",
                out.embeddings.len()
            )));
        }
        detail.add_tokens(out.token_counts.iter().map(|&t| u64::from(t)).sum());
        Ok(out)
    }

    /// Admission control: room for `texts` more texts under `server.max_concurrent_requests`,
    /// unless the server is stopping.
    fn admit(&self, texts: usize) -> Result<crate::actors::Permit, ApiError> {
        if self.lifecycle.is_stopping() {
            return Err(ApiError::shutting_down());
        }
        self.admission.try_admit(texts).map_err(|held| {
            ApiError::new(
                ErrorKind::Overloaded,
                format!(
                    "{held} texts are in flight and this request adds {texts}, over \
                     server.max_concurrent_requests = {}; retry later",
                    self.admission.limit()
                ),
            )
        })
    }

    /// Tokenizer work (`/tokenize`, `/decode`) on the tokenizer pool, through the Router, under
    /// the same limits and admission as inference.
    pub async fn tokenizer(
        &self,
        m: &Served,
        work: TokenizerWork,
        count: usize,
    ) -> Result<Tokens, ApiError> {
        self.check_count(count)?;
        let _permit = self.admit(count)?;
        Ok(m.router
            .send(work)
            .await
            .map_err(|_| ApiError::shutting_down())??)
    }

    /// Refuses an empty list and one over `server.max_client_batch_size`.
    pub fn check_count(&self, n: usize) -> Result<(), ApiError> {
        let s = &self.config.server;
        if n == 0 {
            return Err(ApiError::validation(
                "the input is an empty list; give at least one text (an empty string is fine)",
            ));
        }
        if n > s.max_client_batch_size {
            return Err(ApiError::new(
                ErrorKind::LimitExceeded,
                format!(
                    "the request has {n} texts; server.max_client_batch_size is {}: split it",
                    s.max_client_batch_size
                ),
            ));
        }
        Ok(())
    }

    /// Refuses a text over `server.max_input_chars` characters; each item is a cheap upper
    /// bound and the exact count, computed only when the bound is over.
    pub fn check_lengths<F: FnOnce() -> usize>(
        &self,
        lengths: impl Iterator<Item = (usize, F)>,
    ) -> Result<(), ApiError> {
        let max = self.config.server.max_input_chars;
        for (i, (bound, exact)) in lengths.enumerate() {
            if bound > max {
                let n = exact();
                if n > max {
                    return Err(ApiError::new(
                        ErrorKind::LimitExceeded,
                        format!("text {i} has {n} characters; server.max_input_chars is {max}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The deadline of a request arriving now: `server.request_timeout_seconds`, or the
    /// client's own timeout when that is sooner.
    pub fn deadline(&self, client: Option<Duration>) -> Deadline {
        let server = Duration::from_secs_f64(self.config.server.request_timeout_seconds);
        let (limit, source) = match client {
            Some(c) if c < server => (c, "the client's timeout"),
            _ => (server, "server.request_timeout_seconds"),
        };
        Deadline {
            at: Instant::now() + limit,
            limit,
            source,
        }
    }

    /// The priority `server.route_priorities` gives requests of `route` that name none.
    pub fn route_priority(&self, route: &str) -> Option<Priority> {
        self.config.server.route_priorities.get(route).copied()
    }

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

/// Refuses a route model `m` does not serve (`wrong_model_kind`, naming what it serves).
pub fn require(m: &Served, tasks: &[Task], route: &str) -> Result<(), ApiError> {
    if tasks.contains(&m.spec.task) {
        Ok(())
    } else {
        Err(ApiError::wrong_model_kind(
            route,
            m.spec.task.as_str(),
            m.spec.task.routes(),
        ))
    }
}

/// Checks an `Authorization` header value against `server.api_key` (if one is set):
/// `Bearer <key>`, the key compared in constant time. The key is never logged.
pub fn check_api_key(
    server: &crate::config::Server,
    authorization: Option<&[u8]>,
) -> Result<(), ApiError> {
    let Some(key) = &server.api_key else {
        return Ok(());
    };
    let Some(value) = authorization else {
        return Err(ApiError::new(
            ErrorKind::Unauthenticated,
            "this route needs an API key: send `Authorization: Bearer <key>`",
        ));
    };
    let token = value
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
        .map(|_| value[7..].trim_ascii());
    match token {
        Some(token) if key.matches(token) => Ok(()),
        Some(_) => Err(ApiError::new(
            ErrorKind::Unauthenticated,
            "the API key is not valid",
        )),
        None => Err(ApiError::new(
            ErrorKind::Unauthenticated,
            "the Authorization header must be `Bearer <key>`",
        )),
    }
}

/// Records an inference request's outcome over `transport` (counter and dashboard window).
pub fn record<T>(
    recorder: &Recorder,
    transport: &str,
    result: &Result<(T, usize, Timings), ApiError>,
) {
    match result {
        Ok((_, texts, timings)) => recorder.request(transport, Ok((*texts, timings))),
        Err(e) => recorder.request(transport, Err(e.kind.as_str())),
    }
}

/// The JSON dashboard, from the Metrics actor, with each model's Hugging Face source (`hub`:
/// id, revision, commit) when it was named by its id.
pub async fn dashboard_json(shared: &Shared) -> Result<serde_json::Value, ApiError> {
    let mut v = shared
        .metrics
        .send(Snapshot)
        .await
        .ok()
        .flatten()
        .ok_or_else(|| ApiError::internal("the metrics actor could not answer; retry"))?;
    let catalog = shared.directory.catalog();
    if let Some(models) = v.get_mut("models").and_then(|m| m.as_array_mut()) {
        for entry in models {
            let source = catalog
                .models
                .iter()
                .find(|m| entry["name"] == m.name.as_str())
                .and_then(|m| m.settings.model.hub.clone());
            if let Some(hub) = source {
                entry["hub"] = serde_json::json!(hub);
            }
        }
    }
    Ok(v)
}

/// A short id for requests whose client gave none.
pub fn new_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let pid = std::process::id();
    format!("{pid:x}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}
