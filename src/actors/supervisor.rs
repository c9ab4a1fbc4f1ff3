//! Supervisor: starts every other actor, owns SIGTERM and SIGINT, and runs the stop sequence.
//!
//! Owns: the handles to the Metrics actor, the ModelWorkers, the Tokenizer pool, the Router,
//! and the front ends' stop handle and readiness switch (given by `lib::run`: this layer does
//! not know the front ends). Sent to by: the signal thread and the front ends ([`Shutdown`]),
//! the pools and Metrics ([`ChildPanicked`]), the Router ([`InjectFault`], tests only),
//! `lib::run` ([`Boot`]).
//!
//! The stop sequence spends one budget (`shutdown.timeout_seconds`) stage by stage, each stage
//! getting what the one before left: readiness off and new work refused at once → drain
//! in-flight requests → stop the front ends → Router → Tokenizers → ModelWorkers (reverse start
//! order). If the budget runs out, the process aborts with [`EXIT_ABORT`] after naming the
//! actors that did not stop; a watchdog thread guarantees that even if the actix runtime is
//! wedged (a worker stuck inside libtorch cannot be cancelled). A second signal aborts at once
//! with [`EXIT_FORCED`].
//!
//! Supervision (README "Stopping"): tokenizers, model workers and Metrics are restarted after a
//! panic, counted against `supervision.max_restarts` per `window_seconds` (past it: a clean
//! stop, exit 1); a panic in the Router or in the Supervisor's own handlers is a clean stop
//! with exit 1; a panic inside the stop sequence itself aborts at once with exit 1.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use actix::prelude::*;
use futures::FutureExt as _;
use tokio::sync::{oneshot, watch};

use super::{
    ActorId, ActorKind, ActorTable, Admission, Lifecycle,
    metrics::{Metrics, Recorder},
    model_worker::{Load, ModelWorker, Release},
    router::{self, Router},
    tokenizer::TokenizerActor,
};
use crate::{config::Config, fault::Fault, model::ModelSpec, model::TextTokenizer};

/// Clean stop.
pub const EXIT_OK: i32 = 0;
/// Start-up or run-time failure (bind, model load, a front end died, a panic); the stop
/// sequence ran.
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
    /// Which actor.
    pub actor: ActorId,
    /// The panic's message.
    pub message: String,
}

/// A fault a test asked for that the Supervisor acts on (its own panic, or Metrics').
#[derive(Message)]
#[rtype(result = "()")]
pub struct InjectFault(pub Fault);

/// Stops the front ends: they stop accepting, finish what they hold and close their
/// connections. Resolves to false if they could not stop by the deadline.
pub type StopFrontEnds =
    Box<dyn FnOnce(Instant) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send>;

/// What the Supervisor needs of the front ends, given at [`Boot`].
pub struct FrontEnds {
    /// Their stop.
    pub stop: StopFrontEnds,
    /// Readiness as the front ends announce it (gRPC health): true once ready, false from the
    /// first stop signal.
    pub readiness: watch::Sender<bool>,
}

/// Load the model into every worker, warm up, start the Router and report ready.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Boot(pub FrontEnds);

/// The Supervisor actor.
pub struct Supervisor {
    config: Arc<Config>,
    spec: Arc<ModelSpec>,
    tokenizer: TextTokenizer,
    lifecycle: Arc<Lifecycle>,
    table: Arc<ActorTable>,
    admission: Arc<Admission>,
    recorder: Recorder,
    metrics: Addr<Metrics>,
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

/// What [`Supervisor::new`] takes.
pub struct Parts {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// The model's facts.
    pub spec: Arc<ModelSpec>,
    /// The tokenizer each tokenizer thread clones.
    pub tokenizer: TextTokenizer,
    /// Readiness and the stop flag.
    pub lifecycle: Arc<Lifecycle>,
    /// Every actor's state.
    pub table: Arc<ActorTable>,
    /// Work in flight.
    pub admission: Arc<Admission>,
    /// Metric handles.
    pub recorder: Recorder,
    /// The Metrics actor.
    pub metrics: Addr<Metrics>,
    /// Where the Router's address goes once it runs.
    pub router_cell: Arc<OnceLock<Addr<Router>>>,
    /// Where the exit code goes.
    pub exit: oneshot::Sender<i32>,
}

impl Supervisor {
    /// A Supervisor; nothing starts until [`Boot`].
    pub fn new(p: Parts) -> Supervisor {
        Supervisor {
            config: p.config,
            spec: p.spec,
            tokenizer: p.tokenizer,
            lifecycle: p.lifecycle,
            table: p.table,
            admission: p.admission,
            recorder: p.recorder,
            metrics: p.metrics,
            front: None,
            tokenizers: None,
            workers: Vec::new(),
            router: None,
            router_cell: p.router_cell,
            exit: Some(p.exit),
            stopping: false,
            restarts: Vec::new(),
        }
    }

