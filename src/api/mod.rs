//! The front ends: HTTP (actix-web, [`http`]) and gRPC (tonic, [`grpc`]). Both turn requests
//! into typed [`Embed`] messages for the Router through [`Shared::embed`], so validation and
//! the refusal rules are the same on both.

pub mod grpc;
pub mod http;
pub mod unavailable;

use std::sync::{Arc, OnceLock};

use actix::Addr;
use serde::Serialize;

use crate::{
    actors::{
        Lifecycle,
        metrics::{Metrics, Recorder},
        router::{Embed, EmbedOutput, Router},
    },
    config::Config,
    error::ApiError,
    model::{ModelSpec, device_name},
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
}

/// What `/info` and `ModelInfo` tell.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// Model name.
    pub model: String,
    /// Model folder.
    pub path: String,
    /// What kind of model this is (`embedding`).
    pub kind: &'static str,
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
    /// Embeds `texts` through the Router. Refuses empty input, and all work while not ready
    /// or stopping. Dropping the returned future cancels the request's queued work.
    pub async fn embed(
        &self,
        texts: Vec<String>,
        normalize: Option<bool>,
        truncate: bool,
        span: tracing::Span,
    ) -> Result<EmbedOutput, ApiError> {
        if texts.is_empty() {
            return Err(ApiError::validation(
                "the input is an empty list; give at least one text (an empty string is fine)",
            ));
        }
        if self.lifecycle.is_stopping() {
            return Err(ApiError::shutting_down());
        }
        let router = self.router.get().ok_or_else(ApiError::not_ready)?;
        let receiver = router
            .send(Embed {
                texts,
                normalize,
                truncate,
                span,
                sent: std::time::Instant::now(),
            })
            .await
            .map_err(|_| ApiError::shutting_down())??;
        receiver
            .await
            .map_err(|_| ApiError::internal("the request was dropped inside the server"))?
    }

    /// The model facts for `/info` and `ModelInfo`.
    pub fn info(&self) -> ModelInfo {
        let s = &self.spec;
        ModelInfo {
            model: s.name.clone(),
            path: s.path.display().to_string(),
            kind: "embedding",
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

/// A short id for requests whose client gave none.
pub fn new_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let pid = std::process::id();
    format!("{pid:x}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}
