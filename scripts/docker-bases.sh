#!/usr/bin/env bash
# The base images docker/Dockerfile, docker/Dockerfile.cuda and docker/compose.yml start from,
# made locally where no image registry can be reached (this project's machines reach package
# registries only). Each is made only when the engine lacks it (REBUILD_BASES=1 remakes them):
#   debian:bookworm-slim     mmdebstrap --variant=minbase bookworm from Debian's mirror, imported
#                            (no man pages, docs or locales, as in Debian's slim images), with this
#                            machine's extra CA certificates (/usr/local/share/ca-certificates):
#                            where TLS to the registries goes through an inspecting proxy, pip and
#                            cargo inside the builds trust it as the host does, once the
#                            ca-certificates package is installed (the Rust image does)
#   rust:<X.Y>-bookworm      docker/local/rust.Dockerfile: that base, gcc/g++, and this machine's
#                            Rust toolchain (rustc --version), as the official image lays it out
#   actor-infer-local/prometheus:<version>
#                            docker/local/prometheus.Dockerfile: Debian's `prometheus` package
# Prints the Prometheus image's name on stdout (the last line). Needs a running engine
# (scripts/_docker.sh); scripts/test-docker.sh runs this first.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DOCKER_SAY=docker-bases
# shellcheck source=scripts/_docker.sh
source "$root/scripts/_docker.sh"
docker info >/dev/null 2>&1 || { docker_say "no Docker engine answers (scripts/test-docker.sh starts one)"; exit 1; }
have() { [ "${REBUILD_BASES:-0}" != 1 ] && docker image inspect "$1" >/dev/null 2>&1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# ---------------------------------------------------------------- Debian
if ! have debian:bookworm-slim; then
  docker_say "debian:bookworm-slim: mmdebstrap --variant=minbase bookworm"
  start=$SECONDS
  cas=()
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    # shellcheck disable=SC2016 # mmdebstrap's hook gets the chroot as $1
    cas=(--customize-hook='mkdir -p "$1/usr/local/share/ca-certificates"'
         --customize-hook='sync-in /usr/local/share/ca-certificates /usr/local/share/ca-certificates')
  fi
  mmdebstrap --variant=minbase --quiet "${cas[@]}" \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    bookworm "$tmp/debian.tar" \
    "deb http://deb.debian.org/debian bookworm main" \
    "deb http://deb.debian.org/debian bookworm-updates main" \
    "deb http://deb.debian.org/debian-security bookworm-security main"
  docker import --change 'CMD ["bash"]' --message "mmdebstrap --variant=minbase bookworm (scripts/docker-bases.sh)" \
    "$tmp/debian.tar" debian:bookworm-slim >/dev/null
  rm -f "$tmp/debian.tar"
  docker_say "debian:bookworm-slim made in $((SECONDS - start)) s"
fi

# ---------------------------------------------------------------- Rust
sysroot=$(rustc --print sysroot)
version=$(rustc --version | awk '{print $2}')        # e.g. 1.95.0
short=${version%.*}                                  # 1.95, docker/Dockerfile's RUST_VERSION
want=$(sed -n 's/^ARG RUST_VERSION=//p' "$root/docker/Dockerfile")
[ "$short" = "$want" ] || docker_say "warning: this machine's Rust is $version, docker/Dockerfile asks for $want"
if ! have "rust:$short-bookworm"; then
  docker_say "rust:$short-bookworm: this machine's toolchain ($sysroot, rustc $version)"
  start=$SECONDS
  # The context is streamed as a tar: the toolchain without its HTML docs, and rustup.
  tar -c -f - --owner=0 --group=0 \
      -C "$root/docker/local" --transform 's,^rust.Dockerfile$,Dockerfile,' rust.Dockerfile \
      -C "$(dirname "$(command -v rustup)")" --dereference rustup \
      -C "$(dirname "$sysroot")" --exclude='*/share/doc' \
      --transform "s,^$(basename "$sysroot"),toolchain," "$(basename "$sysroot")" \
    | docker build --quiet --network host --build-arg "RUST_VERSION=$version" \
        -t "rust:$short-bookworm" -t "rust:$version-bookworm" - >/dev/null
  docker_say "rust:$short-bookworm made in $((SECONDS - start)) s"
fi

# ---------------------------------------------------------------- Prometheus
prom_version=$(apt-cache policy prometheus | sed -n 's/^ *Candidate: \([0-9.]*\).*/\1/p')
[ -n "$prom_version" ] || { docker_say "apt-cache knows no prometheus package"; exit 1; }
prom="actor-infer-local/prometheus:$prom_version"
if ! have "$prom"; then
  docker_say "$prom: Debian's prometheus package"
  start=$SECONDS
  docker build --quiet --network host -t "$prom" -f "$root/docker/local/prometheus.Dockerfile" \
    "$root/docker/local" >/dev/null
  docker_say "$prom made in $((SECONDS - start)) s"
fi
echo "$prom"
