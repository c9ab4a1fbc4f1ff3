//! The actors of one actor-infer process and the little state they share.
//!
//! Start order (the Supervisor's): Metrics → per model, ModelWorkers → Tokenizers → Router;
//! the HTTP and gRPC front ends pick a model in the [`models::Directory`] and send typed
//! requests to its Router. Stop order is the reverse: front ends stop taking work, the Routers
//! drain, then Tokenizers, then ModelWorkers (OTP-style).
//!
//! This layer knows the model (`crate::model`) and the configuration, never the front ends: it
//! answers with its own [`InferError`], which the API layer maps to what clients see.

pub mod batcher;
mod error;
pub mod job;
pub mod metrics;
pub mod model_worker;
pub mod models;
pub mod router;
pub mod supervisor;
pub mod tokenizer;

use std::{
    collections::BTreeMap,
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Instant,
};

pub use error::InferError;

/// Readiness and the stop flag, read by the front ends and the Router on every request.
#[derive(Debug, Default)]
pub struct Lifecycle {
    ready: AtomicBool,
    stopping: AtomicBool,
}

impl Lifecycle {
    /// True once every worker has loaded and warmed up, until the stop begins.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_stopping()
    }

    /// True from the first stop signal on: new work is refused with "shutting down".
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Marks the server ready (after warm-up).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Marks the stop as begun; readiness turns false at once. Returns false if it had
    /// already begun.
    pub fn begin_stop(&self) -> bool {
        self.ready.store(false, Ordering::Release);
        !self.stopping.swap(true, Ordering::AcqRel)
    }
}

/// The one count of work in flight: requests and their texts from the moment a front end
/// admits them (before any queue) until their last text is answered, failed or dropped. It is
/// admission control (`server.max_concurrent_requests` counts texts), what the stop's drain
/// waits on, and the `admitted_texts` / `in_flight_requests` gauges.
#[derive(Debug)]
pub struct Admission {
    texts: AtomicUsize,
    requests: AtomicUsize,
    limit: usize,
    texts_gauge: prometheus::IntGauge,
    requests_gauge: prometheus::IntGauge,
}

impl Admission {
    /// Room for `limit` texts, reporting to the two gauges.
    pub fn new(
        limit: usize,
        texts_gauge: prometheus::IntGauge,
        requests_gauge: prometheus::IntGauge,
    ) -> Arc<Admission> {
        Arc::new(Admission {
            texts: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            limit,
            texts_gauge,
            requests_gauge,
        })
    }

    /// The configured limit, in texts.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Texts admitted and not yet done.
    pub fn texts(&self) -> usize {
        self.texts.load(Ordering::Acquire)
    }

    /// Requests admitted and not yet done.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Acquire)
    }

    /// Admits one request of `texts` texts if they fit, else returns how many texts are in
    /// flight now.
    pub fn try_admit(self: &Arc<Self>, texts: usize) -> Result<Permit, usize> {
        let mut current = self.texts.load(Ordering::Acquire);
        loop {
            if current + texts > self.limit {
                return Err(current);
            }
            match self.texts.compare_exchange_weak(
                current,
                current + texts,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.requests.fetch_add(1, Ordering::AcqRel);
                    self.texts_gauge.add(texts as i64);
                    self.requests_gauge.inc();
                    return Ok(Permit {
                        admission: self.clone(),
                        texts,
                    });
                }
                Err(now) => current = now,
            }
        }
    }
}

/// One admitted request and its texts; dropping it (answered, failed or abandoned) gives their
/// room back. It travels with the request's work through the Router.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    texts: usize,
}

impl Permit {
    /// Texts this request holds.
    pub fn texts(&self) -> usize {
        self.texts
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let a = &self.admission;
        a.texts.fetch_sub(self.texts, Ordering::AcqRel);
        a.requests.fetch_sub(1, Ordering::AcqRel);
        a.texts_gauge.sub(self.texts as i64);
        a.requests_gauge.dec();
    }
}

