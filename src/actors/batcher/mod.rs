//! The Router's queue as a pure data structure: requests' texts wait, leave in batches within
//! the size, padded-token and latency budgets, and come back as rows that are reassembled per
//! request, in text order. No actors and no clock but the instants passed in, so it is unit-
//! and property-tested: every request gets exactly one outcome (answered, failed or dropped),
//! answered rows are in request order, no batch exceeds its budgets, and no request starves.
//!
//! **Who goes next.** Each request is `interactive` or `batch` ([`Priority`]). At each batch
//! the requests with waiting texts are ranked: first the *aged* ones (no text of theirs in a
//! batch for [`Queue::new`]'s `aging`, any priority), then interactive ones, then batch ones;
//! within a rank, requests that never had a text run come first (in arrival order), then the
//! least recently served (round-robin). The batch is filled in four steps:
//! 1. one text from each aged and each interactive request, in rank order (the first is the
//!    rank's head's first waiting text, the *anchor*; the others, their text closest in length
//!    to it), so a small request queued behind a large one is in the very next batch;
//! 2. more interactive texts, closest in length to the anchor first;
//! 3. one text from each batch request that never had one run (its text closest in length, as
//!    in step 4);
//! 4. more batch texts, closest in length to the batch's longest text when it holds interactive
//!    ones (a short query takes the shortest batch texts along, padding it little), else to the
//!    first batch text taken (or the batch head's).
//!
//! Throughout, the batch stays within `max_batch_size` texts and `max_batch_tokens` padded
//! tokens (a text longer than the token budget still goes, alone, when it leads). While
//! interactive work is about (waiting here, or seen lately by the Router: [`Shape`]), steps 3
//! and 4 add a text only while the batch's expected duration ([`Cost`]) stays within the
//! latency budget: interactive texts never wait behind a long batch of batch work, while a
//! batch job alone keeps its full batches. Texts of interactive requests and the one text an
//! aged request is owed are never held back by the latency budget.
//!
//! Bounds, property-tested: the first batch formed has a text of the top-ranked request; a
//! request that is aged gets a text into one of the next N batches, N the requests waiting at
//! the first batch formed after it aged (only they can rank ahead of it, and the head of the
//! aged rank is served each batch and goes behind the others; some may leave meanwhile, which
//! only shortens the wait); with no latency budget in force and room for one text of each,
//! every request that never had a text run gets one into the next batch. A request's texts may be split over several batches (and workers);
//! it is answered when its last row is back.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

pub use crate::config::Priority;
use crate::model::Encoded;

/// How many times `max_batch_size` waiting texts the length grouping looks at.
pub const GROUPING_WINDOW: usize = 4;

/// A batch's limits (`batching.max_batch_size`, `batching.max_batch_tokens`).
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Most texts in one batch.
    pub max_batch_size: usize,
    /// Most padded tokens (texts × longest text) in one batch.
    pub max_batch_tokens: usize,
}

/// What a forward is expected to take: a fixed part per forward plus a part per padded token,
/// both measured by a worker at warm-up, times a scale that follows how the machine runs now
/// (every forward's time updates it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost {
    /// Seconds per forward, whatever its size.
    per_forward: f64,
    /// Seconds per padded token.
    per_token: f64,
    /// Observed over expected, smoothed (geometric mean of recent forwards).
    scale: f64,
}

/// Weight of the newest forward in [`Cost`]'s scale.
const COST_SMOOTHING: f64 = 0.2;

impl Cost {
    /// A cost of `per_forward` plus `per_token` per padded token.
    pub fn new(per_forward: Duration, per_token: Duration) -> Cost {
        Cost {
            per_forward: per_forward.as_secs_f64(),
            per_token: per_token.as_secs_f64().max(1e-9),
            scale: 1.0,
        }
    }