    fn budget(&self) -> Duration {
        Duration::from_secs_f64(self.config.shutdown.timeout_seconds)
    }

    /// Runs one of the Supervisor's handlers; a panic in it is a bug: a clean stop with exit 1
    /// (or, during the stop, an abort with exit 1).
    fn guarded(
        &mut self,
        what: &str,
        ctx: &mut Context<Self>,
        step: impl FnOnce(&mut Self, &mut Context<Self>),
    ) {
        if let Err(message) = super::catch(|| step(self, ctx)) {
            tracing::error!(actor = "supervisor", %message, "the supervisor panicked while {what}");
            self.recorder.restart(ActorKind::Supervisor);
            if self.stopping {
                abort_now(
                    EXIT_FAILURE,
                    &format!("the supervisor panicked during the stop ({message})"),
                    &self.table,
                );
            }
            self.stop(
                StopReason::Fatal(format!("the supervisor panicked ({message})")),
                ctx,
            );
        }
    }

    fn boot(&mut self, front: FrontEnds, ctx: &mut Context<Self>) {
        self.front = Some(front);
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
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.workers = (0..instances)
            .map(|index| {
                let pin = self.config.model.pin_cores.then(|| {
                    (index * threads..(index + 1) * threads)
                        .map(|c| c % cores)
                        .collect()
                });
                ModelWorker::start(
                    index,
                    self.spec.clone(),
                    threads,
                    pin,
                    self.table.clone(),
                    self.recorder.clone(),
                    me.clone(),
                )
            })
            .collect();
        let loads = futures::future::join_all(self.workers.iter().map(|w| w.send(Load)));
        ctx.spawn(
            actix::fut::wrap_future(loads).map(|results, act: &mut Supervisor, ctx| {
                act.guarded("starting the router", ctx, |act, ctx| {
                    act.loaded(results, ctx)
                });
            }),
        );
    }

    fn loaded(
        &mut self,
        results: Vec<
            Result<Result<super::model_worker::LoadReport, crate::model::ModelError>, MailboxError>,
        >,
        ctx: &mut Context<Self>,
    ) {
        for (index, r) in results.into_iter().enumerate() {
            match r {
                Ok(Ok(report)) => tracing::info!(
                    worker = index,
                    load_ms = report.load.as_millis() as u64,
                    warmup_ms = report.warmup.as_millis() as u64,
                    "model worker ready"
                ),
                Ok(Err(e)) => {
                    return self.stop(
                        StopReason::Fatal(format!(
                            "model worker {index} could not load the model: {e}"
                        )),
                        ctx,
                    );
                }
                Err(e) => {
                    return self.stop(
                        StopReason::Fatal(format!("model worker {index} died while loading: {e}")),
                        ctx,
                    );
                }
            }
        }
        if self.stopping {
            return;
        }
        let me = ctx.address().recipient::<ChildPanicked>();
        let tokenizers = TokenizerActor::start_pool(
            self.config.tokenizer.workers,
            self.tokenizer.clone(),
            self.table.clone(),
            me,
        );
        let router = Router::new(
            tokenizers.clone(),
            self.workers.clone(),
            self.config.batching.clone(),
            self.spec.clone(),
            self.lifecycle.clone(),
            self.admission.clone(),
            self.recorder.clone(),
            self.table.clone(),
            ctx.address(),
        )
        .start();
        self.tokenizers = Some(tokenizers);
        self.router = Some(router.clone());
        let _ = self.router_cell.set(router);
        self.lifecycle.set_ready();
        self.recorder.ready(true);
        if let Some(front) = &self.front {
            let _ = front.readiness.send(true);
        }
        tracing::info!(experiment = %self.config.experiment.name, "ready");
    }

    fn child_panicked(&mut self, msg: ChildPanicked, ctx: &mut Context<Self>) {
        self.recorder.restart(msg.actor.kind());
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
            self.stop(
                StopReason::Fatal(format!(
                    "{} restarts in {:.0} s exceed supervision.max_restarts = {max} \
                     (last: {} panicked: {}); stopping instead of flapping",
                    self.restarts.len(),
                    window.as_secs_f64(),
                    msg.actor,
                    msg.message
                )),
                ctx,
            );
        }
    }