/// Which kind of actor (a metric label, a restart count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ActorKind {
    /// The Supervisor.
    Supervisor,
    /// The Metrics actor.
    Metrics,
    /// A model worker.
    ModelWorker,
    /// A tokenizer thread.
    Tokenizer,
    /// The Router.
    Router,
}

impl ActorKind {
    /// The `actor` label of `actor_restarts_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Supervisor => "supervisor",
            ActorKind::Metrics => "metrics",
            ActorKind::ModelWorker => "model_worker",
            ActorKind::Tokenizer => "tokenizer",
            ActorKind::Router => "router",
        }
    }
}

/// One actor of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ActorId {
    /// The Supervisor.
    Supervisor,
    /// The Metrics actor.
    Metrics,
    /// Model worker N.
    ModelWorker(usize),
    /// Tokenizer thread N.
    Tokenizer(usize),
    /// Router N (one per model version; the first is 0).
    Router(usize),
}

impl ActorId {
    /// Its kind.
    pub fn kind(self) -> ActorKind {
        match self {
            ActorId::Supervisor => ActorKind::Supervisor,
            ActorId::Metrics => ActorKind::Metrics,
            ActorId::ModelWorker(_) => ActorKind::ModelWorker,
            ActorId::Tokenizer(_) => ActorKind::Tokenizer,
            ActorId::Router(_) => ActorKind::Router,
        }
    }
}

impl fmt::Display for ActorId {
    /// As logs and the dashboard name it: `model-worker-0`, `tokenizer-1`, `router`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActorId::Supervisor => f.write_str("supervisor"),
            ActorId::Metrics => f.write_str("metrics"),
            ActorId::ModelWorker(n) => write!(f, "model-worker-{n}"),
            ActorId::Tokenizer(n) => write!(f, "tokenizer-{n}"),
            ActorId::Router(0) => f.write_str("router"),
            ActorId::Router(n) => write!(f, "router-{n}"),
        }
    }
}

/// What an actor is doing, as the Supervisor, its watchdog and the logs see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ActorState {
    /// Created, not yet able to serve (loading a model, say).
    Starting,
    /// Waiting for work.
    Idle,
    /// Working since the given instant (inside a forward, for a model worker).
    Busy(Instant),
    /// Stopped and released what it held.
    Stopped,
}

impl ActorState {
    /// `starting`, `idle`, `busy` or `stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            ActorState::Starting => "starting",
            ActorState::Idle => "idle",
            ActorState::Busy(_) => "busy",
            ActorState::Stopped => "stopped",
        }
    }
}

/// Every actor's state. Written by the actors themselves on state changes (an uncontended
/// mutex, never on the per-request path of the front ends), read by the Supervisor's stop
/// sequence and by the abort watchdog, which must work even when the actix runtime does not.
#[derive(Debug, Default)]
pub struct ActorTable {
    states: Mutex<BTreeMap<ActorId, ActorState>>,
    /// Actors of retired model versions: gone for good (numbers are never reused), so a late
    /// "stopped" from their thread does not bring them back.
    forgotten: Mutex<std::collections::BTreeSet<ActorId>>,
}

