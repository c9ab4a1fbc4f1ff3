//! The CUDA set-up on a machine without a GPU: `make test` forces it
//! (`ACTOR_INFER_DEVICE=cuda scripts/setup.sh`, the ~2.4 GB of CUDA wheels the torch wheel
//! requires), and these tests check that the binary finds and loads it without
//! `LD_LIBRARY_PATH` when `device: cuda` asks for it, refuses that device with the missing piece
//! named, exit 2, before any port is bound, and that `device: auto` on this GPU-less host serves
//! on the CPU without mapping any of it.

mod common;

use std::path::PathBuf;

use common::{Server, experiment, floats, http_get, max_abs_diff, reference, run_to_exit_with};

/// The CUDA half in the cache, as `scripts/setup.sh` lays it out (the tests need it).
fn cuda_half() -> PathBuf {
    let lib = std::fs::canonicalize(common::root().join("libtorch/lib"))
        .expect("./libtorch: run `make setup`");
    let dir = lib
        .parent()
        .and_then(|p| p.parent())
        .unwrap()
        .join("libtorch-2.11.0-cuda");
    assert!(
        dir.join(".complete").is_file(),
        "{} is missing: `make test` runs `ACTOR_INFER_DEVICE=cuda scripts/setup.sh` first",
        dir.display()
    );
    dir
}

fn no_driver_here() {
    assert!(
        !std::path::Path::new("/proc/driver/nvidia/version").exists(),
        "these tests describe a host without an NVIDIA driver"
    );
}

/// The libraries a running process has mapped, by file name.
fn mapped(pid: u32, name: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with(name))
        .map(str::to_owned)
}

#[test]
fn auto_without_a_gpu_leaves_the_cuda_half_unloaded_and_serves_on_the_cpu() {
    no_driver_here();
    // The CUDA half is in the cache, where the binary would find it: it must still not load.
    let cuda = cuda_half();
    let model = common::default_model();
    let server = Server::start(experiment(&format!(
        "model:\n  path: {}\n  device: auto\n",
        model.display()
    )));
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("device selected"))
        .unwrap_or_else(|| panic!("no device line:\n{log}"));
    assert!(line.contains("device=cpu"), "{line}");
    assert!(line.contains("no NVIDIA driver"), "why not CUDA: {line}");
    assert!(
        line.contains("CUDA libraries not loaded (device: auto, and no GPU here to use them)"),
        "{line}"
    );
    assert!(line.contains("libtorch_cpu.so"), "which libtorch: {line}");
    assert_eq!(
        log.matches("device selected").count(),
        1,
        "said once:\n{log}"
    );
    // Nothing of the CUDA half, nor any CUDA library, in the process's memory.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", server.pid)).unwrap();
    let cuda_mapped: Vec<&str> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.starts_with(cuda.to_str().unwrap()) || p.contains("libcublas"))
        .collect();
    assert!(cuda_mapped.is_empty(), "mapped: {cuda_mapped:?}");
    // And it serves, on the CPU, with the reference's numbers.
    let (status, info) = http_get(&server.http_addr, "/info").unwrap();
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["device"], "cpu");
    let case = &reference()[0];
    let (status, body) = common::embed(&server.http_addr, &case.text).unwrap();
    assert_eq!(status, 200, "{body}");
    let got: serde_json::Value = serde_json::from_str(&body).unwrap();
    let d = max_abs_diff(&floats(&got[0]), &case.embedding);
    assert!(d < common::TOLERANCE, "{d}");
    server.stop_clean();
}

#[test]
fn device_cpu_does_not_load_the_cuda_half() {
    cuda_half();
    let server = Server::start(experiment(""));
    assert!(mapped(server.pid, "libtorch_cuda.so").is_none());
    let log = server.log();
    assert!(
        log.contains("CUDA libraries not loaded (no model asks for CUDA)"),
        "{log}"
    );
    server.stop_clean();
}

