"""int8 (ONNX Runtime dynamic quantization) against float32, on the whole corpus, in one run.

    python benchmarks/int8.py [--threads 2] [--rounds 3] [--output benchmarks/results/int8.json]

Exports all-MiniLM-L6-v2 three ways (float32 ONNX, float32 AOTInductor, int8 ONNX; default buckets), then
embeds the corpus end to end (tokenization included) with each, alternating contenders for ``--rounds`` rounds
on the same threads. Prints median seconds, the int8 speed-up over each float32 format, the artifact sizes,
and the cosine of every int8 embedding against float32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import corpus, machine, pin_threads  # noqa: E402

import torchship  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "int8.json")
    args = parser.parse_args()
    pin_threads(args.threads)
    texts = corpus()
    work = Path(tempfile.mkdtemp(prefix="torchship-int8-"))
    exports = {
        "float32 onnx": torchship.ExportOptions(formats=("onnx",)),
        "float32 aoti": torchship.ExportOptions(formats=("aoti",)),
        "int8 onnx": torchship.ExportOptions(formats=("onnx",), dtype="int8"),
    }
    predictors = {}
    sizes = {}
    for name, options in exports.items():
        path = torchship.export("demo", work / name.replace(" ", "-"), options)
        predictors[name] = torchship.load(path, threads=args.threads)
        sizes[name] = sum(p.stat().st_size for p in path.glob("model.*"))
    seconds: dict[str, list[float]] = {name: [] for name in predictors}
    vectors = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # texts past the longest bucket are truncated alike
        for p in predictors.values():
            p(texts[:64])  # warm-up
        for _ in range(args.rounds):
            for name, p in predictors.items():
                start = time.perf_counter()
                vectors[name] = p(texts)
                seconds[name].append(time.perf_counter() - start)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    cosine = (vectors["int8 onnx"] * vectors["float32 onnx"]).sum(1)
    result = {
        "machine": machine(),
        "threads": args.threads,
        "texts": len(texts),
        "rounds": args.rounds,
        "seconds": seconds,
        "median_seconds": median,
        "int8_speedup_over_float32_onnx": median["float32 onnx"] / median["int8 onnx"],
        "int8_speedup_over_float32_aoti": median["float32 aoti"] / median["int8 onnx"],
        "model_bytes": sizes,
        "cosine_int8_vs_float32": {
            "min": float(cosine.min()),
            "p1": float(np.percentile(cosine, 1)),
            "median": float(np.median(cosine)),
        },
    }
    for name, s in median.items():
        print(f"{name:14} {s:6.2f} s  ({len(texts) / s:6.1f} texts/s)  model {sizes[name] / 1e6:5.1f} MB")
    print(f"int8 speed-up: {result['int8_speedup_over_float32_onnx']:.2f}x over float32 ONNX, "
          f"{result['int8_speedup_over_float32_aoti']:.2f}x over float32 AOTInductor")  # fmt: skip
    c = result["cosine_int8_vs_float32"]
    print(f"int8 embeddings vs float32: cosine min {c['min']:.4f}, p1 {c['p1']:.4f}, median {c['median']:.4f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