    /// The line through two timed forwards of `small` and `large` padded tokens (a fixed part
    /// that is never negative, a per-token part that is positive).
    pub fn fit(small: (usize, Duration), large: (usize, Duration)) -> Cost {
        let (x0, y0) = (small.0 as f64, small.1.as_secs_f64());
        let (x1, y1) = (large.0 as f64, large.1.as_secs_f64());
        let per_token = if x1 > x0 {
            ((y1 - y0) / (x1 - x0)).max(y1 / x1 / 10.0)
        } else {
            y1 / x1.max(1.0)
        };
        let per_forward = (y0 - per_token * x0).max(0.0);
        Cost::new(
            Duration::from_secs_f64(per_forward),
            Duration::from_secs_f64(per_token),
        )
    }

    /// The fixed part of a forward, as measured (before scaling).
    pub fn per_forward(&self) -> Duration {
        Duration::from_secs_f64(self.per_forward)
    }

    /// The part per padded token, as measured (before scaling).
    pub fn per_token(&self) -> Duration {
        Duration::from_secs_f64(self.per_token)
    }

    /// The expected duration of a forward of `padded_tokens` (rows × longest row).
    pub fn estimate(&self, padded_tokens: usize) -> Duration {
        Duration::from_secs_f64(
            self.scale * (self.per_forward + self.per_token * padded_tokens as f64),
        )
    }

    /// A forward of `padded_tokens` took `took`: the scale moves toward what it shows (one
    /// forward counts at most tenfold either way, so a preempted one cannot swing it).
    pub fn observe(&mut self, padded_tokens: usize, took: Duration) {
        let base = self.per_forward + self.per_token * padded_tokens as f64;
        if base <= 0.0 {
            return;
        }
        let ratio = (took.as_secs_f64() / base).clamp(0.01, 100.0);
        let (now, seen) = (self.scale.ln(), ratio.ln());
        let seen = seen.clamp(now - 10f64.ln(), now + 10f64.ln());
        self.scale = (now + COST_SMOOTHING * (seen - now)).exp();
    }
}

/// What the Router knows of the moment that shapes the next batch, beyond its budget.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shape {
    /// The latency budget and the cost to check it with; it applies to batch texts while
    /// interactive texts wait here or `interactive_recent`. `None`: no latency budget.
    pub latency: Option<(Duration, Cost)>,
    /// Interactive requests were seen lately (the Router's `interactive_window_ms`).
    pub interactive_recent: bool,
    /// Only interactive texts go (a worker reserved for them).
    pub interactive_only: bool,
}

/// A request's handle in the queue.
pub type RequestId = u64;

/// One request's state while its texts wait or run.
struct Request<R> {
    data: R,
    priority: Priority,
    /// Its texts not yet in a batch, by index.
    waiting: Vec<(usize, Encoded)>,
    rows: Vec<Option<Vec<f32>>>,
    remaining: usize,
    deadline: Instant,
    enqueued: Instant,
    /// When a text of it last went into a batch; `None`: never.
    served: Option<Instant>,
    first_start: Option<Instant>,
    last_end: Option<Instant>,
    handoff: Duration,
}

impl<R> Request<R> {
    /// Since when it has waited for a batch: its last service, else its arrival.
    fn since(&self) -> Instant {
        self.served.unwrap_or(self.enqueued)
    }
}

/// Texts taken off the queue to run together.
#[derive(Debug)]
pub struct Batch {
    /// Whose each row is: (request, the text's index in it).
    pub owners: Vec<(RequestId, usize)>,
    /// The texts, in row order.
    pub texts: Vec<Encoded>,
}

impl Batch {
    /// Rows in the batch.
    pub fn len(&self) -> usize {
        self.owners.len()
    }

    /// True for a batch of no texts (never handed out).
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// Tokens per row once padded (the longest text).
    pub fn padded_len(&self) -> usize {
        self.texts.iter().map(Encoded::len).max().unwrap_or(0)
    }
}

