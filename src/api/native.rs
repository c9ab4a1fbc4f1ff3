//! Our own gRPC API, `actor_infer.v1.InferenceService` (`proto/actor_infer/v1/inference.proto`):
//! `Infer` (embeddings, or a classifier's predictions, one output per text), `Rerank`,
//! `ModelInfo` and `ListModels`. Each inference method parses its message into a [`Job`] and
//! goes through the pipeline over gRPC ([`grpc::unary`]); this module only translates the
//! messages.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::api::{
    Job, Shared,
    error::ApiError,
    grpc::{self, WithRequestId, pb, pb::inference_service_server::InferenceService},
    pipeline::Reply,
    predict,
};
use crate::{
    actors::{models::Pick, router::Timings},
    model::Task,
};

/// The `InferenceService` implementation.
#[derive(Clone)]
pub struct GrpcApi {
    shared: Arc<Shared>,
}

impl GrpcApi {
    /// The `InferenceService` over `shared`.
    pub fn new(shared: Arc<Shared>) -> GrpcApi {
        GrpcApi { shared }
    }
}

fn timings(t: &Timings) -> pb::StageTimings {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    pb::StageTimings {
        tokenize_ms: ms(t.tokenize),
        queue_ms: ms(t.queue),
        inference_ms: ms(t.inference),
        total_ms: ms(t.total),
    }
}

#[tonic::async_trait]
impl InferenceService for GrpcApi {
    async fn infer(
        &self,
        request: Request<pb::InferRequest>,
    ) -> Result<Response<pb::InferResponse>, Status> {
        let shared = &self.shared;
        grpc::unary(
            shared,
            request,
            "Infer",
            |req: pb::InferRequest, call| async move {
                let m = call.model(shared, pick(&req.model, Task::Embedding))?;
                let classifier = m.spec.task != Task::Embedding;
                let pairs = if req.text_pairs.is_empty() {
                    None
                } else if !classifier {
                    return Err(ApiError::validation(
                        "text_pairs is for classifiers; this is an embedding model",
                    ));
                } else {
                    Some(req.text_pairs)
                };
                let precision = match req.output_dtype.as_deref() {
                    Some(_) if classifier => {
                        return Err(ApiError::validation(
                            "output_dtype is for embedding models; this is a classifier",
                        ));
                    }
                    name => crate::api::quantized::precision(&m, name)?,
                };
                let mut job = Job::of(req.texts.into_iter().map(Into::into).collect());
                job.priority = crate::api::priority(req.priority.as_deref(), "priority")?;
                job.texts.pairs = pairs;
                job.rows.normalize = req.normalize;
                job.texts.truncate = req.truncate.unwrap_or(true);
                let mut out = shared.infer(&m, job, call).await?;
                let raw = req.raw_scores.unwrap_or(false);
                let output = |token_count| pb::Output {
                    embedding: Vec::new(),
                    token_count,
                    predictions: Vec::new(),
                    quantized: Vec::new(),
                };
                let outputs: Vec<pb::Output> = if classifier {
                    out.embeddings
                        .iter()
                        .zip(&out.token_counts)
                        .map(|(row, &token_count)| pb::Output {
                            predictions: predict::predictions(row, &m.spec, raw)
                                .into_iter()
                                .map(|p| pb::Prediction {
                                    label: p.label,
                                    score: p.score,
                                })
                                .collect(),
                            ..output(token_count)
                        })
                        .collect()
                } else {
                    let normalized = req.normalize.unwrap_or(m.spec.normalize);
                    let rows = std::mem::take(&mut out.embeddings);
                    crate::api::quantized::rows(&m, rows, precision, normalized)?
                        .into_iter()
                        .zip(&out.token_counts)
                        .map(|(row, &token_count)| match row {
                            crate::api::quantized::Row::Float(embedding) => pb::Output {
                                embedding,
                                ..output(token_count)
                            },
                            crate::api::quantized::Row::Quantized(quantized, _) => pb::Output {
                                quantized,
                                ..output(token_count)
                            },
                        })
                        .collect()
                };
                let texts = outputs.len();
                Ok(Reply {
                    body: pb::InferResponse {
                        outputs,
                        timings: Some(timings(&out.timings)),
                        model: m.name.clone(),
                        request_id: String::new(),
                    },
                    texts,
                    timings: out.timings,
                })
            },
        )
        .await
        .map(|(mut r, id)| {
            r.get_mut().request_id = id;
            r
        })
    }

