#!/usr/bin/env bash
# The GPU check: parity, speed and GPU memory of actor-infer on an NVIDIA GPU, in one run, with
# every figure written under $OUT (gpu-check.md is the README's table; the JSON and logs beside
# it). Made for a GPU host that has PyTorch 2.11.0 with sentence-transformers and no registry
# (the lent H200: `python3` is /opt/torch/.venv), from what scripts/gpu-check-pack.sh prepared
# on a CPU machine (target/gpu-check/: the binary, the default model in f16). Anyone with a GPU
# can rerun it the same way:
#
#   bash scripts/gpu-check-pack.sh                # here: build, strip, convert (once)
#   OUT=/tmp/gpu-out bash scripts/gpu-check.sh    # there
#
# Knobs: DEVICE (cuda; `cpu` rehearses the script without a GPU: no f16, no GPU memory), SECS
# (per bench scenario, default 4), CYCLES (start/stop cycles, default 20), PY (python3).
#
# What it measures:
#   1. parity with sentence-transformers on the same device and weights: f32 within 1e-4 on the
#      14 fixture texts; f16 and bf16 drift (max abs, min cosine);
#   2. speed: `actor-infer bench --raw` (libtorch in-process, the limit), the server at
#      concurrency 1 and 32 and with 64-text requests, f32 and f16, 1 and 2 instances, and
#      sentence-transformers in-process (f32, f16) on the same GPU;
#   3. GPU memory: the device's baseline, after load, at peak, after each of CYCLES clean stops
#      (exit 0) and hard aborts (every 4th cycle: a worker stuck in a forward, exit 3): the
#      process's memory is gone and the device is back to its baseline every time;
#   4. a stop under load: exit 0 within the budget, nothing left.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
PACK=${PACK:-$root/target/gpu-check}
BIN=${BIN:-$PACK/actor-infer}
MODEL=${MODEL:-$PACK/model}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
SECS=${SECS:-4}
CYCLES=${CYCLES:-20}
OUT=${OUT:-$(mktemp -d -t gpu-check.XXXXXX)}
FIXTURE=$root/tests/fixtures/minilm-reference.json
mkdir -p "$OUT"
log=$OUT/gpu-check.log
say() { printf '[gpu-check %s] %s\n' "$(date +%T)" "$*" | tee -a "$log" >&2; }
if [ ! -x "$BIN" ] && [ -f "$BIN.xz" ]; then
  "$PY" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$BIN.xz" "$BIN"
  chmod +x "$BIN"
fi
[ -x "$BIN" ] || { say "no binary at $BIN: run scripts/gpu-check-pack.sh first"; exit 2; }
[ -f "$MODEL/model.safetensors" ] || { say "no model at $MODEL"; exit 2; }

# libtorch: the host's PyTorch 2.11.0 (torch/lib; its CUDA libraries resolve through their
# rpath), found by the loader for libtorch_cpu and by ACTOR_INFER_CUDA_LIBS for the CUDA half.
torch_lib=$("$PY" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') ||
  { say "$PY has no torch"; exit 2; }
export LD_LIBRARY_PATH=$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
[ "$DEVICE" = cuda ] && export ACTOR_INFER_CUDA_LIBS=$torch_lib
export ACTOR_INFER_FAULT_INJECTION=1
say "host: $(nproc) cores; $("$PY" -c 'import torch; print("torch", torch.__version__)'); binary $BIN"

has_gpu() { [ "$DEVICE" = cuda ] && command -v nvidia-smi >/dev/null; }
gpu_used() { has_gpu && nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 | tr -d ' ' || echo 0; }
gpu_pids() { has_gpu && nvidia-smi --query-compute-apps=pid --format=csv,noheader | tr -d ' ' | paste -sd, - || true; }
if has_gpu; then
  nvidia-smi -L | tee -a "$log"
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv | tee -a "$log"
fi

free_ports() { "$PY" - <<'PY'
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])
PY
}

# exp NAME DTYPE INSTANCES [extra YAML]: writes an experiment, prints its path.
exp() {
  local f=$OUT/exp-$1.yaml
  printf 'experiment:\n  name: %s\nmodel:\n  path: %s\n  device: %s\n  dtype: %s\n  instances: %s\nshutdown:\n  timeout_seconds: 10\n%s' \
    "$1" "$MODEL" "$DEVICE" "$2" "$3" "${4:-}" >"$f"
  echo "$f"
}

