//! The Router's scheduling: which queued texts go to which idle worker and when (the latency
//! and tail budgets, the hold for the next query, `batching.max_wait_ms`), and the answer to a
//! request once its last row is back (its rows shaped as its [`Job`](super::Job) asked).

use std::time::{Duration, Instant};

use actix::prelude::*;

use super::{
    AUTO_BUDGET_FORWARDS, AUTO_BUDGET_TOKENS, AUTO_TAIL_FORWARDS, EmbedOutput, HOLD_FRACTION,
    Pending, Router, Timings,
};
use crate::{
    actors::{
        InferError,
        batcher::{Answered, Batch, Dropped, Priority, Shape},
        metrics::Stage,
        model_worker::{Forward, ForwardOutput},
    },
    config::LatencyBudget,
    model::bert::Padded,
};

impl Router {
    /// Gives every idle worker a batch while texts are queued, holding a batch that is not
    /// full for up to `batching.max_wait_ms` so more texts can join it.
    pub(super) fn dispatch(&mut self, ctx: &mut Context<Self>) {
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
    pub(super) fn sweep(&mut self) {
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
    pub(super) fn latency_budget(&self) -> Option<Duration> {
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
    pub(super) fn tail_budget(&self) -> Option<Duration> {
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
    pub(super) fn tail_allowed(&self) -> bool {
        self.queue.waiting_interactive() == 0
            && self.interactive.tokenizing == 0
            && self.interactive.delayed < self.batching.tail_share
            && self.tail_budget().is_some()
    }

    /// What shapes the next batch for worker `w` at `now`.
    pub(super) fn shape(&self, now: Instant, w: usize) -> Shape {
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
    pub(super) fn hold_until(&self, now: Instant) -> Option<Instant> {
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
    pub(super) fn dispatch_now(&mut self, ctx: &mut Context<Self>) {
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
                .map(|(id, _)| self.queue.get(*id).is_some_and(|p| p.rows.all_tokens))
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
            let send = self.workers[w].forward.send(Forward {
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
                    let result = result
                        .unwrap_or(Err(InferError::Gone(crate::actors::ActorKind::ModelWorker)));
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
    pub(super) fn complete(
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

    pub(super) fn answer(&self, a: Answered<Pending>) {
        let Answered {
            data: p,
            mut rows,
            priority,
            enqueued,
            first_start,
            last_end,
            handoff,
        } = a;
        p.rows.shape(&self.spec, &mut rows);
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
}
