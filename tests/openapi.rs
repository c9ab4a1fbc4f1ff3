//! The HTTP API does what its OpenAPI document says. schemathesis (pinned, from PyPI, in the
//! venv `make test` installs: `scripts/test-deps.sh`) reads the real server's
//! `/api-doc/openapi.json` and sends it generated requests with every check on: valid ones must
//! be served, invalid ones refused, every answer must match its documented status, schema and
//! content type, and methods a path does not serve must answer 405 with `Allow`. Any finding
//! fails the test, with schemathesis's report (each failure with a `curl` that reproduces it).
//!
//! Each configuration runs a pass with a fixed seed and a fixed number of examples per route,
//! so a failure reproduces, and the default model also a pass with a random seed (printed), so
//! new inputs keep being tried. Run by hand against any server: docs/apis.md.

mod common;

use std::process::Command;

use common::{
    Server, experiment, fixture, floats, http_request_with, max_abs_diff, reference, venv_python,
};
use serde_json::{Value, json};

/// The fixed seed of the reproducible passes.
const SEED: u64 = 20_261_203;

/// Runs schemathesis against `server` with every check on, `args` added, and fails the test
/// with its report on any finding.
fn schemathesis(server: &Server, args: &[&str]) {
    schemathesis_warned(server, args, None);
}

/// [`schemathesis`], where the run may also end with the one warning `expected` (and no
/// finding).
fn schemathesis_warned(server: &Server, args: &[&str], expected: Option<&str>) {
    // schemathesis and hypothesis write their databases and reports in the working folder.
    let work = tempfile::tempdir().unwrap();
    let config = common::root().join("tests/openapi/schemathesis.toml");
    let out = Command::new(venv_python("schemathesis-venv").with_file_name("schemathesis"))
        .arg("--config-file")
        .arg(&config)
        .args(["--no-color", "run"])
        .arg(format!("{}/api-doc/openapi.json", server.http))
        .args([
            "--checks",
            "all",
            "--workers",
            "2",
            "--request-timeout",
            "60",
        ])
        .args(args)
        .current_dir(work.path())
        .env("NO_PROXY", "127.0.0.1,localhost")
        .output()
        .expect("run schemathesis");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: String = report
        .lines()
        .skip_while(|l| !l.contains("SUMMARY"))
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!("schemathesis {args:?}:\n{summary}");
    let last = summary
        .lines()
        .rev()
        .find(|l| l.contains(" in "))
        .unwrap_or("");
    let clean = out.status.success() && report.contains("No issues found");
    let only_expected = expected.is_some_and(|w| {
        report.contains(w) && last.contains("1 warning") && !last.contains("failure")
    });
    assert!(
        clean || only_expected,
        "schemathesis {args:?} found what the document and the server disagree on:\n{report}"
    );
    // It tested every documented route.
    assert!(!report.contains("Tested: 0"), "{report}");
}

