#!/usr/bin/env python3
"""Generates tests/fixtures/quantize/: what sentence-transformers' own `quantize_embeddings`
outputs, for tests/quantize.rs to compare src/model/quantize.rs with, byte for byte.

Nothing here runs our code. The inputs are sentence-transformers' embeddings of the 14
reference texts (tests/fixtures/minilm-reference.json, all-MiniLM-L6-v2, normalised) and small
seeded synthetic sets that reach the edges: values outside the calibration range (saturation at
0 / 255), exact minima and maxima, zeros and -0.0 (not > 0 for the sign bits), a dimension whose
minimum equals its maximum (numpy's step of 1 there), and widths that are not a multiple of 8
(the padded last byte of `binary`). For every case the ranges are those `quantize_embeddings`
itself uses: computed from `calibration_embeddings` by its `_get_quantization_ranges`, or
given as `ranges=`. The ranges of the MiniLM case are also saved with `np.save` (float32 and
float64) and as JSON, the files `model.quantization.ranges_file` reads.

Pinned versions (the committed files were made with them; the script refuses others):
    sentence-transformers==6.2.0 numpy==2.3.5 torch==2.11.0

Rerun (outside CI, which reads only the committed files; PyPI's torch pulls about 3 GB of CUDA
wheels, which sentence-transformers' import needs):
    python3 -m venv /tmp/st-venv
    /tmp/st-venv/bin/pip install torch==2.11.0 sentence-transformers==6.2.0 \
        transformers==5.23.0 tokenizers==0.23.3 numpy==2.3.5
    /tmp/st-venv/bin/python scripts/gen_quantize_fixtures.py
Two runs write byte-identical files.
"""

import json
import sys
from pathlib import Path

import numpy as np
import sentence_transformers
from sentence_transformers.util.quantization import _get_quantization_ranges, quantize_embeddings

PINS = {"sentence_transformers": "6.2.0", "numpy": "2.3.5"}
ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "quantize"
PRECISIONS = ["int8", "uint8", "binary", "ubinary"]


def check_versions():
    found = {"sentence_transformers": sentence_transformers.__version__, "numpy": np.__version__}
    if found != PINS:
        sys.exit(f"gen_quantize_fixtures.py: need {PINS}, found {found}")


def floats(a):
    """float32 values as JSON numbers: a float32 widened to a double prints its exact value."""
    return [[float(x) for x in row] for row in np.asarray(a, dtype=np.float32)]


def case(name, embeddings, *, calibration=None, ranges=None):
    """Every precision of `embeddings`, with the ranges quantize_embeddings used."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if ranges is None:
        ranges = _get_quantization_ranges(embeddings, "int8", calibration)
    ranges = np.asarray(ranges, dtype=np.float32)
    outputs = {}
    for p in PRECISIONS:
        if p.endswith("int8"):
            if calibration is not None:
                q = quantize_embeddings(embeddings, p, calibration_embeddings=calibration)
            else:
                q = quantize_embeddings(embeddings, p, ranges=ranges)
        else:
            q = quantize_embeddings(embeddings, p)
        outputs[p] = [[int(v) for v in row] for row in q]
    out = {
        "name": name,
        "dim": int(embeddings.shape[1]),
        "embeddings": floats(embeddings),
        "ranges": floats(ranges),
        "outputs": outputs,
    }
    if calibration is not None:
        out["calibration"] = floats(calibration)
    return out


def main():
    check_versions()
    ref = json.loads((ROOT / "tests" / "fixtures" / "minilm-reference.json").read_text())
    minilm = np.array([c["embedding"] for c in ref["cases"]], dtype=np.float32)
    rng = np.random.default_rng(27)

    cases = []
    # The reference embeddings calibrated on themselves (what `calibration_embeddings=` does).
    cases.append(case("minilm-self", minilm, calibration=minilm))
    # Scaled up and shifted with those ranges: many values fall outside them and saturate.
    minilm_ranges = _get_quantization_ranges(minilm, "int8", minilm).astype(np.float32)
    shifted = (minilm * 1.7 + rng.normal(0, 0.02, minilm.shape)).astype(np.float32)
    cases.append(case("minilm-outside", shifted, ranges=minilm_ranges))

    # 13 dimensions (binary pads its second byte), with a constant dimension (step 1), exact
    # minima and maxima, zeros and -0.0.
    calib = rng.normal(0, 1, (40, 13)).astype(np.float32)
    calib[:, 5] = 0.25
    rows = rng.normal(0, 1.3, (30, 13)).astype(np.float32)
    rows[:, 5] = rng.choice([0.0, 0.25, 1.0], 30)
    special = np.stack([
        calib.min(axis=0), calib.max(axis=0), np.zeros(13), -np.zeros(13),
        np.full(13, 1e-30), np.full(13, -1e-30),
    ]).astype(np.float32)
    cases.append(case("synthetic-13", np.concatenate([rows, special]), calibration=calib))
    # Widths 1, 7, 8 and 9 around the byte boundary.
    for dim in (1, 7, 8, 9):
        c = rng.normal(0, 1, (20, dim)).astype(np.float32)
        cases.append(case(f"width-{dim}", rng.normal(0, 1, (12, dim)), calibration=c))

    OUT.mkdir(parents=True, exist_ok=True)
    doc = {
        "generator": "scripts/gen_quantize_fixtures.py",
        "versions": {"sentence_transformers": sentence_transformers.__version__,
                     "numpy": np.__version__},
        "cases": cases,
    }
    (OUT / "reference.json").write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    np.save(OUT / "minilm-ranges-f32.npy", minilm_ranges)
    np.save(OUT / "minilm-ranges-f64.npy", minilm_ranges.astype(np.float64))
    (OUT / "minilm-ranges.json").write_text(json.dumps(floats(minilm_ranges)) + "\n")
    # The reference texts that fit on one line of a calibration_file (not the empty one, not
    # the one with a newline): their sentence-transformers embeddings are in minilm-reference.
    (OUT / "minilm-texts.txt").write_text(
        "".join(c["text"] + "\n" for c in ref["cases"] if c["text"].strip() and "\n" not in c["text"])
    )
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
