//! The [`Recorder`]: the handles the hot path records through, atomics only.

use std::{sync::Arc, time::Duration};

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use serde_json::{Value, json};

use crate::actors::{ActorKind, batcher::Priority, router::Timings};

use super::{Stage, TRANSPORTS, names, window::*};

/// One priority's series of one model.
#[derive(Clone)]
struct PrioritySeries {
    queue: Histogram,
    request: Histogram,
    texts: IntCounter,
}

/// The metric families whose series carry a `model` label, from which each model's
/// [`Recorder`] resolves its own series.
#[derive(Clone)]
struct Families {
    requests: IntCounterVec,
    stages: HistogramVec,
    batch_size: HistogramVec,
    batch_tokens: HistogramVec,
    queue_depth: IntGaugeVec,
    worker_busy: IntGaugeVec,
    tokens: IntCounterVec,
    skipped: IntCounterVec,
    version: IntGaugeVec,
    loads: IntCounterVec,
    reloads: IntCounterVec,
    priority_queue: HistogramVec,
    priority_request: HistogramVec,
    priority_texts: IntCounterVec,
    /// The models [`Recorder::models`] last published, whose `model_version` series exist.
    published: Arc<std::sync::Mutex<Vec<String>>>,
}

/// Cheap, cloneable handles to every metric; shared by all actors and threads. Every method
/// is a few atomic operations on pre-resolved series: no lock, no allocation. The Recorder
/// [`Recorder::new`] returns labels its series `model=""` (requests refused before any model
/// was chosen); [`Recorder::for_model`] gives one model's.
#[derive(Clone)]
pub struct Recorder {
    /// The `model` label of this Recorder's series.
    pub(super) model: Arc<str>,
    families: Families,
    /// `requests_total` by transport, then outcome (pre-resolved for every known outcome).
    pub(super) requests: Arc<Vec<Vec<(&'static str, IntCounter)>>>,
    pub(super) outcomes: Arc<Vec<&'static str>>,
    pub(super) stages: Arc<Vec<Histogram>>,
    pub(super) batch_size: Histogram,
    pub(super) batch_tokens: Histogram,
    pub(super) queue_depth: IntGauge,
    /// Requests admitted (the admission count moves it).
    pub in_flight: IntGauge,
    /// Texts admitted (the admission count moves it).
    pub admitted: IntGauge,
    pub(super) ready: IntGauge,
    pub(super) restarts: IntCounterVec,
    pub(super) tokens: IntCounter,
    pub(super) gpu_process_memory: IntGaugeVec,
    pub(super) gpu_device_used: IntGaugeVec,
    pub(super) gpu_device_total: IntGaugeVec,
    pub(super) cpu_percent: prometheus::Gauge,
    pub(super) totals: Arc<Totals>,
    /// This model's share of `totals` (none for the Recorder of no model).
    pub(super) model_totals: Option<Arc<Totals>>,
    /// Answered requests by priority ([`Priority::ALL`]'s order), over every model.
    pub(super) priority_totals: Arc<[Totals; 2]>,
    /// This model's per-priority series, in [`Priority::ALL`]'s order.
    priorities: Arc<[PrioritySeries; 2]>,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(names::NAMESPACE)
}

impl Recorder {
    /// Creates every metric and registers it in `registry`, resolving the series the hot path
    /// touches: `outcomes` (every `error_type` and `ok`) per transport.
    pub fn new(registry: &Registry, outcomes: &[&'static str]) -> prometheus::Result<Recorder> {
        let latency_buckets = prometheus::exponential_buckets(0.0001, 2.0, 18)?;
        let families = Families {
            requests: IntCounterVec::new(
                opts(
                    names::REQUESTS_TOTAL,
                    "Requests answered, by model, transport and outcome.",
                ),
                &["model", "transport", "outcome"],
            )?,
            stages: HistogramVec::new(
                HistogramOpts::from(opts(names::STAGE_SECONDS, "Time per pipeline stage."))
                    .buckets(latency_buckets.clone()),
                &["model", "stage"],
            )?,
            batch_size: HistogramVec::new(
                HistogramOpts::from(opts(names::BATCH_SIZE, "Texts per forward."))
                    .buckets(prometheus::exponential_buckets(1.0, 2.0, 10)?),
                &["model"],
            )?,
            batch_tokens: HistogramVec::new(
                HistogramOpts::from(opts(names::BATCH_TOKENS, "Padded tokens per forward."))
                    .buckets(prometheus::exponential_buckets(8.0, 2.0, 14)?),
                &["model"],
            )?,
            queue_depth: IntGaugeVec::new(
                opts(names::QUEUE_DEPTH, "Texts waiting for a worker."),
                &["model"],
            )?,
            worker_busy: IntGaugeVec::new(
                opts(names::WORKER_BUSY, "1 while the worker runs a forward."),
                &["model", "worker"],
            )?,
            tokens: IntCounterVec::new(
                opts(names::TOKENS_TOTAL, "Tokens run through the model."),
                &["model"],
            )?,
            skipped: IntCounterVec::new(
                opts(
                    names::SKIPPED_TOTAL,
                    "Queued texts dropped before inference.",
                ),
                &["model", "reason"],
            )?,
            version: IntGaugeVec::new(
                opts(
                    names::MODEL_VERSION,
                    "The version of each model serving now (1 at start, +1 per replacement).",
                ),
                &["model"],
            )?,
            loads: IntCounterVec::new(
                opts(
                    names::MODEL_LOADS_TOTAL,
                    "New versions loaded by reloads, by model and outcome (ok, failed).",
                ),
                &["model", "outcome"],
            )?,
            reloads: IntCounterVec::new(
                opts(names::RELOADS_TOTAL, "Reloads, by outcome (ok, failed)."),
                &["outcome"],
            )?,
            priority_queue: HistogramVec::new(
                HistogramOpts::from(opts(
                    names::PRIORITY_QUEUE_SECONDS,
                    "Per priority: a request's wait from queued to its first forward.",
                ))
                .buckets(latency_buckets.clone()),
                &["model", "priority"],
            )?,
            priority_request: HistogramVec::new(
                HistogramOpts::from(opts(
                    names::PRIORITY_REQUEST_SECONDS,
                    "Per priority: a request's time from acceptance to its answer.",
                ))
                .buckets(latency_buckets.clone()),
                &["model", "priority"],
            )?,
            priority_texts: IntCounterVec::new(
                opts(names::PRIORITY_TEXTS_TOTAL, "Per priority: texts answered."),
                &["model", "priority"],
            )?,
            published: Default::default(),
        };
        // The Recorder of no model counts requests refused before a model was chosen, under
        // `model=""`, made on first use; it runs no batches, so its batch handles are
        // placeholders that are never registered (no empty `model=""` series).
        let unregistered = |name: &str| {
            Histogram::with_opts(HistogramOpts::new(name, "placeholder").buckets(vec![1.0]))
        };
        let r = Recorder {
            model: Arc::from(""),
            requests: Arc::new(Vec::new()),
            outcomes: Arc::new(outcomes.to_vec()),
            stages: Arc::new(
                Stage::ALL
                    .iter()
                    .map(|s| unregistered(s.label()))
                    .collect::<prometheus::Result<_>>()?,
            ),
            batch_size: unregistered("batch_size")?,
            batch_tokens: unregistered("batch_tokens")?,
            queue_depth: IntGauge::new("queue_depth", "placeholder")?,
            tokens: IntCounter::new("tokens", "placeholder")?,
            families,
            in_flight: IntGauge::with_opts(opts(
                names::IN_FLIGHT,
                "Requests admitted, not yet done.",
            ))?,
            admitted: IntGauge::with_opts(opts(
                names::ADMITTED_TEXTS,
                "Texts admitted and still held, against server.max_concurrent_requests.",
            ))?,
            ready: IntGauge::with_opts(opts(names::READY, "1 when ready to serve."))?,
            restarts: IntCounterVec::new(
                opts(names::RESTARTS_TOTAL, "Actor restarts after a panic."),
                &["actor"],
            )?,
            gpu_process_memory: IntGaugeVec::new(
                opts(
                    names::GPU_PROCESS_MEMORY,
                    "GPU memory this process holds (NVML, per process).",
                ),
                &["device"],
            )?,
            gpu_device_used: IntGaugeVec::new(
                opts(
                    names::GPU_DEVICE_MEMORY_USED,
                    "GPU memory in use on the device, all processes (NVML).",
                ),
                &["device"],
            )?,
            gpu_device_total: IntGaugeVec::new(
                opts(names::GPU_DEVICE_MEMORY_TOTAL, "The GPU's memory (NVML)."),
                &["device"],
            )?,
            cpu_percent: prometheus::Gauge::with_opts(opts(
                names::CPU_PERCENT,
                "Process CPU use over the last 2 s, percent of one core.",
            ))?,
            totals: Arc::new(Totals::new()),
            model_totals: None,
            priority_totals: Arc::new([Totals::new(), Totals::new()]),
            priorities: Arc::new([
                PrioritySeries {
                    queue: unregistered("priority_queue")?,
                    request: unregistered("priority_request")?,
                    texts: IntCounter::new("priority_texts", "placeholder")?,
                },
                PrioritySeries {
                    queue: unregistered("priority_queue")?,
                    request: unregistered("priority_request")?,
                    texts: IntCounter::new("priority_texts", "placeholder")?,
                },
            ]),
        };
        let f = &r.families;
        registry.register(Box::new(f.requests.clone()))?;
        registry.register(Box::new(f.stages.clone()))?;
        registry.register(Box::new(f.batch_size.clone()))?;
        registry.register(Box::new(f.batch_tokens.clone()))?;
        registry.register(Box::new(f.queue_depth.clone()))?;
        registry.register(Box::new(f.worker_busy.clone()))?;
        registry.register(Box::new(f.tokens.clone()))?;
        registry.register(Box::new(f.skipped.clone()))?;
        registry.register(Box::new(f.version.clone()))?;
        registry.register(Box::new(f.loads.clone()))?;
        registry.register(Box::new(f.reloads.clone()))?;
        registry.register(Box::new(f.priority_queue.clone()))?;
        registry.register(Box::new(f.priority_request.clone()))?;
        registry.register(Box::new(f.priority_texts.clone()))?;
        registry.register(Box::new(r.in_flight.clone()))?;
        registry.register(Box::new(r.admitted.clone()))?;
        registry.register(Box::new(r.ready.clone()))?;
        registry.register(Box::new(r.restarts.clone()))?;
        registry.register(Box::new(r.gpu_process_memory.clone()))?;
        registry.register(Box::new(r.gpu_device_used.clone()))?;
        registry.register(Box::new(r.gpu_device_total.clone()))?;
        registry.register(Box::new(r.cpu_percent.clone()))?;
        Ok(r)
    }

    /// The same metrics, with this model's series (`model="name"`) pre-resolved. Names come
    /// from the experiment file, so the label stays bounded.
    pub fn for_model(&self, name: &str) -> Recorder {
        let f = &self.families;
        Recorder {
            model: Arc::from(name),
            requests: Arc::new(
                TRANSPORTS
                    .iter()
                    .map(|t| {
                        self.outcomes
                            .iter()
                            .map(|o| (*o, f.requests.with_label_values(&[name, t, o])))
                            .collect()
                    })
                    .collect(),
            ),
            stages: Arc::new(
                Stage::ALL
                    .iter()
                    .map(|s| f.stages.with_label_values(&[name, s.label()]))
                    .collect(),
            ),
            batch_size: f.batch_size.with_label_values(&[name]),
            batch_tokens: f.batch_tokens.with_label_values(&[name]),
            queue_depth: f.queue_depth.with_label_values(&[name]),
            tokens: f.tokens.with_label_values(&[name]),
            model_totals: Some(Arc::new(Totals::new())),
            priorities: Arc::new(Priority::ALL.map(|p| PrioritySeries {
                queue: f.priority_queue.with_label_values(&[name, p.as_str()]),
                request: f.priority_request.with_label_values(&[name, p.as_str()]),
                texts: f.priority_texts.with_label_values(&[name, p.as_str()]),
            })),
            ..self.clone()
        }
    }

    /// A request of `priority` was answered with `texts` rows, its time spent as `timings`:
    /// the per-priority series and the dashboard's per-priority window.
    pub fn priority(&self, priority: Priority, texts: usize, timings: &Timings) {
        let i = priority as usize;
        let p = &self.priorities[i];
        p.queue.observe(timings.queue.as_secs_f64());
        p.request.observe(timings.total.as_secs_f64());
        p.texts.inc_by(texts as u64);
        self.priority_totals[i].add(Ok((texts, timings)));
    }

    /// Every total, now.
    pub(super) fn sample(&self) -> Sample {
        Sample {
            all: self.totals.sample(),
            by_priority: std::array::from_fn(|i| self.priority_totals[i].sample()),
        }
    }

    /// This model's figures since its version started, in the JSON dashboard's terms.
    pub fn model_figures(&self) -> Value {
        let Some(t) = &self.model_totals else {
            return Value::Null;
        };
        let s = t.sample();
        json!({
            "requests": s.requests,
            "errors": s.errors,
            "texts": s.texts,
            "avg_ms": s.avg_ms(4),
            "p99_ms": s.quantile_ms(0.99).map_or(Value::Null, |v| json!(round3(v))),
            "stage_timings": s.stage_timings(),
            "queue_depth": self.queue_depth.get(),
        })
    }

    /// The models serving now and their versions (`model_version`); models no longer served
    /// lose their series.
    pub fn models(&self, serving: &[(&str, u64)]) {
        let f = &self.families;
        let mut published = f.published.lock().unwrap_or_else(|p| p.into_inner());
        for old in published.iter() {
            if !serving.iter().any(|(n, _)| n == old) {
                let _ = f.version.remove_label_values(&[old]);
            }
        }
        for (name, version) in serving {
            f.version.with_label_values(&[name]).set(*version as i64);
        }
        *published = serving.iter().map(|(n, _)| n.to_string()).collect();
    }

    /// Workers that stopped for good (a retired version's) lose their `worker_busy` series.
    pub fn forget_workers(&self, workers: &[usize]) {
        for w in workers {
            let _ = self
                .families
                .worker_busy
                .remove_label_values(&[&*self.model, &w.to_string()]);
        }
    }

    /// A reload ended, every model loaded (`ok`) or not.
    pub fn reload(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.families.reloads.with_label_values(&[outcome]).inc();
    }

    /// A reload loaded a new version of `model`, or failed to.
    pub fn model_load(&self, model: &str, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.families
            .loads
            .with_label_values(&[model, outcome])
            .inc();
    }

    /// One request answered over `transport` (`http` or `grpc`): `Ok` with its texts and
    /// timings, or the error type it failed with. Feeds the counter and the dashboard.
    pub fn request(&self, transport: &str, outcome: Result<(usize, &Timings), &str>) {
        let label = match outcome {
            Ok(_) => "ok",
            Err(kind) => kind,
        };
        let known = TRANSPORTS
            .iter()
            .position(|t| *t == transport)
            .and_then(|t| self.requests.get(t)?.iter().find(|(o, _)| *o == label));
        match known {
            Some((_, counter)) => counter.inc(),
            None => self
                .families
                .requests
                .with_label_values(&[&*self.model, transport, label])
                .inc(),
        }
        for t in std::iter::once(&self.totals).chain(self.model_totals.as_ref()) {
            t.add(outcome);
        }
    }

    /// Time spent in `stage`.
    pub fn stage(&self, stage: Stage, d: Duration) {
        self.stages[stage as usize].observe(d.as_secs_f64());
    }

    /// One forward of `texts` texts, `padded` padded tokens and `tokens` real tokens.
    pub fn batch(&self, texts: usize, padded: usize, tokens: usize) {
        self.batch_size.observe(texts as f64);
        self.batch_tokens.observe(padded as f64);
        self.tokens.inc_by(tokens as u64);
    }

    /// Texts now waiting for a worker.
    pub fn queue_depth(&self, n: usize) {
        self.queue_depth.set(n as i64);
    }

    /// Readiness changed.
    pub fn ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// Worker `index`'s `worker_busy` gauge (1 inside a forward), resolved once by the worker
    /// so the forward's path neither allocates nor looks it up.
    pub fn worker_busy(&self, index: usize) -> IntGauge {
        self.families
            .worker_busy
            .with_label_values(&[&*self.model, &index.to_string()])
    }

    /// An actor of `kind` was restarted after a panic (or, for the Router and the Supervisor,
    /// panicked and stopped the server).
    pub fn restart(&self, kind: ActorKind) {
        self.restarts.with_label_values(&[kind.as_str()]).inc();
    }

    /// Queued texts dropped before inference for `reason`.
    pub fn skipped(&self, reason: &str, n: usize) {
        self.families
            .skipped
            .with_label_values(&[&*self.model, reason])
            .inc_by(n as u64);
    }
}