    /// Begins the stop sequence (once).
    fn stop(&mut self, reason: StopReason, ctx: &mut Context<Self>) {
        if self.stopping {
            tracing::debug!(?reason, "stop already under way");
            return;
        }
        self.stopping = true;
        self.lifecycle.begin_stop();
        self.recorder.ready(false);
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
        let front = self.front.take();
        if let Some(front) = &front {
            let _ = front.readiness.send(false);
        }
        let plan = StopPlan {
            admission: self.admission.clone(),
            table: self.table.clone(),
            front: front.map(|f| f.stop),
            router: self.router.take(),
            tokenizers: self.tokenizers.take(),
            workers: std::mem::take(&mut self.workers),
            deadline,
        };
        let exit = self.exit.take();
        let table = self.table.clone();
        let run = std::panic::AssertUnwindSafe(plan.run()).catch_unwind();
        ctx.spawn(
            actix::fut::wrap_future(run).map(move |result, _act: &mut Supervisor, _ctx| {
                if let Err(panic) = result {
                    abort_now(
                        EXIT_FAILURE,
                        &format!(
                            "the stop sequence panicked ({})",
                            super::panic_message(&panic)
                        ),
                        &table,
                    );
                }
                if code == EXIT_OK {
                    tracing::info!("Shutdown complete");
                } else {
                    tracing::error!(exit_code = code, "Shutdown complete after a failure");
                }
                if let Some(exit) = exit {
                    let _ = exit.send(code);
                }
            }),
        );
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

    fn handle(&mut self, Boot(front): Boot, ctx: &mut Self::Context) {
        self.guarded("booting", ctx, |act, ctx| act.boot(front, ctx));
    }
}

impl Handler<ChildPanicked> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: ChildPanicked, ctx: &mut Self::Context) {
        self.guarded("counting a restart", ctx, |act, ctx| {
            act.child_panicked(msg, ctx)
        });
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ();

    fn handle(&mut self, Shutdown(reason): Shutdown, ctx: &mut Self::Context) {
        self.guarded("stopping", ctx, |act, ctx| act.stop(reason, ctx));
    }
}

impl Handler<InjectFault> for Supervisor {
    type Result = ();

    fn handle(&mut self, InjectFault(fault): InjectFault, ctx: &mut Self::Context) {
        match fault {
            Fault::SupervisorPanic => self.guarded("handling a test's fault", ctx, |_, _| {
                panic!("injected supervisor fault")
            }),
            other => self.metrics.do_send(super::metrics::InjectFault(other)),
        }
    }
}

/// Everything the stop sequence needs, moved out of the Supervisor.
struct StopPlan {
    admission: Arc<Admission>,
    table: Arc<ActorTable>,
    front: Option<StopFrontEnds>,
    router: Option<Addr<Router>>,
    tokenizers: Option<Addr<TokenizerActor>>,
    workers: Vec<Addr<ModelWorker>>,
    deadline: Instant,
}

/// How often a waiting stage logs who is still running.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

impl StopPlan {
    async fn run(mut self) {
        // 1. Drain: requests already admitted finish; new ones are refused (Lifecycle).
        self.stage("drain in-flight requests", |p| p.admission.requests() == 0)
            .await;

        // 2. Front ends: stop listening, close connections.
        if let Some(stop) = self.front.take() {
            let start = Instant::now();
            tracing::info!(stage = "front ends", "stage start");
            if !stop(self.deadline).await {
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
                p.table.running_of(ActorKind::Router) == 0
            })
            .await;
        }

        // 4. Tokenizers: the pool's threads end when the last handle is dropped.
        let start = Instant::now();
        tracing::info!(stage = "tokenizers", "stage start");
        drop(self.tokenizers.take());
        self.stage_wait("tokenizers", start, |p| {
            p.table.running_of(ActorKind::Tokenizer) == 0
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
            p.table.running_of(ActorKind::ModelWorker) == 0
        })
        .await;
    }

    async fn stage(&self, name: &'static str, done: impl Fn(&Self) -> bool) {
        let start = Instant::now();
        tracing::info!(
            stage = name,
            in_flight = self.admission.requests(),
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
                    in_flight = self.admission.requests(),
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
