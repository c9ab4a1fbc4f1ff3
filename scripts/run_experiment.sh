#!/usr/bin/env bash
# Run one experiment cleanly, the original team's Fix 4 for our binary:
#   start the server, wait until /ready, run a workload, stop it with SIGTERM, wait for it
#   (escalating to SIGKILL only past the shutdown budget plus a margin), then verify nothing is
#   left: both ports free and no process. Exits non-zero if anything is left or failed.
#
#   scripts/run_experiment.sh [exp.yaml]          (default configs/default.yaml)
#   WORKLOAD="cmd ..."  the workload to run once ready ($HTTP_URL and $GRPC_ADDR are set for
#                       it); otherwise the experiment's `workload:` section through
#                       `actor-infer bench`, or else 50 HTTP requests with curl
#   Ports of 0 in the experiment are fine: the server picks free ones and says which in its
#   --port-file, and every check after the start uses those.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_bin.sh"
EXPERIMENT=${1:-$EXPERIMENT}
say() { printf '[run_experiment] %s\n' "$*" >&2; }

"$BIN" --experiment "$EXPERIMENT" --check >/dev/null
read -r HOST HTTP_PORT GRPC_PORT BUDGET < <("$BIN" --experiment "$EXPERIMENT" --check | python3 -c '
import json, sys
c = json.load(sys.stdin)
h = c["server"]["host"]
print("127.0.0.1" if h in ("0.0.0.0", "::") else h, c["server"]["http_port"], c["server"]["grpc_port"], c["shutdown"]["timeout_seconds"])')

STATE=$(mktemp -d -t actor-infer-run.XXXXXX)
"$BIN" doctor --experiment "$EXPERIMENT" count before --state-file "$STATE/count.json" >/dev/null
if ! "$BIN" doctor --experiment "$EXPERIMENT" ports >/dev/null; then
  say "a port is already held before the start:"; "$BIN" doctor --experiment "$EXPERIMENT" ports >&2 || true
  exit 1
fi

LOG=${LOG:-$STATE/server.log}
"$BIN" --experiment "$EXPERIMENT" --port-file "$STATE/ports.json" >"$LOG" 2>&1 &
PID=$!
say "server pid $PID, log $LOG"

stop_server() {
  kill -0 "$PID" 2>/dev/null || return 0
  say "stopping (SIGTERM, budget ${BUDGET}s)"
  kill -TERM "$PID" 2>/dev/null || true
  # Wait the budget plus a margin, in short steps: the server aborts itself past its budget.
  limit=$(python3 -c "print(int(($BUDGET + 3) * 10))")
  for _ in $(seq "$limit"); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$PID" 2>/dev/null; then
    say "still running past the budget: SIGKILL"
    kill -KILL "$PID" 2>/dev/null || true
  fi
  wait "$PID" 2>/dev/null && CODE=0 || CODE=$?
  say "server exited with $CODE"
}
CODE=0
trap stop_server EXIT

# The ports it bound (the experiment's, or free ones for 0), once both are.
for _ in $(seq 600); do
  [ -s "$STATE/ports.json" ] && break
  kill -0 "$PID" 2>/dev/null || { say "the server died while starting:"; tail -5 "$LOG" >&2; exit 1; }
  sleep 0.1
done
[ -s "$STATE/ports.json" ] || { say "never bound its ports"; exit 1; }
read -r HTTP_PORT GRPC_PORT < <(python3 -c '
import json, sys
p = json.load(open(sys.argv[1]))
print(p["http_port"], p["grpc_port"])' "$STATE/ports.json")
export HTTP_URL="http://$HOST:$HTTP_PORT" GRPC_ADDR="$HOST:$GRPC_PORT"
PORTS=(--http-port "$HTTP_PORT" --grpc-port "$GRPC_PORT")

for _ in $(seq 600); do
  curl -fsS "$HTTP_URL/ready" >/dev/null 2>&1 && break
  kill -0 "$PID" 2>/dev/null || { say "the server died while starting:"; tail -5 "$LOG" >&2; exit 1; }
  sleep 0.1
done
curl -fsS "$HTTP_URL/ready" >/dev/null || { say "never ready"; exit 1; }
say "ready at $HTTP_URL (gRPC $GRPC_ADDR)"

HAS_WORKLOAD=$("$BIN" --experiment "$EXPERIMENT" --check | python3 -c '
import json, sys
w = json.load(sys.stdin).get("workload") or {}
print("yes" if any(v is not None for v in w.values()) else "no")')
if [ -n "${WORKLOAD:-}" ]; then
  say "workload: $WORKLOAD"
  bash -c "$WORKLOAD"
elif [ "$HAS_WORKLOAD" = yes ]; then
  say "workload: the experiment's workload: section (actor-infer bench)"
  "$BIN" bench --experiment "$EXPERIMENT" "${PORTS[@]}"
else
  for i in $(seq 50); do
    curl -fsS "$HTTP_URL/embed" -H 'content-type: application/json' \
      -d "{\"inputs\": \"request $i of the default workload\"}" >/dev/null
  done
  say "workload: 50 requests done"
fi
"$BIN" doctor --experiment "$EXPERIMENT" "${PORTS[@]}" metrics | python3 -c '
import json, sys
d = json.load(sys.stdin); s = d["stage_timings"]
print("[run_experiment] qps %s avg_ms %s tokenize_ms %s inference_ms %s queue_ms %s" % (
    d["throughput_qps"], d["avg_ms"], s["avg_tokenize_ms"], s["avg_inference_ms"], s["avg_queue_wait_ms"]))' >&2

stop_server
trap - EXIT
left=0
"$BIN" doctor --experiment "$EXPERIMENT" "${PORTS[@]}" ports >&2 || left=1
kill -0 "$PID" 2>/dev/null && { say "process $PID still exists"; left=1; }
"$BIN" doctor --experiment "$EXPERIMENT" "${PORTS[@]}" count after --state-file "$STATE/count.json" >&2 || left=1
if [ "$left" -ne 0 ]; then say "something was left behind"; exit 1; fi
[ "$CODE" -eq 0 ] || { say "the server did not stop cleanly (exit $CODE)"; exit "$CODE"; }
say "clean: ports free, no process left"
