//! The Metrics actor: owns the registry, renders `GET /metrics` and the JSON dashboard, and
//! samples the process and the GPU.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use actix::prelude::*;
use prometheus::{Encoder, Registry, TextEncoder};
use serde_json::{Value, json};

use crate::actors::{
    ActorId, ActorKind, ActorTable, Admission, Lifecycle, batcher::Priority, models::Directory,
    supervisor::ChildPanicked,
};
use crate::{
    fault::Fault,
    model::device::{GpuInfo, Nvml},
};

use super::{Recorder, window::*};

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
        match crate::actors::catch(|| step(self)) {
            Ok(v) => Some(v),
            Err(message) => {
                tracing::error!(actor = "metrics", %message, "metrics panicked while {what}; restarting it");
                self.state = State::new(&self.recorder);
                self.table
                    .set(ActorId::Metrics, crate::actors::ActorState::Idle);
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
                v["workers"] = json!(m.settings.model.instances);
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
        self.table
            .set(ActorId::Metrics, crate::actors::ActorState::Idle);
        self.sample();
        ctx.run_interval(WINDOW_TICK, |act, _| {
            act.guarded("sampling the window", Metrics::tick);
        });
        ctx.run_interval(SAMPLE_EVERY, |act, _| {
            act.guarded("sampling the process", Metrics::sample);
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.table
            .set(ActorId::Metrics, crate::actors::ActorState::Stopped);
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
