#!/usr/bin/env python3
"""The client packages people already have, against a running actor-infer (tests/clients.rs).

    check.py openai HTTP_BASE REFERENCE_JSON
    check.py openai-quantized HTTP_BASE REFERENCE_JSON RANGES_NPY
    check.py hf HTTP_BASE REFERENCE_JSON
    check.py hf-classifier HTTP_BASE FIXTURE_REFERENCE_JSON
    check.py reflection GRPC_ADDR REFERENCE_JSON
    check.py tei-grpc GRPC_ADDR REFERENCE_JSON PROTO_ROOT

Each compares the numbers it gets with the reference (sentence-transformers' embeddings, or the
transformers pipeline's scores for a classifier fixture), fails with a message naming what
differs, and prints one JSON line of figures (the worst differences) for the test to assert on.
"""
import base64
import json
import math
import os
import struct
import subprocess
import sys
import tempfile

TOL = 1e-4


def load(path):
    with open(path) as f:
        return json.load(f)


def cases(path):
    return load(path)["cases"]


def max_abs(a, b):
    assert len(a) == len(b), f"lengths differ: {len(a)} vs {len(b)}"
    return max(abs(x - y) for x, y in zip(a, b))


def normalised(v):
    n = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / n for x in v]


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / (
        math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def check_openai(base, ref):
    import openai
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused")
    cs = cases(ref)
    texts = [c["text"] for c in cs]
    worst = {}
    # The client's default is base64 (it decodes it); float on request.
    for fmt in ("base64", "float"):
        kwargs = {} if fmt == "base64" else {"encoding_format": "float"}
        r = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts, **kwargs)
        assert len(r.data) == len(cs), f"{fmt}: {len(r.data)} rows for {len(cs)} texts"
        assert [d.index for d in r.data] == list(range(len(cs)))
        worst[fmt] = max(max_abs(d.embedding, c["embedding"]) for d, c in zip(r.data, cs))
        assert worst[fmt] < TOL, f"{fmt}: max diff {worst[fmt]}"
        assert r.usage.prompt_tokens == sum(c["tokens"] for c in cs), r.usage
    # Matryoshka: the first 64 dimensions, renormalised.
    r = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts[0], dimensions=64,
                                 encoding_format="float")
    want = normalised(cs[0]["embedding"][:64])
    worst["dimensions_64"] = max_abs(r.data[0].embedding, want)
    assert worst["dimensions_64"] < TOL, worst
    # A raw base64 request (what the client decodes) holds the same little-endian floats.
    raw = client.embeddings.with_raw_response.create(model="m", input=texts[0])
    b64 = json.loads(raw.text)["data"][0]["embedding"]
    floats = struct.unpack(f"<{384}f", base64.b64decode(b64))
    worst["raw_base64"] = max_abs(floats, cs[0]["embedding"])
    assert worst["raw_base64"] < TOL, worst
    print(json.dumps(worst))


def st_quantize(emb, precision, ranges=None):
    """sentence-transformers' quantize_embeddings (6.2.0) for `precision`, with the saturation
    at the ranges' ends that the server documents (numpy's cast of an out-of-range float is
    undefined; sentence-transformers leaves it so)."""
    import numpy as np
    emb = np.asarray(emb, dtype=np.float32)
    if precision in ("binary", "ubinary"):
        packed = np.packbits(emb > 0, axis=-1)
        return (packed.astype(np.int16) - 128).astype(np.int8) if precision == "binary" else packed
    ranges = np.asarray(ranges, dtype=np.float32)
    starts = ranges[0, :]
    steps = (ranges[1, :] - starts) / 255
    steps = np.where(steps == 0, np.float32(1), steps)
    q = np.clip(np.floor((emb - starts) / steps), 0, 255)
    return (q - 128).astype(np.int8) if precision == "int8" else q.astype(np.uint8)


