#!/usr/bin/env python3
"""The GPU check's Python side (scripts/gpu-check.sh), run with a PyTorch 2.11.0 that has
sentence-transformers (on the lent GPU host: /opt/torch/.venv).

  gpu_reference.py reference MODEL_DIR FIXTURE_JSON OUT_JSON DEVICE
      sentence-transformers' embeddings of the fixture's texts on DEVICE, in f32: the reference
      our server is compared with (same weights, same device).
  gpu_reference.py bench MODEL_DIR OUT_JSON DEVICE SECONDS
      sentence-transformers in-process, f32 and (on CUDA) f16: p50 of batch-1 encodes, and
      texts/s at batch 32 and 64, on 12-token texts like `actor-infer bench --tokens 12`.
  gpu_reference.py compare REFERENCE_JSON HTTP_ADDR FIXTURE_JSON
      POSTs the fixture's texts to a running server's /embed and prints one JSON line: rows,
      max abs difference and min cosine against the reference.
"""
import json
import sys
import time
import urllib.request

# `actor-infer bench`'s word list: each is one WordPiece token, so 10 words + [CLS] + [SEP] = 12.
WORDS = ("the quick brown fox jumps over lazy dog server model fast time people water light "
         "house world small great music city night paper river green table money story plant "
         "stone heart train field black white voice dream sound space power").split()


def texts_of(n, words=10):
    out, k = [], 0
    for _ in range(n):
        out.append(" ".join(WORDS[(k + j) % len(WORDS)] for j in range(words)))
        k += 7
    return out


def fixture_texts(path):
    return [c["text"] for c in json.load(open(path))["cases"]]


def load(model_dir, device):
    import torch
    from sentence_transformers import SentenceTransformer
    # f32 whatever the checkpoint stores (the packed model is f16 on disk; transformers 5 would
    # otherwise load it as f16).
    return SentenceTransformer(model_dir, device=device, model_kwargs={"dtype": torch.float32})


def reference(model_dir, fixture, out, device):
    import sentence_transformers
    import torch
    m = load(model_dir, device)
    emb = m.encode(fixture_texts(fixture), batch_size=32, convert_to_numpy=True)
    json.dump({
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
        "torch": torch.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "embeddings": emb.tolist(),
    }, open(out, "w"))


def sync(device):
    if device.startswith("cuda"):
        import torch
        torch.cuda.synchronize()


def bench(model_dir, out, device, seconds):
    import torch
    results = {}
    dtypes = ["f32", "f16"] if device.startswith("cuda") else ["f32"]
    for dtype in dtypes:
        m = load(model_dir, device)
        if dtype == "f16":
            m = m.half()
        one = texts_of(1)
        for _ in range(5):
            m.encode(one)
        lat, t_end = [], time.perf_counter() + seconds / 3
        while time.perf_counter() < t_end or len(lat) < 5:
            t0 = time.perf_counter()
            m.encode(one)
            sync(device)
            lat.append((time.perf_counter() - t0) * 1e3)
        lat.sort()
        row = {"batch1_p50_ms": lat[len(lat) // 2], "batch1_p99_ms": lat[int(len(lat) * 0.99)]}
        for bs in (32, 64):
            batch = texts_of(bs)
            m.encode(batch, batch_size=bs)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds / 3 or n < 2 * bs:
                m.encode(batch, batch_size=bs)
                n += bs
            sync(device)
            row[f"batch{bs}_texts_per_s"] = n / (time.perf_counter() - t0)
        results[dtype] = row
        del m
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    json.dump(results, open(out, "w"), indent=1)


def compare(ref_path, addr, fixture):
    ref = json.load(open(ref_path))["embeddings"]
    texts = fixture_texts(fixture)
    req = urllib.request.Request(f"http://{addr}/embed", data=json.dumps({"inputs": texts}).encode(),
                                 headers={"content-type": "application/json"})
    got = json.load(urllib.request.urlopen(req, timeout=60))
    assert len(got) == len(ref), f"{len(got)} rows for {len(ref)} texts"
    max_abs, min_cos = 0.0, 1.0
    for a, b in zip(got, ref):
        assert len(a) == len(b)
        max_abs = max(max_abs, max(abs(x - y) for x, y in zip(a, b)))
        dot = sum(x * y for x, y in zip(a, b))
        na = sum(x * x for x in a) ** 0.5
        nb = sum(y * y for y in b) ** 0.5
        min_cos = min(min_cos, dot / (na * nb))
    print(json.dumps({"rows": len(got), "max_abs": max_abs, "min_cos": min_cos}))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "reference":
        reference(*args)
    elif cmd == "bench":
        bench(args[0], args[1], args[2], float(args[3]))
    elif cmd == "compare":
        compare(*args)
    else:
        sys.exit(__doc__)
