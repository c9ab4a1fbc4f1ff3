"""Drives actor-infer with Triton's own Python clients (tritonclient[http,grpc] from PyPI), for
tests/kserve.rs. Runs from the venv that scripts/test-deps.sh makes; prints one JSON object.

  kserve_client.py infer HTTP GRPC MODEL      stdin: {"inputs": {name: [texts]}, "outputs": [names],
                                              "parameters": {...}, "repeat": N, "headers": {...}}
      -> {transport: {"outputs": {name: {"shape", "datatype", "data"}}, "id", "ms": [per call]}}
         for transports http_json (JSON tensors, shape [n]), http_binary (the binary tensor
         extension both ways, shape [n, 1]) and grpc (raw_input_contents / raw_output_contents).
  kserve_client.py probe HTTP GRPC MODEL      health, readiness and metadata over both transports
  kserve_client.py errors HTTP GRPC MODEL KEY what each transport answers without the key, with a
                                              wrong model or version, and with the key
  kserve_client.py bench HTTP GRPC MODEL N R  median latency of R requests of N texts per transport
  kserve_client.py descriptor FILE            compares the messages and service of a compiled
                                              FileDescriptorSet with tritonclient's grpc_service.proto
"""

import json
import sys
import time

import numpy as np
import tritonclient.grpc as tg
import tritonclient.http as th
from tritonclient.utils import InferenceServerException


def make_inputs(mod, spec, binary, column):
    out = []
    for name, texts in spec["inputs"].items():
        arr = np.array([t.encode("utf-8") for t in texts], dtype=np.object_)
        if column:
            arr = arr.reshape(-1, 1)
        i = mod.InferInput(name, list(arr.shape), "BYTES")
        if mod is th:
            i.set_data_from_numpy(arr, binary_data=binary)
        else:
            i.set_data_from_numpy(arr)
        out.append(i)
    return out


def make_outputs(mod, spec, binary):
    names = spec.get("outputs")
    if names is None:
        return None
    if mod is th:
        return [th.InferRequestedOutput(n, binary_data=binary) for n in names]
    return [tg.InferRequestedOutput(n) for n in names]


def tensor(result, name):
    a = result.as_numpy(name)
    if a is None:
        return None
    if a.dtype == np.object_:
        data = [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in a.reshape(-1)]
        datatype = "BYTES"
    else:
        data = [float(x) for x in a.reshape(-1)]
        datatype = str(a.dtype)
    return {"shape": list(a.shape), "datatype": datatype, "data": data}


def run_infer(http, grpc, model):
    spec = json.load(sys.stdin)
    headers = spec.get("headers") or None
    params = spec.get("parameters") or None
    repeat = spec.get("repeat", 1)
    names = spec.get("outputs") or spec.get("expect", [])
    report = {}
    for transport, mod, url, binary, column in (
        ("http_json", th, http, False, False),
        ("http_binary", th, http, True, True),
        ("grpc", tg, grpc, True, False),
    ):
        client = mod.InferenceServerClient(url)
        ms = []
        for _ in range(repeat):
            inputs = make_inputs(mod, spec, binary, column)
            outputs = make_outputs(mod, spec, binary)
            t0 = time.perf_counter()
            kw = {"outputs": outputs, "request_id": "req-%s" % transport,
                  "headers": dict(headers) if headers else None}
            if params:
                kw["parameters"] = params
            result = client.infer(model, inputs, **kw)
            ms.append((time.perf_counter() - t0) * 1e3)
        response = result.get_response()
        rid = response["id"] if mod is th else response.id
        outs = {}
        for name in names:
            outs[name] = tensor(result, name)
        report[transport] = {"outputs": outs, "id": rid, "ms": ms}
        client.close()
    return report


def run_probe(http, grpc, model):
    report = {}
    for transport, mod, url in (("http", th, http), ("grpc", tg, grpc)):
        c = mod.InferenceServerClient(url)
        server = c.get_server_metadata()
        meta = c.get_model_metadata(model, model_version="1")
        if mod is tg:
            server = {"name": server.name, "version": server.version, "extensions": list(server.extensions)}
            meta = {
                "name": meta.name,
                "versions": list(meta.versions),
                "platform": meta.platform,
                "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.inputs],
                "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.outputs],
            }
        report[transport] = {
            "live": c.is_server_live(),
            "ready": c.is_server_ready(),
            "model_ready": c.is_model_ready(model),
            "model_ready_v1": c.is_model_ready(model, model_version="1"),
            "server": server,
            "model": meta,
        }
        c.close()
    return report


