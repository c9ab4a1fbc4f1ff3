//! Metrics: every metric name in one place ([`names`]), the handles the hot path records
//! through ([`Recorder`]: atomics only, no lock and no message per observation), and the
//! Metrics actor that owns the registry and renders it for `GET /metrics`.
//!
//! Owns: the Prometheus registry, the rolling window behind the JSON dashboard, and the
//! process/GPU samplers. Sent to by: the HTTP front end ([`Render`], [`Snapshot`]), the
//! Supervisor ([`InjectFault`], tests only). Runs on an arbiter (thread) of its own, at a lower
//! scheduling priority, so a flood of `GET /metrics` competes with inference as little as it
//! can. A panic in it restarts it with its window rebuilt (the counters live on in the
//! [`Recorder`]), counted by the Supervisor.
//!
//! The JSON dashboard keeps the original Python server's field names (`throughput_qps`,
//! `avg_ms`, `stage_timings.avg_tokenize_ms`, `stage_timings.avg_inference_ms`,
//! `stage_timings.avg_queue_wait_ms`, `stage_timings.mp_queue_receive_ms`, `gpu_memory_mb`,
//! `cpu_percent`) so its diagnostic workflow keeps working; `gpu_memory_mb` is the GPU memory
//! this process holds (NVML's per-process figure), null, not zero, where there is no GPU. Its
//! window is the difference of cumulative counters sampled once a second, and its percentiles
//! come from a fine latency histogram: reading it sorts nothing and locks nothing the requests
//! touch.

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use actix::prelude::*;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use serde_json::{Value, json};

use super::{
    ActorId, ActorKind, ActorTable, Admission, Lifecycle, batcher::Priority, models::Directory,
    router::Timings, supervisor::ChildPanicked,
};
use crate::{
    fault::Fault,
    model::device::{GpuInfo, Nvml},
};

/// Metric names, Prometheus style: one namespace, `_total` counters, `_seconds` durations.
pub mod names {
    /// Prefix of every metric.
    pub const NAMESPACE: &str = "actor_infer";
    /// Requests answered, by transport and outcome (`ok` or an `error_type`).
    pub const REQUESTS_TOTAL: &str = "requests_total";
    /// Per-stage latency; label `stage`: tokenize, queue, inference, handoff, total.
    pub const STAGE_SECONDS: &str = "stage_duration_seconds";
    /// Texts per forward.
    pub const BATCH_SIZE: &str = "batch_size";
    /// Padded tokens per forward.
    pub const BATCH_TOKENS: &str = "batch_tokens";
    /// Texts waiting for a worker.
    pub const QUEUE_DEPTH: &str = "queue_depth";
    /// Requests admitted and not yet done.
    pub const IN_FLIGHT: &str = "in_flight_requests";
    /// Texts admitted and still held (tokenizing, queued or running), counted against
    /// `server.max_concurrent_requests`.
    pub const ADMITTED_TEXTS: &str = "admitted_texts";
    /// 1 when the model is loaded and warmed up and the server is not stopping.
    pub const READY: &str = "ready";
    /// 1 while a worker is inside a forward; label `worker`.
    pub const WORKER_BUSY: &str = "worker_busy";
    /// Actor restarts after a panic; label `actor` (tokenizer, model_worker, metrics, router,
    /// supervisor; the last two stop the server).
    pub const RESTARTS_TOTAL: &str = "actor_restarts_total";
    /// Tokens run through the model (unpadded).
    pub const TOKENS_TOTAL: &str = "tokens_total";
    /// Queued texts dropped before inference; label `reason` (client_gone, deadline).
    pub const SKIPPED_TOTAL: &str = "skipped_texts_total";
    /// GPU memory this process holds (NVML's per-process figure); label `device`. Absent where
    /// there is no NVIDIA GPU.
    pub const GPU_PROCESS_MEMORY: &str = "gpu_process_memory_bytes";
    /// GPU memory in use on the whole device, by every process (NVML); label `device`.
    pub const GPU_DEVICE_MEMORY_USED: &str = "gpu_device_memory_used_bytes";
    /// The device's memory (NVML); label `device`.
    pub const GPU_DEVICE_MEMORY_TOTAL: &str = "gpu_device_memory_total_bytes";
    /// Process CPU use over the last sampling interval, percent of one core.
    pub const CPU_PERCENT: &str = "process_cpu_percent";
    /// The version of each model serving now; label `model`.
    pub const MODEL_VERSION: &str = "model_version";
    /// New versions loaded by reloads; labels `model`, `outcome`.
    pub const MODEL_LOADS_TOTAL: &str = "model_loads_total";
    /// Reloads; label `outcome`.
    pub const RELOADS_TOTAL: &str = "reloads_total";
    /// Per priority: a request's wait from queued to its first forward; labels `model`,
    /// `priority` (`interactive`, `batch`).
    pub const PRIORITY_QUEUE_SECONDS: &str = "priority_queue_duration_seconds";
    /// Per priority: a request's time from the Router accepting it to its answer.
    pub const PRIORITY_REQUEST_SECONDS: &str = "priority_request_duration_seconds";
    /// Per priority: texts answered.
    pub const PRIORITY_TEXTS_TOTAL: &str = "priority_texts_total";
}

