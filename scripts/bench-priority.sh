#!/usr/bin/env bash
# Interactive queries while a bulk job indexes (issue 23), on our server and on the peer, in one
# run, over HTTP `POST /embed`:
#   queries: one client (concurrency 1), one ~12-token text per request;
#   bulk:    four clients (concurrency 4), 64 texts of 20-60 words (22-62 tokens) per request.
# For each server: the queries alone, the bulk alone, then both at once; it prints the query p50
# alone, the query p50 (p99) during the bulk job, and the bulk rate alone and during, with the
# issue's targets (p50 during <= 5x alone, p99 during <= 20x alone, bulk during >= 0.8 alone).
# Rows: actor-infer with the experiment as it is (no header); the same with the queries marked
# `X-Priority: interactive`; the peer (TEI, no priorities), when it runs here. With
# PRIORITY_RESERVED=1, two more rows: 2 model instances, fair batching alone vs one instance
# reserved for interactive work.
# Runs on its own (`bash scripts/bench-priority.sh`) on what `make build` made; `make bench` calls
# it. Knobs: PRIORITY_SECONDS (per phase, default 10), EXPERIMENT, PEER_RUN (a script taking
# MODEL_DIR PORT, default ../shared/anchors/tei-ort/run.sh) or PEER_URL (a running peer),
# PRIORITY_RESERVED, PRIORITY_ROUNDS (default 1: on a shared machine, N rounds of the three
# phases, each PRIORITY_SECONDS, so "alone" and "during" meet the same neighbours; a row per
# round, then the median of the rounds). A scenario that fails prints its error in its row; the
# table still prints.
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_bin.sh"
SECS=${PRIORITY_SECONDS:-10}
ROUNDS=${PRIORITY_ROUNDS:-1}
out=$(mktemp -d -t actor-infer-priority.XXXXXX)
say() { printf '[bench-priority] %s\n' "$*" >&2; }

free_ports() { # n: that many free TCP ports on 127.0.0.1
  python3 - "$1" <<'PY'
import socket, sys
s = [socket.socket() for _ in range(int(sys.argv[1]))]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])
PY
}

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

