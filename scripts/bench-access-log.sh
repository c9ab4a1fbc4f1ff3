#!/usr/bin/env bash
# What the access log costs (part of `make bench`): the server with `logging.access_log: true`
# (the default) and with `false`, each serving 32 HTTP clients that post one ~12-token text to
# /embed, interleaved over ROUNDS rounds (default 3) so that a shared machine's drift falls on
# both alike; the server's log goes to a file, as under a service manager. Prints each round
# and the median ratio. Knobs: EXPERIMENT, BENCH_SECONDS (per run, default 10), ROUNDS.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_bin.sh"
SECS=${BENCH_SECONDS:-10}
ROUNDS=${ROUNDS:-3}
out=$(mktemp -d -t actor-infer-access.XXXXXX)
say() { printf '[bench-access-log] %s\n' "$*" >&2; }

PID=""
cleanup() { [ -z "$PID" ] || { kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }; }
trap cleanup EXIT

run() { # on|off, round
  local mode=$1 round=$2 access=true
  [ "$mode" = on ] || access=false
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  ACTOR_INFER__LOGGING__ACCESS_LOG=$access "$BIN" --experiment "$EXPERIMENT" \
    --http-port "$port" --grpc-port 0 >"$out/server-$mode-$round.log" 2>&1 &
  PID=$!
  for _ in $(seq 1200); do
    curl -fsS "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && break
    kill -0 "$PID" 2>/dev/null || { say "server died:"; tail "$out/server-$mode-$round.log" >&2; exit 1; }
    sleep 0.1
  done
  say "round $round, access log $mode: 32 HTTP clients, ${SECS}s"
  "$BIN" bench --http-port "$port" --grpc-port 1 --transport http --http-route tei \
    --concurrency 32 --texts-per-request 1 --tokens 12 --duration-seconds "$SECS" --json \
    >"$out/$mode-$round.json"
  grep -c 'actor_infer::access' "$out/server-$mode-$round.log" >"$out/$mode-$round.lines" || true
  kill -TERM "$PID"; wait "$PID" 2>/dev/null || true; PID=""
}
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then run on "$r"; run off "$r"; else run off "$r"; run on "$r"; fi
done

python3 - "$out" "$ROUNDS" <<'PY'
import json, os, statistics, sys
d, rounds = sys.argv[1], int(sys.argv[2])
j = lambda n: json.load(open(os.path.join(d, n + ".json")))
lines = lambda n: int(open(os.path.join(d, n + ".lines")).read().split()[0] or 0)
print(f"machine: {os.cpu_count()} cores; {rounds} interleaved rounds")
print("| round | access log on | off | on / off | access lines written |")
print("|---|---|---|---|---|")
ratios = []
for r in range(1, rounds + 1):
    on, off = j(f"on-{r}"), j(f"off-{r}")
    ratio = on["requests_per_s"] / off["requests_per_s"]
    ratios.append(ratio)
    print(f"| {r} | {on['requests_per_s']:.1f} req/s (p50 {on['latency_ms']['p50']:.2f} ms) | "
          f"{off['requests_per_s']:.1f} req/s (p50 {off['latency_ms']['p50']:.2f} ms) | "
          f"{ratio:.3f} | {lines(f'on-{r}')} / {lines(f'off-{r}')} |")
print(f"\naccess log cost: median throughput ratio on/off {statistics.median(ratios):.3f} "
      f"(spread {min(ratios):.3f}-{max(ratios):.3f})")
PY
