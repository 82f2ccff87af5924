"""Latency of every torchship format against transformers eager and a plain ONNX Runtime export.

    python benchmarks/formats.py [--threads 2] [--output benchmarks/results/formats.json]

Shapes 1x16, 1x128 and 8x128 on all-MiniLM-L6-v2, every contender on the same intra-op threads, in one run.
Prints medians, ratios to ONNX Runtime, and GFLOP/s as a percentage of a GEMM peak measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import gemm_peak, machine, pin_threads, timed  # noqa: E402

import torchship  # noqa: E402
from torchship.wrap import ExportWrapper  # noqa: E402

SHAPES = ((1, 16), (1, 128), (8, 128))


def plain_onnx(model: torch.nn.Module, path: Path, threads: int):
    """What a user gets without torchship: torch.onnx.export of the model, a default ORT session."""
    import onnxruntime as ort

    names = ("input_ids", "attention_mask", "token_type_ids")
    wrapper = ExportWrapper(model, names, ("last_hidden_state", "pooler_output")).eval()
    x = torch.ones(2, 16, dtype=torch.long)
    dim = {0: torch.export.Dim("batch", max=1024), 1: torch.export.Dim("seq", max=512)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, (x, x, x), str(path), input_names=list(names), dynamic_shapes={n: dim for n in names},
            dynamo=True, external_data=False, verbose=False,
        )  # fmt: skip
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(ids: torch.Tensor) -> object:
        feed = {
            "input_ids": ids.numpy(),
            "attention_mask": np.ones_like(ids.numpy()),
            "token_type_ids": np.zeros_like(ids.numpy()),
        }
        return session.run(None, feed)

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "formats.json")
    args = parser.parse_args()
    pin_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="torchship-formats-"))
    options = torchship.ExportOptions(formats=("all",), seq_lengths=(16, 128))
    artifact = torchship.export("demo", work / "minilm", options)
    manifest = json.loads((artifact / "manifest.json").read_text())

    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    eager = AutoModel.from_pretrained(manifest["source"]["path"]).eval()
    config = eager.config
    contenders = {}
    for fmt in manifest["formats"]:
        predictor = torchship.load(artifact, format=fmt, threads=args.threads)
        contenders[f"torchship {fmt}"] = lambda ids, p=predictor: p.run(ids)

    def run_eager(ids: torch.Tensor) -> object:
        with torch.inference_mode():
            return eager(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids))

    contenders["transformers eager"] = run_eager
    contenders["onnxruntime (plain export)"] = plain_onnx(eager, work / "plain.onnx", args.threads)
    peak = gemm_peak()

    rows: dict[str, dict[str, float]] = {name: {} for name in contenders}
    for batch, seq in SHAPES:
        ids = torch.randint(1000, 20000, (batch, seq))
        for name, fn in contenders.items():
            rows[name][f"{batch}x{seq}"] = timed(lambda f=fn, x=ids: f(x), args.repeats, warmup=3)[0]
    flops = {f"{b}x{s}": torchship.flops(config, b, s) for b, s in SHAPES}
    ort_name = "onnxruntime (plain export)"
    best = {shape: min((n for n in rows if n.startswith("torchship")), key=lambda n: rows[n][shape]) for shape in flops}

    print(f"all-MiniLM-L6-v2, {args.threads} threads, GEMM peak {peak / 1e9:.1f} GFLOP/s (fp32 torch.mm 2048^3)")
    header = "".join(f"{shape:>24}" for shape in flops)
    print(f"{'contender':30}{header}")
    for name, times in rows.items():
        cells = "".join(
            f"{times[s] * 1e3:8.2f} ms {times[s] / rows[ort_name][s]:4.2f}x {flops[s] / times[s] / peak:5.0%}"
            for s in flops
        )
        print(f"{name:30}{cells}")
    print("(each cell: median latency, ratio to the plain ONNX Runtime export, GFLOP/s as % of the GEMM peak)")
    ratio_1x16 = rows[best["1x16"]]["1x16"] / rows[ort_name]["1x16"]
    peak_8x128 = flops["8x128"] / rows[best["8x128"]]["8x128"] / peak
    print(f"best torchship format at 1x16: {best['1x16']}, {ratio_1x16:.2f}x ONNX Runtime (target <= 1.0)")
    print(f"best torchship format at 8x128: {best['8x128']}, {peak_8x128:.0%} of the GEMM peak (target >= 85%)")
    export_s = manifest["export"]["format_seconds"]
    print("export seconds per format: " + ", ".join(f"{k} {v:.1f}" for k, v in export_s.items()))
    result = {
        "machine": {**machine(), "threads": args.threads},
        "gemm_peak_gflops": peak / 1e9,
        "median_s": rows,
        "flops": flops,
        "best": best,
        "best_1x16_over_onnxruntime": ratio_1x16,
        "best_8x128_fraction_of_gemm_peak": peak_8x128,
        "export_seconds": export_s,
        "onnx_fusion": manifest["export"]["notes"].get("onnx_fusion"),
        "percent_of_peak": {n: {s: float(flops[s] / t[s] / peak) for s in flops} for n, t in rows.items()},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