def error_of(call):
    try:
        call()
        return {"ok": True}
    except InferenceServerException as e:
        return {"ok": False, "status": str(e.status()), "message": e.message()}


def run_errors(http, grpc, model, key):
    report = {}
    good = {"authorization": "Bearer " + key}
    for transport, mod, url in (("http", th, http), ("grpc", tg, grpc)):
        c = mod.InferenceServerClient(url)

        def infer(name=model, version="", headers=None, texts=("a",)):
            spec = {"inputs": {"text": list(texts)}}
            # tritonclient.http writes its own headers into the dict it is given: a copy each.
            return lambda: c.infer(
                name, make_inputs(mod, spec, True, False), model_version=version,
                headers=dict(headers) if headers else None,
            )

        report[transport] = {
            "no_key": error_of(infer()),
            "wrong_key": error_of(infer(headers={"authorization": "Bearer nope"})),
            "with_key": error_of(infer(headers=good)),
            "wrong_model": error_of(infer(name="no-such-model", headers=good)),
            "wrong_version": error_of(infer(version="2", headers=good)),
            "too_many_texts": error_of(infer(headers=good, texts=["t"] * 9)),
            "ready_without_key": c.is_server_ready(),
            "unimplemented": error_of(lambda: c.get_model_config(model, headers=good)),
        }
        c.close()
    return report


def run_descriptor(path):
    from google.protobuf import descriptor_pb2
    from tritonclient.grpc import service_pb2

    ours = descriptor_pb2.FileDescriptorSet()
    with open(path, "rb") as f:
        ours.ParseFromString(f.read())
    theirs = descriptor_pb2.FileDescriptorProto()
    service_pb2.DESCRIPTOR.CopyToProto(theirs)
    problems, checked = [], 0

    def index(messages, prefix):
        out = {}
        for m in messages:
            out[prefix + m.name] = m
            out.update(index(m.nested_type, prefix + m.name + "."))
        return out

    def field(f):
        return (f.name, f.number, f.type, f.label, f.type_name, f.HasField("oneof_index"))

    their_messages = index(theirs.message_type, "")
    (file,) = [f for f in ours.file if f.package == "inference"]
    for name, m in index(file.message_type, "").items():
        t = their_messages.get(name)
        if t is None:
            problems.append("message %s is not in Triton's proto" % name)
            continue
        mine = sorted(field(f) for f in m.field)
        want = sorted(field(f) for f in t.field)
        if mine != want:
            problems.append("message %s: ours %s, Triton's %s" % (name, mine, want))
        checked += 1
    (their_service,) = [s for s in theirs.service if s.name == "GRPCInferenceService"]
    their_methods = {m.name: m for m in their_service.method}
    (service,) = file.service
    for m in service.method:
        t = their_methods.get(m.name)
        key = lambda x: (x.input_type, x.output_type, x.client_streaming, x.server_streaming)
        if t is None or key(t) != key(m):
            problems.append("rpc %s differs from Triton's" % m.name)
        checked += 1
    return {"package": file.package, "service": service.name, "checked": checked, "problems": problems}


def run_bench(http, grpc, model, texts, repeat):
    """Median client-side latency of one request of TEXTS short texts, per transport."""
    texts, repeat = int(texts), int(repeat)
    spec = {"inputs": {"text": ["A short sentence number %d to embed." % i for i in range(texts)]},
            "outputs": ["embedding"]}
    report = {}
    for transport, mod, url, binary in (
        ("http_json", th, http, False),
        ("http_binary", th, http, True),
        ("grpc", tg, grpc, True),
    ):
        client = mod.InferenceServerClient(url)
        for _ in range(3):  # warm-up: connections, first batches
            client.infer(model, make_inputs(mod, spec, binary, False), outputs=make_outputs(mod, spec, binary))
        ms = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            r = client.infer(model, make_inputs(mod, spec, binary, False), outputs=make_outputs(mod, spec, binary))
            r.as_numpy("embedding")
            ms.append((time.perf_counter() - t0) * 1e3)
        ms.sort()
        report[transport] = {"median_ms": round(ms[len(ms) // 2], 2), "p90_ms": round(ms[int(len(ms) * 0.9)], 2)}
        client.close()
    return report


def main():
    mode = sys.argv[1]
    if mode == "infer":
        out = run_infer(*sys.argv[2:5])
    elif mode == "probe":
        out = run_probe(*sys.argv[2:5])
    elif mode == "errors":
        out = run_errors(*sys.argv[2:6])
    elif mode == "bench":
        out = run_bench(*sys.argv[2:7])
    elif mode == "descriptor":
        out = run_descriptor(sys.argv[2])
    else:
        raise SystemExit("unknown mode " + mode)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
