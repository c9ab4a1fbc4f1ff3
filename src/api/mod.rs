//! The front ends: HTTP (actix-web, [`http`]) and gRPC (tonic, [`grpc`]). Both turn requests
//! into typed [`Embed`] messages for the Router through [`Shared::embed`], so validation and
//! the refusal rules are the same on both.

pub mod grpc;
pub mod http;
pub mod predict;
pub mod unavailable;

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use actix::Addr;
use serde::Serialize;

use crate::{
    actors::{
        Admission, Lifecycle,
        metrics::{Metrics, Recorder},
        router::{Embed, EmbedOutput, Router},
    },
    config::Config,
    error::{ApiError, ErrorKind},
    model::{ModelSpec, Task, device_name},
};

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
        span: tracing::Span,
        deadline: Deadline,
    ) -> Result<EmbedOutput, ApiError> {
        self.require(&[Task::Embedding], "embeddings (/embed, /v1/embeddings)")?;
        self.infer(texts, None, normalize, truncate, span, deadline)
            .await
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
        span: tracing::Span,
        deadline: Deadline,
    ) -> Result<EmbedOutput, ApiError> {
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
            Ok(answer) => answer
                .map_err(|_| ApiError::internal("the request was dropped inside the server"))?,
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

/// A short id for requests whose client gave none.
pub fn new_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let pid = std::process::id();
    format!("{pid:x}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}
