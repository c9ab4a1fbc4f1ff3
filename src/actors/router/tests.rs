//! The Router's dispatch, against a fake tokenizer and fake workers (actors of their own): the
//! real model and tokenizer are covered by the binary's tests; these check what only the Router
//! decides: which rows go back to which request, in what order, batch sizes, how the rows are
//! shaped, and the refusals.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use actix::prelude::*;
use tokio::sync::oneshot;

use super::{Answer, Embed, Router, Tokenizers, Worker};
use crate::{
    actors::{
        ActorTable, Admission, InferError, Lifecycle,
        batcher::Cost,
        job::{Job, Rows},
        metrics::Recorder,
        model_worker::{Forward, ForwardOutput, MeasuredCost},
        supervisor::{InjectFault, Shutdown},
        tokenizer::{Decode, Inspect, Tokenize, Tokenized},
    },
    config::{Config, Overrides},
    model::{Encoded, ModelSpec, TextInput},
};

/// Tokenizes `"<n>"` as `[101, n, 102]`: a row's middle id says which text it was.
struct FakeTokenizer;

impl Actor for FakeTokenizer {
    type Context = Context<Self>;
}

impl Handler<Tokenize> for FakeTokenizer {
    type Result = Result<Tokenized, InferError>;

    fn handle(&mut self, msg: Tokenize, _: &mut Self::Context) -> Self::Result {
        let encodings = msg
            .texts
            .inputs
            .iter()
            .map(|t| {
                let TextInput::Text(t) = t else {
                    panic!("texts only")
                };
                let ids = vec![101, t.parse::<i64>().unwrap(), 102];
                Encoded {
                    type_ids: vec![0; ids.len()],
                    ids,
                }
            })
            .collect();
        Ok(Tokenized {
            encodings,
            elapsed: Duration::ZERO,
            fault: None,
        })
    }
}

impl Handler<Inspect> for FakeTokenizer {
    type Result = Result<Vec<Vec<crate::model::TokenInfo>>, InferError>;

    fn handle(&mut self, _: Inspect, _: &mut Self::Context) -> Self::Result {
        Ok(Vec::new())
    }
}

impl Handler<Decode> for FakeTokenizer {
    type Result = Result<Vec<String>, InferError>;

    fn handle(&mut self, msg: Decode, _: &mut Self::Context) -> Self::Result {
        Ok(msg.ids.iter().map(|ids| format!("{ids:?}")).collect())
    }
}

/// A worker whose row for a text is `[n, 3, 4, 12]` (`n` the text's number); it notes the
/// size of every batch it runs.
struct FakeWorker {
    batches: Arc<Mutex<Vec<usize>>>,
}

impl Actor for FakeWorker {
    type Context = Context<Self>;
}

impl Handler<Forward> for FakeWorker {
    type Result = Result<ForwardOutput, InferError>;

    fn handle(&mut self, msg: Forward, _: &mut Self::Context) -> Self::Result {
        let b = &msg.batch;
        self.batches.lock().unwrap().push(b.rows);
        let embeddings = (0..b.rows)
            .map(|r| vec![b.ids[r * b.cols + 1] as f32, 3.0, 4.0, 12.0])
            .collect();
        Ok(ForwardOutput {
            embeddings,
            started: Instant::now(),
            elapsed: Duration::from_micros(10),
            handoff: Duration::ZERO,
        })
    }
}

impl Handler<MeasuredCost> for FakeWorker {
    type Result = MessageResult<MeasuredCost>;

    fn handle(&mut self, _: MeasuredCost, _: &mut Self::Context) -> Self::Result {
        MessageResult(None::<Cost>)
    }
}

/// Stands in for the Supervisor: notes a stop.
struct FakeSupervisor {
    stops: Arc<Mutex<usize>>,
}

impl Actor for FakeSupervisor {
    type Context = Context<Self>;
}

impl Handler<Shutdown> for FakeSupervisor {
    type Result = ();

    fn handle(&mut self, _: Shutdown, _: &mut Self::Context) {
        *self.stops.lock().unwrap() += 1;
    }
}

impl Handler<InjectFault> for FakeSupervisor {
    type Result = ();

    fn handle(&mut self, _: InjectFault, _: &mut Self::Context) {}
}

/// A Router over a fake tokenizer and `workers` fake workers, for a small embedding model
/// (the `roberta-mean` fixture's spec), with `batching` YAML.
struct Rig {
    router: Addr<Router>,
    admission: Arc<Admission>,
    lifecycle: Arc<Lifecycle>,
    batches: Arc<Mutex<Vec<usize>>>,
}

