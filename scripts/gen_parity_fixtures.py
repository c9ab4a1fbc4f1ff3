#!/usr/bin/env python3
"""Generates the tiny parity fixtures under tests/fixtures/models/.

Each fixture is a model folder that `transformers` (or `sentence-transformers`) itself saved,
with randomly initialised weights (seeded), a tokenizer trained here on a small corpus, and a
`reference.json` holding what the *library* outputs for the fixture texts. The Rust tests
(tests/models.rs) serve each folder with the real binary and compare. Nothing here runs our
code: the references come from transformers / sentence-transformers.

Pinned versions (what the committed fixtures were made with; the script refuses others so a
rerun cannot silently change the references):
    torch==2.11.0 transformers==5.23.0 sentence-transformers==6.2.0 tokenizers==0.23.3

Rerun (outside the repository's CI; CI only reads the committed files):
    python3 -m venv /work/pyenv
    /work/pyenv/bin/pip install torch==2.11.0 transformers==5.23.0 \
        sentence-transformers==6.2.0 tokenizers==0.23.3 safetensors
    /work/pyenv/bin/python scripts/gen_parity_fixtures.py
"""

import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import sentence_transformers
import tokenizers
import torch
import transformers
from sentence_transformers import CrossEncoder, SentenceTransformer
from sentence_transformers import models as st_models
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    DistilBertModel,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForSequenceClassification,
    RobertaModel,
    XLMRobertaConfig,
    XLMRobertaModel,
)

PINNED = {
    "torch": (torch.__version__.split("+")[0], "2.11.0"),
    "transformers": (transformers.__version__, "5.23.0"),
    "sentence-transformers": (sentence_transformers.__version__, "6.2.0"),
    "tokenizers": (tokenizers.__version__, "0.23.3"),
}
for name, (have, want) in PINNED.items():
    if have != want:
        sys.exit(f"{name} {have} is installed; these fixtures are pinned to {want}")

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "models"
VERSIONS = {k: v[0] for k, v in PINNED.items()}
# Much wider than transformers' 0.02, so that different texts get clearly different outputs
# and a wrong port cannot pass by accident.
INIT = 0.4

LONG = " ".join(
    f"word{i % 37} the server keeps batching texts and pooling states" for i in range(60)
)
TEXTS = [
    "Hello world, this is a test.",
    "",
    "A man is playing a guitar on stage.",
    "Café naïve résumé — accents and an em dash.",
    "Emoji are tokens too 🚀🔥",
    "The quick brown fox jumps over the lazy dog",
    LONG,
]
QUERY = "Which server batches texts?"
DOCS = [
    "The server keeps batching texts.",
    "",
    "A man is playing a guitar on stage.",
    "Bananas are yellow.",
    LONG,
    "batching texts is what the server does",
]
PAIRS = [[QUERY, d] for d in DOCS]

CORPUS = TEXTS + DOCS + [QUERY] * 3 + [
    "the a an of to in is are was were be been and or but if then else for with on at by",
    "inference server model worker tokenizer router batch queue pooling embedding rerank",
    "classification label score softmax sigmoid logits query document relevance",
    "the quick brown fox jumps over the lazy dog while the cat sleeps in the sun",
    "hello world test sentence guitar stage man playing music concert night city",
] * 4


def wordpiece():
    """A WordPiece vocabulary built deterministically (the tokenizers trainer breaks ties in
    hash-map order, so two runs differ): the specials, every character alone and as a
    `##` continuation, and the corpus's words of up to six characters; longer words split."""
    norm = normalizers.BertNormalizer(lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    words = {w for text in CORPUS for w, _ in pre.pre_tokenize_str(norm.normalize_str(text))}
    chars = sorted({c for w in words for c in w})
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = special + chars + ["##" + c for c in chars]
    vocab += sorted(w for w in words if 1 < len(w) <= 6)
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = norm
    tok.pre_tokenizer = pre
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tok.decoder = decoders.WordPiece()
    return tok, dict(
        pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    ), ["input_ids", "token_type_ids", "attention_mask"]


def bytelevel_bpe(merges=120):
    """A byte-level BPE learnt deterministically here (most frequent pair first, ties by the
    pair itself), for the same reason as `wordpiece`."""
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False)
    counts = {}
    for text in CORPUS:
        for w, _ in pre.pre_tokenize_str(text):
            counts[w] = counts.get(w, 0) + 1
    words = {w: list(w) for w in counts}
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    vocab = special + alphabet
    learnt = []
    for _ in range(merges):
        pairs = {}
        for w, parts in words.items():
            for a, b in zip(parts, parts[1:]):
                pairs[(a, b)] = pairs.get((a, b), 0) + counts[w]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        learnt.append(best)
        vocab.append(best[0] + best[1])
        for w, parts in words.items():
            out, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    out.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            words[w] = out
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(vocab)}, learnt))
    tok.pre_tokenizer = pre
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")), trim_offsets=True,
        add_prefix_space=False,
    )
    tok.decoder = decoders.ByteLevel()
    # RoBERTa's tokenizers give no token_type_ids: the model has a single segment type.
    return tok, dict(
        bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>", pad_token="<pad>",
        unk_token="<unk>", mask_token="<mask>",
    ), ["input_ids", "attention_mask"]


