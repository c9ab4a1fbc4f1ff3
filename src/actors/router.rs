//! Router: takes requests from the front ends, has them tokenized, queues their texts, packs
//! queued texts into batches and hands each batch to an idle model worker, then reassembles
//! every request's outputs in order and answers it.
//!
//! Owns: the queue of tokenized texts and the knowledge of which worker is idle. Sent to by:
//! the HTTP and gRPC front ends ([`Embed`]) and the Supervisor ([`Stop`]). Runs on the
//! Supervisor's arbiter; all its state is single-threaded (`Rc`, `RefCell`).
//!
//! Batching: whenever a worker is idle and texts are queued, the worker gets the longest run of
//! queued texts that fits `batching.max_batch_size` texts and `batching.max_batch_tokens`
//! padded tokens. A request's texts may be split over several batches (and workers); its answer
//! goes out when its last text is done. A text whose client has gone (the caller dropped its
//! receiver) is skipped before inference and counted.

use std::{
    cell::{Cell, RefCell},
    collections::VecDeque,
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use actix::prelude::*;
use tokio::sync::oneshot;

use super::{
    ActorState, ActorTable, InFlight, Lifecycle, Permit,
    metrics::{Recorder, Stage},
    model_worker::{Forward, ForwardOutput, ModelWorker},
    tokenizer::{Tokenize, Tokenized, TokenizerActor},
};
use crate::{
    config::Batching,
    error::{ApiError, ErrorKind},
    fault::Fault,
    model::{Encoded, ModelSpec, Task, bert::Padded, normalize_l2},
};

/// Embed some texts. Answered at once with a receiver for the result (or an error if the
/// request is refused); dropping the receiver cancels the request's queued work.
#[derive(Message)]
#[rtype(result = "Result<oneshot::Receiver<Result<EmbedOutput, ApiError>>, ApiError>")]
pub struct Embed {
    /// The texts, in order; never empty (the front ends check).
    pub texts: Vec<String>,
    /// Second segments of (text, pair) inputs, as many as `texts` (cross-encoders); `None`
    /// for single texts.
    pub pairs: Option<Vec<String>>,
    /// L2-normalise; `None` for the model's default.
    pub normalize: Option<bool>,
    /// Truncate over-long texts (else they fail the request).
    pub truncate: bool,
    /// The request's span.
    pub span: tracing::Span,
    /// When the front end sent this message (for the hand-off time).
    pub sent: Instant,
    /// Past this instant the request's texts are dropped before inference and it is answered
    /// "deadline exceeded".
    pub deadline: Instant,
    /// The request's room under `server.max_concurrent_requests`; released with its work.
    pub permit: Permit,
}

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
    /// One embedding per text, in order.
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

type Reply = oneshot::Sender<Result<EmbedOutput, ApiError>>;

/// A request whose texts are queued or running. Shared (`Rc`) by its queued texts.
struct Pending {
    reply: RefCell<Option<Reply>>,
    outputs: RefCell<Vec<Vec<f32>>>,
    token_counts: Vec<u32>,
    remaining: Cell<usize>,
    normalize: bool,
    accepted: Instant,
    tokenize: Duration,
    enqueued: Instant,
    first_start: Cell<Option<Instant>>,
    last_end: Cell<Option<Instant>>,
    handoff: Cell<Duration>,
    span: tracing::Span,
    deadline: Instant,
    /// Counts the request in the Lifecycle until the request is dropped.
    _in_flight: InFlight,
    /// Holds the request's admission until every text is done or dropped.
    _permit: Permit,
}

impl Pending {
    /// True if nobody will read the answer (the client left, or it already failed).
    fn is_abandoned(&self) -> bool {
        self.reply.borrow().as_ref().is_none_or(|tx| tx.is_closed())
    }

    /// True if the request's deadline has passed.
    fn is_expired(&self, now: Instant) -> bool {
        now >= self.deadline
    }

    fn fail(&self, error: ApiError) {
        if let Some(tx) = self.reply.borrow_mut().take() {
            let _ = tx.send(Err(error));
        }
    }
}

/// A request the Router accepted, while its texts are being tokenized.
struct Accepted {
    /// Texts in the request.
    texts: usize,
    /// Front end → Router.
    handoff: Duration,
    reply: Reply,
    normalize: bool,
    at: Instant,
    span: tracing::Span,
    in_flight: InFlight,
    deadline: Instant,
    permit: Permit,
}

/// One queued text.
struct Queued {
    request: Rc<Pending>,
    index: usize,
    text: Encoded,
    /// A test's injected fault for the batch this text lands in (see `crate::fault`).
    fault: Option<Fault>,
}

/// The answer for a request whose deadline passed while it waited.
fn expired() -> ApiError {
    ApiError::new(
        ErrorKind::DeadlineExceeded,
        "the request's deadline passed while it waited; it was dropped before inference",
    )
}

/// How many times `max_batch_size` queued texts the length grouping looks at.
const GROUPING_WINDOW: usize = 4;

/// A model worker and whether it has a batch.
struct Slot {
    addr: Addr<ModelWorker>,
    busy: bool,
}

/// The Router actor.
pub struct Router {
    tokenizers: Addr<TokenizerActor>,
    workers: Vec<Slot>,
    queue: VecDeque<Queued>,
    batching: Batching,
    spec: Arc<ModelSpec>,
    lifecycle: Arc<Lifecycle>,
    metrics: Recorder,
    table: Arc<ActorTable>,
    pad_id: i64,
    max_wait: Duration,
    /// The pending `max_wait_ms` timer, if a batch is being held.
    wait_timer: Option<SpawnHandle>,
    /// Texts accepted and still being tokenized (they count against the queue's limit).
    tokenizing: usize,
}

impl Router {
    /// A Router over the given pools.
    pub fn new(
        tokenizers: Addr<TokenizerActor>,
        workers: Vec<Addr<ModelWorker>>,
        batching: Batching,
        spec: Arc<ModelSpec>,
        lifecycle: Arc<Lifecycle>,
        metrics: Recorder,
        table: Arc<ActorTable>,
    ) -> Router {
        Router {
            tokenizers,
            workers: workers
                .into_iter()
                .map(|addr| Slot { addr, busy: false })
                .collect(),
            queue: VecDeque::new(),
            pad_id: spec.encoder.pad_token_id,
            max_wait: Duration::from_secs_f64(batching.max_wait_ms / 1000.0),
            wait_timer: None,
            tokenizing: 0,
            batching,
            spec,
            lifecycle,
            metrics,
            table,
        }
    }

    /// Called when a request's texts come back from a tokenizer.
    fn enqueue(
        &mut self,
        tokenized: Result<Tokenized, ApiError>,
        accepted: Accepted,
        ctx: &mut Context<Self>,
    ) {
        let Accepted {
            texts,
            handoff,
            reply,
            normalize,
            at: accepted,
            span,
            in_flight,
            deadline,
            permit,
        } = accepted;
        self.tokenizing -= texts;
        let tokenized = match tokenized {
            Ok(t) => t,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        if Instant::now() >= deadline {
            self.metrics.skipped("deadline", tokenized.encodings.len());
            let _ = reply.send(Err(expired()));
            return;
        }
        if reply.is_closed() {
            self.metrics
                .skipped("client_gone", tokenized.encodings.len());
            return;
        }
        self.metrics.stage(Stage::Tokenize, tokenized.elapsed);
        let n = tokenized.encodings.len();
        tracing::debug!(parent: &span, texts = n, "queued");
        let request = Rc::new(Pending {
            reply: RefCell::new(Some(reply)),
            outputs: RefCell::new(vec![Vec::new(); n]),
            token_counts: tokenized.encodings.iter().map(|e| e.len() as u32).collect(),
            remaining: Cell::new(n),
            normalize,
            accepted,
            tokenize: tokenized.elapsed,
            enqueued: Instant::now(),
            first_start: Cell::new(None),
            last_end: Cell::new(None),
            handoff: Cell::new(handoff),
            span,
            deadline,
            _in_flight: in_flight,
            _permit: permit,
        });
        for (index, text) in tokenized.encodings.into_iter().enumerate() {
            self.queue.push_back(Queued {
                request: request.clone(),
                index,
                text,
                fault: tokenized.fault,
            });
        }
        self.dispatch(ctx);
    }

    /// Gives every idle worker a batch while texts are queued.
    fn dispatch(&mut self, ctx: &mut Context<Self>) {
        // batching.max_wait_ms: hold a batch that is not full yet until its oldest text has
        // waited that long, so more texts can join it. 0 (the default): never wait.
        if self.max_wait > Duration::ZERO
            && self.queue.len() < self.batching.max_batch_size
            && let Some(oldest) = self.queue.front()
        {
            let waited = oldest.request.enqueued.elapsed();
            if waited < self.max_wait && self.workers.iter().any(|s| !s.busy) {
                if self.wait_timer.is_none() {
                    self.wait_timer = Some(ctx.run_later(self.max_wait - waited, |act, ctx| {
                        act.wait_timer = None;
                        act.dispatch_now(ctx);
                    }));
                }
                self.metrics.queue_depth(self.queue.len());
                return;
            }
        }
        self.dispatch_now(ctx);
    }

    /// Gives every idle worker a batch while texts are queued, without waiting.
    fn dispatch_now(&mut self, ctx: &mut Context<Self>) {
        while let Some(w) = self.workers.iter().position(|s| !s.busy) {
            let batch = self.next_batch();
            if batch.is_empty() {
                break;
            }
            // The batch is padded here, so the worker only turns it into tensors and runs it;
            // the Router keeps who each row belongs to.
            let fault = batch.iter().find_map(|q| q.fault);
            let tokens: usize = batch.iter().map(|q| q.text.len()).sum();
            let padded = Padded::new(batch.iter().map(|q| &q.text), self.pad_id);
            let owners: Vec<(Rc<Pending>, usize)> =
                batch.into_iter().map(|q| (q.request, q.index)).collect();
            let (rows, padded_tokens) = (padded.rows, padded.padded_tokens());
            self.metrics.batch(rows, padded_tokens, tokens);
            let span = tracing::debug_span!("batch", worker = w, texts = rows, padded_tokens);
            for (request, _) in &owners {
                span.follows_from(&request.span);
            }
            self.workers[w].busy = true;
            let send = self.workers[w].addr.send(Forward {
                batch: padded,
                span,
                fault,
                sent: Instant::now(),
            });
            ctx.spawn(
                actix::fut::wrap_future(send).map(move |result, act: &mut Router, ctx| {
                    act.workers[w].busy = false;
                    let result = result.unwrap_or_else(|e| {
                        Err(ApiError::internal(format!("model worker {w} is gone: {e}")))
                    });
                    act.complete(owners, result);
                    act.dispatch(ctx);
                }),
            );
        }
        self.metrics.queue_depth(self.queue.len());
    }

    /// Takes the next batch off the queue within the text and padded-token budgets, skipping
    /// texts nobody waits for. The oldest text always goes; the rest are chosen, among the
    /// oldest [`GROUPING_WINDOW`] × `max_batch_size` queued texts, by closeness of length to
    /// it, so padding stays small; ties go to the older text.
    fn next_batch(&mut self) -> Vec<Queued> {
        // Drop, before any inference, texts whose deadline has passed (their request is
        // answered "deadline exceeded") and texts nobody waits for any more.
        let now = Instant::now();
        let (mut expired_texts, mut gone) = (0, 0);
        self.queue.retain(|q| {
            if q.request.is_expired(now) {
                q.request.fail(expired());
                expired_texts += 1;
                false
            } else if q.request.is_abandoned() {
                gone += 1;
                false
            } else {
                true
            }
        });
        if expired_texts > 0 {
            self.metrics.skipped("deadline", expired_texts);
        }
        if gone > 0 {
            self.metrics.skipped("client_gone", gone);
        }
        let Some(anchor) = self.queue.front().map(|q| q.text.len()) else {
            return Vec::new();
        };
        let window = self
            .queue
            .len()
            .min(GROUPING_WINDOW * self.batching.max_batch_size);
        let mut order: Vec<usize> = (0..window).collect();
        order.sort_by_key(|&i| (self.queue[i].text.len().abs_diff(anchor), i));
        let (mut picked, mut longest) = (Vec::new(), 0);
        for i in order {
            if picked.len() >= self.batching.max_batch_size {
                break;
            }
            let len = longest.max(self.queue[i].text.len());
            if !picked.is_empty() && len * (picked.len() + 1) > self.batching.max_batch_tokens {
                continue;
            }
            longest = len;
            picked.push(i);
        }
        picked.sort_unstable();
        picked
            .into_iter()
            .rev()
            .filter_map(|i| self.queue.remove(i))
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect()
    }

    /// Hands a finished batch's outputs to their requests; answers each request whose last
    /// text this was.
    fn complete(
        &mut self,
        owners: Vec<(Rc<Pending>, usize)>,
        result: Result<ForwardOutput, ApiError>,
    ) {
        let out = match result {
            Ok(out) => out,
            Err(e) => {
                for (request, _) in &owners {
                    request.fail(e.clone());
                }
                return;
            }
        };
        let end = out.started + out.elapsed;
        self.metrics.stage(Stage::Inference, out.elapsed);
        for ((r, index), mut embedding) in owners.into_iter().zip(out.embeddings) {
            if r.first_start.get().is_none() {
                r.first_start.set(Some(out.started));
                r.handoff.set(r.handoff.get() + out.handoff);
                self.metrics.stage(Stage::Handoff, r.handoff.get());
                self.metrics.stage(
                    Stage::Queue,
                    out.started.saturating_duration_since(r.enqueued),
                );
            }
            r.last_end.set(Some(end));
            if r.normalize {
                normalize_l2(&mut embedding);
            }
            r.outputs.borrow_mut()[index] = embedding;
            r.remaining.set(r.remaining.get() - 1);
            if r.remaining.get() == 0 {
                self.answer(&r);
            }
        }
    }

    fn answer(&self, r: &Pending) {
        let Some(tx) = r.reply.borrow_mut().take() else {
            return;
        };
        let start = r.first_start.get().unwrap_or(r.enqueued);
        let timings = Timings {
            tokenize: r.tokenize,
            queue: start.saturating_duration_since(r.enqueued),
            inference: r
                .last_end
                .get()
                .unwrap_or(start)
                .saturating_duration_since(start),
            total: r.accepted.elapsed(),
            handoff: r.handoff.get(),
        };
        self.metrics.stage(Stage::Total, timings.total);
        tracing::debug!(
            parent: &r.span,
            texts = r.token_counts.len(),
            total_us = timings.total.as_micros() as u64,
            "answered"
        );
        let _ = tx.send(Ok(EmbedOutput {
            embeddings: std::mem::take(&mut *r.outputs.borrow_mut()),
            token_counts: r.token_counts.clone(),
            timings,
        }));
    }
}

impl Actor for Router {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        self.table.set("router", ActorState::Idle);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.table.set("router", ActorState::Stopped);
        tracing::debug!(actor = "router", "stopped");
    }
}

impl Handler<Embed> for Router {
    type Result = Result<oneshot::Receiver<Result<EmbedOutput, ApiError>>, ApiError>;

    fn handle(&mut self, msg: Embed, ctx: &mut Self::Context) -> Self::Result {
        if self.lifecycle.is_stopping() {
            return Err(ApiError::shutting_down());
        }
        if !self.lifecycle.is_ready() {
            return Err(ApiError::not_ready());
        }
        let waiting = self.queue.len() + self.tokenizing;
        let limit = self.batching.max_queue_texts;
        if waiting + msg.texts.len() > limit {
            return Err(ApiError::new(
                ErrorKind::Overloaded,
                format!(
                    "the queue holds {waiting} texts and this request adds {}, over \
                     batching.max_queue_texts = {limit}; retry later",
                    msg.texts.len()
                ),
            ));
        }
        self.tokenizing += msg.texts.len();
        let (reply, rx) = oneshot::channel();
        let now = Instant::now();
        let accepted = Accepted {
            texts: msg.texts.len(),
            handoff: now.saturating_duration_since(msg.sent),
            reply,
            // A classifier's rows are logits: never normalised, whatever the request says.
            normalize: self.spec.task == Task::Embedding
                && msg.normalize.unwrap_or(self.spec.normalize),
            at: now,
            span: msg.span.clone(),
            in_flight: self.lifecycle.track(),
            deadline: msg.deadline,
            permit: msg.permit,
        };
        let tokenize = self.tokenizers.send(Tokenize {
            texts: msg.texts,
            pairs: msg.pairs,
            truncate: msg.truncate,
            span: msg.span,
        });
        ctx.spawn(
            actix::fut::wrap_future(tokenize).map(move |res, act: &mut Router, ctx| {
                let res = res.unwrap_or_else(|e| {
                    Err(ApiError::internal(format!(
                        "the tokenizer pool is gone: {e}"
                    )))
                });
                act.enqueue(res, accepted, ctx);
            }),
        );
        Ok(rx)
    }
}

impl Handler<Stop> for Router {
    type Result = ();

    fn handle(&mut self, _msg: Stop, ctx: &mut Self::Context) {
        let left = self.queue.len();
        for q in self.queue.drain(..) {
            q.request.fail(ApiError::shutting_down());
        }
        if left > 0 {
            tracing::warn!(
                texts = left,
                "router stopped with texts still queued; they were failed"
            );
        }
        ctx.stop();
    }
}
