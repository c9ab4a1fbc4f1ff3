//! A model's group: its ModelWorkers, its Tokenizer pool and its Router, as one running version.
//!
//! Owns: how a group is started (metadata and tokenizer read here, weights loaded on the
//! workers' threads: [`Load`]), finished (pool and Router started once every worker answered)
//! or released (its workers told to drop their weights: [`Release`]), and publishing the
//! running versions to the front ends' [`Directory`](crate::actors::models::Directory). Called
//! by the Supervisor at boot and by a reload; nothing sends to it: it is the Supervisor's code.

use std::{future::Future, sync::Arc};

use actix::prelude::*;

use super::{ChildPanicked, Supervisor};
use crate::{
    actors::{
        ActorId,
        metrics::Recorder,
        model_worker::{Load, LoadReport, ModelWorker, Release},
        models::{Catalog, Served},
        router::Router,
        tokenizer::TokenizerActor,
    },
    config::{Config, ModelSettings},
    model::{ModelSpec, TextTokenizer},
};

/// One running version of one model and the actors that serve it.
pub(super) struct Group {
    pub(super) served: Arc<Served>,
    /// What decides whether a reload replaces it: its settings and its files.
    pub(super) fingerprint: String,
    pub(super) workers: Vec<Addr<ModelWorker>>,
    pub(super) tokenizers: Addr<TokenizerActor>,
    /// Its actors, for the actor table.
    pub(super) ids: Vec<ActorId>,
}

/// A model's workers, loading.
pub(super) struct Loading {
    pub(super) index: usize,
    pub(super) version: u64,
    pub(super) settings: Arc<ModelSettings>,
    pub(super) spec: Arc<ModelSpec>,
    pub(super) tokenizer: TextTokenizer,
    pub(super) fingerprint: String,
    pub(super) workers: Vec<Addr<ModelWorker>>,
    pub(super) worker_ids: Vec<usize>,
    pub(super) recorder: Recorder,
}

pub(super) type LoadResults =
    Vec<Result<Result<LoadReport, crate::model::ModelError>, MailboxError>>;

impl Supervisor {
    /// Starts model `index` of `config` (its metadata, tokenizer and workers; the weights load
    /// on the workers' threads). An error names what could not be read.
    pub(super) fn start_model(
        &mut self,
        config: &Config,
        index: usize,
        device: tch::Device,
        ctx: &mut Context<Self>,
    ) -> Result<Loading, String> {
        let settings = Arc::new(config.settings(index));
        let m = &settings.model;
        let spec = Arc::new(ModelSpec::load(m, device).map_err(|e| e.to_string())?);
        let tokenizer =
            TextTokenizer::load(&spec.path, spec.max_seq_length).map_err(|e| e.to_string())?;
        let fingerprint = fingerprint(&settings);
        let version = {
            let v = self.versions.entry(spec.name.clone()).or_insert(0);
            *v += 1;
            *v
        };
        let threads = settings.intra_op_threads;
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
            settings,
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
    pub(super) fn finish_model(
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
        let threads = loading.settings.tokenizer.workers;
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
            loading.settings.batching.clone(),
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
                loading.settings,
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
    pub(super) fn publish(&self) {
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
}

/// Drops workers that will not serve: their weights go with them.
pub(super) fn release(workers: Vec<Addr<ModelWorker>>) {
    for w in &workers {
        w.do_send(Release);
    }
}

/// Loads the weights on every worker of every model, answering when all have answered.
pub(super) fn load_all(loading: &[Loading]) -> impl Future<Output = Vec<LoadResults>> + use<> {
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
pub(super) fn fingerprint(view: &ModelSettings) -> String {
    let m = &view.model;
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
        "intra_op_threads": view.intra_op_threads,
        "files": files,
    })
    .to_string()
}
