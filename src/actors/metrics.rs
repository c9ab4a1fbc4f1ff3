//! Metrics: every metric name in one place ([`names`]), the handles the hot path records
//! through ([`Recorder`], plain atomics, no message per observation), and the Metrics actor
//! that owns the registry and renders it for `GET /metrics`.
//!
//! Owns: the Prometheus registry, the rolling window behind the JSON dashboard, and the
//! process/GPU samplers. Sent to by: the HTTP front end ([`Render`], [`Snapshot`]).
//!
//! The JSON dashboard keeps the original Python server's field names (`throughput_qps`,
//! `avg_ms`, `stage_timings.avg_tokenize_ms`, `stage_timings.avg_inference_ms`,
//! `stage_timings.avg_queue_wait_ms`, `stage_timings.mp_queue_receive_ms`, `gpu_memory_mb`,
//! `cpu_percent`) so its diagnostic workflow keeps working; `gpu_memory_mb` is the GPU memory
//! this process holds (NVML's per-process figure), null, not zero, where there is no GPU.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::{ActorState, ActorTable, Lifecycle, router::Timings};
use crate::model::device::{GpuInfo, Nvml};

/// The GPU memory process `pid` holds on `gpu` (0 if none).
fn own_gpu_memory(gpu: &GpuInfo, pid: u32) -> u64 {
    gpu.processes
        .iter()
        .filter(|(p, _)| *p == pid)
        .filter_map(|(_, b)| *b)
        .sum()
}

use actix::prelude::*;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Metric names, Prometheus style: one namespace, `_total` counters, `_seconds` durations.
pub mod names {
    /// Prefix of every metric.
    pub const NAMESPACE: &str = "actor_infer";
    /// Requests answered, by transport and outcome (`ok` or an `error_type`).
    pub const REQUESTS_TOTAL: &str = "requests_total";
    /// Per-stage latency; label `stage`: tokenize, queue, inference, total.
    pub const STAGE_SECONDS: &str = "stage_duration_seconds";
    /// Texts per forward.
    pub const BATCH_SIZE: &str = "batch_size";
    /// Padded tokens per forward.
    pub const BATCH_TOKENS: &str = "batch_tokens";
    /// Texts waiting for a worker.
    pub const QUEUE_DEPTH: &str = "queue_depth";
    /// Requests accepted and not yet answered.
    pub const IN_FLIGHT: &str = "in_flight_requests";
    /// Texts admitted and still held (tokenizing, queued or running), counted against
    /// `server.max_concurrent_requests`.
    pub const ADMITTED_TEXTS: &str = "admitted_texts";
    /// 1 when the model is loaded and warmed up and the server is not stopping.
    pub const READY: &str = "ready";
    /// 1 while a worker is inside a forward; label `worker`.
    pub const WORKER_BUSY: &str = "worker_busy";
    /// Actor restarts after a panic; label `actor` (tokenizer or model_worker).
    pub const RESTARTS_TOTAL: &str = "actor_restarts_total";
    /// Tokens run through the model (unpadded).
    pub const TOKENS_TOTAL: &str = "tokens_total";
    /// Queued texts dropped before inference; label `reason` (client_gone, ...).
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
}

/// Stages of the pipeline, the `stage` label's values.
#[derive(Debug, Clone, Copy)]
pub enum Stage {
    /// In a tokenizer thread.
    Tokenize,
    /// Tokenized, waiting for a worker.
    Queue,
    /// Inside the forward.
    Inference,
    /// From acceptance to answer.
    Total,
    /// Messages in transit between actors (front end → Router → worker).
    Handoff,
}

