//! The stop sequence: one budget (`shutdown.timeout_seconds`) spent stage by stage, each stage
//! getting what the one before left.
//!
//! Owns: the [`StopPlan`] (everything the sequence needs, moved out of the Supervisor) and the
//! stages' waiting. Started by the Supervisor's [`Shutdown`](super::Shutdown) handler (a signal,
//! a fatal error, a front end), once.
//!
//! Stages: readiness off and new work refused at once → drain in-flight requests → stop the
//! front ends → Router → Tokenizers → ModelWorkers (reverse start order). If the budget runs
//! out, the process aborts with [`EXIT_ABORT`] after naming the actors that did not stop; a
//! watchdog thread ([`super::signals`]) guarantees that even if the actix runtime is wedged (a
//! worker stuck inside libtorch cannot be cancelled). A second signal aborts at once with
//! [`EXIT_FORCED`](super::EXIT_FORCED).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use actix::prelude::*;
use futures::FutureExt as _;

use super::{
    EXIT_ABORT, EXIT_FAILURE, EXIT_OK, StopFrontEnds, StopReason, Supervisor,
    signals::{abort_now, spawn_watchdog},
};
use crate::actors::{
    ActorKind, ActorTable, Admission,
    model_worker::{ModelWorker, Release},
    router::{self, Router},
    tokenizer::TokenizerActor,
};

impl Supervisor {
    /// Begins the stop sequence (once).
    pub(super) fn stop(&mut self, reason: StopReason, ctx: &mut Context<Self>) {
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
                            crate::actors::panic_message(&panic)
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
pub(super) async fn wait_stage(
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
