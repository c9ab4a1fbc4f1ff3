//! ModelWorker: one thread (an actix `SyncArbiter` of one) that owns one copy of the model
//! and runs forwards on it. `model.instances` of them run side by side, each with its share of
//! the cores (`model.intra_op_threads`).
//!
//! Owns: the [`Model`] (weights or TorchScript module) on its device. Sent to by: the
//! Supervisor ([`Load`] at start, [`Release`] at stop) and the Router ([`Forward`], one batch at
//! a time: the Router only sends to an idle worker).
//!
//! Failures: an error libtorch returns (out of memory, a TorchScript module refusing its
//! input) fails that batch only, and the worker goes on: it is not a restart. A panic (a bug)
//! fails the batch, the Supervisor is told and counts it against `supervision.max_restarts`,
//! the SyncArbiter builds a fresh actor, and the fresh actor reloads the weights before its
//! next forward.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use actix::prelude::*;

use super::{
    ActorId, ActorState, ActorTable, InferError, metrics::Recorder, supervisor::ChildPanicked,
};
use crate::{
    fault::Fault,
    model::{Encoded, Model, ModelError, ModelSpec, bert::Padded},
};

/// Load the weights and warm up. Answered once the worker can serve.
#[derive(Message)]
#[rtype(result = "Result<LoadReport, ModelError>")]
pub struct Load;

/// How long loading took.
#[derive(Debug, Clone, Copy)]
pub struct LoadReport {
    /// Reading the weights onto the device.
    pub load: Duration,
    /// Warm-up forwards.
    pub warmup: Duration,
}

/// Run one batch.
#[derive(Message)]
#[rtype(result = "Result<ForwardOutput, InferError>")]
pub struct Forward {
    /// The batch, padded by the Router.
    pub batch: Padded,
    /// The span of the batch (which links to its requests' spans).
    pub span: tracing::Span,
    /// Rows that want their token states instead of the pooled row (`/embed_all`); empty for
    /// none.
    pub tokens: Vec<bool>,
    /// A fault a test asked for (see `crate::fault`); `None` in real use.
    pub fault: Option<Fault>,
    /// When the Router sent it (for the hand-off time).
    pub sent: Instant,
}

/// One batch's result.
#[derive(Debug)]
pub struct ForwardOutput {
    /// Pooled, not normalised (or a classifier's logits), one per text in the batch's order.
    pub embeddings: Vec<Vec<f32>>,
    /// When the forward began (the end of the texts' queue wait).
    pub started: Instant,
    /// How long the forward took.
    pub elapsed: Duration,
    /// Router → worker: from sending to the start of the forward.
    pub handoff: Duration,
}

/// Drop the weights (freeing device memory) and acknowledge.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Release;

/// One model instance.
pub struct ModelWorker {
    id: ActorId,
    spec: Arc<ModelSpec>,
    model: Option<Model>,
    table: Arc<ActorTable>,
    /// Its `worker_busy` gauge.
    busy: prometheus::IntGauge,
    supervisor: Recipient<ChildPanicked>,
}

impl ModelWorker {
    /// Starts worker `index` on its own thread with `threads` libtorch intra-op threads. The
    /// weights are loaded by [`Load`], so a failure reaches the Supervisor as an error.
    pub fn start(
        index: usize,
        spec: Arc<ModelSpec>,
        threads: usize,
        pin: Option<Vec<usize>>,
        table: Arc<ActorTable>,
        metrics: Recorder,
        supervisor: Recipient<ChildPanicked>,
    ) -> Addr<ModelWorker> {
        SyncArbiter::start(1, move || {
            // Runs on the worker's own thread: libtorch's intra-op setting is per thread, and
            // its OpenMP threads, created later from this one, inherit the pinning.
            if let Some(cores) = &pin {
                pin_current_thread(index, cores);
            }
            tch::set_num_threads(threads as i32);
            let id = ActorId::ModelWorker(index);
            table.set(id, ActorState::Starting);
            ModelWorker {
                id,
                spec: spec.clone(),
                model: None,
                table: table.clone(),
                busy: metrics.worker_busy(index),
                supervisor: supervisor.clone(),
            }
        })
    }

    fn load(&mut self) -> Result<LoadReport, ModelError> {
        let t0 = Instant::now();
        let model = Model::load(&self.spec)?;
        let load = t0.elapsed();
        let t1 = Instant::now();
        // Warm-up: forwards of typical shapes, so the first real request is not the slow one.
        let pad = self.spec.encoder.pad_token_id;
        let max = self.spec.max_seq_length;
        for (rows, cols) in [(1, 8), (4, 32.min(max)), (8, 128.min(max)), (1, max)] {
            let text = Encoded {
                ids: vec![pad; cols],
                type_ids: vec![0; cols],
            };
            let batch = Padded::new(std::iter::repeat_n(&text, rows), pad);
            model.run(&batch, self.spec.pooling, &[])?;
        }
        let warmup = t1.elapsed();
        // int8/uint8 calibration texts, embedded once per model version (model::calibrate).
        if let Some(c) = &self.spec.calibration {
            c.ensure(&self.spec, &model)?;
        }
        self.model = Some(model);
        self.table.set(self.id, ActorState::Idle);
        Ok(LoadReport { load, warmup })
    }

