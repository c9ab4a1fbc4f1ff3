#!/usr/bin/env bash
# docs/cpu-forward.md "Resident memory": where the server's resident memory goes. Starts the
# server (EXPERIMENT, default configs/default.yaml; the environment's ACTOR_INFER_* and
# MALLOC_* variables pass through), and the peer beside it when PEER=1 (TEI-ORT, by
# ../shared/anchors/tei-ort/run.sh), drives each through `make bench`'s load (HTTP /embed: 32
# clients with one ~12-token text, then 4 clients with 64 texts per request; SECS seconds each,
# default 5), then prints for each process its peak (VmHWM) and current resident memory and the
# current resident memory by kind of mapping from /proc/PID/smaps: anonymous memory (heap and
# malloc arenas, thread stacks, tensors, the packed weights), each shared library's pages
# (libtorch, MKL/oneDNN, libgomp, ...), the executable, other files. Stops what it started.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_bin.sh"
. "$(dirname "${BASH_SOURCE[0]}")/_procs.sh"
SECS=${SECS:-5}
out=$(mktemp -d -t actor-infer-rss.XXXXXX)
trap stop_all EXIT
wait_ready() { # url, pid
  for _ in $(seq 1200); do
    curl -fsS "$1" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
# The process's resident memory by mapping kind, MiB, from smaps.
breakdown() { # pid, name
  python3 - "$1" "$2" <<'PY'
import collections, re, sys
pid, name = sys.argv[1], sys.argv[2]
st = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status"))
kb = lambda k: int(st[k.rstrip(":")].split()[0]) / 1024
by = collections.Counter()
cur = None
for line in open(f"/proc/{pid}/smaps"):
    if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
        parts = line.split(None, 5)
        path = parts[5].strip() if len(parts) > 5 else ""
        if not path:
            cur = "anonymous (heap, malloc arenas, tensors, packed weights)"
        elif path in ("[heap]",):
            cur = "anonymous (heap, malloc arenas, tensors, packed weights)"
        elif path.startswith("[stack"):
            cur = "stacks"
        elif path.startswith("["):
            cur = "other " + path
        else:
            base = path.rsplit("/", 1)[-1]
            if ".so" in base:
                cur = "lib " + re.sub(r"(\.so).*", r"\1", base)
            else:
                cur = "file " + base
    elif line.startswith("Rss:") and cur:
        by[cur] += int(line.split()[1]) / 1024
print(f"{name}: peak RSS (VmHWM) {kb('VmHWM:'):.0f} MiB, RSS now {kb('VmRSS:'):.0f} MiB "
      f"(anonymous {kb('RssAnon:'):.0f}, file-backed {kb('RssFile:'):.0f}), threads {st['Threads'].strip()}")
for k, v in by.most_common():
    if v >= 1:
        print(f"  {v:7.1f} MiB  {k}")
rest = sum(v for v in by.values() if v < 1)
print(f"  {rest:7.1f} MiB  everything under 1 MiB each")
PY
}
load() { # port
  local a=(--http-port "$1" --grpc-port 1 --transport http --http-route tei --tokens 12
    --duration-seconds "$SECS")
  "$BIN" bench "${a[@]}" --concurrency 32 --texts-per-request 1 >"$out/c32.txt" 2>&1
  "$BIN" bench "${a[@]}" --concurrency 4 --texts-per-request 64 >"$out/large.txt" 2>&1
}
port=$(free_port)
"$BIN" --experiment "$EXPERIMENT" --http-port "$port" --grpc-port "$(free_port)" >"$out/server.log" 2>&1 &
pid=$!; PIDS+=("$pid")
wait_ready "http://127.0.0.1:$port/ready" "$pid" || { tail "$out/server.log"; exit 1; }
breakdown "$pid" "actor-infer after start"
load "$port"
breakdown "$pid" "actor-infer after the load"
if [ "${PEER:-0}" = 1 ]; then
  pport=$(free_port)
  bash "$root/../shared/anchors/tei-ort/run.sh" "$root/models/all-MiniLM-L6-v2" "$pport" >"$out/peer.log" 2>&1 &
  ppid=$!; PIDS+=("$ppid")
  wait_ready "http://127.0.0.1:$pport/health" "$ppid" || { tail "$out/peer.log"; exit 1; }
  load "$pport"
  breakdown "$ppid" "TEI-ORT after the load"
fi
