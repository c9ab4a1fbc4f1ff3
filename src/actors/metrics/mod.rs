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
//!
//! Files: [`names`] (every metric name), `recorder.rs` (the [`Recorder`]), `window.rs` (the
//! dashboard's cumulative totals and their samples), `actor.rs` (the [`Metrics`] actor: registry,
//! rendering, the samplers).

mod actor;
pub mod names;
mod recorder;
mod window;

pub use actor::{Facts, InjectFault, Metrics, Render, Snapshot};
pub use recorder::Recorder;

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

#[cfg(test)]
mod tests;
