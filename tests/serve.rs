//! The real binary serving the real default model: outputs equal sentence-transformers'
//! (tests/fixtures/minilm-reference.json) over HTTP and gRPC, texts one at a time and all
//! together; the APIs' shapes, health, reflection and errors.

mod common;

use actor_infer::api::grpc::pb::{InferRequest, ModelInfoRequest};
use common::{Server, TOLERANCE, experiment, floats, max_abs_diff, post_full, reference};
use serde_json::{Value, json};

#[tokio::test]
async fn http_embeddings_match_sentence_transformers() {
    let server = Server::start(experiment("experiment:\n  name: parity-http\n"));
    let cases = reference();

    // One text per request, TEI's /embed.
    for case in &cases {
        let (status, headers, body) =
            post_full(&server, "/embed", json!({"inputs": case.text})).await;
        assert_eq!(status, 200, "{body}");
        let got = floats(&body[0]);
        let diff = max_abs_diff(&got, &case.embedding);
        assert!(diff < TOLERANCE, "{:?}: max diff {diff}", case.text);
        for h in [
            "x-tokenization-time",
            "x-queue-time",
            "x-inference-time",
            "x-total-time",
        ] {
            let ms: f64 = headers[h].to_str().unwrap().parse().unwrap();
            assert!(ms >= 0.0, "{h}");
        }
    }

    // All texts in one request, OpenAI's /v1/embeddings: order kept, usage counts tokens.
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let (status, _, body) = post_full(
        &server,
        "/v1/embeddings",
        json!({"input": texts, "model": "x"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "all-MiniLM-L6-v2");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), cases.len());
    for (i, (item, case)) in data.iter().zip(&cases).enumerate() {
        assert_eq!(item["index"], i);
        assert_eq!(item["object"], "embedding");
        let diff = max_abs_diff(&floats(&item["embedding"]), &case.embedding);
        assert!(
            diff < TOLERANCE,
            "{:?} in a batch: max diff {diff}",
            case.text
        );
    }
    let tokens: u64 = cases.iter().map(|c| u64::from(c.tokens)).sum();
    assert_eq!(body["usage"]["prompt_tokens"], tokens);
    assert_eq!(body["usage"]["total_tokens"], tokens);

    server.stop_clean();
}

