#!/usr/bin/env bash
# README "Performance": the forms of the f32 linear layers against each other, on the raw
# in-process forward (`actor-infer bench --raw`, tokenize + pad + forward, the experiment's
# intra-op threads), one process per form and round, the forms interleaved round by round so
# that a slow spell of a shared machine falls on all of them. Forms (ACTOR_INFER_LINEAR):
# panel (the AVX-512 kernel, the default where the CPU has AVX-512), addmm (the portable path),
# linear (libtorch's linear on transformers' layout, the forward before issue 24), mkl-packed.
# Prints, per form and batch size, the median over the rounds of each run's p50 batch time
# (wall and CPU) and texts/s, and each form's wall time against the first form's.
# Knobs: FORMS (default "panel addmm linear"), SIZES (default 1,32), TOKENS (default 12),
# ROUNDS (default 5), REQUESTS (batches per size per run, 4 runs of it; default 60), EXPERIMENT.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_bin.sh"
FORMS=${FORMS:-panel addmm linear}
SIZES=${SIZES:-1,32}
ROUNDS=${ROUNDS:-5}
out=$(mktemp -d -t actor-infer-linear.XXXXXX)
for i in $(seq "$ROUNDS"); do
  for f in $FORMS; do
    printf '[bench-linear] round %s: %s\n' "$i" "$f" >&2
    ACTOR_INFER_LINEAR=$f "$BIN" bench --experiment "$EXPERIMENT" --raw --batch-sizes "$SIZES" \
      --tokens "${TOKENS:-12}" --requests "${REQUESTS:-60}" --json >"$out/$f-$i.json"
  done
done
python3 - "$out" "$ROUNDS" $FORMS <<'PY'
import json, os, statistics, sys
d, rounds, forms = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
runs = {f: [json.load(open(os.path.join(d, f"{f}-{i}.json"))) for i in range(1, rounds + 1)] for f in forms}
first = runs[forms[0]][0]
print(f"{rounds} interleaved rounds; device {first['device']}, {first['intra_op_threads']} intra-op threads, dtype {first['dtype']}")
print(f"| form | batch | p50 batch ms (median of rounds) | p50 CPU ms | texts/s | wall vs {forms[0]} (median of per-round ratios) |")
print("|---|---|---|---|---|---|")
for f in forms:
    for k, b in enumerate(runs[f][0]["batches"]):
        bs = b["batch_size"]
        p50 = [r["batches"][k]["batch_ms_p50"] for r in runs[f]]
        cpu = [r["batches"][k]["cpu_ms_p50"] for r in runs[f]]
        tps = [r["batches"][k]["texts_per_s"] for r in runs[f]]
        ratio = statistics.median(a / r0["batches"][k]["batch_ms_p50"] for a, r0 in zip(p50, runs[forms[0]]))
        print(f"| {f} | {bs} | {statistics.median(p50):.2f} (range {min(p50):.2f}-{max(p50):.2f}) | {statistics.median(cpu):.2f} | {statistics.median(tps):.0f} | {ratio:.2f} |")
PY
