//! Start and stop of the real binary: clean stops on SIGTERM and SIGINT leave no process and
//! no port behind; refused configurations and start-up failures exit non-zero with one clear
//! message and nothing listening.

mod common;

use std::time::{Duration, Instant};

use common::{Server, experiment, listening};

fn stops_cleanly_on(signal: i32) {
    let server = Server::start(experiment("shutdown:\n  timeout_seconds: 5\n"));
    let http = server.http_addr.clone();
    let grpc = server.grpc.trim_start_matches("http://").to_string();
    let pid = server.pid;
    let log = server.log.clone();
    let started = Instant::now();
    let status = server.stop_with(signal);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let log = log.lock().unwrap().clone();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("Shutdown complete"), "{log}");
    assert!(!listening(&http), "HTTP port still held");
    assert!(!listening(&grpc), "gRPC port still held");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "process still there"
    );
}

#[test]
fn sigterm_when_idle_exits_0_and_frees_both_ports() {
    stops_cleanly_on(libc::SIGTERM);
}

#[test]
fn sigint_when_idle_exits_0_and_frees_both_ports() {
    stops_cleanly_on(libc::SIGINT);
}

#[test]
fn bad_configurations_are_refused_naming_the_key() {
    let cases = [
        (
            "server:\n  colour: blue\n",
            "server.colour",
            "unknown field",
        ),
        (
            "server:\n  http_port: 70000\n",
            "server.http_port",
            "out of range",
        ),
        ("server:\n  grpc_port: many\n", "server.grpc_port", "many"),
        (
            "model:\n  path: /nonexistent/model\n",
            "model.path",
            "/nonexistent/model",
        ),
        (
            "tokenizer:\n  workers: 0\n",
            "tokenizer.workers",
            "at least 1",
        ),
    ];
    for (yaml, key, needle) in cases {
        let mut body = yaml.to_string();
        if !yaml.starts_with("model:") {
            body.push_str(&format!(
                "model:\n  path: {}\n",
                common::default_model().display()
            ));
        }
        let exp = experiment(&body);
        let (code, log) = common::run_to_exit(&["--experiment", exp.path.to_str().unwrap()]);
        assert_eq!(code, 2, "{yaml}: {log}");
        assert!(
            log.contains(&format!("configuration error: {key}:")),
            "{yaml}: {log}"
        );
        assert!(log.contains(needle), "{needle:?} not in {log}");
        assert_eq!(log.trim().lines().count(), 1, "one message: {log}");
    }
    let (code, log) = common::run_to_exit(&["--experiment", "/nonexistent.yaml"]);
    assert_eq!(code, 2);
    assert!(log.contains("/nonexistent.yaml"), "{log}");
}

#[test]
fn environment_overrides_yaml_and_flags_override_both() {
    let exp = experiment("server:\n  http_port: 1111\n  grpc_port: 2222\n");
    let path = exp.path.to_str().unwrap().to_string();
    let v = common::run_json(
        common::binary()
            .args(["--experiment", &path, "--check", "--grpc-port", "4444"])
            .env("ACTOR_INFER__SERVER__HTTP_PORT", "3333")
            .env("ACTOR_INFER__SERVER__GRPC_PORT", "5555"),
        b"",
        Duration::from_secs(60),
    );
    assert_eq!(v["server"]["http_port"], 3333);
    assert_eq!(v["server"]["grpc_port"], 4444);
}

#[test]
fn a_port_in_use_is_reported_and_nothing_is_left_listening() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let exp = experiment("");
    let (code, log) = common::run_to_exit(&[
        "--experiment",
        exp.path.to_str().unwrap(),
        "--http-port",
        "0",
        "--grpc-port",
        &port,
    ]);
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains(&format!("gRPC port {port}")) && log.contains("already in use"),
        "{log}"
    );
}

#[test]
fn a_model_that_fails_to_load_stops_everything_with_exit_1() {
    // A model folder whose weights are not safetensors: the worker fails to load, the stop
    // cascade runs, the HTTP server that was already up goes away.
    let dir = tempfile::tempdir().unwrap();
    let model = common::default_model();
    for f in [
        "config.json",
        "tokenizer.json",
        "modules.json",
        "sentence_bert_config.json",
    ] {
        std::fs::copy(model.join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(dir.path().join("model.safetensors"), b"not weights").unwrap();
    let exp = experiment(&format!(
        "model:\n  path: {}\n  device: cpu\n",
        dir.path().display()
    ));
    let (code, log) = common::run_to_exit(&[
        "--experiment",
        exp.path.to_str().unwrap(),
        "--http-port",
        "0",
        "--grpc-port",
        "0",
    ]);
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("could not load the model"), "{log}");
    assert!(log.contains("model.safetensors"), "{log}");
    assert!(log.contains("Shutdown complete"), "{log}");
}

#[test]
fn the_port_file_names_the_bound_ports_or_the_start_fails_with_exit_1() {
    // Written once both ports are bound: what Server::start reads, and what it connects to.
    let server = Server::start(experiment(""));
    let ports: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(server.port_file()).expect("the port file"))
            .unwrap();
    assert_eq!(ports["host"], "127.0.0.1", "{ports}");
    assert_eq!(
        format!("127.0.0.1:{}", ports["http_port"]),
        server.http_addr,
        "{ports}"
    );
    assert_eq!(
        format!("http://127.0.0.1:{}", ports["grpc_port"]),
        server.grpc,
        "{ports}"
    );
    server.stop_clean();

    // Where it cannot be written, the server says so and stops before serving anything.
    let exp = experiment("");
    let missing = exp.dir.path().join("no-such-folder/ports.json");
    let (code, log) = common::run_to_exit(&[
        "--experiment",
        exp.path.to_str().unwrap(),
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--port-file",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains("cannot write the port file") && log.contains("no-such-folder"),
        "{log}"
    );
    assert!(!log.contains("starting model workers"), "{log}");
}
