//! gRPC front end (tonic): `actor_infer.v1.InferenceService`, the standard
//! `grpc.health.v1.Health` (SERVING only while ready) and server reflection, so generic
//! clients such as grpcurl need no copy of our proto file.
//!
//! Runs on its own arbiter (thread); it reaches the Router through `Addr`, which works across
//! threads. It stops when the Supervisor fires its stop channel, finishing in-flight calls.

use std::{net::TcpListener, sync::Arc, time::Duration};

use tokio::sync::oneshot;
use tonic::{Request, Response, Status, transport::server::TcpIncoming};
use tonic_health::ServingStatus;

use super::{
    Call, Shared,
    error::{ApiError, ErrorKind},
    predict,
    telemetry::TraceContext,
};
use crate::{
    actors::{models::Pick, router::Timings},
    model::Task,
};

/// Code generated from `proto/actor_infer/v1/inference.proto`.
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("actor_infer.v1");
}

/// Code generated from `proto/tei/v1/tei.proto` (TEI's gRPC API).
pub mod tei {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("tei.v1");
}

/// Encoded file descriptor set of our protos (both packages), for reflection.
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
#[derive(Clone)]
pub struct GrpcApi {
    shared: Arc<Shared>,
}

/// Records a call dropped before its answer (the client cancelled it) as `client_gone`.
struct ClientGoneGuard<'a>(Option<(&'a Shared, super::Chosen)>);