PID=""
start() { # experiment, log name; sets PID, HTTP, GRPC
  read -r HTTP GRPC < <(free_ports)
  "$BIN" --experiment "$1" --http-port "$HTTP" --grpc-port "$GRPC" >"$OUT/$2.log" 2>&1 &
  PID=$!
  local i
  for i in $(seq 1200); do
    "$PY" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$HTTP/ready', timeout=1)" 2>/dev/null && return 0
    kill -0 "$PID" 2>/dev/null || { say "server $2 died:"; tail -5 "$OUT/$2.log" | tee -a "$log" >&2; PID=""; return 1; }
    sleep 0.1
  done
  say "server $2 never ready"; return 1
}
stop() { # signal; sets STOP_CODE (the exit status) and STOP_S (how long the stop took)
  local t0=$EPOCHREALTIME
  kill -"$1" "$PID" 2>/dev/null
  wait "$PID"; STOP_CODE=$?
  PID=""
  STOP_S=$(awk "BEGIN { printf \"%.2f\", $EPOCHREALTIME - $t0 }")
}
cleanup() { [ -z "$PID" ] || { kill -KILL "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; }; }
trap cleanup EXIT
metric() { "$PY" -c "import json,urllib.request; v=json.load(urllib.request.urlopen('http://127.0.0.1:$HTTP/metrics?format=json'))['$1']; print('null' if v is None else v)"; }

baseline=$(gpu_used)
say "device memory before anything: ${baseline} MiB"

# ---------------------------------------------------------------- 1. parity
say "1. reference: sentence-transformers on $DEVICE (f32)"
"$PY" "$root/scripts/gpu_reference.py" reference "$MODEL" "$FIXTURE" "$OUT/reference.json" "$DEVICE" 2>>"$log" ||
  say "reference failed (see log)"
dtypes=(f32 bf16); [ "$DEVICE" = cuda ] && dtypes=(f32 f16 bf16)
echo '{}' >"$OUT/parity.json"
for dt in "${dtypes[@]}"; do
  if start "$(exp "parity-$dt" "$dt" 1)" "parity-$dt"; then
    r=$("$PY" "$root/scripts/gpu_reference.py" compare "$OUT/reference.json" "127.0.0.1:$HTTP" "$FIXTURE" 2>>"$log")
    say "parity $dt: $r"
    "$PY" - "$OUT/parity.json" "$dt" "$r" <<'PY'
import json, sys
p, dt, r = sys.argv[1], sys.argv[2], sys.argv[3]
d = json.load(open(p)); d[dt] = json.loads(r) if r else None; json.dump(d, open(p, "w"), indent=1)
PY
    grep -m1 'device selected' "$OUT/parity-$dt.log" | tee -a "$log" >&2
    stop TERM
  fi
done

# ---------------------------------------------------------------- 2. speed
say "2. speed: sentence-transformers in-process"
"$PY" "$root/scripts/gpu_reference.py" bench "$MODEL" "$OUT/st-bench.json" "$DEVICE" "$SECS" 2>>"$log" ||
  say "sentence-transformers bench failed (see log)"
speed_dtypes=(f32); [ "$DEVICE" = cuda ] && speed_dtypes=(f32 f16)
for dt in "${speed_dtypes[@]}"; do
  say "raw libtorch $dt"
  "$BIN" bench --experiment "$(exp "raw-$dt" "$dt" 1)" --raw --batch-sizes 1,32,64 \
    --duration-seconds "$((SECS * 2))" --json >"$OUT/raw-$dt.json" 2>>"$log" || say "raw $dt failed"
  for inst in 1 2; do
    name=server-$dt-x$inst
    start "$(exp "$name" "$dt" "$inst")" "$name" || continue
    for sc in "c1 --concurrency 1 --texts-per-request 1" "c32 --concurrency 32 --texts-per-request 1" \
              "large --concurrency 4 --texts-per-request 64"; do
      set -- $sc
      "$BIN" bench --http-port "$HTTP" --grpc-port "$GRPC" --tokens 12 --duration-seconds "$SECS" \
        --json "${@:2}" >"$OUT/$name-$1.json" 2>>"$log" || say "$name $1 failed"
    done
    say "$name: device memory $(gpu_used) MiB under load, process $(metric gpu_memory_mb) MiB"
    stop TERM
  done
done

# ---------------------------------------------------------------- 3. GPU memory over cycles
say "3. $CYCLES start/stop cycles (every 4th a hard abort)"
: >"$OUT/cycles.jsonl"
for i in $(seq "$CYCLES"); do
  abort=$(( i % 4 == 0 ))
  f=$(exp "cycle" "$([ "$DEVICE" = cuda ] && echo f16 || echo f32)" 2)
  [ "$abort" = 1 ] && sed -i 's/timeout_seconds: 10/timeout_seconds: 2/' "$f"
  start "$f" "cycle-$i" || { echo "{\"cycle\": $i, \"started\": false}" >>"$OUT/cycles.jsonl"; continue; }
  loaded_proc=$(metric gpu_memory_mb); loaded_dev=$(gpu_used)
  "$BIN" bench --http-port "$HTTP" --grpc-port "$GRPC" --concurrency 8 --texts-per-request 64 \
    --tokens 8-128 --duration-seconds 1 --json >/dev/null 2>>"$log"
  peak_dev=$(gpu_used); peak_proc=$(metric gpu_memory_mb); pid=$PID
  if [ "$abort" = 1 ]; then
    # A forward that never returns (as if stuck inside a CUDA call): only the abort ends it.
    "$PY" -c "import json,urllib.request as u; u.urlopen(u.Request('http://127.0.0.1:$HTTP/embed', data=json.dumps({'inputs': '__actor_infer_fault:worker_hang__'}).encode(), headers={'content-type':'application/json'}), timeout=30)" 2>/dev/null &
    sleep 1
  fi
  stop TERM; code=$STOP_CODE; secs=$STOP_S
  sleep 0.5
  after_dev=$(gpu_used); left=$(gpu_pids)
  alive=$(kill -0 "$pid" 2>/dev/null && echo true || echo false)
  echo "{\"cycle\": $i, \"abort\": $([ "$abort" = 1 ] && echo true || echo false), \"exit\": $code, \"stop_s\": $secs, \"baseline_mib\": $baseline, \"loaded_device_mib\": $loaded_dev, \"loaded_process_mib\": $loaded_proc, \"peak_device_mib\": $peak_dev, \"peak_process_mib\": $peak_proc, \"after_device_mib\": $after_dev, \"compute_pids_after\": \"$left\", \"pid_alive\": $alive}" >>"$OUT/cycles.jsonl"
  say "cycle $i: exit $code in ${secs}s; device MiB baseline $baseline, loaded $loaded_dev, peak $peak_dev, after $after_dev; left: ${left:-none}"
  wait 2>/dev/null
done
"$BIN" doctor gpu >"$OUT/doctor-gpu.txt" 2>&1; echo "doctor gpu exit $?" >>"$OUT/doctor-gpu.txt"

# ---------------------------------------------------------------- 4. stop under load
say "4. SIGTERM under load (32 clients)"
if start "$(exp stop-load "$([ "$DEVICE" = cuda ] && echo f16 || echo f32)" 2)" stop-load; then
  "$BIN" bench --http-port "$HTTP" --grpc-port "$GRPC" --concurrency 32 --tokens 8-64 \
    --duration-seconds 6 --json >"$OUT/stop-load-bench.json" 2>>"$log" &
  bpid=$!
  sleep 2
  stop TERM; code=$STOP_CODE; secs=$STOP_S
  wait "$bpid" 2>/dev/null
  sleep 0.5
  echo "{\"exit\": $code, \"stop_s\": $secs, \"after_device_mib\": $(gpu_used), \"baseline_mib\": $baseline, \"compute_pids_after\": \"$(gpu_pids)\"}" >"$OUT/stop-load.json"
  say "stop under load: exit $code in ${secs}s, device $(gpu_used) MiB (baseline $baseline)"
fi

# ---------------------------------------------------------------- the table
"$PY" "$root/scripts/gpu_report.py" "$OUT" | tee "$OUT/gpu-check.md"
say "done; figures in $OUT"
