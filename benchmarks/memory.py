"""A long-running process's resident memory, call after call of new shapes, by how its linear layers run.

    .venv/bin/python benchmarks/memory.py     # about 10 minutes at --calls 600; run nothing else meanwhile

A server sees a new shape nearly every call, and a padding-free graph's linear layers see a new row count (its
real tokens) at every one. oneDNN compiles a kernel per shape, and both oneDNN and its PyTorch wrapper (ideep)
keep what they compiled. This runs all-MiniLM-L6-v2's default artifact (exported once to ``--workdir``) in a fresh
process per setup, ``--calls`` calls of 1 to 32 random corpus texts (the same sequence in each), and reads the
process's resident memory every ``--every`` calls:

- ``onednn``: TorchScript, float32 linear layers forced onto oneDNN (``TORCHSHIP_ONEDNN_LINEAR=1``), both kernel
  caches bounded as ``torchship.load`` bounds them (``machine.ONEDNN_CACHES``);
- ``onednn-ideep-1024``: the same with ideep's cache at its own default of 1024 (torchship before 2026-12-02);
- ``mkl``: TorchScript as traced (``TORCHSHIP_ONEDNN_LINEAR=0``: PyTorch's linear, MKL's sgemm on x86);
- ``onnx``: the artifact's ONNX format (ONNX Runtime), for scale.

Growth is the last reading less the one at ``--every`` calls (after warm-up), per 100 calls.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import arguments, corpus, machine, pin_threads, rss_bytes, save

ROOT = Path(__file__).resolve().parents[1]
SETUPS = {  # name -> (format, environment)
    "onednn": ("torchscript", {"TORCHSHIP_ONEDNN_LINEAR": "1"}),
    "onednn-ideep-1024": ("torchscript", {"TORCHSHIP_ONEDNN_LINEAR": "1", "LRU_CACHE_CAPACITY": "1024"}),
    "mkl": ("torchscript", {"TORCHSHIP_ONEDNN_LINEAR": "0"}),
    "onnx": ("onnx", {}),
}
CACHES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")  # left to torchship unless a setup sets them


def child(artifact: Path, fmt: str, calls: int, every: int, threads: int) -> dict[str, Any]:
    """Run in the setup's own process: the readings (MB) and the seconds the calls took."""
    import warnings

    import torchship

    pin_threads(threads)
    texts = corpus()
    predictor = torchship.load(artifact, format=fmt, threads=threads)
    rng = random.Random(0)
    readings = [rss_bytes() / 2**20]
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the corpus' few texts over 256 tokens are truncated, and say so
        for call in range(1, calls + 1):
            predictor(rng.sample(texts, rng.randint(1, 32)))
            if call % every == 0:
                readings.append(rss_bytes() / 2**20)
    return {"mb": [round(r, 1) for r in readings], "seconds": round(time.perf_counter() - start, 2)}


def main() -> int:
    parser = arguments(__doc__.split("\n")[0], "memory.json")
    parser.add_argument("--calls", type=int, default=600)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--only", default=",".join(SETUPS), help="comma list of setups: " + ", ".join(SETUPS))
    parser.add_argument("--workdir", type=Path, default=ROOT / "build" / "bench-memory")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # the run of one setup, in its own process
    args = parser.parse_args()
    artifact = args.workdir / "minilm"
    if args.child:
        fmt, _ = SETUPS[args.child]
        print(json.dumps(child(artifact, fmt, args.calls, args.every, args.threads)))
        return 0
    only = [s for s in args.only.split(",") if s]
    unknown = [s for s in only if s not in SETUPS]
    if unknown or args.calls < args.every or args.every < 1:
        print(f"--only takes {', '.join(SETUPS)} (got {', '.join(unknown)}); --calls must be at least --every, "
              "and --every at least 1", file=sys.stderr)  # fmt: skip
        return 2
    if not (artifact / "manifest.json").exists():
        import torchship

        torchship.export("demo", artifact, torchship.ExportOptions(overwrite=True))
    base = {k: v for k, v in os.environ.items() if k not in CACHES}
    results: dict[str, dict[str, Any]] = {}
    for name in only:
        _, env = SETUPS[name]
        run = subprocess.run(
            [sys.executable, __file__, "--child", name, "--calls", str(args.calls), "--every", str(args.every),
             "--threads", str(args.threads), "--workdir", str(args.workdir)],
            capture_output=True, text=True, env={**base, **env, "OMP_NUM_THREADS": str(args.threads)},
        )  # fmt: skip
        if run.returncode:
            print(f"{name} failed:\n{run.stderr[-2000:]}", file=sys.stderr)
            return 1
        results[name] = json.loads(run.stdout.strip().splitlines()[-1])
        mb = results[name]["mb"]
        growth = (mb[-1] - mb[1]) / max(args.calls - args.every, 1) * 100
        results[name]["growth_mb_per_100"] = round(growth, 2)
        readings = ", ".join(f"{m:.0f}" for m in mb)
        seconds = results[name]["seconds"]
        print(f"{name:18} MB at 0, {args.every}, ... {args.calls} calls: {readings}; "
              f"{growth:+.1f} MB per 100 calls after {args.every}; {seconds:.1f} s", flush=True)  # fmt: skip
    if "mkl" in results:
        mkl = results["mkl"]["mb"]
        for name, result in results.items():
            print(f"{name:18} last reading {result['mb'][-1] / mkl[-1]:.2f}x MKL's")
    save({"machine": machine(), "calls": args.calls, "every": args.every, "threads": args.threads,
          "results": results}, args.output)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
