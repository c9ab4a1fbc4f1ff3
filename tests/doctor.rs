//! The original team's diagnostic workflow, answered by `actor-infer doctor` and the
//! scripts/ wrappers, against the real binary.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use common::{Server, experiment};

fn doctor(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_actor-infer"))
        .arg("doctor")
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Runs scripts/run_experiment.sh on `exp` with the test's binary; (success, all output).
fn run_experiment(exp: &common::Experiment, envs: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new("bash")
        .arg(common::root().join("scripts/run_experiment.sh"))
        .arg(&exp.path)
        .env("ACTOR_INFER_BIN", env!("CARGO_BIN_EXE_actor-infer"))
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn port(addr: &str) -> String {
    addr.rsplit(':').next().unwrap().to_string()
}

#[test]
fn doctor_sees_the_serving_server_and_then_nothing() {
    let server = Server::start(experiment("experiment:\n  name: doctored\n"));
    let (http, grpc) = (port(&server.http_addr), port(&server.grpc));
    let (status, body) = common::http_request(
        &server.http_addr,
        "POST",
        "/embed",
        Some("application/json"),
        br#"{"inputs": "x"}"#,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let (code, out) = doctor(&["--http-port", &http, "--grpc-port", &grpc]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("HTTP {http}: LISTEN by pid {}", server.pid)),
        "{out}"
    );
    assert!(
        out.contains(&format!("gRPC {grpc}: LISTEN by pid {}", server.pid)),
        "{out}"
    );
    assert!(out.contains("experiment \"doctored\""), "{out}");
    assert!(out.contains("inference_ms:"), "{out}");
    assert!(
        out.contains("model all-MiniLM-L6-v2@1 (embedding, cpu, 1 workers): 1 requests, 0 errors"),
        "a line per model: {out}"
    );
    assert!(out.contains("healthy"), "{out}");
    server.stop_clean();
    let (code, out) = doctor(&["--http-port", &http, "--grpc-port", &grpc, "ports"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("HTTP {http}: free")) && out.contains(&format!("gRPC {grpc}: free"))
    );
}

/// A stray process holding a port, killed and reaped when the test ends.
struct Stray(std::process::Child);

impl Drop for Stray {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_port_held_by_something_else_is_case_a() {
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import socket,time\ns=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen()\n\
             print(s.getsockname()[1],flush=True)\ntime.sleep(120)",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let stray = Stray(child);
    let held = line.trim().to_string();
    let free = common::unused_port();
    let (code, out) = doctor(&["--http-port", &held, "--grpc-port", &free.to_string()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("CASE A"), "{out}");
    assert!(
        out.contains(&format!("HTTP port {held} is held by pid {}", stray.0.id())),
        "{out}"
    );
    let (code, _) = doctor(&["--http-port", &held, "ports"]);
    assert_eq!(code, 1, "ports exits 1 while one is held");
}

#[test]
fn run_experiment_script_starts_loads_stops_and_verifies() {
    // Port 0: the server picks its ports and the script reads them from its --port-file.
    let exp =
        experiment("experiment:\n  name: scripted\nserver:\n  http_port: 0\n  grpc_port: 0\n");
    let workload = "for i in 1 2 3; do curl -fsS $HTTP_URL/embed \
                    -H 'content-type: application/json' -d '{\"inputs\":\"w\"}' >/dev/null; done";
    let (ok, text) = run_experiment(&exp, &[("WORKLOAD", workload)]);
    assert!(ok, "{text}");
    assert!(text.contains("server exited with 0"), "{text}");
    assert!(text.contains("nothing left over"), "{text}");
    assert!(
        text.contains("clean: ports free, no process left"),
        "{text}"
    );
}

#[test]
fn wrapper_scripts_answer_like_the_originals() {
    let exp = experiment("server:\n  http_port: 1\n  grpc_port: 2\n");
    for (script, needle) in [
        ("check_ports.sh", "HTTP 1: free"),
        ("check_processes.sh", "listeners"),
        ("count_processes.sh", "server_processes"),
    ] {
        let mut cmd = Command::new("bash");
        cmd.arg(common::root().join("scripts").join(script));
        if script == "count_processes.sh" {
            cmd.arg("before");
        }
        let out = cmd
            .env("ACTOR_INFER_BIN", env!("CARGO_BIN_EXE_actor-infer"))
            .env("EXPERIMENT", &exp.path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(needle), "{script}: {text}");
    }
    let out = Command::new("bash")
        .arg(common::root().join("scripts/monitor_metrics.sh"))
        .args(["--count", "2", "--interval-seconds", "0.1"])
        .env("ACTOR_INFER_BIN", env!("CARGO_BIN_EXE_actor-infer"))
        .env("EXPERIMENT", &exp.path)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("no server")
            .count(),
        2
    );
}

#[test]
fn run_experiment_script_runs_the_experiments_workload_section() {
    let exp = experiment(
        "experiment:\n  name: workload\nserver:\n  http_port: 0\n  grpc_port: 0\n\
         workload:\n  transport: grpc\n  concurrency: 2\n  requests: 20\n  tokens: 8-16\n",
    );
    let (ok, text) = run_experiment(&exp, &[]);
    assert!(ok, "{text}");
    assert!(text.contains("workload: section"), "{text}");
    assert!(
        text.contains("(20 requests)"),
        "the bench ran the section's 20 requests: {text}"
    );
    assert!(
        text.contains("clean: ports free, no process left"),
        "{text}"
    );
}
