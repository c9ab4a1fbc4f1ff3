#!/usr/bin/env bash
# Prepares what scripts/gpu-check.sh needs on a GPU host that has no Rust and no registry, in
# target/gpu-check/ (under 64 MiB, so it travels in one call to the lent GPU machine):
#   actor-infer.xz  the release binary (CPU-linked libtorch 2.11.0; it loads the host's CUDA half),
#                stripped, built with fault injection (the check's hard aborts need it);
#   model/       all-MiniLM-L6-v2 with its weights stored in f16 (45 MB instead of 90 MB). The
#                check computes its reference from these same weights on the GPU, so f32 parity
#                is measured on identical numbers; serving in f32 upcasts them.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
pack=target/gpu-check
bash scripts/setup.sh
cargo build --release --locked --features fault-injection
rm -rf "$pack" && mkdir -p "$pack/model"
# Stripped and xz-compressed (14 MB → about 4 MB); gpu-check.sh unpacks it with Python's lzma.
strip -o "$pack/actor-infer" target/release/actor-infer
xz -9 -T1 "$pack/actor-infer"
src=$(readlink -f models/all-MiniLM-L6-v2)
cp -rL "$src"/. "$pack/model/"
rm -f "$pack/model/model.safetensors" "$pack/model/.complete"
venv=${ACTOR_INFER_CACHE:-$HOME/.cache/actor-infer}/gpu-pack-venv
[ -x "$venv/bin/python" ] || { python3 -m venv "$venv" && "$venv/bin/pip" -q install numpy==2.3.5 safetensors==0.7.0; }
"$venv/bin/python" - "$src/model.safetensors" "$pack/model/model.safetensors" <<'PY'
import sys, numpy as np
from safetensors.numpy import load_file, save_file
t = load_file(sys.argv[1])
save_file({k: (v.astype(np.float16) if v.dtype == np.float32 else v) for k, v in t.items()}, sys.argv[2])
PY
du -sh "$pack" "$pack"/* >&2
echo "[gpu-check-pack] ready: carry $pack to the GPU host and run scripts/gpu-check.sh there" >&2