impl Stage {
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

/// Cheap, cloneable handles to every metric; shared by all actors and threads.
#[derive(Clone)]
pub struct Recorder {
    requests: IntCounterVec,
    stages: HistogramVec,
    batch_size: Histogram,
    batch_tokens: Histogram,
    queue_depth: IntGauge,
    in_flight: IntGauge,
    /// Texts admitted (the admission counter moves it).
    pub admitted: IntGauge,
    ready: IntGauge,
    worker_busy: IntGaugeVec,
    restarts: IntCounterVec,
    tokens: IntCounter,
    skipped: IntCounterVec,
    gpu_process_memory: IntGaugeVec,
    gpu_device_used: IntGaugeVec,
    gpu_device_total: IntGaugeVec,
    cpu_percent: prometheus::Gauge,
    window: Arc<Mutex<Window>>,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(names::NAMESPACE)
}

impl Recorder {
    /// Creates every metric and registers it in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Recorder> {
        let latency_buckets = prometheus::exponential_buckets(0.0001, 2.0, 18)?;
        let r = Recorder {
            requests: IntCounterVec::new(
                opts(
                    names::REQUESTS_TOTAL,
                    "Requests answered, by transport and outcome.",
                ),
                &["transport", "outcome"],
            )?,
            stages: HistogramVec::new(
                HistogramOpts::from(opts(names::STAGE_SECONDS, "Time per pipeline stage."))
                    .buckets(latency_buckets),
                &["stage"],
            )?,
            batch_size: Histogram::with_opts(
                HistogramOpts::from(opts(names::BATCH_SIZE, "Texts per forward."))
                    .buckets(prometheus::exponential_buckets(1.0, 2.0, 10)?),
            )?,
            batch_tokens: Histogram::with_opts(
                HistogramOpts::from(opts(names::BATCH_TOKENS, "Padded tokens per forward."))
                    .buckets(prometheus::exponential_buckets(8.0, 2.0, 14)?),
            )?,
            queue_depth: IntGauge::with_opts(opts(
                names::QUEUE_DEPTH,
                "Texts waiting for a worker.",
            ))?,
            in_flight: IntGauge::with_opts(opts(
                names::IN_FLIGHT,
                "Requests accepted, not yet answered.",
            ))?,
            admitted: IntGauge::with_opts(opts(
                names::ADMITTED_TEXTS,
                "Texts admitted and still held, against server.max_concurrent_requests.",
            ))?,
            ready: IntGauge::with_opts(opts(names::READY, "1 when ready to serve."))?,
            worker_busy: IntGaugeVec::new(
                opts(names::WORKER_BUSY, "1 while the worker runs a forward."),
                &["worker"],
            )?,
            restarts: IntCounterVec::new(
                opts(names::RESTARTS_TOTAL, "Actor restarts after a panic."),
                &["actor"],
            )?,
            tokens: IntCounter::with_opts(opts(
                names::TOKENS_TOTAL,
                "Tokens run through the model.",
            ))?,
            skipped: IntCounterVec::new(
                opts(
                    names::SKIPPED_TOTAL,
                    "Queued texts dropped before inference.",
                ),
                &["reason"],
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
            window: Arc::new(Mutex::new(Window::default())),
        };
        registry.register(Box::new(r.requests.clone()))?;
        registry.register(Box::new(r.stages.clone()))?;
        registry.register(Box::new(r.batch_size.clone()))?;
        registry.register(Box::new(r.batch_tokens.clone()))?;
        registry.register(Box::new(r.queue_depth.clone()))?;
        registry.register(Box::new(r.in_flight.clone()))?;
        registry.register(Box::new(r.admitted.clone()))?;
        registry.register(Box::new(r.ready.clone()))?;
        registry.register(Box::new(r.worker_busy.clone()))?;
        registry.register(Box::new(r.restarts.clone()))?;
        registry.register(Box::new(r.tokens.clone()))?;
        registry.register(Box::new(r.skipped.clone()))?;
        registry.register(Box::new(r.gpu_process_memory.clone()))?;
        registry.register(Box::new(r.gpu_device_used.clone()))?;
        registry.register(Box::new(r.gpu_device_total.clone()))?;
        registry.register(Box::new(r.cpu_percent.clone()))?;
        Ok(r)
    }

    /// One request answered over `transport`: `Ok` with its texts and timings, or the
    /// error type it failed with. Feeds the counter and the dashboard's rolling window.
    pub fn request(&self, transport: &str, outcome: Result<(usize, &Timings), &str>) {
        let label = match outcome {
            Ok(_) => "ok",
            Err(kind) => kind,
        };
        self.requests.with_label_values(&[transport, label]).inc();
        let sample = Sample {
            at: Instant::now(),
            texts: outcome.map(|(n, _)| n as u32).unwrap_or(0),
            timings: outcome.ok().map(|(_, t)| *t),
        };
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        w.total_requests += 1;
        if sample.timings.is_none() {
            w.total_errors += 1;
        }
        w.total_texts += u64::from(sample.texts);
        if w.samples.len() >= MAX_SAMPLES {
            w.samples.pop_front();
        }
        w.samples.push_back(sample);
    }

