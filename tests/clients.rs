//! The client packages people already use, from PyPI (pinned, in the venv `make test` installs:
//! `scripts/test-deps.sh`), driving the real server: `openai` (float and its default base64,
//! `dimensions`), `huggingface_hub.InferenceClient` (`feature_extraction` with `normalize`,
//! `truncate`, `truncation_direction`, `prompt_name`, `dimensions`; `sentence_similarity`;
//! `text_classification` on a classifier fixture), `grpcio` with `grpcio-reflection` (discover
//! the services through v1alpha reflection, call `Infer` and health with descriptors fetched
//! from the server), and TEI's gRPC API through a client generated from `proto/tei/v1/tei.proto`
//! by `grpcio-tools`. Every check compares numbers with the reference (`tests/clients/check.py`).

mod common;

use std::{process::Command, time::Duration};

use common::{Server, experiment};

/// Runs `check.py <args>` and returns its figures (its last line, JSON).
fn check(args: &[&str]) -> serde_json::Value {
    let figures = common::run_json(
        Command::new(common::venv_python("clients-venv"))
            .arg(common::root().join("tests/clients/check.py"))
            .args(args)
            .env("NO_PROXY", "127.0.0.1,localhost"),
        b"",
        Duration::from_secs(300),
    );
    eprintln!("check.py {}: {figures}", args[0]);
    figures
}

fn reference() -> String {
    common::root()
        .join("tests/fixtures/minilm-reference.json")
        .display()
        .to_string()
}

/// The default model in a folder of the same name whose sentence-transformers configuration
/// has a `query` prompt (MiniLM's has none).
fn prompted_model() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("all-MiniLM-L6-v2");
    std::fs::create_dir(&model).unwrap();
    let src = common::default_model().canonicalize().unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name != "config_sentence_transformers.json" {
            std::os::unix::fs::symlink(e.path(), model.join(&name)).unwrap();
        }
    }
    std::fs::write(
        model.join("config_sentence_transformers.json"),
        r#"{"prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": null}"#,
    )
    .unwrap();
    dir
}

fn close(figures: &serde_json::Value) {
    for (k, v) in figures.as_object().unwrap() {
        if let Some(x) = v.as_f64()
            && !k.contains("cosine")
        {
            assert!(x < f64::from(common::TOLERANCE), "{k}: {x}");
        }
    }
}

#[test]
fn openai_client_float_base64_and_dimensions() {
    let server = Server::start(experiment(""));
    close(&check(&["openai", &server.http, &reference()]));
    server.stop_clean();
}

#[test]
fn huggingface_hub_inference_client_with_teis_fields() {
    let dir = prompted_model();
    let server = Server::start(experiment(&format!(
        "model:\n  path: {}\n  device: cpu\n",
        dir.path().join("all-MiniLM-L6-v2").display()
    )));
    let figures = check(&["hf", &server.http, &reference()]);
    close(&figures);
    assert!(figures["left_vs_right_cosine"].as_f64().unwrap() < 0.999);
    server.stop_clean();
}

#[test]
fn huggingface_hub_text_classification_on_a_classifier() {
    let fixture = common::root().join("tests/fixtures/models/bert-classifier");
    let server = Server::start(experiment(&format!(
        "model:\n  path: {}\n  device: cpu\n",
        fixture.display()
    )));
    close(&check(&[
        "hf-classifier",
        &server.http,
        fixture.join("reference.json").to_str().unwrap(),
    ]));
    server.stop_clean();
}

#[test]
fn grpcio_reflection_discovers_and_calls_infer_and_health() {
    let server = Server::start(experiment(""));
    let grpc = server.grpc.trim_start_matches("http://").to_string();
    let figures = check(&["reflection", &grpc, &reference()]);
    assert!(figures["reflection_infer"].as_f64().unwrap() < f64::from(common::TOLERANCE));
    server.stop_clean();
}

#[test]
fn teis_grpc_api_with_a_client_generated_from_its_proto() {
    let server = Server::start(experiment(""));
    let grpc = server.grpc.trim_start_matches("http://").to_string();
    close(&check(&[
        "tei-grpc",
        &grpc,
        &reference(),
        common::root().join("proto").to_str().unwrap(),
    ]));
    server.stop_clean();
}

/// openai with `extra_body={"output_dtype": ...}` on a server calibrated with ranges
/// sentence-transformers computed: its quantization of its own embeddings comes back.
#[test]
fn openai_client_quantized_output_types_through_extra_body() {
    let ranges = common::root().join("tests/fixtures/quantize/minilm-ranges-f32.npy");
    let server = Server::start(experiment(&format!(
        "model:\n  path: {}\n  device: cpu\n  quantization:\n    ranges_file: {}\n",
        common::default_model().display(),
        ranges.display()
    )));
    let figures = check(&[
        "openai-quantized",
        &server.http,
        &reference(),
        ranges.to_str().unwrap(),
    ]);
    // The script checks that a differing byte comes from a component within the parity
    // tolerance of 0 (MiniLM's three dead dimensions are about 1e-32 here and 0 in
    // sentence-transformers' output, so their bit can differ); such bytes stay rare.
    for p in ["binary", "ubinary", "int8", "uint8"] {
        let off = figures[&format!("{p}_values_off")].as_u64().unwrap();
        let width = if p.contains("int8") { 384 } else { 48 };
        assert!(off * 10 < 14 * width, "{p}: {off} values differ");
    }
    server.stop_clean();
}
