//! More than one kind of model, each served by the real binary and compared with what the
//! library that defined it outputs (`tests/fixtures/models/*/reference.json`, written by
//! `scripts/gen_parity_fixtures.py` with transformers / sentence-transformers, not by us):
//! RoBERTa, XLM-RoBERTa, DistilBERT and BERT encoders with each sentence-transformers pooling
//! mode, sequence classifiers (softmax, multi-label sigmoid; BERT, RoBERTa and DistilBERT
//! heads), a cross-encoder reranker, TorchScript modules (pooled output, token states with
//! three inputs, logits), routes a model cannot serve, and bf16 on the CPU.

mod common;

use actor_infer::api::grpc::pb::{InferRequest, ModelInfoRequest, RerankRequest};
use common::{
    Server, experiment, fixture, fixture_reference, floats, get, grpc, max_abs_diff, post, strings,
};
use serde_json::{Value, json};

/// f32 parity: per embedding component, per logit and per score.
const F32_TOLERANCE: f32 = 1e-4;

/// Serves the fixture `name` on the CPU; `extra` is more YAML under `model:`.
fn serve(name: &str, extra: &str) -> Server {
    Server::start(experiment(&format!(
        "experiment:\n  name: {name}\nmodel:\n  path: {}\n  device: cpu\n{extra}",
        fixture(name).display()
    )))
}

/// A route the model does not serve answers 400 `wrong_model_kind`, naming what it serves.
async fn refuses(server: &Server, path: &str, body: Value, kind: &str) {
    let (status, body) = post(server, path, body).await;
    assert_eq!(status, 400, "{path}: {body}");
    assert_eq!(body["error_type"], "wrong_model_kind", "{path}: {body}");
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.contains(&format!("kind is {kind}")) && msg.contains("it serves"),
        "{path}: {msg}"
    );
}

/// Embedding models: every text alone and all together, over HTTP and gRPC.
async fn check_embedding(name: &str, family: &str, extra: &str) {
    let server = serve(name, extra);
    let r = fixture_reference(name);
    let texts = strings(&r["texts"]);
    let want: Vec<Vec<f32>> = r["embeddings"]
        .as_array()
        .unwrap()
        .iter()
        .map(floats)
        .collect();
    let tokens: Vec<u64> = r["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    assert!(
        texts.contains(&String::new()),
        "the fixture has an empty text"
    );
    assert_eq!(
        *tokens.iter().max().unwrap(),
        r["max_seq_length"].as_u64().unwrap(),
        "the fixture has a text that is truncated"
    );

    let i = get(&server, "/info").await;
    assert_eq!(i["kind"], "embedding", "{i}");
    assert_eq!(i["family"], family, "{i}");
    assert_eq!(i["max_sequence_length"], r["max_seq_length"], "{i}");

    let mut worst = 0f32;
    for (text, want) in texts.iter().zip(&want) {
        let (status, body) = post(&server, "/embed", json!({"inputs": text})).await;
        assert_eq!(status, 200, "{body}");
        let d = max_abs_diff(&floats(&body[0]), want);
        worst = worst.max(d);
        assert!(d < F32_TOLERANCE, "{name}: {text:?} alone: max diff {d}");
    }
    let mut client = grpc(&server).await;
    let res = client
        .infer(InferRequest {
            texts: texts.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        res.outputs.len(),
        texts.len(),
        "{name}: one output per text"
    );
    for ((out, want), (text, &n)) in res.outputs.iter().zip(&want).zip(texts.iter().zip(&tokens)) {
        assert_eq!(u64::from(out.token_count), n, "{name}: tokens of {text:?}");
        assert!(out.predictions.is_empty());
        let d = max_abs_diff(&out.embedding, want);
        worst = worst.max(d);
        assert!(
            d < F32_TOLERANCE,
            "{name}: {text:?} in a batch: max diff {d}"
        );
    }
    eprintln!("{name}: max abs diff {worst:e} (tolerance {F32_TOLERANCE:e})");

    refuses(&server, "/predict", json!({"inputs": "x"}), "embedding").await;
    refuses(
        &server,
        "/rerank",
        json!({"query": "q", "texts": ["x"]}),
        "embedding",
    )
    .await;
    let err = client
        .rerank(RerankRequest {
            query: "q".into(),
            texts: vec!["x".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("kind is embedding"), "{err:?}");
    server.stop_clean();
}

#[tokio::test]
async fn roberta_with_mean_pooling_matches_sentence_transformers() {
    check_embedding("roberta-mean", "roberta", "").await;
}

#[tokio::test]
async fn xlm_roberta_with_cls_pooling_matches_sentence_transformers() {
    check_embedding("xlm-roberta-cls", "xlm-roberta", "").await;
}

#[tokio::test]
async fn distilbert_with_max_pooling_matches_sentence_transformers() {
    check_embedding("distilbert-max", "distilbert", "").await;
}

#[tokio::test]
async fn bert_with_last_token_pooling_matches_sentence_transformers() {
    check_embedding("bert-lasttoken", "bert", "").await;
}

#[tokio::test]
async fn torchscript_pooled_output_with_two_inputs_matches() {
    check_embedding("ts-pooled", "torchscript", "  kind: torchscript\n").await;
}

#[tokio::test]
async fn torchscript_token_states_with_three_inputs_are_pooled_like_sentence_transformers() {
    // Inputs detected (2 fails, 3 works); the module returns (states, pooler) and the server
    // mean-pools the states.
    check_embedding("ts-states", "torchscript", "").await;
}

/// The reference's scores for text `i`: (label, score) high to low.
fn ref_scores(r: &Value, i: usize) -> Vec<(String, f32)> {
    r["scores"][i]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["label"].as_str().unwrap().to_string(),
                s["score"].as_f64().unwrap() as f32,
            )
        })
        .collect()
}