    /// Time spent in `stage`.
    pub fn stage(&self, stage: Stage, d: Duration) {
        self.stages
            .with_label_values(&[stage.label()])
            .observe(d.as_secs_f64());
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

    /// Requests now in flight.
    pub fn in_flight(&self, n: usize) {
        self.in_flight.set(n as i64);
    }

    /// Readiness changed.
    pub fn ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// Worker `id` entered or left a forward.
    pub fn worker_busy(&self, id: usize, busy: bool) {
        self.worker_busy
            .with_label_values(&[&id.to_string()])
            .set(i64::from(busy));
    }

    /// An actor of `kind` was restarted.
    pub fn restart(&self, kind: &str) {
        self.restarts.with_label_values(&[kind]).inc();
    }

    /// Queued texts dropped before inference for `reason`.
    pub fn skipped(&self, reason: &str, n: usize) {
        self.skipped.with_label_values(&[reason]).inc_by(n as u64);
    }
}

impl Actor for Metrics {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.sample();
        ctx.run_interval(SAMPLE_EVERY, |act, _| act.sample());
    }
}

/// Render every metric in the Prometheus text format.
#[derive(Message)]
#[rtype(result = "String")]
pub struct Render;

impl Handler<Render> for Metrics {
    type Result = String;

    fn handle(&mut self, _msg: Render, _ctx: &mut Self::Context) -> String {
        self.recorder.in_flight(self.lifecycle.in_flight());
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding gathered metrics into a Vec cannot fail");
        String::from_utf8(buf).expect("the Prometheus text format is UTF-8")
    }
}

/// Most requests the rolling window remembers (bounds its memory whatever the load).
const MAX_SAMPLES: usize = 200_000;

/// One answered request, for the dashboard's rolling window.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    texts: u32,
    /// `None` for a failed request.
    timings: Option<Timings>,
}

/// Recent requests (the rolling window) and totals since start.
#[derive(Debug, Default)]
struct Window {
    samples: VecDeque<Sample>,
    total_requests: u64,
    total_errors: u64,
    total_texts: u64,
}

/// Process CPU and memory, sampled every [`SAMPLE_EVERY`].
#[derive(Debug, Default, Clone, Copy)]
struct ProcessSample {
    cpu_percent: Option<f64>,
    rss_bytes: Option<u64>,
}

/// How often the Metrics actor samples CPU, memory and GPU memory.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// CPU time (user + system) this process has used.
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Resident memory now (Linux: /proc/self/statm; elsewhere: none).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    Some(pages * page)
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
}

/// Owns the registry (with the process collector: CPU seconds, resident memory, open fds).
pub struct Metrics {
    registry: Registry,
    recorder: Recorder,
    facts: Facts,
    lifecycle: Arc<Lifecycle>,
    table: Arc<ActorTable>,
    started: Instant,
    process: ProcessSample,
    last_cpu: (Instant, Duration),
    /// NVML, when there is an NVIDIA driver.
    gpu: Option<Nvml>,
    /// The last GPU sample: every device, with the processes holding memory on it.
    gpus: Vec<GpuInfo>,
}

impl Metrics {
    /// A registry holding every metric of [`Recorder`] and the process collector.
    pub fn new(
        facts: Facts,
        lifecycle: Arc<Lifecycle>,
        table: Arc<ActorTable>,
    ) -> prometheus::Result<(Metrics, Recorder)> {
        let registry = Registry::new();
        let recorder = Recorder::new(&registry)?;
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let metrics = Metrics {
            registry,
            recorder: recorder.clone(),
            facts,
            lifecycle,
            table,
            started: Instant::now(),
            process: ProcessSample {
                cpu_percent: None,
                rss_bytes: rss_bytes(),
            },
            last_cpu: (Instant::now(), cpu_time()),
            gpu: Nvml::open(),
            gpus: Vec::new(),
        };
        Ok((metrics, recorder))
    }

