//! Supervisor: starts every other actor, owns the process's signals, runs the stop sequence
//! and reloads.
//!
//! Owns: the handle to the Metrics actor; per model served, one group (its ModelWorkers, its
//! Tokenizer pool and its Router, published to the front ends through the
//! [`Directory`](super::models::Directory)); and the front ends' stop handle and readiness
//! switch (given by `lib::run`: this layer does not know the front ends). Sent to by: the
//! signal thread and the front ends ([`Shutdown`], [`Reload`]), the pools and Metrics
//! ([`ChildPanicked`]), the Routers ([`InjectFault`], tests only), `lib::run` ([`Boot`]).
//!
//! This file is the actor: its state, its messages and handlers, booting and restart counting.
//! The rest, each file saying what it owns:
//! - [`groups`]: one model's actors, from loading its workers to a servable group, and
//!   publishing the running versions;
//! - [`reload`]: re-reading the experiment, the swap, retiring replaced versions;
//! - [`stop`]: the stop sequence, one budget spent stage by stage;
//! - [`signals`]: the signal thread, the watchdog and the one way the process ends ([`exit`],
//!   [`abort_now`]).
//!
//! Supervision (README "Stopping"): tokenizers, model workers and Metrics are restarted after a
//! panic, counted against `supervision.max_restarts` per `window_seconds` (past it: a clean
//! stop, exit 1); a panic in the Router or in the Supervisor's own handlers is a clean stop
//! with exit 1; a panic inside the stop sequence itself aborts at once with exit 1.

mod groups;
mod reload;
mod signals;
mod stop;

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use actix::prelude::*;
use tokio::sync::{oneshot, watch};

use self::{
    groups::{Group, LoadResults, Loading, load_all, release},
    signals::spawn_signal_thread,
};
pub use self::{
    reload::{Reload, ReloadFailure, ReloadRefused, ReloadReport, Source},
    signals::{abort_now, exit},
};
use super::{
    ActorId, ActorKind, ActorTable, Admission, Lifecycle,
    metrics::{Metrics, Recorder},
    models::Directory,
};
use crate::{config::Config, fault::Fault};

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
    source: Source,
    /// The devices chosen at start, one per model.
    devices: Vec<tch::Device>,
    lifecycle: Arc<Lifecycle>,
    table: Arc<ActorTable>,
    admission: Arc<Admission>,
    recorder: Recorder,
    metrics: Addr<Metrics>,
    front: Option<FrontEnds>,
    groups: Vec<Group>,
    directory: Arc<Directory>,
    /// Where the exit code goes when the stop sequence ends (`lib::run` waits on it).
    exit: Option<oneshot::Sender<i32>>,
    stopping: bool,
    reloading: bool,
    restarts: Vec<Instant>,
    /// The next free worker, tokenizer and router numbers (names stay unique across reloads).
    next_ids: (usize, usize, usize),
    /// The last version number given to each model name.
    versions: std::collections::BTreeMap<String, u64>,
}

/// What [`Supervisor::new`] takes.
pub struct Parts {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Where it came from.
    pub source: Source,
    /// The device of each model, chosen at start.
    pub devices: Vec<tch::Device>,
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
    /// Where the running versions are published.
    pub directory: Arc<Directory>,
    /// Where the exit code goes.
    pub exit: oneshot::Sender<i32>,
}

impl Supervisor {
    /// A Supervisor; nothing starts until [`Boot`].
    pub fn new(p: Parts) -> Supervisor {
        Supervisor {
            config: p.config,
            source: p.source,
            devices: p.devices,
            lifecycle: p.lifecycle,
            table: p.table,
            admission: p.admission,
            recorder: p.recorder,
            metrics: p.metrics,
            front: None,
            groups: Vec::new(),
            directory: p.directory,
            exit: Some(p.exit),
            stopping: false,
            reloading: false,
            restarts: Vec::new(),
            next_ids: (0, 0, 0),
            versions: Default::default(),
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
        let config = self.config.clone();
        let mut loading = Vec::new();
        for i in 0..config.models.len() {
            let device = self.devices[i];
            match self.start_model(&config, i, device, ctx) {
                Ok(l) => loading.push(l),
                Err(e) => {
                    for l in loading {
                        release(l.workers);
                    }
                    return self.stop(
                        StopReason::Fatal(format!(
                            "cannot serve the model {}: {e}",
                            config.models[i].served_name()
                        )),
                        ctx,
                    );
                }
            }
        }
        let loads = load_all(&loading);
        ctx.spawn(
            actix::fut::wrap_future(loads).map(move |results, act: &mut Supervisor, ctx| {
                act.guarded("starting the routers", ctx, |act, ctx| {
                    act.loaded(loading, results, ctx)
                });
            }),
        );
    }

    fn loaded(
        &mut self,
        loading: Vec<Loading>,
        results: Vec<LoadResults>,
        ctx: &mut Context<Self>,
    ) {
        let mut error = None;
        for (l, r) in loading.into_iter().zip(results) {
            if error.is_some() {
                release(l.workers);
                continue;
            }
            let name = l.spec.name.clone();
            match self.finish_model(l, r, ctx) {
                Ok(g) => self.groups.push(g),
                Err(e) => error = Some(format!("cannot serve the model {name}: {e}")),
            }
        }
        if let Some(e) = error {
            return self.stop(StopReason::Fatal(e), ctx);
        }
        if self.stopping {
            return;
        }
        self.publish();
        self.lifecycle.set_ready();
        self.recorder.ready(true);
        if let Some(front) = &self.front {
            let _ = front.readiness.send(true);
        }
        tracing::info!(
            experiment = %self.config.experiment.name,
            models = ?self.groups.iter().map(|g| g.served.tag()).collect::<Vec<_>>(),
            "ready"
        );
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

impl Handler<Reload> for Supervisor {
    type Result = ResponseActFuture<Self, Result<ReloadReport, ReloadRefused>>;

    fn handle(&mut self, _msg: Reload, ctx: &mut Self::Context) -> Self::Result {
        let mut started = Err(ReloadRefused::Stopping);
        self.guarded("starting a reload", ctx, |act, ctx| {
            started = act.reload(ctx)
        });
        match started {
            Ok(f) => Box::pin(f.map(|report, _, _| Ok(report))),
            Err(refused) => {
                tracing::warn!(%refused, "reload refused");
                Box::pin(actix::fut::ready(Err(refused)))
            }
        }
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
