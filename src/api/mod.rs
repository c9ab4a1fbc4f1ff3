//! The front ends: HTTP (actix-web, [`http`]) and gRPC (tonic, [`grpc`]). Both turn requests
//! into typed [`Embed`] messages for the Router through [`Shared::infer`], so validation, the
//! refusal rules and the errors ([`error`]) are the same on both.

pub mod error;
pub mod grpc;
pub mod http;
pub mod oip;
pub mod predict;
pub mod telemetry;
pub mod unavailable;
pub mod v2;
pub mod v2_grpc;

use std::{
    net::TcpListener,
    sync::{Arc, OnceLock},
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
        router::{Embed, EmbedOutput, Router, Timings},
        supervisor::{Shutdown, StopReason, Supervisor},
    },
    config::Config,
    model::{ModelSpec, Task, device_name},
};
use error::{ApiError, ErrorKind};

/// What both front ends share. The Router's address appears once the model is loaded;
/// until then inference routes answer "not ready".
pub struct Shared {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// The model's facts.
    pub spec: Arc<ModelSpec>,
    /// Readiness and stop flags.
    pub lifecycle: Arc<Lifecycle>,
    /// Set by the Supervisor once the Router runs.
    pub router: Arc<OnceLock<Addr<Router>>>,
    /// The Metrics actor (renders `/metrics`).
    pub metrics: Addr<Metrics>,
    /// Metric handles.
    pub recorder: Recorder,
    /// Texts in flight against `server.max_concurrent_requests`.
    pub admission: Arc<Admission>,
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

/// What `/info` and `ModelInfo` tell.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// Model name.
    pub model: String,
    /// Model folder.
    pub path: String,
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
    /// Longest input, in tokens.
    pub max_sequence_length: usize,
    /// Where the model runs.
    pub device: String,
    /// Weights' precision.
    pub dtype: &'static str,
    /// Pooling.
    pub pooling: &'static str,
    /// Normalised by default.
    pub normalize: bool,
    /// Model worker instances.
    pub workers: usize,
    /// Tokenizer threads.
    pub tokenizer_workers: usize,
    /// Experiment name.
    pub experiment: String,
    /// The server's version.
    pub version: &'static str,
}

impl Shared {
    /// Embeds `texts` through the Router: [`Shared::infer`] for embedding models only (a
    /// classifier answers `wrong_model_kind`).
    pub async fn embed(
        &self,
        texts: Vec<String>,
        normalize: Option<bool>,
        truncate: bool,
        call: Call,
    ) -> Result<EmbedOutput, ApiError> {
        self.require(&[Task::Embedding], "embeddings (/embed, /v1/embeddings)")?;
        self.infer(texts, None, normalize, truncate, call).await
    }

    /// Refuses a route the loaded model does not serve.
    pub fn require(&self, tasks: &[Task], route: &str) -> Result<(), ApiError> {
        if tasks.contains(&self.spec.task) {
            Ok(())
        } else {
            Err(ApiError::wrong_model_kind(
                route,
                self.spec.task.as_str(),
                self.spec.task.routes(),
            ))
        }
    }

    /// Runs `texts` (with their second segments `pairs`, for a cross-encoder) through the
    /// Router within `deadline`: one row per text, an embedding or a classifier's logits.
    /// Checks, in order: the input is not empty and within `server.max_client_batch_size`
    /// texts of `server.max_input_chars` characters each; the server is ready and not
    /// stopping; the texts fit under `server.max_concurrent_requests` (admission control,
    /// before any queue). Dropping the returned future cancels the request's queued work.
    pub async fn infer(
        &self,
        texts: Vec<String>,
        pairs: Option<Vec<String>>,
        normalize: Option<bool>,
        truncate: bool,
        call: Call,
    ) -> Result<EmbedOutput, ApiError> {
        let Call { span, deadline } = call;
        if let Some(p) = &pairs {
            if p.len() != texts.len() {
                return Err(ApiError::validation(format!(
                    "{} second segments for {} texts; give one per text",
                    p.len(),
                    texts.len()
                )));
            }
            self.check_limits(p)?;
        }
        self.check_limits(&texts)?;
        if self.lifecycle.is_stopping() {
            return Err(ApiError::shutting_down());
        }
        let router = self.router.get().ok_or_else(ApiError::not_ready)?;
        let permit = self.admission.try_admit(texts.len()).map_err(|held| {
            ApiError::new(
                ErrorKind::Overloaded,
                format!(
                    "{held} texts are in flight and this request adds {}, over \
                     server.max_concurrent_requests = {}; retry later",
                    texts.len(),
                    self.admission.limit()
                ),
            )
        })?;
        let receiver = router
            .send(Embed {
                texts,
                pairs,
                normalize,
                truncate,
                span,
                sent: Instant::now(),
                deadline: deadline.at,
                permit,
            })
            .await
            .map_err(|_| ApiError::shutting_down())??;
        match tokio::time::timeout_at(deadline.at.into(), receiver).await {
            Ok(Ok(answer)) => Ok(answer?),
            Ok(Err(_)) => Err(ApiError::internal(
                "the request was dropped inside the server",
            )),
            // Dropping the receiver here makes the Router skip whatever is still queued.
            Err(_) => Err(deadline.exceeded()),
        }
    }

    /// The per-request limits: a non-empty list, at most `server.max_client_batch_size`
    /// texts, each at most `server.max_input_chars` characters.
    pub fn check_limits(&self, texts: &[String]) -> Result<(), ApiError> {
        let s = &self.config.server;
        if texts.is_empty() {
            return Err(ApiError::validation(
                "the input is an empty list; give at least one text (an empty string is fine)",
            ));
        }
        if texts.len() > s.max_client_batch_size {
            return Err(ApiError::new(
                ErrorKind::LimitExceeded,
                format!(
                    "the request has {} texts; server.max_client_batch_size is {}: split it",
                    texts.len(),
                    s.max_client_batch_size
                ),
            ));
        }
        for (i, t) in texts.iter().enumerate() {
            // Bytes bound characters from above, so most texts skip the count.
            if t.len() > s.max_input_chars && t.chars().count() > s.max_input_chars {
                return Err(ApiError::new(
                    ErrorKind::LimitExceeded,
                    format!(
                        "text {i} has {} characters; server.max_input_chars is {}",
                        t.chars().count(),
                        s.max_input_chars
                    ),
                ));
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

    /// The model facts for `/info` and `ModelInfo`.
    pub fn info(&self) -> ModelInfo {
        let s = &self.spec;
        ModelInfo {
            model: s.name.clone(),
            path: s.path.display().to_string(),
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
            workers: self.config.model.instances,
            tokenizer_workers: self.config.tokenizer.workers,
            experiment: self.config.experiment.name.clone(),
            version: env!("CARGO_PKG_VERSION"),
        }
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

/// The JSON dashboard, from the Metrics actor.
pub async fn dashboard_json(shared: &Shared) -> Result<serde_json::Value, ApiError> {
    shared
        .metrics
        .send(Snapshot)
        .await
        .ok()
        .flatten()
        .ok_or_else(|| ApiError::internal("the metrics actor could not answer; retry"))
}

/// A short id for requests whose client gave none.
pub fn new_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let pid = std::process::id();
    format!("{pid:x}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}
