//! The Open Inference Protocol (KServe v2 / Triton) with the real clients: Triton's
//! `tritonclient[http,grpc]` from PyPI (`tests/kserve_client.py`, run from the venv
//! `scripts/test-deps.sh` makes) against the real binary, numbers compared with the references
//! of sentence-transformers and transformers; the proto checked against the descriptor
//! tritonclient ships; the error table, the API key, the limits and deadlines on `/v2`.

mod common;

use std::{path::PathBuf, process::Command, time::Duration};

use common::{Server, TOLERANCE, experiment, max_abs_diff, reference, root};
use serde_json::{Value, json};

const MODEL: &str = "all-MiniLM-L6-v2";

/// Runs `tests/kserve_client.py args` (stdin: `input`), 180 s at most; its JSON answer.
fn client(args: &[&str], input: Option<&Value>) -> Value {
    common::run_json(
        Command::new(common::venv_python("tritonclient-venv"))
            .arg(root().join("tests/kserve_client.py"))
            .args(args),
        input.map(|v| v.to_string()).unwrap_or_default().as_bytes(),
        Duration::from_secs(180),
    )
}

fn grpc_addr(server: &Server) -> &str {
    server.grpc.trim_start_matches("http://")
}

/// `kserve_client.py infer` against `server` for `model`.
fn infer(server: &Server, model: &str, spec: Value) -> Value {
    client(
        &["infer", &server.http_addr, grpc_addr(server), model],
        Some(&spec),
    )
}

fn f32s(v: &Value) -> Vec<f32> {
    common::floats(v)
}

const TRANSPORTS: [&str; 3] = ["http_json", "http_binary", "grpc"];

fn median(v: &Value) -> f64 {
    let mut ms: Vec<f64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    ms.sort_by(f64::total_cmp);
    ms[ms.len() / 2]
}

#[test]
fn tritonclient_http_and_grpc_embeddings_match_the_reference() {
    let server = Server::start(experiment(""));
    let cases = reference();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let report = infer(
        &server,
        MODEL,
        json!({ "inputs": { "text": texts }, "outputs": ["embedding"], "repeat": 3 }),
    );
    let mut rows_by_transport = Vec::new();
    for t in TRANSPORTS {
        let r = &report[t];
        assert_eq!(r["id"], format!("req-{t}"), "the id is echoed: {r}");
        let e = &r["outputs"]["embedding"];
        assert_eq!(e["shape"], json!([cases.len(), 384]), "{t}");
        assert_eq!(e["datatype"], "float32", "{t}");
        let flat = f32s(&e["data"]);
        let mut worst = 0f32;
        for (i, case) in cases.iter().enumerate() {
            let row = &flat[i * 384..(i + 1) * 384];
            let d = max_abs_diff(row, &case.embedding);
            assert!(d < TOLERANCE, "{t}: text {i} differs by {d}");
            worst = worst.max(d);
        }
        println!(
            "{t}: {} texts, worst |diff| vs sentence-transformers {worst:.2e} (median {:.1} ms \
             per request of 14, other tests running beside it)",
            cases.len(),
            median(&r["ms"])
        );
        rows_by_transport.push(flat);
    }
    // JSON numbers, binary tensors and gRPC raw contents carry the same f32s, bit for bit.
    assert_eq!(rows_by_transport[0], rows_by_transport[1]);
    assert_eq!(rows_by_transport[0], rows_by_transport[2]);
    assert_eq!(
        common::scrape(
            &server,
            "actor_infer_requests_total{outcome=\"ok\",transport=\"http\"}"
        ),
        6.0
    );
    server.stop_clean();
}

#[test]
fn tritonclient_reads_health_readiness_and_metadata() {
    let server = Server::start(experiment(""));
    let report = client(
        &["probe", &server.http_addr, grpc_addr(&server), MODEL],
        None,
    );
    for t in ["http", "grpc"] {
        let r = &report[t];
        for flag in ["live", "ready", "model_ready", "model_ready_v1"] {
            assert_eq!(r[flag], true, "{t} {flag}: {r}");
        }
        assert_eq!(r["server"]["name"], "actor-infer", "{r}");
        assert_eq!(
            r["server"]["extensions"],
            json!(["binary_tensor_data", "parameters"])
        );
        assert_eq!(
            r["model"],
            json!({
                "name": MODEL,
                "versions": ["1"],
                "platform": "actor-infer_embedding",
                "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
                // The binary quantized outputs are always offered (int8/uint8 only with
                // calibration ranges, which this model has not: tests/quantize.rs).
                "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]},
                            {"name": "embedding_binary", "datatype": "INT8", "shape": [-1, 48]},
                            {"name": "embedding_ubinary", "datatype": "UINT8", "shape": [-1, 48]}],
            }),
            "{t}"
        );
    }
    server.stop_clean();
}