/// The server is still ready and still answers the reference embedding.
fn still_serving(server: &Server) {
    let (status, _, _) = http_request_with(&server.http_addr, "GET", "/ready", &[], b"").unwrap();
    assert_eq!(status, 200, "{}", server.log());
    let case = &reference()[1];
    let body = json!({"inputs": case.text}).to_string();
    let (status, body, _) = http_request_with(
        &server.http_addr,
        "POST",
        "/embed",
        &[("content-type", "application/json")],
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(max_abs_diff(&floats(&v[0]), &case.embedding) < common::TOLERANCE);
}

fn document(server: &Server, headers: &[(&str, &str)]) -> Value {
    let (status, body, _) = http_request_with(
        &server.http_addr,
        "GET",
        "/api-doc/openapi.json",
        headers,
        b"",
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn schemathesis_finds_nothing_on_the_default_model() {
    let server = Server::start(experiment(""));
    let doc = document(&server, &[]);
    // An embedding model: its routes, not a classifier's or a reranker's.
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.contains_key("/embed") && paths.contains_key("/v1/embeddings"));
    assert!(!paths.contains_key("/rerank") && !paths.contains_key("/predict"));
    let seed = SEED.to_string();
    schemathesis(
        &server,
        &["--seed", &seed, "--max-examples", "25", "--max-time", "180"],
    );
    // A random seed (schemathesis prints it in the report) for inputs not tried before.
    schemathesis(&server, &["--max-time", "45"]);
    still_serving(&server);
    server.stop_clean();
}

#[test]
fn schemathesis_finds_nothing_on_three_model_kinds_behind_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("exp.yaml");
    let yaml = format!(
        "server:\n  api_key: the-key\nmodels:\n  - name: minilm\n    path: {}\n    device: cpu\n  \
         - name: sentiment\n    path: {}\n    device: cpu\n  - name: reranker\n    path: {}\n    \
         device: cpu\n",
        common::default_model().display(),
        fixture("bert-classifier").display(),
        fixture("bert-reranker").display(),
    );
    std::fs::write(&path, yaml).unwrap();
    let server = Server::start(common::Experiment { dir, path });
    let key = [("authorization", "Bearer the-key")];
    let doc = document(&server, &key);
    let paths = doc["paths"].as_object().unwrap();
    assert!(
        ["/embed", "/predict", "/rerank"]
            .iter()
            .all(|p| paths.contains_key(*p))
    );
    // OpenAI's `model` takes the embedding model's name.
    assert_eq!(
        doc["components"]["schemas"]["OpenAiRequest"]["properties"]["model"]["enum"],
        json!(["minilm", null])
    );
    assert_eq!(
        doc["paths"]["/rerank"]["post"]["security"],
        json!([{"bearer": []}])
    );
    let seed = SEED.to_string();
    schemathesis(
        &server,
        &[
            "--seed",
            &seed,
            "--max-examples",
            "15",
            "--max-time",
            "180",
            "--header",
            "Authorization: Bearer the-key",
        ],
    );
    // A method a route does not serve needs no key: 405 with Allow, as without one.
    let (status, _, headers) =
        http_request_with(&server.http_addr, "TRACE", "/embed", &[], b"").unwrap();
    assert_eq!(
        (status, &headers["allow"]),
        (405, &"POST, OPTIONS".parse().unwrap())
    );
    // Without the key: every protected route answers its documented 401.
    schemathesis_warned(
        &server,
        &["--seed", &seed, "--max-examples", "3", "--max-time", "60"],
        Some("Authentication failed: 13 operations returned only 401/403 responses"),
    );
    server.stop_clean();
}

#[test]
fn methods_a_path_does_not_serve_answer_405_with_allow_and_options_lists_them() {
    let server = Server::start(experiment(""));
    for (method, path, allow) in [
        ("TRACE", "/embed", "POST, OPTIONS"),
        ("GET", "/v1/embeddings", "POST, OPTIONS"),
        ("DELETE", "/health", "GET, OPTIONS"),
        ("PUT", "/", "POST, GET, OPTIONS"),
        ("GET", "/v2/models/all-MiniLM-L6-v2/infer", "POST, OPTIONS"),
    ] {
        let (status, body, headers) =
            http_request_with(&server.http_addr, method, path, &[], b"").unwrap();
        assert_eq!(status, 405, "{method} {path}: {body}");
        assert_eq!(headers["allow"], allow, "{method} {path}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error_type"], "method_not_allowed");
        assert!(v["error"].as_str().unwrap().contains(allow), "{body}");
        let (status, _, headers) =
            http_request_with(&server.http_addr, "OPTIONS", path, &[], b"").unwrap();
        assert_eq!(status, 204, "OPTIONS {path}");
        assert_eq!(headers["allow"], allow, "OPTIONS {path}");
    }
    // A body that is not JSON: 415 with our error body.
    let (status, body, _) = http_request_with(
        &server.http_addr,
        "POST",
        "/embed",
        &[("content-type", "text/plain")],
        b"hello",
    )
    .unwrap();
    assert_eq!(status, 415, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error_type"],
        "unsupported_media_type"
    );
    server.stop_clean();
}

#[test]
fn what_json_schema_calls_valid_is_served_as_tei_spells_it() {
    let server = Server::start(experiment(""));
    let post = |path: &str, body: Value| {
        let (status, text, _) = http_request_with(
            &server.http_addr,
            "POST",
            path,
            &[("content-type", "application/json")],
            body.to_string().as_bytes(),
        )
        .unwrap();
        (
            status,
            serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
            text,
        )
    };
    let case = &reference()[1];
    // TEI's `Left`/`Right` and ours cut the same ends.
    for (a, b) in [("Left", "left"), ("Right", "right")] {
        let (s1, v1, t1) = post(
            "/embed",
            json!({"inputs": case.text, "truncation_direction": a}),
        );
        let (s2, v2, _) = post(
            "/embed",
            json!({"inputs": case.text, "truncation_direction": b}),
        );
        assert_eq!((s1, s2), (200, 200), "{t1}");
        assert_eq!(v1, v2);
    }
    let (status, _, text) = post(
        "/embed",
        json!({"inputs": "x", "truncation_direction": "LEFT"}),
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("right, left, Right, Left"), "{text}");
    // Whole numbers written as floats are the same numbers: token ids and `dimensions`.
    let (s1, ids, _) = post(
        "/embed",
        json!({"inputs": [101, 7592, 102], "dimensions": 8}),
    );
    let (s2, ids_f, t) = post(
        "/embed",
        json!({"inputs": [101.0, 7592.0, 102.0], "dimensions": 8.0}),
    );
    assert_eq!((s1, s2), (200, 200), "{t}");
    assert_eq!(ids, ids_f);
    assert_eq!(floats(&ids[0]).len(), 8);
    let (status, _, text) = post("/embed", json!({"inputs": [101.5]}));
    assert_eq!(status, 400, "{text}");
    let (status, v, text) = post("/decode", json!({"ids": [[101.0, 7592.0, 102.0]]}));
    assert_eq!(status, 200, "{text}");
    assert_eq!(v, json!(["hello"]));
    // An object is an object: not the array of its fields that serde would otherwise take.
    let (status, _, text) = post(
        "/similarity",
        json!({"inputs": {"source_sentence": "a", "sentences": ["b"]}, "parameters": [null, null]}),
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("parameters"), "{text}");
    let (status, _, text) = post("/similarity", json!({"inputs": ["a", ["b"]]}));
    assert_eq!(status, 400, "{text}");
    server.stop_clean();
}
