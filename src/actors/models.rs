//! Which models are served, and which version of each takes new requests.
//!
//! The Supervisor starts one pipeline per model (its own model workers, tokenizer pool and
//! Router: a slow reranker never holds the embedder's batches) and publishes the running
//! versions as a [`Catalog`] in the [`Directory`]. A front end takes a [`Lease`] on the version
//! it routes a request to; a reload publishes a new catalog in one swap, so every request
//! after it goes to the new versions, and a retired version stops only once its last lease is
//! returned: no request is dropped by a reload.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
};

use actix::Addr;

use super::{metrics::Recorder, router::Router};
use crate::{
    config::Config,
    model::{ModelSpec, Task},
};

/// One running version of one model.
pub struct Served {
    /// The name clients use.
    pub name: String,
    /// 1 for the version loaded at start; each reload that replaces the model adds one.
    pub version: u64,
    /// The configuration as this model's pipeline sees it ([`Config::for_model`]).
    pub config: Arc<Config>,
    /// The model's facts.
    pub spec: Arc<ModelSpec>,
    /// Its Router.
    pub router: Addr<Router>,
    /// Metric handles labelled with this model.
    pub recorder: Recorder,
    leases: AtomicUsize,
}

impl Served {
    /// A running version with no lease out.
    pub fn new(
        version: u64,
        config: Arc<Config>,
        spec: Arc<ModelSpec>,
        router: Addr<Router>,
        recorder: Recorder,
    ) -> Served {
        Served {
            name: spec.name.clone(),
            version,
            config,
            spec,
            router,
            recorder,
            leases: AtomicUsize::new(0),
        }
    }

    /// Requests routed to this version and not yet answered.
    pub fn leases(&self) -> usize {
        self.leases.load(Ordering::Acquire)
    }

    /// `name@version`, as the `X-Model-Version` header and the logs say it.
    pub fn tag(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// A request's hold on the version serving it; the version stops only once every lease on it
/// is dropped.
pub struct Lease(Arc<Served>);

impl Lease {
    /// The version itself (holding it does not hold a lease).
    pub fn served(&self) -> Arc<Served> {
        self.0.clone()
    }
}

impl std::ops::Deref for Lease {
    type Target = Served;
    fn deref(&self) -> &Served {
        &self.0
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.leases.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The versions serving now, in the experiment file's order.
#[derive(Default)]
pub struct Catalog {
    /// One running version per model.
    pub models: Vec<Arc<Served>>,
    /// `server.default_models`: the model that serves each kind of route carrying no name.
    pub defaults: BTreeMap<String, String>,
}

/// Which version a request goes to.
#[derive(Debug, Clone, Copy)]
pub enum Pick<'a> {
    /// The model of this name.
    Named(&'a str),
    /// The model of this name, or the only one when one model is served (TEI and OpenAI
    /// clients send a name of their own, which a one-model server ignores, as TEI does).
    NamedOrOnly(&'a str),
    /// The default for a route that needs this kind of model.
    Default(Task),
    /// The first model listed (tokenizer routes).
    First,
}

impl Catalog {
    /// The version `pick` chooses, if any.
    pub fn find(&self, pick: Pick<'_>) -> Option<&Arc<Served>> {
        match pick {
            Pick::Named(name) => self.models.iter().find(|m| m.name == name),
            Pick::NamedOrOnly(name) => self
                .models
                .iter()
                .find(|m| m.name == name)
                .or_else(|| (self.models.len() == 1).then(|| &self.models[0])),
            Pick::Default(task) => self
                .defaults
                .get(task.as_str())
                .and_then(|n| self.models.iter().find(|m| &m.name == n))
                .or_else(|| self.models.iter().find(|m| m.spec.task == task))
                // `/predict` also runs a cross-encoder on pairs.
                .or_else(|| {
                    (task == Task::Classifier)
                        .then(|| self.models.iter().find(|m| m.spec.task == Task::Reranker))
                        .flatten()
                })
                .or_else(|| self.models.first()),
            Pick::First => self.models.first(),
        }
    }

    /// The names served, in order.
    pub fn names(&self) -> Vec<String> {
        self.models.iter().map(|m| m.name.clone()).collect()
    }
}

/// Where the front ends find the catalog; the Supervisor swaps it whole.
#[derive(Default)]
pub struct Directory {
    current: RwLock<Arc<Catalog>>,
}

impl Directory {
    /// The catalog now (empty until the first models are ready).
    pub fn catalog(&self) -> Arc<Catalog> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the catalog; requests routed after this go to its versions.
    pub fn publish(&self, catalog: Catalog) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(catalog);
    }

    /// A lease on the version `pick` chooses, taken under the same lock as the swap, so a
    /// version that is no longer published never gains a lease.
    pub fn lease(&self, pick: Pick<'_>) -> Result<Lease, Arc<Catalog>> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        match current.find(pick) {
            Some(served) => {
                served.leases.fetch_add(1, Ordering::AcqRel);
                Ok(Lease(served.clone()))
            }
            None => Err(current.clone()),
        }
    }
}
