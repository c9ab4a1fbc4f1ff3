//! The queue's batching, priorities, ageing and reassembly, as a pure data structure.

use super::*;
use proptest::prelude::*;

const I: Priority = Priority::Interactive;
const B: Priority = Priority::Batch;

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

fn texts(request: u64, lens: &[usize]) -> Vec<Encoded> {
    lens.iter()
        .enumerate()
        .map(|(i, &l)| text(request, i, l))
        .collect()
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

const AGING: Duration = Duration::from_secs(2);

/// 4 ms per forward and 0.1 ms per padded token.
fn cost() -> Cost {
    Cost::new(Duration::from_millis(4), Duration::from_micros(100))
}

/// A latency budget of `ms` with [`cost`].
fn timed(ms: u64) -> Shape {
    Shape {
        latency: Some((Duration::from_millis(ms), cost())),
        ..Shape::default()
    }
}

fn owners(b: &Batch) -> Vec<u64> {
    b.owners.iter().map(|(r, _)| *r).collect()
}

#[test]
fn a_request_split_over_batches_is_answered_once_in_order() {
    let now = Instant::now();
    let far = now + Duration::from_secs(60);
    let mut q: Queue<&str> = Queue::new(budget(2, 1000), AGING);
    q.push("a", B, texts(0, &[4; 5]), far, now);
    let mut batches = Vec::new();
    while let Some(b) = q.next_batch(now, Shape::default()) {
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
fn texts_of_close_length_go_together_and_the_first_request_leads() {
    let now = Instant::now();
    let far = now + Duration::from_secs(60);
    let mut q: Queue<u32> = Queue::new(budget(2, 1000), AGING);
    for (r, len) in [(0u64, 10), (1, 100), (2, 11)] {
        q.push(r as u32, B, vec![text(r, 0, len)], far, now);
    }
    let b = q.next_batch(now, Shape::default()).unwrap();
    assert_eq!(
        owners(&b),
        [0, 2],
        "the 10- and 11-token texts, not the 100-token one"
    );
    assert_eq!(b.padded_len(), 11);
    assert_eq!(owners(&q.next_batch(now, Shape::default()).unwrap()), [1]);
}

#[test]
fn the_token_budget_is_kept_and_an_overlong_text_goes_alone() {
    let now = Instant::now();
    let far = now + Duration::from_secs(60);
    let mut q: Queue<u32> = Queue::new(budget(8, 100), AGING);
    q.push(0, B, vec![text(0, 0, 300)], far, now);
    q.push(1, B, texts(1, &[30; 6]), far, now);
    let b = q.next_batch(now, Shape::default()).unwrap();
    assert_eq!(b.len(), 1, "over the budget on its own: alone");
    let b = q.next_batch(now, Shape::default()).unwrap();
    assert_eq!(b.len(), 3, "3 × 30 tokens fit in 100, 4 do not");
}

#[test]
fn a_query_behind_a_bulk_job_is_in_the_next_batch_which_stays_within_the_latency_budget() {
    let now = Instant::now();
    let far = now + Duration::from_secs(60);
    let mut q: Queue<u32> = Queue::new(budget(64, 16384), AGING);
    for r in 0..4 {
        q.push(r, B, texts(r as u64, &[40; 64]), far, now);
    }
    // Alone, the bulk job fills whole batches even with a latency budget configured.
    let first = q.next_batch(now, timed(25)).unwrap();
    assert_eq!(first.len(), 64);
    // A query arrives while that batch runs: it is in the next batch, first, and the batch
    // holds only as much bulk work as fits in 25 ms: 4 ms + 0.1 ms × 40 × rows.
    let query = q.push(4, I, vec![text(4, 0, 12)], far, now);
    let b = q.next_batch(now, timed(25)).unwrap();
    assert_eq!(b.owners[0], (query, 0), "the query leads");
    assert_eq!(
        b.len(),
        5,
        "the query and 4 bulk texts: 4 + 0.1 × 40 × 5 = 24 ms"
    );
    assert!(cost().estimate(b.len() * b.padded_len()) <= Duration::from_millis(25));
    // Without a budget the query still goes first, with a full batch behind it.
    let query = q.push(5, I, vec![text(5, 0, 12)], far, now);
    let b = q.next_batch(now, Shape::default()).unwrap();
    assert_eq!((b.owners[0], b.len()), ((query, 0), 64));
    // While interactive requests are about (the Router says so), bulk batches stay short
    // though no query waits right now; once they are not, bulk batches are full again.
    let recent = Shape {
        interactive_recent: true,
        ..timed(25)
    };
    assert_eq!(q.next_batch(now, recent).unwrap().len(), 5);
    assert_eq!(q.next_batch(now, timed(25)).unwrap().len(), 64);
}

#[test]
fn the_bulk_texts_that_join_a_query_are_the_ones_closest_to_its_length() {
    let now = Instant::now();
    let far = now + Duration::from_secs(60);
    let mut q: Queue<u32> = Queue::new(budget(64, 16384), AGING);
    q.push(0, B, texts(0, &[60, 22, 58, 24, 62, 23]), far, now);
    q.push(1, I, vec![text(1, 0, 12)], far, now);
    // Within 25 ms: the query and the three shortest texts, 4 + 0.1 × 4 × 24 = 13.6 ms (a
    // fifth row of 58 would be 33 ms). Grouped around the bulk request's first text, it would
    // have been the query with the 60- and 58-token texts: 22 ms for two texts, not three.
    let b = q.next_batch(now, timed(25)).unwrap();
    assert_eq!(b.owners, [(1, 0), (0, 1), (0, 5), (0, 3)]);
    assert_eq!(b.padded_len(), 24);
    // Alone again, the long ones go together.
    let b = q.next_batch(now, timed(25)).unwrap();
    assert_eq!((b.len(), b.padded_len()), (3, 62));
}

#[test]
fn interactive_requests_take_turns_and_a_small_one_is_not_stuck_behind_a_large_one() {
    let now = Instant::now();
    let far = now + Duration::from_secs(60);
    let mut q: Queue<u32> = Queue::new(budget(4, 1000), AGING);
    q.push(0, I, texts(0, &[8; 20]), far, now);
    let b = q.next_batch(now, Shape::default()).unwrap();
    assert_eq!(owners(&b), [0, 0, 0, 0]);
    q.push(1, I, texts(1, &[8; 2]), far, now);
    q.push(2, I, texts(2, &[8; 1]), far, now);
    // One text of each: the two new requests first (never served), then the large one
    // (served before); then the room left, by length and rank.
    let b = q.next_batch(now, Shape::default()).unwrap();
    assert_eq!(owners(&b), [1, 2, 0, 1]);
}

#[test]
fn aging_gives_a_batch_request_a_text_under_a_flood_of_interactive_ones() {
    let start = Instant::now();
    let far = start + Duration::from_secs(600);
    let mut q: Queue<u32> = Queue::new(budget(2, 1000), AGING);
    q.push(0, B, texts(0, &[8; 3]), far, start);
    let mut now = start;
    let mut served_at = Vec::new();
    for k in 1..=45u32 {
        // Two new queries every 100 ms: the batch request's text waits for aging.
        q.push(k * 10, I, vec![text(k as u64 * 10, 0, 8)], far, now);
        q.push(k * 10 + 1, I, vec![text(k as u64 * 10 + 1, 0, 8)], far, now);
        let b = q.next_batch(now, timed(5)).unwrap();
        if b.owners.iter().any(|(r, _)| *r == 0) {
            served_at.push(now - start);
        }
        let rows = run(&b);
        q.complete(b, rows, now, now, Duration::ZERO);
        now += Duration::from_millis(100);
    }
    assert_eq!(
        served_at,
        [Duration::from_secs(2), Duration::from_secs(4)],
        "one text each time it has waited 2 s"
    );
}

#[test]
fn a_reserved_worker_takes_only_interactive_texts() {
    let now = Instant::now();
    let far = now + Duration::from_secs(60);
    let mut q: Queue<u32> = Queue::new(budget(8, 1000), AGING);
    q.push(0, B, texts(0, &[8; 4]), far, now);
    let only = Shape {
        interactive_only: true,
        ..Shape::default()
    };
    assert!(q.next_batch(now, only).is_none());
    q.push(1, I, texts(1, &[8; 2]), far, now);
    assert_eq!(owners(&q.next_batch(now, only).unwrap()), [1, 1]);
    assert_eq!(
        owners(&q.next_batch(now, Shape::default()).unwrap()),
        [0; 4]
    );
}

#[test]
fn the_cost_is_fitted_from_two_forwards_and_follows_the_machine() {
    let ms = Duration::from_millis;
    let mut c = Cost::fit((16, ms(6)), (1016, ms(106)));
    assert_eq!(c.estimate(0), Duration::from_micros(4400));
    assert_eq!(c.estimate(500), Duration::from_micros(54400));
    // The machine runs twice as slow: the estimate follows within a few forwards, and one
    // preempted forward does not swing it.
    for _ in 0..30 {
        c.observe(500, ms(109));
    }
    let e = c.estimate(500).as_secs_f64() / 0.1088;
    assert!((0.99..1.01).contains(&e), "{e}");
    c.observe(500, Duration::from_secs(30));
    assert!(c.estimate(500) < ms(300), "{:?}", c.estimate(500));
    // A fixed part is never negative.
    assert_eq!(
        Cost::fit((16, ms(1)), (1016, ms(200))).estimate(0),
        Duration::ZERO
    );
}

#[test]
fn expired_and_abandoned_requests_leave_before_running_and_late_rows_are_ignored() {
    let now = Instant::now();
    let mut q: Queue<&str> = Queue::new(budget(1, 1000), AGING);
    q.push(
        "soon",
        B,
        texts(0, &[4, 4]),
        now + Duration::from_millis(5),
        now,
    );
    q.push(
        "gone",
        B,
        vec![text(1, 0, 4)],
        now + Duration::from_secs(60),
        now,
    );
    q.push(
        "kept",
        B,
        vec![text(2, 0, 4)],
        now + Duration::from_secs(60),
        now,
    );
    let first = q.next_batch(now, Shape::default()).unwrap(); // "soon"'s first text runs
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
    let mut q: Queue<&str> = Queue::new(budget(2, 1000), AGING);
    q.push("a", B, texts(0, &[4; 3]), far, now);
    let b = q.next_batch(now, Shape::default()).unwrap();
    assert_eq!(b.owners, [(0, 0), (0, 1)]);
    assert_eq!(q.fail(b), ["a"]);
    assert_eq!((q.waiting(), q.requests()), (0, 0));
    // A wrong row count is a failure too.
    q.push("b", I, vec![text(1, 0, 4)], far, now);
    let b = q.next_batch(now, Shape::default()).unwrap();
    let (done, failed) = q.complete(b, vec![], now, now, Duration::ZERO);
    assert!(done.is_empty());
    assert_eq!(failed, ["b"]);
    assert_eq!(
        (q.waiting(), q.waiting_interactive(), q.running()),
        (0, 0, 0)
    );
}

/// What a random run does next.
#[derive(Debug, Clone)]
enum Op {
    Push {
        lens: Vec<usize>,
        ttl_ms: u64,
        interactive: bool,
    },
    Dispatch {
        budget_ms: Option<u64>,
        recent: bool,
        only: bool,
    },
    Complete(usize),
    Fail(usize),
    Tick {
        ms: u64,
        gone: Option<usize>,
    },
}

fn op(max_len: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (proptest::collection::vec(2usize..max_len, 1..12), 1u64..5000, any::<bool>())
            .prop_map(|(lens, ttl_ms, interactive)| Op::Push { lens, ttl_ms, interactive }),
        3 => (proptest::option::of(1u64..40), any::<bool>(), proptest::bool::weighted(0.1))
            .prop_map(|(budget_ms, recent, only)| Op::Dispatch { budget_ms, recent, only }),
        2 => any::<usize>().prop_map(Op::Complete),
        1 => any::<usize>().prop_map(Op::Fail),
        1 => (0u64..800, proptest::option::of(any::<usize>()))
            .prop_map(|(ms, gone)| Op::Tick { ms, gone }),
    ]
}

/// What the test knows of each request, to check the queue against.
#[derive(Debug, Clone)]
struct Known {
    size: usize,
    priority: Priority,
    enqueued: Instant,
    served: Option<Instant>,
    /// Texts not yet handed out, and whether it still is in the queue.
    waiting: usize,
    open: bool,
    /// Batches in a row formed while it was aged, without a text of it.
    passed_over: usize,
    /// Requests waiting at the first of those batches. Only they can be ranked ahead of it
    /// (a request pushed later is younger), and each goes behind it once served, so this
    /// bounds `passed_over` even when some of them leave (expire, are gone) meanwhile.
    ahead: usize,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Whatever happens, every request gets exactly one outcome, answers are complete and
    /// in order, every batch keeps its size and token budgets, leads with the top-ranked
    /// request, and keeps the latency budget whenever it holds batch texts it was not
    /// bound to take; no aged request is passed over more often than there are requests
    /// waiting; and with no latency budget and room for one text of each, every request
    /// that never had a text run, and every interactive or aged one, is in the next batch.
    #[test]
    fn every_request_gets_one_outcome_and_the_queue_is_fair(
        ops in proptest::collection::vec(op(40), 1..120),
        size in 1usize..8,
        tokens in 8usize..400,
    ) {
        let start = Instant::now();
        let mut now = start;
        let mut q: Queue<u64> = Queue::new(budget(size, tokens), AGING);
        let mut known: Vec<Known> = Vec::new();
        let mut outcomes: Vec<u32> = Vec::new(); // outcomes per request
        let mut gone: Vec<bool> = Vec::new();
        let mut out: Vec<Batch> = Vec::new();
        for op in ops {
            match op {
                Op::Push { lens, ttl_ms, interactive } => {
                    let r = known.len() as u64;
                    let priority = if interactive { I } else { B };
                    q.push(r, priority, texts(r, &lens), now + Duration::from_millis(ttl_ms), now);
                    known.push(Known {
                        size: lens.len(),
                        priority,
                        enqueued: now,
                        served: None,
                        waiting: lens.len(),
                        open: true,
                        passed_over: 0,
                        ahead: 0,
                    });
                    outcomes.push(0);
                    gone.push(false);
                }
                Op::Dispatch { budget_ms, recent, only } => {
                    let shape = Shape {
                        latency: budget_ms.map(|ms| (Duration::from_millis(ms), cost())),
                        interactive_recent: recent,
                        interactive_only: only,
                    };
                    let waiting: Vec<usize> = (0..known.len())
                        .filter(|&r| known[r].open && known[r].waiting > 0)
                        .filter(|&r| !only || known[r].priority == I)
                        .collect();
                    let aged = |k: &Known| now.saturating_duration_since(k.served.unwrap_or(k.enqueued)) >= AGING;
                    // The ranking the module documents, recomputed here.
                    let rank = |r: usize| {
                        let k = &known[r];
                        let tier = if aged(k) { 0 } else if k.priority == I { 1 } else { 2 };
                        let served = tier != 0 && k.served.is_some();
                        (tier, served, k.served.unwrap_or(k.enqueued), r)
                    };
                    let head = waiting.iter().copied().min_by_key(|&r| rank(r));
                    let interactive_waiting = known.iter().any(|k| k.open && k.waiting > 0 && k.priority == I);
                    let Some(b) = q.next_batch(now, shape) else {
                        prop_assert!(head.is_none(), "nothing left out while {:?} waits", head);
                        continue;
                    };
                    let head = head.expect("a batch came out of an empty queue");
                    prop_assert_eq!(b.owners[0].0 as usize, head, "the top-ranked request leads");
                    prop_assert!(b.len() <= size);
                    prop_assert!(b.len() == 1 || b.len() * b.padded_len() <= tokens);
                    let mut per: BTreeMap<usize, usize> = BTreeMap::new();
                    for (r, _) in &b.owners {
                        *per.entry(*r as usize).or_default() += 1;
                    }
                    for &r in per.keys() {
                        prop_assert!(!only || known[r].priority == I, "a reserved worker got batch work");
                    }
                    // Latency: over budget only with batch texts the batch was bound to
                    // take (its leader, one per aged request).
                    if let Some((limit, c)) = shape.latency
                        && (interactive_waiting || recent)
                        && c.estimate(b.len() * b.padded_len()) > limit
                    {
                        for (&r, &n) in &per {
                            if known[r].priority == B {
                                prop_assert!(n == 1 && (aged(&known[r]) || r == head),
                                    "request {} (batch) has {} texts in a batch over the latency budget", r, n);
                            }
                        }
                    }
                    // Fairness bounds (interactive texts fill before new batch requests).
                    let interactive_texts: usize = waiting.iter().filter(|&&r| known[r].priority == I).map(|&r| known[r].waiting).sum();
                    let fit_all = waiting.len() + interactive_texts <= size && size * 40 <= tokens;
                    for &r in &waiting {
                        let k = &known[r];
                        let got = per.contains_key(&r);
                        if fit_all && shape.latency.is_none() && (k.served.is_none() || k.priority == I || aged(k)) {
                            prop_assert!(got, "request {} left out with room for every request", r);
                        }
                        if aged(k) && !only {
                            let k = &mut known[r];
                            if k.passed_over == 0 {
                                k.ahead = waiting.len();
                            }
                            k.passed_over = if got { 0 } else { k.passed_over + 1 };
                            prop_assert!(k.passed_over < k.ahead,
                                "aged request {} passed over {} times with {} waiting when it was first", r, k.passed_over, k.ahead);
                        }
                    }
                    for (&r, &n) in &per {
                        known[r].served = Some(now);
                        known[r].waiting -= n;
                        if aged(&known[r]) {
                            known[r].passed_over = 0;
                        }
                    }
                    out.push(b);
                }
                Op::Complete(k) if !out.is_empty() => {
                    let b = out.remove(k % out.len());
                    let rows = run(&b);
                    let (done, failed) = q.complete(b, rows, now, now, Duration::ZERO);
                    for d in done {
                        let r = d.data as usize;
                        outcomes[r] += 1;
                        known[r].open = false;
                        prop_assert_eq!(d.priority, known[r].priority);
                        prop_assert_eq!(d.rows.len(), known[r].size);
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
                        known[r as usize].open = false;
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
                        known[r as usize].open = false;
                    }
                }
                _ => {}
            }
            let waiting: usize = known.iter().filter(|k| k.open).map(|k| k.waiting).sum();
            let interactive: usize = known.iter().filter(|k| k.open && k.priority == I).map(|k| k.waiting).sum();
            prop_assert_eq!((q.waiting(), q.waiting_interactive()), (waiting, interactive));
        }
        // Finish: run everything still queued, then drain what is left.
        for b in out.drain(..) {
            let rows = run(&b);
            for d in q.complete(b, rows, now, now, Duration::ZERO).0 {
                outcomes[d.data as usize] += 1;
            }
        }
        while let Some(b) = q.next_batch(now, Shape::default()) {
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
