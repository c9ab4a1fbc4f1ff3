//! gRPC front end (tonic): `actor_infer.v1.InferenceService`, the standard
//! `grpc.health.v1.Health` (SERVING only while ready) and server reflection, so generic
//! clients such as grpcurl need no copy of our proto file.
//!
//! Runs on its own arbiter (thread); it reaches the Router through `Addr`, which works across
//! threads. It stops when the Supervisor fires its stop channel, finishing in-flight calls.

use std::{net::TcpListener, sync::Arc};

use tokio::sync::oneshot;
use tonic::{Request, Response, Status, transport::server::TcpIncoming};
use tonic_health::ServingStatus;

use super::Shared;
use crate::{actors::router::Timings, error::ApiError};

/// Code generated from `proto/actor_infer/v1/inference.proto`.
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("actor_infer.v1");
}

/// Encoded file descriptor set of our proto, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/actor_infer_descriptor.bin"));

use pb::inference_service_server::{InferenceService, InferenceServiceServer};

/// Sets what `grpc.health.v1.Health` answers, for the whole server (`""`) and for
/// `actor_infer.v1.InferenceService`.
#[derive(Clone)]
pub struct Health(tonic_health::server::HealthReporter);

impl Health {
    /// Serving (`true`) or not serving.
    pub async fn set(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.0.set_service_status("", status).await;
        self.0
            .set_service_status(
                <InferenceServiceServer<GrpcApi> as tonic::server::NamedService>::NAME,
                status,
            )
            .await;
    }
}

/// The health service and its switch, starting at NOT_SERVING.
pub fn health() -> (
    Health,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, service) = tonic_health::server::health_reporter();
    (Health(reporter), service)
}

/// The `InferenceService` implementation.
pub struct GrpcApi {
    shared: Arc<Shared>,
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
        let req = request.into_inner();
        let request_id = if req.request_id.is_empty() {
            super::new_request_id()
        } else {
            req.request_id
        };
        let span = tracing::info_span!("request", transport = "grpc", route = "Infer", request_id = %request_id);
        let result = self
            .shared
            .embed(req.texts, req.normalize, req.truncate.unwrap_or(true), span)
            .await;
        self.shared.recorder.request(
            "grpc",
            match &result {
                Ok(out) => Ok((out.embeddings.len(), &out.timings)),
                Err(e) => Err(e.kind.as_str()),
            },
        );
        let out = result.map_err(Status::from)?;
        Ok(Response::new(pb::InferResponse {
            outputs: out
                .embeddings
                .into_iter()
                .zip(out.token_counts)
                .map(|(embedding, token_count)| pb::Output {
                    embedding,
                    token_count,
                })
                .collect(),
            timings: Some(timings(&out.timings)),
            model: self.shared.spec.name.clone(),
            request_id,
        }))
    }

    async fn model_info(
        &self,
        _request: Request<pb::ModelInfoRequest>,
    ) -> Result<Response<pb::ModelInfoResponse>, Status> {
        let i = self.shared.info();
        Ok(Response::new(pb::ModelInfoResponse {
            name: i.model,
            path: i.path,
            embedding_dim: i.embedding_dim as u32,
            max_sequence_length: i.max_sequence_length as u32,
            device: i.device,
            dtype: i.dtype.into(),
            pooling: i.pooling.into(),
            normalize: i.normalize,
            workers: i.workers as u32,
            tokenizer_workers: i.tokenizer_workers as u32,
            kind: i.kind.into(),
        }))
    }
}

/// Serves gRPC on `listener` until `stop` fires, then finishes in-flight calls. Must run
/// inside a tokio runtime (the gRPC arbiter's).
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    stop: oneshot::Receiver<()>,
) -> Result<(), String> {
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| format!("gRPC reflection: {e}"))?;
    let listener =
        tokio::net::TcpListener::from_std(listener).map_err(|e| format!("gRPC listener: {e}"))?;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(super::unavailable::UnavailableAs503(
            InferenceServiceServer::new(GrpcApi { shared }),
        ))
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop.await;
        })
        .await
        .map_err(|e| format!("gRPC server: {e}"))
}

impl From<&ApiError> for Status {
    fn from(e: &ApiError) -> Self {
        Status::new(e.kind.grpc_code(), e.message.clone())
    }
}
