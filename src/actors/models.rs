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
    config::ModelSettings,
    model::{ModelSpec, Task},
};

/// One running version of one model.
pub struct Served {
    /// The name clients use.
    pub name: String,
    /// 1 for the version loaded at start; each reload that replaces the model adds one.
    pub version: u64,
    /// Its settings as its pipeline runs them ([`crate::config::Config::settings`]).
    pub settings: Arc<ModelSettings>,
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
        settings: Arc<ModelSettings>,
        spec: Arc<ModelSpec>,
        router: Addr<Router>,
        recorder: Recorder,
    ) -> Served {
        Served {
            name: spec.name.clone(),
            version,
            settings,
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

#[cfg(test)]
mod tests {
    //! The invariant a reload rests on: a swap publishes a whole catalog at once, a version that
    //! is no longer published never gains a lease (so a retired version that reached zero stays
    //! there and may stop), and every lease is returned however its request ends.

    use std::{
        sync::atomic::{AtomicBool, AtomicU64},
        thread,
    };

    use super::*;
    use crate::config::{Config, Overrides};

    /// Two models from the committed fixtures: an embedder and a reranker.
    struct Models {
        config: Config,
        specs: Vec<Arc<ModelSpec>>,
        recorder: Recorder,
    }

    impl Models {
        fn new() -> Models {
            let fixture =
                |n: &str| format!("{}/tests/fixtures/models/{n}", env!("CARGO_MANIFEST_DIR"));
            let yaml = format!(
                "models:\n  - path: {}\n    device: cpu\n  - path: {}\n    device: cpu\n",
                fixture("roberta-mean"),
                fixture("bert-reranker")
            );
            let config =
                Config::from_sources(&yaml, std::iter::empty(), &Overrides::default()).unwrap();
            let specs = config
                .models
                .iter()
                .map(|m| Arc::new(ModelSpec::load(m, tch::Device::Cpu).unwrap()))
                .collect();
            let recorder = Recorder::new(&prometheus::Registry::new(), &["ok"]).unwrap();
            Models {
                config,
                specs,
                recorder,
            }
        }

        fn name(&self, i: usize) -> &str {
            &self.specs[i].name
        }

        /// Version `version` of model `i`. Its Router's address leads nowhere: nothing here
        /// sends to it.
        fn served(&self, i: usize, version: u64) -> Arc<Served> {
            let (tx, _rx) = actix::dev::channel::channel::<Router>(1);
            Arc::new(Served::new(
                version,
                Arc::new(self.config.settings(i)),
                self.specs[i].clone(),
                Addr::new(tx),
                self.recorder.for_model(self.name(i)),
            ))
        }
    }

    /// A lease on what `pick` chooses, which must exist.
    fn lease(d: &Directory, pick: Pick<'_>) -> Lease {
        d.lease(pick)
            .unwrap_or_else(|c| panic!("nothing serves {pick:?} (serving {:?})", c.names()))
    }

    fn catalog(models: &[&Arc<Served>]) -> Catalog {
        Catalog {
            models: models.iter().map(|m| Arc::clone(m)).collect(),
            defaults: BTreeMap::new(),
        }
    }

    #[test]
    fn after_a_swap_every_pick_leases_the_new_version_and_the_old_gains_none() {
        let m = Models::new();
        let (embedder, reranker) = (m.name(0).to_string(), m.name(1).to_string());
        let (e1, r1, e2) = (m.served(0, 1), m.served(1, 1), m.served(0, 2));
        let d = Directory::default();
        assert!(
            d.lease(Pick::First).is_err(),
            "nothing is served before boot"
        );
        d.publish(catalog(&[&e1, &r1]));
        let before = lease(&d, Pick::Named(&embedder));
        assert_eq!((before.version, e1.leases()), (1, 1));

        // The reload replaces the embedder: one swap.
        d.publish(catalog(&[&e2, &r1]));
        for pick in [
            Pick::Named(&embedder),
            Pick::NamedOrOnly(&embedder),
            Pick::Default(Task::Embedding),
            Pick::First,
        ] {
            let got = lease(&d, pick);
            assert_eq!(
                (got.name.as_str(), got.version),
                (&*embedder, 2),
                "{pick:?}"
            );
            assert_eq!(
                e1.leases(),
                1,
                "{pick:?}: the retired version gained a lease"
            );
        }
        assert_eq!(e2.leases(), 0, "each lease above was returned");
        // The request routed before the swap still holds the old version until it ends.
        assert_eq!(before.version, 1);
        drop(before);
        assert_eq!(e1.leases(), 0);

        // The next reload removes the reranker: its name no longer leases anything.
        d.publish(catalog(&[&e2]));
        let refused = d.lease(Pick::Named(&reranker)).err().expect("removed");
        assert_eq!(refused.names(), vec![embedder.clone()]);
        assert_eq!(r1.leases(), 0);
        assert_eq!(
            lease(&d, Pick::NamedOrOnly(&reranker)).tag(),
            e2.tag(),
            "one model left: a name of the client's own goes to it"
        );
    }

    #[test]
    fn every_lease_is_returned_however_its_request_ends() {
        let m = Models::new();
        let e1 = m.served(0, 1);
        let d = Arc::new(Directory::default());
        d.publish(catalog(&[&e1]));
        let name = m.name(0).to_string();

        // Answered on the thread that routed it, or on another thread.
        let a = lease(&d, Pick::Named(&name));
        let b = lease(&d, Pick::First);
        assert_eq!(e1.leases(), 2);
        thread::spawn(move || drop(b)).join().unwrap();
        drop(a);
        assert_eq!(e1.leases(), 0);

        // A handler that panics while holding its lease (the unwind drops it).
        let d2 = d.clone();
        let panicked = thread::spawn(move || {
            let _lease = lease(&d2, Pick::First);
            panic!("a handler panics");
        })
        .join();
        assert!(panicked.is_err());
        assert_eq!(e1.leases(), 0, "the panicking request's lease was returned");

        // Holding the version itself (what a retiring group keeps) is not a lease.
        let version = lease(&d, Pick::First).served();
        assert_eq!(version.leases(), 0);

        // Many requests at once, from many threads.
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let d = d.clone();
                thread::spawn(move || {
                    let held: Vec<Lease> = (0..500).map(|_| lease(&d, Pick::First)).collect();
                    drop(held);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(e1.leases(), 0);
    }

    #[test]
    fn leases_racing_two_thousand_swaps_never_land_on_a_stopped_version() {
        // What a reload does with the version it replaces: publish the new one, wait until the
        // old one's leases are all returned, then stop it. Four threads lease all the while;
        // none may ever hold a lease on a version that was stopped, and each request routed
        // after a swap returned goes to the new version (or a newer one).
        const SWAPS: u64 = 2000;
        let m = Models::new();
        let name = m.name(0).to_string();
        let reranker = m.served(1, 1);
        let d = Arc::new(Directory::default());
        let mut current = m.served(0, 1);
        d.publish(catalog(&[&current, &reranker]));
        let published = Arc::new(AtomicU64::new(1));
        let stopped: Arc<Vec<AtomicBool>> =
            Arc::new((0..=SWAPS + 1).map(|_| AtomicBool::new(false)).collect());
        let done = Arc::new(AtomicBool::new(false));
        let leasers: Vec<_> = (0..4)
            .map(|_| {
                let (d, published, stopped, done, name) = (
                    d.clone(),
                    published.clone(),
                    stopped.clone(),
                    done.clone(),
                    name.clone(),
                );
                thread::spawn(move || {
                    let mut leases = 0u64;
                    while !done.load(Ordering::Acquire) {
                        let after = published.load(Ordering::Acquire);
                        let got = lease(&d, Pick::Named(&name));
                        assert!(
                            !stopped[got.version as usize].load(Ordering::Acquire),
                            "a lease on version {}, which was retired and stopped",
                            got.version
                        );
                        assert!(
                            got.version >= after,
                            "a request routed after version {after} was published leased \
                             version {}",
                            got.version
                        );
                        leases += 1;
                        drop(got);
                    }
                    leases
                })
            })
            .collect();
        for v in 2..=SWAPS {
            let next = m.served(0, v);
            d.publish(catalog(&[&next, &reranker]));
            published.store(v, Ordering::Release);
            let old = std::mem::replace(&mut current, next);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while old.leases() > 0 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{} kept {} leases",
                    old.tag(),
                    old.leases()
                );
                thread::yield_now();
            }
            stopped[old.version as usize].store(true, Ordering::Release);
        }
        done.store(true, Ordering::Release);
        let leases: u64 = leasers
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .sum();
        assert!(leases > 0, "the leasers ran");
        assert_eq!(current.leases(), 0);
    }
}