def save_tokenizer(dir, made, max_len):
    tok, special, names = made
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=max_len, model_input_names=names, **special
    )
    fast.save_pretrained(dir)
    return AutoTokenizer.from_pretrained(dir)


def fresh(name):
    d = OUT / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d


def write_reference(d, ref):
    ref = {"produced_by": VERSIONS, **ref}
    (d / "reference.json").write_text(json.dumps(ref, indent=1, ensure_ascii=False) + "\n")
    size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
    print(f"{d.name}: {size // 1024} KiB")


def token_counts(tok, texts, max_len, pairs=None):
    if pairs is None:
        enc = tok(texts, truncation=True, max_length=max_len)
    else:
        enc = tok(texts, pairs, truncation=True, max_length=max_len)
    return [len(ids) for ids in enc["input_ids"]]


def small(cls, **kw):
    base = dict(
        vocab_size=400, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, hidden_act="gelu", initializer_range=INIT,
    )
    base.update(kw)
    return cls(**base)


def st_embedding(name, model_cls, config, made, max_len, pooling, normalize, seed):
    """A transformers encoder saved through sentence-transformers with `pooling`."""
    torch.manual_seed(seed)
    d = fresh(name)
    tmp = d / "_hf"
    model_cls(config).eval().save_pretrained(tmp)
    save_tokenizer(tmp, made, max_len)
    transformer = st_models.Transformer(str(tmp), max_seq_length=max_len)
    mods = [transformer, st_models.Pooling(config.hidden_size, pooling_mode=pooling)]
    if normalize:
        mods.append(st_models.Normalize())
    st = SentenceTransformer(modules=mods, device="cpu")
    st.save(str(d))
    shutil.rmtree(tmp)
    st = SentenceTransformer(str(d), device="cpu")
    emb = st.encode(TEXTS, batch_size=len(TEXTS), convert_to_numpy=True)
    one = [st.encode([t], convert_to_numpy=True)[0] for t in TEXTS]
    assert max(abs(a - b).max() for a, b in zip(emb, one)) < 1e-5, "batched == one by one"
    write_reference(d, {
        "kind": "embedding",
        "library": "sentence-transformers SentenceTransformer.encode",
        "pooling": pooling,
        "normalized": normalize,
        "max_seq_length": max_len,
        "texts": TEXTS,
        "tokens": token_counts(st.tokenizer, TEXTS, max_len),
        "embeddings": emb.tolist(),
    })
    return d


