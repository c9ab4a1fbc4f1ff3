//! Router: takes requests from the front ends, has them tokenized, queues their texts, hands
//! batches to idle model workers, and answers each request once its last row is back.
//!
//! Owns: the queue ([`batcher::Queue`], where batching, priorities and reassembly live, as a
//! pure data structure), the knowledge of which worker is idle, and what the Router knows of the
//! moment that the queue does not: what a forward costs (measured by a worker at warm-up,
//! rescaled by every forward since), whether interactive requests are about (being tokenized,
//! or seen within `batching.interactive_window_ms`), and so whether the latency budget is in
//! force. Sent to by: the front ends ([`Embed`]) and the Supervisor ([`Stop`]). Runs on the
//! Supervisor's arbiter; its state is single-threaded. A request whose client has gone (the
//! caller dropped its receiver) or whose deadline passed is dropped before inference and
//! counted.
//!
//! **Holding a worker for the next query.** With the latency budget in force, a query still
//! waits for the batch running when it arrives. A client that sends its next query as soon as
//! the last is answered (a retrieval service's user, a pipeline) would always find a fresh
//! batch of batch work started in between. So when an interactive request was just answered
//! (or is being tokenized) and the recent gaps between an answer and the next interactive
//! request are short, the last idle worker waits up to a quarter of the latency budget for it
//! before taking batch work (the anticipatory scheduling of disk schedulers); a worker reserved
//! for interactive work (`batching.reserved_interactive_instances`) makes this unnecessary.
//!
//! **Tail forwards.** Every forward has a fixed cost (reading the weights) that a forward
//! within the latency budget cannot amortise: with only short forwards, batch work would run at
//! about half its rate beside a stream of queries. So when no interactive text waits or is
//! being tokenized, and fewer than `batching.tail_share` of the interactive requests lately found
//! a forward longer than the latency budget running (with no worker free), the next forward of
//! batch work may run up to `batching.tail_budget_ms` instead, in place of a hold. Most queries
//! then wait behind at most one short forward (the median), a few behind one tail forward (the
//! 99th percentile), and batch work keeps most of its rate (README, "Scheduling").
//!
//! A panic in the Router is a bug that leaves its queue in an unknown state: the Router fails
//! every request it holds, tells the Supervisor, and the server stops with exit 1 (the README's
//! supervision table).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use actix::prelude::*;
use tokio::sync::oneshot;

use super::{
    ActorId, ActorState, ActorTable, Admission, InferError, Lifecycle, Permit,
    batcher::{Answered, Batch, Budget, Cost, Dropped, Priority, Queue, Shape},
    metrics::{Recorder, Stage},
    model_worker::{Forward, ForwardOutput, MeasuredCost, ModelWorker},
    supervisor::{InjectFault, Shutdown, StopReason, Supervisor},
    tokenizer::{Decode, Inspect, Tokenize, Tokenized, TokenizerActor},
};
use crate::{
    config::{Batching, LatencyBudget},
    fault::Fault,
    model::{Direction, ModelSpec, Task, TextInput, bert::Padded, normalize_l2},
};

/// What the Router answers: the rows, or why not.
pub type Answer = Result<EmbedOutput, InferError>;

/// Run some texts through the model. Answered at once with a receiver for the result (or an
/// error if the request is refused); dropping the receiver cancels the request's queued work.
#[derive(Message)]
#[rtype(result = "Result<oneshot::Receiver<Answer>, InferError>")]
pub struct Embed {
    /// The inputs (texts or token ids), in order; never empty (the front ends check).
    pub inputs: Vec<TextInput>,
    /// Second segments of (text, pair) inputs, as many as `inputs` (cross-encoders); `None`
    /// for single texts.
    pub pairs: Option<Vec<String>>,
    /// L2-normalise; `None` for the model's default (a classifier's rows, and token states,
    /// never are).
    pub normalize: Option<bool>,
    /// Truncate over-long texts (else they fail the request).
    pub truncate: bool,
    /// Which end truncation cuts.
    pub direction: Direction,
    /// Every token's state instead of the pooled row (`/embed_all`).
    pub all_tokens: bool,
    /// The request's span.
    pub span: tracing::Span,
    /// When the front end sent this message (for the hand-off time).
    pub sent: Instant,
    /// Past this instant the request's texts are dropped before inference and it is answered
    /// "deadline exceeded".
    pub deadline: Instant,
    /// The request's admission; released with its work.
    pub permit: Permit,
    /// How urgent it is; `None`: interactive up to `batching.interactive_max_texts` texts,
    /// batch beyond.
    pub priority: Option<Priority>,
}

