#!/usr/bin/env bash
# `make bench`: the server against the limit, on the default model, in one run.
#   1. the raw in-process forward (tokenize + pad + forward) for batch sizes 1..64: the limit;
#   2. the server, started here, under three workloads over gRPC;
#   3. resident memory sampled during a steady load.
# Prints one table of ratios. Knobs: EXPERIMENT, BENCH_SECONDS (per scenario, default 10),
# MEMORY_SECONDS (default 60; the README's figure uses 300).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_bin.sh"
SECS=${BENCH_SECONDS:-10}
MEM_SECS=${MEMORY_SECONDS:-60}
out=$(mktemp -d -t actor-infer-bench.XXXXXX)
say() { printf '[bench] %s\n' "$*" >&2; }

read -r HTTP_PORT GRPC_PORT < <(python3 - <<'PY'
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])
PY
)
ports=(--http-port "$HTTP_PORT" --grpc-port "$GRPC_PORT")

say "raw limit: ${SECS}s over batch sizes 1..64"
"$BIN" bench --experiment "$EXPERIMENT" --raw --duration-seconds "$((SECS * 2))" --json >"$out/raw.json"

"$BIN" --experiment "$EXPERIMENT" "${ports[@]}" >"$out/server.log" 2>&1 &
PID=$!
PEER_PID=""
cleanup() {
  kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true
  [ -z "$PEER_PID" ] || { kill -TERM "$PEER_PID" 2>/dev/null || true; wait "$PEER_PID" 2>/dev/null || true; }
}
trap cleanup EXIT
for _ in $(seq 600); do
  curl -fsS "http://127.0.0.1:$HTTP_PORT/ready" >/dev/null 2>&1 && break
  kill -0 "$PID" 2>/dev/null || { say "server died:"; tail "$out/server.log" >&2; exit 1; }
  sleep 0.1
done

run() { # name, bench args...
  local name=$1; shift
  say "server: $name"
  "$BIN" bench --experiment "$EXPERIMENT" "${ports[@]}" --duration-seconds "$SECS" --json "$@" >"$out/$name.json"
}
run c32 --concurrency 32 --texts-per-request 1 --tokens 12
run c1 --concurrency 1 --texts-per-request 1 --tokens 12
run large --concurrency 4 --texts-per-request 64 --tokens 12

# A flood of GET /metrics (JSON) during HTTP load: 32 clients posting one sentence to /embed,
# alone and then with 4 connections scraping /metrics back to back.
flood() { # name, port, extra args
  local name=$1 port=$2; shift 2
  say "$name: 32 HTTP clients on /embed, then the same with 4 connections flooding /metrics"
  "$BIN" bench --http-port "$port" --grpc-port "$GRPC_PORT" --transport http --http-route tei \
    --concurrency 32 --tokens 12 --duration-seconds "$SECS" --json "$@" >"$out/$name-alone.json"
  "$BIN" bench --http-port "$port" --grpc-port "$GRPC_PORT" --transport http --http-route tei \
    --concurrency 32 --tokens 12 --duration-seconds "$SECS" --flood-metrics 4 --json "$@" \
    >"$out/$name-flood.json"
}
flood flood "$HTTP_PORT"
# The peer (TEI with ONNX Runtime) under the same flood, in the same run, when it is here.
PEER_RUN=${PEER_RUN:-$root/../shared/anchors/tei-ort/run.sh}
if [ -x "$PEER_RUN" ] || [ -f "$PEER_RUN" ]; then
  read -r PEER_PORT _ < <(python3 - <<'PY'
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1], 0)
PY
)
  bash "$PEER_RUN" "$root/models/all-MiniLM-L6-v2" "$PEER_PORT" >"$out/peer.log" 2>&1 &
  PEER_PID=$!
  for _ in $(seq 1200); do
    curl -fsS "http://127.0.0.1:$PEER_PORT/health" >/dev/null 2>&1 && break
    kill -0 "$PEER_PID" 2>/dev/null || break
    sleep 0.1
  done
  if curl -fsS "http://127.0.0.1:$PEER_PORT/health" >/dev/null 2>&1; then
    flood peer-flood "$PEER_PORT"
  else
    say "the peer did not start (see $out/peer.log)"
  fi
  kill -TERM "$PEER_PID" 2>/dev/null || true
  wait "$PEER_PID" 2>/dev/null || true
fi

