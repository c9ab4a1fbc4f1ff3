#!/usr/bin/env bash
# What OpenTelemetry export costs serving, in one run: two servers on the default model, one with
# telemetry off and one exporting every request's spans (sampling 1.0) to an OTLP endpoint where
# no collector listens (the case issue 15 asks about: a collector that is down must cost no
# request and not slow serving). The same HTTP loads go to each in turn, ROUNDS times
# interleaved, so the machine's drift falls on both; prints requests/s and latency per round and
# the ratio. Knobs: ROUNDS (3), BENCH_SECONDS (8 per load), EXPERIMENT.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_bin.sh"
SECS=${BENCH_SECONDS:-8}
ROUNDS=${ROUNDS:-3}
out=$(mktemp -d -t actor-infer-bench-telemetry.XXXXXX)
say() { printf '[bench-telemetry] %s\n' "$*" >&2; }

read -r OFF_HTTP OFF_GRPC ON_HTTP ON_GRPC DEAD < <(python3 - <<'PY'
import socket
s = [socket.socket() for _ in range(5)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])
PY
)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

start() { # name, http port, grpc port, env...
  local name=$1 http=$2 grpc=$3; shift 3
  env "$@" "$BIN" --experiment "$EXPERIMENT" --http-port "$http" --grpc-port "$grpc" \
    >"$out/$name.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1200); do
    curl -fsS "http://127.0.0.1:$http/ready" >/dev/null 2>&1 && return 0
    kill -0 "${PIDS[-1]}" 2>/dev/null || { say "$name died:"; tail "$out/$name.log" >&2; exit 1; }
    sleep 0.1
  done
  say "$name not ready"; exit 1
}
start off "$OFF_HTTP" "$OFF_GRPC"
# DEAD is a port bound a moment ago and released: nothing listens there.
start down "$ON_HTTP" "$ON_GRPC" ACTOR_INFER__TELEMETRY__OTLP_ENDPOINT="http://127.0.0.1:$DEAD" \
  ACTOR_INFER__TELEMETRY__SAMPLING_RATIO=1.0 OTEL_BSP_SCHEDULE_DELAY=200

load() { # name, port, round, concurrency
  "$BIN" bench --http-port "$2" --grpc-port 1 --transport http --http-route tei \
    --concurrency "$4" --tokens 12 --duration-seconds "$SECS" --json >"$out/$1-c$4-$3.json"
}
for r in $(seq "$ROUNDS"); do
  for c in 32 1; do
    say "round $r/$ROUNDS: concurrency $c, telemetry off, then exporting to a collector that is down"
    load off "$OFF_HTTP" "$r" "$c"
    load down "$ON_HTTP" "$r" "$c"
  done
done

python3 - "$out" "$ROUNDS" <<'PY'
import json, os, sys, statistics
d, rounds = sys.argv[1], int(sys.argv[2])
j = lambda n: json.load(open(os.path.join(d, n + ".json")))
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"machine: {os.cpu_count()} cores, {cpu}")
print("| load | round | telemetry off | exporting, collector down | ratio | errors (off/down) |")
print("|---|---|---|---|---|---|")
for c, key, unit, fmt in ((32, "requests_per_s", "req/s", lambda r: r["requests_per_s"]),
                          (1, "p50", "ms p50", lambda r: r["latency_ms"]["p50"])):
    ratios = []
    for r in range(1, rounds + 1):
        off, down = j(f"off-c{c}-{r}"), j(f"down-c{c}-{r}")
        ratio = fmt(down) / fmt(off)
        ratios.append(ratio)
        print(f"| concurrency {c} | {r} | {fmt(off):.2f} {unit} | {fmt(down):.2f} {unit} | {ratio:.3f} | {off['errors']}/{down['errors']} |")
    print(f"| concurrency {c} | median | | | {statistics.median(ratios):.3f} | |")
PY
grep -c "cannot export spans" "$out/down.log" | xargs -I{} echo "export warnings logged by the exporting server: {}"
say "logs and JSON in $out"
