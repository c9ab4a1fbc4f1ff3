//! Several models in one process, and reloads that swap a model's version without failing a
//! request. The real binary serves the default model (all-MiniLM-L6-v2) beside the committed
//! tiny reranker and classifier fixtures; every answer is compared with the reference the
//! library that defined the model produced (`tests/fixtures/...`), over HTTP and gRPC.

mod common;

use std::{
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use actor_infer::api::grpc::pb::{
    InferRequest, ListModelsRequest, ModelInfoRequest, RerankRequest,
};
use common::{
    Experiment, Server, TOLERANCE, default_model, fixture, fixture_reference, floats, get, grpc,
    max_abs_diff, post_versioned, root, scrape, strings,
};
use serde_json::{Value, json};

/// An experiment file (written as given: `models:` lists every model).
fn experiment(yaml: &str) -> Experiment {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("exp.yaml");
    std::fs::write(&path, yaml).unwrap();
    Experiment { dir, path }
}

/// One `models:` entry on the CPU; `extra` is more keys (each line indented by 4).
fn entry(name: &str, path: &Path, extra: &str) -> String {
    format!(
        "  - name: {name}\n    path: {}\n    device: cpu\n{extra}",
        path.display()
    )
}

fn minilm(extra: &str) -> String {
    entry("minilm", &default_model(), extra)
}

/// `POST /admin/reload`: status and report.
async fn reload(server: &Server) -> (u16, Value) {
    let res = reqwest::Client::new()
        .post(format!("{}/admin/reload", server.http))
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

/// The process's resident memory and thread count (`/proc/PID/status`).
fn rss_and_threads(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    (field("VmRSS:") * 1024, field("Threads:"))
}

/// The server's `model_version` gauge for `model` (absent: 0).
fn version_metric(server: &Server, model: &str) -> f64 {
    scrape(
        server,
        &format!("actor_infer_model_version{{model=\"{model}\"}}"),
    )
}

#[tokio::test]
async fn an_embedder_a_reranker_and_a_classifier_serve_side_by_side() {
    let yaml = format!(
        "experiment:\n  name: retrieval\nmodels:\n{}{}{}",
        minilm(""),
        entry("reranker", &fixture("bert-reranker"), ""),
        entry(
            "classifier",
            &fixture("bert-classifier"),
            "    instances: 2\n    batching:\n      max_batch_size: 4\n"
        ),
    );
    let server = Server::start(experiment(&yaml));
    let cases = common::reference();
    let rr = fixture_reference("bert-reranker");
    let cr = fixture_reference("bert-classifier");

    // Every model is listed, with its own settings.
    let info = get(&server, "/info").await;
    assert_eq!(info["model_id"], "minilm", "TEI's fields: the embedder");
    let models = info["models"].as_array().unwrap();
    let names: Vec<&str> = models
        .iter()
        .map(|m| m["model"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["minilm", "reranker", "classifier"], "{info}");
    assert_eq!(models[2]["workers"], 2);
    assert_eq!(models[2]["max_batch_requests"], 4);
    assert_eq!(models[1]["kind"], "reranker");
    assert!(models.iter().all(|m| m["model_version"] == 1), "{info}");
    let list = get(&server, "/v1/models").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 3, "{list}");

    // OpenAI by name, TEI's /embed by default: both the embedder, matching
    // sentence-transformers.
    let c = &cases[0];
    let (status, body, version) = post_versioned(
        &server,
        "/v1/embeddings",
        json!({"model": "minilm", "input": [c.text]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(version.as_deref(), Some("minilm@1"));
    let d = max_abs_diff(&floats(&body["data"][0]["embedding"]), &c.embedding);
    assert!(d < TOLERANCE, "OpenAI route: {d}");
    let (status, body, _) = post_versioned(&server, "/embed", json!({"inputs": c.text})).await;
    assert_eq!(status, 200, "{body}");
    assert!(max_abs_diff(&floats(&body[0]), &c.embedding) < TOLERANCE);

    // /rerank goes to the reranker, /predict to the classifier, each as its reference says.
    let query = rr["query"].as_str().unwrap();
    let texts = strings(&rr["texts"]);
    let scores = floats(&rr["scores"]);
    let (status, body, version) =
        post_versioned(&server, "/rerank", json!({"query": query, "texts": texts})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(version.as_deref(), Some("reranker@1"));
    for r in body.as_array().unwrap() {
        let i = r["index"].as_u64().unwrap() as usize;
        assert!((r["score"].as_f64().unwrap() as f32 - scores[i]).abs() < TOLERANCE);
    }
    let ctexts = strings(&cr["texts"]);
    let (status, body, version) =
        post_versioned(&server, "/predict", json!({"inputs": ctexts[..3]})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(version.as_deref(), Some("classifier@1"));
    let want = &cr["scores"][0][0];
    assert_eq!(body[0][0]["label"], want["label"], "{body}");
    assert!((body[0][0]["score"].as_f64().unwrap() - want["score"].as_f64().unwrap()).abs() < 1e-4);

    // gRPC: `model` picks the model; empty picks the default of the call's kind.
    let mut client = grpc(&server).await;
    let out = client
        .infer(InferRequest {
            texts: vec![c.text.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.model, "minilm");
    assert!(max_abs_diff(&out.outputs[0].embedding, &c.embedding) < TOLERANCE);
    let out = client
        .infer(InferRequest {
            texts: vec![ctexts[0].clone()],
            model: "classifier".into(),
            raw_scores: Some(true),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.model, "classifier");
    let logits = floats(&cr["logits"][0]);
    let mut got: Vec<(String, f32)> = out.outputs[0]
        .predictions
        .iter()
        .map(|p| (p.label.clone(), p.score))
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let labels = strings(&cr["labels"]);
    for (label, score) in got {
        let i = labels.iter().position(|l| *l == label).unwrap();
        assert!(
            (score - logits[i]).abs() < TOLERANCE,
            "{label}: {score} vs {}",
            logits[i]
        );
    }
    let ranked = client
        .rerank(RerankRequest {
            query: query.into(),
            texts: texts.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ranked.model, "reranker");
    for r in &ranked.results {
        assert!((r.score - scores[r.index as usize]).abs() < TOLERANCE);
    }
    let all = client
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.models.len(), 3);
    let one = client
        .model_info(ModelInfoRequest {
            model: "classifier".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (one.kind.as_str(), one.workers, one.version),
        ("classifier", 2, 1)
    );

    // A name that is not served: 404 / NOT_FOUND, listing the models.
    let (status, body, _) = post_versioned(
        &server,
        "/v1/embeddings",
        json!({"model": "text-embedding-3-small", "input": ["x"]}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error_type"], "model_not_found");
    let msg = body["error"].as_str().unwrap();
    assert!(msg.contains("minilm, reranker, classifier"), "{msg}");
    let err = client
        .infer(InferRequest {
            texts: vec!["x".into()],
            model: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(err.message().contains("minilm, reranker, classifier"));
    // The KServe v2 path names the model too.
    let meta = get(&server, "/v2/models/reranker").await;
    assert_eq!(meta["name"], "reranker", "{meta}");

    // The JSON dashboard (the live page's source) has a row per model beside the totals.
    let dash = get(&server, "/metrics?format=json").await;
    let rows = dash["models"].as_array().unwrap();
    let row_names: Vec<&str> = rows.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(row_names, ["minilm", "reranker", "classifier"], "{dash}");
    let per_model: u64 = rows.iter().map(|m| m["requests"].as_u64().unwrap()).sum();
    assert!(
        rows.iter().all(|m| m["requests"].as_u64().unwrap() >= 2),
        "{dash}"
    );
    assert!(per_model <= dash["requests"].as_u64().unwrap(), "{dash}");
    assert_eq!(rows[2]["workers"], 2);

    // Metrics carry the model.
    for model in ["minilm", "reranker", "classifier"] {
        let n = scrape(
            &server,
            &format!(
                "actor_infer_requests_total{{model=\"{model}\",outcome=\"ok\",transport=\"http\"}}"
            ),
        );
        assert!(n >= 1.0, "{model}: {n} requests");
        assert_eq!(version_metric(&server, model), 1.0);
    }
    server.stop_clean();
}

/// `configs/multi.yaml`, the README's example, as shipped: each kind of TEI route goes to the
/// model `server.default_models` names.
#[tokio::test]
async fn the_shipped_multi_model_example_routes_each_kind_to_its_model() {
    let server = Server::start(Experiment {
        dir: tempfile::tempdir().unwrap(),
        path: root().join("configs/multi.yaml"),
    });
    let list = get(&server, "/v1/models").await;
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["minilm", "reranker", "sentiment"], "{list}");
    for (path, body, model) in [
        ("/embed", json!({"inputs": "a"}), "minilm@1"),
        (
            "/rerank",
            json!({"query": "q", "texts": ["a", "b"]}),
            "reranker@1",
        ),
        ("/predict", json!({"inputs": "a"}), "sentiment@1"),
    ] {
        let (status, body, version) = post_versioned(&server, path, body).await;
        assert_eq!(
            (status, version.as_deref()),
            (200, Some(model)),
            "{path}: {body}"
        );
    }
    server.stop_clean();
}

/// The two versions the reload test alternates: the same weights, with a different
/// `max_seq_length` (so a long text's answer tells which served it).
const SHORT: usize = 16;

fn two_versions(short: bool) -> String {
    let extra = if short {
        format!("    max_seq_length: {SHORT}\n")
    } else {
        String::new()
    };
    format!(
        "models:\n{}{}",
        minilm(&extra),
        entry("reranker", &fixture("bert-reranker"), "")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_reloads_under_load_fail_no_request_and_give_memory_back() {
    let exp = experiment(&two_versions(false));
    let path = exp.path.clone();
    let server = Arc::new(Server::start(exp));
    let cases = common::reference();
    // A long text: its answer shows the version (SHORT tokens or all of them).
    let long = cases
        .iter()
        .max_by_key(|c| c.tokens)
        .map(|c| (c.text.clone(), c.tokens, c.embedding.clone()))
        .unwrap();
    assert!(long.1 as usize > SHORT, "the reference has a long text");
    let rr = fixture_reference("bert-reranker");
    let query = rr["query"].as_str().unwrap().to_string();
    let texts = strings(&rr["texts"]);
    let scores = floats(&rr["scores"]);

    // Warm the allocator up with both models before measuring.
    for _ in 0..20 {
        let (s, _, _) = post_versioned(
            &server,
            "/v1/embeddings",
            json!({"model": "minilm", "input": [long.0]}),
        )
        .await;
        assert_eq!(s, 200);
    }
    let (rss_before, threads_before) = rss_and_threads(server.pid);

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let answered = Arc::new(AtomicUsize::new(0));
    // The short version's answer to the long text, the first time one is seen; every later one
    // must equal it.
    let short_answer: Arc<Mutex<Option<Vec<f32>>>> = Arc::default();
    let mut load = Vec::new();
    for transport in ["http", "http", "grpc"] {
        let (server, stop, failures, answered, long, short_answer) = (
            server.clone(),
            stop.clone(),
            failures.clone(),
            answered.clone(),
            long.clone(),
            short_answer.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut client = grpc(&server).await;
            while !stop.load(Ordering::Acquire) {
                // (tokens the model saw, the embedding, the version the server says served)
                let got: Result<(u32, Vec<f32>, Option<String>), String> = if transport == "http" {
                    let (status, body, version) = post_versioned(
                        &server,
                        "/v1/embeddings",
                        json!({"model": "minilm", "input": [long.0]}),
                    )
                    .await;
                    if status == 200 {
                        Ok((
                            body["usage"]["prompt_tokens"].as_u64().unwrap() as u32,
                            floats(&body["data"][0]["embedding"]),
                            version,
                        ))
                    } else {
                        Err(format!("HTTP {status}: {body}"))
                    }
                } else {
                    client
                        .infer(InferRequest {
                            texts: vec![long.0.clone()],
                            model: "minilm".into(),
                            ..Default::default()
                        })
                        .await
                        .map(|r| {
                            let o = &r.get_ref().outputs[0];
                            (o.token_count, o.embedding.clone(), None)
                        })
                        .map_err(|e| format!("gRPC {e:?}"))
                };
                let mut f = failures.lock().unwrap();
                match got {
                    Err(e) => f.push(e),
                    Ok((tokens, embedding, version)) => {
                        let short = tokens as usize == SHORT;
                        if !short && tokens != long.1 {
                            f.push(format!("{tokens} tokens: from neither version"));
                        }
                        // Version 1 is the full one, then they alternate.
                        if let Some(v) = &version {
                            let n: u64 = v.strip_prefix("minilm@").unwrap().parse().unwrap();
                            if n.is_multiple_of(2) != short {
                                f.push(format!("{v} answered with {tokens} tokens"));
                            }
                        }
                        if short {
                            let mut seen = short_answer.lock().unwrap();
                            let first = seen.get_or_insert_with(|| embedding.clone());
                            if max_abs_diff(first, &embedding) > TOLERANCE {
                                f.push("the short version answered two ways".into());
                            }
                        } else if max_abs_diff(&embedding, &long.2) > TOLERANCE {
                            f.push("the full version does not match sentence-transformers".into());
                        }
                    }
                }
                answered.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // The reranker, untouched by the reloads, serves throughout.
    {
        let (server, stop, failures, answered) = (
            server.clone(),
            stop.clone(),
            failures.clone(),
            answered.clone(),
        );
        let (query, texts, scores) = (query.clone(), texts.clone(), scores.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                let (status, body, version) =
                    post_versioned(&server, "/rerank", json!({"query": query, "texts": texts}))
                        .await;
                let mut f = failures.lock().unwrap();
                if status != 200 || version.as_deref() != Some("reranker@1") {
                    f.push(format!("rerank: {status} {version:?} {body}"));
                    continue;
                }
                for r in body.as_array().unwrap() {
                    let i = r["index"].as_u64().unwrap() as usize;
                    if (r["score"].as_f64().unwrap() as f32 - scores[i]).abs() > TOLERANCE {
                        f.push(format!("rerank score {i} off"));
                    }
                }
                answered.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    for round in 1..=10u64 {
        let before = answered.load(Ordering::Relaxed);
        std::fs::write(&path, two_versions(!round.is_multiple_of(2))).unwrap();
        let (status, report) = reload(&server).await;
        assert_eq!(status, 200, "reload {round}: {report}");
        assert_eq!(
            report["replaced"],
            json!([format!("minilm@{round} -> minilm@{}", round + 1)]),
            "{report}"
        );
        assert_eq!(report["unchanged"], json!(["reranker"]), "{report}");
        // Requests keep being answered between reloads.
        let deadline = Instant::now() + Duration::from_secs(20);
        while answered.load(Ordering::Relaxed) < before + 6 {
            assert!(Instant::now() < deadline, "no answers after reload {round}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    stop.store(true, Ordering::Release);
    for l in load {
        l.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    let total = answered.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {total} failed: {failures:?}",
        failures.len()
    );
    assert!(
        short_answer.lock().unwrap().is_some(),
        "the short version never answered"
    );
    assert_eq!(version_metric(&server, "minilm"), 11.0);
    assert_eq!(version_metric(&server, "reranker"), 1.0);
    assert_eq!(
        scrape(
            &server,
            "actor_infer_model_loads_total{model=\"minilm\",outcome=\"ok\"}"
        ),
        10.0
    );

    // Ten retired versions gave back their threads and their memory (a released worker's
    // thread ends a moment after it says it stopped).
    let deadline = Instant::now() + Duration::from_secs(5);
    let (rss_after, threads_after) = loop {
        let now = rss_and_threads(server.pid);
        if now.1 <= threads_before || Instant::now() >= deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "{total} answers; RSS {:.0} MiB before the reloads, {:.0} MiB after; threads {threads_before} -> {threads_after}",
        rss_before as f64 / 1048576.0,
        rss_after as f64 / 1048576.0
    );
    assert!(
        threads_after <= threads_before,
        "threads {threads_before} -> {threads_after}: a retired version left threads"
    );
    assert!(
        rss_after < rss_before + 64 * 1024 * 1024,
        "RSS grew from {rss_before} to {rss_after} over 10 reloads (a version is ~90 MB)"
    );
    let log = server.log();
    assert_eq!(log.matches("retired").count(), 10, "{log}");
    // The dashboard and the metrics list the serving workers only, not the ten retired ones.
    let dash = get(&server, "/metrics?format=json").await;
    assert_eq!(dash["workers"].as_array().unwrap().len(), 2, "{dash}");
    let (_, text) = common::http_get(&server.http_addr, "/metrics?format=prometheus").unwrap();
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("actor_infer_worker_busy{"))
            .count(),
        2,
        "{text}"
    );
    Arc::into_inner(server).unwrap().stop_clean();
}

#[tokio::test]
async fn a_broken_model_or_file_keeps_the_old_version_serving() {
    let exp = experiment(&two_versions(false));
    let path = exp.path.clone();
    let server = Server::start(exp);
    let c = &common::reference()[0];
    let (_, threads_before) = rss_and_threads(server.pid);

    // The reranker's folder replaced by one whose weights are cut short.
    let broken = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(fixture("bert-reranker")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, broken.path().join(f.file_name().unwrap())).unwrap();
    }
    let weights = broken.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(
        &path,
        format!(
            "models:\n{}{}",
            minilm(""),
            entry("reranker", broken.path(), "")
        ),
    )
    .unwrap();
    let (status, report) = reload(&server).await;
    assert_eq!(status, 500, "{report}");
    assert_eq!(report["ok"], false);
    assert_eq!(report["failed"][0]["model"], "reranker", "{report}");
    assert!(
        !report["failed"][0]["error"].as_str().unwrap().is_empty(),
        "{report}"
    );
    assert_eq!(report["unchanged"], json!(["minilm"]));
    // The old reranker still answers, as version 1.
    let rr = fixture_reference("bert-reranker");
    let (status, body, version) = post_versioned(
        &server,
        "/rerank",
        json!({"query": rr["query"], "texts": rr["texts"]}),
    )
    .await;
    assert_eq!(
        (status, version.as_deref()),
        (200, Some("reranker@1")),
        "{body}"
    );
    assert_eq!(
        scrape(
            &server,
            "actor_infer_model_loads_total{model=\"reranker\",outcome=\"failed\"}"
        ),
        1.0
    );
    assert_eq!(
        scrape(&server, "actor_infer_reloads_total{outcome=\"failed\"}"),
        1.0
    );
    assert!(server.log().contains("the new version did not load"));
    // Nothing of the failed version is left running (its worker thread ends once released).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, threads_after) = rss_and_threads(server.pid);
        if threads_after <= threads_before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "threads {threads_before} -> {threads_after}: the failed version left some"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A file that does not parse: nothing changes, the error names the key.
    std::fs::write(&path, "models:\n  - path: 3\n    instances: zero\n").unwrap();
    let (status, report) = reload(&server).await;
    assert_eq!(status, 500, "{report}");
    assert_eq!(report["failed"][0]["model"], "experiment", "{report}");
    assert!(
        report["failed"][0]["error"]
            .as_str()
            .unwrap()
            .contains("models[0]"),
        "{report}"
    );

    // Two reloads at once: the second is refused with 409 while the first loads a model.
    std::fs::write(&path, two_versions(true)).unwrap();
    let seen = |s: &Server| s.log().matches("reload: reading the experiment").count();
    let before = seen(&server);
    let first = {
        let http = server.http.clone();
        tokio::spawn(async move {
            let res = reqwest::Client::new()
                .post(format!("{http}/admin/reload"))
                .send()
                .await
                .unwrap();
            res.status().as_u16()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen(&server) == before {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, body) = reload(&server).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error_type"], "conflict");
    assert_eq!(first.await.unwrap(), 200);
    let (status, body, version) = post_versioned(
        &server,
        "/v1/embeddings",
        json!({"model": "minilm", "input": [c.text]}),
    )
    .await;
    assert_eq!(
        (status, version.as_deref()),
        (200, Some("minilm@2")),
        "{body}"
    );
    server.stop_clean();
}

#[test]
fn sigterm_during_a_reload_still_stops_cleanly() {
    let exp = experiment(&two_versions(false));
    let path = exp.path.clone();
    let mut server = Server::start(exp);
    std::fs::write(&path, two_versions(true)).unwrap();
    server.signal(libc::SIGHUP);
    // The new version is loading when the stop arrives.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains("version=2") {
        assert!(Instant::now() < deadline, "{}", server.log());
        std::thread::sleep(Duration::from_millis(5));
    }
    let start = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server.wait(Duration::from_secs(15)).expect("stopped");
    let log = server.log();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("Shutdown complete"), "{log}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "within shutdown.timeout_seconds"
    );
}
