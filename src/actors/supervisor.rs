//! Supervisor: starts every other actor, owns SIGTERM, SIGINT and SIGHUP, runs the stop
//! sequence and reloads.
//!
//! Owns: the handle to the Metrics actor; per model served, one group (its ModelWorkers, its
//! Tokenizer pool and its Router, published to the front ends through the
//! [`Directory`](super::models::Directory)); and the front ends' stop handle and readiness
//! switch (given by `lib::run`: this layer does not know the front ends). Sent to by: the
//! signal thread and the front ends ([`Shutdown`], [`Reload`]), the pools and Metrics
//! ([`ChildPanicked`]), the Routers ([`InjectFault`], tests only), `lib::run` ([`Boot`]).
//!
//! A reload starts the groups of new and changed models beside the running ones, publishes
//! them in one swap, and retires the groups they replace: each drains its leases, then stops
//! Router → Tokenizers → ModelWorkers under the same budget and abort as the full stop.
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
    sync::Arc,
    time::{Duration, Instant},
};

use actix::prelude::*;
use futures::FutureExt as _;
use tokio::sync::{oneshot, watch};

use super::{
    ActorId, ActorKind, ActorTable, Admission, Lifecycle,
    metrics::{Metrics, Recorder},
    model_worker::{Load, LoadReport, ModelWorker, Release},
    models::{Catalog, Directory, Served},
    router::{self, Router},
    tokenizer::TokenizerActor,
};
use crate::{
    config::{Config, Overrides},
    fault::Fault,
    model::{ModelSpec, TextTokenizer},
};

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

/// Re-read the experiment file and apply its `models:` (SIGHUP, `POST /admin/reload`): models
/// added or changed load and warm up beside the running versions, then take over new requests
/// in one swap; replaced and removed versions drain and stop. Refused while another reload or
/// the stop runs.
#[derive(Message)]
#[rtype(result = "Result<ReloadReport, ReloadRefused>")]
pub struct Reload;

/// Why a reload did not start.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReloadRefused {
    /// One is running; reloads never interleave.
    #[error("a reload is already in progress; retry when it has finished")]
    InProgress,
    /// The server is still loading its first models.
    #[error("the server is still starting; reload once it is ready")]
    Starting,
    /// The server is stopping.
    #[error("the server is shutting down")]
    Stopping,
}

/// What a reload did (logged, and the admin route's answer).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadReport {
    /// True when every model of the file serves its new settings.
    pub ok: bool,
    /// Models new to the server, now serving (`name@version`).
    pub added: Vec<String>,
    /// Models whose settings or files changed: `name@old -> name@new`.
    pub replaced: Vec<String>,
    /// Models no longer in the file, drained and stopped.
    pub removed: Vec<String>,
    /// Models left as they were.
    pub unchanged: Vec<String>,
    /// Models that failed to load or warm up (the old version, if any, keeps serving), or the
    /// file itself when it was refused.
    pub failed: Vec<ReloadFailure>,
    /// Sections that changed but only apply at the next start (ports, limits, ...).
    pub not_applied: Vec<String>,
    /// How long the whole reload took, retiring the old versions included.
    pub elapsed_ms: u64,
}

/// One model a reload could not load.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadFailure {
    /// The model (or `experiment` when the file was refused).
    pub model: String,
    /// Why.
    pub error: String,
}

/// Where the experiment came from, to read it again on reload.
#[derive(Debug, Clone)]
pub struct Source {
    /// The experiment file.
    pub path: std::path::PathBuf,
    /// The command line's overrides.
    pub overrides: Overrides,
}

/// One running version of one model and the actors that serve it.
struct Group {
    served: Arc<Served>,
    /// What decides whether a reload replaces it: its settings and its files.
    fingerprint: String,
    workers: Vec<Addr<ModelWorker>>,
    tokenizers: Addr<TokenizerActor>,
    /// Its actors, for the actor table.
    ids: Vec<ActorId>,
}

/// A model's workers, loading.
struct Loading {
    index: usize,
    version: u64,
    config: Arc<Config>,
    spec: Arc<ModelSpec>,
    tokenizer: TextTokenizer,
    fingerprint: String,
    workers: Vec<Addr<ModelWorker>>,
    worker_ids: Vec<usize>,
    recorder: Recorder,
}