    /// [`ModelWorker::load`] with a panic turned into an error, for the first load and for the
    /// reload after a restart alike.
    fn try_load(&mut self) -> Result<LoadReport, ModelError> {
        super::catch(|| self.load()).unwrap_or_else(|message| {
            Err(ModelError::Config(format!(
                "loading the model panicked: {message}"
            )))
        })
    }

    /// The forward of one batch, with the faults a test may ask for.
    fn run(
        &self,
        batch: &Padded,
        tokens: &[bool],
        fault: Option<Fault>,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        match fault {
            // Like a forward stuck inside libtorch: nothing can cancel it.
            Some(Fault::WorkerHang) => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            Some(Fault::WorkerPanic) => panic!("injected model worker fault"),
            Some(Fault::WorkerSlow) => std::thread::sleep(crate::fault::SLOW_FOR),
            Some(Fault::TorchError) => {
                // A real libtorch error: reshaping 2 elements into 3.
                let _ =
                    tch::Tensor::zeros([2], (tch::Kind::Float, tch::Device::Cpu)).f_reshape([3])?;
            }
            _ => {}
        }
        let model = self
            .model
            .as_ref()
            .expect("the handler reloads the model before running");
        model.run(batch, self.spec.pooling, tokens)
    }
}

/// Pins the calling thread to `cores` (Linux; logged and ignored elsewhere or on failure).
fn pin_current_thread(index: usize, cores: &[usize]) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: a zeroed cpu_set_t filled with CPU_SET, passed with its size.
        let ok = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &c in cores {
                libc::CPU_SET(c, &mut set);
            }
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
        };
        if ok {
            tracing::info!(worker = index, ?cores, "model worker pinned");
        } else {
            tracing::warn!(worker = index, ?cores, "could not pin the model worker");
        }
    }
    #[cfg(not(target_os = "linux"))]
    tracing::warn!(
        worker = index,
        ?cores,
        "model.pin_cores is only supported on Linux"
    );
}

impl Actor for ModelWorker {
    type Context = SyncContext<Self>;

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.model = None;
        self.table.set(self.id, ActorState::Stopped);
        tracing::debug!(actor = %self.id, "stopped");
    }
}

impl Handler<Load> for ModelWorker {
    type Result = Result<LoadReport, ModelError>;

    fn handle(&mut self, _msg: Load, _ctx: &mut Self::Context) -> Self::Result {
        self.try_load()
    }
}

impl Handler<Forward> for ModelWorker {
    type Result = Result<ForwardOutput, InferError>;

    fn handle(&mut self, msg: Forward, ctx: &mut Self::Context) -> Self::Result {
        let _enter = msg.span.enter();
        if self.model.is_none() {
            // A restarted worker: reload before serving.
            tracing::warn!(actor = %self.id, "reloading the model after a restart");
            self.try_load().map_err(|e| InferError::Forward {
                worker: self.id,
                message: format!("cannot reload the model: {e}"),
            })?;
        }
        let started = Instant::now();
        tracing::debug!(actor = %self.id, texts = msg.batch.rows, "forward");
        self.table.set(self.id, ActorState::Busy(started));
        self.busy.set(1);
        let result = super::catch(|| self.run(&msg.batch, &msg.tokens, msg.fault));
        let elapsed = started.elapsed();
        self.busy.set(0);
        self.table.set(self.id, ActorState::Idle);
        match result {
            Ok(Ok(embeddings)) => Ok(ForwardOutput {
                embeddings,
                started,
                elapsed,
                handoff: started.saturating_duration_since(msg.sent),
            }),
            Ok(Err(e)) => {
                tracing::error!(actor = %self.id, error = %e, "the forward failed; the batch is failed, the worker goes on");
                Err(InferError::Forward {
                    worker: self.id,
                    message: e.to_string(),
                })
            }
            Err(message) => {
                tracing::error!(actor = %self.id, %message, "forward panicked; restarting the worker");
                self.supervisor.do_send(ChildPanicked {
                    actor: self.id,
                    message: message.clone(),
                });
                self.model = None;
                // In a SyncContext, stopping means the SyncArbiter builds a fresh actor.
                ctx.stop();
                Err(InferError::Panicked {
                    actor: self.id,
                    message: format!("{message}; the worker has been restarted"),
                })
            }
        }
    }
}

impl Handler<Release> for ModelWorker {
    type Result = ();

    fn handle(&mut self, _msg: Release, _ctx: &mut Self::Context) {
        self.model = None;
        self.table.set(self.id, ActorState::Stopped);
    }
}
