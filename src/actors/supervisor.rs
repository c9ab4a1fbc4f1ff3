//! Supervisor: starts every other actor, owns SIGTERM and SIGINT, and runs the stop sequence.
//!
//! Owns: the handles to the Metrics actor, the ModelWorkers, the Tokenizer pool, the Router,
//! and the two front ends' stop handles. Sent to by: the signal thread and the front ends
//! ([`Shutdown`]), the pools ([`ChildPanicked`]), `lib::run` ([`Boot`]).
//!
//! The stop sequence spends one budget (`shutdown.timeout_seconds`) stage by stage, each stage
//! getting what the one before left: readiness off and new work refused at once → drain
//! in-flight requests → stop the HTTP and gRPC servers → Router → Tokenizers → ModelWorkers
//! (reverse start order). If the budget runs out, the process aborts with [`EXIT_ABORT`]
//! after naming the actors that did not stop; a watchdog thread guarantees that even if the
//! actix runtime is wedged (a worker stuck inside libtorch cannot be cancelled). A second
//! signal aborts at once with [`EXIT_FORCED`].

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use actix::prelude::*;
use tokio::sync::oneshot;

use super::{
    ActorTable, Lifecycle,
    metrics::Recorder,
    model_worker::{Load, ModelWorker, Release},
    router::{self, Router},
    tokenizer::TokenizerActor,
};
use crate::{config::Config, model::ModelSpec, model::TextTokenizer};

/// Clean stop.
pub const EXIT_OK: i32 = 0;
/// Start-up or run-time failure (bind, model load, a front end died); the stop sequence ran.
pub const EXIT_FAILURE: i32 = 1;
/// The configuration was refused; nothing was started.
pub const EXIT_CONFIG: i32 = 2;
/// The shutdown budget ran out; the process was aborted.
pub const EXIT_ABORT: i32 = 3;
/// A second signal arrived during the stop; the process was aborted at once.
pub const EXIT_FORCED: i32 = 4;

/// Why the server stops.
#[derive(Debug, Clone)]
pub enum StopReason {
    /// SIGTERM or SIGINT (named).
    Signal(&'static str),
    /// Something failed; the message says what. Exits [`EXIT_FAILURE`].
    Fatal(String),
}

/// Begin the stop sequence (idempotent: later requests are ignored).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown(pub StopReason);

/// A child caught a panic and is being restarted.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ChildPanicked {
    /// Which actor (`model-worker-0`, `tokenizer-1`).
    pub actor: String,
    /// The panic's message.
    pub message: String,
}

/// Load the model into every worker, warm up, start the Router and report ready.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Boot;

/// How the front ends are stopped; the Supervisor calls these in the stop sequence.
pub struct FrontEnds {
    /// actix-web's handle; `stop(true)` finishes in-flight requests.
    pub http: actix_web::dev::ServerHandle,
    /// Firing it makes tonic stop accepting and finish in-flight calls.
    pub grpc_stop: oneshot::Sender<()>,
    /// Resolves when the gRPC server has ended.
    pub grpc_done: oneshot::Receiver<()>,
    /// The gRPC server's arbiter; stopping it closes connections that outlive the grace.
    pub grpc_arbiter: actix_rt::ArbiterHandle,
    /// Sets gRPC health (`grpc.health.v1`) as readiness changes.
    pub health: crate::api::grpc::Health,
}

/// The Supervisor actor.
pub struct Supervisor {
    config: Arc<Config>,
    spec: Arc<ModelSpec>,
    tokenizer: TextTokenizer,
    lifecycle: Arc<Lifecycle>,
    table: Arc<ActorTable>,
    metrics: Recorder,
    front: Option<FrontEnds>,
    tokenizers: Option<Addr<TokenizerActor>>,
    workers: Vec<Addr<ModelWorker>>,
    router: Option<Addr<Router>>,
    /// Where the front ends find the Router once it runs.
    router_cell: Arc<OnceLock<Addr<Router>>>,
    /// Where the exit code goes when the stop sequence ends (`lib::run` waits on it).
    exit: Option<oneshot::Sender<i32>>,
    stopping: bool,
    restarts: Vec<Instant>,
}

