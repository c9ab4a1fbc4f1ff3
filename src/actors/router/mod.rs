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
    batcher::{Budget, Cost, Priority, Queue},
    job::{Job, Rows},
    metrics::{Recorder, Stage},
    model_worker::{Forward, MeasuredCost, ModelWorker},
    supervisor::{InjectFault, Shutdown, StopReason},
    tokenizer::{Decode, Inspect, Tokenize, Tokenized, TokenizerActor},
};
use crate::{config::Batching, fault::Fault, model::ModelSpec};

mod schedule;
#[cfg(test)]
mod tests;

/// What the Router answers: the rows, or why not.
pub type Answer = Result<EmbedOutput, InferError>;

/// Run some texts through the model. Answered at once with a receiver for the result (or an
/// error if the request is refused); dropping the receiver cancels the request's queued work.
#[derive(Message)]
#[rtype(result = "Result<oneshot::Receiver<Answer>, InferError>")]
pub struct Embed {
    /// What the request asks, as the front end built it: its texts go to a tokenizer, its
    /// [`Rows`] shape the answer.
    pub job: Job,
    /// The request's span.
    pub span: tracing::Span,
    /// When the front end sent this message (for the hand-off time).
    pub sent: Instant,
    /// Past this instant the request's texts are dropped before inference and it is answered
    /// "deadline exceeded".
    pub deadline: Instant,
    /// The request's admission; released with its work.
    pub permit: Permit,
    /// The call's priority (a header, the route's default), used when the job names none;
    /// neither: interactive up to `batching.interactive_max_texts` texts, batch beyond.
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
    /// How its rows are shaped (the job's).
    rows: Rows,
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
    rows: Rows,
    at: Instant,
    span: tracing::Span,
    deadline: Instant,
    permit: Permit,
}

/// A model worker and whether it has a batch.
struct Slot {
    /// Where its batches go.
    forward: Recipient<Forward>,
    /// Asked once what a forward costs.
    cost: Recipient<MeasuredCost>,
    busy: bool,
    /// Its batch is expected to take longer than the latency budget (a tail forward, or a full
    /// one while no interactive request was about).
    long: bool,
    /// Only takes batches of interactive texts (`batching.reserved_interactive_instances`).
    reserved: bool,
}

/// The tokenizer pool, as the Router sends to it (recipients, so a test can stand in for it).
pub struct Tokenizers {
    /// A request's texts.
    pub tokenize: Recipient<Tokenize>,
    /// `/tokenize`.
    pub inspect: Recipient<Inspect>,
    /// `/decode`.
    pub decode: Recipient<Decode>,
}

impl From<Addr<TokenizerActor>> for Tokenizers {
    fn from(a: Addr<TokenizerActor>) -> Tokenizers {
        Tokenizers {
            tokenize: a.clone().recipient(),
            inspect: a.clone().recipient(),
            decode: a.recipient(),
        }
    }
}

/// A model worker, as the Router sends to it.
pub struct Worker {
    /// Its batches.
    pub forward: Recipient<Forward>,
    /// What a forward costs.
    pub cost: Recipient<MeasuredCost>,
}

impl From<Addr<ModelWorker>> for Worker {
    fn from(a: Addr<ModelWorker>) -> Worker {
        Worker {
            forward: a.clone().recipient(),
            cost: a.recipient(),
        }
    }
}

/// Who the Router tells of a panic (stop the server) and of a fault a test injects: the
/// Supervisor.
pub struct Bosses {
    /// Stop the server.
    pub shutdown: Recipient<Shutdown>,
    /// A test's fault for the Supervisor or Metrics.
    pub fault: Recipient<InjectFault>,
}

impl<A> From<Addr<A>> for Bosses
where
    A: Actor + Handler<Shutdown> + Handler<InjectFault>,
    A::Context: actix::dev::ToEnvelope<A, Shutdown> + actix::dev::ToEnvelope<A, InjectFault>,
{
    fn from(a: Addr<A>) -> Bosses {
        Bosses {
            shutdown: a.clone().recipient(),
            fault: a.recipient(),
        }
    }
}

/// The Router actor.
pub struct Router {
    /// `router` for the first model's, `router-N` for later ones.
    id: ActorId,
    tokenizers: Tokenizers,
    workers: Vec<Slot>,
    queue: Queue<Pending>,
    batching: Batching,
    spec: Arc<ModelSpec>,
    lifecycle: Arc<Lifecycle>,
    admission: Arc<Admission>,
    metrics: Recorder,
    table: Arc<ActorTable>,
    supervisor: Bosses,
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
        tokenizers: impl Into<Tokenizers>,
        workers: Vec<impl Into<Worker>>,
        batching: Batching,
        spec: Arc<ModelSpec>,
        lifecycle: Arc<Lifecycle>,
        admission: Arc<Admission>,
        metrics: Recorder,
        table: Arc<ActorTable>,
        supervisor: impl Into<Bosses>,
    ) -> Router {
        // At least one worker takes batch work (the configuration checks it too).
        let reserved = batching
            .reserved_interactive_instances
            .min(workers.len().saturating_sub(1));
        Router {
            id: ActorId::Router(index),
            tokenizers: tokenizers.into(),
            workers: workers
                .into_iter()
                .map(Into::into)
                .enumerate()
                .map(|(i, Worker { forward, cost })| Slot {
                    forward,
                    cost,
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
            supervisor: supervisor.into(),
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
            self.supervisor
                .shutdown
                .do_send(Shutdown(StopReason::Fatal(format!(
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
            rows,
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
            rows,
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
                self.supervisor.fault.do_send(InjectFault(f));
            }
            _ => {}
        }
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
        let Embed {
            job,
            span,
            sent,
            deadline,
            permit,
            priority,
        } = msg;
        let priority =
            job.priority
                .or(priority)
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
            handoff: now.saturating_duration_since(sent),
            rows: job.rows,
            at: now,
            span: span.clone(),
            deadline,
            permit,
        };
        let tokenize = self.tokenizers.tokenize.send(Tokenize {
            texts: job.texts,
            span,
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
            let ask = worker.cost.send(MeasuredCost);
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
        let (inspect, decode) = (
            self.tokenizers.inspect.clone(),
            self.tokenizers.decode.clone(),
        );
        let gone = |_| InferError::Gone(super::ActorKind::Tokenizer);
        Box::pin(async move {
            match work {
                TokenizerWork::Inspect(m) => {
                    Ok(Tokens::Inspected(inspect.send(m).await.map_err(gone)??))
                }
                TokenizerWork::Decode(m) => {
                    Ok(Tokens::Decoded(decode.send(m).await.map_err(gone)??))
                }
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
