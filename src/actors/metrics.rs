//! Metrics: every metric name in one place ([`names`]), the handles the hot path records
//! through ([`Recorder`], plain atomics, no message per observation), and the Metrics actor
//! that owns the registry and renders it for `GET /metrics`.
//!
//! Owns: the Prometheus registry. Sent to by: the HTTP front end ([`Render`]).

use std::time::Duration;

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
}

impl Stage {
    fn label(self) -> &'static str {
        match self {
            Stage::Tokenize => "tokenize",
            Stage::Queue => "queue",
            Stage::Inference => "inference",
            Stage::Total => "total",
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
    ready: IntGauge,
    worker_busy: IntGaugeVec,
    restarts: IntCounterVec,
    tokens: IntCounter,
    skipped: IntCounterVec,
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
        };
        registry.register(Box::new(r.requests.clone()))?;
        registry.register(Box::new(r.stages.clone()))?;
        registry.register(Box::new(r.batch_size.clone()))?;
        registry.register(Box::new(r.batch_tokens.clone()))?;
        registry.register(Box::new(r.queue_depth.clone()))?;
        registry.register(Box::new(r.in_flight.clone()))?;
        registry.register(Box::new(r.ready.clone()))?;
        registry.register(Box::new(r.worker_busy.clone()))?;
        registry.register(Box::new(r.restarts.clone()))?;
        registry.register(Box::new(r.tokens.clone()))?;
        registry.register(Box::new(r.skipped.clone()))?;
        Ok(r)
    }

    /// One request answered over `transport` with `outcome` (`ok` or an error type).
    pub fn request(&self, transport: &str, outcome: &str) {
        self.requests.with_label_values(&[transport, outcome]).inc();
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

/// Owns the registry (with the process collector: CPU seconds, resident memory, open fds).
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// A registry holding every metric of [`Recorder`] and the process collector.
    pub fn new() -> prometheus::Result<(Metrics, Recorder)> {
        let registry = Registry::new();
        let recorder = Recorder::new(&registry)?;
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok((Metrics { registry }, recorder))
    }
}

impl Actor for Metrics {
    type Context = Context<Self>;
}

/// Render every metric in the Prometheus text format.
#[derive(Message)]
#[rtype(result = "String")]
pub struct Render;

impl Handler<Render> for Metrics {
    type Result = String;

    fn handle(&mut self, _msg: Render, _ctx: &mut Self::Context) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding gathered metrics into a Vec cannot fail");
        String::from_utf8(buf).expect("the Prometheus text format is UTF-8")
    }
}