#[test]
fn the_grpc_proto_is_tritons() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inference.bin");
    std::fs::write(&path, actor_infer::api::kserve::grpc::FILE_DESCRIPTOR_SET).unwrap();
    let report = client(&["descriptor", path.to_str().unwrap()], None);
    assert_eq!(report["package"], "inference");
    assert_eq!(report["service"], "GRPCInferenceService");
    assert_eq!(report["problems"], json!([]), "{report}");
    assert!(report["checked"].as_u64().unwrap() >= 20, "{report}");
}

fn fixture(name: &str) -> (PathBuf, Value) {
    let dir = root().join("tests/fixtures/models").join(name);
    let r = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
        .unwrap();
    (dir, r)
}

fn serve_fixture(dir: &std::path::Path, name: &str) -> Server {
    Server::start(experiment(&format!(
        "model:\n  path: {}\n  device: cpu\n  name: {name}\n",
        dir.display()
    )))
}

fn softmax(x: &[f32]) -> Vec<f32> {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = x.iter().map(|v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

#[test]
fn tritonclient_classifier_and_reranker_scores_match_their_references() {
    // A classifier on (text, text_pair): `scores` in label order, `label` the top one.
    let (dir, r) = fixture("bert-classifier");
    let server = serve_fixture(&dir, "clf");
    let pairs = r["pairs"].as_array().unwrap();
    let a: Vec<&str> = pairs.iter().map(|p| p[0].as_str().unwrap()).collect();
    let b: Vec<&str> = pairs.iter().map(|p| p[1].as_str().unwrap()).collect();
    let labels: Vec<&str> = r["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    let report = infer(
        &server,
        "clf",
        json!({ "inputs": { "text": a, "text_pair": b }, "outputs": ["scores", "label"] }),
    );
    for t in TRANSPORTS {
        let out = &report[t]["outputs"];
        assert_eq!(
            out["scores"]["shape"],
            json!([pairs.len(), labels.len()]),
            "{t}"
        );
        let scores = f32s(&out["scores"]["data"]);
        for (i, logits) in r["pair_logits"].as_array().unwrap().iter().enumerate() {
            let want = softmax(&f32s(logits));
            let got = &scores[i * labels.len()..(i + 1) * labels.len()];
            let d = max_abs_diff(got, &want);
            assert!(d < TOLERANCE, "{t}: pair {i} differs by {d}");
            let top = (0..want.len())
                .max_by(|&x, &y| want[x].total_cmp(&want[y]))
                .unwrap();
            assert_eq!(out["label"]["data"][i], labels[top], "{t}: pair {i}");
        }
    }
    server.stop_clean();

    // A cross-encoder: one query for every document (`text` of one element), `score` per pair.
    let (dir, r) = fixture("bert-reranker");
    let server = serve_fixture(&dir, "rr");
    let docs: Vec<&str> = r["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let report = infer(
        &server,
        "rr",
        json!({ "inputs": { "text": [r["query"]], "text_pair": docs }, "outputs": ["score"] }),
    );
    let want = f32s(&r["scores"]);
    for t in TRANSPORTS {
        let s = &report[t]["outputs"]["score"];
        assert_eq!(s["shape"], json!([docs.len()]), "{t}");
        let d = max_abs_diff(&f32s(&s["data"]), &want);
        assert!(d < TOLERANCE, "{t}: scores differ by {d}");
    }
    // raw_scores: the logits.
    let report = infer(
        &server,
        "rr",
        json!({ "inputs": { "text": [r["query"]], "text_pair": docs }, "outputs": ["score"],
                "parameters": { "raw_scores": true } }),
    );
    let d = max_abs_diff(
        &f32s(&report["grpc"]["outputs"]["score"]["data"]),
        &f32s(&r["logits"]),
    );
    assert!(d < TOLERANCE, "raw scores differ by {d}");
    server.stop_clean();
}

async fn post_v2(
    server: &Server,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}{path}", server.http))
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn text_request(texts: &[&str]) -> Vec<u8> {
    json!({ "inputs": [{ "name": "text", "datatype": "BYTES", "shape": [texts.len()], "data": texts }] })
        .to_string()
        .into_bytes()
}

#[tokio::test]
async fn v2_errors_follow_the_table_with_the_api_key_and_limits() {
    let server = Server::start(experiment(
        "server:\n  api_key: sesame\n  max_client_batch_size: 8\n",
    ));
    // Triton's clients: the key, the model lookup, the limits and an RPC not implemented.
    let http = server.http_addr.clone();
    let grpc = grpc_addr(&server).to_string();
    let report = tokio::task::spawn_blocking(move || {
        client(&["errors", &http, &grpc, MODEL, "sesame"], None)
    })
    .await
    .unwrap();
    let (h, g) = (&report["http"], &report["grpc"]);
    assert_eq!(h["with_key"]["ok"], true, "{h}");
    assert_eq!(g["with_key"]["ok"], true, "{g}");
    assert_eq!(h["ready_without_key"], true, "probes stay open");
    assert_eq!(g["ready_without_key"], true, "probes stay open");
    for (case, http_status, grpc_code) in [
        ("no_key", "401", "StatusCode.UNAUTHENTICATED"),
        ("wrong_key", "401", "StatusCode.UNAUTHENTICATED"),
        ("wrong_model", "404", "StatusCode.NOT_FOUND"),
        ("wrong_version", "404", "StatusCode.NOT_FOUND"),
        ("too_many_texts", "413", "StatusCode.INVALID_ARGUMENT"),
        ("unimplemented", "404", "StatusCode.UNIMPLEMENTED"),
    ] {
        assert_eq!(h[case]["status"], http_status, "http {case}: {h}");
        assert_eq!(g[case]["status"], grpc_code, "grpc {case}: {g}");
    }
    let msg = g["wrong_model"]["message"].as_str().unwrap();
    assert!(
        msg.contains("no-such-model") && msg.contains(MODEL),
        "{msg}"
    );
    assert!(
        g["too_many_texts"]["message"]
            .as_str()
            .unwrap()
            .contains("max_client_batch_size"),
        "{g}"
    );

    // The protocol's error shape, with this server's error type beside it.
    let key = ("authorization", "Bearer sesame");
    let infer = format!("/v2/models/{MODEL}/infer");
    let (status, body) = post_v2(&server, &infer, &[], text_request(&["a"])).await;
    assert_eq!(
        (status, body["error_type"].as_str()),
        (401, Some("unauthenticated")),
        "{body}"
    );
    assert!(body["error"].is_string(), "{body}");
    let (status, body) = post_v2(
        &server,
        &format!("/v2/models/{MODEL}/versions/7/infer"),
        &[key],
        text_request(&["a"]),
    )
    .await;
    assert_eq!(
        (status, body["error_type"].as_str()),
        (404, Some("model_not_found")),
        "{body}"
    );
    assert!(
        body["error"].as_str().unwrap().contains("version"),
        "{body}"
    );
    let bad_type =
        json!({ "inputs": [{ "name": "text", "datatype": "FP32", "shape": [1], "data": [1.0] }] });
    let (status, body) = post_v2(&server, &infer, &[key], bad_type.to_string().into_bytes()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("BYTES"), "{body}");
    let (status, body) = post_v2(&server, &infer, &[key], b"{not json".to_vec()).await;
    assert_eq!(
        (status, body["error_type"].as_str()),
        (400, Some("validation")),
        "{body}"
    );
    // The binary extension: a header length past the body, and bytes no input claims.
    let (status, body) = post_v2(
        &server,
        &infer,
        &[key, ("inference-header-content-length", "99999")],
        text_request(&["a"]),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let mut extra = text_request(&["a"]);
    let len = extra.len().to_string();
    extra.extend_from_slice(b"left over");
    let (status, body) = post_v2(
        &server,
        &infer,
        &[key, ("inference-header-content-length", &len)],
        extra,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("no input claims"),
        "{body}"
    );
    // Unknown inputs and outputs are named.
    let unknown =
        json!({ "inputs": [{ "name": "txt", "datatype": "BYTES", "shape": [1], "data": ["a"] }] });
    let (status, body) = post_v2(&server, &infer, &[key], unknown.to_string().into_bytes()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("`txt`"), "{body}");
    // The metadata routes are open like /info; health too; a GET on infer is a 405.
    let (status, _) = common::http_get(&server.http_addr, &format!("/v2/models/{MODEL}")).unwrap();
    assert_eq!(status, 200);
    let (status, _) = common::http_get(&server.http_addr, "/v2/health/ready").unwrap();
    assert_eq!(status, 200);
    let (status, _, _) =
        common::http_request_with(&server.http_addr, "GET", &infer, &[key], b"").unwrap();
    assert_eq!(status, 405);
    // Over server.max_request_bytes: 413 before the body is read.
    let big = vec![b' '; 5 * 1024 * 1024];
    let (status, body) = post_v2(&server, &infer, &[key], big).await;
    assert_eq!(
        (status, body["error_type"].as_str()),
        (413, Some("payload_too_large")),
        "{body}"
    );
    server.stop_clean();
}

#[tokio::test]
async fn v2_infer_answers_504_past_its_deadline() {
    let server = Server::start_with(
        experiment("server:\n  request_timeout_seconds: 0.5\n"),
        &[(actor_infer::fault::ENV, "1")],
    );
    let slow = actor_infer::fault::Fault::WorkerSlow.text();
    let (status, body) = post_v2(
        &server,
        &format!("/v2/models/{MODEL}/infer"),
        &[],
        text_request(&[slow]),
    )
    .await;
    assert_eq!(
        (status, body["error_type"].as_str()),
        (504, Some("deadline_exceeded")),
        "{body}"
    );
    server.stop_clean();
}

/// tritonclient asking for the quantized outputs by name over HTTP JSON, HTTP binary tensors
/// and gRPC, from a server calibrated with ranges sentence-transformers computed: numpy gets
/// int8 and uint8 arrays of the right shapes, holding the quantization (`quantize`, proven
/// byte for byte against sentence-transformers in tests/quantize.rs) of the FP32 embedding
/// of the same response.
#[test]
fn tritonclient_reads_the_quantized_outputs_on_every_transport() {
    use actor_infer::model::quantize::{Precision, Ranges, quantize, values};
    let npy = root().join("tests/fixtures/quantize/minilm-ranges-f32.npy");
    let server = Server::start(experiment(&format!(
        "model:\n  path: {}\n  device: cpu\n  quantization:\n    ranges_file: {}\n",
        common::default_model().display(),
        npy.display()
    )));
    let ranges = Ranges::read(&npy).unwrap();
    let cases = reference();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let outputs = [
        ("embedding_int8", Precision::Int8, "int8", 384),
        ("embedding_uint8", Precision::Uint8, "uint8", 384),
        ("embedding_binary", Precision::Binary, "int8", 48),
        ("embedding_ubinary", Precision::Ubinary, "uint8", 48),
    ];
    let names: Vec<&str> = std::iter::once("embedding")
        .chain(outputs.iter().map(|o| o.0))
        .collect();
    let report = infer(
        &server,
        MODEL,
        json!({ "inputs": { "text": texts }, "outputs": names }),
    );
    for t in TRANSPORTS {
        let r = &report[t]["outputs"];
        let flat = f32s(&r["embedding"]["data"]);
        for (name, p, dtype, width) in outputs {
            let o = &r[name];
            assert_eq!(o["datatype"], dtype, "{t} {name}: {o}");
            assert_eq!(o["shape"], json!([cases.len(), width]), "{t} {name}");
            let got: Vec<i64> = o["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as i64)
                .collect();
            let want: Vec<i64> = flat
                .chunks(384)
                .flat_map(|row| values(&quantize(row, p, Some(&ranges)).unwrap(), p))
                .map(i64::from)
                .collect();
            assert_eq!(got, want, "{t} {name}");
        }
    }
    server.stop_clean();
}
