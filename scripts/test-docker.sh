#!/usr/bin/env bash
# `make test-docker`: the images and compose for real, on a Docker engine (docs/deploy.md).
#   1. A Docker engine: Debian's docker.io, docker-compose and mmdebstrap when missing; dockerd
#      started here when none answers, and stopped again at the end (scripts/_docker.sh).
#   2. The base images, made locally when the engine lacks them (scripts/docker-bases.sh):
#      debian:bookworm-slim, rust:<X.Y>-bookworm (this machine's toolchain) and a Prometheus
#      image from Debian's package.
#   3. docker/Dockerfile and docker/Dockerfile.cuda built from the repository as the README says
#      (`docker build -f docker/Dockerfile -t actor-infer:cpu .`, plus --network host: the
#      engine runs without a bridge), timed. The builds reuse the engine's layer cache: the
#      dependencies' layer is rebuilt only when Cargo.toml, Cargo.lock, build.rs or proto/ change.
#   4. scripts/test_docker.py: the CPU image (size, non-root, HEALTHCHECK, /embed parity,
#      docker stop under load, docker kill), the CUDA image without a GPU (layout, the binary
#      loads the CUDA half, device cuda exits 2), compose with a real Prometheus.
# Figures: target/test-docker/figures.jsonl and report.md. Every container it starts is removed,
# on failure too. Images and the build cache stay (the next run reuses them).
#   KEEP_DOCKERD=1    leave a dockerd started here running
#   REBUILD_BASES=1   remake the base images
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
DOCKER_SAY=test-docker
# shellcheck source=scripts/_docker.sh
source scripts/_docker.sh
out=$root/target/test-docker
mkdir -p "$out"
export FIGURES=$out/figures.jsonl
: >"$FIGURES"
say() { docker_say "$*"; }

cleanup() {
  local rc=$?
  if docker info >/dev/null 2>&1; then
    local ids
    ids=$(docker ps -aq --filter label=org.actor-infer.test)
    ids+=" $(docker ps -a --format '{{.ID}} {{.Label "com.docker.compose.project"}}' | awk '$2 ~ /^actor-infer-test-/ {print $1}')"
    if [ -n "${ids// /}" ]; then
      say "removing containers left by a failed check: $ids"
      # shellcheck disable=SC2086
      docker rm -f -v $ids >/dev/null || true
    fi
  fi
  docker_engine_down || rc=1
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

docker_engine_up
prometheus_image=$(bash scripts/docker-bases.sh | tail -n 1)

build() { # name, dockerfile, tag
  local log=$out/build-$1.log start=$SECONDS
  say "docker build -f $2 -t $3 . (log: $log)"
  # --force-rm: a failed step leaves no intermediate container behind (legacy builder).
  if ! docker build --force-rm --network host -f "$2" -t "$3" . >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    say "FAILED: docker build -f $2"
    return 1
  fi
  local secs=$((SECONDS - start))
  local steps cached
  steps=$(grep -c '^Step ' "$log" || true)
  cached=$(grep -c 'Using cache' "$log" || true)
  say "$3 built in $secs s ($cached of $steps steps from the cache)"
  printf '{"section": "build %s", "dockerfile": "%s", "seconds": %d, "steps": %d, "cached_steps": %d}\n' \
    "$1" "$2" "$secs" "$steps" "$cached" >>"$FIGURES"
}

build cpu docker/Dockerfile actor-infer:cpu
python3 scripts/test_docker.py cpu actor-infer:cpu
build cuda docker/Dockerfile.cuda actor-infer:cuda
python3 scripts/test_docker.py cuda actor-infer:cuda
python3 scripts/test_docker.py compose "$prometheus_image"

python3 - "$FIGURES" "$out/report.md" <<'PY'
import json, platform, subprocess, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
cpu = subprocess.run(["sh", "-c", "nproc; grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                     capture_output=True, text=True).stdout.split("\n")
lines = [f"# make test-docker on {platform.node()} ({cpu[0].strip()} cores,{cpu[1]})", ""]
for r in rows:
    section = r.pop("section")
    lines.append(f"- **{section}**: " + ", ".join(f"{k} {v}" for k, v in r.items()))
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
say "all checks passed (report: $out/report.md)"