say "memory: ${MEM_SECS}s of load at concurrency 8, sampling resident memory"
rss() { curl -fsS "http://127.0.0.1:$HTTP_PORT/metrics?format=json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["rss_mb"])'; }
echo "$(rss)" >"$out/rss.txt"
"$BIN" bench --experiment "$EXPERIMENT" "${ports[@]}" --concurrency 8 --tokens 8-64 \
  --duration-seconds "$MEM_SECS" --json >"$out/mem.json" &
BPID=$!
while kill -0 "$BPID" 2>/dev/null; do sleep 5; rss >>"$out/rss.txt" || true; done
wait "$BPID"
rss >>"$out/rss.txt"

python3 - "$out" "$MEM_SECS" <<'PY'
import json, os, sys, platform, subprocess
d, mem_secs = sys.argv[1], sys.argv[2]
j = lambda n: json.load(open(os.path.join(d, n + ".json")))
raw, c32, c1, large = j("raw"), j("c32"), j("c1"), j("large")
by = {b["batch_size"]: b for b in raw["batches"]}
best = raw["best"]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
rss = [float(x) for x in open(os.path.join(d, "rss.txt")).read().split()]
print(f"machine: {os.cpu_count()} cores, {cpu}; device {raw['device']}, {raw['intra_op_threads']} intra-op threads")
print(f"raw limit: best {best['texts_per_s']:.1f} texts/s at batch {best['batch_size']}; batch 1 forward p50 {by[1]['batch_ms_p50']:.2f} ms")
print()
print(f"| scenario | server | limit | ratio | target |")
print(f"|---|---|---|---|---|")
r1 = c32["texts_per_s"] / best["texts_per_s"]
print(f"| concurrency 32, 1 text of ~12 tokens | {c32['texts_per_s']:.1f} texts/s | {best['texts_per_s']:.1f} texts/s (best batch) | {r1:.2f} | >= 0.85 {'ok' if r1 >= 0.85 else 'MISSED'} |")
lat = c1["latency_ms"]["p50"]; lim = by[1]["batch_ms_p50"]
print(f"| concurrency 1, p50 latency | {lat:.2f} ms | {lim:.2f} ms (batch-1 forward) | +{lat - lim:.2f} ms | <= +1 ms {'ok' if lat - lim <= 1.0 else 'MISSED'} |")
b64 = by.get(64, best)
r3 = large["texts_per_s"] / b64["texts_per_s"]
print(f"| concurrency 4, 64 texts/request | {large['texts_per_s']:.1f} texts/s | {b64['texts_per_s']:.1f} texts/s (batch 64) | {r3:.2f} | >= 0.9 {'ok' if r3 >= 0.9 else 'MISSED'} |")
grow = rss[-1] - rss[1] if len(rss) > 2 else 0.0
print(f"| memory, {mem_secs} s of load | peak {max(rss):.0f} MiB, start {rss[0]:.0f}, end {rss[-1]:.0f} (growth after warm-up {grow:+.1f} MiB) | | | < 1024 MiB {'ok' if max(rss) < 1024 else 'MISSED'} |")
print()
def flood_line(name, label):
    try:
        alone, flood = j(name + "-alone"), j(name + "-flood")
    except OSError:
        return None
    cost = flood["requests_per_s"] / alone["requests_per_s"] - 1
    print(f"| {label}: 32 clients on /embed, + 4 connections flooding /metrics | {alone['requests_per_s']:.1f} -> {flood['requests_per_s']:.1f} req/s ({flood['metrics_scrapes_per_s']:.0f} scrapes/s) | {cost * 100:+.0f}% |")
    return cost
print()
print("| metrics flood | /embed throughput alone -> flooded | cost |")
print("|---|---|---|")
ours = flood_line("flood", "actor-infer")
peer = flood_line("peer-flood", "TEI-ORT (peer)")
if ours is not None and peer is not None:
    print(f"\nmetrics flood: actor-infer loses {-ours * 100:.0f}%, the peer {-peer * 100:.0f}% ({'below' if ours > peer else 'NOT below'} the peer's cost)")
print()
for name, r in (("c32", c32), ("c1", c1), ("large", large)):
    print(f"{name}: server stages {json.dumps({k: round(v, 2) for k, v in (r.get('server') or {}).items()})}, latency p50/p99 {r['latency_ms']['p50']:.1f}/{r['latency_ms']['p99']:.1f} ms, errors {r['errors']}")
PY
say "raw JSON and logs in $out"