/// An answered request: its rows in text order, and where its time went.
#[derive(Debug)]
pub struct Answered<R> {
    /// What the Router keeps for the request.
    pub data: R,
    /// One row per text, in order.
    pub rows: Vec<Vec<f32>>,
    /// Its priority.
    pub priority: Priority,
    /// When its texts were queued.
    pub enqueued: Instant,
    /// When its first batch started.
    pub first_start: Instant,
    /// When its last batch ended.
    pub last_end: Instant,
    /// Router → worker hand-off of its first batch.
    pub handoff: Duration,
}

/// Why a request left the queue unanswered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dropped {
    /// Its deadline passed while texts of it still waited.
    Expired,
    /// Nobody waits for its answer any more.
    Gone,
}

/// A request's rank at one batch: lower goes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    /// No text of it in a batch for `aging`.
    Aged,
    /// Interactive.
    Interactive,
    /// Batch.
    Batch,
}

/// The batch being built.
struct Building {
    /// (request, position in its `waiting`) of each text taken, in row order.
    picked: Vec<(RequestId, usize)>,
    longest: usize,
    budget: Budget,
    /// The latency budget, when it is in force.
    latency: Option<(Duration, Cost)>,
}

impl Building {
    fn rows(&self) -> usize {
        self.picked.len()
    }

    fn full(&self) -> bool {
        self.picked.len() >= self.budget.max_batch_size
    }

    /// Whether a text of `len` tokens fits the size and token budgets (and, when `timed`, the
    /// latency budget in force). The first text always fits.
    fn fits(&self, len: usize, timed: bool) -> bool {
        let rows = self.rows() + 1;
        let longest = self.longest.max(len);
        if self.rows() == 0 {
            return true;
        }
        if rows > self.budget.max_batch_size || longest * rows > self.budget.max_batch_tokens {
            return false;
        }
        match self.latency {
            Some((limit, cost)) if timed => cost.estimate(longest * rows) <= limit,
            _ => true,
        }
    }

    fn take(&mut self, id: RequestId, pos: usize, len: usize) {
        self.picked.push((id, pos));
        self.longest = self.longest.max(len);
    }

    fn has(&self, id: RequestId, pos: usize) -> bool {
        self.picked.contains(&(id, pos))
    }
}

/// The queue; `R` is what the Router keeps per request (the reply channel, its span...).
pub struct Queue<R> {
    budget: Budget,
    aging: Duration,
    requests: BTreeMap<RequestId, Request<R>>,
    waiting: usize,
    waiting_interactive: usize,
    running: usize,
    next_id: RequestId,
}

impl<R> Queue<R> {
    /// An empty queue with `budget`; a request gets a text into the next batch, ahead of
    /// newer ones, once it has had none for `aging`.
    pub fn new(budget: Budget, aging: Duration) -> Queue<R> {
        Queue {
            budget: Budget {
                max_batch_size: budget.max_batch_size.max(1),
                max_batch_tokens: budget.max_batch_tokens.max(1),
            },
            aging,
            requests: BTreeMap::new(),
            waiting: 0,
            waiting_interactive: 0,
            running: 0,
            next_id: 0,
        }
    }

    /// Texts waiting for a batch.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// Interactive texts waiting for a batch.
    pub fn waiting_interactive(&self) -> usize {
        self.waiting_interactive
    }

    /// Texts in batches handed out and not yet completed or failed.
    pub fn running(&self) -> usize {
        self.running
    }

    /// Requests in the queue (waiting or running).
    pub fn requests(&self) -> usize {
        self.requests.len()
    }

    /// Queues a request's `texts` (never empty: the front ends refuse empty requests).
    pub fn push(
        &mut self,
        data: R,
        priority: Priority,
        texts: Vec<Encoded>,
        deadline: Instant,
        now: Instant,
    ) -> RequestId {
        debug_assert!(!texts.is_empty(), "the front ends refuse empty requests");
        let id = self.next_id;
        self.next_id += 1;
        let n = texts.len();
        self.waiting += n;
        if priority == Priority::Interactive {
            self.waiting_interactive += n;
        }
        self.requests.insert(
            id,
            Request {
                data,
                priority,
                waiting: texts.into_iter().enumerate().collect(),
                rows: (0..n).map(|_| None).collect(),
                remaining: n,
                deadline,
                enqueued: now,
                served: None,
                first_start: None,
                last_end: None,
                handoff: Duration::ZERO,
            },
        );
        id
    }

