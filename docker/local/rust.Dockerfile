# The Rust build image docker/Dockerfile starts from (rust:<version>-bookworm), made locally by
# scripts/docker-bases.sh where Docker Hub cannot be reached: the local Debian base, the C/C++
# tools the official image's buildpack-deps base brings that this build uses, and the host's own
# Rust toolchain (rustup and one toolchain, without its HTML docs) laid out as the official image
# lays it out (RUSTUP_HOME=/usr/local/rustup, CARGO_HOME=/usr/local/cargo).
# Build context: a folder holding toolchain/ (the toolchain) and rustup (the rustup binary).
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl git gcc g++ libc6-dev make \
      pkg-config xz-utils \
 && rm -rf /var/lib/apt/lists/*
ARG RUST_VERSION
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    RUST_VERSION=${RUST_VERSION}
COPY toolchain /usr/local/rustup/toolchains/${RUST_VERSION}-x86_64-unknown-linux-gnu
COPY rustup /usr/local/cargo/bin/rustup
RUN printf 'version = "12"\ndefault_toolchain = "%s-x86_64-unknown-linux-gnu"\nprofile = "minimal"\nauto_self_update = "disable"\n' \
      "$RUST_VERSION" >/usr/local/rustup/settings.toml \
 && for p in cargo cargo-clippy cargo-fmt clippy-driver rustc rustdoc rustfmt; do \
      ln -s rustup /usr/local/cargo/bin/$p; done \
 && rustc --version && cargo --version
