//! Device choice and where the CUDA half is looked for, on made-up probes.

use super::*;

fn probe(cuda_libs: CudaLibs, driver: bool, cuda_devices: usize) -> Probe {
    Probe {
        libtorch: vec![PathBuf::from(
            "/cache/libtorch-2.11.0-cpu/lib/libtorch_cpu.so",
        )],
        cuda_libs,
        driver: driver.then(|| Driver {
            version: "580.95.05".into(),
            cuda: Some("13.0".into()),
        }),
        gpus: (0..cuda_devices as u32)
            .map(|index| GpuInfo {
                index,
                name: "NVIDIA H200".into(),
                used: 1 << 30,
                total: 141 << 30,
                processes: Vec::new(),
            })
            .collect(),
        cuda_devices,
        mps: false,
    }
}

fn loaded() -> CudaLibs {
    CudaLibs::Loaded(PathBuf::from(
        "/cache/libtorch-2.11.0-cuda/torch/lib/libtorch_cuda.so",
    ))
}

#[test]
fn devices_parse_as_written() {
    assert_eq!(Device::parse("cuda"), Ok(Device::Cuda(0)));
    assert_eq!(Device::parse("cuda:3"), Ok(Device::Cuda(3)));
    assert_eq!(Device::parse(" auto "), Ok(Device::Auto));
    assert!(
        Device::parse("gpu")
            .unwrap_err()
            .to_string()
            .contains("`gpu` is not a device")
    );
    assert!(Device::parse("cuda:x").is_err());
}

#[test]
fn auto_takes_the_gpu_when_cuda_sees_one() {
    let c = probe(loaded(), true, 2).resolve(Device::Auto).unwrap();
    assert_eq!(c.device, tch::Device::Cuda(0));
    assert!(c.reason.contains("CUDA sees 2 GPUs"), "{}", c.reason);
    assert!(c.warning.is_none());
}

#[test]
fn auto_serves_on_the_cpu_and_says_why() {
    let c = probe(loaded(), false, 0).resolve(Device::Auto).unwrap();
    assert_eq!(c.device, tch::Device::Cpu);
    assert!(c.reason.contains("no NVIDIA driver"), "{}", c.reason);
    assert!(c.warning.is_none(), "no driver: nothing to fix");
    // A driver but no libraries: a warning that says how to get them.
    let c = probe(CudaLibs::NotFound(vec![]), true, 0)
        .resolve(Device::Auto)
        .unwrap();
    assert_eq!(c.device, tch::Device::Cpu);
    let w = c.warning.expect("a warning");
    assert!(w.contains("ACTOR_INFER_DEVICE=cuda make setup"), "{w}");
}

#[test]
fn auto_loads_the_cuda_half_only_where_a_gpu_may_use_it() {
    use CudaWanted::*;
    // No driver: nothing could use it.
    assert!(!IfGpu.load(false, None));
    assert!(!IfGpu.load(false, Some(0)));
    // A driver, and NVML sees no GPU.
    assert!(!IfGpu.load(true, Some(0)));
    // A driver and a GPU, or a driver whose NVML does not load (cannot tell): load.
    assert!(IfGpu.load(true, Some(1)));
    assert!(IfGpu.load(true, None));
    // `device: cuda` loads it anyway, to say what is missing; `cpu` never.
    assert!(Yes.load(false, None));
    assert!(!No.load(true, Some(8)));
    // Several models: the most any asks for.
    let of = |ds: &[&str]| CudaWanted::of_all(ds.iter().map(|d| Device::parse(d).unwrap()));
    assert_eq!(of(&["cpu", "auto"]), IfGpu);
    assert_eq!(of(&["auto", "cuda:1"]), Yes);
    assert_eq!(of(&["mps"]), No);
    // And the message says why they are not loaded.
    let e = probe(CudaLibs::NoGpu, false, 0)
        .resolve(Device::Auto)
        .unwrap();
    assert!(
        e.reason
            .contains("CUDA libraries not loaded (device: auto, and no GPU here"),
        "{}",
        e.reason
    );
}

#[test]
fn cuda_refusals_name_the_missing_piece() {
    let e = probe(loaded(), false, 0)
        .resolve(Device::Cuda(0))
        .unwrap_err();
    assert!(e.to_string().starts_with("no NVIDIA driver"), "{e}");
    assert!(e.to_string().contains("CUDA libraries loaded from"), "{e}");
    let e = probe(CudaLibs::NotFound(vec![PathBuf::from("/x")]), true, 0)
        .resolve(Device::Cuda(0))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("libtorch's CUDA libraries are not installed (looked in /x"),
        "{e}"
    );
    let e = probe(
        CudaLibs::Failed {
            path: "/c/libtorch_cuda.so".into(),
            error: "libcudnn.so.9: cannot open shared object file".into(),
        },
        true,
        0,
    )
    .resolve(Device::Cuda(0))
    .unwrap_err();
    assert!(e.to_string().contains("libcudnn.so.9"), "{e}");
    let e = probe(loaded(), true, 0)
        .resolve(Device::Cuda(0))
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("CUDA libraries loaded, no GPU visible"),
        "{e}"
    );
    let e = probe(loaded(), true, 1)
        .resolve(Device::Cuda(3))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "cuda:3 was asked for, but CUDA sees 1 device(s): 0: NVIDIA H200"
    );
    assert!(matches!(
        probe(loaded(), true, 1).resolve(Device::Mps),
        Err(DeviceError::NoMps { .. })
    ));
}

#[test]
fn the_cuda_half_is_looked_for_beside_the_cpu_half() {
    let c = cuda_candidates(&[PathBuf::from(
        "/home/u/.cache/actor-infer/libtorch-2.11.0-cpu/lib/libtorch_cpu.so",
    )]);
    assert_eq!(
        c,
        vec![
            PathBuf::from("/home/u/.cache/actor-infer/libtorch-2.11.0-cpu/lib/libtorch_cuda.so"),
            PathBuf::from(
                "/home/u/.cache/actor-infer/libtorch-2.11.0-cuda/torch/lib/libtorch_cuda.so"
            ),
        ]
    );
}

#[test]
fn the_version_is_the_one_setup_fetches() {
    let setup = include_str!("../../../scripts/setup.sh");
    assert!(
        setup.contains(&format!("\nTORCH_VERSION={LIBTORCH_VERSION}\n")),
        "scripts/setup.sh fetches another libtorch than {LIBTORCH_VERSION}"
    );
}
