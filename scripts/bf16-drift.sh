#!/usr/bin/env bash
# How far `dtype: bf16` moves the default model's embeddings from f32's, and whether a user of
# the embeddings would notice: the server started twice (f32 and bf16, on the CPU), the same
# texts embedded by both over HTTP (`POST /embed`, normalised), compared text by text (cosine,
# largest difference of a component) and as a search index would use them (each text's nearest
# other text, and every pair's similarity).
# Texts: the 14 of tests/fixtures/minilm-reference.json, every sentence of README.md and docs/*.md
# (prose of many lengths and topics, code and tables included), and 40 long generated texts (60
# to 240 words) built from their words. (The figures in docs/performance.md were taken when all
# of that text was in README.md, at commit a19794b: nearly the same sentences, in another order.)
# Knobs: EXPERIMENT (default configs/default.yaml). Prints one table; no Python package needed.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_bin.sh"
out=$(mktemp -d -t actor-infer-bf16.XXXXXX)
say() { printf '[bf16-drift] %s\n' "$*" >&2; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done' EXIT
declare -A HTTP
for dtype in f32 bf16; do
  HTTP[$dtype]=$(port)
  ACTOR_INFER__MODEL__DTYPE=$dtype ACTOR_INFER__MODEL__DEVICE=cpu "$BIN" --experiment "$EXPERIMENT" \
    --http-port "${HTTP[$dtype]}" --grpc-port "$(port)" >"$out/$dtype.log" 2>&1 &
  PIDS+=($!)
done
for dtype in f32 bf16; do
  for _ in $(seq 600); do
    curl -fsS "http://127.0.0.1:${HTTP[$dtype]}/ready" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fsS "http://127.0.0.1:${HTTP[$dtype]}/ready" >/dev/null || { say "the $dtype server did not start:"; tail "$out/$dtype.log" >&2; exit 1; }
done
grep -h "dtype: bf16" "$out/bf16.log" | sed 's/^/[bf16-drift] server: /' >&2 || true
say "embedding the texts with both"
python3 - "$root" "${HTTP[f32]}" "${HTTP[bf16]}" <<'PY'
import json, math, re, sys, urllib.request
root, p32, p16 = sys.argv[1], sys.argv[2], sys.argv[3]
fixtures = [c["text"] for c in json.load(open(f"{root}/tests/fixtures/minilm-reference.json"))["cases"]]
import glob
readme = "\n\n".join(open(f).read() for f in [f"{root}/README.md"] + sorted(glob.glob(f"{root}/docs/*.md")))
sentences, seen = [], set()
for s in re.split(r"(?<=[.!?])\s+|\n\n", readme):
    s = " ".join(s.split())
    if 20 <= len(s) <= 1000 and s not in seen:
        seen.add(s); sentences.append(s)
words = re.findall(r"[A-Za-z]{3,}", readme)
state = 12345
def rnd(n):
    global state
    state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
    return (state >> 33) % n
long = [" ".join(words[rnd(len(words))] for _ in range(60 + rnd(181))) for _ in range(40)]
texts = fixtures + sentences + long
def embed(port):
    out = []
    for i in range(0, len(texts), 32):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/embed", json.dumps({"inputs": texts[i:i + 32], "truncate": True}).encode(),
                                     {"content-type": "application/json"})
        out += json.load(urllib.request.urlopen(req, timeout=300))
    return out
a, b = embed(p32), embed(p16)
dot = lambda u, v: sum(x * y for x, y in zip(u, v))
cos = [dot(u, v) for u, v in zip(a, b)]
absd = [max(abs(x - y) for x, y in zip(u, v)) for u, v in zip(a, b)]
n = len(texts)
def sims(e):
    return [[dot(e[i], e[j]) for j in range(n)] for i in range(n)]
sa, sb = sims(a), sims(b)
pair = [abs(sa[i][j] - sb[i][j]) for i in range(n) for j in range(i + 1, n)]
def nn(s, i):
    return max((j for j in range(n) if j != i), key=lambda j: s[i][j])
same = sum(nn(sa, i) == nn(sb, i) for i in range(n))
# A changed nearest neighbour matters only if f32's two candidates were not already a tie.
gaps = [sa[i][nn(sa, i)] - sa[i][nn(sb, i)] for i in range(n) if nn(sa, i) != nn(sb, i)]
q = lambda v, p: sorted(v)[min(len(v) - 1, int(p * len(v)))]
fx = range(len(fixtures))
print(f"| texts | min cosine bf16 vs f32 | median cosine | max abs diff per component | median |")
print("|---|---|---|---|---|")
for label, idx in ((f"{len(fixtures)} fixture texts", fx), (f"all {n} texts", range(n))):
    c = [cos[i] for i in idx]; d = [absd[i] for i in idx]
    print(f"| {label} | {min(c):.6f} | {q(c, .5):.6f} | {max(d):.5f} | {q(d, .5):.5f} |")
print()
print(f"pairwise similarity (the {len(pair)} pairs of the {n} texts): |bf16 - f32| median {q(pair, .5):.5f}, 99th percentile {q(pair, .99):.5f}, max {max(pair):.5f}")
print(f"nearest other text: the same under bf16 for {same} of {n} texts" +
      (f"; where it changed, f32 had the two within {max(gaps):.5f} of each other (median {q(gaps, .5):.5f})" if gaps else ""))
PY
