//! The access log (docs/operating.md "Access log"): every request, served or refused, over HTTP and gRPC,
//! leaves exactly one INFO line naming its request id and trace id, route, model and version,
//! status or code and error kind, texts, tokens, times and client address; JSON fields with
//! `logging.format: json`; nothing with `logging.access_log: false`.

mod common;

use std::time::{Duration, Instant};

use actor_infer::api::grpc::pb::{InferRequest, inference_service_client::InferenceServiceClient};
use common::{Server, experiment, http_request_with};
use serde_json::{Value, json};

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

fn traceparent() -> String {
    format!("00-{TRACE}-b7ad6b7169203331-01")
}

/// The fields of one text access line (`key=value` or `key="value"`), `None` for another line.
fn text_fields(line: &str) -> Option<Vec<(String, String)>> {
    let rest = &line[line.find("actor_infer::access: access ")? + 28..];
    let mut out = Vec::new();
    let mut s = rest;
    while let Some(eq) = s.find('=') {
        let key = s[..eq].trim().to_string();
        let after = &s[eq + 1..];
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            (q[..end].to_string(), q.get(end + 1..).unwrap_or(""))
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        out.push((key, value));
        s = next;
    }
    Some(out)
}

/// The access lines of `log`, as JSON objects of their fields (text or JSON format).
fn access_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| {
            if let Ok(v) = serde_json::from_str::<Value>(l) {
                return (v["target"] == "actor_infer::access"
                    && v["fields"]["message"] == "access")
                    .then(|| {
                        let mut f = v["fields"].clone();
                        f["level"] = v["level"].clone();
                        f
                    });
            }
            let fields = text_fields(l)?;
            let mut o: serde_json::Map<String, Value> = fields
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            o.insert(
                "level".into(),
                Value::String(
                    if l.contains(" INFO ") {
                        "INFO"
                    } else {
                        "other"
                    }
                    .into(),
                ),
            );
            Some(Value::Object(o))
        })
        .collect()
}

/// `v` as text, whether the line held it as a string or a number.
fn s(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

/// Waits until `log` has an access line for each of `ids` (lines are written as a response
/// leaves; the client may read it first), then returns the lines.
fn wait_for(server: &Server, ids: &[&str]) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lines = access_lines(&server.log());
        if ids
            .iter()
            .all(|id| lines.iter().any(|l| s(&l["request_id"]) == *id))
        {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "no access line for some of {ids:?}:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The one line of `id` (exactly one).
fn one<'a>(lines: &'a [Value], id: &str) -> &'a Value {
    let mine: Vec<&Value> = lines.iter().filter(|l| s(&l["request_id"]) == id).collect();
    assert_eq!(mine.len(), 1, "{id}: {mine:?}");
    mine[0]
}

fn post(server: &Server, path: &str, id: &str, body: &[u8]) -> (u16, String) {
    let tp = traceparent();
    let (status, text, _) = http_request_with(
        &server.http_addr,
        "POST",
        path,
        &[
            ("content-type", "application/json"),
            ("x-request-id", id),
            ("traceparent", &tp),
        ],
        body,
    )
    .unwrap();
    (status, text)
}

