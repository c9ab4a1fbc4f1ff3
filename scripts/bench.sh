#!/usr/bin/env bash
# `make bench`: the server against the limit and against the peer, on the default model, in one
# run.
#   1. the raw in-process forward (tokenize + pad + forward) for batch sizes 1..64: the limit;
#      in f32, and in bf16 where the CPU computes bf16 natively (avx512_bf16 or AMX);
#   2. the server (f32), started here, under three workloads over gRPC: the limit's table;
#   3. a flood of /metrics scrapes during HTTP load, on the server and on the peer;
#   4. HTTP `POST /embed` at concurrency 32 and 1 and with 64 texts per request, on the server,
#      its bf16 twin (native bf16 only) and the peer (TEI with ONNX Runtime), interleaved over
#      HTTP_ROUNDS rounds, then each process's peak resident memory;
#   5. resident memory sampled during a steady load.
# A scenario that fails (a refused request, a server that does not start) leaves its error in
# its row; the table is printed whatever happens, when the script ends.
# Knobs: EXPERIMENT, BENCH_SECONDS (per scenario, default 10; an HTTP scenario gets it split over
# the rounds), MEMORY_SECONDS (default 60; the README's figure uses 300), HTTP_ROUNDS (default 2),
# BF16 (auto: when the CPU has native bf16; 1 always, 0 never), PEER_URL or PEER_RUN (below).
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_bin.sh"
. "$(dirname "${BASH_SOURCE[0]}")/_procs.sh"
SECS=${BENCH_SECONDS:-10}
MEM_SECS=${MEMORY_SECONDS:-60}
ROUNDS=${HTTP_ROUNDS:-2}
out=$(mktemp -d -t actor-infer-bench.XXXXXX)
say() { printf '[bench] %s\n' "$*" >&2; }

# Native bf16: what src/model/cpu.rs calls native (the start-up log says the same).
case ${BF16:-auto} in
  1) BF16=1 ;;
  0) BF16=0 ;;
  *) if grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null; then BF16=1; else BF16=0; fi ;;
esac

# One `actor-infer bench --json` run. A failure does not stop the script: its stderr and exit
# code stay in NAME.err, and its row says so.
scenario() { # name, bench args...
  local name=$1 rc=0; shift
  "$BIN" bench "$@" --json >"$out/$name.json" 2>"$out/$name.err" || rc=$?
  if [ "$rc" != 0 ]; then
    echo "exit $rc" >>"$out/$name.err"
    say "$name failed (exit $rc): $(tail -n 3 "$out/$name.err" | tr '\n' ' ')"
  fi
}

# Waits until URL answers 200 while PID lives; 0 when ready.
wait_ready() { # url, pid, name
  for _ in $(seq 1200); do
    curl -fsS "$1" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || break
    sleep 0.1
  done
  local why
  if kill -0 "$2" 2>/dev/null; then
    why="not ready after 120 s"
  else
    wait "$2" 2>/dev/null
    why="exit $?"
    [ "$why" != "exit 132" ] || why="$why, SIGILL: a binary built for another CPU"
  fi
  why="$3 did not start ($why): $(tail -n 2 "$out/$3.log" 2>/dev/null | tr '\n' ' ')"
  echo "$why" >"$out/$3-failed.txt"
  say "$why; its log: $out/$3.log"
  return 1
}

peak_rss() { # pid: the process's peak resident memory (VmHWM), MiB
  awk '/^VmHWM:/ {print $2 / 1024}' "/proc/$1/status" 2>/dev/null || true
}