/// With `batching.latency_budget_ms: auto`, the budget is this many times the expected forward
/// of one [`AUTO_BUDGET_TOKENS`]-token text: most queries then wait about one budget behind
/// batch work, a few times their own forward (README, "Scheduling").
pub const AUTO_BUDGET_FORWARDS: u32 = 3;
/// With `batching.tail_budget_ms: auto`, the tail budget is this many times the expected
/// forward of one [`AUTO_BUDGET_TOKENS`]-token text: long enough that its fixed cost is a small
/// part of it, short enough that a query behind it stays within 20 times its latency alone.
pub const AUTO_TAIL_FORWARDS: u32 = 12;
/// The short text of [`AUTO_BUDGET_FORWARDS`], in tokens.
pub const AUTO_BUDGET_TOKENS: usize = 16;
/// A held worker waits at most this fraction of the latency budget for the next query.
const HOLD_FRACTION: u32 = 4;
/// Weight of the newest gap in the smoothed gap between an answer and the next query.
const GAP_SMOOTHING: f64 = 0.2;
/// Weight of the newest interactive request in the smoothed share of them that found a long
/// forward running.
const DELAYED_SMOOTHING: f64 = 0.1;

/// Where one request's time went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// In a tokenizer thread.
    pub tokenize: Duration,
    /// Tokenized, waiting for its first batch to start.
    pub queue: Duration,
    /// From its first batch's start to its last batch's end.
    pub inference: Duration,
    /// From acceptance by the Router to the answer.
    pub total: Duration,
    /// Time messages spent between actors: front end → Router plus Router → model worker
    /// (the original server's `mp_queue_receive_ms`).
    pub handoff: Duration,
}

/// One request's result.
#[derive(Debug, Clone)]
pub struct EmbedOutput {
    /// One row per text, in order: an embedding, a classifier's logits, or (asked for) every
    /// real token's state, flattened (`token_counts[i]` × width).
    pub embeddings: Vec<Vec<f32>>,
    /// Tokens per text, special tokens included.
    pub token_counts: Vec<u32>,
    /// Where the time went.
    pub timings: Timings,
}

/// Stop: refuse new work, fail whatever is still queued (the Supervisor only sends this after
/// draining), and stop, dropping the Router's handles to the pools.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

/// What the Router keeps per request while its texts are queued or running.
struct Pending {
    reply: oneshot::Sender<Answer>,
    token_counts: Vec<u32>,
    normalize: bool,
    all_tokens: bool,
    accepted: Instant,
    tokenize: Duration,
    /// Front end → Router.
    handoff: Duration,
    span: tracing::Span,
    /// The request's wait for its first batch (a child of `span`, ended when that starts).
    queue_span: std::cell::Cell<Option<tracing::Span>>,
    /// From its first batch's start to its answer (a child of `span`; its batches' parent).
    inference_span: std::cell::OnceCell<tracing::Span>,
    /// A test's injected fault for the batches this request's texts land in.
    fault: Option<Fault>,
    /// The request's admission, released when this is dropped (answered, failed, dropped).
    _permit: Permit,
}