def check_openai_quantized(base, ref, ranges_npy):
    """The openai client with `extra_body={"output_dtype": ...}` against a server calibrated
    with RANGES_NPY (ranges sentence-transformers computed): the numbers are
    sentence-transformers' quantization of its own reference embeddings, a step off at most
    for int8/uint8 (outside the dimensions whose range is empty), and only where a component is within the parity tolerance of a range's end
    or of 0 for the binary types."""
    import numpy as np
    import openai
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused")
    cs = cases(ref)
    texts = [c["text"] for c in cs]
    emb = np.array([c["embedding"] for c in cs], dtype=np.float32)
    ranges = np.load(ranges_npy)
    figures = {}
    for precision in ("int8", "uint8", "binary", "ubinary"):
        want = st_quantize(emb, precision, ranges).astype(np.int16)
        r = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts,
                                     encoding_format="float",
                                     extra_body={"output_dtype": precision})
        got = np.array([d.embedding for d in r.data]).astype(np.int16)
        assert got.shape == want.shape, (precision, got.shape, want.shape)
        diff = np.abs(got - want)
        if precision in ("int8", "uint8"):
            # A dimension whose calibration range is (nearly) empty (MiniLM has three dead
            # ones, about 1e-32 wide) buckets float noise: compare the others.
            live = (ranges[1] - ranges[0]) / 255 > 1e-5
            figures["dead_dimensions"] = int((~live).sum())
            assert diff[:, live].max() <= 1, (precision, int(diff[:, live].max()))
            diff = diff[:, live]
        else:
            # A differing byte must come from a sign flip of a component near 0.
            for i, j in zip(*np.nonzero(diff)):
                near = np.abs(emb[i, j * 8:(j + 1) * 8]).min()
                assert near < TOL, (precision, i, j, float(near))
        figures[f"{precision}_values_off"] = int((diff != 0).sum())
        # The same bytes in base64 when asked for explicitly.
        raw = client.embeddings.create(model="m", input=texts, encoding_format="base64",
                                       extra_body={"output_dtype": precision})
        dtype = np.int8 if precision in ("int8", "binary") else np.uint8
        b = np.array([np.frombuffer(base64.b64decode(d.embedding), dtype=dtype)
                      for d in raw.data]).astype(np.int16)
        assert (b == got).all(), precision
    # An output type the server cannot give is refused, naming what it offers.
    try:
        client.embeddings.create(model="m", input="a", extra_body={"output_dtype": "f16"})
        raise AssertionError("output_dtype f16 was accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400, e
        assert "float32, int8, uint8, binary, ubinary" in e.response.text, e.response.text
    print(json.dumps(figures))


def check_hf(base, ref):
    from huggingface_hub import InferenceClient
    cs = cases(ref)
    texts = [c["text"] for c in cs]
    worst = {}
    for how, client in (("base_url", InferenceClient(base_url=base)),
                        ("model_url", InferenceClient(model=base))):
        got = client.feature_extraction(texts)
        assert got.shape == (len(cs), 384), f"{how}: shape {got.shape}"
        worst[how] = max(max_abs(list(map(float, g)), c["embedding"]) for g, c in zip(got, cs))
        assert worst[how] < TOL, f"{how}: max diff {worst[how]}"
    client = InferenceClient(base_url=base)
    one = cs[0]["text"]
    # normalize=False: the unnormalised mean pooling, which normalises to the reference.
    raw = [float(x) for x in client.feature_extraction(one, normalize=False)[0]]
    assert abs(math.sqrt(sum(x * x for x in raw)) - 1.0) > 1e-3, "normalize=False was ignored"
    worst["normalize_false"] = max_abs(normalised(raw), cs[0]["embedding"])
    assert worst["normalize_false"] < TOL, worst
    # truncate and truncation_direction: the 400-word case cut at 256 tokens from either end.
    long = next(c for c in cs if c["tokens"] == 256)
    right = [float(x) for x in client.feature_extraction(long["text"], truncate=True)[0]]
    worst["truncate_right"] = max_abs(right, long["embedding"])
    assert worst["truncate_right"] < TOL, worst
    # A text whose two ends say different things: left truncation keeps the end.
    head, tail = "The weather is sunny and warm today.", "Stock markets fell sharply on Monday."
    mixed = " ".join([head] * 40 + [tail] * 40)
    kept = {d: [float(x) for x in client.feature_extraction(
        mixed, truncate=True, truncation_direction=d)[0]] for d in ("left", "right")}
    h, t = ([float(x) for x in client.feature_extraction(s)[0]] for s in (head, tail))
    worst["left_vs_right_cosine"] = cosine(kept["left"], kept["right"])
    assert cosine(kept["left"], t) > cosine(kept["left"], h), "left truncation did not keep the end"
    assert cosine(kept["right"], h) > cosine(kept["right"], t), "right truncation did not keep the start"
    try:
        client.feature_extraction(long["text"], truncate=False)
        raise AssertionError("truncate=False accepted an over-long text")
    except Exception as e:  # huggingface_hub raises its HTTP error with our message
        assert "truncate is false" in str(e) or "400" in str(e), e
    # dimensions, through the same client.
    short = [float(x) for x in client.feature_extraction(one, dimensions=32)[0]]
    worst["dimensions_32"] = max_abs(short, normalised(cs[0]["embedding"][:32]))
    assert worst["dimensions_32"] < TOL, worst
    # prompt_name: the server's model has a prompt named `query` (the test adds it).
    prompted = [float(x) for x in client.feature_extraction(one, prompt_name="query")[0]]
    by_hand = [float(x) for x in client.feature_extraction("query: " + one)[0]]
    worst["prompt_name"] = max_abs(prompted, by_hand)
    assert worst["prompt_name"] < 1e-6, worst
    assert max_abs(prompted, cs[0]["embedding"]) > 1e-3, "the prompt changed nothing"
    # sentence_similarity: cosines of the reference embeddings.
    sims = client.sentence_similarity(cs[0]["text"], other_sentences=[c["text"] for c in cs[1:4]])
    want = [cosine(cs[0]["embedding"], c["embedding"]) for c in cs[1:4]]
    worst["similarity"] = max_abs(list(map(float, sims)), want)
    assert worst["similarity"] < TOL, worst
    print(json.dumps(worst))


def check_hf_classifier(base, ref):
    from huggingface_hub import InferenceClient
    r = load(ref)
    client = InferenceClient(base_url=base)
    worst = 0.0
    for text, scores in zip(r["texts"], r["scores"]):
        got = client.text_classification(text)
        assert [g.label for g in got] == [s["label"] for s in scores], (got, scores)
        worst = max(worst, max(abs(g.score - s["score"]) for g, s in zip(got, scores)))
    top = client.text_classification(r["texts"][0], top_k=1)
    assert len(top) == 1 and top[0].label == r["scores"][0][0]["label"], top
    assert worst < TOL, worst
    print(json.dumps({"classification": worst}))


def check_reflection(addr, ref):
    import grpc
    from google.protobuf import descriptor_pool, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase)
    channel = grpc.insecure_channel(addr)
    db = ProtoReflectionDescriptorDatabase(channel)
    services = set(db.get_services())
    for want in ("actor_infer.v1.InferenceService", "tei.v1.Embed", "tei.v1.Info",
                 "grpc.health.v1.Health"):
        assert want in services, f"{want} not discovered: {services}"
    pool = descriptor_pool.DescriptorPool(db)
    method = pool.FindMethodByName("actor_infer.v1.InferenceService.Infer")
    Req = message_factory.GetMessageClass(method.input_type)
    Resp = message_factory.GetMessageClass(method.output_type)
    infer = channel.unary_unary("/actor_infer.v1.InferenceService/Infer",
                                request_serializer=Req.SerializeToString,
                                response_deserializer=Resp.FromString)
    cs = cases(ref)
    resp = infer(Req(texts=[c["text"] for c in cs]))
    assert len(resp.outputs) == len(cs)
    worst = max(max_abs(list(o.embedding), c["embedding"]) for o, c in zip(resp.outputs, cs))
    assert worst < TOL, worst
    assert [o.token_count for o in resp.outputs] == [c["tokens"] for c in cs]
    hmethod = pool.FindMethodByName("grpc.health.v1.Health.Check")
    HReq = message_factory.GetMessageClass(hmethod.input_type)
    HResp = message_factory.GetMessageClass(hmethod.output_type)
    check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                request_serializer=HReq.SerializeToString,
                                response_deserializer=HResp.FromString)
    status = check(HReq(service=""), timeout=5).status
    assert status == 1, f"health status {status} (1 is SERVING)"
    print(json.dumps({"reflection_infer": worst, "services": sorted(services)}))


