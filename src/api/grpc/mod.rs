//! gRPC front end (tonic): `actor_infer.v1.InferenceService`, the standard
//! `grpc.health.v1.Health` (SERVING only while ready) and server reflection, so generic
//! clients such as grpcurl need no copy of our proto file.
//!
//! Runs on its own arbiter (thread); it reaches the Router through `Addr`, which works across
//! threads. It stops when the Supervisor fires its stop channel, finishing in-flight calls.

pub mod unavailable;

use std::{net::TcpListener, sync::Arc, time::Duration};

use tokio::sync::oneshot;
use tonic::{Request, Response, Status, transport::server::TcpIncoming};
use tonic_health::ServingStatus;

use crate::api::{
    Call, Shared,
    error::{ApiError, ErrorKind},
    pipeline::{self, Reply},
};
use crate::telemetry::TraceContext;

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

use pb::inference_service_server::InferenceServiceServer;

use crate::api::native::GrpcApi;

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

/// A gRPC request that names its own request id (`request_id`; empty: the server makes one).
pub trait WithRequestId {
    /// Takes the client's id out of the request.
    fn take_request_id(&mut self) -> String;
}

/// A unary inference call over gRPC: its deadline (the client's `grpc-timeout`), the request
/// id (the client's where the message carries one, else a new one) and the caller's trace
/// context, then [`served`]. Returns the response and the request id it must carry.
pub(crate) async fn unary<Req, Resp, Fut>(
    shared: &Shared,
    request: Request<Req>,
    route: &'static str,
    work: impl FnOnce(Req, Call) -> Fut,
) -> Result<(Response<Resp>, String), Status>
where
    Req: WithRequestId,
    Fut: std::future::Future<Output = Result<Reply<Resp>, ApiError>>,
{
    let deadline = client_deadline(shared, &request);
    let trace = TraceContext::from_grpc(request.metadata());
    let peer = request.remote_addr();
    let mut req = request.into_inner();
    let id = match req.take_request_id() {
        id if id.is_empty() => crate::api::new_request_id(),
        id => id,
    };
    let resp = served(shared, route, &id, deadline, trace, peer, |call| {
        work(req, call)
    })
    .await?;
    Ok((Response::new(resp), id))
}

/// Every gRPC inference call (or each message of a stream): [`pipeline::call`] (nothing tells
/// a gRPC handler that its client left: hyper drops the future, which the pipeline records),
/// then the access line and the error as a status from the table.
pub(crate) async fn served<Resp, Fut>(
    shared: &Shared,
    route: &'static str,
    id: &str,
    deadline: crate::api::Deadline,
    trace: Option<TraceContext>,
    peer: Option<std::net::SocketAddr>,
    work: impl FnOnce(Call) -> Fut,
) -> Result<Resp, Status>
where
    Fut: std::future::Future<Output = Result<Reply<Resp>, ApiError>>,
{
    let arrived = std::time::Instant::now();
    let traceparent = trace.as_ref().map(|t| t.traceparent().to_string());
    let opening = pipeline::Opening {
        transport: "grpc",
        route,
        request_id: id,
        deadline,
        trace,
        traceparent: traceparent.as_deref(),
        priority: Ok(None),
    };
    let closed = pipeline::call(shared, opening, std::future::pending(), work).await;
    if shared.config.logging.access_log {
        let result = &closed.result;
        let code = match result {
            Ok(_) => tonic::Code::Ok,
            Err(e) => Status::from(e.clone()).code(),
        };
        let error = result.as_ref().err();
        crate::api::access::Line {
            transport: "grpc",
            method: "POST",
            route,
            request_id: id,
            traceparent: None,
            model: closed
                .chosen
                .get()
                .map(|m| (m.name.clone(), m.version.to_string())),
            status: format!("{code:?}"),
            server_error: error.is_some_and(|e| e.kind.http_status() >= 500),
            error: error.map(|e| (e.kind.as_str(), e.message.as_str())),
            detail: Some(&closed.detail),
            elapsed: arrived.elapsed(),
            client: peer.map(|a| a.to_string()),
            quiet: false,
        }
        .write();
    }
    Ok(closed.result.map_err(Status::from)?.body)
}

/// A call's deadline: the client's `grpc-timeout` (answered a little early) or
/// `server.request_timeout_seconds`, whichever is sooner.
pub(super) fn client_deadline<T>(shared: &Shared, request: &Request<T>) -> crate::api::Deadline {
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
        match crate::api::check_api_key(&self.shared.config.server, header) {
            Ok(()) => Ok(request),
            Err(e) => {
                crate::api::record::<()>(&self.shared.recorder, "grpc", &Err(e.clone()));
                if self.shared.config.logging.access_log {
                    let route = request
                        .extensions()
                        .get::<tonic::GrpcMethod>()
                        .map(|m| format!("{}/{}", m.service(), m.method()))
                        .unwrap_or_default();
                    crate::api::access::Line {
                        transport: "grpc",
                        method: "POST",
                        route: &route,
                        request_id: &crate::api::new_request_id(),
                        traceparent: request
                            .metadata()
                            .get("traceparent")
                            .and_then(|v| v.to_str().ok()),
                        model: None,
                        status: format!("{:?}", Status::from(e.clone()).code()),
                        server_error: false,
                        error: Some((e.kind.as_str(), e.message.as_str())),
                        detail: None,
                        elapsed: std::time::Duration::ZERO,
                        client: request.remote_addr().map(|a| a.to_string()),
                        quiet: false,
                    }
                    .write();
                }
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
            .register_encoded_file_descriptor_set(crate::api::kserve::grpc::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let limit = shared.config.server.max_request_bytes;
    let service =
        InferenceServiceServer::new(GrpcApi::new(shared.clone())).max_decoding_message_size(limit);
    let tei = crate::api::tei::grpc::TeiApi::new(shared.clone());
    // The Open Inference Protocol checks the API key itself (its health and metadata calls
    // are open, like the HTTP probes).
    let v2 = crate::api::grpc::unavailable::UnavailableAs503(crate::api::kserve::grpc::service(
        shared.clone(),
    ));
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
) -> crate::api::grpc::unavailable::UnavailableAs503<
    tonic::service::interceptor::InterceptedService<S, ApiKeyCheck>,
> {
    crate::api::grpc::unavailable::UnavailableAs503(
        tonic::service::interceptor::InterceptedService::new(
            service,
            ApiKeyCheck {
                shared: shared.clone(),
            },
        ),
    )
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