    /// What the Router keeps for request `id`, while it is in the queue.
    pub fn get(&self, id: RequestId) -> Option<&R> {
        self.requests.get(&id).map(|r| &r.data)
    }

    /// When the longest-waiting request with texts waiting was queued.
    pub fn oldest(&self) -> Option<Instant> {
        self.requests
            .values()
            .filter(|r| !r.waiting.is_empty())
            .map(|r| r.enqueued)
            .min()
    }

    /// Removes, before they run, the requests whose deadline has passed and those nobody
    /// waits for (`gone`), with their waiting texts; their rows still running are ignored when
    /// they come back. Each is returned once, with why.
    pub fn sweep(&mut self, now: Instant, gone: impl Fn(&R) -> bool) -> Vec<(R, Dropped)> {
        let dropped: Vec<(RequestId, Dropped)> = self
            .requests
            .iter()
            .filter_map(|(id, r)| {
                if now >= r.deadline {
                    Some((*id, Dropped::Expired))
                } else if gone(&r.data) {
                    Some((*id, Dropped::Gone))
                } else {
                    None
                }
            })
            .collect();
        dropped
            .into_iter()
            .filter_map(|(id, why)| self.remove(id).map(|data| (data, why)))
            .collect()
    }

    /// The requests with texts waiting, best first (see the module's documentation), with
    /// their rank at `now`.
    fn ranked(&self, now: Instant, interactive_only: bool) -> Vec<(Rank, RequestId)> {
        let mut order: Vec<((Rank, bool, Instant, RequestId), RequestId)> = self
            .requests
            .iter()
            .filter(|(_, r)| !r.waiting.is_empty())
            .filter(|(_, r)| !interactive_only || r.priority == Priority::Interactive)
            .map(|(&id, r)| {
                let rank = if now.saturating_duration_since(r.since()) >= self.aging {
                    Rank::Aged
                } else if r.priority == Priority::Interactive {
                    Rank::Interactive
                } else {
                    Rank::Batch
                };
                // Aged: longest without service first. Others: never served first (in arrival
                // order), then least recently served.
                let served = rank != Rank::Aged && r.served.is_some();
                ((rank, served, r.since(), id), id)
            })
            .collect();
        order.sort_unstable();
        order
            .into_iter()
            .map(|((rank, ..), id)| (rank, id))
            .collect()
    }

    /// Request `id`'s waiting text closest in length to `anchor` (ties: the lower index),
    /// not yet taken, that fits: its position in `waiting`.
    fn closest(&self, id: RequestId, anchor: usize, b: &Building, timed: bool) -> Option<usize> {
        self.requests[&id]
            .waiting
            .iter()
            .enumerate()
            .filter(|(pos, (_, t))| !b.has(id, *pos) && b.fits(t.len(), timed))
            .min_by_key(|(pos, (_, t))| (t.len().abs_diff(anchor), *pos))
            .map(|(pos, _)| pos)
    }