/// Stages of the pipeline, the `stage` label's values.
#[derive(Debug, Clone, Copy)]
pub enum Stage {
    /// In a tokenizer thread.
    Tokenize,
    /// Tokenized, waiting for a worker.
    Queue,
    /// Inside the forward (one observation per batch).
    Inference,
    /// From acceptance to answer.
    Total,
    /// Messages in transit between actors (front end → Router → worker).
    Handoff,
}

impl Stage {
    const ALL: [Stage; 5] = [
        Stage::Tokenize,
        Stage::Queue,
        Stage::Inference,
        Stage::Total,
        Stage::Handoff,
    ];

    fn label(self) -> &'static str {
        match self {
            Stage::Tokenize => "tokenize",
            Stage::Queue => "queue",
            Stage::Inference => "inference",
            Stage::Total => "total",
            Stage::Handoff => "handoff",
        }
    }
}

/// The transports requests come over, the `transport` label's values.
pub const TRANSPORTS: [&str; 2] = ["http", "grpc"];

/// Buckets of the dashboard's latency histogram: 10 µs × 1.1^i, i < [`FINE_BUCKETS`] (up to
/// half an hour), so a percentile read from it is within 5 % of the true one.
const FINE_BUCKETS: usize = 200;
const FINE_BASE_US: f64 = 10.0;
const FINE_RATIO: f64 = 1.1;

fn fine_bucket(d: Duration) -> usize {
    let us = d.as_secs_f64() * 1e6;
    if us <= FINE_BASE_US {
        return 0;
    }
    ((us / FINE_BASE_US).ln() / FINE_RATIO.ln())
        .floor()
        .min((FINE_BUCKETS - 1) as f64) as usize
}

/// Cumulative per-request figures for the dashboard: plain atomics, added to by every answered
/// request and sampled by the Metrics actor once a second.
#[derive(Debug)]
struct Totals {
    requests: AtomicU64,
    errors: AtomicU64,
    texts: AtomicU64,
    /// Sums over successful requests, microseconds: tokenize, queue, inference, handoff, total.
    sums_us: [AtomicU64; 5],
    latency: Vec<AtomicU64>,
}

/// One sample of [`Totals`].
#[derive(Debug, Clone, Default)]
struct Sampled {
    requests: u64,
    errors: u64,
    texts: u64,
    sums_us: [u64; 5],
    latency: Vec<u64>,
}

