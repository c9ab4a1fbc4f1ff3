//! Priorities and fair batching with the real binary and the real default model: a query sent
//! while a large request is being served is answered long before that request, and the
//! per-priority metrics count each; the `priority` field, the `X-Priority` header, gRPC's
//! field and the per-route default are accepted, a bad value is refused naming the accepted
//! ones, and the server keeps serving.

mod common;

use std::time::Instant;

use actor_infer::api::grpc::pb::{InferRequest, inference_service_client::InferenceServiceClient};
use common::{Server, experiment, http_request_with, scrape, wait_worker_busy};
use serde_json::{Value, json};

/// `/embed` with `body` and `headers`: the status and the JSON answer.
fn embed(server: &Server, body: &Value, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    let (status, text, _) = http_request_with(
        &server.http_addr,
        "POST",
        "/embed",
        &all,
        body.to_string().as_bytes(),
    )
    .unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

/// Texts counted under `priority` in `actor_infer_priority_texts_total`.
fn texts(server: &Server, priority: &str) -> f64 {
    scrape(
        server,
        &format!("actor_infer_priority_texts_total{{priority=\"{priority}\"}}"),
    )
}

#[test]
fn a_query_sent_while_a_large_request_runs_is_answered_long_before_it() {
    let server = Server::start(experiment("experiment:\n  name: priority\n"));
    // 256 texts of about 60 tokens: several full forwards of 64 texts.
    let words = "the quick brown fox jumps over the lazy dog ".repeat(6);
    let bulk: Vec<String> = (0..256).map(|i| format!("{i} {words}")).collect();
    let large = std::thread::scope(|scope| {
        let large = scope.spawn(|| {
            let (status, body) = embed(&server, &json!({ "inputs": bulk }), &[]);
            (status, body, Instant::now())
        });
        // The large request's first forward is running: the query arrives behind it.
        wait_worker_busy(&server);
        let (status, body) = embed(&server, &json!({ "inputs": "where is my order?" }), &[]);
        let answered = Instant::now();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body.as_array().unwrap().len(), 1);
        assert!(
            !large.is_finished(),
            "the large request was answered before the query"
        );
        // What an operator sees: the query counted as interactive, nothing batch yet.
        assert_eq!(texts(&server, "interactive"), 1.0);
        assert_eq!(texts(&server, "batch"), 0.0);
        let (status, body, done) = large.join().unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body.as_array().unwrap().len(), 256);
        done.duration_since(answered)
    });
    assert_eq!(texts(&server, "batch"), 256.0);
    assert_eq!(
        scrape(
            &server,
            "actor_infer_priority_request_duration_seconds_count{priority=\"interactive\"}"
        ),
        1.0
    );
    // The dashboard shows both, each with its own latency.
    let (_, dash) = common::http_get(&server.http_addr, "/metrics?format=json").unwrap();
    let dash: Value = serde_json::from_str(&dash).unwrap();
    let p = &dash["priorities"];
    assert_eq!(
        (
            p["interactive"]["texts"].as_u64(),
            p["batch"]["texts"].as_u64()
        ),
        (Some(1), Some(256))
    );
    assert!(
        p["batch"]["p50_ms"].as_f64().unwrap() > p["interactive"]["p50_ms"].as_f64().unwrap(),
        "{p}"
    );
    eprintln!("the large request was answered {large:?} after the query");
    server.stop_clean();
}

#[tokio::test]
async fn priorities_are_taken_from_fields_headers_and_routes_and_bad_ones_refused() {
    let server = Server::start(experiment(
        "experiment:\n  name: priority-api\nserver:\n  route_priorities:\n    /v1/embeddings: batch\n",
    ));
    let one = json!({ "inputs": "a short text" });
    // The body's field, the header (either name of each), the route's default.
    let (s, _) = embed(&server, &json!({"inputs": "a", "priority": "batch"}), &[]);
    assert_eq!(s, 200);
    assert_eq!(texts(&server, "batch"), 1.0);
    let (s, _) = embed(&server, &one, &[("X-Priority", "low")]);
    assert_eq!(s, 200);
    assert_eq!(texts(&server, "batch"), 2.0);
    // The field wins over the header.
    let (s, _) = embed(
        &server,
        &json!({"inputs": ["a", "b"], "priority": "high"}),
        &[("x-priority", "batch")],
    );
    assert_eq!(s, 200);
    assert_eq!(texts(&server, "interactive"), 2.0);
    let (s, _, _) = http_request_with(
        &server.http_addr,
        "POST",
        "/v1/embeddings",
        &[("content-type", "application/json")],
        json!({"input": ["x", "y", "z"]}).to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(s, 200);
    assert_eq!(texts(&server, "batch"), 5.0, "the route's default");
    // Bad values: 400 naming the accepted ones, over the body, the header, OpenAI's body.
    for (body, headers) in [
        (json!({"inputs": "a", "priority": "urgent"}), vec![]),
        (one.clone(), vec![("X-Priority", "urgent")]),
    ] {
        let (s, e) = embed(&server, &body, &headers);
        assert_eq!(s, 400, "{e}");
        let msg = e["error"].as_str().unwrap();
        assert!(
            msg.contains("`urgent`") && msg.contains("`interactive`") && msg.contains("`batch`"),
            "{msg}"
        );
        assert_eq!(e["error_type"], "validation");
    }
    let (s, body, _) = http_request_with(
        &server.http_addr,
        "POST",
        "/v1/embeddings",
        &[("content-type", "application/json")],
        json!({"input": "x", "priority": 3}).to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("priority"), "{body}");
    // gRPC: our Infer takes the field; a bad one is INVALID_ARGUMENT.
    let mut grpc = InferenceServiceClient::connect(server.grpc.clone())
        .await
        .unwrap();
    let ok = grpc
        .infer(InferRequest {
            texts: vec!["a".into()],
            priority: Some("batch".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ok.into_inner().outputs.len(), 1);
    assert_eq!(texts(&server, "batch"), 6.0);
    let err = grpc
        .infer(InferRequest {
            texts: vec!["a".into()],
            priority: Some("soon".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("`interactive`"), "{}", err.message());
    // And it keeps serving.
    let (s, _) = embed(&server, &one, &[]);
    assert_eq!(s, 200);
    server.stop_clean();
}

#[test]
fn a_route_priority_for_a_route_that_does_not_exist_is_refused_at_start() {
    let exp = experiment("server:\n  route_priorities:\n    /embedd: batch\n");
    let (code, log) = common::run_to_exit(&["--experiment", exp.path.to_str().unwrap()]);
    assert_eq!(code, 2, "{log}");
    assert!(
        log.contains("server.route_priorities./embedd") && log.contains("/v1/embeddings"),
        "{log}"
    );
}
