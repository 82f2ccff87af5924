"""int8 (ONNX Runtime's dynamic quantization, torchao's PT2E for AOTInductor) against float32, on the whole corpus,
in one run.

    python benchmarks/int8.py [--threads 2] [--rounds 3] [--output benchmarks/results/int8.json]

Exports all-MiniLM-L6-v2 five ways (float32 ONNX, float32 AOTInductor, int8 ONNX and int8 AOTInductor under the
default gate, and int8 ONNX quantized whole: a gate it holds; default buckets; int8 AOTInductor needs the int8
extra, torchao), then embeds the corpus end to end (tokenization
included) with each, alternating contenders for ``--rounds`` rounds on the same threads. Prints median seconds,
each int8 artifact's speed-up over each float32 format, the artifact sizes, the export seconds, the layers the
gate kept in float32, and the cosine of every int8 embedding against float32 ONNX. The corpus is not what the
gate measured (it measures the standard library's docstrings), so the cosine here checks the gate on texts it
never saw.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments, corpus, machine, pin_threads  # noqa: E402

import torchship  # noqa: E402


def main() -> int:
    args = arguments(__doc__, "int8.json").parse_args()
    pin_threads(args.threads)
    texts = corpus()
    work = Path(tempfile.mkdtemp(prefix="torchship-int8-"))
    exports = {
        "float32 onnx": torchship.ExportOptions(formats=("onnx",)),
        "float32 aoti": torchship.ExportOptions(formats=("aoti",)),
        "int8 onnx": torchship.ExportOptions(formats=("onnx",), dtype="int8"),
        "int8 onnx whole": torchship.ExportOptions(formats=("onnx",), dtype="int8", min_cosine=0.5),
        "int8 aoti": torchship.ExportOptions(formats=("aoti",), dtype="int8"),
    }
    predictors = {}
    sizes = {}
    export_s = {}
    kept = {}
    for name, options in exports.items():
        started = time.perf_counter()
        path = torchship.export("demo", work / name.replace(" ", "-"), options)
        export_s[name] = time.perf_counter() - started
        predictors[name] = torchship.load(path, threads=args.threads)
        sizes[name] = sum(p.stat().st_size for p in path.glob("model.*"))
        precision = json.loads((path / "manifest.json").read_text()).get("precision") or {}
        if "gate" in precision:
            kept[name] = {"float32_layers": precision["float32_layers"], "gate": precision["gate"]}
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
    int8 = [name for name in exports if name.startswith("int8")]
    result = {
        "machine": machine(),
        "threads": args.threads,
        "texts": len(texts),
        "rounds": args.rounds,
        "seconds": seconds,
        "median_seconds": median,
        "export_seconds": export_s,
        "model_bytes": sizes,
        "gate": kept,
        "int8": {},
    }
    for name in int8:
        cosine = (vectors[name] * vectors["float32 onnx"]).sum(1)
        result["int8"][name] = {
            "speedup_over_float32_onnx": median["float32 onnx"] / median[name],
            "speedup_over_float32_aoti": median["float32 aoti"] / median[name],
            "cosine_vs_float32": {
                "min": float(cosine.min()),
                "p1": float(np.percentile(cosine, 1)),
                "median": float(np.median(cosine)),
            },
        }
    for name, s in median.items():
        print(f"{name:16} {s:6.2f} s  ({len(texts) / s:6.1f} texts/s)  model {sizes[name] / 1e6:5.1f} MB  "
              f"export {export_s[name]:5.1f} s")  # fmt: skip
    for name in int8:
        r, c = result["int8"][name], result["int8"][name]["cosine_vs_float32"]
        print(f"{name}: {r['speedup_over_float32_onnx']:.2f}x over float32 ONNX, "
              f"{r['speedup_over_float32_aoti']:.2f}x over float32 AOTInductor; cosine vs float32 min {c['min']:.4f}, "
              f"p1 {c['p1']:.4f}, median {c['median']:.4f}; float32 layers {kept[name]['float32_layers']}")  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