/// What the Router knows of interactive traffic (for the latency budget and the hold).
#[derive(Debug, Default)]
struct Interactive {
    /// Interactive requests accepted and still being tokenized (not yet queued).
    tokenizing: usize,
    /// When the last of those was accepted.
    accepted: Option<Instant>,
    /// When an interactive request was last accepted or answered.
    seen: Option<Instant>,
    /// When an interactive request was last answered.
    answered: Option<Instant>,
    /// The smoothed gap between an interactive answer and the next interactive request,
    /// seconds; `None` until one was seen.
    gap: Option<f64>,
    /// The smoothed share of interactive requests that found a forward longer than the latency
    /// budget running and no worker free (0 to 1).
    delayed: f64,
}

/// A request the Router accepted, while its texts are being tokenized.
struct Accepted {
    priority: Priority,
    reply: oneshot::Sender<Answer>,
    handoff: Duration,
    normalize: bool,
    all_tokens: bool,
    at: Instant,
    span: tracing::Span,
    deadline: Instant,
    permit: Permit,
}

/// A model worker and whether it has a batch.
struct Slot {
    addr: Addr<ModelWorker>,
    busy: bool,
    /// Its batch is expected to take longer than the latency budget (a tail forward, or a full
    /// one while no interactive request was about).
    long: bool,
    /// Only takes batches of interactive texts (`batching.reserved_interactive_instances`).
    reserved: bool,
}

/// The Router actor.
pub struct Router {
    /// `router` for the first model's, `router-N` for later ones.
    id: ActorId,
    tokenizers: Addr<TokenizerActor>,
    workers: Vec<Slot>,
    queue: Queue<Pending>,
    batching: Batching,
    spec: Arc<ModelSpec>,
    lifecycle: Arc<Lifecycle>,
    admission: Arc<Admission>,
    metrics: Recorder,
    table: Arc<ActorTable>,
    supervisor: Addr<Supervisor>,
    max_wait: Duration,
    /// The pending `max_wait_ms` timer, if a batch is being held.
    wait_timer: Option<SpawnHandle>,
    /// What a forward costs, once a worker has told (then rescaled by every forward).
    cost: Option<Cost>,
    /// What the Router knows of interactive traffic.
    interactive: Interactive,
    /// The pending end of a hold for the next query, if a worker is being held.
    hold_timer: Option<SpawnHandle>,
    /// Set after a panic: the Router holds nothing and refuses everything until it stops.
    failed: bool,
}