#[tokio::test]
async fn grpc_embeddings_match_sentence_transformers() {
    let server = Server::start(experiment("experiment:\n  name: parity-grpc\n"));
    let cases = reference();
    let mut grpc = common::grpc(&server).await;

    for case in &cases {
        let res = grpc
            .infer(InferRequest {
                texts: vec![case.text.clone()],
                request_id: "one".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(res.request_id, "one");
        assert_eq!(res.model, "all-MiniLM-L6-v2");
        let out = &res.outputs[0];
        assert_eq!(out.token_count, case.tokens, "{:?}", case.text);
        let diff = max_abs_diff(&out.embedding, &case.embedding);
        assert!(diff < TOLERANCE, "{:?}: max diff {diff}", case.text);
        let t = res.timings.unwrap();
        assert!(
            t.total_ms >= t.inference_ms && t.inference_ms > 0.0,
            "{t:?}"
        );
    }

    let res = grpc
        .infer(InferRequest {
            texts: cases.iter().map(|c| c.text.clone()).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!res.request_id.is_empty(), "the server makes a request id");
    assert_eq!(res.outputs.len(), cases.len());
    for (out, case) in res.outputs.iter().zip(&cases) {
        assert_eq!(out.token_count, case.tokens, "{:?}", case.text);
        let diff = max_abs_diff(&out.embedding, &case.embedding);
        assert!(
            diff < TOLERANCE,
            "{:?} in a batch: max diff {diff}",
            case.text
        );
    }

    // normalize=false: the raw mean-pooled vector, whose direction is the reference's.
    let res = grpc
        .infer(InferRequest {
            texts: vec![cases[0].text.clone()],
            normalize: Some(false),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let raw = &res.outputs[0].embedding;
    let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() > 0.01, "not normalised: norm {norm}");
    let unit: Vec<f32> = raw.iter().map(|x| x / norm).collect();
    assert!(max_abs_diff(&unit, &cases[0].embedding) < TOLERANCE);

    server.stop_clean();
}

#[tokio::test]
async fn grpc_model_info_health_and_reflection() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let server = Server::start(experiment("experiment:\n  name: grpc-meta\n"));
    let mut grpc = common::grpc(&server).await;
    let info = grpc
        .model_info(ModelInfoRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "all-MiniLM-L6-v2");
    assert_eq!(info.embedding_dim, 384);
    assert_eq!(info.max_sequence_length, 256);
    assert_eq!(info.device, "cpu");
    assert_eq!(info.dtype, "f32");
    assert_eq!(info.pooling, "mean");
    assert!(info.normalize);
    assert_eq!(info.workers, 1);

    let channel = tonic::transport::Endpoint::from_shared(server.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "actor_infer.v1.InferenceService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }

    // Reflection lists our service and health, so grpcurl needs no proto file.
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let reply = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply {reply:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"actor_infer.v1.InferenceService".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );

    server.stop_clean();
}

/// method, path, content type, body, expected status, error_type, a word the message names.
type BadRequest = (
    &'static str,
    &'static str,
    Option<&'static str>,
    String,
    u16,
    &'static str,
    &'static str,
);

#[tokio::test]
async fn http_info_health_and_clear_errors() {
    let server = Server::start(experiment("experiment:\n  name: http-meta\n"));
    let c = reqwest::Client::new();
    let get = |path: &str| c.get(format!("{}{path}", server.http)).send();

    let info: Value = get("/info").await.unwrap().json().await.unwrap();
    assert_eq!(info["model"], "all-MiniLM-L6-v2");
    assert_eq!(info["embedding_dim"], 384);
    assert_eq!(info["max_sequence_length"], 256);
    assert_eq!(info["experiment"], "http-meta");
    assert_eq!(get("/health").await.unwrap().status(), 200);
    assert_eq!(get("/ready").await.unwrap().status(), 200);
    let metrics = get("/metrics?format=prometheus")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("actor_infer_ready 1"), "{metrics}");

    // Errors: status, JSON shape, and a message naming the fault; the server keeps serving.
    let long = "word ".repeat(400);
    let cases: Vec<BadRequest> = vec![
        (
            "POST",
            "/embed",
            Some("application/json"),
            json!({"inputs": []}).to_string(),
            400,
            "validation",
            "empty",
        ),
        (
            "POST",
            "/embed",
            Some("application/json"),
            "{\"inputs\": ".into(),
            400,
            "validation",
            "JSON",
        ),
        (
            "POST",
            "/embed",
            Some("application/json"),
            json!({"inputs": 5}).to_string(),
            400,
            "validation",
            "inputs",
        ),
        (
            "POST",
            "/embed",
            Some("application/json"),
            json!({"inputs": "a", "colour": 1}).to_string(),
            400,
            "validation",
            "colour",
        ),
        (
            "POST",
            "/embed",
            Some("text/plain"),
            json!({"inputs": "a"}).to_string(),
            415,
            "unsupported_media_type",
            "application/json",
        ),
        (
            "POST",
            "/embed",
            Some("application/json"),
            json!({"inputs": long, "truncate": false}).to_string(),
            400,
            "validation",
            "256 tokens",
        ),
        (
            "POST",
            "/v1/embeddings",
            Some("application/json"),
            json!({"input": "a", "encoding_format": "hex"}).to_string(),
            400,
            "validation",
            "encoding_format",
        ),
        (
            "POST",
            "/v1/embeddings",
            Some("application/json"),
            json!({"input": "a", "dimensions": 999}).to_string(),
            400,
            "validation",
            "384",
        ),
        (
            "GET",
            "/embed",
            None,
            String::new(),
            405,
            "method_not_allowed",
            "GET",
        ),
        (
            "GET",
            "/nowhere",
            None,
            String::new(),
            404,
            "not_found",
            "/nowhere",
        ),
    ];
    for (method, path, ct, body, status, kind, needle) in cases {
        let (got, text) =
            common::http_request(&server.http_addr, method, path, ct, body.as_bytes()).unwrap();
        assert_eq!(got, status, "{method} {path} {body:.60}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        assert_eq!(v["error_type"], kind, "{text}");
        assert!(
            v["error"].as_str().unwrap().contains(needle),
            "{needle:?} not in {text}"
        );
        let (ok, _) = common::http_request(
            &server.http_addr,
            "POST",
            "/embed",
            Some("application/json"),
            br#"{"inputs": "still serving"}"#,
        )
        .unwrap();
        assert_eq!(ok, 200);
    }

    // A long text is truncated (not refused) by default, to 256 tokens.
    let (status, _, body) = post_full(&server, "/v1/embeddings", json!({"input": long})).await;
    assert_eq!(status, 200);
    assert_eq!(body["usage"]["prompt_tokens"], 256);

    // OpenAI clients ask for base64 by default: little-endian f32s.
    let (_, _, plain) = post_full(&server, "/v1/embeddings", json!({"input": "base"})).await;
    let (_, _, b64) = post_full(
        &server,
        "/v1/embeddings",
        json!({"input": "base", "encoding_format": "base64"}),
    )
    .await;
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(decoded, floats(&plain["data"][0]["embedding"]));

    server.stop_clean();
}

#[tokio::test]
async fn grpc_errors_carry_codes_and_messages() {
    let server = Server::start(experiment("experiment:\n  name: grpc-errors\n"));
    let mut grpc = common::grpc(&server).await;
    let err = grpc.infer(InferRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("empty"), "{}", err.message());

    let err = grpc
        .infer(InferRequest {
            texts: vec!["ok".into(), "word ".repeat(300)],
            truncate: Some(false),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("text 1") && err.message().contains("256"),
        "{}",
        err.message()
    );

    // Still serving.
    let res = grpc
        .infer(InferRequest {
            texts: vec!["fine".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(res.into_inner().outputs.len(), 1);
    server.stop_clean();
}

#[tokio::test]
async fn small_batch_budgets_split_requests_and_reassemble_them_in_order() {
    // 14 texts, up to 256 tokens, against 4 texts / 300 padded tokens per forward: the request
    // is split over many batches grouped by length, and must come back whole and in order.
    let server = Server::start(experiment(
        "batching:\n  max_batch_size: 4\n  max_batch_tokens: 300\n  max_wait_ms: 2\n\
         model:\n  path: MODEL\n  device: cpu\n  pin_cores: true\n"
            .replace("MODEL", common::default_model().to_str().unwrap())
            .as_str(),
    ));
    let cases = reference();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let (status, _, body) = post_full(&server, "/embed", json!({"inputs": texts})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body.as_array().unwrap().len(),
        cases.len(),
        "one row per text"
    );
    for (got, case) in body.as_array().unwrap().iter().zip(&cases) {
        let diff = max_abs_diff(&floats(got), &case.embedding);
        assert!(diff < TOLERANCE, "{:?}: max diff {diff}", case.text);
    }
    let (_, metrics) = common::http_get(&server.http_addr, "/metrics?format=prometheus").unwrap();
    let forwards: f64 = metrics
        .lines()
        .find(|l| l.starts_with("actor_infer_batch_size_count"))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap();
    assert!(
        forwards >= 4.0,
        "split over several forwards, saw {forwards}"
    );
    assert!(
        server.log().contains("model worker pinned"),
        "{}",
        server.log()
    );
    server.stop_clean();
}

#[tokio::test]
async fn a_full_queue_refuses_at_once_with_429_and_resource_exhausted() {
    let server = Server::start(experiment("batching:\n  max_queue_texts: 3\n"));
    let res = reqwest::Client::new()
        .post(format!("{}/embed", server.http))
        .json(&json!({"inputs": ["a", "b", "c", "d"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 429);
    assert_eq!(res.headers()["retry-after"], "1");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error_type"], "overloaded");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("batching.max_queue_texts = 3"),
        "{body}"
    );
    let mut grpc = common::grpc(&server).await;
    let err = grpc
        .infer(InferRequest {
            texts: vec!["x".into(); 4],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    // Within the limit it serves.
    let (status, _, _) = post_full(&server, "/embed", json!({"inputs": ["a", "b", "c"]})).await;
    assert_eq!(status, 200);
    server.stop_clean();
}
