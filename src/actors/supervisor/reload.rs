//! Reload: re-read the experiment file and apply its `models:` without failing a request.
//!
//! Owns: the [`Reload`] message and its report, the swap and retiring the versions it
//! replaces. Sent to by: the signal thread (SIGHUP) and the front ends (`POST /admin/reload`),
//! through the Supervisor's handler.
//!
//! A reload starts the groups of new and changed models beside the running ones, publishes
//! them in one swap, and retires the groups they replace: each drains its leases, then stops
//! Router → Tokenizers → ModelWorkers under the same budget and abort as the full stop.

use std::{pin::Pin, sync::Arc, time::Instant};

use actix::prelude::*;

use super::{
    StopReason, Supervisor,
    groups::{Group, LoadResults, Loading, fingerprint, load_all},
    stop::wait_stage,
};
use crate::{
    actors::{ActorId, ActorTable, model_worker::Release, router},
    config::{Config, Overrides},
};

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

impl Supervisor {
    /// Starts a reload; the future answers with its report.
    pub(super) fn reload(
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
            let view = config.settings(i);
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
                if let Err(message) = crate::actors::catch(|| {
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
}

/// Stops one retired version under the full stop's rules, within `deadline`: its leases are
/// returned (its queued and in-flight requests answered), its Router stops, its tokenizer
/// threads end, its workers drop their weights; then freed heap goes back to the system.
pub(super) async fn retire(g: Group, deadline: Instant, table: Arc<ActorTable>) {
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
