//! The front ends, by protocol, over two transports: HTTP (actix-web, [`http`]: the server,
//! its middleware, the operational routes, the OpenAPI document) and gRPC (tonic, [`grpc`]: the
//! server, health, reflection, the API-key interceptor). The protocols: TEI ([`tei`]: HTTP and
//! `tei.v1`), OpenAI ([`openai`]), KServe v2 / Open Inference Protocol ([`kserve`]) and our own
//! `actor_infer.v1` ([`native`]). Every one of them turns its request into one [`Job`] and runs
//! it through the one pipeline ([`pipeline`]: the call's opening and closing, admission,
//! limits, prompts), so validation, the refusal rules and the errors ([`error`]) are the same
//! everywhere. Two modules are shared by several protocols rather than owned by one:
//! [`predict`] (a classifier's logits into scores; it also holds TEI's `/predict` and `/rerank`
//! routes) and [`quantized`] (an embedding's output type).

pub mod access;
pub mod error;
pub mod grpc;
pub mod http;
pub mod info;
pub mod kserve;
pub mod native;
pub mod openai;
pub mod pipeline;
pub mod predict;
pub mod quantized;
pub mod tei;

pub use crate::actors::job::Job;
pub use info::ModelInfo;
pub use pipeline::{Call, Chosen, Deadline, direction, new_request_id, priority, record, require};

use std::{
    net::TcpListener,
    sync::Arc,
    time::{Duration, Instant},
};

use actix::{Addr, Arbiter};
use actix_rt::ArbiterHandle;
use tokio::sync::{oneshot, watch};

use crate::{
    actors::{
        Admission, Lifecycle,
        metrics::{Metrics, Recorder, Snapshot},
        models::Directory,
        supervisor::{Shutdown, StopReason, Supervisor},
    },
    config::Config,
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
