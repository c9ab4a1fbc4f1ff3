//! actor-infer: an inference server for text models, written as an actor system.
//!
//! One process. A Supervisor starts a Metrics actor and, for each model served, a pool of
//! ModelWorkers (libtorch through tch), a pool of Tokenizers (Hugging Face `tokenizers`) and a
//! Router; the HTTP (actix-web) and gRPC (tonic) front ends send typed requests to the Router
//! of the model a request names (or its route's default). Stopping cascades down the
//! tree within one budget and escalates to a hard abort, so nothing outlives the process: no
//! worker processes exist to be orphaned, and ports and device memory go with the process.
//!
//! Layers, each importing only those below it (`tests/layers.rs` checks it): [`config`],
//! [`hub`] (models named by their Hugging Face id) and [`fault`] at the bottom, then
//! [`model`], [`actors`], [`api`] (the front ends), [`tools`] (the `bench` and `doctor`
//! clients and the command line), and this crate root, which wires them: [`serve`] is the
//! server's command, [`run`] the server itself. `main.rs` only parses and dispatches.

#![warn(missing_docs)]

pub mod actors;
pub mod api;
pub mod config;
pub mod fault;
pub mod hub;
pub mod model;
pub mod telemetry;
pub mod tools;

use std::{
    net::{SocketAddr, TcpListener},
    sync::Arc,
};

use actix::prelude::*;
use tokio::sync::{oneshot, watch};

use actors::{
    ActorTable, Admission, Lifecycle,
    metrics::{Facts, Metrics, Recorder},
    models::Directory,
    supervisor::{
        Boot, EXIT_CONFIG, EXIT_FAILURE, FrontEnds, Parts, Shutdown, StopReason, Supervisor,
    },
};
use config::Config;

/// The two bound sockets. Bound before anything else starts, so a port in use fails the start
/// at once with a message naming it.
pub struct Listeners {
    /// HTTP.
    pub http: TcpListener,
    /// gRPC.
    pub grpc: TcpListener,
}

/// A port that could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Someone else listens there.
    #[error(
        "the {what} port {port} on {host} is already in use (is another server running? \
         `actor-infer doctor` shows who holds it); pick another with --{flag}-port"
    )]
    InUse {
        /// `HTTP` or `gRPC`.
        what: &'static str,
        /// The port.
        port: u32,
        /// The address.
        host: String,
        /// `http` or `grpc`.
        flag: &'static str,
    },
    /// Any other failure to listen.
    #[error("cannot listen for {what} on {addr}: {source}")]
    Other {
        /// `HTTP` or `gRPC`.
        what: &'static str,
        /// `host:port`.
        addr: String,
        /// What the OS said.
        source: std::io::Error,
    },
}