impl Supervisor {
    /// A Supervisor for `config`; nothing starts until [`Boot`].
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Arc<Config>,
        spec: Arc<ModelSpec>,
        tokenizer: TextTokenizer,
        lifecycle: Arc<Lifecycle>,
        table: Arc<ActorTable>,
        metrics: Recorder,
        front: FrontEnds,
        router_cell: Arc<OnceLock<Addr<Router>>>,
        exit: oneshot::Sender<i32>,
    ) -> Supervisor {
        Supervisor {
            config,
            spec,
            tokenizer,
            lifecycle,
            table,
            metrics,
            front: Some(front),
            tokenizers: None,
            workers: Vec::new(),
            router: None,
            router_cell,
            exit: Some(exit),
            stopping: false,
            restarts: Vec::new(),
        }
    }

    fn budget(&self) -> Duration {
        Duration::from_secs_f64(self.config.shutdown.timeout_seconds)
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        spawn_signal_thread(ctx.address(), self.table.clone());
    }
}

impl Handler<Boot> for Supervisor {
    type Result = ();

    fn handle(&mut self, _msg: Boot, ctx: &mut Self::Context) {
        let me = ctx.address().recipient::<ChildPanicked>();
        let threads = self.config.intra_op_threads();
        let instances = self.config.model.instances;
        tracing::info!(
            model = %self.spec.name,
            device = %crate::model::device_name(self.spec.device),
            dtype = self.spec.dtype.as_str(),
            instances,
            intra_op_threads = threads,
            "starting model workers"
        );
        self.workers = (0..instances)
            .map(|id| {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                let pin = self.config.model.pin_cores.then(|| {
                    (id * threads..(id + 1) * threads)
                        .map(|c| c % cores)
                        .collect()
                });
                ModelWorker::start(
                    id,
                    self.spec.clone(),
                    threads,
                    pin,
                    self.table.clone(),
                    self.metrics.clone(),
                    me.clone(),
                )
            })
            .collect();
        let loads = futures::future::join_all(self.workers.iter().map(|w| w.send(Load)));
        ctx.spawn(
            actix::fut::wrap_future(loads).map(|results, act: &mut Supervisor, ctx| {
                for (id, r) in results.into_iter().enumerate() {
                    match r {
                        Ok(Ok(report)) => tracing::info!(
                            worker = id,
                            load_ms = report.load.as_millis() as u64,
                            warmup_ms = report.warmup.as_millis() as u64,
                            "model worker ready"
                        ),
                        Ok(Err(e)) => {
                            ctx.notify(Shutdown(StopReason::Fatal(format!(
                                "model worker {id} could not load the model: {e}"
                            ))));
                            return;
                        }
                        Err(e) => {
                            ctx.notify(Shutdown(StopReason::Fatal(format!(
                                "model worker {id} died while loading: {e}"
                            ))));
                            return;
                        }
                    }
                }
                if act.stopping {
                    return;
                }
                let me = ctx.address().recipient::<ChildPanicked>();
                let tokenizers = TokenizerActor::start_pool(
                    act.config.tokenizer.workers,
                    act.tokenizer.clone(),
                    act.table.clone(),
                    me,
                );
                let router = Router::new(
                    tokenizers.clone(),
                    act.workers.clone(),
                    act.config.batching.clone(),
                    act.spec.clone(),
                    act.lifecycle.clone(),
                    act.metrics.clone(),
                    act.table.clone(),
                )
                .start();
                act.tokenizers = Some(tokenizers);
                act.router = Some(router.clone());
                let _ = act.router_cell.set(router);
                act.lifecycle.set_ready();
                act.metrics.ready(true);
                if let Some(front) = &act.front {
                    let health = front.health.clone();
                    actix_rt::spawn(async move { health.set(true).await });
                }
                tracing::info!(experiment = %act.config.experiment.name, "ready");
            }),
        );
    }
}

impl Handler<ChildPanicked> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: ChildPanicked, ctx: &mut Self::Context) {
        let kind = if msg.actor.starts_with("tokenizer") {
            "tokenizer"
        } else {
            "model_worker"
        };
        self.metrics.restart(kind);
        let now = Instant::now();
        let window = Duration::from_secs_f64(self.config.supervision.window_seconds);
        self.restarts.retain(|t| now.duration_since(*t) <= window);
        self.restarts.push(now);
        let max = self.config.supervision.max_restarts;
        tracing::warn!(
            actor = %msg.actor,
            panic = %msg.message,
            restarts_in_window = self.restarts.len(),
            max_restarts = max,
            "actor restarted after a panic"
        );
        if self.restarts.len() > max {
            ctx.notify(Shutdown(StopReason::Fatal(format!(
                "{} restarts in {:.0} s exceed supervision.max_restarts = {max} \
                 (last: {} panicked: {}); stopping instead of flapping",
                self.restarts.len(),
                window.as_secs_f64(),
                msg.actor,
                msg.message
            ))));
        }
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ();