async fn grpc_infer(server: &Server, id: &str, texts: Vec<String>) -> Result<u64, tonic::Status> {
    let mut client = InferenceServiceClient::connect(server.grpc.clone())
        .await
        .unwrap();
    let mut req = tonic::Request::new(InferRequest {
        texts,
        request_id: id.into(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("traceparent", traceparent().parse().unwrap());
    let res = client.infer(req).await?.into_inner();
    Ok(res.outputs.iter().map(|o| u64::from(o.token_count)).sum())
}

/// Checks the fields every line of a request that reached the model has.
fn served_line(l: &Value, route: &str, status: &str, texts: u64, tokens: u64) {
    assert_eq!(s(&l["level"]), "INFO", "{l}");
    assert_eq!(s(&l["trace_id"]), TRACE, "{l}");
    assert_eq!(s(&l["route"]), route, "{l}");
    assert_eq!(s(&l["status"]), status, "{l}");
    assert_eq!(s(&l["model"]), "all-MiniLM-L6-v2", "{l}");
    assert_eq!(s(&l["version"]), "1", "{l}");
    assert_eq!(s(&l["texts"]), texts.to_string(), "{l}");
    assert_eq!(s(&l["tokens"]), tokens.to_string(), "{l}");
    assert_eq!(s(&l["error"]), "", "{l}");
    let total: f64 = s(&l["total_ms"]).parse().unwrap();
    let inference: f64 = s(&l["inference_ms"]).parse().unwrap();
    assert!(total >= inference && inference > 0.0, "{l}");
    assert!(s(&l["client"]).starts_with("127.0.0.1:"), "{l}");
}

async fn every_request_has_one_line(format: &str) {
    let server = Server::start(experiment(&format!("logging:\n  format: {format}\n")));
    let texts = json!(["the first text", "and a second one"]).to_string();
    // OpenAI answers the token count the line must carry.
    let (status, body) = post(
        &server,
        "/v1/embeddings",
        "acc-openai",
        format!(r#"{{"input": {texts}}}"#).as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    let tokens = serde_json::from_str::<Value>(&body).unwrap()["usage"]["prompt_tokens"]
        .as_u64()
        .unwrap();
    let (status, _) = post(
        &server,
        "/embed",
        "acc-embed",
        format!(r#"{{"inputs": {texts}}}"#).as_bytes(),
    );
    assert_eq!(status, 200);
    let (status, _) = post(
        &server,
        "/embed",
        "acc-field",
        br#"{"inputs": "a", "nope": 1}"#,
    );
    assert_eq!(status, 400);
    let (status, _) = post(&server, "/embed", "acc-json", b"{not json");
    assert_eq!(status, 400);
    let (status, _) = post(&server, "/nowhere", "acc-404", b"{}");
    assert_eq!(status, 404);
    let grpc_tokens = grpc_infer(
        &server,
        "acc-grpc",
        vec!["the first text".into(), "and a second one".into()],
    )
    .await
    .unwrap();
    assert_eq!(grpc_tokens, tokens);
    let err = grpc_infer(&server, "acc-grpc-bad", Vec::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let lines = wait_for(
        &server,
        &[
            "acc-openai",
            "acc-embed",
            "acc-field",
            "acc-json",
            "acc-404",
            "acc-grpc",
            "acc-grpc-bad",
        ],
    );
    served_line(
        one(&lines, "acc-openai"),
        "/v1/embeddings",
        "200",
        2,
        tokens,
    );
    served_line(one(&lines, "acc-embed"), "/embed", "200", 2, tokens);
    served_line(one(&lines, "acc-grpc"), "Infer", "Ok", 2, tokens);
    assert_eq!(s(&one(&lines, "acc-grpc")["transport"]), "grpc");
    assert_eq!(s(&one(&lines, "acc-embed")["transport"]), "http");
    assert_eq!(s(&one(&lines, "acc-embed")["method"]), "POST");
    for (id, status) in [
        ("acc-field", "400"),
        ("acc-json", "400"),
        ("acc-404", "404"),
        ("acc-grpc-bad", "InvalidArgument"),
    ] {
        let l = one(&lines, id);
        assert_eq!(s(&l["level"]), "INFO", "{l}");
        assert_eq!(s(&l["status"]), status, "{l}");
        assert_eq!(s(&l["trace_id"]), TRACE, "{l}");
        let want = if id == "acc-404" {
            "not_found"
        } else {
            "validation"
        };
        assert_eq!(s(&l["error"]), want, "{l}");
    }
    // Probes and scrapes (the readiness polls of Server::start) are not at INFO.
    assert!(
        !lines
            .iter()
            .any(|l| s(&l["route"]) == "/ready" && s(&l["level"]) == "INFO"),
        "{lines:?}"
    );
    server.stop_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn every_request_leaves_one_access_line_with_its_ids() {
    every_request_has_one_line("text").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn access_lines_are_json_fields_in_the_json_format() {
    every_request_has_one_line("json").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn access_log_false_writes_none() {
    let server = Server::start(experiment("logging:\n  access_log: false\n"));
    let (status, _) = post(&server, "/embed", "quiet-1", br#"{"inputs": "a"}"#);
    assert_eq!(status, 200);
    let (status, _) = post(&server, "/embed", "quiet-2", br#"{"nope": 1}"#);
    assert_eq!(status, 400);
    grpc_infer(&server, "quiet-3", vec!["a".into()])
        .await
        .unwrap();
    let log = server.log.clone();
    server.stop_clean();
    let log = log.lock().unwrap().clone();
    assert!(access_lines(&log).is_empty(), "{log}");
}
