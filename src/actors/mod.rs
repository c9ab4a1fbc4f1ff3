//! The actors of one actor-infer process and the little state they share.
//!
//! Start order (the Supervisor's): Metrics → ModelWorkers → Tokenizers → Router; the HTTP and
//! gRPC front ends send typed requests to the Router. Stop order is the reverse: front ends
//! stop taking work, the Router drains, then Tokenizers, then ModelWorkers (OTP-style).

pub mod metrics;
pub mod model_worker;
pub mod router;
pub mod supervisor;
pub mod tokenizer;

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Instant,
};

/// Lifecycle flags read by the front ends and the Router on every request.
#[derive(Debug, Default)]
pub struct Lifecycle {
    ready: AtomicBool,
    stopping: AtomicBool,
    in_flight: AtomicUsize,
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

    /// Requests accepted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Counts one accepted request until the returned guard is dropped.
    pub fn track(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }
}

/// One accepted request; dropping it (answered, failed or abandoned) uncounts it.
#[derive(Debug)]
pub struct InFlight(Arc<Lifecycle>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Admission control: texts in flight (tokenizing, queued or running) counted against
/// `server.max_concurrent_requests`. The front ends admit a request before it reaches any
/// queue; its [`Permit`] travels with its work and is released when the work is answered,
/// failed or dropped, so the count is what the server really holds.
#[derive(Debug)]
pub struct Admission {
    in_flight: AtomicUsize,
    limit: usize,
    gauge: prometheus::IntGauge,
}

impl Admission {
    /// An admission counter with room for `limit` texts, reporting to `gauge`.
    pub fn new(limit: usize, gauge: prometheus::IntGauge) -> Arc<Admission> {
        Arc::new(Admission {
            in_flight: AtomicUsize::new(0),
            limit,
            gauge,
        })
    }

    /// The configured limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Texts now admitted.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Admits `texts` texts if they fit, else returns how many are in flight now.
    pub fn try_admit(self: &Arc<Self>, texts: usize) -> Result<Permit, usize> {
        let mut current = self.in_flight.load(Ordering::Acquire);
        loop {
            if current + texts > self.limit {
                return Err(current);
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + texts,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.gauge.add(texts as i64);
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

/// Texts admitted by [`Admission`]; dropping it gives their room back.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    texts: usize,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission
            .in_flight
            .fetch_sub(self.texts, Ordering::AcqRel);
        self.admission.gauge.sub(self.texts as i64);
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

/// Every actor's name and state. Written by the actors themselves (cheap: one uncontended
/// mutex per state change), read by the Supervisor's stop sequence and by the abort watchdog,
/// which must work even when the actix runtime does not.
#[derive(Debug, Default)]
pub struct ActorTable {
    states: Mutex<BTreeMap<String, ActorState>>,
}

impl ActorTable {
    /// Records `name`'s state.
    pub fn set(&self, name: &str, state: ActorState) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.insert(name.to_string(), state);
    }

    /// Names of actors that have not stopped, with what they are doing, e.g.
    /// `model-worker-0 (busy for 12.3 s)`.
    pub fn running(&self) -> Vec<String> {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states
            .iter()
            .filter(|(_, s)| **s != ActorState::Stopped)
            .map(|(name, s)| match s {
                ActorState::Busy(since) => {
                    format!("{name} (busy for {:.1} s)", since.elapsed().as_secs_f64())
                }
                ActorState::Starting => format!("{name} (starting)"),
                _ => name.clone(),
            })
            .collect()
    }

    /// How many actors whose name starts with `prefix` have not stopped.
    pub fn running_with_prefix(&self, prefix: &str) -> usize {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states
            .iter()
            .filter(|(n, s)| n.starts_with(prefix) && **s != ActorState::Stopped)
            .count()
    }

    /// Snapshot of every actor's state.
    pub fn snapshot(&self) -> Vec<(String, ActorState)> {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.iter().map(|(n, s)| (n.clone(), *s)).collect()
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