    fn handle(&mut self, Shutdown(reason): Shutdown, ctx: &mut Self::Context) {
        if self.stopping {
            tracing::debug!(?reason, "stop already under way");
            return;
        }
        self.stopping = true;
        self.lifecycle.begin_stop();
        self.metrics.ready(false);
        let budget = self.budget();
        let deadline = Instant::now() + budget;
        let code = match &reason {
            StopReason::Signal(name) => {
                tracing::info!(
                    signal = name,
                    budget_s = budget.as_secs_f64(),
                    "stop requested"
                );
                EXIT_OK
            }
            StopReason::Fatal(message) => {
                tracing::error!(budget_s = budget.as_secs_f64(), "{message}; stopping");
                EXIT_FAILURE
            }
        };
        spawn_watchdog(deadline, self.table.clone());
        let plan = StopPlan {
            lifecycle: self.lifecycle.clone(),
            table: self.table.clone(),
            front: self.front.take(),
            router: self.router.take(),
            tokenizers: self.tokenizers.take(),
            workers: std::mem::take(&mut self.workers),
            deadline,
        };
        let exit = self.exit.take();
        ctx.spawn(actix::fut::wrap_future(plan.run()).map(
            move |(), _act: &mut Supervisor, _ctx| {
                if code == EXIT_OK {
                    tracing::info!("Shutdown complete");
                } else {
                    tracing::error!(exit_code = code, "Shutdown complete after a failure");
                }
                if let Some(exit) = exit {
                    let _ = exit.send(code);
                }
            },
        ));
    }
}

/// Everything the stop sequence needs, moved out of the Supervisor.
struct StopPlan {
    lifecycle: Arc<Lifecycle>,
    table: Arc<ActorTable>,
    front: Option<FrontEnds>,
    router: Option<Addr<Router>>,
    tokenizers: Option<Addr<TokenizerActor>>,
    workers: Vec<Addr<ModelWorker>>,
    deadline: Instant,
}

/// How long the gRPC server may wait for clients to close idle connections.
const FRONT_END_GRACE: Duration = Duration::from_millis(500);

/// How often a waiting stage logs who is still running.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

impl StopPlan {
    async fn run(mut self) {
        if let Some(front) = &self.front {
            front.health.set(false).await;
        }
        // 1. Drain: requests already accepted finish; new ones are refused (Lifecycle).
        self.stage("drain in-flight requests", |p| p.lifecycle.in_flight() == 0)
            .await;

        // 2. Front ends: stop listening, close connections.
        if let Some(front) = self.front.take() {
            let start = Instant::now();
            tracing::info!(stage = "front ends", "stage start");
            let _ = front.grpc_stop.send(());
            // Requests are drained; what is left are idle keep-alive connections. actix-web
            // closes its own; tonic waits for clients to hang up, so after a short grace the
            // gRPC arbiter is stopped, which drops its connections.
            let grace = (Instant::now() + FRONT_END_GRACE).min(self.deadline);
            let mut grpc_done = front.grpc_done;
            let grpc_ended = tokio::time::timeout_at(grace.into(), &mut grpc_done)
                .await
                .is_ok();
            if !grpc_ended {
                tracing::info!("closing idle gRPC connections");
                front.grpc_arbiter.stop();
            }
            let both = async {
                front.http.stop(true).await;
                if !grpc_ended {
                    let _ = grpc_done.await;
                }
            };
            if tokio::time::timeout_at(self.deadline.into(), both)
                .await
                .is_err()
            {
                abort_now(EXIT_ABORT, "front ends did not stop", &self.table);
            }
            tracing::info!(
                stage = "front ends",
                elapsed_ms = start.elapsed().as_millis() as u64,
                "stage end"
            );
        }

        // 3. Router: fails anything still queued and drops its handles to the pools.
        if let Some(router) = self.router.take() {
            let start = Instant::now();
            tracing::info!(stage = "router", "stage start");
            let _ = tokio::time::timeout_at(self.deadline.into(), router.send(router::Stop)).await;
            drop(router);
            self.stage_wait("router", start, |p| {
                p.table.running_with_prefix("router") == 0
            })
            .await;
        }

        // 4. Tokenizers: the pool's threads end when the last handle is dropped.
        let start = Instant::now();
        tracing::info!(stage = "tokenizers", "stage start");
        drop(self.tokenizers.take());
        self.stage_wait("tokenizers", start, |p| {
            p.table.running_with_prefix("tokenizer-") == 0
        })
        .await;

        // 5. Model workers: each drops its weights (device memory) and acknowledges.
        let start = Instant::now();
        tracing::info!(stage = "model workers", "stage start");
        let workers = std::mem::take(&mut self.workers);
        let releases = futures::future::join_all(workers.iter().map(|w| w.send(Release)));
        let _ = tokio::time::timeout_at(self.deadline.into(), releases).await;
        drop(workers);
        self.stage_wait("model workers", start, |p| {
            p.table.running_with_prefix("model-worker-") == 0
        })
        .await;
    }

