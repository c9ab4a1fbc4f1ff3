//! Build script: compiles `proto/` for tonic (with a descriptor set for gRPC reflection) and
//! gives every binary of this package (the server, test and bench binaries) an rpath to
//! libtorch, so none of them needs `LD_LIBRARY_PATH`.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // ---- gRPC: protoc comes from the protoc-bin-vendored crate, so no system protoc is needed.
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut prost_config = tonic_prost_build::Config::new();
    prost_config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("actor_infer_descriptor.bin"))
        .compile_with_config(
            prost_config,
            &[
                "proto/actor_infer/v1/inference.proto",
                "proto/tei/v1/tei.proto",
            ],
            &["proto"],
        )?;
    // The Open Inference Protocol (KServe v2 / Triton), with its own descriptor set for
    // reflection (src/api/v2_grpc.rs).
    let mut prost_config = tonic_prost_build::Config::new();
    prost_config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_client(false)
        .file_descriptor_set_path(out_dir.join("inference_descriptor.bin"))
        .compile_with_config(
            prost_config,
            &["proto/inference/grpc_service.proto"],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");

    // ---- rpath to libtorch. LIBTORCH is set by .cargo/config.toml to the ./libtorch link that
    // scripts/setup.sh makes; the link is resolved so binaries keep working from anywhere.
    // `$ORIGIN/../lib` (`@loader_path/../lib` on macOS, where the dynamic loader spells it so)
    // serves packaged layouts (bin/actor-infer beside lib/libtorch*, as in the Docker image).
    // The macOS arm64 path (setup.sh picks the macOS wheel, whose libtorch has MPS) is written
    // with care but has never run: this project has no Mac.
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(libtorch) = env::var("LIBTORCH") {
        let lib = PathBuf::from(&libtorch).join("lib");
        let lib = lib.canonicalize().unwrap_or(lib);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
    // src/model/mkl.rs: the executable's `mkl_serv_intel_cpu_true` must be in its dynamic
    // symbol table for libtorch's MKL to call it instead of its own.
    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64")
    {
        println!("cargo:rustc-link-arg=-Wl,--export-dynamic-symbol=mkl_serv_intel_cpu_true");
    }
    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("macos") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,@loader_path/../lib");
    } else {
        println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../lib");
    }
    Ok(())
}