impl Router {
    /// A Router over the given pools.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: usize,
        tokenizers: Addr<TokenizerActor>,
        workers: Vec<Addr<ModelWorker>>,
        batching: Batching,
        spec: Arc<ModelSpec>,
        lifecycle: Arc<Lifecycle>,
        admission: Arc<Admission>,
        metrics: Recorder,
        table: Arc<ActorTable>,
        supervisor: Addr<Supervisor>,
    ) -> Router {
        // At least one worker takes batch work (the configuration checks it too).
        let reserved = batching
            .reserved_interactive_instances
            .min(workers.len().saturating_sub(1));
        Router {
            id: ActorId::Router(index),
            tokenizers,
            workers: workers
                .into_iter()
                .enumerate()
                .map(|(i, addr)| Slot {
                    addr,
                    busy: false,
                    long: false,
                    reserved: i < reserved,
                })
                .collect(),
            queue: Queue::new(
                Budget {
                    max_batch_size: batching.max_batch_size,
                    max_batch_tokens: batching.max_batch_tokens,
                },
                Duration::from_secs_f64(batching.aging_ms / 1000.0),
            ),
            max_wait: Duration::from_secs_f64(batching.max_wait_ms / 1000.0),
            wait_timer: None,
            cost: None,
            interactive: Interactive::default(),
            hold_timer: None,
            failed: false,
            batching,
            spec,
            lifecycle,
            admission,
            metrics,
            table,
            supervisor,
        }
    }

    /// Runs one step of the Router's work; a panic in it fails everything the Router holds and
    /// stops the server (exit 1).
    fn guarded(&mut self, what: &str, step: impl FnOnce(&mut Router)) {
        if let Err(message) = super::catch(|| step(self)) {
            tracing::error!(actor = "router", %message, "the router panicked while {what}");
            self.failed = true;
            let error = InferError::Panicked {
                actor: self.id,
                message: message.clone(),
            };
            for p in self.queue.drain() {
                let _ = p.reply.send(Err(error.clone()));
            }
            self.metrics.restart(super::ActorKind::Router);
            self.supervisor.do_send(Shutdown(StopReason::Fatal(format!(
                "the router panicked ({message}); its requests were failed"
            ))));
        }
    }

    /// A request's texts are back from a tokenizer: queue them.
    fn enqueue(&mut self, tokenized: Result<Tokenized, InferError>, accepted: Accepted) {
        let Accepted {
            priority,
            reply,
            handoff,
            normalize,
            all_tokens,
            at,
            span,
            deadline,
            permit,
        } = accepted;
        if priority == Priority::Interactive {
            self.interactive.tokenizing -= 1;
        }
        let tokenized = match tokenized {
            Ok(t) => t,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let n = tokenized.encodings.len();
        if Instant::now() >= deadline {
            self.metrics.skipped("deadline", n);
            let _ = reply.send(Err(InferError::Expired));
            return;
        }
        if reply.is_closed() {
            self.metrics.skipped("client_gone", n);
            return;
        }
        if self.failed {
            let _ = reply.send(Err(InferError::ShuttingDown));
            return;
        }
        self.metrics.stage(Stage::Tokenize, tokenized.elapsed);
        tracing::debug!(parent: &span, texts = n, "queued");
        let queue_span = tracing::debug_span!(parent: &span, "queue", texts = n);
        let pending = Pending {
            queue_span: std::cell::Cell::new(Some(queue_span)),
            inference_span: std::cell::OnceCell::new(),
            reply,
            token_counts: tokenized.encodings.iter().map(|e| e.len() as u32).collect(),
            normalize,
            all_tokens,
            accepted: at,
            tokenize: tokenized.elapsed,
            handoff,
            span,
            fault: tokenized.fault,
            _permit: permit,
        };
        let fault = pending.fault;
        self.queue.push(
            pending,
            priority,
            tokenized.encodings,
            deadline,
            Instant::now(),
        );
        // Faults a test asks for, once the request is queued (a panic then answers it too).
        match fault {
            Some(Fault::RouterPanic) => panic!("injected router fault"),
            Some(f @ (Fault::SupervisorPanic | Fault::MetricsPanic)) => {
                self.supervisor.do_send(InjectFault(f));
            }
            _ => {}
        }
    }

    /// Gives every idle worker a batch while texts are queued, holding a batch that is not
    /// full for up to `batching.max_wait_ms` so more texts can join it.
    fn dispatch(&mut self, ctx: &mut Context<Self>) {
        self.sweep();
        if self.max_wait > Duration::ZERO
            && self.queue.waiting() < self.batching.max_batch_size
            && let Some(oldest) = self.queue.oldest()
        {
            let waited = oldest.elapsed();
            if waited < self.max_wait && self.workers.iter().any(|s| !s.busy) {
                if self.wait_timer.is_none() {
                    self.wait_timer = Some(ctx.run_later(self.max_wait - waited, |act, ctx| {
                        act.wait_timer = None;
                        act.guarded("dispatching", |act| act.dispatch_now(ctx));
                    }));
                }
                self.metrics.queue_depth(self.queue.waiting());
                return;
            }
        }
        self.dispatch_now(ctx);
    }

    /// Drops, before any inference, requests whose deadline has passed (answered "deadline
    /// exceeded") and those nobody waits for any more, counting their texts.
    fn sweep(&mut self) {
        for (p, why) in self.queue.sweep(Instant::now(), |p| p.reply.is_closed()) {
            let texts = p.token_counts.len();
            match why {
                Dropped::Expired => {
                    self.metrics.skipped("deadline", texts);
                    let _ = p.reply.send(Err(InferError::Expired));
                }
                Dropped::Gone => self.metrics.skipped("client_gone", texts),
            }
        }
    }

    /// The latency budget, when there is one: `batching.latency_budget_ms`, or with `auto`
    /// [`AUTO_BUDGET_FORWARDS`] × the expected forward of a short text (none until a worker has
    /// told what a forward costs).
    fn latency_budget(&self) -> Option<Duration> {
        match self.batching.latency_budget_ms {
            LatencyBudget::Millis(ms) if ms > 0.0 => Some(Duration::from_secs_f64(ms / 1000.0)),
            LatencyBudget::Millis(_) => None,
            LatencyBudget::Auto => self
                .cost
                .map(|c| c.estimate(AUTO_BUDGET_TOKENS) * AUTO_BUDGET_FORWARDS),
        }
    }

    /// The tail budget: `batching.tail_budget_ms`, or with `auto` [`AUTO_TAIL_FORWARDS`] × the
    /// expected forward of a short text; none without a latency budget.
    fn tail_budget(&self) -> Option<Duration> {
        self.latency_budget()?;
        match self.batching.tail_budget_ms {
            LatencyBudget::Millis(ms) if ms > 0.0 => Some(Duration::from_secs_f64(ms / 1000.0)),
            LatencyBudget::Millis(_) => None,
            LatencyBudget::Auto => self
                .cost
                .map(|c| c.estimate(AUTO_BUDGET_TOKENS) * AUTO_TAIL_FORWARDS),
        }
    }

    /// Whether the next forward of batch work may run up to the tail budget (see the module's
    /// documentation): no interactive text waits or is being tokenized, and fewer than
    /// `batching.tail_share` of the interactive requests lately found a long forward running.
    fn tail_allowed(&self) -> bool {
        self.queue.waiting_interactive() == 0
            && self.interactive.tokenizing == 0
            && self.interactive.delayed < self.batching.tail_share
            && self.tail_budget().is_some()
    }

    /// What shapes the next batch for worker `w` at `now`.
    fn shape(&self, now: Instant, w: usize) -> Shape {
        let reserved = self.workers[w].reserved;
        let window = Duration::from_secs_f64(self.batching.interactive_window_ms / 1000.0);
        let i = &self.interactive;
        let latency = if !reserved
            && self.workers.iter().any(|s| s.reserved)
            && self.queue.waiting_interactive() == 0
        {
            // Queries have a worker of their own: the others run batch work at full size.
            None
        } else if self.tail_allowed() {
            self.tail_budget()
        } else {
            self.latency_budget()
        };
        Shape {
            latency: latency.zip(self.cost),
            interactive_recent: i.tokenizing > 0
                || i.seen
                    .is_some_and(|t| now.saturating_duration_since(t) < window),
            interactive_only: reserved,
        }
    }

    /// Until when the last idle worker should wait for an interactive request rather than take
    /// batch work (see the module's documentation); `None`: no hold.
    fn hold_until(&self, now: Instant) -> Option<Instant> {
        if self.queue.waiting_interactive() > 0
            || self.workers.iter().any(|s| s.reserved)
            || self.tail_allowed()
        {
            return None;
        }
        let hold = self.latency_budget()? / HOLD_FRACTION;
        let i = &self.interactive;
        let until = if i.tokenizing > 0 {
            i.accepted? + hold
        } else if i.gap.is_none_or(|g| g < hold.as_secs_f64()) {
            i.answered? + hold
        } else {
            return None;
        };
        (now < until).then_some(until)
    }

    /// Gives every idle worker a batch while texts are queued, without waiting (but for a hold
    /// for the next query).
    fn dispatch_now(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let hold = self.hold_until(now);
        loop {
            let idle: Vec<usize> = (0..self.workers.len())
                .filter(|&w| !self.workers[w].busy)
                .collect();
            // A held worker: the last idle one stays free for the query on its way.
            if hold.is_some() && idle.len() <= 1 {
                break;
            }
            // Reserved workers first (they take interactive texts only), then the others.
            let mut order = idle;
            order.sort_by_key(|&w| !self.workers[w].reserved);
            let mut next = None;
            for w in order {
                let shape = self.shape(now, w);
                if let Some(batch) = self.queue.next_batch(now, shape) {
                    next = Some((w, batch));
                    break;
                }
            }
            let Some((w, batch)) = next else {
                break;
            };
            // The batch is padded here, so the worker only turns it into tensors and runs it.
            let padded = Padded::new(&batch.texts, self.spec.encoder.pad_token_id);
            let tokens: usize = batch.texts.iter().map(|t| t.len()).sum();
            self.metrics
                .batch(padded.rows, padded.padded_tokens(), tokens);
            // The batch is a child of its leading request's `inference` span and links to the
            // other requests it serves (so one request's trace holds its batches).
            let mut fault = None;
            let mut parent = None;
            let mut others = Vec::new();
            for (id, _) in &batch.owners {
                if let Some(p) = self.queue.get(*id) {
                    drop(p.queue_span.take());
                    let inference = p
                        .inference_span
                        .get_or_init(|| tracing::debug_span!(parent: &p.span, "inference"));
                    match parent {
                        None => parent = inference.id(),
                        Some(_) => others.push(p.span.clone()),
                    }
                    fault = fault.or(p.fault);
                }
            }
            let span = tracing::debug_span!(
                parent: parent,
                "batch",
                worker = w,
                texts = padded.rows,
                padded_tokens = padded.padded_tokens()
            );
            for other in &others {
                span.follows_from(other);
            }
            let tokens: Vec<bool> = batch
                .owners
                .iter()
                .map(|(id, _)| self.queue.get(*id).is_some_and(|p| p.all_tokens))
                .collect();
            let tokens = if tokens.contains(&true) {
                tokens
            } else {
                Vec::new()
            };
            self.workers[w].busy = true;
            let padded_tokens = padded.padded_tokens();
            // A query arriving while this runs (and no worker is free) counts as delayed.
            self.workers[w].long = self
                .cost
                .zip(self.latency_budget())
                .is_some_and(|(c, budget)| c.estimate(padded_tokens) > budget);
            let send = self.workers[w].addr.send(Forward {
                batch: padded,
                span,
                tokens,
                fault,
                sent: Instant::now(),
            });
            ctx.spawn(
                actix::fut::wrap_future(send).map(move |result, act: &mut Router, ctx| {
                    act.workers[w].busy = false;
                    act.workers[w].long = false;
                    let result =
                        result.unwrap_or(Err(InferError::Gone(super::ActorKind::ModelWorker)));
                    act.guarded("completing a batch", |act| {
                        act.complete(batch, padded_tokens, result);
                        act.dispatch(ctx);
                    });
                }),
            );
        }
        if let Some(until) = hold
            && self.queue.waiting() > 0
            && self.hold_timer.is_none()
        {
            // When the hold is over (what it waited for did not come in time), dispatch again;
            // a later answer may start a new hold.
            self.hold_timer = Some(ctx.run_later(until - now, |act, ctx| {
                act.hold_timer = None;
                act.guarded("dispatching", |act| act.dispatch(ctx));
            }));
        }
        self.metrics.queue_depth(self.queue.waiting());
    }

    /// Hands a finished batch's rows to their requests and answers each request whose last
    /// row this was; a failed batch fails its requests. A forward that ran rescales the cost.
    fn complete(
        &mut self,
        batch: Batch,
        padded_tokens: usize,
        result: Result<ForwardOutput, InferError>,
    ) {
        let out = match result {
            Ok(out) => out,
            Err(e) => {
                for p in self.queue.fail(batch) {
                    let _ = p.reply.send(Err(e.clone()));
                }
                return;
            }
        };
        self.metrics.stage(Stage::Inference, out.elapsed);
        if let Some(c) = &mut self.cost {
            c.observe(padded_tokens, out.elapsed);
        }
        let (done, failed) = self.queue.complete(
            batch,
            out.embeddings,
            out.started,
            out.started + out.elapsed,
            out.handoff,
        );
        for p in failed {
            let _ = p.reply.send(Err(InferError::Panicked {
                actor: self.id,
                message: "a batch came back with the wrong number of rows".into(),
            }));
        }
        for a in done {
            if a.priority == Priority::Interactive {
                let now = Instant::now();
                self.interactive.answered = Some(now);
                self.interactive.seen = Some(now);
            }
            self.answer(a);
        }
    }

    fn answer(&self, a: Answered<Pending>) {
        let Answered {
            data: p,
            mut rows,
            priority,
            enqueued,
            first_start,
            last_end,
            handoff,
        } = a;
        if p.normalize {
            rows.iter_mut().for_each(|r| normalize_l2(r));
        }
        let timings = Timings {
            tokenize: p.tokenize,
            queue: first_start.saturating_duration_since(enqueued),
            inference: last_end.saturating_duration_since(first_start),
            total: p.accepted.elapsed(),
            handoff: p.handoff + handoff,
        };
        self.metrics.stage(Stage::Queue, timings.queue);
        self.metrics.stage(Stage::Handoff, timings.handoff);
        self.metrics.stage(Stage::Total, timings.total);
        self.metrics.priority(priority, rows.len(), &timings);
        tracing::debug!(
            parent: &p.span,
            texts = rows.len(),
            total_us = timings.total.as_micros() as u64,
            "answered"
        );
        let _ = p.reply.send(Ok(EmbedOutput {
            embeddings: rows,
            token_counts: p.token_counts,
            timings,
        }));
    }

    /// Accepts a request: checks readiness and the queue limit, then has it tokenized.
    fn accept(
        &mut self,
        msg: Embed,
        ctx: &mut Context<Self>,
    ) -> Result<oneshot::Receiver<Answer>, InferError> {
        if self.lifecycle.is_stopping() || self.failed {
            return Err(InferError::ShuttingDown);
        }
        if !self.lifecycle.is_ready() {
            return Err(InferError::NotReady);
        }
        // Texts waiting (tokenizing or queued): everything admitted but what is running. The
        // admission count already holds this request's texts.
        let adding = msg.permit.texts();
        let waiting = self
            .admission
            .texts()
            .saturating_sub(self.queue.running() + adding);
        let limit = self.batching.max_queue_texts;
        if waiting + adding > limit {
            return Err(InferError::QueueFull {
                waiting,
                adding,
                limit,
            });
        }
        let (reply, rx) = oneshot::channel();
        let now = Instant::now();
        let priority = msg
            .priority
            .unwrap_or(if adding <= self.batching.interactive_max_texts {
                Priority::Interactive
            } else {
                Priority::Batch
            });
        if priority == Priority::Interactive {
            // It waits behind a long forward when every worker is busy and one runs long.
            let delayed =
                self.workers.iter().all(|s| s.busy) && self.workers.iter().any(|s| s.long);
            let i = &mut self.interactive;
            i.delayed += DELAYED_SMOOTHING * (f64::from(u8::from(delayed)) - i.delayed);
            if let Some(answered) = i.answered {
                let gap = now.saturating_duration_since(answered).as_secs_f64();
                let g = i.gap.get_or_insert(gap);
                *g += GAP_SMOOTHING * (gap - *g);
            }
            i.tokenizing += 1;
            i.accepted = Some(now);
            i.seen = Some(now);
        }
        let accepted = Accepted {
            priority,
            reply,
            handoff: now.saturating_duration_since(msg.sent),
            // A classifier's rows are logits, and token states are raw: never normalised,
            // whatever the request says.
            normalize: self.spec.task == Task::Embedding
                && !msg.all_tokens
                && msg.normalize.unwrap_or(self.spec.normalize),
            all_tokens: msg.all_tokens,
            at: now,
            span: msg.span.clone(),
            deadline: msg.deadline,
            permit: msg.permit,
        };
        let tokenize = self.tokenizers.send(Tokenize {
            inputs: msg.inputs,
            pairs: msg.pairs,
            truncate: msg.truncate,
            direction: msg.direction,
            span: msg.span,
        });
        ctx.spawn(
            actix::fut::wrap_future(tokenize).map(move |res, act: &mut Router, ctx| {
                let res = res.unwrap_or(Err(InferError::Gone(super::ActorKind::Tokenizer)));
                act.guarded("queueing a request", |act| {
                    act.enqueue(res, accepted);
                    act.dispatch(ctx);
                });
            }),
        );
        Ok(rx)
    }
}