/// Runs the binary on `body` (a `model:` section's extra keys) on ports it would pick and
/// returns its exit code and log, checking it never bound a port.
fn refused(body: &str, envs: &[(&str, &str)]) -> (i32, String) {
    let exp = experiment(&format!(
        "model:\n  path: {}\n{body}",
        common::default_model().display()
    ));
    let (code, log) = run_to_exit_with(
        &[
            "--experiment",
            exp.path.to_str().unwrap(),
            "--http-port",
            "0",
            "--grpc-port",
            "0",
        ],
        envs,
    );
    assert!(
        !log.contains("listening"),
        "bound a port before refusing:\n{log}"
    );
    (code, log)
}

#[test]
fn device_cuda_without_a_driver_exits_2_naming_it() {
    no_driver_here();
    let cuda = cuda_half();
    for device in ["cuda", "cuda:1"] {
        let (code, log) = refused(&format!("  device: {device}\n"), &[]);
        assert_eq!(code, 2, "{log}");
        assert!(
            log.contains(&format!(
                "configuration error: model.device: {}: no NVIDIA driver on this host",
                if device == "cuda" { "cuda:0" } else { device }
            )),
            "{log}"
        );
        // It says what it found of the rest, too: the CUDA half, loaded from the cache with no
        // LD_LIBRARY_PATH (the loader resolved every CUDA library it needs, or it would say so).
        assert!(
            log.contains(&format!(
                "CUDA libraries loaded from {}",
                cuda.join("torch/lib").display()
            )),
            "{log}"
        );
    }
}

#[test]
fn missing_cuda_libraries_are_named_with_how_to_get_them() {
    no_driver_here();
    let (code, log) = refused(
        "  device: cuda\n",
        &[("ACTOR_INFER_CUDA_LIBS", "/nonexistent/torch/lib")],
    );
    assert_eq!(code, 2, "{log}");
    assert!(
        log.contains("libtorch's CUDA libraries are not installed (looked in /nonexistent/torch/lib/libtorch_cuda.so"),
        "{log}"
    );
    assert!(log.contains("ACTOR_INFER_DEVICE=cuda make setup"), "{log}");
    // Under auto the same host serves on the CPU and says why.
    let server = Server::start_with(
        experiment(&format!(
            "model:\n  path: {}\n  device: auto\n",
            common::default_model().display()
        )),
        &[("ACTOR_INFER_CUDA_LIBS", "none")],
    );
    let log = server.log();
    assert!(
        log.contains("CUDA turned off (ACTOR_INFER_CUDA_LIBS=none)"),
        "{log}"
    );
    assert!(mapped(server.pid, "libtorch_cuda.so").is_none());
    server.stop_clean();
}

#[test]
fn f16_where_the_device_is_a_cpu_exits_2() {
    let (code, log) = refused("  device: cpu\n  dtype: f16\n", &[]);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("model.dtype: f16 is for GPUs"), "{log}");
    let (code, log) = refused("  device: mps\n", &[]);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("mps is Apple's GPU"), "{log}");
}

#[test]
fn the_cuda_setup_is_idempotent() {
    let cuda = cuda_half();
    let stamp = std::fs::metadata(cuda.join(".complete"))
        .unwrap()
        .modified()
        .unwrap();
    let out = std::process::Command::new("bash")
        .arg(common::root().join("scripts/setup.sh"))
        .env("ACTOR_INFER_DEVICE", "cuda")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("fetching"), "fetched again:\n{err}");
    assert!(err.contains("(CUDA half: "), "{err}");
    let again = std::fs::metadata(cuda.join(".complete"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(stamp, again, "the CUDA half was rebuilt");
}

#[test]
fn doctor_reports_gpu_memory_per_process_or_why_it_cannot() {
    no_driver_here();
    let (code, out) = run_to_exit_with(&["doctor", "gpu"], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("no NVIDIA driver here (NVML does not load)"),
        "{out}"
    );
    let (_, out) = run_to_exit_with(
        &["doctor", "--http-port", &common::unused_port().to_string()],
        &[],
    );
    assert!(out.contains("== 4. GPU memory per process"), "{out}");
}
