"""Which attention implementation to trace BERT with: eager against SDPA, parity first, then speed.

    python benchmarks/attention.py [--threads 2] [--output benchmarks/results/attention.json]

Exports all-MiniLM-L6-v2 (a real BertModel) twice, with ``--attn-implementation eager`` and ``sdpa``, each to
TorchScript and ONNX (export-time parity against the eager model is part of the export). Then times every format
of both at 1x16, 1x128 and 8x128 on the same threads, in one run, and checks the two agree on the corpus.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import corpus, machine, pin_threads, timed  # noqa: E402

import torchship  # noqa: E402

SHAPES = ((1, 16), (1, 128), (8, 128))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "attention.json")
    args = parser.parse_args()
    pin_threads(args.threads)
    texts = corpus()[:200]
    results: dict[str, dict[str, float]] = {}
    parity: dict[str, float] = {}
    embeddings = {}
    with tempfile.TemporaryDirectory() as tmp:
        for attn in ("eager", "sdpa"):
            options = torchship.ExportOptions(
                formats=("torchscript", "onnx"), seq_lengths=(16, 128), attn_implementation=attn
            )
            art = torchship.export("demo", Path(tmp) / attn, options)
            manifest = torchship.load(art).manifest
            for fmt, entries in manifest.formats.items():
                parity[f"{attn} {fmt}"] = max(max((e.parity or {})["max_abs_diff"].values()) for e in entries)
                predictor = torchship.load(art, format=fmt, threads=args.threads)
                engine = predictor.engine
                backend = engine.backends[fmt]
                row = {}
                for batch, seq in SHAPES:
                    ids = torch.randint(1000, 2000, (batch, seq), generator=torch.Generator().manual_seed(0))
                    padded = engine.pad({"input_ids": ids}, backend.pad_length(seq))
                    median, _ = timed(lambda p=padded, b=backend, e=engine: e.forward(b, p), args.repeats, warmup=3)
                    row[f"{batch}x{seq}"] = median * 1e3
                results[f"{attn} {fmt}"] = row
                embeddings[f"{attn} {fmt}"] = predictor(texts)
    base = embeddings["eager torchscript"]
    agreement = {name: float(np.abs(e - base).max()) for name, e in embeddings.items()}
    print(f"{'variant':24} {'parity':>9} " + " ".join(f"{b}x{s:<4} ms" for b, s in SHAPES) + "  corpus max diff")
    for name, row in results.items():
        cells = " ".join(f"{row[f'{b}x{s}']:10.2f}" for b, s in SHAPES)
        print(f"{name:24} {parity[name]:9.2e} {cells}  {agreement[name]:.2e}")
    for fmt in ("torchscript", "onnx"):
        ratios = {k: results[f"eager {fmt}"][k] / results[f"sdpa {fmt}"][k] for k in results[f"eager {fmt}"]}
        print(f"{fmt}: eager / sdpa time " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "machine": {**machine(), "threads": args.threads},
        "median_ms": results,
        "parity_max_abs_diff": parity,
        "corpus_max_abs_diff_vs_eager_torchscript": agreement,
    }
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
