//! The deployment files, checked without a container engine or a cluster (none runs on CI):
//! the offline validators of `scripts/check-deploy.sh` (Compose and Kubernetes schemas, promtool,
//! `nginx -t`, consistency of grace periods, probes and build steps), the images' HEALTHCHECK
//! script against a real server, the container configuration serving for real, and the runtime
//! image carrying every libtorch library the binary links.

mod common;

use std::{
    collections::BTreeSet,
    process::Command,
    time::{Duration, Instant},
};

use actor_infer::fault;
use common::{Experiment, Server, experiment, http_request};

#[test]
fn deployment_files_pass_the_offline_validators() {
    let out = Command::new("bash")
        .arg("scripts/check-deploy.sh")
        .current_dir(common::root())
        .output()
        .expect("run scripts/check-deploy.sh");
    assert!(
        out.status.success(),
        "scripts/check-deploy.sh failed (validators come from `make test-deps`):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the images' HEALTHCHECK (docker/healthcheck.sh) against `port`; true when healthy.
fn healthcheck(port: &str) -> bool {
    Command::new("bash")
        .arg(common::root().join("docker/healthcheck.sh"))
        .env("ACTOR_INFER__SERVER__HTTP_PORT", port)
        .status()
        .expect("run docker/healthcheck.sh")
        .success()
}

#[test]
fn the_image_healthcheck_follows_readiness() {
    let mut server = Server::start_with(
        experiment("shutdown:\n  timeout_seconds: 2\n"),
        &[(fault::ENV, "1")],
    );
    let port = server.http_addr.rsplit(':').next().unwrap().to_string();
    assert!(healthcheck(&port), "a ready server is unhealthy");

    // Draining: a worker holds a request, so the server stays up with /ready at 503.
    let addr = server.http_addr.clone();
    std::thread::spawn(move || {
        let body = serde_json::json!({ "inputs": fault::Fault::WorkerHang.text() }).to_string();
        http_request(
            &addr,
            "POST",
            "/embed",
            Some("application/json"),
            body.as_bytes(),
        )
    });
    common::wait_worker_busy(&server);
    server.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut draining_seen = false;
    while Instant::now() < deadline {
        if let Ok((503, _)) = common::http_get(&server.http_addr, "/ready") {
            draining_seen = true;
            assert!(!healthcheck(&port), "a draining server is healthy");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        draining_seen,
        "the server never answered /ready 503 while draining"
    );
    // No second signal (that would abort at once): the budget runs out with the worker hung.
    let status = server
        .wait(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("still running:\n{}", server.log()));
    assert_eq!(
        status.code(),
        Some(3),
        "aborted at the budget:\n{}",
        server.log()
    );
    assert!(!healthcheck(&port), "a stopped server is healthy");
}

#[test]
fn the_container_config_loads_the_model_and_serves() {
    // configs/container.yaml as the image runs it (relative model path, JSON logs), bound to
    // loopback here: the tests send traffic to 127.0.0.1 only.
    let exp = Experiment {
        dir: tempfile::tempdir().unwrap(),
        path: common::root().join("configs/container.yaml"),
    };
    let server = Server::start_with(exp, &[("ACTOR_INFER__SERVER__HOST", "127.0.0.1")]);
    let (status, body) = common::http_get(&server.http_addr, "/info").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"experiment\":\"container\""), "{body}");
    assert!(
        server.log().lines().any(|l| l.starts_with('{')),
        "JSON logs"
    );
    server.stop_clean();
}

#[test]
fn the_runtime_image_carries_every_libtorch_library_the_binary_links() {
    let bin = env!("CARGO_BIN_EXE_actor-infer");
    let libtorch = std::fs::canonicalize(common::root().join("libtorch/lib")).unwrap();
    let ldd = Command::new("ldd").arg(bin).output().expect("ldd");
    let linked: BTreeSet<String> = String::from_utf8_lossy(&ldd.stdout)
        .lines()
        .filter_map(|l| {
            let (name, path) = l.trim().split_once(" => ")?;
            let path = std::path::Path::new(path.split(" (").next()?);
            let dir = std::fs::canonicalize(path.parent()?).ok()?;
            (dir == libtorch).then(|| name.to_string())
        })
        .collect();
    assert!(
        linked.contains("libtorch_cpu.so"),
        "ldd found no libtorch: {linked:?}"
    );
    let dockerfile = std::fs::read_to_string(common::root().join("docker/Dockerfile")).unwrap();
    let copied: BTreeSet<String> = dockerfile
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("libtorch/lib/"))
        .map(str::to_string)
        .collect();
    let missing: Vec<_> = linked.difference(&copied).collect();
    assert!(
        missing.is_empty(),
        "docker/Dockerfile does not copy {missing:?} into the runtime image"
    );
    // The image puts them in /opt/actor-infer/lib beside bin/: the binary must look there.
    let elf = Command::new("readelf")
        .args(["-d", bin])
        .output()
        .expect("readelf");
    let dynamic = String::from_utf8_lossy(&elf.stdout);
    assert!(
        dynamic
            .lines()
            .any(|l| l.contains("RUNPATH") && l.contains("$ORIGIN/../lib")),
        "no $ORIGIN/../lib in the binary's RUNPATH:\n{dynamic}"
    );
}