stop() { # pid
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

wait_up() { # url pid log: 0 once url answers 200, 1 if the process died or 120 s passed
  local url=$1 pid=$2 log=$3
  for _ in $(seq 1200); do
    curl -fsS "$url" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || { say "it died: $(tail -n 3 "$log" | tr '\n' ' ')"; return 1; }
    sleep 0.1
  done
  say "not up after 120 s: $url"
  return 1
}

# Runs the three phases against the HTTP server on $port, PRIORITY_ROUNDS times; results in
# $out/$name[.N]-*.json, or the error in $out/$name[.N].error.
phases() { # name port [bench args for the queries...]
  local name=$1 port=$2; shift 2
  if [ "$ROUNDS" = 1 ]; then
    round "$name" "$port" "$@"
  else
    for r in $(seq "$ROUNDS"); do round "$name.$r" "$port" "$@"; done
  fi
}

round() { # name port [bench args for the queries...]
  local name=$1 port=$2; shift 2
  local common=(--http-port "$port" --grpc-port 1 --transport http --http-route tei
    --duration-seconds "$SECS" --json)
  local query=(--concurrency 1 --texts-per-request 1 --tokens 12 "$@")
  local bulk=(--concurrency 4 --texts-per-request 64 --tokens 22-62)
  say "$name: queries alone (${SECS}s)"
  "$BIN" bench "${common[@]}" "${query[@]}" >"$out/$name-query.json" 2>"$out/$name-query.log" \
    || { echo "queries alone failed: $(tail -n 1 "$out/$name-query.log")" >"$out/$name.error"; return; }
  say "$name: bulk alone (${SECS}s)"
  "$BIN" bench "${common[@]}" "${bulk[@]}" >"$out/$name-bulk.json" 2>"$out/$name-bulk.log" \
    || { echo "bulk alone failed: $(tail -n 1 "$out/$name-bulk.log")" >"$out/$name.error"; return; }
  say "$name: both at once (${SECS}s)"
  "$BIN" bench "${common[@]}" "${bulk[@]}" >"$out/$name-bulk-during.json" 2>"$out/$name-bulk-during.log" &
  local bulk_pid=$!
  local q_rc=0 b_rc=0
  "$BIN" bench "${common[@]}" "${query[@]}" >"$out/$name-query-during.json" 2>"$out/$name-query-during.log" || q_rc=$?
  wait "$bulk_pid" || b_rc=$?
  [ "$q_rc" = 0 ] || echo "queries during the bulk job failed: $(tail -n 1 "$out/$name-query-during.log")" >"$out/$name.error"
  [ "$b_rc" = 0 ] || echo "bulk during the queries failed: $(tail -n 1 "$out/$name-bulk-during.log")" >>"$out/$name.error"
}

# Our server with the experiment (plus environment overrides), three phases, stopped.
ours() { # name "ENV=VALUE ..." [bench args for the queries...]
  local name=$1 envs=$2; shift 2
  local http grpc
  read -r http grpc < <(free_ports 2)
  say "$name: starting actor-infer ${envs:+($envs)}"
  env $envs "$BIN" --experiment "$EXPERIMENT" --http-port "$http" --grpc-port "$grpc" \
    >"$out/$name-server.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  if wait_up "http://127.0.0.1:$http/ready" "$pid" "$out/$name-server.log"; then
    phases "$name" "$http" "$@"
    curl -fsS "http://127.0.0.1:$http/metrics?format=json" >"$out/$name-dashboard.json" 2>/dev/null || true
  else
    echo "the server did not start: $(tail -n 1 "$out/$name-server.log")" >"$out/$name.error"
  fi
  stop "$pid"
}

ours ours "" 
ours ours-header "" --header 'X-Priority: interactive'
if [ "${PRIORITY_RESERVED:-0}" = 1 ]; then
  ours fair2 "ACTOR_INFER__MODEL__INSTANCES=2"
  ours reserved2 "ACTOR_INFER__MODEL__INSTANCES=2 ACTOR_INFER__BATCHING__RESERVED_INTERACTIVE_INSTANCES=1"
fi

# The peer: TEI with ONNX Runtime (no priorities: the default scenario only).
PEER_RUN=${PEER_RUN:-$root/../shared/anchors/tei-ort/run.sh}
if [ -n "${PEER_URL:-}" ]; then
  port=${PEER_URL##*:}; port=${port%%/*}
  if curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1; then
    phases peer "$port"
  else
    echo "no peer answers at $PEER_URL" >"$out/peer.error"
  fi
elif [ -f "$PEER_RUN" ]; then
  read -r port < <(free_ports 1)
  say "peer: starting $(basename "$(dirname "$PEER_RUN")")"
  bash "$PEER_RUN" "$root/models/all-MiniLM-L6-v2" "$port" >"$out/peer-server.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  if wait_up "http://127.0.0.1:$port/health" "$pid" "$out/peer-server.log"; then
    phases peer "$port"
  else
    rc=0; wait "$pid" 2>/dev/null || rc=$?
    echo "the peer did not start (exit $rc$([ "$rc" = 132 ] && echo ': SIGILL, a binary built for another CPU'))" >"$out/peer.error"
  fi
  stop "$pid"
else
  echo "not found: $PEER_RUN" >"$out/peer.error"
fi

python3 - "$out" "$SECS" "$ROUNDS" <<'PY'
import json, os, statistics, sys
d, secs, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
def load(name):
    try:
        with open(os.path.join(d, name + ".json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
def error(name):
    try:
        return open(os.path.join(d, name + ".error")).read().strip().replace("\n", "; ")
    except OSError:
        return None
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?") if os.path.exists("/proc/cpuinfo") else "?"
print(f"interactive queries during a bulk job: HTTP POST /embed, {secs} s per phase, {rounds} round(s); "
      f"{os.cpu_count()} cores, {cpu}; load generators on the same cores")
print()
print("| server | query p50 alone | query p50 (p99) during the bulk job | p50 ratio (<= 5) | p99 ratio (<= 20) | bulk texts/s alone -> during | bulk ratio (>= 0.8) |")
print("|---|---|---|---|---|---|---|")
rows = [("ours", "actor-infer (default config)"),
        ("ours-header", "actor-infer, queries `X-Priority: interactive`"),
        ("fair2", "actor-infer, 2 instances, fair batching"),
        ("reserved2", "actor-infer, 2 instances, 1 reserved for interactive"),
        ("peer", "TEI 1.9.3 ORT (peer)")]
mark = lambda good: "ok" if good else "MISSED"
def row(name, label):
    """Prints one row; returns its figures, or None."""
    q, b, qd, bd = (load(name + s) for s in ("-query", "-bulk", "-query-during", "-bulk-during"))
    err = error(name)
    if None in (q, b, qd, bd) or err:
        print(f"| {label} | {err or 'no result'} | | | | | |")
        return None
    p50, p50d, p99d = q["latency_ms"]["p50"], qd["latency_ms"]["p50"], qd["latency_ms"]["p99"]
    r50, r99 = p50d / p50, p99d / p50
    ra, rd = b["texts_per_s"], bd["texts_per_s"]
    rb = rd / ra if ra else float("nan")
    errs = {k: v for r in (q, b, qd, bd) for k, v in (r.get("errors") or {}).items()}
    note = f" (errors {errs})" if errs else ""
    print(f"| {label} | {p50:.1f} ms | {p50d:.1f} ms ({p99d:.1f}) | {r50:.1f} {mark(r50 <= 5)} | {r99:.1f} {mark(r99 <= 20)} | {ra:.0f} -> {rd:.0f} | {rb:.2f} {mark(rb >= 0.8)}{note} |")
    return (p50, p50d, p99d, ra, rd)
for name, label in rows:
    names = [name] if rounds == 1 else [f"{name}.{r}" for r in range(1, rounds + 1)]
    if name in ("fair2", "reserved2") and all(load(n + "-query") is None and error(n) is None for n in names):
        continue
    if rounds == 1:
        row(name, label)
        continue
    if error(name):  # the server itself did not start
        print(f"| {label} | {error(name)} | | | | | |")
        continue
    got = [f for f in (row(n, f"{label}, round {k}") for k, n in enumerate(names, 1)) if f]
    if got:
        med = [statistics.median(x) for x in zip(*got)]
        p50, p50d, p99d, ra, rd = med
        r50, r99, rb = p50d / p50, p99d / p50, rd / ra if ra else float("nan")
        print(f"| **{label}, median of {len(got)}** | {p50:.1f} ms | {p50d:.1f} ms ({p99d:.1f}) | {r50:.1f} {mark(r50 <= 5)} | {r99:.1f} {mark(r99 <= 20)} | {ra:.0f} -> {rd:.0f} | {rb:.2f} {mark(rb >= 0.8)} |")
print()
print("p99 ratio: the query p99 during the bulk job over its p50 alone (the issue's \"p99 at most 20x alone\").")
for name in ("ours", "ours-header"):
    dash = load(name + "-dashboard")
    if dash and dash.get("priorities"):
        parts = []
        for p, v in dash["priorities"].items():
            parts.append(f"{p}: {v.get('requests')} requests, p50 {v.get('p50_ms')} ms, p99 {v.get('p99_ms')} ms, queue {v.get('avg_queue_wait_ms')} ms")
        print(f"{name}: server dashboard by priority (last {dash.get('window_s')} s): " + "; ".join(parts))
PY
say "raw JSON and logs in $out"
