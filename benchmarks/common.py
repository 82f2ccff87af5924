"""Shared benchmark helpers: thread pinning, a GEMM peak measured in the same run, timing, memory."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

CORPUS = Path(__file__).resolve().parents[1] / "data" / "texts.jsonl"


def pin_threads(threads: int) -> None:
    """Give every contender the same intra-op thread count."""
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def corpus(path: Path = CORPUS) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]


def gemm_peak(n: int = 2048, repeats: int = 10) -> float:
    """Best fp32 GEMM throughput (FLOP/s) on the pinned threads: torchship bench's own measurement."""
    from torchship.bench import gemm_peak as peak

    return peak(n=n, repeats=repeats)


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time of ``fn`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def machine() -> dict[str, Any]:
    """CPU, cores, threads and versions: torchship bench's own record of the machine."""
    from torchship.bench import machine_info

    return machine_info()


def arguments(doc: str | None, result: str) -> argparse.ArgumentParser:
    """The options every interleaved benchmark takes: ``--threads``, ``--rounds`` and ``--output`` (default
    ``results/<result>``); a benchmark adds its own to the parser it gets."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / result)
    return parser


def save(record: dict[str, Any], path: Path) -> None:
    """Write a benchmark's record as JSON to ``path`` (its folder made as needed) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path}")