    /// Fills `b` from `ids`' waiting texts, closest in length to `anchor` first (ties: rank
    /// order, then index), among the first [`GROUPING_WINDOW`] × `max_batch_size` of them
    /// taken round-robin over the requests.
    fn fill(&self, b: &mut Building, ids: &[RequestId], anchor: usize, timed: bool) {
        let window = GROUPING_WINDOW * self.budget.max_batch_size;
        let mut candidates: Vec<(usize, usize, RequestId, usize)> = Vec::new();
        let mut depth = 0;
        'window: loop {
            let mut any = false;
            for (k, &id) in ids.iter().enumerate() {
                let waiting = &self.requests[&id].waiting;
                let Some((_, t)) = waiting.get(depth) else {
                    continue;
                };
                any = true;
                if !b.has(id, depth) {
                    candidates.push((t.len().abs_diff(anchor), k, id, depth));
                    if candidates.len() >= window {
                        break 'window;
                    }
                }
            }
            if !any {
                break;
            }
            depth += 1;
        }
        candidates.sort_unstable();
        for (_, _, id, pos) in candidates {
            if b.full() {
                break;
            }
            let len = self.requests[&id].waiting[pos].1.len();
            if b.fits(len, timed) {
                b.take(id, pos, len);
            }
        }
    }

    /// Takes the next batch off the queue (see the module's documentation), or `None` when
    /// nothing waits that `shape` lets go.
    pub fn next_batch(&mut self, now: Instant, shape: Shape) -> Option<Batch> {
        let ranked = self.ranked(now, shape.interactive_only);
        let (_, head) = *ranked.first()?;
        let interactive_about = self.waiting_interactive > 0 || shape.interactive_recent;
        let mut b = Building {
            picked: Vec::new(),
            longest: 0,
            budget: self.budget,
            latency: shape.latency.filter(|_| interactive_about),
        };
        let priority = |q: &Self, id: RequestId| q.requests[&id].priority;
        let len_at = |q: &Self, id: RequestId, pos: usize| q.requests[&id].waiting[pos].1.len();
        // The head's first waiting text leads.
        let anchor = len_at(self, head, 0);
        b.take(head, 0, anchor);
        // 1. One text from each aged and each interactive request.
        for &(rank, id) in ranked.iter().skip(1) {
            if b.full() || rank == Rank::Batch {
                break;
            }
            if let Some(pos) = self.closest(id, anchor, &b, false) {
                b.take(id, pos, len_at(self, id, pos));
            }
        }
        // 2. More interactive texts.
        let interactive: Vec<RequestId> = ranked
            .iter()
            .map(|&(_, id)| id)
            .filter(|&id| priority(self, id) == Priority::Interactive)
            .collect();
        self.fill(&mut b, &interactive, anchor, false);
        // 3. One text from each batch request that never had one run.
        let batch: Vec<RequestId> = ranked
            .iter()
            .map(|&(_, id)| id)
            .filter(|&id| priority(self, id) == Priority::Batch)
            .collect();
        // Batch texts group around the batch's longest text when it holds interactive ones
        // (the texts that join a query then pad it little: a short query takes the shortest
        // batch texts along, and the longer ones wait for batches of their own length); else
        // around the first batch text taken, else the batch head's first.
        let with_interactive = b
            .picked
            .iter()
            .any(|&(id, _)| priority(self, id) == Priority::Interactive);
        let batch_anchor = if with_interactive {
            Some(b.longest)
        } else {
            b.picked
                .iter()
                .copied()
                .find(|&(id, _)| priority(self, id) == Priority::Batch)
                .or(batch.first().map(|&id| (id, 0)))
                .map(|(id, pos)| len_at(self, id, pos))
        };
        if let Some(batch_anchor) = batch_anchor {
            // Closest first (ties: rank order), so a new batch request's text groups well.
            let mut fresh: Vec<(usize, usize, RequestId)> = batch
                .iter()
                .enumerate()
                .filter(|&(_, &id)| {
                    self.requests[&id].served.is_none() && !b.picked.iter().any(|(p, _)| *p == id)
                })
                .map(|(k, &id)| {
                    let nearest = self.requests[&id]
                        .waiting
                        .iter()
                        .map(|(_, t)| t.len().abs_diff(batch_anchor))
                        .min()
                        .unwrap_or(usize::MAX);
                    (nearest, k, id)
                })
                .collect();
            fresh.sort_unstable();
            for (_, _, id) in fresh {
                if b.full() {
                    break;
                }
                if let Some(pos) = self.closest(id, batch_anchor, &b, true) {
                    b.take(id, pos, len_at(self, id, pos));
                }
            }
            // 4. More batch texts.
            self.fill(&mut b, &batch, batch_anchor, true);
        }
        Some(self.take(b.picked, now))
    }

    /// Moves the `picked` texts out of their requests into a batch.
    fn take(&mut self, picked: Vec<(RequestId, usize)>, now: Instant) -> Batch {
        let mut by_request: BTreeMap<RequestId, Vec<usize>> = BTreeMap::new();
        for &(id, pos) in &picked {
            by_request.entry(id).or_default().push(pos);
        }
        let mut taken: BTreeMap<(RequestId, usize), (usize, Encoded)> = BTreeMap::new();
        for (id, mut positions) in by_request {
            let r = self.requests.get_mut(&id).expect("picked from the queue");
            positions.sort_unstable();
            for pos in positions.into_iter().rev() {
                taken.insert((id, pos), r.waiting.remove(pos));
                self.waiting -= 1;
                if r.priority == Priority::Interactive {
                    self.waiting_interactive -= 1;
                }
            }
            r.served = Some(now);
        }
        self.running += picked.len();
        let (owners, texts) = picked
            .into_iter()
            .map(|(id, pos)| {
                let (index, text) = taken.remove(&(id, pos)).expect("taken just above");
                ((id, index), text)
            })
            .unzip();
        Batch { owners, texts }
    }

    /// A batch's rows are back (`started`..`ended` on a worker, `handoff` after it was sent):
    /// returns the requests this answered completely, rows in order. Rows of requests that
    /// left the queue meanwhile are dropped. A batch whose row count is wrong (a bug) fails
    /// its requests instead: they come back in the second list.
    pub fn complete(
        &mut self,
        batch: Batch,
        rows: Vec<Vec<f32>>,
        started: Instant,
        ended: Instant,
        handoff: Duration,
    ) -> (Vec<Answered<R>>, Vec<R>) {
        if rows.len() != batch.len() {
            return (Vec::new(), self.fail(batch));
        }
        self.running -= batch.len();
        let mut done = Vec::new();
        for ((id, index), row) in batch.owners.into_iter().zip(rows) {
            let Some(r) = self.requests.get_mut(&id) else {
                continue;
            };
            if r.first_start.is_none_or(|s| started < s) {
                if r.first_start.is_none() {
                    r.handoff = handoff;
                }
                r.first_start = Some(started);
            }
            r.last_end = Some(r.last_end.map_or(ended, |e| e.max(ended)));
            if r.rows[index].replace(row).is_none() {
                r.remaining -= 1;
            }
            if r.remaining == 0 {
                let r = self.requests.remove(&id).expect("looked up just above");
                done.push(Answered {
                    data: r.data,
                    rows: r.rows.into_iter().map(Option::unwrap_or_default).collect(),
                    priority: r.priority,
                    enqueued: r.enqueued,
                    first_start: r.first_start.unwrap_or(started),
                    last_end: r.last_end.unwrap_or(ended),
                    handoff: r.handoff,
                });
            }
        }
        (done, Vec::new())
    }

    /// A batch failed: every request with a row in it fails (once), with its other texts.
    pub fn fail(&mut self, batch: Batch) -> Vec<R> {
        self.running -= batch.len();
        let ids: BTreeSet<RequestId> = batch.owners.iter().map(|(id, _)| *id).collect();
        ids.into_iter().filter_map(|id| self.remove(id)).collect()
    }

    /// Empties the queue (the stop): every request still in it, once.
    pub fn drain(&mut self) -> Vec<R> {
        self.waiting = 0;
        self.waiting_interactive = 0;
        std::mem::take(&mut self.requests)
            .into_values()
            .map(|r| r.data)
            .collect()
    }

    fn remove(&mut self, id: RequestId) -> Option<R> {
        let r = self.requests.remove(&id)?;
        self.waiting -= r.waiting.len();
        if r.priority == Priority::Interactive {
            self.waiting_interactive -= r.waiting.len();
        }
        Some(r.data)
    }
}

#[cfg(test)]
mod tests;