    fn sample(&mut self) {
        let (now, cpu) = (Instant::now(), cpu_time());
        let wall = now.duration_since(self.last_cpu.0).as_secs_f64();
        if wall > 0.0 {
            let pct = (cpu.saturating_sub(self.last_cpu.1)).as_secs_f64() / wall * 100.0;
            self.process.cpu_percent = Some(pct);
            self.recorder.cpu_percent.set(pct);
        }
        self.last_cpu = (now, cpu);
        self.process.rss_bytes = rss_bytes();
        if let Some(gpu) = &self.gpu {
            self.gpus = gpu.gpus();
            let me = std::process::id();
            for g in &self.gpus {
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
        let horizon = self.facts.window;
        let now = Instant::now();
        let mut w = self
            .recorder
            .window
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        while w
            .samples
            .front()
            .is_some_and(|s| now.duration_since(s.at) > horizon)
        {
            w.samples.pop_front();
        }
        let uptime = self.started.elapsed();
        let span = horizon.min(uptime).as_secs_f64().max(1e-3);
        let ok: Vec<&Timings> = w
            .samples
            .iter()
            .filter_map(|s| s.timings.as_ref())
            .collect();
        let texts: u64 = w.samples.iter().map(|s| u64::from(s.texts)).sum();
        let avg = |f: &dyn Fn(&Timings) -> Duration| -> Value {
            if ok.is_empty() {
                Value::Null
            } else {
                let sum: f64 = ok.iter().map(|t| f(t).as_secs_f64()).sum();
                json!(round3(sum / ok.len() as f64 * 1e3))
            }
        };
        let mut totals: Vec<f64> = ok.iter().map(|t| t.total.as_secs_f64() * 1e3).collect();
        totals.sort_by(f64::total_cmp);
        let pct = |q: f64| -> Value {
            if totals.is_empty() {
                Value::Null
            } else {
                let i = ((totals.len() as f64 - 1.0) * q).round() as usize;
                json!(round3(totals[i]))
            }
        };
        let states = |prefix: &str| -> Value {
            self.table
                .snapshot()
                .into_iter()
                .filter(|(n, _)| n.starts_with(prefix))
                .map(|(name, s)| {
                    let state = match s {
                        ActorState::Starting => "starting",
                        ActorState::Idle => "idle",
                        ActorState::Busy(_) => "busy",
                        ActorState::Stopped => "stopped",
                    };
                    json!({"name": name, "state": state})
                })
                .collect()
        };
        let restarts = |kind: &str| self.recorder.restarts.with_label_values(&[kind]).get();
        let mut v = json!({
            "experiment": self.facts.experiment,
            "model": self.facts.model,
            "device": self.facts.device,
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "uptime_s": round3(uptime.as_secs_f64()),
            "ready": self.lifecycle.is_ready(),
            "stopping": self.lifecycle.is_stopping(),
            "window_s": horizon.as_secs_f64(),
            "requests": w.total_requests,
            "errors": w.total_errors,
            "texts": w.total_texts,
            "window_requests": w.samples.len(),
            "window_errors": w.samples.len() - ok.len(),
            "throughput_qps": round3(w.samples.len() as f64 / span),
            "texts_per_s": round3(texts as f64 / span),
            "avg_ms": avg(&|t| t.total),
            "p50_ms": pct(0.50),
            "p95_ms": pct(0.95),
            "p99_ms": pct(0.99),
            "stage_timings": {
                "avg_tokenize_ms": avg(&|t| t.tokenize),
                "avg_queue_wait_ms": avg(&|t| t.queue),
                "avg_inference_ms": avg(&|t| t.inference),
                "mp_queue_receive_ms": avg(&|t| t.handoff),
                "avg_total_ms": avg(&|t| t.total),
            },
            "queue_depth": self.recorder.queue_depth.get(),
            "in_flight": self.lifecycle.in_flight(),
            "workers": states("model-worker-"),
            "tokenizers": states("tokenizer-"),
            "restarts": {"model_worker": restarts("model_worker"), "tokenizer": restarts("tokenizer")},
            "cpu_percent": self.process.cpu_percent.map(round3),
            "rss_mb": self.process.rss_bytes.map(|b| round3(b as f64 / 1048576.0)),
        });
        // The original server's field, always present: this process's GPU memory (NVML's
        // per-process figure, summed over devices); null where there is no NVIDIA GPU.
        let mb = |b: u64| round3(b as f64 / 1048576.0);
        let me = std::process::id();
        v["gpu_memory_mb"] = if self.gpus.is_empty() {
            Value::Null
        } else {
            json!(mb(self.gpus.iter().map(|g| own_gpu_memory(g, me)).sum()))
        };
        v["gpu_devices"] = self
            .gpus
            .iter()
            .map(|g| {
                json!({
                    "device": g.index,
                    "name": g.name,
                    "process_mb": mb(own_gpu_memory(g, me)),
                    "device_used_mb": mb(g.used),
                    "device_total_mb": mb(g.total),
                })
            })
            .collect();
        v
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The JSON dashboard (what `GET /metrics` answers unless Prometheus's format is asked for).
#[derive(Message)]
#[rtype(result = "Value")]
pub struct Snapshot;

impl Handler<Snapshot> for Metrics {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _msg: Snapshot, _ctx: &mut Self::Context) -> Self::Result {
        self.recorder.in_flight(self.lifecycle.in_flight());
        MessageResult(self.snapshot())
    }
}