report() {
  python3 - "$out" "$MEM_SECS" "$ROUNDS" "$BF16" <<'PY'
import json, os, statistics, sys
d, mem_secs, rounds, bf16 = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"

def load(name):
    """(result, why it failed): a run's JSON, or None and its error."""
    err = ""
    try:
        err = open(os.path.join(d, name + ".err")).read().strip()
    except OSError:
        pass
    try:
        r = json.load(open(os.path.join(d, name + ".json")))
    except (OSError, ValueError):
        return None, (err.splitlines()[-3:] and " / ".join(err.splitlines()[-3:])) or "not run"
    if r.get("raw"):
        return r, None
    if r.get("requests", 0) == 0 or r.get("errors"):
        # Some requests failed: the figure stands for the rest, with the errors beside it.
        n = sum(r.get("errors", {}).values())
        why = ", ".join(f"{k} x{v}" for k, v in r.get("errors", {}).items()) or "no request answered"
        first = r.get("first_error")
        why += f" (first: {first})" if first else ""
        return (r if r.get("requests", 0) else None), f"{n} errors: {why}"
    return r, None

def failed_txt(name):
    try:
        return open(os.path.join(d, name + "-failed.txt")).read().strip()
    except OSError:
        return None

cpu = "?"
if os.path.exists("/proc/cpuinfo"):
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
raw, raw_err = load("raw")
print(f"machine: {os.cpu_count()} cores, {cpu}; " + (f"device {raw['device']}, {raw['intra_op_threads']} intra-op threads" if raw else "device ?"))
problems = []
def raw_line(r, err, label):
    if r is None:
        print(f"raw limit ({label}): FAILED: {err}")
        return None, None
    by = {b["batch_size"]: b for b in r["batches"]}
    best = r["best"]
    b1 = by.get(1, {}).get("batch_ms_p50", float("nan"))
    print(f"raw limit ({label}): best {best['texts_per_s']:.1f} texts/s at batch {best['batch_size']}; batch 1 forward p50 {b1:.2f} ms")
    print(f"  texts/s by batch size: " + ", ".join(f"{b}: {v['texts_per_s']:.0f}" for b, v in sorted(by.items())))
    return by, best
by, best = raw_line(raw, raw_err, "f32")
if bf16:
    rb, rb_err = load("raw-bf16")
    raw_line(rb, rb_err, "bf16, " + (rb.get("bf16", "?") if rb else "?"))
print()

def val(r, field):
    return r["latency_ms"]["p50"] if field == "p50" else r[field]

print("| scenario | server | limit | ratio | target |")
print("|---|---|---|---|---|")
def limit_row(label, name, field, unit, limit, limit_label, fmt_ratio, target, ok):
    r, err = load(name)
    if err:
        problems.append(f"{label}: {err}")
    if r is None:
        print(f"| {label} | FAILED: {err} | {limit_label} | | {target} MISSED |")
        return r
    v = val(r, field)
    cell = f"{v:.2f} {unit}" + (f" ({err})" if err else "")
    if limit is None:
        print(f"| {label} | {cell} | no limit (raw failed) | | {target} |")
        return r
    ratio = fmt_ratio(v, limit)
    print(f"| {label} | {cell} | {limit_label} | {ratio[0]} | {target} {'ok' if ok(ratio[1]) else 'MISSED'} |")
    if not ok(ratio[1]):
        problems.append(f"{label}: {ratio[0]}, target {target}")
    return r
bl = best["texts_per_s"] if best else None
b1 = by[1]["batch_ms_p50"] if by and 1 in by else None
b64 = (by.get(64) or best)["texts_per_s"] if by else None
c32 = limit_row("concurrency 32, 1 text of ~12 tokens", "c32", "texts_per_s", "texts/s", bl,
                f"{bl:.1f} texts/s (best batch)" if bl else "", lambda v, l: (f"{v / l:.2f}", v / l), ">= 0.85", lambda x: x >= 0.85)
c1 = limit_row("concurrency 1, p50 latency", "c1", "p50", "ms", b1,
               f"{b1:.2f} ms (batch-1 forward)" if b1 else "", lambda v, l: (f"{v - l:+.2f} ms", v - l), "<= +1 ms", lambda x: x <= 1.0)
large = limit_row("concurrency 4, 64 texts/request", "large", "texts_per_s", "texts/s", b64,
                  f"{b64:.1f} texts/s (batch 64)" if b64 else "", lambda v, l: (f"{v / l:.2f}", v / l), ">= 0.9", lambda x: x >= 0.9)
try:
    rss = [float(x) for x in open(os.path.join(d, "rss.txt")).read().split()]
except (OSError, ValueError):
    rss = []
if len(rss) >= 2:
    grow = rss[-1] - rss[1] if len(rss) > 2 else 0.0
    print(f"| memory, {mem_secs} s of load | peak {max(rss):.0f} MiB, start {rss[0]:.0f}, end {rss[-1]:.0f} (growth after warm-up {grow:+.1f} MiB) | | | < 1024 MiB {'ok' if max(rss) < 1024 else 'MISSED'} |")
else:
    m, err = load("mem")
    print(f"| memory, {mem_secs} s of load | FAILED: {err or 'no samples'} | | | < 1024 MiB MISSED |")
    problems.append("memory")
print()

print("| metrics flood | /embed throughput alone -> flooded | cost |")
print("|---|---|---|")
def flood_line(name, label):
    alone, e1 = load(name + "-alone")
    flood, e2 = load(name + "-flood")
    if alone is None or flood is None:
        print(f"| {label}: 32 clients on /embed, + 4 connections flooding /metrics | FAILED: {e1 or e2} | |")
        problems.append(f"{label} metrics flood: {e1 or e2}")
        return None
    errs = "; ".join(e for e in (e1, e2) if e)
    cost = flood["requests_per_s"] / alone["requests_per_s"] - 1
    print(f"| {label}: 32 clients on /embed, + 4 connections flooding /metrics | {alone['requests_per_s']:.1f} -> {flood['requests_per_s']:.1f} req/s ({flood['metrics_scrapes_per_s']:.0f} scrapes/s){f' ({errs})' if errs else ''} | {cost * 100:+.0f}% |")
    return cost
ours = flood_line("flood", "actor-infer")
peer_failed = failed_txt("peer")
peer = flood_line("peer-flood", "TEI-ORT (peer)") if not peer_failed else None
if ours is not None and peer is not None:
    print(f"\nmetrics flood: actor-infer loses {-ours * 100:.0f}%, the peer {-peer * 100:.0f}% ({'below' if ours > peer else 'NOT below'} the peer's cost)")
print()

# Side by side with the peer over HTTP: medians over the interleaved rounds.
def http(prefix, k):
    """(median value dict, error) over the rounds of one server and scenario."""
    rs, errs = [], []
    for i in range(1, rounds + 1):
        r, err = load(f"{prefix}-{k}-{i}")
        if err:
            errs.append(f"round {i}: {err}")
        if r is not None:
            rs.append(r)
    err = errs[0] if errs else None
    if not rs:
        return None, err or "not run"
    return {"p50": statistics.median(r["latency_ms"]["p50"] for r in rs),
            "requests_per_s": statistics.median(r["requests_per_s"] for r in rs),
            "texts_per_s": statistics.median(r["texts_per_s"] for r in rs)}, err
def rss_of(name):
    try:
        return float(open(os.path.join(d, name + "-rss.txt")).read().split()[0])
    except (OSError, IndexError, ValueError):
        return None
print(f"| HTTP /embed scenario (median of {rounds} interleaved rounds) | actor-infer | TEI-ORT (peer) | ratio | target |")
print("|---|---|---|---|---|")
def row(label, prefix, k, field, unit, target, better):
    o, oe = http(prefix, k)
    p, pe = http("peer", k)
    if peer_failed:
        pe = peer_failed
    def cell(v, e):
        if v is None:
            return "not measured" if e == "not run" else f"FAILED: {e}"
        return f"{v[field]:.2f} {unit}" + (f" ({e})" if e else "")
    ocell, pcell = cell(o, oe), cell(p, pe)
    for who, e in (("actor-infer", oe), ("peer", pe)):
        if e and e != "not run" and not (who == "peer" and peer_failed):
            problems.append(f"{label}, {who}: {e}")
    if o and p and p[field]:
        ratio = o[field] / p[field]
        verdict = ('ok' if better(ratio) else 'MISSED') if target else ''
        print(f"| {label} | {ocell} | {pcell} | {ratio:.2f} | {target} {verdict} |")
        if target and not better(ratio):
            problems.append(f"{label}: ratio {ratio:.2f}, target {target}")
    else:
        print(f"| {label} | {ocell} | {pcell} | | {target} |")
def rows(prefix, tag, targets):
    t = lambda s: s if targets else ""
    row(f"{tag}concurrency 32, 1 text (req/s)", prefix, "c32", "requests_per_s", "req/s", t(">= 1.2"), lambda r: r >= 1.2)
    row(f"{tag}concurrency 1, p50 latency", prefix, "c1", "p50", "ms", t("<= 1.0"), lambda r: r <= 1.0)
    row(f"{tag}concurrency 4, 64 texts/request", prefix, "large", "texts_per_s", "texts/s", t(">= 1.2"), lambda r: r >= 1.2)
    ro, rp = rss_of(prefix), rss_of("peer")
    if ro and rp:
        ok = ro / rp <= 1.5
        print(f"| {tag}peak RSS after the HTTP scenarios | {ro:.0f} MiB | {rp:.0f} MiB | {ro / rp:.2f} | {t('<= 1.5')} {('ok' if ok else 'MISSED') if targets else ''} |")
        if targets and not ok:
            problems.append(f"{tag}peak RSS")
    elif ro:
        print(f"| {tag}peak RSS after the HTTP scenarios | {ro:.0f} MiB | not measured | | |")
rows("http", "", True)
if bf16:
    bf = failed_txt("bf16")
    if bf:
        print(f"| bf16 server | FAILED: {bf} | | | |")
    else:
        rows("bf16", "bf16: ", False)
if peer_failed:
    print(f"\nthe peer: {peer_failed}")
print()
for name, r in (("c32", c32), ("c1", c1), ("large", large)):
    if r:
        print(f"{name}: server stages {json.dumps({k: round(v, 2) for k, v in (r.get('server') or {}).items()})}, latency p50/p99 {r['latency_ms']['p50']:.1f}/{r['latency_ms']['p99']:.1f} ms, errors {r['errors']}")
if problems:
    print(f"\nnot met or failed: {'; '.join(problems)}")
PY
  say "raw JSON and logs in $out"
}
REPORTED=""
trap 'stop_all; [ -n "$REPORTED" ] || report' EXIT

