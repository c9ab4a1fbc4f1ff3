//! actor-infer: an inference server for text models, written as an actor system.
//!
//! One process. A Supervisor starts a Metrics actor, a pool of ModelWorkers (libtorch through
//! tch), a pool of Tokenizers (Hugging Face `tokenizers`) and a Router; the HTTP (actix-web)
//! and gRPC (tonic) front ends send typed requests to the Router. Stopping cascades down the
//! tree within one budget and escalates to a hard abort, so nothing outlives the process: no
//! worker processes exist to be orphaned, and ports and device memory go with the process.
//!
//! [`run`] is the whole server; `main.rs` only parses the command line.

#![warn(missing_docs)]

pub mod actors;
pub mod api;
pub mod bench;
pub mod cli;
pub mod config;
pub mod doctor;
pub mod error;
pub mod fault;
pub mod model;

use std::{
    net::{SocketAddr, TcpListener},
    sync::{Arc, OnceLock},
};

use actix::prelude::*;
use tokio::sync::oneshot;

use actors::{
    ActorTable, Lifecycle,
    metrics::Metrics,
    supervisor::{Boot, EXIT_FAILURE, FrontEnds, Shutdown, StopReason, Supervisor},
};
use config::Config;
use model::{ModelSpec, TextTokenizer};

/// The two bound sockets. Bound before anything else starts, so a port in use fails the start
/// at once with a message naming it.
pub struct Listeners {
    /// HTTP.
    pub http: TcpListener,
    /// gRPC.
    pub grpc: TcpListener,
}

impl Listeners {
    /// Binds `server.host` on the HTTP and gRPC ports (0 picks a free port).
    pub fn bind(server: &config::Server) -> Result<Listeners, String> {
        let bind = |what: &str, port: u32| -> Result<TcpListener, String> {
            let addr = format!("{}:{port}", server.host);
            let listener = TcpListener::bind(&addr).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AddrInUse {
                    format!(
                        "the {what} port {port} on {} is already in use (is another server \
                         running? `actor-infer doctor` shows who holds it); pick another with \
                         --{}-port",
                        server.host,
                        what.to_lowercase()
                    )
                } else {
                    format!("cannot listen for {what} on {addr}: {e}")
                }
            })?;
            listener
                .set_nonblocking(true)
                .map_err(|e| format!("{what} listener: {e}"))?;
            Ok(listener)
        };
        Ok(Listeners {
            http: bind("HTTP", server.http_port)?,
            grpc: bind("gRPC", server.grpc_port)?,
        })
    }

    /// The bound HTTP address (the real port when 0 was asked for).
    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.http.local_addr()
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }
}

/// Runs the server on `device` (resolved by `model::device::select`) until it stops; returns
/// the process exit code (`actors::supervisor::EXIT_*`). Must run inside an actix `System`.
pub async fn run(config: Config, device: tch::Device, listeners: Listeners) -> i32 {
    let config = Arc::new(config);
    if fault::enabled() {
        tracing::warn!("fault injection is ON ({}=1): for tests only", fault::ENV);
    }
    let spec = match ModelSpec::load(&config.model, device) {
        Ok(spec) => Arc::new(spec),
        Err(e) => {
            tracing::error!("cannot serve the model: {e}");
            return EXIT_FAILURE;
        }
    };
    let tokenizer = match TextTokenizer::load(&spec.path, spec.max_seq_length) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("cannot serve the model: {e}");
            return EXIT_FAILURE;
        }
    };
    let lifecycle = Arc::new(Lifecycle::default());
    let table = Arc::new(ActorTable::default());
    let facts = actors::metrics::Facts {
        experiment: config.experiment.name.clone(),
        model: spec.name.clone(),
        device: model::device_name(spec.device),
        window: std::time::Duration::from_secs_f64(config.metrics.window_seconds),
    };
    let (metrics, recorder) = Metrics::new(facts, lifecycle.clone(), table.clone())
        .expect("metric names are unique and valid");
    let metrics = metrics.start();
    let router_cell = Arc::new(OnceLock::new());
    let shared = Arc::new(api::Shared {
        config: config.clone(),
        spec: spec.clone(),
        lifecycle: lifecycle.clone(),
        router: router_cell.clone(),
        metrics,
        admission: actors::Admission::new(
            config.server.max_concurrent_requests,
            recorder.admitted.clone(),
        ),
        recorder: recorder.clone(),
    });

    // Front ends first, so /health answers and /ready says 503 while the model loads.
    let http = match api::http::serve(listeners.http, shared.clone()) {
        Ok(server) => server,
        Err(e) => {
            tracing::error!("cannot start the HTTP server: {e}");
            return EXIT_FAILURE;
        }
    };
    let (health, health_service) = api::grpc::health();
    let (grpc_stop, grpc_stop_rx) = oneshot::channel();
    let (grpc_done_tx, grpc_done) = oneshot::channel();
    let (exit_tx, exit_rx) = oneshot::channel();
    let grpc_arbiter = Arbiter::new();
    let supervisor = Supervisor::new(
        config.clone(),
        spec,
        tokenizer,
        lifecycle.clone(),
        table,
        recorder,
        FrontEnds {
            http: http.handle(),
            grpc_stop,
            grpc_done,
            grpc_arbiter: grpc_arbiter.handle(),
            health,
        },
        router_cell,
        exit_tx,
    )
    .start();

    // A front end that ends while the server is not stopping is a failure: stop everything.
    let sup = supervisor.clone();
    let life = lifecycle.clone();
    actix_rt::spawn(async move {
        let result = http.await;
        if !life.is_stopping() {
            sup.do_send(Shutdown(StopReason::Fatal(format!(
                "the HTTP server ended unexpectedly: {result:?}"
            ))));
        }
    });
    let sup = supervisor.clone();
    let grpc_listener = listeners.grpc;
    grpc_arbiter.spawn(async move {
        let result = api::grpc::serve(grpc_listener, shared, health_service, grpc_stop_rx).await;
        if let Err(e) = result {
            sup.do_send(Shutdown(StopReason::Fatal(e)));
        } else if !lifecycle.is_stopping() {
            sup.do_send(Shutdown(StopReason::Fatal(
                "the gRPC server ended unexpectedly".into(),
            )));
        }
        let _ = grpc_done_tx.send(());
    });

    supervisor.do_send(Boot);
    let code = exit_rx.await.unwrap_or(EXIT_FAILURE);
    grpc_arbiter.stop();
    code
}
