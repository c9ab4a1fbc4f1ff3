"""Where a batch-1 f32 forward of all-MiniLM-L6-v2 goes, in libtorch and in ONNX Runtime, in one
process on one text (run by scripts/profile-forward.sh, which sets up the venv).

1. Per op kind: the model's forward written op for op as src/model/bert/mod.rs runs it through
   libtorch (PyTorch 2.11's eager ops are the same libtorch calls; Python adds a few µs per op,
   which lands in "the rest"), timed by torch.profiler, against ONNX Runtime 1.22's own per-node
   profile of the ONNX graph TEI serves (the peer's build_bert_onnx.py), same text, same threads.
   Two libtorch forms of the linear layers: `linear` on transformers' [out, in] weights (the
   forward before issue 24) and `addmm` on W^T (what the server does where the AVX-512 kernel
   does not run).
2. The model's 24 products alone, in sequence with the real weights (so they stream from memory
   as in a forward), in every form libtorch offers and in ONNX Runtime (MLAS).
3. Whole forwards, interleaved: libtorch (both forms) and ONNX Runtime.

The actor-infer binary's own kernel (src/model/gemm.rs) is measured by `actor-infer bench --raw`
with ACTOR_INFER_LINEAR (README "Performance"). Knobs: THREADS (default "1 2"), TEXT, ROUNDS.
"""
import collections, ctypes, json, math, os, statistics, sys, time

import numpy as np
import onnxruntime as ort
import tokenizers
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from safetensors.torch import load_file

MODEL, ONNX = sys.argv[1], sys.argv[2]
TEXT = os.environ.get("TEXT", "the quick brown fox jumps over the lazy dog server model fast")
ROUNDS = int(os.environ.get("ROUNDS", "5"))

tok = tokenizers.Tokenizer.from_file(os.path.join(MODEL, "tokenizer.json"))
tok.no_padding(); tok.no_truncation()
ids = torch.tensor([tok.encode(TEXT).ids])
W = {k.removeprefix("bert."): v for k, v in load_file(os.path.join(MODEL, "model.safetensors")).items()}
cfg = json.load(open(os.path.join(MODEL, "config.json")))
H, NH, EPS = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"]
HD = H // NH
g = lambda n: W[n].contiguous()
layers = []
for i in range(cfg["num_hidden_layers"]):
    p = f"encoder.layer.{i}."
    layers.append(dict(
        qkv_w=torch.cat([g(p + f"attention.self.{x}.weight") for x in ("query", "key", "value")]).contiguous(),
        qkv_b=torch.cat([g(p + f"attention.self.{x}.bias") for x in ("query", "key", "value")]).contiguous(),
        ao_w=g(p + "attention.output.dense.weight"), ao_b=g(p + "attention.output.dense.bias"),
        ln1_w=g(p + "attention.output.LayerNorm.weight"), ln1_b=g(p + "attention.output.LayerNorm.bias"),
        i_w=g(p + "intermediate.dense.weight"), i_b=g(p + "intermediate.dense.bias"),
        o_w=g(p + "output.dense.weight"), o_b=g(p + "output.dense.bias"),
        ln2_w=g(p + "output.LayerNorm.weight"), ln2_b=g(p + "output.LayerNorm.bias")))
layers_t = [{k: (v.t().contiguous() if k.endswith("_w") and v.dim() == 2 else v) for k, v in L.items()} for L in layers]
word = g("embeddings.word_embeddings.weight")
pt0 = (g("embeddings.position_embeddings.weight") + g("embeddings.token_type_embeddings.weight")[0]).contiguous()
eln_w, eln_b = g("embeddings.LayerNorm.weight"), g("embeddings.LayerNorm.bias")

def lin(x, w, b):
    return F.linear(x, w, b)

def lin_t(x, wt, b):
    return torch.addmm(b, x.reshape(-1, x.shape[-1]), wt).view(*x.shape[:-1], wt.shape[1])

def forward(ls, linf):
    """src/model/bert/mod.rs's forward, op for op, for a batch without padding."""
    b, l = ids.shape
    x = F.embedding(ids, word) + pt0[:l]
    x = F.layer_norm(x, [H], eln_w, eln_b, EPS)
    for L in ls:
        qkv = linf(x, L["qkv_w"], L["qkv_b"]).view(b, l, 3, NH, HD).permute(2, 0, 3, 1, 4)
        ctx = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(b, l, H)
        a = F.layer_norm(linf(ctx, L["ao_w"], L["ao_b"]) + x, [H], L["ln1_w"], L["ln1_b"], EPS)
        it = F.gelu(linf(a, L["i_w"], L["i_b"]))
        x = F.layer_norm(linf(it, L["o_w"], L["o_b"]) + a, [H], L["ln2_w"], L["ln2_b"], EPS)
    return x.mean(1)

feed = {"input_ids": ids.numpy(), "attention_mask": np.ones_like(ids.numpy()), "token_type_ids": np.zeros_like(ids.numpy())}