def classifier(name, model, made, max_len, pairs=False):
    """A transformers *ForSequenceClassification with the pipeline's scores as reference."""
    d = fresh(name)
    model.eval().save_pretrained(d)
    tok = save_tokenizer(d, made, max_len)
    model = AutoModelForSequenceClassification.from_pretrained(d).eval()
    pipe = transformers.pipeline(
        "text-classification", model=model, tokenizer=tok, device="cpu", top_k=None
    )
    scores = pipe(TEXTS, truncation=True, max_length=max_len)
    with torch.no_grad():
        enc = tok(TEXTS, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        logits = model(**enc).logits
    ref = {
        "kind": "classifier",
        "library": "transformers text-classification pipeline (top_k=None)",
        "problem_type": model.config.problem_type,
        "labels": [model.config.id2label[i] for i in range(model.config.num_labels)],
        "max_seq_length": max_len,
        "texts": TEXTS,
        "tokens": token_counts(tok, TEXTS, max_len),
        "logits": logits.tolist(),
        "scores": [[{"label": s["label"], "score": s["score"]} for s in row] for row in scores],
    }
    if pairs:
        ref["pairs"] = PAIRS
        ref["pair_tokens"] = token_counts(tok, [p[0] for p in PAIRS], max_len, [p[1] for p in PAIRS])
        with torch.no_grad():
            enc = tok([p[0] for p in PAIRS], [p[1] for p in PAIRS], padding=True,
                      truncation=True, max_length=max_len, return_tensors="pt")
            ref["pair_logits"] = model(**enc).logits.tolist()
    write_reference(d, ref)
    return d, model, tok


def reranker(name, model, made, max_len):
    """A cross-encoder: CrossEncoder.predict (sigmoid) and CrossEncoder.rank as reference."""
    d = fresh(name)
    model.eval().save_pretrained(d)
    save_tokenizer(d, made, max_len)
    ce = CrossEncoder(str(d), device="cpu", max_length=max_len)
    scores = ce.predict(PAIRS, batch_size=len(PAIRS), convert_to_numpy=True)
    raw = ce.predict(PAIRS, batch_size=len(PAIRS), convert_to_numpy=True,
                     activation_fn=torch.nn.Identity())
    ranking = ce.rank(QUERY, DOCS, batch_size=len(DOCS))
    write_reference(d, {
        "kind": "reranker",
        "library": "sentence-transformers CrossEncoder.predict / CrossEncoder.rank",
        "max_seq_length": max_len,
        "query": QUERY,
        "texts": DOCS,
        "tokens": token_counts(ce.tokenizer, [QUERY] * len(DOCS), max_len, DOCS),
        "scores": scores.tolist(),
        "logits": raw.tolist(),
        "ranking": [{"index": int(r["corpus_id"]), "score": float(r["score"])} for r in ranking],
    })


class Pooled(torch.nn.Module):
    """A sentence-transformers model as a module of (input_ids, attention_mask)."""

    def __init__(self, st):
        super().__init__()
        self.st = st

    def forward(self, input_ids, attention_mask):
        return self.st({"input_ids": input_ids, "attention_mask": attention_mask})[
            "sentence_embedding"
        ]


class States(torch.nn.Module):
    """A transformers encoder as a module of (input_ids, attention_mask, token_type_ids) →
    (last_hidden_state, pooler_output), the tuple a traced transformers model returns."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=token_type_ids)
        return out.last_hidden_state, out.pooler_output


class Logits(torch.nn.Module):
    """A transformers classifier as a module of (input_ids, attention_mask) → logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def trace(module, tok, max_len, three, path):
    enc = tok(TEXTS, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    args = [enc["input_ids"], enc["attention_mask"]]
    if three:
        args.append(enc["token_type_ids"])
    with torch.no_grad():
        traced = torch.jit.trace(module, tuple(args), strict=False, check_trace=False)
    traced.save(str(path))
    # The traced module must give the eager module's outputs on other shapes too.
    loaded = torch.jit.load(str(path))
    for texts in (TEXTS[:1], TEXTS[2:4], [TEXTS[-1]]):
        e = tok(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        a = [e["input_ids"], e["attention_mask"]] + ([e["token_type_ids"]] if three else [])
        with torch.no_grad():
            want, got = module(*a), loaded(*a)
        want = want[0] if isinstance(want, tuple) else want
        got = got[0] if isinstance(got, tuple) else got
        assert want.shape == got.shape and (want - got).abs().max() < 1e-5, path


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    wp, bpe = wordpiece(), bytelevel_bpe()

    # Embedding models through sentence-transformers, one pooling mode each.
    st_embedding("roberta-mean", RobertaModel,
                 small(RobertaConfig, max_position_embeddings=66, pad_token_id=1,
                       bos_token_id=0, eos_token_id=2, type_vocab_size=1),
                 bpe, 40, "mean", True, seed=1)
    st_embedding("xlm-roberta-cls", XLMRobertaModel,
                 small(XLMRobertaConfig, max_position_embeddings=66, pad_token_id=1,
                       bos_token_id=0, eos_token_id=2, type_vocab_size=1),
                 bpe, 40, "cls", False, seed=2)
    st_embedding("distilbert-max", DistilBertModel,
                 DistilBertConfig(vocab_size=400, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                  max_position_embeddings=64, pad_token_id=0, initializer_range=INIT),
                 wp, 48, "max", False, seed=3)
    st_embedding("bert-lasttoken", BertModel,
                 small(BertConfig, max_position_embeddings=64, pad_token_id=0, initializer_range=INIT),
                 wp, 48, "lasttoken", True, seed=4)

    # Classifiers: softmax over three named labels, with pairs; multi-label sigmoid;
    # RoBERTa's and DistilBERT's heads.
    torch.manual_seed(5)
    labels = {0: "negative", 1: "neutral", 2: "positive"}
    bert_cls, bert_model, bert_tok = classifier(
        "bert-classifier",
        BertForSequenceClassification(small(
            BertConfig, max_position_embeddings=64, pad_token_id=0, id2label=labels,
            label2id={v: k for k, v in labels.items()})),
        wp, 64, pairs=True)
    torch.manual_seed(6)
    ml = {i: f"topic_{c}" for i, c in enumerate("abcd")}
    classifier(
        "bert-multilabel",
        BertForSequenceClassification(small(
            BertConfig, max_position_embeddings=64, pad_token_id=0, id2label=ml,
            label2id={v: k for k, v in ml.items()},
            problem_type="multi_label_classification")),
        wp, 64)
    torch.manual_seed(7)
    classifier(
        "roberta-classifier",
        RobertaForSequenceClassification(small(
            RobertaConfig, max_position_embeddings=66, pad_token_id=1, bos_token_id=0,
            eos_token_id=2, type_vocab_size=1, num_labels=2)),
        bpe, 64)
    torch.manual_seed(8)
    classifier(
        "distilbert-classifier",
        DistilBertForSequenceClassification(DistilBertConfig(
            vocab_size=400, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
            max_position_embeddings=64, pad_token_id=0, num_labels=2,
            initializer_range=INIT)),
        wp, 64)

    # A cross-encoder (one label).
    torch.manual_seed(9)
    reranker("bert-reranker",
             BertForSequenceClassification(small(
                 BertConfig, max_position_embeddings=64, pad_token_id=0, num_labels=1)),
             wp, 64)

    # TorchScript: pooled output (2 inputs), token states (3 inputs), logits (2 inputs).
    src = SentenceTransformer(str(OUT / "bert-lasttoken"), device="cpu")
    d = fresh("ts-pooled")
    tok = src.tokenizer
    trace(Pooled(src).eval(), tok, 48, False, d / "model.pt")
    shutil.copy(OUT / "bert-lasttoken" / "config.json", d / "config.json")
    shutil.copy(OUT / "bert-lasttoken" / "tokenizer.json", d / "tokenizer.json")
    # sentence-transformers 6 keeps the maximum length in tokenizer_config.json, which a
    # TorchScript folder does not need: say it the older, plainer way.
    (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48}) + "\n")
    ref = json.loads((OUT / "bert-lasttoken" / "reference.json").read_text())
    ref.update(library="sentence-transformers SentenceTransformer.encode (the traced model)",
               source="bert-lasttoken", torchscript_inputs=2)
    write_reference(d, ref)

    torch.manual_seed(10)
    d = fresh("ts-states")
    cfg = small(BertConfig, max_position_embeddings=64, pad_token_id=0)
    bert = BertModel(cfg).eval()
    tmp = d / "_hf"
    bert.save_pretrained(tmp)
    save_tokenizer(tmp, wp, 48)
    st = SentenceTransformer(
        modules=[st_models.Transformer(str(tmp), max_seq_length=48),
                 st_models.Pooling(32, pooling_mode="mean")], device="cpu")
    tok = st.tokenizer
    eager = States(BertModel.from_pretrained(tmp).eval()).eval()
    trace(eager, tok, 48, True, d / "model.pt")
    shutil.copy(tmp / "config.json", d / "config.json")
    shutil.copy(tmp / "tokenizer.json", d / "tokenizer.json")
    emb = st.encode(TEXTS, batch_size=len(TEXTS), convert_to_numpy=True)
    shutil.rmtree(tmp)
    (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48}) + "\n")
    write_reference(d, {
        "kind": "embedding",
        "library": "sentence-transformers SentenceTransformer.encode (Transformer + mean "
                   "Pooling over the model that was traced)",
        "pooling": "mean", "normalized": False, "max_seq_length": 48, "torchscript_inputs": 3,
        "texts": TEXTS, "tokens": token_counts(tok, TEXTS, 48), "embeddings": emb.tolist(),
    })

    d = fresh("ts-logits")
    trace(Logits(bert_model).eval(), bert_tok, 64, False, d / "model.pt")
    for f in ("config.json", "tokenizer.json"):
        shutil.copy(bert_cls / f, d / f)
    ref = json.loads((bert_cls / "reference.json").read_text())
    for k in ("pairs", "pair_tokens", "pair_logits"):
        ref.pop(k, None)
    ref.update(source="bert-classifier", torchscript_inputs=2)
    write_reference(d, ref)

    # Only what the server and the tests read is kept.
    keep = {"config.json", "tokenizer.json", "model.safetensors", "model.pt", "reference.json",
            "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
            "tokenizer_config.json"}
    for f in OUT.rglob("*"):
        if f.is_file() and f.name not in keep and f.parent.name != "1_Pooling":
            f.unlink()
    for d in OUT.rglob("*"):
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()


if __name__ == "__main__":
    main()
