#!/usr/bin/env python3
"""Turns the files scripts/gpu-check.sh wrote under OUT into the README's GPU tables (markdown,
on stdout). Missing pieces print as `n/a` with the reason, never as invented numbers."""
import json
import os
import sys

out = sys.argv[1]


def load(name):
    p = os.path.join(out, name)
    try:
        return json.load(open(p))
    except (OSError, ValueError):
        return None


def f(x, fmt="{:.1f}"):
    return "n/a" if x is None else fmt.format(x)


ref = load("reference.json") or {}
print(f"GPU: {ref.get('gpu') or ref.get('device', 'n/a')}; torch {ref.get('torch', 'n/a')}, "
      f"sentence-transformers {ref.get('sentence_transformers', 'n/a')} (the reference, same device and weights)")
print()
print("Parity with sentence-transformers f32 on the same device (14 fixture texts, normalised embeddings):")
print()
print("| dtype | max abs diff | min cosine | bound |")
print("|---|---|---|---|")
parity = load("parity.json") or {}
bounds = {"f32": "max abs <= 1e-4", "f16": "max abs <= 1e-2, cosine >= 0.999", "bf16": "max abs <= 1e-2, cosine >= 0.999"}
for dt in ("f32", "f16", "bf16"):
    r = parity.get(dt)
    if r is None:
        if dt in parity:
            print(f"| {dt} | n/a (failed: see gpu-check.log) | | {bounds[dt]} |")
        continue
    ok = r["max_abs"] <= 1e-4 if dt == "f32" else (r["max_abs"] <= 1e-2 and r["min_cos"] >= 0.999)
    print(f"| {dt} | {r['max_abs']:.2e} | {r['min_cos']:.6f} | {bounds[dt]} {'ok' if ok else 'MISSED'} |")

print()
print("Speed (12-token texts; server over gRPC with `actor-infer bench`, load generator on the same host):")
print()
print("| dtype | instances | c=1 p50 / p99 ms | c=32 texts/s | 64-text requests texts/s | raw batch-1 ms | raw batch-32 texts/s | raw batch-64 texts/s | c=32 / raw | 64 / raw |")
print("|---|---|---|---|---|---|---|---|---|---|")
for dt in ("f32", "f16"):
    raw = load(f"raw-{dt}.json")
    if raw is None and load(f"server-{dt}-x1-c1.json") is None:
        continue
    by = {b["batch_size"]: b for b in (raw or {}).get("batches", [])}
    for inst in (1, 2):
        c1 = load(f"server-{dt}-x{inst}-c1.json")
        c32 = load(f"server-{dt}-x{inst}-c32.json")
        lg = load(f"server-{dt}-x{inst}-large.json")
        if not (c1 or c32 or lg):
            continue
        r32 = by.get(32, {}).get("texts_per_s")
        r64 = by.get(64, {}).get("texts_per_s")
        ratio = lambda a, b: "n/a" if not a or not b else f"{a / b:.2f}"
        print(f"| {dt} | {inst} | {f(c1 and c1['latency_ms']['p50'], '{:.2f}')} / {f(c1 and c1['latency_ms']['p99'], '{:.2f}')} "
              f"| {f(c32 and c32['texts_per_s'])} | {f(lg and lg['texts_per_s'])} "
              f"| {f(by.get(1, {}).get('batch_ms_p50'), '{:.2f}')} | {f(r32)} | {f(r64)} "
              f"| {ratio(c32 and c32['texts_per_s'], r32)} | {ratio(lg and lg['texts_per_s'], r64)} |")
st = load("st-bench.json") or {}
if st:
    print()
    print("sentence-transformers in-process on the same device (`SentenceTransformer.encode`):")
    print()
    print("| dtype | batch-1 p50 ms | batch-32 texts/s | batch-64 texts/s |")
    print("|---|---|---|---|")
    for dt, r in st.items():
        print(f"| {dt} | {r['batch1_p50_ms']:.2f} | {r['batch32_texts_per_s']:.1f} | {r['batch64_texts_per_s']:.1f} |")

cycles = []
p = os.path.join(out, "cycles.jsonl")
if os.path.exists(p):
    cycles = [json.loads(l) for l in open(p) if l.strip()]
if cycles:
    started = [c for c in cycles if c.get("started", True)]
    clean = [c for c in started if not c["abort"]]
    aborts = [c for c in started if c["abort"]]
    back = [c for c in started if c["after_device_mib"] <= c["baseline_mib"] + 2 and not c["compute_pids_after"] and not c["pid_alive"]]
    print()
    print(f"GPU memory over {len(cycles)} start/stop cycles ({len(clean)} clean stops, {len(aborts)} hard aborts; "
          f"2 f16 instances each, a 1 s load of 64-text requests before the stop):")
    print()
    print("| | value |")
    print("|---|---|")
    base = cycles[0].get("baseline_mib")
    print(f"| device baseline before the first start | {base} MiB |")
    if started:
        print(f"| after load (device / this process) | {max(c['loaded_device_mib'] for c in started)} / {max((c['loaded_process_mib'] or 0) for c in started)} MiB (max over cycles) |")
        print(f"| at peak (device / this process) | {max(c['peak_device_mib'] for c in started)} / {max((c['peak_process_mib'] or 0) for c in started)} MiB |")
        print(f"| after the stop (device) | {min(c['after_device_mib'] for c in started)} to {max(c['after_device_mib'] for c in started)} MiB |")
    print(f"| clean stops: exit codes | {sorted({c['exit'] for c in clean})} (in {f(max((c['stop_s'] for c in clean), default=None), '{:.2f}')} s at most) |")
    print(f"| hard aborts: exit codes | {sorted({c['exit'] for c in aborts})} |")
    print(f"| back to the baseline, no process left | {len(back)} of {len(started)} cycles |")
sl = load("stop-load.json")
if sl:
    print()
    print(f"SIGTERM under load (32 clients): exit {sl['exit']} in {sl['stop_s']} s; device memory after: "
          f"{sl['after_device_mib']} MiB (baseline {sl['baseline_mib']}); compute processes left: {sl['compute_pids_after'] or 'none'}")
