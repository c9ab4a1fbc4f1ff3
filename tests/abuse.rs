//! Bad input, overload and abuse, on the real binary and the real model: every bad request gets
//! a clear error with the right HTTP status or gRPC code and the server keeps serving; past
//! `server.max_concurrent_requests` requests are refused at once and memory stays bounded;
//! deadlines and disconnects drop queued work before inference; the optional API key.

mod common;

use std::time::{Duration, Instant};

use actor_infer::api::grpc::pb::{
    InferRequest, InferResponse, inference_service_client::InferenceServiceClient,
};
use common::{Server, TOLERANCE, experiment, floats, max_abs_diff, reference, scrape};
use serde_json::{Value, json};

/// A text whose forward takes 2 s longer (fault injection), to hold the only worker.
const SLOW: &str = actor_infer::fault::Fault::WorkerSlow.text();
/// Fault injection on, for the servers that get [`SLOW`].
const FAULTS: &[(&str, &str)] = &[(actor_infer::fault::ENV, "1")];

/// Waits until the (only) model worker is inside a forward: the slow text has reached it.
async fn worker_busy(server: &Server) {
    let until = Instant::now() + Duration::from_secs(30);
    while !common::worker_is_busy(server) {
        assert!(Instant::now() < until, "the worker never got the slow text");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends the slow text over HTTP and waits until the worker runs it; the handle gives its
/// HTTP status.
async fn hold_the_worker(server: &Server) -> tokio::task::JoinHandle<u16> {
    let url = format!("{}/embed", server.http);
    let slow = tokio::spawn(async move {
        let res = reqwest::Client::new()
            .post(url)
            .json(&json!({ "inputs": SLOW }))
            .send()
            .await
            .unwrap();
        res.status().as_u16()
    });
    worker_busy(server).await;
    slow
}

/// Resident memory of `pid` in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap();
    kb / 1024.0
}

/// Asserts that `server` still embeds a known text correctly over HTTP.
fn still_serving(server: &Server, after: &str) {
    let case = &reference()[0];
    let (status, text) = common::embed(&server.http_addr, &case.text).unwrap();
    assert_eq!(status, 200, "after {after}: {text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let diff = max_abs_diff(&floats(&v[0]), &case.embedding);
    assert!(diff < TOLERANCE, "after {after}: max diff {diff}");
}

const LIMITS: &str = "server:\n  max_client_batch_size: 8\n  max_concurrent_requests: 64\n  \
                      max_input_chars: 20000\n  max_request_bytes: 65536\n";

#[test]
fn bad_http_input_gets_a_clear_error_and_the_server_keeps_serving() {
    let server = Server::start(experiment(LIMITS));
    let json_ct = Some("application/json");
    let nine: Vec<String> = (0..9).map(|i| format!("text {i}")).collect();
    let over_chars = "é".repeat(20_001);
    let over_bytes = format!("{{\"inputs\": \"{}\"}}", "a".repeat(70_000));
    let long = "word ".repeat(300);
    // (method, path, content type, body, status, error_type, words the message must hold)
    type Case<'a> = (
        &'a str,
        &'a str,
        Option<&'a str>,
        Vec<u8>,
        u16,
        &'a str,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/embed",
            json_ct,
            b"{\"inputs\": ".to_vec(),
            400,
            "validation",
            "JSON",
        ),
        (
            "POST",
            "/embed",
            json_ct,
            b"".to_vec(),
            400,
            "validation",
            "JSON",
        ),
        (
            "POST",
            "/embed",
            json_ct,
            br#"{"inputs": 5}"#.to_vec(),
            400,
            "validation",
            "inputs",
        ),
        (
            "POST",
            "/embed",
            json_ct,
            br#"{"inputs": ["a", 3]}"#.to_vec(),
            400,
            "validation",
            "inputs",
        ),
        (
            "POST",
            "/embed",
            json_ct,
            br#"{"texts": ["a"]}"#.to_vec(),
            400,
            "validation",
            "texts",
        ),
        (
            "POST",
            "/embed",
            json_ct,
            br#"{"inputs": "a", "normalize": "yes"}"#.to_vec(),
            400,
            "validation",
            "normalize",
        ),
        (
            "POST",
            "/v1/embeddings",
            json_ct,
            br#"{"inputs": "a"}"#.to_vec(),
            400,
            "validation",
            "input",
        ),
        (
            "POST",
            "/embed",
            json_ct,
            br#"{"inputs": []}"#.to_vec(),
            400,
            "validation",
            "empty",
        ),
        (
            "POST",
            "/embed",
            json_ct,
            b"{\"inputs\": \"\xff\xfe\"}".to_vec(),
            400,
            "validation",
            "UTF-8",
        ),
        (
            "POST",
            "/embed",
            json_ct,
            br#"{"inputs": "\ud800"}"#.to_vec(),
            400,
            "validation",
            "escape",
        ),
        (
            "POST",
            "/embed",
            Some("text/plain"),
            br#"{"inputs": "a"}"#.to_vec(),
            415,
            "unsupported_media_type",
            "application/json",
        ),
        (
            "POST",
            "/embed",
            None,
            br#"{"inputs": "a"}"#.to_vec(),
            415,
            "unsupported_media_type",
            "Content-Type",
        ),
        (
            "POST",
            "/embed",
            json_ct,
            over_bytes.into_bytes(),
            413,
            "payload_too_large",
            "65536",
        ),
        (
            "POST",
            "/embed",
            json_ct,
            json!({"inputs": nine}).to_string().into_bytes(),
            413,
            "limit_exceeded",
            "max_client_batch_size is 8",
        ),
        (
            "POST",
            "/embed",
            json_ct,
            json!({"inputs": ["ok", over_chars]})
                .to_string()
                .into_bytes(),
            413,
            "limit_exceeded",
            "text 1 has 20001 characters",
        ),
        (
            "POST",
            "/embed",
            json_ct,
            json!({"inputs": ["ok", long], "truncate": false})
                .to_string()
                .into_bytes(),
            400,
            "validation",
            "256",
        ),
        (
            "GET",
            "/embed",
            None,
            vec![],
            405,
            "method_not_allowed",
            "GET",
        ),
        (
            "DELETE",
            "/v1/embeddings",
            None,
            vec![],
            405,
            "method_not_allowed",
            "DELETE",
        ),
        (
            "GET",
            "/v2/nothing",
            None,
            vec![],
            404,
            "not_found",
            "/v2/nothing",
        ),
    ];
    for (method, path, ct, body, status, kind, needle) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).into_owned();
        let (got, text) = common::http_request(&server.http_addr, method, path, ct, &body).unwrap();
        assert_eq!(got, status, "{method} {path} {shown}: {text}");
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path} {shown}: not JSON: {text}"));
        assert_eq!(v["error_type"], kind, "{method} {path} {shown}: {text}");
        assert!(
            v["error"].as_str().unwrap().contains(needle),
            "{method} {path} {shown}: {needle:?} not in {text}"
        );
        still_serving(&server, &format!("{method} {path} {shown}"));
    }
    server.stop_clean();
}

