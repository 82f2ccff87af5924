"""Sentence pooling on one thread in numpy (torchship's) against torch's ops (before 2026-12-01), side by side.

    .venv/bin/torchship export demo build/pooling/minilm       # the default artifact: TorchScript + ONNX
    .venv/bin/python benchmarks/pooling.py build/pooling/minilm # about 2 minutes; run nothing else meanwhile

Pooling a (1, 128, 384) output is over torch's parallel grain, so torch wakes its OpenMP threads right after
ONNX Runtime's run, while ONNX Runtime's own threads still spin. Both variants run in one process on the same
loaded artifact (ONNX forced, then routed as loaded), interleaved call by call for the fixed shapes and pass by
pass for the repository's corpus, so the machine's drift hits each alike.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from common import corpus, pin_threads, save
from peers import model_dir, text_of_tokens, tokenizer


def torch_pool(hidden: torch.Tensor, mask: torch.Tensor, *, mode: str, normalize: bool) -> torch.Tensor:
    """Mean pooling in torch's ops, as torchship pooled before (the reference; MiniLM pools by mean)."""
    assert mode == "mean"
    assert not normalize
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--passes", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "pooling.json")
    args = parser.parse_args()
    pin_threads(args.threads)
    import torchship
    from torchship.tasks import feature_extraction

    variants = {"numpy, one thread (now)": feature_extraction.pool, "torch ops (before)": torch_pool}
    tok = tokenizer(model_dir())
    texts = corpus()
    record: dict[str, Any] = {"threads": args.threads, "calls": args.calls, "passes": args.passes, "results": {}}
    for label, options in {"onnx forced": {"format": "onnx"}, "routed": {}}.items():
        predictor = torchship.load(args.artifact, threads=args.threads, calibrate=False, **options)
        results: dict[str, dict[str, Any]] = {name: {} for name in variants}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # texts over the longest bucket are truncated alike in both
            for batch, seq in ((1, 16), (1, 128), (8, 128)):
                sample = [text_of_tokens(tok, seq)] * batch
                times: dict[str, list[float]] = {name: [] for name in variants}
                for i in range(args.calls + 3):
                    for name, fn in variants.items():
                        feature_extraction.pool = fn
                        start = time.perf_counter()
                        predictor(sample)
                        if i >= 3:  # warm-up
                            times[name].append(time.perf_counter() - start)
                for name, taken in times.items():
                    results[name][f"{batch}x{seq}_ms"] = statistics.median(taken) * 1e3
            seconds: dict[str, list[float]] = {name: [] for name in variants}
            predictor(texts[:64])
            for _ in range(args.passes):
                for name, fn in variants.items():
                    feature_extraction.pool = fn
                    start = time.perf_counter()
                    predictor(texts)
                    seconds[name].append(time.perf_counter() - start)
            for name, taken in seconds.items():
                results[name]["corpus_s"] = statistics.median(taken)
                results[name]["corpus_runs_s"] = taken
        feature_extraction.pool = variants["numpy, one thread (now)"]
        record["results"][label] = results
        before, now = results["torch ops (before)"], results["numpy, one thread (now)"]
        print(f"{label}: formats {list(predictor.backends)}")
        for key in ("1x16_ms", "1x128_ms", "8x128_ms", "corpus_s"):
            print(f"  {key:9s} torch {before[key]:9.3f}  numpy {now[key]:9.3f}  ({before[key] / now[key]:.2f}x)")
    from common import machine

    record["machine"] = machine()
    save(record, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