fn rig(workers: usize, batching: &str) -> Rig {
    let model = format!(
        "{}/tests/fixtures/models/roberta-mean",
        env!("CARGO_MANIFEST_DIR")
    );
    let yaml = format!("model:\n  path: {model}\n  device: cpu\nbatching:\n{batching}\n");
    let config = Config::from_sources(&yaml, std::iter::empty(), &Overrides::default()).unwrap();
    let spec = Arc::new(ModelSpec::load(&config.models[0], tch::Device::Cpu).unwrap());
    let registry = prometheus::Registry::new();
    let recorder = Recorder::new(&registry, &["ok"]).unwrap();
    let gauge = |n: &str| prometheus::IntGauge::new(n, n).unwrap();
    let admission = Admission::new(1000, gauge("texts"), gauge("requests"));
    let lifecycle = Arc::new(Lifecycle::default());
    lifecycle.set_ready();
    let batches = Arc::new(Mutex::new(Vec::new()));
    let tokenizer = FakeTokenizer.start();
    let fakes: Vec<Worker> = (0..workers)
        .map(|_| {
            let w = FakeWorker {
                batches: batches.clone(),
            }
            .start();
            Worker {
                forward: w.clone().recipient(),
                cost: w.recipient(),
            }
        })
        .collect();
    let supervisor = FakeSupervisor {
        stops: Arc::new(Mutex::new(0)),
    }
    .start();
    let router = Router::new(
        0,
        Tokenizers {
            tokenize: tokenizer.clone().recipient(),
            inspect: tokenizer.clone().recipient(),
            decode: tokenizer.recipient(),
        },
        fakes,
        config.batching.clone(),
        spec,
        lifecycle.clone(),
        admission.clone(),
        recorder,
        Arc::new(ActorTable::default()),
        supervisor,
    )
    .start();
    Rig {
        router,
        admission,
        lifecycle,
        batches,
    }
}

impl Rig {
    /// Sends texts numbered `numbers` as one request shaped by `rows`.
    async fn embed(&self, numbers: &[i64], rows: Rows) -> Answer {
        let mut job = Job::of(
            numbers
                .iter()
                .map(|n| TextInput::Text(n.to_string()))
                .collect(),
        );
        job.rows = rows;
        let rx = self
            .send(job, Instant::now() + Duration::from_secs(10))
            .await?;
        rx.await
            .expect("the Router answers every request it accepted")
    }

    async fn send(
        &self,
        job: Job,
        deadline: Instant,
    ) -> Result<oneshot::Receiver<Answer>, InferError> {
        let permit = self
            .admission
            .try_admit(job.texts.inputs.len())
            .expect("room");
        self.router
            .send(Embed {
                job,
                span: tracing::Span::none(),
                sent: Instant::now(),
                deadline,
                permit,
                priority: None,
            })
            .await
            .expect("the Router is running")
    }
}

/// The raw rows: no normalisation, no cut.
fn raw() -> Rows {
    Rows {
        normalize: Some(false),
        ..Rows::default()
    }
}

#[actix_rt::test]
async fn every_request_gets_its_own_rows_in_order() {
    let rig = rig(2, "  max_batch_size: 3");
    let requests: Vec<Vec<i64>> = vec![vec![1, 2, 3, 4, 5], vec![6], vec![7, 8], vec![9, 10, 11]];
    let answers = futures::future::join_all(requests.iter().map(|r| rig.embed(r, raw()))).await;
    for (numbers, answer) in requests.iter().zip(answers) {
        let out = answer.unwrap();
        let firsts: Vec<i64> = out.embeddings.iter().map(|r| r[0] as i64).collect();
        assert_eq!(&firsts, numbers, "rows of another request, or out of order");
        assert_eq!(out.token_counts, vec![3; numbers.len()]);
    }
    let batches = rig.batches.lock().unwrap().clone();
    assert_eq!(
        batches.iter().sum::<usize>(),
        11,
        "every text ran once: {batches:?}"
    );
    assert!(
        batches.iter().all(|&b| b <= 3),
        "over max_batch_size: {batches:?}"
    );
    // Every admitted text was released with its answer.
    assert_eq!(rig.admission.texts(), 0);
}

#[actix_rt::test]
async fn rows_are_cut_then_normalised_as_the_job_asks() {
    let rig = rig(1, "  max_batch_size: 8");
    let out = rig
        .embed(
            &[3],
            Rows {
                normalize: Some(true),
                dimensions: Some(2),
                all_tokens: false,
            },
        )
        .await
        .unwrap();
    // [3, 3] cut from [3, 3, 4, 12], then L2-normalised.
    let h = std::f32::consts::FRAC_1_SQRT_2;
    assert!((out.embeddings[0][0] - h).abs() < 1e-6 && (out.embeddings[0][1] - h).abs() < 1e-6);
    assert_eq!(out.embeddings[0].len(), 2);
    // The whole row, raw.
    let out = rig.embed(&[3], raw()).await.unwrap();
    assert_eq!(out.embeddings[0], [3.0, 3.0, 4.0, 12.0]);
}

#[actix_rt::test]
async fn a_request_past_its_deadline_is_not_run() {
    let rig = rig(1, "  max_batch_size: 8");
    let rx = rig
        .send(Job::of(vec![TextInput::Text("1".into())]), Instant::now())
        .await
        .unwrap();
    assert!(matches!(rx.await.unwrap(), Err(InferError::Expired)));
    assert!(
        rig.batches.lock().unwrap().is_empty(),
        "an expired text ran"
    );
}

#[actix_rt::test]
async fn nothing_is_accepted_before_ready_or_while_stopping() {
    let rig = rig(1, "  max_batch_size: 8");
    rig.lifecycle.begin_stop();
    let refused = rig
        .send(
            Job::of(vec![TextInput::Text("1".into())]),
            Instant::now() + Duration::from_secs(5),
        )
        .await;
    assert!(matches!(refused, Err(InferError::ShuttingDown)));
}
