"""Export-time timing: each format's median latency on a (batch, seq) grid, recorded in the manifest.

The runtime uses these medians to pick the fastest format per micro-batch when an artifact holds several.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from .runtime import Predictor

GRID_BATCHES = (1, 8, 32)


def time_formats(
    predictor: Predictor, seqs: list[int], *, budget_s: float = 0.15, max_reps: int = 15
) -> dict[str, Any]:
    """Median milliseconds of ``predictor.run`` per format at every (batch, seq) of the grid.

    Warm up once, then repeat until ``budget_s`` is spent (at least 3, at most ``max_reps`` runs).
    """
    medians: dict[str, dict[str, float]] = {}
    generator = torch.Generator().manual_seed(0)
    for name in predictor.backends:
        medians[name] = {}
        for batch in GRID_BATCHES:
            for seq in seqs:
                ids = torch.randint(1000, 2000, (batch, seq), generator=generator)
                predictor.run(ids, format=name)
                times: list[float] = []
                while len(times) < 3 or (sum(times) < budget_s and len(times) < max_reps):
                    start = time.perf_counter()
                    predictor.run(ids, format=name)
                    times.append(time.perf_counter() - start)
                medians[name][f"{batch}x{seq}"] = round(statistics.median(times) * 1e3, 4)
    predictor.counters.reset()
    return {"batch": list(GRID_BATCHES), "seq": list(seqs), "threads": torch.get_num_threads(), "median_ms": medians}