impl Actor for Router {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.table.set(self.id, ActorState::Idle);
        // What a forward costs, as the first worker timed it after its warm-up.
        if let Some(worker) = self.workers.first() {
            let ask = worker.addr.send(MeasuredCost);
            ctx.spawn(
                actix::fut::wrap_future(ask).map(|cost, act: &mut Router, _| {
                    if act.cost.is_none() {
                        act.cost = cost.ok().flatten();
                        if let Some(c) = act.cost {
                            tracing::info!(
                                model = %act.spec.name,
                                per_forward_ms = c.per_forward().as_secs_f64() * 1e3,
                                per_token_us = c.per_token().as_secs_f64() * 1e6,
                                latency_budget_ms = act
                                    .latency_budget()
                                    .map(|b| b.as_secs_f64() * 1e3),
                                tail_budget_ms = act.tail_budget().map(|b| b.as_secs_f64() * 1e3),
                                "forward cost measured"
                            );
                        }
                    }
                }),
            );
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.table.set(self.id, ActorState::Stopped);
        tracing::debug!(actor = "router", "stopped");
    }
}

impl Handler<Embed> for Router {
    type Result = Result<oneshot::Receiver<Answer>, InferError>;

    fn handle(&mut self, msg: Embed, ctx: &mut Self::Context) -> Self::Result {
        let mut result = Err(InferError::Panicked {
            actor: self.id,
            message: "accepting the request".into(),
        });
        self.guarded("accepting a request", |act| result = act.accept(msg, ctx));
        result
    }
}