# 1. The limit.
say "raw limit (f32): $((SECS * 2))s over batch sizes 1..64"
scenario raw --experiment "$EXPERIMENT" --raw --duration-seconds "$((SECS * 2))"
if [ "$BF16" = 1 ]; then
  say "raw limit (bf16): $((SECS * 2))s over batch sizes 1..64"
  ACTOR_INFER__MODEL__DTYPE=bf16 scenario raw-bf16 --experiment "$EXPERIMENT" --raw \
    --duration-seconds "$((SECS * 2))"
fi

# 2. The servers: ours (f32), its bf16 twin, the peer; all started before any load, idle while
# another one is measured.
HTTP_PORT=$(free_port); GRPC_PORT=$(free_port)
ports=(--http-port "$HTTP_PORT" --grpc-port "$GRPC_PORT")
"$BIN" --experiment "$EXPERIMENT" "${ports[@]}" >"$out/server.log" 2>&1 &
PID=$!; PIDS+=("$PID")
OURS_UP=1
wait_ready "http://127.0.0.1:$HTTP_PORT/ready" "$PID" server || OURS_UP=0
BF16_UP=0
if [ "$BF16" = 1 ]; then
  BF16_HTTP=$(free_port); BF16_GRPC=$(free_port)
  ACTOR_INFER__MODEL__DTYPE=bf16 "$BIN" --experiment "$EXPERIMENT" --http-port "$BF16_HTTP" \
    --grpc-port "$BF16_GRPC" >"$out/bf16.log" 2>&1 &
  BF16_PID=$!; PIDS+=("$BF16_PID")
  wait_ready "http://127.0.0.1:$BF16_HTTP/ready" "$BF16_PID" bf16 && BF16_UP=1
