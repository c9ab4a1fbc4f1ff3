#!/usr/bin/env bash
# How the model workers' OpenMP threads behave inside the server (issue 16): the server started
# several ways, interleaved over ROUNDS rounds, each driven over gRPC at concurrency 1 and 32
# (one ~12-token text per request, BENCH_SECONDS each), beside the raw batch-1 forward measured
# in the same round. Prints one line per variant: medians over the rounds.
#   default       what `make run` does
#   passive       OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep at once instead of spinning
#   active        OMP_WAIT_POLICY=ACTIVE: they spin between forwards and never sleep
#   one-thread    model.intra_op_threads: 1
# Knobs: EXPERIMENT (default configs/default.yaml), BENCH_SECONDS (8), ROUNDS (2), VARIANTS.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_bin.sh"
SECS=${BENCH_SECONDS:-8}
ROUNDS=${ROUNDS:-2}
VARIANTS=${VARIANTS:-"default passive active one-thread"}
out=$(mktemp -d -t actor-infer-threads.XXXXXX)
say() { printf '[threads] %s\n' "$*" >&2; }
PID=""
cleanup() { [ -z "$PID" ] || { kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }; }
trap cleanup EXIT

ports() {
  python3 -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])'
}

for round in $(seq "$ROUNDS"); do
  say "round $round: raw batch-1 forward"
  "$BIN" bench --experiment "$EXPERIMENT" --raw --batch-sizes 1 --duration-seconds "$SECS" --json \
    >"$out/raw-$round.json"
  for v in $VARIANTS; do
    read -r HTTP GRPC < <(ports)
    env=()
    exp=$EXPERIMENT
    case $v in
      default) ;;
      passive) env=(OMP_WAIT_POLICY=PASSIVE) ;;
      active) env=(OMP_WAIT_POLICY=ACTIVE) ;;
      one-thread) env=(ACTOR_INFER__MODEL__INTRA_OP_THREADS=1) ;;
      *) say "unknown variant $v"; exit 2 ;;
    esac
    say "round $round: $v"
    env "${env[@]}" "$BIN" --experiment "$exp" --http-port "$HTTP" --grpc-port "$GRPC" \
      >"$out/server-$v-$round.log" 2>&1 &
    PID=$!
    for _ in $(seq 600); do
      curl -fsS "http://127.0.0.1:$HTTP/ready" >/dev/null 2>&1 && break
      kill -0 "$PID" 2>/dev/null || { say "server died:"; tail "$out/server-$v-$round.log" >&2; exit 1; }
      sleep 0.1
    done
    for c in 1 32; do
      "$BIN" bench --experiment "$EXPERIMENT" --http-port "$HTTP" --grpc-port "$GRPC" \
        --concurrency "$c" --texts-per-request 1 --tokens 12 --duration-seconds "$SECS" --json \
        >"$out/$v-$round-c$c.json"
    done
    cleanup
    PID=""
  done
done

python3 - "$out" "$ROUNDS" "$VARIANTS" <<'PY'
import json, os, statistics, sys
d, rounds, variants = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
load = lambda p: json.load(open(os.path.join(d, p)))
raw = [load(f"raw-{r}.json")["batches"][0] for r in range(1, rounds + 1)]
raw_p50 = statistics.median(b["batch_ms_p50"] for b in raw)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"machine: {os.cpu_count()} cores, {cpu}; {rounds} rounds, medians; raw batch-1 forward p50 {raw_p50:.2f} ms")
print("| variant | c=1 p50 ms | c=1 over raw | c=1 server inference ms | c=32 texts/s | errors |")
print("|---|---|---|---|---|---|")
for v in variants:
    c1 = [load(f"{v}-{r}-c1.json") for r in range(1, rounds + 1)]
    c32 = [load(f"{v}-{r}-c32.json") for r in range(1, rounds + 1)]
    p50 = statistics.median(x["latency_ms"]["p50"] for x in c1)
    inf = [x["server"].get("avg_inference_ms") if isinstance(x.get("server"), dict) else None for x in c1]
    inf = [i for i in inf if i is not None]
    tput = statistics.median(x["texts_per_s"] for x in c32)
    errs = sum(sum(x["errors"].values()) if isinstance(x["errors"], dict) else x["errors"] for x in c1 + c32)
    inf_s = f"{statistics.median(inf):.2f}" if inf else "n/a"
    print(f"| {v} | {p50:.2f} | {p50 - raw_p50:+.2f} | {inf_s} | {tput:.1f} | {errs} |")
PY