impl ActorTable {
    /// Records `actor`'s state.
    pub fn set(&self, actor: ActorId, state: ActorState) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        if state == ActorState::Stopped
            && self
                .forgotten
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&actor)
        {
            return;
        }
        states.insert(actor, state);
    }

    /// Actors that have not stopped, with what they are doing, e.g.
    /// `model-worker-0 (busy for 12.3 s)`.
    pub fn running(&self) -> Vec<String> {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states
            .iter()
            .filter(|(_, s)| **s != ActorState::Stopped)
            .map(|(id, s)| match s {
                ActorState::Busy(since) => {
                    format!("{id} (busy for {:.1} s)", since.elapsed().as_secs_f64())
                }
                ActorState::Starting => format!("{id} (starting)"),
                _ => id.to_string(),
            })
            .collect()
    }

    /// How many actors of `kind` have not stopped.
    pub fn running_of(&self, kind: ActorKind) -> usize {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states
            .iter()
            .filter(|(id, s)| id.kind() == kind && **s != ActorState::Stopped)
            .count()
    }

    /// How many of `ids` have not stopped (an actor never recorded counts as stopped).
    pub fn running_among(&self, ids: &[ActorId]) -> usize {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        ids.iter()
            .filter(|id| states.get(id).is_some_and(|s| *s != ActorState::Stopped))
            .count()
    }

    /// Drops stopped actors from the table (a retired model version's), so that what it lists
    /// stays bounded however many reloads there were. Actors still running stay.
    pub fn forget(&self, ids: &[ActorId]) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let mut forgotten = self.forgotten.lock().unwrap_or_else(|p| p.into_inner());
        states.retain(|id, s| {
            let gone = ids.contains(id) && *s == ActorState::Stopped;
            if gone {
                forgotten.insert(*id);
            }
            !gone
        });
    }

    /// Every actor of `kind` with its state.
    pub fn of(&self, kind: ActorKind) -> Vec<(ActorId, ActorState)> {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states
            .iter()
            .filter(|(id, _)| id.kind() == kind)
            .map(|(id, s)| (*id, *s))
            .collect()
    }
}

/// The message of a caught panic, for logs and error replies.
pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

/// Runs `f`, turning a panic into its message: how the actors whose state lives on an actix
/// arbiter (the Supervisor, the Router, Metrics) notice their own panics, which the runtime
/// would otherwise swallow, leaving a dead actor behind a live address.
pub(crate) fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| panic_message(&p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_permit_counts_a_request_and_its_texts_until_dropped() {
        let texts = prometheus::IntGauge::new("t", "t").unwrap();
        let requests = prometheus::IntGauge::new("r", "r").unwrap();
        let a = Admission::new(10, texts.clone(), requests.clone());
        let p = a.try_admit(6).unwrap();
        assert_eq!(
            (a.texts(), a.requests(), texts.get(), requests.get()),
            (6, 1, 6, 1)
        );
        assert_eq!(a.try_admit(5).unwrap_err(), 6, "over the limit: refused");
        let q = a.try_admit(4).unwrap();
        assert_eq!((a.texts(), a.requests()), (10, 2));
        drop(p);
        drop(q);
        assert_eq!(
            (a.texts(), a.requests(), texts.get(), requests.get()),
            (0, 0, 0, 0)
        );
    }

    #[test]
    fn actors_are_named_and_counted_by_kind() {
        let t = ActorTable::default();
        t.set(ActorId::ModelWorker(0), ActorState::Idle);
        t.set(ActorId::ModelWorker(1), ActorState::Stopped);
        t.set(ActorId::Tokenizer(0), ActorState::Starting);
        assert_eq!(t.running_of(ActorKind::ModelWorker), 1);
        assert_eq!(
            t.running_among(&[ActorId::ModelWorker(1), ActorId::Tokenizer(0)]),
            1
        );
        t.forget(&[ActorId::ModelWorker(0), ActorId::ModelWorker(1)]);
        assert_eq!(
            t.of(ActorKind::ModelWorker),
            vec![(ActorId::ModelWorker(0), ActorState::Idle)],
            "only stopped actors are forgotten"
        );
        t.set(ActorId::ModelWorker(1), ActorState::Stopped);
        assert_eq!(t.running_of(ActorKind::ModelWorker), 1);
        assert_eq!(
            t.of(ActorKind::ModelWorker).len(),
            1,
            "a late stop stays forgotten"
        );
        assert_eq!(
            t.running(),
            vec!["model-worker-0", "tokenizer-0 (starting)"]
        );
        assert_eq!(ActorId::Tokenizer(3).kind().as_str(), "tokenizer");
    }
}
