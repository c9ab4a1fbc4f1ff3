"""Sorts `perf report --no-children --sort dso,sym --stdio` lines of an `actor-infer bench --raw
--batch-sizes 1` run into op kinds (the kinds scripts/profile_forward.py gives libtorch and ONNX
Runtime) and prints ms per forward: each kind's share of the forward's samples times the run's
median CPU time per forward (argv[1], the bench's JSON). Start-up samples (loading the weights,
packing them, the tokenizer's construction) are left out."""
import json, os, re, sys

bench = json.load(open(sys.argv[1]))
threads = sys.argv[2]
cpu_ms = bench["batches"][0]["cpu_ms_p50"]
# MKL's sgemm is the linear layers' product only where the linear layers are libtorch's
# (ACTOR_INFER_LINEAR=addmm|linear|mkl-packed, or a CPU without AVX-512); beside the AVX-512
# kernel it is the attention's own small products (q k^T, p v inside the flash kernel).
mkl_is_linear = os.environ.get("ACTOR_INFER_LINEAR", "auto") in ("addmm", "linear", "mkl-packed")
RULES = [
    ("start-up (left out)", r"PanelLinear::new|read_exact|Weights::|tokenizers::.*(from_file|deserial|from_str)|serde|_dl_|do_lookup|dl_relocate|"
                            r"registerKernel|updateDispatchTable|OperatorEntry::OperatorEntry|FunctionSchema|torch::jit|BTreeMap|Library::|RegisterOperators|c10::Dispatcher::register"),
    ("linear layers (GEMM + bias)", r"gemm::kernel|gemm::block|gemm::Job|run_job|PanelLinear|addmm" + (r"|sgemm|mkl_blas|cblas" if mkl_is_linear else "")),
    ("attention", r"flash_attention|scaled_dot|softmax|Softmax|bmm|__ieee754_exp|^exp@" + ("" if mkl_is_linear else r"|sgemm|mkl_blas|cblas")),
    ("LayerNorm", r"[Ll]ayer_?[Nn]orm|RowwiseMoments"),
    ("GELU (oneDNN eltwise: its JIT code and per-call set-up)", r"[Gg]elu|GeLU|erf|dnnl|\[JIT\]"),
    ("OpenMP fork/join and waiting", r"libgomp|gomp_|GOMP_"),
    ("residual and embedding adds", r"add_kernel|AddKernel|add_stub"),
    ("embedding gather", r"embedding|index_select|IndexSelect"),
    ("allocation, copies, page faults", r"malloc|free|_int_|unlink_chunk|memmove|memcpy|memset|clear_page|page_fault|do_anonymous_page|handle_mm_fault|mm_fault|copy_to_iter|unmap_page|alloc_pages|alloc_frozen|folio|memcg|lruvec|posix_memalign|CPUAllocator|copy_kernel|copy_"),
    ("dispatcher and tensor bookkeeping", r"c10::|at::TensorIterator|TensorImpl|intrusive_ptr|_Sp_counted|at::_ops::|at::native::empty|wrapper_CPU|tch::|torch_sys|atg_"),
]
kinds = {k: 0.0 for k, _ in RULES}
kinds["the rest (pooling, tokenizing, the kernel, unresolved)"] = 0.0
for line in sys.stdin:
    m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[[.k]\]\s+(.*)", line)
    if not m:
        continue
    pct, dso, sym = float(m.group(1)), m.group(2), m.group(3)
    for k, rx in RULES:
        if re.search(rx, f"{sym} {dso}"):
            kinds[k] += pct
            break
    else:
        kinds["the rest (pooling, tokenizing, the kernel, unresolved)"] += pct
start = kinds.pop("start-up (left out)")
total = sum(kinds.values())
print(f"\n### actor-infer's own forward by op kind, {threads} intra-op thread(s), one text of ~12 tokens "
      f"(CPU ms per forward: {cpu_ms:.2f} median, `bench --raw`; {start:.0f}% of the samples were start-up, left out)")
print("| op kind | ms per forward (CPU) | share |")
print("|---|---|---|")
for k, v in kinds.items():
    print(f"| {k} | {cpu_ms * v / total:.3f} | {100 * v / total:.0f}% |")