impl Listeners {
    /// Binds `server.host` on the HTTP and gRPC ports (0 picks a free port).
    pub fn bind(server: &config::Server) -> Result<Listeners, BindError> {
        let bind = |what: &'static str, flag: &'static str, port: u32| {
            let addr = format!("{}:{port}", server.host);
            let listener = TcpListener::bind(&addr).map_err(|source| {
                if source.kind() == std::io::ErrorKind::AddrInUse {
                    BindError::InUse {
                        what,
                        port,
                        host: server.host.clone(),
                        flag,
                    }
                } else {
                    BindError::Other {
                        what,
                        addr: addr.clone(),
                        source,
                    }
                }
            })?;
            listener
                .set_nonblocking(true)
                .map_err(|source| BindError::Other { what, addr, source })?;
            Ok(listener)
        };
        Ok(Listeners {
            http: bind("HTTP", "http", server.http_port)?,
            grpc: bind("gRPC", "grpc", server.grpc_port)?,
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

    /// Writes the bound ports to `path` as JSON (`host`, `http_port`, `grpc_port`): first to a
    /// file beside it, then renamed over it, so a reader never sees half of it.
    pub fn write_port_file(&self, path: &std::path::Path) -> std::io::Result<()> {
        let (http, grpc) = (self.http_addr()?, self.grpc_addr()?);
        let body = serde_json::json!({
            "host": http.ip().to_string(),
            "http_port": http.port(),
            "grpc_port": grpc.port(),
        });
        let mut partial = path.as_os_str().to_owned();
        partial.push(format!(".{}.partial", std::process::id()));
        std::fs::write(&partial, format!("{body}\n"))?;
        std::fs::rename(&partial, path).inspect_err(|_| {
            let _ = std::fs::remove_file(&partial);
        })
    }
}

/// Says once, at start, which device serves and why, which libraries were loaded from where,
/// and the GPU's name and memory.
fn log_device(choice: &model::device::Choice) {
    let Some(probe) = model::device::Probe::get() else {
        return;
    };
    tracing::info!(
        device = %model::device_name(choice.device),
        reason = %choice.reason,
        gpu = probe.gpu_line(choice.device).as_deref().unwrap_or("none"),
        libraries = %probe.libraries(),
        "device selected"
    );
    if let Some(w) = &choice.warning {
        tracing::warn!("{w}");
    }
    match choice.bf16 {
        Some(b) if b.native() => {
            tracing::info!(bf16 = %b, "dtype: bf16 on the CPU, computed natively")
        }
        Some(b) => tracing::warn!(
            bf16 = %b,
            "dtype: bf16 on a CPU without bf16 instructions: libtorch emulates it, which is slower \
             than f32; use dtype: f32 here"
        ),
        None => {}
    }
}

/// `actor-infer --experiment exp.yaml`: loads and checks the configuration (exit 2 if it is
/// refused), settles the device (exit 2 if it cannot be used) before binding the ports (exit 1
/// if one is taken), writes them to `port_file` if given (exit 1 if it cannot), then runs the
/// server in an actix System and returns its exit code.
pub fn serve(
    experiment: &std::path::Path,
    overrides: &config::Overrides,
    check: bool,
    port_file: Option<&std::path::Path>,
) -> i32 {
    // A model named by its Hugging Face id may be downloaded here (README "A model by its
    // Hugging Face id"); logging starts later, so its progress goes to stderr.
    let say: hub::Say = Arc::new(|line: &str| eprintln!("actor-infer: hub: {line}"));
    let config = match Config::load_at_start(experiment, overrides, say) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("actor-infer: configuration error: {e}");
            return EXIT_CONFIG;
        }
    };
    if check {
        println!(
            "{}",
            serde_json::to_string_pretty(&config).expect("the configuration serialises")
        );
        return 0;
    }
    // Logs, and OpenTelemetry's exporter when `telemetry.otlp_endpoint` is set; the exporter
    // is shut down (its last spans flushed, bounded) after the server has stopped.
    let telemetry = match telemetry::init(&config) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("configuration error: {e}");
            eprintln!("actor-infer: configuration error: {e}");
            return EXIT_CONFIG;
        }
    };
    for m in &config.models {
        if let Some(h) = &m.hub {
            tracing::info!(
                model = %m.served_name(),
                id = %h.id,
                revision = %h.revision,
                commit = %h.commit,
                folder = %m.path.display(),
                "model from the Hugging Face cache"
            );
        }
    }
    // One probe for all the models: the CUDA half loads if any of them may use it.
    model::device::Probe::run(model::device::CudaWanted::of_all(
        config.models.iter().map(|m| m.device),
    ));
    let mut devices = Vec::new();
    for m in &config.models {
        match model::device::select(m) {
            Ok(choice) => {
                log_device(&choice);
                devices.push(choice.device);
            }
            Err(e) => {
                tracing::error!("configuration error: {e}");
                eprintln!("actor-infer: configuration error: {e}");
                return EXIT_CONFIG;
            }
        }
    }
    let listeners = match Listeners::bind(&config.server) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("actor-infer: {e}");
            return EXIT_FAILURE;
        }
    };
    tracing::info!(
        experiment = %config.experiment.name,
        http = %listeners.http_addr().map(|a| a.to_string()).unwrap_or_default(),
        grpc = %listeners.grpc_addr().map(|a| a.to_string()).unwrap_or_default(),
        "listening"
    );
    if let Some(path) = port_file
        && let Err(e) = listeners.write_port_file(path)
    {
        tracing::error!("cannot write the port file {}: {e}", path.display());
        eprintln!(
            "actor-infer: cannot write the port file {}: {e}",
            path.display()
        );
        return EXIT_FAILURE;
    }
    // Every actor's panic is caught where it happens (the Supervisor's table in README
    // "Stopping"); one that escapes anyway ends the System, and the process then exits, and
    // with it every thread, socket and byte of device memory: there is no child process.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        actix_rt::System::new().block_on(async move {
            let source = actors::supervisor::Source {
                path: experiment.to_path_buf(),
                overrides: overrides.clone(),
            };
            let code = run(config, devices, listeners, source).await;
            end_process(code, telemetry)
        })
    }))
    .unwrap_or_else(|_| {
        eprintln!("actor-infer: internal error (a panic, logged above); exiting");
        EXIT_FAILURE
    })
}