fi
# The peer (TEI with ONNX Runtime), when it is here: PEER_URL (a server already running, e.g.
# http://127.0.0.1:18080; no memory figure then) or PEER_RUN (a script taking MODEL_DIR PORT,
# by default ../shared/anchors/tei-ort/run.sh).
PEER_RUN=${PEER_RUN:-$root/../shared/anchors/tei-ort/run.sh}
PEER_PORT=""; PEER_PID=0; PEER_UP=0
if [ -n "${PEER_URL:-}" ]; then
  PEER_PORT=${PEER_URL##*:}; PEER_PORT=${PEER_PORT%%/*}
  curl -fsS "http://127.0.0.1:$PEER_PORT/health" >/dev/null 2>&1 && PEER_UP=1 ||
    echo "the peer at $PEER_URL does not answer /health" >"$out/peer-failed.txt"
elif [ -f "$PEER_RUN" ]; then
  PEER_PORT=$(free_port)
  bash "$PEER_RUN" "$root/models/all-MiniLM-L6-v2" "$PEER_PORT" >"$out/peer.log" 2>&1 &
  PEER_PID=$!; PIDS+=("$PEER_PID")
  wait_ready "http://127.0.0.1:$PEER_PORT/health" "$PEER_PID" peer && PEER_UP=1
else
  echo "not measured: no PEER_URL, and no $PEER_RUN" >"$out/peer-failed.txt"
fi

# 3. The server against the limit, over gRPC.
for s in "c32 --concurrency 32 --texts-per-request 1" "c1 --concurrency 1 --texts-per-request 1" \
  "large --concurrency 4 --texts-per-request 64"; do
  set -- $s
  say "server: $1"
  scenario "$@" --experiment "$EXPERIMENT" "${ports[@]}" --tokens 12 --duration-seconds "$SECS"
done

# 4. A flood of GET /metrics (JSON) during HTTP load: 32 clients posting one sentence to /embed,
# alone and then with 4 connections scraping /metrics back to back.
flood() { # name, port
  local name=$1 port=$2
  say "$name: 32 HTTP clients on /embed, then the same with 4 connections flooding /metrics"
  local a=(--http-port "$port" --grpc-port "$GRPC_PORT" --transport http --http-route tei
    --concurrency 32 --tokens 12 --duration-seconds "$SECS")
  scenario "$name-alone" "${a[@]}"
  scenario "$name-flood" "${a[@]}" --flood-metrics 4
}
flood flood "$HTTP_PORT"
[ "$PEER_UP" = 0 ] || flood peer-flood "$PEER_PORT"

# 5. HTTP, one TEI-style `POST /embed` per request: how users compare servers. The same
# arguments on each server, interleaved over the rounds so that a slow spell of a shared machine
# falls on all of them; then each process's peak resident memory (from /proc).
HSECS=$(python3 -c "print(max(1.0, $SECS / $ROUNDS))")
http_scenarios() { # prefix, port, round
  local prefix=$1 port=$2 i=$3
  say "$prefix (round $i): HTTP /embed at concurrency 32 and 1, and 64 texts per request at concurrency 4"
  local a=(--http-port "$port" --grpc-port "$GRPC_PORT" --transport http --http-route tei
    --duration-seconds "$HSECS" --tokens 12)
  scenario "$prefix-c32-$i" "${a[@]}" --concurrency 32 --texts-per-request 1
  scenario "$prefix-c1-$i" "${a[@]}" --concurrency 1 --texts-per-request 1
  scenario "$prefix-large-$i" "${a[@]}" --concurrency 4 --texts-per-request 64
}
for i in $(seq "$ROUNDS"); do
  http_scenarios http "$HTTP_PORT" "$i"
  [ "$BF16_UP" = 0 ] || http_scenarios bf16 "$BF16_HTTP" "$i"
  [ "$PEER_UP" = 0 ] || http_scenarios peer "$PEER_PORT" "$i"
done
peak_rss "$PID" >"$out/http-rss.txt"
[ "$BF16_UP" = 0 ] || peak_rss "$BF16_PID" >"$out/bf16-rss.txt"
[ "$PEER_PID" = 0 ] || peak_rss "$PEER_PID" >"$out/peer-rss.txt"
# The other servers stop before the memory load: nothing else runs beside ours then.
for p in "${BF16_PID:-}" "$PEER_PID"; do
  [ -n "$p" ] && [ "$p" != 0 ] || continue
  kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true
done

# 6. Resident memory under a steady load.
if [ "$OURS_UP" = 1 ]; then
  say "memory: ${MEM_SECS}s of load at concurrency 8, sampling resident memory"
  rss() { curl -fsS "http://127.0.0.1:$HTTP_PORT/metrics?format=json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["rss_mb"])'; }
  rss >"$out/rss.txt" || true
  scenario mem --experiment "$EXPERIMENT" "${ports[@]}" --concurrency 8 --tokens 8-64 \
    --duration-seconds "$MEM_SECS" &
  BPID=$!
  while kill -0 "$BPID" 2>/dev/null; do sleep 5; rss >>"$out/rss.txt" || true; done
  wait "$BPID"
  rss >>"$out/rss.txt" || true
fi

stop_all
report
REPORTED=1
