//! The Router's queue as a pure data structure: requests' texts wait in arrival order, leave in
//! batches within the size and padded-token budgets, and come back as rows that are reassembled
//! per request, in text order. No actors and no clock but the instants passed in, so it is
//! unit- and property-tested: every request gets exactly one outcome (answered, failed or
//! dropped), answered rows are in request order, no batch exceeds its budget, and the oldest
//! waiting text always leaves in the next batch (nothing starves).
//!
//! Batching: the next batch is the oldest waiting text plus, among the oldest
//! [`GROUPING_WINDOW`] × `max_batch_size` waiting texts, those closest to it in length (ties to
//! the older), while the batch stays within `max_batch_size` texts and `max_batch_tokens`
//! padded tokens. A text longer than the token budget still goes, alone. A request's texts may
//! be split over several batches (and workers); it is answered when its last row is back.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

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

/// A request's handle in the queue.
pub type RequestId = u64;

/// One request's state while its texts wait or run.
struct Request<R> {
    data: R,
    rows: Vec<Option<Vec<f32>>>,
    remaining: usize,
    deadline: Instant,
    enqueued: Instant,
    first_start: Option<Instant>,
    last_end: Option<Instant>,
    handoff: Duration,
}

/// One waiting text.
struct Waiting {
    request: RequestId,
    index: usize,
    text: Encoded,
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

/// The queue; `R` is what the Router keeps per request (the reply channel, its span...).
pub struct Queue<R> {
    budget: Budget,
    requests: HashMap<RequestId, Request<R>>,
    waiting: VecDeque<Waiting>,
    running: usize,
    next_id: RequestId,
}

impl<R> Queue<R> {
    /// An empty queue with `budget`.
    pub fn new(budget: Budget) -> Queue<R> {
        Queue {
            budget: Budget {
                max_batch_size: budget.max_batch_size.max(1),
                max_batch_tokens: budget.max_batch_tokens.max(1),
            },
            requests: HashMap::new(),
            waiting: VecDeque::new(),
            running: 0,
            next_id: 0,
        }
    }

    /// Texts waiting for a batch.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
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
        texts: Vec<Encoded>,
        deadline: Instant,
        now: Instant,
    ) -> RequestId {
        debug_assert!(!texts.is_empty(), "the front ends refuse empty requests");
        let id = self.next_id;
        self.next_id += 1;
        let n = texts.len();
        self.requests.insert(
            id,
            Request {
                data,
                rows: (0..n).map(|_| None).collect(),
                remaining: n,
                deadline,
                enqueued: now,
                first_start: None,
                last_end: None,
                handoff: Duration::ZERO,
            },
        );
        self.waiting
            .extend(texts.into_iter().enumerate().map(|(index, text)| Waiting {
                request: id,
                index,
                text,
            }));
        id
    }

    /// What the Router keeps for request `id`, while it is in the queue.
    pub fn get(&self, id: RequestId) -> Option<&R> {
        self.requests.get(&id).map(|r| &r.data)
    }