impl Totals {
    fn new() -> Totals {
        Totals {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            texts: AtomicU64::new(0),
            sums_us: Default::default(),
            latency: (0..FINE_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// One request answered: `Ok` with its texts and timings, or failed.
    fn add(&self, outcome: Result<(usize, &Timings), &str>) {
        let r = Ordering::Relaxed;
        self.requests.fetch_add(1, r);
        match outcome {
            Ok((texts, timings)) => {
                self.texts.fetch_add(texts as u64, r);
                let us = |d: Duration| d.as_micros() as u64;
                for (i, d) in [
                    timings.tokenize,
                    timings.queue,
                    timings.inference,
                    timings.handoff,
                    timings.total,
                ]
                .into_iter()
                .enumerate()
                {
                    self.sums_us[i].fetch_add(us(d), r);
                }
                self.latency[fine_bucket(timings.total)].fetch_add(1, r);
            }
            Err(_) => {
                self.errors.fetch_add(1, r);
            }
        }
    }

    fn sample(&self) -> Sampled {
        let r = Ordering::Relaxed;
        Sampled {
            requests: self.requests.load(r),
            errors: self.errors.load(r),
            texts: self.texts.load(r),
            sums_us: std::array::from_fn(|i| self.sums_us[i].load(r)),
            latency: self.latency.iter().map(|b| b.load(r)).collect(),
        }
    }
}

impl Sampled {
    /// The average of stage `i` (tokenize, queue, inference, handoff, total) over successful
    /// requests, milliseconds; null with none.
    fn avg_ms(&self, i: usize) -> Value {
        let ok = self.requests - self.errors;
        if ok == 0 {
            Value::Null
        } else {
            json!(round3(self.sums_us[i] as f64 / ok as f64 / 1e3))
        }
    }

    /// The dashboard's `stage_timings`, under the original server's names.
    fn stage_timings(&self) -> Value {
        json!({
            "avg_tokenize_ms": self.avg_ms(0),
            "avg_queue_wait_ms": self.avg_ms(1),
            "avg_inference_ms": self.avg_ms(2),
            "mp_queue_receive_ms": self.avg_ms(3),
            "avg_total_ms": self.avg_ms(4),
        })
    }

    /// `self − earlier`, counter by counter.
    fn since(&self, earlier: &Sampled) -> Sampled {
        Sampled {
            requests: self.requests - earlier.requests,
            errors: self.errors - earlier.errors,
            texts: self.texts - earlier.texts,
            sums_us: std::array::from_fn(|i| self.sums_us[i] - earlier.sums_us[i]),
            latency: self
                .latency
                .iter()
                .zip(earlier.latency.iter().chain(std::iter::repeat(&0)))
                .map(|(a, b)| a - b)
                .collect(),
        }
    }

    /// The `q` quantile of the latency histogram, milliseconds (the bucket's geometric
    /// middle), or `None` with no samples.
    fn quantile_ms(&self, q: f64) -> Option<f64> {
        let n: u64 = self.latency.iter().sum();
        if n == 0 {
            return None;
        }
        let rank = ((n as f64 * q).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (i, c) in self.latency.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let lo = FINE_BASE_US * FINE_RATIO.powi(i as i32);
                let mid = if i == 0 {
                    lo / 2.0
                } else {
                    lo * FINE_RATIO.sqrt()
                };
                return Some(mid / 1e3);
            }
        }
        None
    }
}

/// One sample of the totals: every request's, and each priority's (answered requests only).
#[derive(Debug, Clone, Default)]
struct Sample {
    all: Sampled,
    by_priority: [Sampled; 2],
}

impl Sample {
    fn since(&self, earlier: &Sample) -> Sample {
        Sample {
            all: self.all.since(&earlier.all),
            by_priority: std::array::from_fn(|i| {
                self.by_priority[i].since(&earlier.by_priority[i])
            }),
        }
    }
}

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
    model: Arc<str>,
    families: Families,
    /// `requests_total` by transport, then outcome (pre-resolved for every known outcome).
    requests: Arc<Vec<Vec<(&'static str, IntCounter)>>>,
    outcomes: Arc<Vec<&'static str>>,
    stages: Arc<Vec<Histogram>>,
    batch_size: Histogram,
    batch_tokens: Histogram,
    queue_depth: IntGauge,
    /// Requests admitted (the admission count moves it).
    pub in_flight: IntGauge,
    /// Texts admitted (the admission count moves it).
    pub admitted: IntGauge,
    ready: IntGauge,
    restarts: IntCounterVec,
    tokens: IntCounter,
    gpu_process_memory: IntGaugeVec,
    gpu_device_used: IntGaugeVec,
    gpu_device_total: IntGaugeVec,
    cpu_percent: prometheus::Gauge,
    totals: Arc<Totals>,
    /// This model's share of `totals` (none for the Recorder of no model).
    model_totals: Option<Arc<Totals>>,
    /// Answered requests by priority ([`Priority::ALL`]'s order), over every model.
    priority_totals: Arc<[Totals; 2]>,
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
    fn sample(&self) -> Sample {
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

/// Facts the dashboard shows beside the numbers.
pub struct Facts {
    /// Experiment name.
    pub experiment: String,
    /// Model name.
    pub model: String,
    /// Device, as users write it.
    pub device: String,
    /// The rolling window.
    pub window: Duration,
    /// The models serving now (their rows in the dashboard).
    pub models: Arc<Directory>,
}

/// How often the Metrics actor samples CPU, memory and GPU memory.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// How often it samples the request totals for the window.
const WINDOW_TICK: Duration = Duration::from_secs(1);

/// This process's CPU time and resident memory (Linux: procfs, the prometheus process
/// collector's source; elsewhere none).
fn process_figures() -> Option<(Duration, u64)> {
    #[cfg(target_os = "linux")]
    {
        let stat = procfs::process::Process::myself().ok()?.stat().ok()?;
        let ticks = procfs::ticks_per_second() as f64;
        let cpu = Duration::from_secs_f64((stat.utime + stat.stime) as f64 / ticks);
        Some((cpu, stat.rss * procfs::page_size()))
    }
    #[cfg(not(target_os = "linux"))]
    None
}

/// What the Metrics actor rebuilds when it restarts.
struct State {
    /// Samples of the totals, oldest first, one per [`WINDOW_TICK`], spanning the window.
    ring: VecDeque<(Instant, Sample)>,
    cpu_percent: Option<f64>,
    rss_bytes: Option<u64>,
    last_cpu: Option<(Instant, Duration)>,
    gpu: Option<Nvml>,
    gpus: Vec<GpuInfo>,
}

impl State {
    fn new(recorder: &Recorder) -> State {
        let mut ring = VecDeque::new();
        ring.push_back((Instant::now(), recorder.sample()));
        State {
            ring,
            cpu_percent: None,
            rss_bytes: None,
            last_cpu: None,
            gpu: Nvml::open(),
            gpus: Vec::new(),
        }
    }
}

/// Owns the registry (with the process collector: CPU seconds, resident memory, open fds).
pub struct Metrics {
    registry: Registry,
    recorder: Recorder,
    facts: Facts,
    lifecycle: Arc<Lifecycle>,
    admission: Arc<Admission>,
    table: Arc<ActorTable>,
    supervisor: Recipient<ChildPanicked>,
    started: Instant,
    state: State,
}

impl Metrics {
    /// The Metrics actor over `registry` (which holds `recorder`'s metrics); it adds the
    /// process collector.
    pub fn new(
        registry: Registry,
        recorder: Recorder,
        facts: Facts,
        lifecycle: Arc<Lifecycle>,
        admission: Arc<Admission>,
        table: Arc<ActorTable>,
        supervisor: Recipient<ChildPanicked>,
    ) -> prometheus::Result<Metrics> {
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let state = State::new(&recorder);
        Ok(Metrics {
            registry,
            recorder,
            facts,
            lifecycle,
            admission,
            table,
            supervisor,
            started: Instant::now(),
            state,
        })
    }

    /// Runs one of its steps; a panic restarts the actor in place: the window and samplers
    /// are rebuilt, the Supervisor counts the restart.
    fn guarded<T>(&mut self, what: &str, step: impl FnOnce(&mut Metrics) -> T) -> Option<T> {
        match super::catch(|| step(self)) {
            Ok(v) => Some(v),
            Err(message) => {
                tracing::error!(actor = "metrics", %message, "metrics panicked while {what}; restarting it");
                self.state = State::new(&self.recorder);
                self.table.set(ActorId::Metrics, super::ActorState::Idle);
                self.supervisor.do_send(ChildPanicked {
                    actor: ActorId::Metrics,
                    message,
                });
                None
            }
        }
    }

    fn tick(&mut self) {
        let now = Instant::now();
        let s = &mut self.state;
        s.ring.push_back((now, self.recorder.sample()));
        // Keep the newest sample that is at least a window old, and everything after it.
        while s.ring.len() > 2 && now.duration_since(s.ring[1].0) >= self.facts.window {
            s.ring.pop_front();
        }
    }

    fn sample(&mut self) {
        let s = &mut self.state;
        if let Some((cpu, rss)) = process_figures() {
            let now = Instant::now();
            if let Some((then, before)) = s.last_cpu {
                let wall = now.duration_since(then).as_secs_f64();
                if wall > 0.0 {
                    let pct = cpu.saturating_sub(before).as_secs_f64() / wall * 100.0;
                    s.cpu_percent = Some(pct);
                    self.recorder.cpu_percent.set(pct);
                }
            }
            s.last_cpu = Some((now, cpu));
            s.rss_bytes = Some(rss);
        }
        if let Some(gpu) = &s.gpu {
            s.gpus = gpu.gpus();
            let me = std::process::id();
            for g in &s.gpus {
                let device = g.index.to_string();
                let r = &self.recorder;
                r.gpu_process_memory
                    .with_label_values(&[&device])
                    .set(own_gpu_memory(g, me) as i64);
                r.gpu_device_used
                    .with_label_values(&[&device])
                    .set(g.used as i64);
                r.gpu_device_total
                    .with_label_values(&[&device])
                    .set(g.total as i64);
            }
        }
    }

    /// The JSON dashboard.
    fn snapshot(&self) -> Value {
        let s = &self.state;
        let now = Instant::now();
        let sample = self.recorder.sample();
        let (since, base) = s
            .ring
            .iter()
            .find(|(at, _)| now.duration_since(*at) <= self.facts.window)
            .or(s.ring.front())
            .map(|(at, v)| (*at, v.clone()))
            .unwrap_or((self.started, Sample::default()));
        let window = sample.since(&base);
        let totals = sample.all;
        let w = window.all;
        let span = now.duration_since(since).as_secs_f64().max(1e-3);
        // Per priority, over the window: answered requests, texts, latency, queue wait.
        let priorities: serde_json::Map<String, Value> = Priority::ALL
            .iter()
            .zip(&window.by_priority)
            .map(|(p, w)| {
                let q = |x: f64| w.quantile_ms(x).map_or(Value::Null, |v| json!(round3(v)));
                (
                    p.as_str().to_string(),
                    json!({
                        "requests": w.requests,
                        "texts": w.texts,
                        "throughput_qps": round3(w.requests as f64 / span),
                        "texts_per_s": round3(w.texts as f64 / span),
                        "avg_ms": w.avg_ms(4),
                        "p50_ms": q(0.50),
                        "p99_ms": q(0.99),
                        "avg_queue_wait_ms": w.avg_ms(1),
                    }),
                )
            })
            .collect();
        let avg = |i: usize| w.avg_ms(i);
        let pct = |q: f64| w.quantile_ms(q).map_or(Value::Null, |v| json!(round3(v)));
        let states = |kind: ActorKind| -> Value {
            self.table
                .of(kind)
                .into_iter()
                .map(|(id, st)| json!({"name": id.to_string(), "state": st.as_str()}))
                .collect()
        };
        let restarts = |kind: ActorKind| {
            self.recorder
                .restarts
                .with_label_values(&[kind.as_str()])
                .get()
        };
        let mb = |b: u64| round3(b as f64 / 1048576.0);
        let me = std::process::id();
        let catalog = self.facts.models.catalog();
        let models: Vec<Value> = catalog
            .models
            .iter()
            .map(|m| {
                let mut v = m.recorder.model_figures();
                v["name"] = json!(m.name);
                v["version"] = json!(m.version);
                v["kind"] = json!(m.spec.task.as_str());
                v["device"] = json!(crate::model::device_name(m.spec.device));
                v["workers"] = json!(m.config.model().instances);
                v["in_flight"] = json!(m.leases());
                v
            })
            .collect();
        let queue_depth: i64 = catalog
            .models
            .iter()
            .map(|m| m.recorder.queue_depth.get())
            .sum();
        json!({
            "experiment": self.facts.experiment,
            "model": self.facts.model,
            "device": self.facts.device,
            "version": env!("CARGO_PKG_VERSION"),
            "pid": me,
            "uptime_s": round3(self.started.elapsed().as_secs_f64()),
            "ready": self.lifecycle.is_ready(),
            "stopping": self.lifecycle.is_stopping(),
            "window_s": self.facts.window.as_secs_f64(),
            "requests": totals.requests,
            "errors": totals.errors,
            "texts": totals.texts,
            "window_requests": w.requests,
            "window_errors": w.errors,
            "throughput_qps": round3(w.requests as f64 / span),
            "texts_per_s": round3(w.texts as f64 / span),
            "avg_ms": avg(4),
            "p50_ms": pct(0.50),
            "p95_ms": pct(0.95),
            "p99_ms": pct(0.99),
            "stage_timings": w.stage_timings(),
            "priorities": priorities,
            "queue_depth": queue_depth,
            "models": models,
            "in_flight": self.admission.requests(),
            "admitted_texts": self.admission.texts(),
            "workers": states(ActorKind::ModelWorker),
            "tokenizers": states(ActorKind::Tokenizer),
            "restarts": {
                "model_worker": restarts(ActorKind::ModelWorker),
                "tokenizer": restarts(ActorKind::Tokenizer),
                "metrics": restarts(ActorKind::Metrics),
            },
            "cpu_percent": s.cpu_percent.map(round3),
            "rss_mb": s.rss_bytes.map(mb),
            // The original server's field, always present: this process's GPU memory (NVML's
            // per-process figure, summed over devices); null where there is no NVIDIA GPU.
            "gpu_memory_mb": if s.gpus.is_empty() {
                Value::Null
            } else {
                json!(mb(s.gpus.iter().map(|g| own_gpu_memory(g, me)).sum()))
            },
            "gpu_devices": s.gpus.iter().map(|g| json!({
                "device": g.index,
                "name": g.name,
                "process_mb": mb(own_gpu_memory(g, me)),
                "device_used_mb": mb(g.used),
                "device_total_mb": mb(g.total),
            })).collect::<Vec<_>>(),
        })
    }

    fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding gathered metrics into a Vec cannot fail");
        String::from_utf8(buf).expect("the Prometheus text format is UTF-8")
    }
}

/// The GPU memory process `pid` holds on `gpu` (0 if none).
fn own_gpu_memory(gpu: &GpuInfo, pid: u32) -> u64 {
    gpu.processes
        .iter()
        .filter(|(p, _)| *p == pid)
        .filter_map(|(_, b)| *b)
        .sum()
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Lowers the calling thread's scheduling priority (Linux: a thread's own nice value), so the
/// metrics thread yields to inference under load.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid has no preconditions; setpriority on our own thread id.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

impl Actor for Metrics {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        lower_priority();
        self.table.set(ActorId::Metrics, super::ActorState::Idle);
        self.sample();
        ctx.run_interval(WINDOW_TICK, |act, _| {
            act.guarded("sampling the window", Metrics::tick);
        });
        ctx.run_interval(SAMPLE_EVERY, |act, _| {
            act.guarded("sampling the process", Metrics::sample);
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.table.set(ActorId::Metrics, super::ActorState::Stopped);
    }
}

/// Render every metric in the Prometheus text format.
#[derive(Message)]
#[rtype(result = "Option<String>")]
pub struct Render;

impl Handler<Render> for Metrics {
    type Result = Option<String>;

    fn handle(&mut self, _msg: Render, _ctx: &mut Self::Context) -> Option<String> {
        self.guarded("rendering", |m| m.render())
    }
}

/// The JSON dashboard (what `GET /metrics` answers unless Prometheus's format is asked for).
#[derive(Message)]
#[rtype(result = "Option<Value>")]
pub struct Snapshot;

impl Handler<Snapshot> for Metrics {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _msg: Snapshot, _ctx: &mut Self::Context) -> Self::Result {
        // CPU use is a rate between two samples; one asked before the periodic second sample
        // (a dashboard read right after start) is taken now, like psutil's does.
        if self.state.cpu_percent.is_none() {
            self.sample();
        }
        MessageResult(self.guarded("rendering the dashboard", |m| m.snapshot()))
    }
}

/// A test's fault for the Metrics actor (see `crate::fault`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct InjectFault(pub Fault);

impl Handler<InjectFault> for Metrics {
    type Result = ();

    fn handle(&mut self, InjectFault(fault): InjectFault, _ctx: &mut Self::Context) {
        if fault == Fault::MetricsPanic {
            self.guarded("handling a test's fault", |_| {
                panic!("injected metrics fault")
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_percentiles_come_from_the_fine_histogram_within_5_percent() {
        let t = Totals::new();
        for ms in 1..=100u64 {
            t.latency[fine_bucket(Duration::from_millis(ms))].fetch_add(1, Ordering::Relaxed);
        }
        let s = t.sample();
        for (q, want) in [(0.5, 50.0), (0.95, 95.0), (0.99, 99.0)] {
            let got = s.quantile_ms(q).unwrap();
            assert!((got - want).abs() / want < 0.05, "p{q}: {got} for {want}");
        }
        assert_eq!(Sampled::default().quantile_ms(0.5), None);
        assert_eq!(fine_bucket(Duration::from_secs(100_000)), FINE_BUCKETS - 1);
    }

    #[test]
    fn the_window_is_a_difference_of_samples() {
        let registry = Registry::new();
        let r = Recorder::new(&registry, &["ok", "validation"]).unwrap();
        let timings = Timings {
            total: Duration::from_millis(4),
            ..Default::default()
        };
        r.request("http", Ok((3, &timings)));
        let before = r.totals.sample();
        r.request("grpc", Ok((2, &timings)));
        r.request("grpc", Err("validation"));
        r.for_model("reranker").request("grpc", Err("validation"));
        let w = r.totals.sample().since(&before);
        assert_eq!((w.requests, w.errors, w.texts), (3, 2, 2));
        assert_eq!(w.sums_us[4], 4000);
        let text = {
            let mut buf = Vec::new();
            TextEncoder::new()
                .encode(&registry.gather(), &mut buf)
                .unwrap();
            String::from_utf8(buf).unwrap()
        };
        assert!(
            text.contains(
                "actor_infer_requests_total{model=\"\",outcome=\"validation\",transport=\"grpc\"} 1"
            ) && text.contains(
                "actor_infer_requests_total{model=\"reranker\",outcome=\"validation\",transport=\"grpc\"} 1"
            ),
            "each model's requests are counted under its name: {text}"
        );
    }
}
