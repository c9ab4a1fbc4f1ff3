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
