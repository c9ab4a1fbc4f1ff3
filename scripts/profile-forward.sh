#!/usr/bin/env bash
# README "Performance" / "Where a batch-1 forward goes": libtorch's f32 forward of the default
# model against ONNX Runtime's on the same text, op kind by op kind, and the 24 products alone
# in every form libtorch offers (scripts/profile_forward.py says what it measures).
# Sets up, once, a venv in the cache with PyPI's torch==2.11.0 (the wheel whose libraries the
# server uses) and onnxruntime==1.22.0 (TEI 1.9.3's), pinned. PyPI's torch wheel is a CUDA
# build whose Python module needs the CUDA libraries to import: they come from the CUDA half
# that `ACTOR_INFER_DEVICE=cuda make setup` (or `make test`) fetches; nothing runs on a GPU.
# MKL's vendor check is answered as the server answers it (src/model/mkl.rs), through a
# one-line LD_PRELOAD library built here with cc. The ONNX graph is the one TEI serves, built
# by the peer's build_bert_onnx.py (../shared/anchors/tei-ort) when the peer has not yet.
# Knobs: THREADS (default "1 2"), TEXT, ROUNDS (default 5).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${ACTOR_INFER_CACHE:-$HOME/.cache/actor-infer}
say() { printf '[profile-forward] %s\n' "$*" >&2; }
cuda=$cache/libtorch-2.11.0-cuda
[ -f "$cuda/.complete" ] || { say "needs libtorch's CUDA half for PyPI's torch to import: ACTOR_INFER_DEVICE=cuda make setup"; exit 2; }
venv=$cache/profile-venv
PKGS="onnxruntime==1.22.0 onnx==1.23.2 numpy==2.4.6 safetensors==0.8.0 tokenizers==0.23.3 typing_extensions==4.16.0 filelock==4.3.1 sympy==1.14.0 fsspec==2026.9.0"
TORCH="torch==2.11.0 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85"
stamp="$venv/.complete-$(echo "$PKGS $TORCH" | md5sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  say "installing $PKGS and, without dependencies, $TORCH into $venv (~600 MB, once)"
  rm -rf "$venv"; python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check $PKGS
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps $TORCH
  echo 'int mkl_serv_intel_cpu_true(void) { return 1; }' >"$venv/mklvendor.c"
  cc -O2 -shared -fPIC -o "$venv/libmklvendor.so" "$venv/mklvendor.c"
  touch "$stamp"
fi
model=$root/models/all-MiniLM-L6-v2
onnx_dir=${TEI_ONNX_DIR:-$HOME/.cache/tei-anchor/$(basename "$(cd "$model" && pwd -P)")-onnx}
if [ ! -f "$onnx_dir/model.onnx" ]; then
  say "building the ONNX graph TEI serves into $onnx_dir"
  mkdir -p "$onnx_dir" && cp -rL "$model"/. "$onnx_dir"/
  "$venv/bin/python" "$root/../shared/anchors/tei-ort/build_bert_onnx.py" "$onnx_dir" >&2
fi
LD_LIBRARY_PATH=$(ls -d "$cuda"/nvidia/*/lib | tr '\n' ':') LD_PRELOAD=$venv/libmklvendor.so \
  "$venv/bin/python" "$root/scripts/profile_forward.py" "$model" "$onnx_dir/model.onnx" 2> >(grep -v -e gpuGetDeviceCount -e 'Profiler clears events' -e '_warn_once' >&2)

# Ours: the actor-infer binary's own batch-1 forward (with its AVX-512 kernel where the CPU has
# AVX-512, the form ACTOR_INFER_LINEAR names otherwise), by op kind: perf's CPU samples of
# `actor-infer bench --raw --batch-sizes 1` (one generated text of ~12 tokens, 1 intra-op
# thread per THREADS entry), sorted into the same kinds by symbol, times the run's CPU time per
# forward. Start-up (loading, packing the weights, warm-up) is left out: perf starts PERF_DELAY_MS
# (default 4000) after the process, and what remains of it is recognised by symbol. OURS=0 skips;
# PARTS=none skips the Python side's parts (whole kinds products).
if [ "${OURS:-1}" = 1 ] && command -v perf >/dev/null; then
  . "$root/scripts/_bin.sh"
  for t in ${THREADS:-1 2}; do
    data=$(mktemp -t actor-infer-perf.XXXXXX)
    ACTOR_INFER__MODEL__INTRA_OP_THREADS=$t perf record -q -e cpu-clock -F 2999 --delay "${PERF_DELAY_MS:-4000}" -o "$data" -- \
      "$BIN" bench --experiment "$EXPERIMENT" --raw --batch-sizes 1 --tokens 12 \
      --requests "${REQUESTS:-400}" --json >"$data.json" 2>/dev/null
    perf report -i "$data" --no-children --sort dso,sym --stdio 2>/dev/null |
      python3 "$root/scripts/profile_ours.py" "$data.json" "$t"
    rm -f "$data" "$data.json" "$data.old"
  done
fi