fn got_scores(v: &Value) -> Vec<(String, f32)> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| {
            (
                s["label"].as_str().unwrap().to_string(),
                s["score"].as_f64().unwrap() as f32,
            )
        })
        .collect()
}

fn same_scores(name: &str, text: &str, got: &[(String, f32)], want: &[(String, f32)]) -> f32 {
    assert_eq!(got.len(), want.len(), "{name}: {text:?}");
    let mut worst = 0f32;
    for ((gl, gs), (wl, ws)) in got.iter().zip(want) {
        assert_eq!(gl, wl, "{name}: {text:?}: label order {got:?} vs {want:?}");
        worst = worst.max((gs - ws).abs());
    }
    assert!(
        worst < F32_TOLERANCE,
        "{name}: {text:?}: scores {got:?} vs {want:?}"
    );
    worst
}

/// Classifiers: `/predict` one text and a batch, raw scores, gRPC Infer, `/info`, and the
/// routes it does not serve.
async fn check_classifier(name: &str, family: &str, activation: &str) {
    let server = serve(name, "");
    let r = fixture_reference(name);
    let texts = strings(&r["texts"]);
    let labels = strings(&r["labels"]);
    let i = get(&server, "/info").await;
    assert_eq!(i["kind"], "classifier", "{i}");
    assert_eq!(i["family"], family, "{i}");
    assert_eq!(i["activation"], activation, "{i}");
    assert_eq!(strings(&i["labels"]), labels, "{i}");
    assert_eq!(i["routes"], json!(["POST /predict", "gRPC Infer"]));

    let mut worst = 0f32;
    // One text: a flat list of {label, score}, highest first.
    for (n, text) in texts.iter().enumerate() {
        let (status, body) = post(&server, "/predict", json!({"inputs": text})).await;
        assert_eq!(status, 200, "{body}");
        worst = worst.max(same_scores(
            name,
            text,
            &got_scores(&body),
            &ref_scores(&r, n),
        ));
    }
    // A batch: one list per text; raw scores are the logits.
    let (status, body) = post(&server, "/predict", json!({"inputs": texts})).await;
    assert_eq!(status, 200, "{body}");
    let (raw_status, raw) = post(
        &server,
        "/predict",
        json!({"inputs": texts, "raw_scores": true}),
    )
    .await;
    assert_eq!(raw_status, 200, "{raw}");
    assert_eq!(body.as_array().unwrap().len(), texts.len(), "{body}");
    assert_eq!(raw.as_array().unwrap().len(), texts.len(), "{raw}");
    for (n, text) in texts.iter().enumerate() {
        worst = worst.max(same_scores(
            name,
            text,
            &got_scores(&body[n]),
            &ref_scores(&r, n),
        ));
        let logits = floats(&r["logits"][n]);
        assert_eq!(raw[n].as_array().unwrap().len(), labels.len(), "{raw}");
        for item in raw[n].as_array().unwrap() {
            let at = labels.iter().position(|l| l == &item["label"]).unwrap();
            let d = (item["score"].as_f64().unwrap() as f32 - logits[at]).abs();
            assert!(d < F32_TOLERANCE, "{name}: {text:?}: raw logit off by {d}");
        }
    }
    // gRPC Infer: predictions instead of embeddings.
    let mut client = grpc(&server).await;
    let res = client
        .infer(InferRequest {
            texts: texts.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        res.outputs.len(),
        texts.len(),
        "{name}: one output per text"
    );
    for (n, out) in res.outputs.iter().enumerate() {
        assert!(out.embedding.is_empty());
        assert_eq!(
            u64::from(out.token_count),
            r["tokens"][n].as_u64().unwrap(),
            "{name}: tokens of {:?}",
            texts[n]
        );
        let got: Vec<(String, f32)> = out
            .predictions
            .iter()
            .map(|p| (p.label.clone(), p.score))
            .collect();
        worst = worst.max(same_scores(name, &texts[n], &got, &ref_scores(&r, n)));
    }
    eprintln!("{name}: max score diff {worst:e} (tolerance {F32_TOLERANCE:e})");
    let m = client
        .model_info(ModelInfoRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!((m.kind.as_str(), m.family.as_str()), ("classifier", family));
    assert_eq!(m.labels, labels);

    refuses(&server, "/embed", json!({"inputs": "x"}), "classifier").await;
    refuses(
        &server,
        "/v1/embeddings",
        json!({"input": "x"}),
        "classifier",
    )
    .await;
    refuses(
        &server,
        "/rerank",
        json!({"query": "q", "texts": ["x"]}),
        "classifier",
    )
    .await;
    let err = client
        .rerank(RerankRequest {
            query: "q".into(),
            texts: vec!["x".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    server.stop_clean();
}

#[tokio::test]
async fn bert_classifier_softmax_matches_the_transformers_pipeline() {
    check_classifier("bert-classifier", "bert", "softmax").await;
}

#[tokio::test]
async fn multi_label_classifier_uses_a_sigmoid_per_label() {
    check_classifier("bert-multilabel", "bert", "sigmoid").await;
}

#[tokio::test]
async fn roberta_classifier_head_matches() {
    check_classifier("roberta-classifier", "roberta", "softmax").await;
}

#[tokio::test]
async fn distilbert_classifier_head_matches() {
    check_classifier("distilbert-classifier", "distilbert", "softmax").await;
}

#[tokio::test]
async fn torchscript_logits_serve_as_a_classifier() {
    check_classifier("ts-logits", "torchscript", "softmax").await;
}

#[tokio::test]
async fn classifier_reads_text_pairs_with_two_segments() {
    let server = serve("bert-classifier", "");
    let r = fixture_reference("bert-classifier");
    let pairs = r["pairs"].as_array().unwrap();
    let (status, body) = post(
        &server,
        "/predict",
        json!({"inputs": pairs, "raw_scores": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let labels = strings(&r["labels"]);
    assert_eq!(body.as_array().unwrap().len(), pairs.len(), "{body}");
    for (n, row) in body.as_array().unwrap().iter().enumerate() {
        let want = floats(&r["pair_logits"][n]);
        assert_eq!(row.as_array().unwrap().len(), labels.len(), "{row}");
        for item in row.as_array().unwrap() {
            let at = labels.iter().position(|l| l == &item["label"]).unwrap();
            let d = (item["score"].as_f64().unwrap() as f32 - want[at]).abs();
            assert!(d < F32_TOLERANCE, "pair {n}: logit off by {d}");
        }
    }
    let mut client = grpc(&server).await;
    let res = client
        .infer(InferRequest {
            texts: pairs
                .iter()
                .map(|p| p[0].as_str().unwrap().into())
                .collect(),
            text_pairs: pairs
                .iter()
                .map(|p| p[1].as_str().unwrap().into())
                .collect(),
            raw_scores: Some(true),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(res.outputs.len(), pairs.len(), "one output per pair");
    for (n, out) in res.outputs.iter().enumerate() {
        assert_eq!(
            u64::from(out.token_count),
            r["pair_tokens"][n].as_u64().unwrap(),
            "pair {n}"
        );
        let want = floats(&r["pair_logits"][n]);
        assert_eq!(out.predictions.len(), labels.len(), "pair {n}");
        for p in &out.predictions {
            let at = labels.iter().position(|l| l == &p.label).unwrap();
            assert!((p.score - want[at]).abs() < F32_TOLERANCE, "pair {n}");
        }
    }
    // Mixing texts and pairs, or a list of three, is a clear 400.
    let (status, body) = post(&server, "/predict", json!({"inputs": [["a", "b"], "c"]})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("mixes"), "{body}");
    let (status, body) = post(&server, "/predict", json!({"inputs": [["a", "b", "c"]]})).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("inputs[0]"),
        "{body}"
    );
    let err = client
        .infer(InferRequest {
            texts: vec!["a".into(), "b".into()],
            text_pairs: vec!["c".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    server.stop_clean();
}

#[tokio::test]
async fn reranker_matches_cross_encoder_over_http_and_grpc() {
    let server = serve("bert-reranker", "");
    let r = fixture_reference("bert-reranker");
    let query = r["query"].as_str().unwrap();
    let texts = strings(&r["texts"]);
    let scores = floats(&r["scores"]);
    let logits = floats(&r["logits"]);
    let i = get(&server, "/info").await;
    assert_eq!(i["kind"], "reranker", "{i}");
    assert_eq!(
        i["routes"],
        json!(["POST /rerank", "POST /predict", "gRPC Rerank", "gRPC Infer"])
    );

    // CrossEncoder.rank's order and scores, with the texts when asked.
    let (status, body) = post(
        &server,
        "/rerank",
        json!({"query": query, "texts": texts, "return_text": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let got = body.as_array().unwrap();
    let want = r["ranking"].as_array().unwrap();
    assert_eq!(got.len(), want.len());
    let mut worst = 0f32;
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g["index"], w["index"], "order: {body}");
        let index = g["index"].as_u64().unwrap() as usize;
        assert_eq!(g["text"].as_str().unwrap(), texts[index]);
        let d = (g["score"].as_f64().unwrap() as f32 - scores[index]).abs();
        worst = worst.max(d);
        assert!(d < F32_TOLERANCE, "text {index}: score off by {d}");
    }
    eprintln!("bert-reranker: max score diff {worst:e} (tolerance {F32_TOLERANCE:e})");
    // raw_scores: the logits; no text unless asked.
    let (raw_status, raw) = post(
        &server,
        "/rerank",
        json!({"query": query, "texts": texts, "raw_scores": true}),
    )
    .await;
    assert_eq!(raw_status, 200, "{raw}");
    assert_eq!(raw.as_array().unwrap().len(), texts.len(), "{raw}");
    for g in raw.as_array().unwrap() {
        let index = g["index"].as_u64().unwrap() as usize;
        assert!(g.get("text").is_none(), "{g}");
        assert!((g["score"].as_f64().unwrap() as f32 - logits[index]).abs() < F32_TOLERANCE);
    }
    // /predict on (query, text) pairs gives the same sigmoid scores.
    let pairs: Vec<[&str; 2]> = texts.iter().map(|t| [query, t.as_str()]).collect();
    let (status, body) = post(&server, "/predict", json!({"inputs": pairs})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_array().unwrap().len(), texts.len(), "{body}");
    for (n, row) in body.as_array().unwrap().iter().enumerate() {
        assert_eq!(row[0]["label"], "LABEL_0");
        assert!((row[0]["score"].as_f64().unwrap() as f32 - scores[n]).abs() < F32_TOLERANCE);
    }

    let mut client = grpc(&server).await;
    let res = client
        .rerank(RerankRequest {
            query: query.into(),
            texts: texts.clone(),
            request_id: "rr".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(res.request_id, "rr");
    assert_eq!(res.results.len(), want.len());
    for (g, w) in res.results.iter().zip(want) {
        assert_eq!(u64::from(g.index), w["index"].as_u64().unwrap());
        assert!(g.text.is_none());
        assert!((g.score - scores[g.index as usize]).abs() < F32_TOLERANCE);
    }
    // Token counts of the pairs, as the cross-encoder's tokenizer cut them.
    let res = client
        .infer(InferRequest {
            texts: vec![query.into(); texts.len()],
            text_pairs: texts.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(res.outputs.len(), texts.len(), "one output per pair");
    for (n, out) in res.outputs.iter().enumerate() {
        assert_eq!(u64::from(out.token_count), r["tokens"][n].as_u64().unwrap());
    }
    // Empty texts: a 400 / INVALID_ARGUMENT, not an empty answer.
    let (status, body) = post(&server, "/rerank", json!({"query": query, "texts": []})).await;
    assert_eq!(status, 400, "{body}");
    let err = client
        .rerank(RerankRequest {
            query: query.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    refuses(&server, "/embed", json!({"inputs": "x"}), "reranker").await;
    server.stop_clean();
}

/// Runs the binary on `yaml` until it refuses to start; its exit code and log.
fn refused(yaml: &str) -> (Option<i32>, String) {
    let exp = experiment(yaml);
    let path = exp.path.to_str().unwrap();
    let (code, log) =
        common::run_to_exit(&["--experiment", path, "--http-port", "0", "--grpc-port", "0"]);
    (Some(code), log)
}

#[test]
fn a_kind_the_model_cannot_be_is_refused_at_start_naming_why() {
    // Three labels cannot rerank.
    let (code, log) = refused(&format!(
        "model:\n  path: {}\n  device: cpu\n  kind: reranker\n",
        fixture("bert-classifier").display()
    ));
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("reranker needs a model with one label"),
        "{log}"
    );

    // An unknown kind is a configuration error naming the key.
    let (code, log) = refused(&format!(
        "model:\n  path: {}\n  kind: ranker\n",
        fixture("bert-classifier").display()
    ));
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("model.kind"), "{log}");

    // A TorchScript module that does not give what config.json says it is (token states
    // where a three-label classifier's logits are expected).
    let dir = tempfile::tempdir().unwrap();
    for f in ["model.pt", "tokenizer.json"] {
        std::fs::copy(fixture("ts-states").join(f), dir.path().join(f)).unwrap();
    }
    std::fs::copy(
        fixture("bert-classifier").join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let (code, log) = refused(&format!(
        "model:\n  path: {}\n  device: cpu\n",
        dir.path().display()
    ));
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("a classifier model must give [2, 3]"), "{log}");

    // An embedding module whose width is not config.json's hidden_size: /info would report a
    // wrong dimension, so the start stops naming both numbers.
    let dir = tempfile::tempdir().unwrap();
    for f in ["model.pt", "tokenizer.json", "sentence_bert_config.json"] {
        std::fs::copy(fixture("ts-states").join(f), dir.path().join(f)).unwrap();
    }
    let mut config: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("ts-states").join("config.json")).unwrap(),
    )
    .unwrap();
    let width = config["hidden_size"].as_i64().unwrap();
    let heads = config["num_attention_heads"].as_i64().unwrap();
    config["hidden_size"] = json!(width * 2);
    assert_eq!(width * 2 % heads, 0);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let (code, log) = refused(&format!(
        "model:\n  path: {}\n  device: cpu\n",
        dir.path().display()
    ));
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains(&format!(
            "the module's embeddings have {width} dimensions but config.json's hidden_size is {}",
            width * 2
        )),
        "{log}"
    );

    // bf16 is not applied to a TorchScript module: it runs in the precision it was traced in.
    let (code, log) = refused(&format!(
        "model:\n  path: {}\n  device: cpu\n  dtype: bf16\n",
        fixture("ts-states").display()
    ));
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("model.dtype: bf16 is not applied to a TorchScript module"),
        "{log}"
    );
}

/// bf16 weights on the CPU: the drift against f32 sentence-transformers on the 14 MiniLM
/// reference texts, printed (docs/models.md) and bounded.
#[tokio::test]
async fn bf16_on_cpu_drifts_little_from_f32() {
    let server = Server::start(experiment(&format!(
        "model:\n  path: {}\n  device: cpu\n  dtype: bf16\n",
        common::default_model().display()
    )));
    let cases = common::reference();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let (status, body) = post(&server, "/embed", json!({"inputs": texts})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(get(&server, "/info").await["dtype"], "bf16");
    let (mut max_abs, mut min_cos) = (0f32, 1f32);
    for (n, case) in cases.iter().enumerate() {
        let got = floats(&body[n]);
        max_abs = max_abs.max(max_abs_diff(&got, &case.embedding));
        // Both are unit vectors: the cosine is the dot product.
        let cos: f32 = got.iter().zip(&case.embedding).map(|(a, b)| a * b).sum();
        min_cos = min_cos.min(cos);
    }
    eprintln!(
        "bf16 vs f32 (MiniLM, {} texts): max abs diff {max_abs:.5}, min cosine {min_cos:.6}",
        cases.len()
    );
    assert!(max_abs < BF16_MAX_ABS, "max abs diff {max_abs}");
    assert!(min_cos > BF16_MIN_COSINE, "min cosine {min_cos}");
    server.stop_clean();
}

/// bf16 tolerance (docs/models.md): per component, and cosine to the f32 embedding.
const BF16_MAX_ABS: f32 = 1e-2;
const BF16_MIN_COSINE: f32 = 0.9995;

#[tokio::test]
async fn rerank_and_predict_obey_the_api_key_and_request_limits() {
    const KEY: &str = "rerank-key";
    let server = Server::start_with(
        experiment(&format!(
            "server:\n  max_client_batch_size: 3\n  max_input_chars: 50\nmodel:\n  path: {}\n  \
             device: cpu\n",
            fixture("bert-reranker").display()
        )),
        &[("ACTOR_INFER__SERVER__API_KEY", KEY)],
    );
    let http = reqwest::Client::new();
    let call = |path: &str, body: Value, key: Option<&str>| {
        let mut req = http.post(format!("{}{path}", server.http)).json(&body);
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        req.send()
    };
    let rerank = json!({"query": "q", "texts": ["a", "b"]});
    let predict = json!({"inputs": [["q", "a"]]});
    for (path, body) in [("/rerank", &rerank), ("/predict", &predict)] {
        let res = call(path, body.clone(), None).await.unwrap();
        assert_eq!(res.status().as_u16(), 401, "{path} without the key");
        let res = call(path, body.clone(), Some(KEY)).await.unwrap();
        assert_eq!(res.status().as_u16(), 200, "{path} with the key");
    }
    // Four documents: over max_client_batch_size.
    let res = call(
        "/rerank",
        json!({"query": "q", "texts": ["a", "b", "c", "d"]}),
        Some(KEY),
    )
    .await
    .unwrap();
    assert_eq!(res.status().as_u16(), 413);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error_type"], "limit_exceeded", "{body}");
    // A pair's second text over max_input_chars.
    let res = call(
        "/predict",
        json!({"inputs": [["q", "x".repeat(51)]]}),
        Some(KEY),
    )
    .await
    .unwrap();
    assert_eq!(res.status().as_u16(), 413);
    let body: Value = res.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("max_input_chars"),
        "{body}"
    );
    // gRPC Rerank needs the key too.
    let mut client = grpc(&server).await;
    let err = client
        .rerank(RerankRequest {
            query: "q".into(),
            texts: vec!["a".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    server.stop_clean();
}

/// Every form of the f32 linear layers (docs/performance.md): the AVX-512 panel kernel where
/// the CPU has it, and the portable paths every other CPU takes, forced here with
/// `ACTOR_INFER_LINEAR` so that they run on this CPU too. Each matches sentence-transformers
/// within the f32 tolerance on the default model's 14 reference texts, one per request and all
/// in one padded batch, and the start-up log names the form that ran.
#[tokio::test]
async fn every_form_of_the_linear_layers_matches_sentence_transformers() {
    let avx512 = std::arch::is_x86_feature_detected!("avx512f");
    let cases = common::reference();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    // (asked, what runs): `panel` needs AVX-512; `auto` is `panel` where it can run.
    for (asked, runs) in [
        ("auto", if avx512 { "panel" } else { "addmm" }),
        ("panel", if avx512 { "panel" } else { "addmm" }),
        ("addmm", "addmm"),
        ("linear", "linear"),
        ("mkl-packed", "mkl-packed"),
    ] {
        let server = Server::start_with(experiment(""), &[("ACTOR_INFER_LINEAR", asked)]);
        let log = server.log();
        assert!(
            log.lines()
                .any(|l| l.contains("linear layers' form")
                    && l.contains(&format!("linear=\"{runs}\""))),
            "ACTOR_INFER_LINEAR={asked}: the log should name {runs}:\n{log}"
        );
        let mut worst = 0f32;
        for case in &cases {
            let (status, body) = post(&server, "/embed", json!({"inputs": case.text})).await;
            assert_eq!(status, 200, "{body}");
            let d = max_abs_diff(&floats(&body[0]), &case.embedding);
            worst = worst.max(d);
            assert!(
                d < F32_TOLERANCE,
                "{asked}: {:?} alone: max diff {d}",
                case.text
            );
        }
        let (status, body) = post(&server, "/embed", json!({"inputs": texts})).await;
        assert_eq!(status, 200, "{body}");
        for (n, case) in cases.iter().enumerate() {
            let d = max_abs_diff(&floats(&body[n]), &case.embedding);
            worst = worst.max(d);
            assert!(
                d < F32_TOLERANCE,
                "{asked}: {:?} in a batch: max diff {d}",
                case.text
            );
        }
        eprintln!("ACTOR_INFER_LINEAR={asked} ({runs}): max abs diff {worst:e}");
        server.stop_clean();
    }
    // A form that does not exist is refused at start, naming the variable and the forms.
    let exp = experiment("");
    let (code, log) = common::run_to_exit_with(
        &[
            "--experiment",
            exp.path.to_str().unwrap(),
            "--http-port",
            "0",
            "--grpc-port",
            "0",
        ],
        &[("ACTOR_INFER_LINEAR", "fast")],
    );
    assert_ne!(code, 0, "{log}");
    assert!(
        log.contains("ACTOR_INFER_LINEAR=\"fast\" is not a form of the linear layers (auto, panel"),
        "{log}"
    );
}
