//! The dashboard's rolling window: cumulative totals every answered request adds to (plain
//! atomics), sampled once a second; the window is the difference of two samples, and its
//! percentiles come from a fine latency histogram.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use serde_json::{Value, json};

use crate::actors::router::Timings;

/// Buckets of the dashboard's latency histogram: 10 µs × 1.1^i, i < [`FINE_BUCKETS`] (up to
/// half an hour), so a percentile read from it is within 5 % of the true one.
pub(super) const FINE_BUCKETS: usize = 200;
pub(super) const FINE_BASE_US: f64 = 10.0;
pub(super) const FINE_RATIO: f64 = 1.1;

pub(super) fn fine_bucket(d: Duration) -> usize {
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
pub(super) struct Totals {
    pub(super) requests: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) texts: AtomicU64,
    /// Sums over successful requests, microseconds: tokenize, queue, inference, handoff, total.
    pub(super) sums_us: [AtomicU64; 5],
    pub(super) latency: Vec<AtomicU64>,
}

/// One sample of [`Totals`].
#[derive(Debug, Clone, Default)]
pub(super) struct Sampled {
    pub(super) requests: u64,
    pub(super) errors: u64,
    pub(super) texts: u64,
    pub(super) sums_us: [u64; 5],
    pub(super) latency: Vec<u64>,
}

impl Totals {
    pub(super) fn new() -> Totals {
        Totals {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            texts: AtomicU64::new(0),
            sums_us: Default::default(),
            latency: (0..FINE_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// One request answered: `Ok` with its texts and timings, or failed.
    pub(super) fn add(&self, outcome: Result<(usize, &Timings), &str>) {
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

    pub(super) fn sample(&self) -> Sampled {
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
    pub(super) fn avg_ms(&self, i: usize) -> Value {
        let ok = self.requests - self.errors;
        if ok == 0 {
            Value::Null
        } else {
            json!(round3(self.sums_us[i] as f64 / ok as f64 / 1e3))
        }
    }

    /// The dashboard's `stage_timings`, under the original server's names.
    pub(super) fn stage_timings(&self) -> Value {
        json!({
            "avg_tokenize_ms": self.avg_ms(0),
            "avg_queue_wait_ms": self.avg_ms(1),
            "avg_inference_ms": self.avg_ms(2),
            "mp_queue_receive_ms": self.avg_ms(3),
            "avg_total_ms": self.avg_ms(4),
        })
    }

    /// `self − earlier`, counter by counter.
    pub(super) fn since(&self, earlier: &Sampled) -> Sampled {
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
    pub(super) fn quantile_ms(&self, q: f64) -> Option<f64> {
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
pub(super) struct Sample {
    pub(super) all: Sampled,
    pub(super) by_priority: [Sampled; 2],
}

impl Sample {
    pub(super) fn since(&self, earlier: &Sample) -> Sample {
        Sample {
            all: self.all.since(&earlier.all),
            by_priority: std::array::from_fn(|i| {
                self.by_priority[i].since(&earlier.by_priority[i])
            }),
        }
    }
}

pub(super) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