type LoadResults = Vec<Result<Result<LoadReport, crate::model::ModelError>, MailboxError>>;

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

    /// Starts model `index` of `config` (its metadata, tokenizer and workers; the weights load
    /// on the workers' threads). An error names what could not be read.
    fn start_model(
        &mut self,
        config: &Config,
        index: usize,
        device: tch::Device,
        ctx: &mut Context<Self>,
    ) -> Result<Loading, String> {
        let view = Arc::new(config.for_model(index));
        let m = view.model();
        let spec = Arc::new(ModelSpec::load(m, device).map_err(|e| e.to_string())?);
        let tokenizer =
            TextTokenizer::load(&spec.path, spec.max_seq_length).map_err(|e| e.to_string())?;
        let fingerprint = fingerprint(&view);
        let version = {
            let v = self.versions.entry(spec.name.clone()).or_insert(0);
            *v += 1;
            *v
        };
        let threads = view.intra_op_threads();
        let instances = m.instances;
        tracing::info!(
            model = %spec.name,
            version,
            device = %crate::model::device_name(spec.device),
            dtype = spec.dtype.as_str(),
            instances,
            intra_op_threads = threads,
            "starting model workers"
        );
        let me = ctx.address().recipient::<ChildPanicked>();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let recorder = self.recorder.for_model(&spec.name);
        let first = self.next_ids.0;
        self.next_ids.0 += instances;
        let worker_ids: Vec<usize> = (first..first + instances).collect();
        let workers = worker_ids
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                let pin = m.pin_cores.then(|| {
                    (i * threads..(i + 1) * threads)
                        .map(|c| c % cores)
                        .collect()
                });
                ModelWorker::start(
                    id,
                    spec.clone(),
                    threads,
                    pin,
                    self.table.clone(),
                    recorder.clone(),
                    me.clone(),
                )
            })
            .collect();
        Ok(Loading {
            index,
            version,
            config: view,
            spec,
            tokenizer,
            fingerprint,
            workers,
            worker_ids,
            recorder,
        })
    }

    /// A model whose workers loaded: its tokenizer pool and Router start, and it can serve.
    /// An error (a worker that could not load) releases the workers.
    fn finish_model(
        &mut self,
        loading: Loading,
        results: LoadResults,
        ctx: &mut Context<Self>,
    ) -> Result<Group, String> {
        let name = loading.spec.name.clone();
        for (i, r) in results.into_iter().enumerate() {
            let error = match r {
                Ok(Ok(report)) => {
                    tracing::info!(
                        model = %name,
                        version = loading.version,
                        worker = loading.worker_ids[i],
                        load_ms = report.load.as_millis() as u64,
                        warmup_ms = report.warmup.as_millis() as u64,
                        "model worker ready"
                    );
                    continue;
                }
                Ok(Err(e)) => format!("model worker {i} could not load the model: {e}"),
                Err(e) => format!("model worker {i} died while loading: {e}"),
            };
            release(loading.workers);
            return Err(error);
        }
        if self.stopping {
            release(loading.workers);
            return Err("the server is stopping".into());
        }
        let me = ctx.address().recipient::<ChildPanicked>();
        let threads = loading.config.tokenizer.workers;
        let first = self.next_ids.1;
        self.next_ids.1 += threads;
        let tokenizers = TokenizerActor::start_pool(
            first,
            threads,
            loading.tokenizer.clone(),
            self.table.clone(),
            me,
        );
        let router_index = self.next_ids.2;
        self.next_ids.2 += 1;
        let recorder = loading.recorder.clone();
        let router = Router::new(
            router_index,
            tokenizers.clone(),
            loading.workers.clone(),
            loading.config.batching.clone(),
            loading.spec.clone(),
            self.lifecycle.clone(),
            self.admission.clone(),
            recorder.clone(),
            self.table.clone(),
            ctx.address(),
        )
        .start();
        let mut ids: Vec<ActorId> = loading
            .worker_ids
            .iter()
            .map(|&i| ActorId::ModelWorker(i))
            .collect();
        ids.extend((first..first + threads).map(ActorId::Tokenizer));
        ids.push(ActorId::Router(router_index));
        Ok(Group {
            served: Arc::new(Served::new(
                loading.version,
                loading.config,
                loading.spec,
                router,
                recorder,
            )),
            fingerprint: loading.fingerprint,
            workers: loading.workers,
            tokenizers,
            ids,
        })
    }

    /// Publishes the running versions, in the experiment's order.
    fn publish(&self) {
        self.directory.publish(Catalog {
            models: self.groups.iter().map(|g| g.served.clone()).collect(),
            defaults: self.config.server.default_models.clone(),
        });
        self.recorder.models(
            &self
                .groups
                .iter()
                .map(|g| (g.served.name.as_str(), g.served.version))
                .collect::<Vec<_>>(),
        );
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

    /// Starts a reload; the future answers with its report.
    fn reload(
        &mut self,
        ctx: &mut Context<Self>,
    ) -> Result<Pin<Box<dyn ActorFuture<Self, Output = ReloadReport>>>, ReloadRefused> {
        if self.stopping {
            return Err(ReloadRefused::Stopping);
        }
        if !self.lifecycle.is_ready() {
            return Err(ReloadRefused::Starting);
        }
        if self.reloading {
            return Err(ReloadRefused::InProgress);
        }
        let started = Instant::now();
        tracing::info!(experiment = %self.source.path.display(), "reload: reading the experiment");
        let mut report = ReloadReport::default();
        let config = match Config::load(&self.source.path, &self.source.overrides) {
            Ok(c) => c,
            Err(e) => {
                report.failed.push(ReloadFailure {
                    model: "experiment".into(),
                    error: e.to_string(),
                });
                report.elapsed_ms = started.elapsed().as_millis() as u64;
                self.recorder.reload(false);
                tracing::error!(error = %e, "reload refused: the experiment file is not valid; every model keeps serving");
                return Ok(Box::pin(actix::fut::ready(report)));
            }
        };
        self.reloading = true;
        report.not_applied = not_applied(&self.config, &config);
        let config = Arc::new(config);
        // Which models load: those that are new or whose settings or files changed.
        let mut loading = Vec::new();
        for (i, m) in config.models.iter().enumerate() {
            let name = m.served_name();
            let view = config.for_model(i);
            let unchanged = self
                .groups
                .iter()
                .any(|g| g.served.name == name && g.fingerprint == fingerprint(&view));
            if unchanged {
                report.unchanged.push(name);
                continue;
            }
            let device = match crate::model::device::select(m) {
                Ok(choice) => choice.device,
                Err(e) => {
                    report.failed.push(ReloadFailure {
                        model: name,
                        error: e.to_string(),
                    });
                    continue;
                }
            };
            match self.start_model(&config, i, device, ctx) {
                Ok(l) => loading.push(l),
                Err(error) => report.failed.push(ReloadFailure { model: name, error }),
            }
        }
        let loads = load_all(&loading);
        Ok(Box::pin(actix::fut::wrap_future(loads).then(
            move |results, act: &mut Supervisor, ctx| {
                let mut retired = Vec::new();
                if let Err(message) = super::catch(|| {
                    retired = act.swap(config, loading, results, &mut report, ctx);
                }) {
                    act.reloading = false;
                    act.stop(
                        StopReason::Fatal(format!("the supervisor panicked during a reload ({message})")),
                        ctx,
                    );
                }
                let deadline = Instant::now() + act.budget();
                let table = act.table.clone();
                let retire = futures::future::join_all(
                    retired.into_iter().map(move |g| retire(g, deadline, table.clone())),
                );
                actix::fut::wrap_future(retire).map(move |_, act: &mut Supervisor, _| {
                    act.reloading = false;
                    report.ok = report.failed.is_empty();
                    report.elapsed_ms = started.elapsed().as_millis() as u64;
                    act.recorder.reload(report.ok);
                    if report.ok {
                        tracing::info!(?report, "reload done");
                    } else {
                        tracing::error!(?report, "reload done with failures; the old versions of failed models keep serving");
                    }
                    report
                })
            },
        )))
    }

    /// The new versions that loaded take over in one swap; returns the versions to retire.
    fn swap(
        &mut self,
        config: Arc<Config>,
        loading: Vec<Loading>,
        results: Vec<LoadResults>,
        report: &mut ReloadReport,
        ctx: &mut Context<Self>,
    ) -> Vec<Group> {
        let mut fresh = std::collections::BTreeMap::new();
        for (l, r) in loading.into_iter().zip(results) {
            let (index, name) = (l.index, l.spec.name.clone());
            match self.finish_model(l, r, ctx) {
                Ok(g) => {
                    fresh.insert(index, g);
                }
                Err(error) => {
                    tracing::error!(model = %name, %error, "reload: the new version did not load");
                    self.recorder.model_load(&name, false);
                    report.failed.push(ReloadFailure { model: name, error });
                }
            }
        }
        if self.stopping {
            return fresh.into_values().collect();
        }
        let mut old: Vec<Option<Group>> = std::mem::take(&mut self.groups)
            .into_iter()
            .map(Some)
            .collect();
        let mut take_old = |name: &str| {
            old.iter_mut()
                .find(|g| g.as_ref().is_some_and(|g| g.served.name == name))
                .and_then(Option::take)
        };
        let mut groups = Vec::new();
        let mut retired = Vec::new();
        for (i, m) in config.models.iter().enumerate() {
            let name = m.served_name();
            let previous = take_old(&name);
            match (fresh.remove(&i), previous) {
                (Some(new), Some(prev)) => {
                    self.recorder.model_load(&name, true);
                    report
                        .replaced
                        .push(format!("{} -> {}", prev.served.tag(), new.served.tag()));
                    retired.push(prev);
                    groups.push(new);
                }
                (Some(new), None) => {
                    self.recorder.model_load(&name, true);
                    report.added.push(new.served.tag());
                    groups.push(new);
                }
                (None, Some(prev)) => groups.push(prev),
                (None, None) => {}
            }
        }
        for prev in old.into_iter().flatten() {
            report.removed.push(prev.served.tag());
            retired.push(prev);
        }
        // The server-level sections stay as started; only the models and their defaults move.
        let mut next = (*self.config).clone();
        next.models = config
            .models
            .iter()
            .filter(|m| groups.iter().any(|g| g.served.name == m.served_name()))
            .cloned()
            .collect();
        next.server.default_models = config.server.default_models.clone();
        self.config = Arc::new(next);
        self.groups = groups;
        self.publish();
        for g in &retired {
            tracing::info!(model = %g.served.tag(), leases = g.served.leases(), "retiring: draining, then stopping");
        }
        retired
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
        let groups = std::mem::take(&mut self.groups);
        let mut plan = StopPlan {
            admission: self.admission.clone(),
            table: self.table.clone(),
            front: front.map(|f| f.stop),
            routers: Vec::new(),
            tokenizers: Vec::new(),
            workers: Vec::new(),
            deadline,
        };
        for g in groups {
            plan.routers.push(g.served.router.clone());
            plan.tokenizers.push(g.tokenizers);
            plan.workers.extend(g.workers);
        }
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

/// Everything the stop sequence needs, moved out of the Supervisor.
struct StopPlan {
    admission: Arc<Admission>,
    table: Arc<ActorTable>,
    front: Option<StopFrontEnds>,
    routers: Vec<Addr<Router>>,
    tokenizers: Vec<Addr<TokenizerActor>>,
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

        // 3. Routers (one per model): each fails anything still queued and drops its
        //    handles to its pools.
        let routers = std::mem::take(&mut self.routers);
        if !routers.is_empty() {
            let start = Instant::now();
            tracing::info!(stage = "router", "stage start");
            let stops = futures::future::join_all(routers.iter().map(|r| r.send(router::Stop)));
            let _ = tokio::time::timeout_at(self.deadline.into(), stops).await;
            drop(routers);
            self.stage_wait("router", start, |p| {
                p.table.running_of(ActorKind::Router) == 0
            })
            .await;
        }

        // 4. Tokenizers: the pool's threads end when the last handle is dropped.
        let start = Instant::now();
        tracing::info!(stage = "tokenizers", "stage start");
        drop(std::mem::take(&mut self.tokenizers));
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
        let admission = self.admission.clone();
        wait_stage(
            name,
            start,
            self.deadline,
            &self.table,
            || done(self),
            || admission.requests(),
        )
        .await;
    }
}

/// Polls `done` until true, logging who is still running every [`PROGRESS_EVERY`] (with
/// `in_flight()` requests); aborts the process with [`EXIT_ABORT`] when `deadline` passes.
async fn wait_stage(
    name: &str,
    start: Instant,
    deadline: Instant,
    table: &ActorTable,
    done: impl Fn() -> bool,
    in_flight: impl Fn() -> usize,
) {
    let mut next_log = Instant::now() + PROGRESS_EVERY;
    while !done() {
        if Instant::now() >= deadline {
            abort_now(EXIT_ABORT, &format!("stage `{name}` did not finish"), table);
        }
        if Instant::now() >= next_log {
            tracing::info!(
                stage = name,
                in_flight = in_flight(),
                running = ?table.running(),
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

/// Stops one retired version under the full stop's rules, within `deadline`: its leases are
/// returned (its queued and in-flight requests answered), its Router stops, its tokenizer
/// threads end, its workers drop their weights; then freed heap goes back to the system.
async fn retire(g: Group, deadline: Instant, table: Arc<ActorTable>) {
    let tag = g.served.tag();
    let start = Instant::now();
    let served = g.served.clone();
    wait_stage(
        &format!("drain {tag}"),
        start,
        deadline,
        &table,
        || served.leases() == 0,
        || served.leases(),
    )
    .await;
    let _ = tokio::time::timeout_at(deadline.into(), g.served.router.send(router::Stop)).await;
    drop(g.tokenizers);
    let releases = futures::future::join_all(g.workers.iter().map(|w| w.send(Release)));
    let _ = tokio::time::timeout_at(deadline.into(), releases).await;
    drop(g.workers);
    let ids = g.ids;
    wait_stage(
        &format!("stop {tag}"),
        start,
        deadline,
        &table,
        || table.running_among(&ids) == 0,
        || 0,
    )
    .await;
    // What is gone leaves the actor table and the metrics: they stay bounded over reloads.
    table.forget(&ids);
    let workers: Vec<usize> = ids
        .iter()
        .filter_map(|id| match id {
            ActorId::ModelWorker(n) => Some(*n),
            _ => None,
        })
        .collect();
    g.served.recorder.forget_workers(&workers);
    trim_heap();
    tracing::info!(model = %tag, elapsed_ms = start.elapsed().as_millis() as u64, "retired");
}

/// Hands freed heap back to the system (glibc keeps it otherwise), so a retired version's
/// memory shows in RSS.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory at the top of glibc's arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Drops workers that will not serve: their weights go with them.
fn release(workers: Vec<Addr<ModelWorker>>) {
    for w in &workers {
        w.do_send(Release);
    }
}

/// Loads the weights on every worker of every model, answering when all have answered.
fn load_all(loading: &[Loading]) -> impl Future<Output = Vec<LoadResults>> + use<> {
    futures::future::join_all(
        loading
            .iter()
            .map(|l| {
                futures::future::join_all(
                    l.workers.iter().map(|w| w.send(Load)).collect::<Vec<_>>(),
                )
            })
            .collect::<Vec<_>>(),
    )
}

/// What decides whether a reload replaces a model: its settings as its pipeline sees them,
/// and the name, size and modification time of every file in its folder.
fn fingerprint(view: &Config) -> String {
    let m = view.model();
    let mut files = Vec::new();
    let mut stack = vec![(m.path.clone(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                if depth < 3 {
                    stack.push((path, depth + 1));
                }
            } else {
                let modified = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                files.push(format!("{}:{}:{modified}", path.display(), meta.len()));
            }
        }
    }
    files.sort();
    serde_json::json!({
        "model": m,
        "tokenizer": view.tokenizer,
        "batching": view.batching,
        "intra_op_threads": view.intra_op_threads(),
        "files": files,
    })
    .to_string()
}

/// The sections that differ between `old` and `new` but only apply at a start.
fn not_applied(old: &Config, new: &Config) -> Vec<String> {
    let (a, b) = (
        serde_json::to_value(old).unwrap_or_default(),
        serde_json::to_value(new).unwrap_or_default(),
    );
    let mut changed = Vec::new();
    if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
        for (key, value) in b {
            if key == "models" || key == "tokenizer" || key == "batching" {
                continue;
            }
            let mut value = value.clone();
            let mut before = a.get(key).cloned().unwrap_or_default();
            if key == "server" {
                for v in [&mut value, &mut before] {
                    if let Some(o) = v.as_object_mut() {
                        o.remove("default_models");
                    }
                }
            }
            if value != before {
                changed.push(key.clone());
            }
        }
    }
    changed
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

/// The only owner of SIGTERM, SIGINT and SIGHUP: a plain thread, so a second stop signal
/// aborts even if the actix runtime is stuck. SIGHUP asks for a [`Reload`] (its report is
/// logged).
fn spawn_signal_thread(supervisor: Addr<Supervisor>, table: Arc<ActorTable>) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .expect("installing SIGTERM/SIGINT/SIGHUP handlers");
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = 0;
            for sig in signals.forever() {
                if sig == SIGHUP {
                    tracing::info!(signal = "SIGHUP", "reload requested");
                    supervisor.do_send(Reload);
                    continue;
                }
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