#[test]
fn odd_but_valid_texts_are_embedded_and_do_not_poison_a_shared_batch() {
    let server = Server::start(experiment(LIMITS));
    let odd = [
        "",
        "\u{0}\u{0}\u{0}",
        "tab\tnew\nline\r\u{7}\u{1b}[31m",
        &"x".repeat(5000),
        "\u{200b}\u{200d}\u{feff}",
        "English, Русский, 中文, العربية, हिन्दी, 日本語 and 🙂👍🏽 in one text",
        "\u{202e}reversed\u{202c} and combining e\u{301}\u{301}\u{301}",
    ];
    for text in odd {
        let body = json!({ "inputs": text }).to_string();
        let (status, out) = common::http_request(
            &server.http_addr,
            "POST",
            "/embed",
            Some("application/json"),
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(status, 200, "{text:.40?}: {out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        let e = floats(&v[0]);
        assert_eq!(e.len(), 384, "{text:.40?}");
        let norm: f32 = e.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "{text:.40?}: norm {norm}");
    }

    // A bad request sent together with good ones fails alone: the good ones, batched at the
    // same time, still get the reference embeddings.
    let cases = reference();
    std::thread::scope(|s| {
        let good: Vec<_> = cases
            .iter()
            .take(6)
            .map(|case| {
                let addr = server.http_addr.clone();
                s.spawn(move || {
                    let body = json!({ "inputs": case.text }).to_string();
                    let (status, out) = common::http_request(
                        &addr,
                        "POST",
                        "/embed",
                        Some("application/json"),
                        body.as_bytes(),
                    )
                    .unwrap();
                    assert_eq!(status, 200, "{out}");
                    let v: Value = serde_json::from_str(&out).unwrap();
                    let diff = max_abs_diff(&floats(&v[0]), &case.embedding);
                    assert!(diff < TOLERANCE, "{:?}: {diff}", case.text);
                })
            })
            .collect();
        let long = "word ".repeat(400);
        let body = json!({ "inputs": ["fine", long], "truncate": false }).to_string();
        let (status, out) = common::http_request(
            &server.http_addr,
            "POST",
            "/embed",
            Some("application/json"),
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(status, 400, "{out}");
        for g in good {
            g.join().unwrap();
        }
    });
    server.stop_clean();
}

/// `InferRequest` with its texts as raw bytes, to send strings that are not UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct RawInferRequest {
    #[prost(bytes = "vec", repeated, tag = "1")]
    texts: Vec<Vec<u8>>,
}

async fn raw_infer(server: &Server, texts: Vec<Vec<u8>>) -> Result<InferResponse, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(server.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<RawInferRequest, InferResponse>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/actor_infer.v1.InferenceService/Infer",
    );
    grpc.unary(tonic::Request::new(RawInferRequest { texts }), path, codec)
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn bad_grpc_input_gets_the_right_code_and_the_server_keeps_serving() {
    let server = Server::start(experiment(LIMITS));
    let mut grpc = common::grpc(&server).await;
    let texts = |v: Vec<String>| InferRequest {
        texts: v,
        ..Default::default()
    };
    let cases: Vec<(InferRequest, tonic::Code, &str)> = vec![
        (texts(vec![]), tonic::Code::InvalidArgument, "empty"),
        (
            texts((0..9).map(|i| i.to_string()).collect()),
            tonic::Code::InvalidArgument,
            "max_client_batch_size is 8",
        ),
        (
            texts(vec!["é".repeat(20_001)]),
            tonic::Code::InvalidArgument,
            "max_input_chars is 20000",
        ),
        (
            texts(vec!["a".repeat(70_000)]),
            tonic::Code::ResourceExhausted,
            "65536",
        ),
        (
            InferRequest {
                texts: vec!["word ".repeat(300)],
                truncate: Some(false),
                ..Default::default()
            },
            tonic::Code::InvalidArgument,
            "256",
        ),
    ];
    let case = &reference()[0];
    for (request, code, needle) in cases {
        let shown = format!("{:.60?}", request.texts);
        let err = grpc.infer(request).await.unwrap_err();
        assert_eq!(err.code(), code, "{shown}: {err:?}");
        assert!(
            err.message().contains(needle),
            "{shown}: {needle:?} not in {err:?}"
        );
        let ok = grpc
            .infer(texts(vec![case.text.clone()]))
            .await
            .unwrap_or_else(|e| panic!("after {shown}: {e:?}"))
            .into_inner();
        let diff = max_abs_diff(&ok.outputs[0].embedding, &case.embedding);
        assert!(diff < TOLERANCE, "after {shown}: {diff}");
    }

    // A string field that is not UTF-8: INVALID_ARGUMENT naming the field, not INTERNAL.
    let err = raw_infer(&server, vec![b"fine".to_vec(), vec![0xff, 0xfe, 0x00]])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("texts"), "{err:?}");
    assert!(err.message().contains("UTF-8"), "{err:?}");
    // NUL bytes and control characters are valid UTF-8 and are embedded.
    let ok = raw_infer(&server, vec![b"nul\0and\x07bell".to_vec()])
        .await
        .unwrap();
    assert_eq!(ok.outputs[0].embedding.len(), 384);
    still_serving(&server, "bad gRPC input");
    server.stop_clean();
}