/// Ends the process once the stop sequence has said "Shutdown complete": every actor has
/// stopped, both ports are closed and the model's memory is freed. OpenTelemetry's exporter,
/// when there is one, sends its last spans first (bounded by its flush timeout), on a thread of
/// its own since it owns a runtime; then [`exit`].
fn end_process(code: i32, telemetry: Option<telemetry::Exporter>) -> ! {
    if let Some(exporter) = telemetry {
        let _ = std::thread::spawn(move || exporter.shutdown()).join();
    }
    exit(code)
}

/// How the binary ends, whatever the path: [`actors::supervisor::exit`] (flush, then `_exit`,
/// skipping the C++ static destructors that hang with libtorch's CUDA half loaded).
pub use actors::supervisor::exit;

/// Runs the server, model `i` on `devices[i]` (resolved by `model::device::select`), until it
/// stops; returns the process exit code (`actors::supervisor::EXIT_*`). `source` is where a
/// reload reads the experiment again. Must run inside an actix `System`.
pub async fn run(
    config: Config,
    devices: Vec<tch::Device>,
    listeners: Listeners,
    source: actors::supervisor::Source,
) -> i32 {
    let config = Arc::new(config);
    if fault::enabled() {
        tracing::warn!("fault injection is ON ({}=1): for tests only", fault::ENV);
    }
    let registry = prometheus::Registry::new();
    let outcomes: Vec<&'static str> = std::iter::once("ok")
        .chain(api::error::ErrorKind::ALL.iter().map(|k| k.as_str()))
        .collect();
    let recorder = Recorder::new(&registry, &outcomes).expect("metric names are unique and valid");
    let lifecycle = Arc::new(Lifecycle::default());
    let table = Arc::new(ActorTable::default());
    let admission = Admission::new(
        config.server.max_concurrent_requests,
        recorder.admitted.clone(),
        recorder.in_flight.clone(),
    );
    let directory = Arc::new(Directory::default());
    let (exit_tx, exit_rx) = oneshot::channel();

    // The Metrics actor on a thread of its own; it reports its panics to the Supervisor.
    let metrics_arbiter = Arbiter::new();
    let mut metrics_addr = None;
    let supervisor = Supervisor::create(|ctx| {
        let metrics = Metrics::new(
            registry,
            recorder.clone(),
            Facts {
                experiment: config.experiment.name.clone(),
                model: config
                    .models
                    .iter()
                    .map(config::Model::served_name)
                    .collect::<Vec<_>>()
                    .join(", "),
                device: devices
                    .iter()
                    .map(|d| model::device_name(*d))
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect::<Vec<_>>()
                    .join(", "),
                window: std::time::Duration::from_secs_f64(config.metrics.window_seconds),
                models: directory.clone(),
            },
            lifecycle.clone(),
            admission.clone(),
            table.clone(),
            ctx.address().recipient(),
        )
        .expect("the process collector registers once");
        let metrics = Metrics::start_in_arbiter(&metrics_arbiter.handle(), move |_| metrics);
        metrics_addr = Some(metrics.clone());
        Supervisor::new(Parts {
            config: config.clone(),
            source,
            devices: devices.clone(),
            lifecycle: lifecycle.clone(),
            table: table.clone(),
            admission: admission.clone(),
            recorder: recorder.clone(),
            metrics,
            directory: directory.clone(),
            exit: exit_tx,
        })
    });
    let shared = Arc::new(api::Shared {
        config: config.clone(),
        directory,
        lifecycle: lifecycle.clone(),
        metrics: metrics_addr.expect("set by Supervisor::create"),
        admission,
        recorder,
        supervisor: supervisor.clone(),
    });

    // Front ends first, so /health answers and /ready says 503 while the model loads.
    let (readiness, ready_rx) = watch::channel(false);
    let servers = match api::Servers::start(
        listeners.http,
        listeners.grpc,
        shared,
        ready_rx,
        supervisor.clone(),
    ) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot start the front ends: {e}");
            supervisor.do_send(Shutdown(StopReason::Fatal(format!(
                "cannot start the front ends: {e}"
            ))));
            let code = exit_rx.await.unwrap_or(EXIT_FAILURE);
            metrics_arbiter.stop();
            return code;
        }
    };
    let grpc_arbiter = servers.grpc_arbiter();
    supervisor.do_send(Boot(FrontEnds {
        stop: Box::new(move |deadline| Box::pin(servers.stop(deadline))),
        readiness,
    }));
    let code = exit_rx.await.unwrap_or(EXIT_FAILURE);
    grpc_arbiter.stop();
    metrics_arbiter.stop();
    code
}