impl Drop for ClientGoneGuard<'_> {
    fn drop(&mut self) {
        if let Some((shared, chosen)) = &self.0 {
            chosen
                .recorder(shared)
                .request("grpc", Err(ErrorKind::ClientGone.as_str()));
        }
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
        self.inference(request, "Infer", |req: pb::InferRequest, call| async move {
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
            let mut job = super::Job::of(req.texts.into_iter().map(Into::into).collect());
            job.pairs = pairs;
            job.normalize = req.normalize;
            job.truncate = req.truncate.unwrap_or(true);
            let out = shared.infer(&m, job, call).await?;
            let raw = req.raw_scores.unwrap_or(false);
            let outputs: Vec<pb::Output> = out
                .embeddings
                .into_iter()
                .zip(out.token_counts)
                .map(|(row, token_count)| {
                    if classifier {
                        pb::Output {
                            embedding: Vec::new(),
                            token_count,
                            predictions: predict::predictions(&row, &m.spec, raw)
                                .into_iter()
                                .map(|p| pb::Prediction {
                                    label: p.label,
                                    score: p.score,
                                })
                                .collect(),
                        }
                    } else {
                        pb::Output {
                            embedding: row,
                            token_count,
                            predictions: Vec::new(),
                        }
                    }
                })
                .collect();
            let texts = outputs.len();
            Ok((
                pb::InferResponse {
                    outputs,
                    timings: Some(timings(&out.timings)),
                    model: m.name.clone(),
                    request_id: String::new(),
                },
                texts,
                out.timings,
            ))
        })
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
        self.inference(
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
                Ok((
                    pb::RerankResponse {
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
                    n,
                    out.timings,
                ))
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
fn model_info(i: super::ModelInfo) -> pb::ModelInfoResponse {
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

/// A gRPC request that names its own request id (`request_id`; empty: the server makes one).
pub trait WithRequestId {
    /// Takes the client's id out of the request.
    fn take_request_id(&mut self) -> String;
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

impl GrpcApi {
    /// The `InferenceService` over `shared`.
    pub fn new(shared: Arc<Shared>) -> GrpcApi {
        GrpcApi { shared }
    }

    /// The opening every gRPC inference method shares: the deadline (the client's
    /// `grpc-timeout`), the request id (the client's, or a new one) and the caller's trace
    /// context (W3C `traceparent` metadata); then [`served`]. Returns the response and the
    /// request id it must carry.
    pub(super) async fn inference<Req, Resp, Fut>(
        &self,
        request: Request<Req>,
        route: &'static str,
        work: impl FnOnce(Req, Call) -> Fut,
    ) -> Result<(Response<Resp>, String), Status>
    where
        Req: WithRequestId,
        Fut: std::future::Future<Output = Result<(Resp, usize, Timings), ApiError>>,
    {
        let deadline = client_deadline(&self.shared, &request);
        let trace = TraceContext::from_grpc(request.metadata());
        let mut req = request.into_inner();
        let id = match req.take_request_id() {
            id if id.is_empty() => super::new_request_id(),
            id => id,
        };
        let resp = served(&self.shared, route, &id, deadline, trace, |call| {
            work(req, call)
        })
        .await?;
        Ok((Response::new(resp), id))
    }
}

/// What every gRPC inference call (or each message of a stream) shares: its span with the
/// request id, the outcome in the metrics, including a call the client cancels (hyper then
/// drops this future mid-way; the guard records `client_gone`), and the error as a status
/// from the table.
pub(super) async fn served<Resp, Fut>(
    shared: &Shared,
    route: &'static str,
    id: &str,
    deadline: super::Deadline,
    trace: Option<TraceContext>,
    work: impl FnOnce(Call) -> Fut,
) -> Result<Resp, Status>
where
    Fut: std::future::Future<Output = Result<(Resp, usize, Timings), ApiError>>,
{
    let call = Call::new(
        tracing::info_span!("request", transport = "grpc", route, request_id = %id, traceparent = tracing::field::Empty),
        deadline,
    );
    let chosen = call.chosen.clone();
    super::telemetry::continue_trace(&call.span, trace);
    let mut gone = ClientGoneGuard(Some((shared, chosen.clone())));
    let result = work(call).await;
    gone.0 = None;
    super::record(chosen.recorder(shared), "grpc", &result);
    let (resp, _, _) = result.map_err(Status::from)?;
    Ok(resp)
}

/// A call's deadline: the client's `grpc-timeout` (answered a little early) or
/// `server.request_timeout_seconds`, whichever is sooner.
pub(super) fn client_deadline<T>(shared: &Shared, request: &Request<T>) -> super::Deadline {
    let client_timeout = request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        // Answer a little before the client's deadline, so the client reads our
        // DEADLINE_EXCEEDED rather than tonic's own timeout (which says CANCELLED).
        .map(|t| t.saturating_sub((t / 4).min(DEADLINE_MARGIN)));
    shared.deadline(client_timeout)
}

/// How much before a client's deadline the server answers DEADLINE_EXCEEDED (at most a quarter
/// of the timeout).
const DEADLINE_MARGIN: Duration = Duration::from_millis(10);

/// Parses a `grpc-timeout` header value: up to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`,
/// `n`), per the gRPC over HTTP/2 spec.
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if !v.is_ascii() {
        return None;
    }
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The API-key check for `InferenceService` (health and reflection stay open): with
/// `server.api_key` set, calls need `authorization: Bearer <key>` metadata.
#[derive(Clone)]
pub struct ApiKeyCheck {
    shared: Arc<Shared>,
}

impl tonic::service::Interceptor for ApiKeyCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        match super::check_api_key(&self.shared.config.server, header) {
            Ok(()) => Ok(request),
            Err(e) => {
                super::record::<()>(&self.shared.recorder, "grpc", &Err(e.clone()));
                Err(Status::from(e))
            }
        }
    }
}

/// tonic answers two client mistakes with codes that say "server fault": a request message
/// over the size limit (OUT_OF_RANGE) and one that does not parse, e.g. a string that is not
/// UTF-8 (INTERNAL). This rewrites them to RESOURCE_EXHAUSTED (as the gRPC status code
/// document prescribes for an over-limit request) and INVALID_ARGUMENT, keeping tonic's
/// message, which names the limit or the field.
fn client_fault_codes(
    mut res: tonic::codegen::http::Response<tonic::body::Body>,
) -> tonic::codegen::http::Response<tonic::body::Body> {
    let Some(status) = Status::from_header_map(res.headers()) else {
        return res;
    };
    let kind = match status.code() {
        tonic::Code::OutOfRange if status.message().contains("message length too large") => {
            ErrorKind::PayloadTooLarge
        }
        tonic::Code::Internal if status.message().starts_with("failed to decode") => {
            ErrorKind::Validation
        }
        _ => return res,
    };
    let message = format!("invalid request message: {}", status.message());
    let _ = Status::from(ApiError::new(kind, message)).add_header(res.headers_mut());
    res
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
) -> Result<(), ServeError> {
    // Reflection in both versions: v1 (grpcurl today) and v1alpha (grpcio-reflection, grpcui,
    // Postman, Evans, older grpcurl).
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(super::v2_grpc::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let limit = shared.config.server.max_request_bytes;
    let service =
        InferenceServiceServer::new(GrpcApi::new(shared.clone())).max_decoding_message_size(limit);
    let tei = super::tei_grpc::TeiApi::new(shared.clone());
    // The Open Inference Protocol checks the API key itself (its health and metadata calls
    // are open, like the HTTP probes).
    let v2 = super::unavailable::UnavailableAs503(super::v2_grpc::service(shared.clone()));
    tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(client_fault_codes))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(v2)
        .add_service(guarded(service, &shared))
        .add_service(guarded(
            tei::info_server::InfoServer::new(tei.clone()).max_decoding_message_size(limit),
            &shared,
        ))
        .add_service(guarded(
            tei::embed_server::EmbedServer::new(tei.clone()).max_decoding_message_size(limit),
            &shared,
        ))
        .add_service(guarded(
            tei::predict_server::PredictServer::new(tei.clone()).max_decoding_message_size(limit),
            &shared,
        ))
        .add_service(guarded(
            tei::rerank_server::RerankServer::new(tei.clone()).max_decoding_message_size(limit),
            &shared,
        ))
        .add_service(guarded(
            tei::tokenize_server::TokenizeServer::new(tei).max_decoding_message_size(limit),
            &shared,
        ))
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop.await;
        })
        .await?;
    Ok(())
}

/// An inference service behind the API key, its refusals as HTTP 503 for balancers.
fn guarded<S>(
    service: S,
    shared: &Arc<Shared>,
) -> super::unavailable::UnavailableAs503<
    tonic::service::interceptor::InterceptedService<S, ApiKeyCheck>,
> {
    super::unavailable::UnavailableAs503(tonic::service::interceptor::InterceptedService::new(
        service,
        ApiKeyCheck {
            shared: shared.clone(),
        },
    ))
}

/// Why the gRPC server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection service could not be built from the descriptor sets.
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The listener could not be handed to tokio.
    #[error("gRPC listener: {0}")]
    Listener(#[from] std::io::Error),
    /// tonic's server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn grpc_timeouts_parse_per_the_spec() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "m", "123456789m", "12x", "-1S", "1.5S", "é"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Whatever bytes arrive as a request message, decoding fails cleanly or succeeds.
        #[test]
        fn request_messages_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = <pb::InferRequest as prost::Message>::decode(bytes.as_slice());
        }

        #[test]
        fn any_timeout_header_parses_or_is_ignored(v in "\\PC{0,12}") {
            let _ = parse_grpc_timeout(&v);
        }

        #[test]
        fn valid_timeouts_round_trip(n in 0u64..100_000_000, unit in "[HMSmun]") {
            let d = parse_grpc_timeout(&format!("{n}{unit}")).unwrap();
            let per = match unit.as_str() {
                "H" => 3_600_000_000_000u128, "M" => 60_000_000_000, "S" => 1_000_000_000,
                "m" => 1_000_000, "u" => 1_000, _ => 1,
            };
            prop_assert_eq!(d.as_nanos(), u128::from(n) * per);
        }
    }
}