#[tokio::test]
async fn overload_is_refused_fast_with_429_and_memory_stays_bounded() {
    // Room for 16 texts; 160 clients sending 1–8 texts each as fast as they can: far more than
    // ten times what one worker on this machine serves.
    let server = Server::start(experiment(
        "server:\n  max_concurrent_requests: 16\n  max_client_batch_size: 8\n  http_workers: 2\n",
    ));
    let cases = reference();
    let baseline = rss_mib(server.pid);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(200)
        .build()
        .unwrap();
    let stop_at = Instant::now() + Duration::from_secs(8);
    let peak_rss = std::sync::Arc::new(std::sync::Mutex::new(baseline));
    let sampler = {
        let (pid, peak) = (server.pid, peak_rss.clone());
        tokio::spawn(async move {
            while Instant::now() < stop_at {
                let now = rss_mib(pid);
                {
                    let mut p = peak.lock().unwrap();
                    *p = p.max(now);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut clients = Vec::new();
    for c in 0..160usize {
        let (http, url, grpc_url) = (http.clone(), server.http.clone(), server.grpc.clone());
        let case = cases[c % cases.len()].text.clone();
        let want = cases[c % cases.len()].embedding.clone();
        clients.push(tokio::spawn(async move {
            // (ok, refused, ok latencies, refusal latencies)
            let mut tally = (0usize, 0usize, Vec::new(), Vec::new());
            let mut grpc = if c % 4 == 0 {
                Some(InferenceServiceClient::connect(grpc_url).await.unwrap())
            } else {
                None
            };
            let n = 1 + c % 8;
            while Instant::now() < stop_at {
                let started = Instant::now();
                if let Some(grpc) = grpc.as_mut() {
                    let res = grpc
                        .infer(InferRequest {
                            texts: vec![case.clone(); n],
                            ..Default::default()
                        })
                        .await;
                    match res {
                        Ok(out) => {
                            let out = out.into_inner();
                            assert_eq!(out.outputs.len(), n);
                            for o in &out.outputs {
                                assert!(max_abs_diff(&o.embedding, &want) < TOLERANCE);
                            }
                            tally.0 += 1;
                            tally.2.push(started.elapsed());
                        }
                        Err(e) => {
                            assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
                            assert!(e.message().contains("max_concurrent_requests"), "{e:?}");
                            tally.1 += 1;
                            tally.3.push(started.elapsed());
                        }
                    }
                } else {
                    let res = http
                        .post(format!("{url}/embed"))
                        .json(&json!({ "inputs": vec![case.clone(); n] }))
                        .send()
                        .await
                        .unwrap();
                    let status = res.status().as_u16();
                    let retry_after = res.headers().get("retry-after").cloned();
                    let body: Value = res.json().await.unwrap();
                    match status {
                        200 => {
                            let rows = body.as_array().unwrap();
                            assert_eq!(rows.len(), n);
                            for r in rows {
                                assert!(max_abs_diff(&floats(r), &want) < TOLERANCE);
                            }
                            tally.0 += 1;
                            tally.2.push(started.elapsed());
                        }
                        429 => {
                            assert_eq!(body["error_type"], "overloaded", "{body}");
                            assert!(retry_after.is_some(), "429 without Retry-After");
                            tally.1 += 1;
                            tally.3.push(started.elapsed());
                        }
                        other => panic!("status {other}: {body}"),
                    }
                }
            }
            tally
        }));
    }
    let (mut ok, mut refused, mut ok_lat, mut refused_lat) = (0, 0, Vec::new(), Vec::new());
    for c in clients {
        let (o, r, ol, rl) = c.await.unwrap();
        ok += o;
        refused += r;
        ok_lat.extend(ol);
        refused_lat.extend(rl);
    }
    sampler.await.unwrap();
    ok_lat.sort();
    refused_lat.sort();
    assert!(!ok_lat.is_empty(), "nothing was served under overload");
    assert!(
        !refused_lat.is_empty(),
        "nothing was refused under overload"
    );
    let median = |v: &[Duration]| v[v.len() / 2];
    let peak = *peak_rss.lock().unwrap();
    println!(
        "overload: {ok} served (median {:?}), {refused} refused (median {:?}), \
         RSS {baseline:.0} → peak {peak:.0} MiB",
        median(&ok_lat),
        median(&refused_lat)
    );
    assert!(ok > 0, "nothing was served under overload");
    assert!(refused > ok, "only {refused} refusals for {ok} served");
    // A refusal does no work: it is answered faster than a served request.
    assert!(
        median(&refused_lat) < median(&ok_lat),
        "refusals (median {:?}) not faster than service (median {:?})",
        median(&refused_lat),
        median(&ok_lat)
    );
    assert!(
        peak - baseline < 300.0,
        "resident memory grew from {baseline:.0} to {peak:.0} MiB under overload"
    );

    // Load gone: nothing is held, and the server serves at once.
    let settle = Instant::now() + Duration::from_secs(5);
    while scrape(&server, "actor_infer_admitted_texts") > 0.0 && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(scrape(&server, "actor_infer_admitted_texts"), 0.0);
    assert!(
        scrape(
            &server,
            "actor_infer_requests_total{outcome=\"overloaded\",transport=\"http\"}"
        ) > 0.0
    );
    still_serving(&server, "the overload");
    server.stop_clean();
}

#[tokio::test]
async fn a_grpc_deadline_that_passes_in_the_queue_is_answered_deadline_exceeded() {
    let server = Server::start_with(experiment("experiment:\n  name: deadlines\n"), FAULTS);
    let mut grpc = common::grpc(&server).await;
    // Hold the only worker for 2 s.
    let slow = {
        let mut grpc = grpc.clone();
        tokio::spawn(async move {
            grpc.infer(InferRequest {
                texts: vec![SLOW.into()],
                ..Default::default()
            })
            .await
        })
    };
    worker_busy(&server).await;
    let mut request = tonic::Request::new(InferRequest {
        texts: vec!["late one".into(), "late two".into()],
        ..Default::default()
    });
    request.set_timeout(Duration::from_millis(400));
    let started = Instant::now();
    let err = grpc.infer(request).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("deadline"), "{err:?}");
    assert!(
        !slow.is_finished(),
        "answered only after {:?}, when the worker was free again",
        started.elapsed()
    );
    slow.await.unwrap().unwrap();
    // Its texts were dropped before inference, and counted.
    grpc.infer(InferRequest {
        texts: vec!["after".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        scrape(
            &server,
            "actor_infer_skipped_texts_total{reason=\"deadline\"}"
        ),
        2.0
    );
    server.stop_clean();
}

#[tokio::test]
async fn an_http_request_past_its_timeout_gets_504() {
    let server = Server::start_with(
        experiment("server:\n  request_timeout_seconds: 0.5\n"),
        FAULTS,
    );
    let http = reqwest::Client::new();
    let slow = hold_the_worker(&server).await;
    let res = http
        .post(format!("{}/embed", server.http))
        .json(&json!({ "inputs": ["queued behind the slow one"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 504);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error_type"], "deadline_exceeded", "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("server.request_timeout_seconds"),
        "{body}"
    );
    // The slow request itself ran past its timeout too: it is answered 504, not lost.
    assert_eq!(slow.await.unwrap(), 504);
    // Once the worker is free, the queued text is dropped, not run, and counted.
    let until = Instant::now() + fault_slow() + Duration::from_secs(30);
    while scrape(
        &server,
        "actor_infer_skipped_texts_total{reason=\"deadline\"}",
    ) < 1.0
    {
        assert!(Instant::now() < until, "the expired text was never dropped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        scrape(&server, "actor_infer_batch_size_count"),
        1.0,
        "only the slow batch ran"
    );
    server.stop_clean();
}

fn fault_slow() -> Duration {
    actor_infer::fault::SLOW_FOR
}

#[tokio::test]
async fn queued_work_of_a_client_that_disconnects_is_skipped_and_counted() {
    let server = Server::start_with(experiment("experiment:\n  name: disconnects\n"), FAULTS);
    let slow = hold_the_worker(&server).await;
    let tokens_before = scrape(&server, "actor_infer_tokens_total");

    // HTTP: the client gives up after 300 ms and closes its connection.
    let gone = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap()
        .post(format!("{}/embed", server.http))
        .json(&json!({ "inputs": ["http one", "http two", "http three"] }))
        .send()
        .await;
    assert!(
        gone.is_err(),
        "the request should have timed out client-side"
    );

    // gRPC: the client drops the call (a RST_STREAM, no deadline involved).
    let mut grpc = common::grpc(&server).await;
    let call = grpc.infer(InferRequest {
        texts: vec!["grpc one".into(), "grpc two".into()],
        ..Default::default()
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), call)
            .await
            .is_err()
    );

    assert_eq!(slow.await.unwrap(), 200);
    // Once the worker is free, the five abandoned texts are skipped, never run.
    let case = &reference()[1];
    let out = grpc
        .infer(InferRequest {
            texts: vec![case.text.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(max_abs_diff(&out.outputs[0].embedding, &case.embedding) < TOLERANCE);
    assert_eq!(
        scrape(
            &server,
            "actor_infer_skipped_texts_total{reason=\"client_gone\"}"
        ),
        5.0
    );
    // The slow batch was counted when it started; since then only the last request ran.
    let ran = scrape(&server, "actor_infer_tokens_total") - tokens_before;
    assert_eq!(
        ran,
        f64::from(out.outputs[0].token_count),
        "tokens run: {ran}"
    );
    for transport in ["http", "grpc"] {
        let sample = format!(
            "actor_infer_requests_total{{outcome=\"client_gone\",transport=\"{transport}\"}}"
        );
        assert_eq!(scrape(&server, &sample), 1.0, "{sample}");
    }
    server.stop_clean();
}

#[tokio::test]
async fn an_api_key_guards_inference_and_is_never_shown() {
    const KEY: &str = "k3y-that-must-not-leak";
    let server = Server::start_with(
        experiment("logging:\n  level: debug\n"),
        &[("ACTOR_INFER__SERVER__API_KEY", KEY)],
    );
    let http = reqwest::Client::new();
    let embed = |auth: Option<&str>| {
        let mut req = http
            .post(format!("{}/v1/embeddings", server.http))
            .json(&json!({ "input": "secret work" }));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    for (auth, needle) in [
        (None, "needs an API key"),
        (Some("Bearer wrong"), "not valid"),
        (Some(&format!("Basic {KEY}")[..]), "Bearer"),
        (Some(&format!("Bearer {KEY}x")[..]), "not valid"),
    ] {
        let res = embed(auth).await.unwrap();
        assert_eq!(res.status().as_u16(), 401, "{auth:?}");
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error_type"], "unauthenticated");
        assert!(body["error"].as_str().unwrap().contains(needle), "{body}");
    }
    let res = embed(Some(&format!("Bearer {KEY}"))).await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let res = embed(Some(&format!("bearer {KEY}"))).await.unwrap();
    assert_eq!(res.status().as_u16(), 200, "the scheme is case-insensitive");
    // Probes and metrics stay open.
    for path in ["/health", "/ready", "/metrics", "/info"] {
        let (status, _) = common::http_get(&server.http_addr, path).unwrap();
        assert_eq!(status, 200, "{path}");
    }

    let mut grpc = common::grpc(&server).await;
    let request = || {
        tonic::Request::new(InferRequest {
            texts: vec!["secret work".into()],
            ..Default::default()
        })
    };
    let err = grpc.infer(request()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let mut wrong = request();
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer nope".parse().unwrap());
    assert_eq!(
        grpc.infer(wrong).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    let mut right = request();
    right
        .metadata_mut()
        .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
    assert_eq!(
        grpc.infer(right).await.unwrap().into_inner().outputs.len(),
        1
    );
    // gRPC health stays open for probes.
    let channel = tonic::transport::Endpoint::from_shared(server.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, 1, "SERVING");

    let log = server.log.clone();
    server.stop_clean();
    let log = log.lock().unwrap().clone();
    assert!(!log.contains(KEY), "the key appears in the log");

    // `--check` prints the configuration, with the key redacted.
    let exp = experiment("");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_actor-infer"))
        .args(["--experiment", exp.path.to_str().unwrap(), "--check"])
        .env("ACTOR_INFER__SERVER__API_KEY", KEY)
        .output()
        .unwrap();
    let printed =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{printed}");
    assert!(!printed.contains(KEY), "{printed}");
    assert!(printed.contains("<redacted>"), "{printed}");
}

#[test]
fn metrics_can_be_put_behind_the_key_too() {
    let server = Server::start_with(
        experiment("server:\n  api_key_protects_metrics: true\n"),
        &[("ACTOR_INFER__SERVER__API_KEY", "another-key")],
    );
    for (path, status) in [
        ("/metrics", 401),
        ("/info", 401),
        ("/", 401),
        ("/health", 200),
        ("/ready", 200),
    ] {
        let (got, body) = common::http_get(&server.http_addr, path).unwrap();
        assert_eq!(got, status, "{path}: {body}");
    }
    server.stop_clean();
}