/// Forwards `/tokenize` and `/decode` work to the tokenizer pool (the Router holds its
/// address; the front ends never talk to the pool directly).
#[derive(Message)]
#[rtype(result = "Result<Tokens, InferError>")]
pub enum TokenizerWork {
    /// Every token of some texts.
    Inspect(Inspect),
    /// The texts of some token ids.
    Decode(Decode),
}

/// What [`TokenizerWork`] answers.
#[derive(Debug)]
pub enum Tokens {
    /// Per text, its tokens.
    Inspected(Vec<Vec<crate::model::TokenInfo>>),
    /// Per list of ids, its text.
    Decoded(Vec<String>),
}

impl Handler<TokenizerWork> for Router {
    type Result = ResponseFuture<Result<Tokens, InferError>>;

    fn handle(&mut self, work: TokenizerWork, _ctx: &mut Self::Context) -> Self::Result {
        if self.lifecycle.is_stopping() || self.failed {
            return Box::pin(async { Err(InferError::ShuttingDown) });
        }
        let pool = self.tokenizers.clone();
        let gone = |_| InferError::Gone(super::ActorKind::Tokenizer);
        Box::pin(async move {
            match work {
                TokenizerWork::Inspect(m) => {
                    Ok(Tokens::Inspected(pool.send(m).await.map_err(gone)??))
                }
                TokenizerWork::Decode(m) => Ok(Tokens::Decoded(pool.send(m).await.map_err(gone)??)),
            }
        })
    }
}

impl Handler<Stop> for Router {
    type Result = ();

    fn handle(&mut self, _msg: Stop, ctx: &mut Self::Context) {
        let left = self.queue.drain();
        if !left.is_empty() {
            tracing::warn!(
                requests = left.len(),
                "router stopped with requests still queued; they were failed"
            );
        }
        for p in left {
            let _ = p.reply.send(Err(InferError::ShuttingDown));
        }
        ctx.stop();
    }
}