    async fn model_info(
        &self,
        request: Request<pb::ModelInfoRequest>,
    ) -> Result<Response<pb::ModelInfoResponse>, Status> {
        let name = request.into_inner().model;
        let pick = if name.is_empty() {
            Pick::First
        } else {
            Pick::Named(&name)
        };
        let m = self.shared.model(pick).map_err(Status::from)?;
        Ok(Response::new(model_info(self.shared.info(&m))))
    }

    async fn list_models(
        &self,
        _request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let catalog = self.shared.catalog();
        Ok(Response::new(pb::ListModelsResponse {
            models: catalog
                .models
                .iter()
                .map(|m| model_info(self.shared.info(m)))
                .collect(),
        }))
    }

    async fn rerank(
        &self,
        request: Request<pb::RerankRequest>,
    ) -> Result<Response<pb::RerankResponse>, Status> {
        let shared = &self.shared;
        grpc::unary(
            shared,
            request,
            "Rerank",
            |req: pb::RerankRequest, call| async move {
                let n = req.texts.len();
                let keep = req.return_text.then(|| req.texts.clone());
                let truncate = req.truncate.unwrap_or(true);
                let m = call.model(shared, pick(&req.model, Task::Reranker))?;
                let out =
                    predict::rerank_pairs(shared, &m, req.query, req.texts, truncate, None, call)
                        .await?;
                Ok(Reply {
                    body: pb::RerankResponse {
                        results: predict::rerank_results(&out.embeddings, req.raw_scores, keep)
                            .into_iter()
                            .map(|r| pb::RankedText {
                                index: r.index as u32,
                                score: r.score,
                                text: r.text,
                            })
                            .collect(),
                        timings: Some(timings(&out.timings)),
                        model: m.name.clone(),
                        request_id: String::new(),
                    },
                    texts: n,
                    timings: out.timings,
                })
            },
        )
        .await
        .map(|(mut r, id)| {
            r.get_mut().request_id = id;
            r
        })
    }
}

/// The model a request's `model` field names, or the default for `task` when it is empty.
fn pick(model: &str, task: Task) -> Pick<'_> {
    if model.is_empty() {
        Pick::Default(task)
    } else {
        Pick::Named(model)
    }
}

/// `ModelInfo`'s answer for one model.
fn model_info(i: crate::api::ModelInfo) -> pb::ModelInfoResponse {
    let hub = i.hub.unwrap_or_default();
    pb::ModelInfoResponse {
        hub_id: hub.id,
        hub_revision: hub.revision,
        hub_commit: hub.commit,
        name: i.model,
        path: i.path.unwrap_or_default(),
        embedding_dim: i.embedding_dim as u32,
        max_sequence_length: i.max_sequence_length as u32,
        device: i.device,
        dtype: i.dtype.into(),
        pooling: i.pooling.into(),
        normalize: i.normalize,
        workers: i.workers as u32,
        tokenizer_workers: i.tokenizer_workers as u32,
        kind: i.kind.into(),
        family: i.family.into(),
        routes: i.routes.iter().map(|r| r.to_string()).collect(),
        labels: i.labels,
        activation: i.activation.into(),
        version: i.model_version,
    }
}

impl WithRequestId for pb::InferRequest {
    fn take_request_id(&mut self) -> String {
        std::mem::take(&mut self.request_id)
    }
}

impl WithRequestId for pb::RerankRequest {
    fn take_request_id(&mut self) -> String {
        std::mem::take(&mut self.request_id)
    }
}
