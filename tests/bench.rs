//! `actor-infer bench` against the real server and `--raw` against the real model: the
//! reports a user reads (no timing assertions: figures come from `make bench`).

mod common;

use std::time::Duration;

use common::{Server, experiment};
use serde_json::Value;

fn bench(args: &[&str]) -> Value {
    common::run_json(
        common::binary().arg("bench").args(args).arg("--json"),
        b"",
        Duration::from_secs(300),
    )
}

#[test]
fn bench_drives_a_server_over_grpc_and_http_and_reads_its_stages() {
    let server = Server::start(experiment("experiment:\n  name: benched\n"));
    let http = server.http_addr.rsplit(':').next().unwrap().to_string();
    let grpc = server.grpc.rsplit(':').next().unwrap().to_string();
    for transport in ["grpc", "http"] {
        let r = bench(&[
            "--http-port",
            &http,
            "--grpc-port",
            &grpc,
            "--transport",
            transport,
            "--concurrency",
            "4",
            "--requests",
            "40",
            "--texts-per-request",
            "3",
            "--tokens",
            "8-20",
        ]);
        assert_eq!(r["requests"], 40, "{r}");
        assert_eq!(r["errors"], serde_json::json!({}), "{r}");
        assert!(r["texts_per_s"].as_f64().unwrap() > 0.0);
        // 3 texts of 8..20 tokens each.
        let tokens_per_text =
            r["tokens_per_s"].as_f64().unwrap() / r["texts_per_s"].as_f64().unwrap();
        assert!((8.0..=20.0).contains(&tokens_per_text), "{tokens_per_text}");
        let l = &r["latency_ms"];
        assert!(l["p50"].as_f64().unwrap() <= l["p99"].as_f64().unwrap());
        assert!(
            r["server"]["avg_inference_ms"].as_f64().unwrap() > 0.0,
            "{r}"
        );
    }
    server.stop_clean();
}

#[test]
fn a_refused_scenario_reports_why_in_its_json() {
    // The server's per-request limit (4 texts here) refuses 6-text requests: `make bench` prints
    // the refusal in the scenario's row, so the report must carry the server's own words.
    let server = Server::start(experiment("server:\n  max_client_batch_size: 4\n"));
    let http = server.http_addr.rsplit(':').next().unwrap().to_string();
    let grpc = server.grpc.rsplit(':').next().unwrap().to_string();
    for (transport, kind) in [("http", "http 413"), ("grpc", "grpc InvalidArgument")] {
        let out = common::binary()
            .args(["bench", "--http-port", &http, "--grpc-port", &grpc])
            .args([
                "--transport",
                transport,
                "--http-route",
                "tei",
                "--requests",
                "3",
            ])
            .args(["--texts-per-request", "6", "--json"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "every request failed: exit 1");
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["requests"], 0, "{r}");
        assert_eq!(r["errors"][kind], 3, "{r}");
        let first = r["first_error"].as_str().unwrap_or_default();
        assert!(
            first.starts_with(kind) && first.contains("server.max_client_batch_size is 4"),
            "{r}"
        );
    }
    server.stop_clean();
}

#[test]
fn bench_raw_measures_each_batch_size() {
    let exp = experiment("");
    let r = bench(&[
        "--experiment",
        exp.path.to_str().unwrap(),
        "--raw",
        "--batch-sizes",
        "1,4",
        "--duration-seconds",
        "1",
    ]);
    let sizes: Vec<u64> = r["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["batch_size"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, vec![1, 4]);
    assert!(r["best"]["texts_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(r["dtype"], "f32");
    assert_eq!(r["bf16"], Value::Null, "said only for bf16: {r}");
}

#[test]
fn generated_texts_have_the_asked_token_lengths() {
    let texts = actor_infer::tools::bench::generate_texts("12", 50).unwrap();
    let dir = common::default_model();
    let tok = actor_infer::model::TextTokenizer::load(&dir, 256).unwrap();
    for t in &texts {
        assert_eq!(tok.encode(0, t, true).unwrap().len(), 12, "{t}");
    }
    assert!(actor_infer::tools::bench::generate_texts("2", 1).is_err());
}
