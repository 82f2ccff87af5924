"""Timing: each format's median latency on a (batch, seq) grid, recorded in the manifest at export (or taken
again at load with ``calibrate=True``). The engine routes each micro-batch to the fastest format by them."""

from __future__ import annotations

import statistics
import time

import torch

from .artifact import Timings
from .engine import Engine

GRID_BATCHES = (1, 8, 32)


def time_formats(engine: Engine, seqs: list[int], *, budget_s: float = 0.15, max_reps: int = 15) -> Timings:
    """Median milliseconds of each loaded format at every (batch, seq) of the grid.

    Warm up once, then repeat until ``budget_s`` is spent (at least 3, at most ``max_reps`` runs). Runs through
    ``Engine.forward``, so no hook counts the timing runs as work.
    """
    medians: dict[str, dict[str, float]] = {}
    generator = torch.Generator().manual_seed(0)
    for name, backend in engine.backends.items():
        medians[name] = {}
        for batch in GRID_BATCHES:
            for seq in seqs:
                ids = torch.randint(1000, 2000, (batch, seq), generator=generator)
                padded = engine.pad({"input_ids": ids}, backend.pad_length(seq))
                engine.forward(backend, padded)
                times: list[float] = []
                while len(times) < 3 or (sum(times) < budget_s and len(times) < max_reps):
                    start = time.perf_counter()
                    engine.forward(backend, padded)
                    times.append(time.perf_counter() - start)
                medians[name][f"{batch}x{seq}"] = round(statistics.median(times) * 1e3, 4)
    return Timings(list(GRID_BATCHES), list(seqs), torch.get_num_threads(), medians)