    /// When the oldest waiting text was queued.
    pub fn oldest(&self) -> Option<Instant> {
        let w = self.waiting.front()?;
        self.requests.get(&w.request).map(|r| r.enqueued)
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

    /// Takes the next batch off the queue (see the module's documentation), or `None` when
    /// nothing waits.
    pub fn next_batch(&mut self) -> Option<Batch> {
        let anchor = self.waiting.front()?.text.len();
        let window = self
            .waiting
            .len()
            .min(GROUPING_WINDOW * self.budget.max_batch_size);
        let mut order: Vec<usize> = (0..window).collect();
        order.sort_by_key(|&i| (self.waiting[i].text.len().abs_diff(anchor), i));
        let (mut picked, mut longest) = (Vec::new(), 0);
        for i in order {
            if picked.len() >= self.budget.max_batch_size {
                break;
            }
            let len = longest.max(self.waiting[i].text.len());
            if !picked.is_empty() && len * (picked.len() + 1) > self.budget.max_batch_tokens {
                continue;
            }
            longest = len;
            picked.push(i);
        }
        picked.sort_unstable();
        let mut taken: Vec<Waiting> = picked
            .into_iter()
            .rev()
            .filter_map(|i| self.waiting.remove(i))
            .collect();
        taken.reverse();
        self.running += taken.len();
        let (owners, texts) = taken
            .into_iter()
            .map(|w| ((w.request, w.index), w.text))
            .unzip();
        Some(Batch { owners, texts })
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
        let mut ids: Vec<RequestId> = batch.owners.iter().map(|(id, _)| *id).collect();
        ids.dedup();
        ids.into_iter().filter_map(|id| self.remove(id)).collect()
    }

    /// Empties the queue (the stop): every request still in it, once.
    pub fn drain(&mut self) -> Vec<R> {
        self.waiting.clear();
        self.requests.drain().map(|(_, r)| r.data).collect()
    }

    fn remove(&mut self, id: RequestId) -> Option<R> {
        let r = self.requests.remove(&id)?;
        self.waiting.retain(|w| w.request != id);
        Some(r.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A text of `len` tokens that says who it is: [request, index, 0, 0, ...].
    fn text(request: u64, index: usize, len: usize) -> Encoded {
        let mut ids = vec![0i64; len.max(2)];
        ids[0] = request as i64;
        ids[1] = index as i64;
        Encoded {
            type_ids: vec![0; ids.len()],
            ids,
        }
    }

    /// The stand-in model: each row repeats its text's identity.
    fn run(batch: &Batch) -> Vec<Vec<f32>> {
        batch
            .texts
            .iter()
            .map(|t| vec![t.ids[0] as f32, t.ids[1] as f32])
            .collect()
    }

    fn budget(size: usize, tokens: usize) -> Budget {
        Budget {
            max_batch_size: size,
            max_batch_tokens: tokens,
        }
    }

    #[test]
    fn a_request_split_over_batches_is_answered_once_in_order() {
        let now = Instant::now();
        let far = now + Duration::from_secs(60);
        let mut q: Queue<&str> = Queue::new(budget(2, 1000));
        q.push("a", (0..5).map(|i| text(0, i, 4)).collect(), far, now);
        let mut batches = Vec::new();
        while let Some(b) = q.next_batch() {
            batches.push(b);
        }
        assert_eq!(
            batches.iter().map(Batch::len).collect::<Vec<_>>(),
            [2, 2, 1]
        );
        assert_eq!((q.waiting(), q.running()), (0, 5));
        // Back out of order: the answer waits for the last row.
        let last = batches.pop().unwrap();
        let rows = run(&last);
        assert!(
            q.complete(last, rows, now, now, Duration::ZERO)
                .0
                .is_empty()
        );
        let b = batches.remove(0);
        let rows = run(&b);
        assert!(q.complete(b, rows, now, now, Duration::ZERO).0.is_empty());
        let b = batches.remove(0);
        let rows = run(&b);
        let (done, failed) = q.complete(b, rows, now, now, Duration::ZERO);
        assert!(failed.is_empty());
        assert_eq!(done.len(), 1);
        let got: Vec<f32> = done[0].rows.iter().map(|r| r[1]).collect();
        assert_eq!(got, [0.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!((q.requests(), q.running()), (0, 0));
    }

    #[test]
    fn texts_of_close_length_go_together_and_the_oldest_always_goes() {
        let now = Instant::now();
        let far = now + Duration::from_secs(60);
        let mut q: Queue<u32> = Queue::new(budget(2, 1000));
        for (r, len) in [(0u64, 10), (1, 100), (2, 11)] {
            q.push(r as u32, vec![text(r, 0, len)], far, now);
        }
        let b = q.next_batch().unwrap();
        let who: Vec<u64> = b.owners.iter().map(|(r, _)| *r).collect();
        assert_eq!(
            who,
            [0, 2],
            "the 10- and 11-token texts, not the 100-token one"
        );
        assert_eq!(b.padded_len(), 11);
    }

    #[test]
    fn the_token_budget_is_kept_and_an_overlong_text_goes_alone() {
        let now = Instant::now();
        let far = now + Duration::from_secs(60);
        let mut q: Queue<u32> = Queue::new(budget(8, 100));
        q.push(0, vec![text(0, 0, 300)], far, now);
        q.push(1, (0..6).map(|i| text(1, i, 30)).collect(), far, now);
        let b = q.next_batch().unwrap();
        assert_eq!(b.len(), 1, "over the budget on its own: alone");
        let b = q.next_batch().unwrap();
        assert_eq!(b.len(), 3, "3 × 30 tokens fit in 100, 4 do not");
    }

    #[test]
    fn expired_and_abandoned_requests_leave_before_running_and_late_rows_are_ignored() {
        let now = Instant::now();
        let mut q: Queue<&str> = Queue::new(budget(1, 1000));
        q.push(
            "soon",
            vec![text(0, 0, 4), text(0, 1, 4)],
            now + Duration::from_millis(5),
            now,
        );
        q.push(
            "gone",
            vec![text(1, 0, 4)],
            now + Duration::from_secs(60),
            now,
        );
        q.push(
            "kept",
            vec![text(2, 0, 4)],
            now + Duration::from_secs(60),
            now,
        );
        let first = q.next_batch().unwrap(); // "soon"'s first text is now running
        let mut dropped = q.sweep(now + Duration::from_millis(10), |d| *d == "gone");
        dropped.sort();
        assert_eq!(
            dropped,
            [("gone", Dropped::Gone), ("soon", Dropped::Expired)]
        );
        assert_eq!(q.waiting(), 1, "only the kept request's text waits");
        let rows = run(&first);
        let (done, failed) = q.complete(first, rows, now, now, Duration::ZERO);
        assert!(
            done.is_empty() && failed.is_empty(),
            "a dropped request is not answered"
        );
        assert_eq!(q.running(), 0);
    }

    #[test]
    fn a_failed_batch_fails_each_of_its_requests_once_with_their_other_texts() {
        let now = Instant::now();
        let far = now + Duration::from_secs(60);
        let mut q: Queue<&str> = Queue::new(budget(2, 1000));
        q.push(
            "a",
            vec![text(0, 0, 4), text(0, 1, 4), text(0, 2, 4)],
            far,
            now,
        );
        let b = q.next_batch().unwrap();
        assert_eq!(b.owners, [(0, 0), (0, 1)]);
        assert_eq!(q.fail(b), ["a"]);
        assert_eq!((q.waiting(), q.requests()), (0, 0));
        // A wrong row count is a failure too.
        q.push("b", vec![text(1, 0, 4)], far, now);
        let b = q.next_batch().unwrap();
        let (done, failed) = q.complete(b, vec![], now, now, Duration::ZERO);
        assert!(done.is_empty());
        assert_eq!(failed, ["b"]);
    }

    /// What a random run does next.
    #[derive(Debug, Clone)]
    enum Op {
        Push { lens: Vec<usize>, ttl_ms: u64 },
        Dispatch,
        Complete(usize),
        Fail(usize),
        Tick { ms: u64, gone: Option<usize> },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (proptest::collection::vec(2usize..40, 1..6), 1u64..200)
                .prop_map(|(lens, ttl_ms)| Op::Push { lens, ttl_ms }),
            3 => Just(Op::Dispatch),
            2 => any::<usize>().prop_map(Op::Complete),
            1 => any::<usize>().prop_map(Op::Fail),
            1 => (0u64..50, proptest::option::of(any::<usize>()))
                .prop_map(|(ms, gone)| Op::Tick { ms, gone }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Whatever happens, every request gets exactly one outcome, answers are complete and
        /// in order, batches keep their budget, and the oldest waiting text is in each batch.
        #[test]
        fn every_request_gets_exactly_one_outcome(
            ops in proptest::collection::vec(op(), 1..80),
            size in 1usize..6,
            tokens in 8usize..120,
        ) {
            let start = Instant::now();
            let mut now = start;
            let mut q: Queue<u64> = Queue::new(budget(size, tokens));
            let mut sizes: Vec<usize> = Vec::new(); // texts per request
            let mut outcomes: Vec<u32> = Vec::new(); // outcomes per request
            let mut gone: Vec<bool> = Vec::new();
            let mut out: Vec<Batch> = Vec::new();
            let check_batch = |q: &Queue<u64>, b: &Batch, oldest: (u64, usize)| {
                prop_assert!(b.len() <= size);
                prop_assert!(b.len() == 1 || b.len() * b.padded_len() <= tokens);
                prop_assert_eq!(b.owners[0], oldest, "the oldest waiting text leads the batch");
                let _ = q;
                Ok(())
            };
            for op in ops {
                match op {
                    Op::Push { lens, ttl_ms } => {
                        let r = sizes.len() as u64;
                        let texts = lens.iter().enumerate().map(|(i, &l)| text(r, i, l)).collect();
                        q.push(r, texts, now + Duration::from_millis(ttl_ms), now);
                        sizes.push(lens.len());
                        outcomes.push(0);
                        gone.push(false);
                    }
                    Op::Dispatch => {
                        let oldest = q.waiting.front().map(|w| (w.request, w.index));
                        if let Some(b) = q.next_batch() {
                            check_batch(&q, &b, oldest.unwrap())?;
                            out.push(b);
                        }
                    }
                    Op::Complete(k) if !out.is_empty() => {
                        let b = out.remove(k % out.len());
                        let rows = run(&b);
                        let (done, failed) = q.complete(b, rows, now, now, Duration::ZERO);
                        for d in done {
                            outcomes[d.data as usize] += 1;
                            prop_assert_eq!(d.rows.len(), sizes[d.data as usize]);
                            for (i, row) in d.rows.iter().enumerate() {
                                prop_assert_eq!(row, &vec![d.data as f32, i as f32]);
                            }
                        }
                        prop_assert!(failed.is_empty());
                    }
                    Op::Fail(k) if !out.is_empty() => {
                        let b = out.remove(k % out.len());
                        for r in q.fail(b) {
                            outcomes[r as usize] += 1;
                        }
                    }
                    Op::Tick { ms, gone: who } => {
                        now += Duration::from_millis(ms);
                        if let Some(k) = who.filter(|_| !gone.is_empty()) {
                            let n = gone.len();
                            gone[k % n] = true;
                        }
                        for (r, _) in q.sweep(now, |r| gone[*r as usize]) {
                            outcomes[r as usize] += 1;
                        }
                    }
                    _ => {}
                }
                prop_assert!(q.running() + q.waiting() <= sizes.iter().sum::<usize>());
            }
            // Finish: run everything still queued, then drain what is left.
            for b in out.drain(..) {
                let rows = run(&b);
                for d in q.complete(b, rows, now, now, Duration::ZERO).0 {
                    outcomes[d.data as usize] += 1;
                }
            }
            while let Some(b) = q.next_batch() {
                let rows = run(&b);
                for d in q.complete(b, rows, now, now, Duration::ZERO).0 {
                    outcomes[d.data as usize] += 1;
                }
            }
            for r in q.drain() {
                outcomes[r as usize] += 1;
            }
            prop_assert!(outcomes.iter().all(|&n| n == 1), "outcomes per request: {:?}", outcomes);
            prop_assert_eq!((q.running(), q.waiting(), q.requests()), (0, 0, 0));
        }
    }
}