def session(threads, profile=False):
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(os.environ.get("TMPDIR", "/tmp"), "actor-infer-ort-profile")
    return ort.InferenceSession(ONNX, so, providers=["CPUExecutionProvider"])

KINDS = ["linear layers (GEMM + bias)", "attention", "LayerNorm", "GELU", "residual and embedding adds",
         "embedding gather", "the rest (copies, views, allocation, pooling)"]

def kind_torch(name):
    n = name.removeprefix("aten::")
    if n in ("addmm", "mm", "linear", "matmul"): return "linear layers (GEMM + bias)"
    if "attention" in n: return "attention"
    if "layer_norm" in n: return "LayerNorm"
    if n == "gelu": return "GELU"
    if n in ("add", "add_"): return "residual and embedding adds"
    if n in ("embedding", "index_select"): return "embedding gather"
    return "the rest (copies, views, allocation, pooling)"

def kind_ort(op, name):
    projection = any(p in name for p in ("/query/", "/key/", "/value/", "dense/"))
    if op in ("MatMul", "Gemm", "FusedMatMul") or (op == "Add" and projection):
        return "linear layers (GEMM + bias)" if projection else "attention"
    if op in ("Softmax",) or (op == "Add" and "attention/self/" in name): return "attention"
    if op in ("LayerNormalization", "SkipLayerNormalization"): return "LayerNorm"
    if op in ("BiasGelu", "Gelu", "FastGelu"): return "GELU"
    if op == "Add": return "residual and embedding adds"
    if op == "Gather" and "embeddings" in name: return "embedding gather"
    return "the rest (copies, views, allocation, pooling)"

def per_kind(threads, n=100):
    """torch.profiler self times per op kind against ONNX Runtime's per-node kernel times, the
    three interleaved over ROUNDS rounds of n forwards each (so a slow spell of a shared machine
    falls on all of them); per kind the median over the rounds."""
    from torch.profiler import ProfilerActivity, profile
    torch.set_num_threads(threads)
    rounds = collections.defaultdict(lambda: collections.defaultdict(list))
    s = session(threads, profile=True)
    for _ in range(30): s.run(None, feed)
    ort_runs = 30
    with torch.inference_mode():
        for ls, lf in ((layers, lin), (layers_t, lin_t)):
            for _ in range(30): forward(ls, lf)
        for _ in range(ROUNDS):
            for label, ls, lf in (("linear", layers, lin), ("addmm W^T", layers_t, lin_t)):
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    for _ in range(n): forward(ls, lf)
                k = collections.defaultdict(float)
                for e in prof.key_averages():
                    k[kind_torch(e.key)] += e.self_cpu_time_total / n / 1e3
                for kd in KINDS: rounds[label][kd].append(k.get(kd, 0.0))
            t0 = ort_runs
            for _ in range(n): s.run(None, feed)
            ort_runs += n
            rounds["ONNX Runtime"]["_range"].append((t0, ort_runs))
    ev = json.load(open(s.end_profiling()))
    nodes = [x for x in ev if x.get("cat") == "Node" and x["name"].endswith("_kernel_time")]
    per = len(nodes) // ort_runs
    for a, b in rounds["ONNX Runtime"].pop("_range"):
        k = collections.defaultdict(float)
        for x in nodes[a * per:b * per]:
            k[kind_ort(x["args"].get("op_name"), x["name"])] += x["dur"] / n / 1e3
        for kd in KINDS: rounds["ONNX Runtime"][kd].append(k.get(kd, 0.0))
    cols = {c: {kd: statistics.median(v) for kd, v in r.items()} for c, r in rounds.items()}
    print(f"\n### per op kind, {threads} thread(s), one text of {ids.shape[1]} tokens (ms per forward, median of "
          f"{ROUNDS} interleaved rounds of {n}: libtorch self time per op, ONNX Runtime kernel time per node, {per} nodes)")
    print("| op kind | libtorch `linear` | libtorch `addmm` on W^T | ONNX Runtime |")
    print("|---|---|---|---|")
    for kd in KINDS:
        print(f"| {kd} | " + " | ".join(f"{cols[c].get(kd, 0):.3f}" for c in ("linear", "addmm W^T", "ONNX Runtime")) + " |")
    print("| **sum** | " + " | ".join(f"**{sum(cols[c].values()):.3f}**" for c in ("linear", "addmm W^T", "ONNX Runtime")) + " |")