def check_tei_grpc(addr, ref, proto_root):
    import grpc
    from grpc_tools import protoc
    out = tempfile.mkdtemp()
    rc = protoc.main(["protoc", f"-I{proto_root}", f"--python_out={out}", f"--grpc_python_out={out}",
                      os.path.join(proto_root, "tei/v1/tei.proto")])
    assert rc == 0, "protoc failed"
    sys.path.insert(0, out)
    from tei.v1 import tei_pb2, tei_pb2_grpc
    channel = grpc.insecure_channel(addr)
    info = tei_pb2_grpc.InfoStub(channel).Info(tei_pb2.InfoRequest())
    assert info.model_id == "all-MiniLM-L6-v2" and info.max_input_length == 256, info
    assert info.model_type == tei_pb2.MODEL_TYPE_EMBEDDING
    embed = tei_pb2_grpc.EmbedStub(channel)
    cs = cases(ref)
    worst = {}
    # TEI's normalize defaults to false over gRPC (a proto3 bool): ask for it, as TEI's users do.
    got = [embed.Embed(tei_pb2.EmbedRequest(inputs=c["text"], normalize=True)) for c in cs]
    worst["embed"] = max(max_abs(list(g.embeddings), c["embedding"]) for g, c in zip(got, cs))
    assert got[0].metadata.compute_tokens == cs[0]["tokens"], got[0].metadata
    stream = list(embed.EmbedStream(iter(tei_pb2.EmbedRequest(inputs=c["text"], normalize=True)
                                         for c in cs)))
    assert len(stream) == len(cs)
    worst["embed_stream"] = max(max_abs(list(g.embeddings), c["embedding"])
                                for g, c in zip(stream, cs))
    everything = embed.EmbedAll(tei_pb2.EmbedAllRequest(inputs=cs[0]["text"]))
    tokens = [list(t.embeddings) for t in everything.token_embeddings]
    assert len(tokens) == cs[0]["tokens"] and len(tokens[0]) == 384
    mean = normalised([sum(t[d] for t in tokens) / len(tokens) for d in range(384)])
    worst["embed_all_mean"] = max_abs(mean, cs[0]["embedding"])
    for k, v in worst.items():
        assert v < TOL, f"{k}: {v}"
    tok = tei_pb2_grpc.TokenizeStub(channel)
    enc = tok.Tokenize(tei_pb2.EncodeRequest(inputs="Hello world", add_special_tokens=True))
    assert [t.text for t in enc.tokens] == ["[CLS]", "Hello", "world", "[SEP]"], enc
    dec = tok.Decode(tei_pb2.DecodeRequest(ids=[t.id for t in enc.tokens], skip_special_tokens=True))
    assert dec.text == "hello world", dec
    try:
        tei_pb2_grpc.PredictStub(channel).Predict(tei_pb2.PredictRequest(inputs="x"))
        raise AssertionError("Predict on an embedding model answered")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e
    print(json.dumps(worst))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"openai": check_openai, "openai-quantized": check_openai_quantized, "hf": check_hf, "hf-classifier": check_hf_classifier,
     "reflection": check_reflection, "tei-grpc": check_tei_grpc}[cmd](*args)