    async fn stage(&self, name: &'static str, done: impl Fn(&Self) -> bool) {
        let start = Instant::now();
        tracing::info!(
            stage = name,
            in_flight = self.lifecycle.in_flight(),
            "stage start"
        );
        self.stage_wait(name, start, done).await;
    }

    /// Polls `done` until true, logging who is still running every [`PROGRESS_EVERY`];
    /// aborts the process when the budget is spent.
    async fn stage_wait(&self, name: &'static str, start: Instant, done: impl Fn(&Self) -> bool) {
        let mut next_log = Instant::now() + PROGRESS_EVERY;
        while !done(self) {
            if Instant::now() >= self.deadline {
                abort_now(
                    EXIT_ABORT,
                    &format!("stage `{name}` did not finish"),
                    &self.table,
                );
            }
            if Instant::now() >= next_log {
                tracing::info!(
                    stage = name,
                    in_flight = self.lifecycle.in_flight(),
                    running = ?self.table.running(),
                    "still stopping"
                );
                next_log += PROGRESS_EVERY;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::info!(
            stage = name,
            elapsed_ms = start.elapsed().as_millis() as u64,
            "stage end"
        );
    }
}

/// Logs which actors are still running and ends the process with `code`, without running
/// destructors or waiting for any thread (one may be stuck inside libtorch).
pub fn abort_now(code: i32, why: &str, table: &ActorTable) -> ! {
    let running = table.running();
    let line = format!(
        "hard abort (exit {code}): {why}; still running: {}",
        if running.is_empty() {
            "none".to_string()
        } else {
            running.join(", ")
        }
    );
    tracing::error!("{line}");
    // Also straight to stderr: the logging pipeline may be what is stuck.
    eprintln!("actor-infer: {line}");
    // SAFETY: _exit ends the process at once; nothing after it runs.
    unsafe { libc::_exit(code) }
}

/// Watchdog: a plain thread, independent of the actix runtime, that aborts the process if it
/// is still alive a moment after the stop budget's deadline.
fn spawn_watchdog(deadline: Instant, table: Arc<ActorTable>) {
    std::thread::Builder::new()
        .name("stop-watchdog".into())
        .spawn(move || {
            std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
            // Give the sequence's own abort (same deadline) a moment to speak first.
            std::thread::sleep(Duration::from_millis(200));
            abort_now(EXIT_ABORT, "the shutdown budget ran out", &table);
        })
        .expect("spawning the watchdog thread");
}

/// The only owner of SIGTERM and SIGINT: a plain thread, so a second signal aborts even if
/// the actix runtime is stuck.
fn spawn_signal_thread(supervisor: Addr<Supervisor>, table: Arc<ActorTable>) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .expect("installing SIGTERM/SIGINT handlers");
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = 0;
            for sig in signals.forever() {
                let name = if sig == SIGTERM { "SIGTERM" } else { "SIGINT" };
                seen += 1;
                if seen == 1 {
                    supervisor.do_send(Shutdown(StopReason::Signal(name)));
                } else {
                    abort_now(
                        EXIT_FORCED,
                        &format!("second signal ({name}) during the stop"),
                        &table,
                    );
                }
            }
        })
        .expect("spawning the signal thread");
}
