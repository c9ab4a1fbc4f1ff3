# Sourced by scripts/docker-bases.sh and scripts/test-docker.sh: a Docker engine to talk to.
# - Debian's docker.io (the engine, dockerd 20.10), docker-compose (Compose 1.29) and mmdebstrap
#   (for the local Debian base) are installed with apt-get when missing (root, as on CI).
# - If no engine answers, dockerd is started here, in the background, without a bridge or
#   iptables rules and without touching the host's ip_forward: containers run on the host's
#   network (--network host), so test traffic stays on 127.0.0.1 and no 172.x address is made.
#   docker_engine_down stops it again at the end (KEEP_DOCKERD=1 leaves it running); an engine
#   that was already running is left alone.
# shellcheck shell=bash
docker_say() { printf '[%s] %s\n' "${DOCKER_SAY:-docker}" "$*" >&2; }
docker_started_pid=""

docker_install_missing() {
  local missing=()
  [ -x /usr/sbin/dockerd ] || missing+=(docker.io)
  command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
  command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
  if [ ${#missing[@]} -gt 0 ]; then
    docker_say "installing with apt-get: ${missing[*]}"
    local sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
    DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

docker_engine_up() {
  docker_install_missing
  if docker info >/dev/null 2>&1; then
    docker_say "using the running Docker engine ($(docker version -f '{{.Server.Version}}'))"
    return
  fi
  local log=${ACTOR_INFER_CACHE:-$HOME/.cache/actor-infer}/dockerd.log
  mkdir -p "$(dirname "$log")"
  docker_say "no Docker engine answers: starting dockerd (log: $log)"
  /usr/sbin/dockerd --bridge=none --iptables=false --ip-forward=false --ip-masq=false \
    >"$log" 2>&1 &
  docker_started_pid=$!
  for _ in $(seq 1 100); do
    docker info >/dev/null 2>&1 && { docker_say "dockerd $(docker version -f '{{.Server.Version}}') ready (pid $docker_started_pid)"; return; }
    kill -0 "$docker_started_pid" 2>/dev/null || { tail -20 "$log" >&2; docker_say "dockerd exited"; return 1; }
    sleep 0.2
  done
  docker_say "dockerd did not answer in 20 s"; tail -20 "$log" >&2
  return 1
}

docker_engine_down() {
  [ -n "$docker_started_pid" ] || return 0
  if [ "${KEEP_DOCKERD:-0}" = 1 ]; then
    docker_say "leaving dockerd running (pid $docker_started_pid, KEEP_DOCKERD=1)"
    return 0
  fi
  kill -TERM "$docker_started_pid" 2>/dev/null || return 0
  for _ in $(seq 1 150); do
    kill -0 "$docker_started_pid" 2>/dev/null || { docker_say "stopped the dockerd started here"; docker_started_pid=""; return 0; }
    sleep 0.2
  done
  docker_say "dockerd (pid $docker_started_pid) did not stop in 30 s"
  return 1
}
