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

# HTTP, one TEI-style `POST /embed` per request: how users compare servers. Run on ours and on
# the peer with the same arguments, so the two are side by side; peak resident memory of the
# process (from /proc) is sampled during each scenario.
peak_rss() { # pid: the largest VmHWM/VmRSS seen, in MiB
  awk '/^VmHWM:/ {print $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo 0
}
http_scenarios() { # prefix, port, pid
  local prefix=$1 port=$2 pid=$3
  say "$prefix: HTTP /embed at concurrency 32 and 1, and 64 texts per request at concurrency 4"
  local common=(--http-port "$port" --grpc-port "$GRPC_PORT" --transport http --http-route tei
    --duration-seconds "$SECS" --json)
  "$BIN" bench "${common[@]}" --concurrency 32 --texts-per-request 1 --tokens 12 >"$out/$prefix-c32.json"
  "$BIN" bench "${common[@]}" --concurrency 1 --texts-per-request 1 --tokens 12 >"$out/$prefix-c1.json"
  "$BIN" bench "${common[@]}" --concurrency 4 --texts-per-request 64 --tokens 12 >"$out/$prefix-large.json"
  peak_rss "$pid" >"$out/$prefix-rss.txt"
}
http_scenarios http "$HTTP_PORT" "$PID"

# The peer (TEI with ONNX Runtime), in the same run, when it is here: PEER_URL (a server
# already running, e.g. http://127.0.0.1:18080; no memory figure then) or PEER_RUN (a script
# taking MODEL_DIR PORT, by default ../shared/anchors/tei-ort/run.sh).
PEER_RUN=${PEER_RUN:-$root/../shared/anchors/tei-ort/run.sh}
PEER_PORT=""
if [ -n "${PEER_URL:-}" ]; then
  PEER_PORT=${PEER_URL##*:}; PEER_PORT=${PEER_PORT%%/*}
elif [ -x "$PEER_RUN" ] || [ -f "$PEER_RUN" ]; then
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
fi
if [ -n "$PEER_PORT" ] && curl -fsS "http://127.0.0.1:$PEER_PORT/health" >/dev/null 2>&1; then
  flood peer-flood "$PEER_PORT"
  http_scenarios peer "$PEER_PORT" "${PEER_PID:-0}"
elif [ -n "$PEER_PORT" ]; then
  # A peer binary built for another CPU dies at once (SIGILL, exit 132): say so.
  rc=0; [ -z "$PEER_PID" ] || wait "$PEER_PID" 2>/dev/null || rc=$?
  PEER_PID=""
  say "the peer did not start (exit $rc; see $out/peer.log)"
  echo "exit $rc" >"$out/peer-failed.txt"
fi
if [ -n "$PEER_PID" ]; then
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
# Side by side with the peer over HTTP (issue 16's targets), when it ran.
def jo(n):
    try:
        return j(n)
    except OSError:
        return None
def rss_of(prefix):
    try:
        return float(open(os.path.join(d, prefix + "-rss.txt")).read().split()[0])
    except (OSError, IndexError, ValueError):
        return 0.0
ours_h = {k: jo("http-" + k) for k in ("c32", "c1", "large")}
peer_h = {k: jo("peer-" + k) for k in ("c32", "c1", "large")}
print("| HTTP /embed scenario | actor-infer | TEI-ORT (peer) | ratio | target |")
print("|---|---|---|---|---|")
def row(label, k, field, unit, target, better):
    o, p = ours_h[k], peer_h[k]
    if o is None:
        return
    ov = o["latency_ms"]["p50"] if field == "p50" else o[field]
    if p is None:
        print(f"| {label} | {ov:.2f} {unit} | not measured | | {target} |")
        return
    pv = p["latency_ms"]["p50"] if field == "p50" else p[field]
    ratio = ov / pv if pv else float("nan")
    ok = better(ratio)
    print(f"| {label} | {ov:.2f} {unit} | {pv:.2f} {unit} | {ratio:.2f} | {target} {'ok' if ok else 'MISSED'} |")
row("concurrency 32, 1 text", "c32", "requests_per_s", "req/s", ">= 1.2", lambda r: r >= 1.2)
row("concurrency 1, p50 latency", "c1", "p50", "ms", "<= 1.0", lambda r: r <= 1.0)
row("concurrency 4, 64 texts/request", "large", "texts_per_s", "texts/s", ">= 1.2", lambda r: r >= 1.2)
ro, rp = rss_of("http"), rss_of("peer")
if ro and rp:
    print(f"| peak RSS after the HTTP scenarios | {ro:.0f} MiB | {rp:.0f} MiB | {ro / rp:.2f} | <= 1.5 {'ok' if ro / rp <= 1.5 else 'MISSED'} |")
if os.path.exists(os.path.join(d, "peer-failed.txt")):
    print(f"\nthe peer did not start ({open(os.path.join(d, 'peer-failed.txt')).read().strip()}; exit 132 is SIGILL: a binary built for another CPU)")
print()
for name, r in (("c32", c32), ("c1", c1), ("large", large)):
    print(f"{name}: server stages {json.dumps({k: round(v, 2) for k, v in (r.get('server') or {}).items()})}, latency p50/p99 {r['latency_ms']['p50']:.1f}/{r['latency_ms']['p99']:.1f} ms, errors {r['errors']}")
PY
say "raw JSON and logs in $out"
cleanup; PRIORITY_SECONDS=${PRIORITY_SECONDS:-$SECS} bash "$root/scripts/bench-priority.sh"  # issue 23: queries beside a bulk job, ours and the peer