def products(threads, m):
    """The 24 products in sequence, every form, interleaved."""
    torch.set_num_threads(threads)
    mats = [(L[w], L[b]) for L in layers for w, b in (("qkv_w", "qkv_b"), ("ao_w", "ao_b"), ("i_w", "i_b"), ("o_w", "o_b"))]
    xs = {k: torch.randn(m, k) for k in (H, cfg["intermediate_size"])}
    wts = [(w.t().contiguous(), b) for w, b in mats]
    lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
    gs = lib.cblas_sgemm_pack_get_size; gs.restype = ctypes.c_size_t; gs.argtypes = [ctypes.c_int] * 4
    pack = lib.cblas_sgemm_pack
    pack.argtypes = [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    comp = lib.cblas_sgemm_compute
    comp.argtypes = [ctypes.c_int] * 6 + [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_void_p, ctypes.c_int]
    packed, outs = [], [torch.empty(m, w.shape[0]) for w, _ in mats]
    for w, b in mats:
        n, k = w.shape
        buf = torch.empty(gs(162, 1, n, k) // 4 + 16)
        pack(101, 162, 112, 1, n, k, 1.0, w.data_ptr(), k, buf.data_ptr())
        packed.append((buf, n, k))
    dnn = [(torch.ops.mkldnn._reorder_linear_weight(w, m), b, w.shape[1]) for w, b in mats]
    nodes, inits, outs_ = [], [], []
    for i, (w, b) in enumerate(mats):
        n, k = w.shape
        nodes += [helper.make_node("MatMul", [f"x{k}", f"w{i}"], [f"m{i}"]), helper.make_node("Add", [f"m{i}", f"b{i}"], [f"y{i}"])]
        inits += [numpy_helper.from_array(w.t().contiguous().numpy(), f"w{i}"), numpy_helper.from_array(b.numpy(), f"b{i}")]
        outs_.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [m, n]))
    graph = helper.make_graph(nodes, "products", [helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, [m, k]) for k in xs], outs_, inits)
    so = ort.SessionOptions(); so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    s = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=8).SerializeToString(), so,
                             providers=["CPUExecutionProvider"])
    xfeed = {f"x{k}": v.numpy() for k, v in xs.items()}
    forms = {
        "libtorch `linear` (W [out, in])": lambda: [F.linear(xs[w.shape[1]], w, b) for w, b in mats],
        "libtorch `addmm` on W^T": lambda: [torch.addmm(b, xs[wt.shape[0]], wt) for wt, b in wts],
        "MKL packed (`cblas_sgemm_compute`)": lambda: [comp(101, 111, 151, m, n, k, xs[k].data_ptr(), k, buf.data_ptr(), n, 0.0, o.data_ptr(), n)
                                                      for (buf, n, k), o in zip(packed, outs)],
        "oneDNN packed (`mkldnn._linear_pointwise`)": lambda: [torch.ops.mkldnn._linear_pointwise(xs[k], w, b, "none", [], "") for w, b, k in dnn],
        "ONNX Runtime (MLAS)": lambda: s.run(None, xfeed),
    }
    t = collections.defaultdict(list)
    with torch.inference_mode():
        for f in forms.values():
            for _ in range(20): f()
        for _ in range(ROUNDS):
            for name, f in forms.items():
                for _ in range(30):
                    t0 = time.perf_counter(); f(); t[name].append((time.perf_counter() - t0) * 1e3)
    mb = sum(w.numel() * 4 for w, _ in mats) / 1e6
    flop = sum(2 * m * w.numel() for w, _ in mats)
    print(f"\n### the 24 products alone, {m} rows, {threads} thread(s) ({mb:.1f} MB of weights), median of {ROUNDS} interleaved rounds")
    print("| form | ms | GB/s of weights | GFLOP/s |")
    print("|---|---|---|---|")
    for name in forms:
        v = statistics.median(t[name])
        print(f"| {name} | {v:.3f} | {mb / v:.1f} | {flop / v / 1e6:.0f} |")

def whole(threads):
    torch.set_num_threads(threads)
    s = session(threads)
    forms = {"libtorch `linear`": lambda: forward(layers, lin), "libtorch `addmm` on W^T": lambda: forward(layers_t, lin_t),
             "ONNX Runtime": lambda: s.run(None, feed)}
    t = collections.defaultdict(list)
    with torch.inference_mode():
        ref = forward(layers, lin)
        diff = (torch.from_numpy(s.run(None, feed)[0]).mean(1) - ref).abs().max().item()
        for f in forms.values():
            for _ in range(20): f()
        for _ in range(ROUNDS):
            for name, f in forms.items():
                for _ in range(40):
                    t0 = time.perf_counter(); f(); t[name].append((time.perf_counter() - t0) * 1e3)
    print(f"\n### whole forward, {threads} thread(s), median of {ROUNDS} interleaved rounds (ONNX Runtime vs libtorch: max abs diff {diff:.1e})")
    print("| form | ms |")
    print("|---|---|")
    for name in forms:
        print(f"| {name} | {statistics.median(t[name]):.3f} |")

print(f"torch {torch.__version__}, onnxruntime {ort.__version__}; text {TEXT!r} ({ids.shape[1]} tokens)")
PARTS = os.environ.get("PARTS", "whole kinds products").split()
for threads in [int(x) for x in os.environ.get("THREADS", "1 2").split()]:
    if "whole" in PARTS: whole(threads)
    if "kinds" in PARTS: per_kind(threads)
    if "products" in PARTS:
        for m in (ids.shape[1], 384):
            products(threads, m)
