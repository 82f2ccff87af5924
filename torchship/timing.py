"""Timing: each format's median latency on a (batch, seq) grid, recorded in the manifest at export (or taken
again at load with ``calibrate=True``). The engine routes each micro-batch to the fastest format by them."""

from __future__ import annotations

import statistics
import time

import torch

from .artifact import Timings
from .engine import Engine

GRID_BATCHES = (1, 8, 32)


def time_formats(
    engine: Engine,
    seqs: list[int],
    *,
    budget_s: float = 0.15,
    max_reps: int = 15,
    total_s: float | None = None,
    recorded: Timings | None = None,
) -> Timings:
    """Median milliseconds of each loaded format at every (batch, seq) of the grid.

    Each point: warm up once, then repeat until ``budget_s`` is spent (at least 3, at most ``max_reps`` runs).
    With ``total_s``, points are timed cheapest first, every format at a point together, and timing stops before
    a point whose expected cost (the last point's, scaled by FLOPs) would pass ``total_s``; the points left keep
    their ``recorded`` timings, where there are any, or else are estimated: the format's most expensive timed
    point scaled by FLOPs (listed in ``Timings.estimated``). The points left out are the largest, where every
    format's FLOP rate has settled. Runs through ``Engine.forward``, so no hook counts them.
    """
    medians: dict[str, dict[str, float]] = {name: {} for name in engine.backends}
    generator = torch.Generator().manual_seed(0)
    points = sorted(((b, s) for b in GRID_BATCHES for s in seqs), key=lambda p: _cost(engine, *p))
    started, last = time.perf_counter(), None
    for batch, seq in points:
        cost = _cost(engine, batch, seq)
        if total_s is not None and last is not None:
            spent, (last_s, last_cost) = time.perf_counter() - started, last
            if spent + last_s * cost / last_cost > total_s:
                break
        point_started = time.perf_counter()
        ids = torch.randint(1000, 2000, (batch, seq), generator=generator)
        for name, backend in engine.backends.items():
            padded = engine.pad({"input_ids": ids}, backend.pad_length(seq))
            engine.forward(backend, padded)
            times: list[float] = []
            while len(times) < 3 or (sum(times) < budget_s and len(times) < max_reps):
                start = time.perf_counter()
                engine.forward(backend, padded)
                times.append(time.perf_counter() - start)
            medians[name][f"{batch}x{seq}"] = round(statistics.median(times) * 1e3, 4)
        last = (time.perf_counter() - point_started, cost)
    estimated = set()
    if recorded is not None:  # points not timed here keep what the export measured (or estimated)
        for name, timed in medians.items():
            for key, ms in recorded.median_ms.get(name, {}).items():
                if key not in timed:
                    timed[key] = ms
                    estimated.update({key} & set(recorded.estimated))
    for timed in medians.values():
        anchor = max(timed, key=lambda k: _cost(engine, *_point(k)), default=None)
        for batch, seq in points:
            key = f"{batch}x{seq}"
            if key not in timed and anchor is not None:
                scale = _cost(engine, batch, seq) / _cost(engine, *_point(anchor))
                timed[key] = round(timed[anchor] * scale, 4)
                estimated.add(key)
    return Timings(list(GRID_BATCHES), list(seqs), torch.get_num_threads(), medians, estimated=sorted(estimated))


def _cost(engine: Engine, batch: int, seq: int) -> int:
    return batch * engine.cost(seq)


def _point(key: str) -> tuple[int, int]:
    batch, seq = key.split("x")
    return int(batch), int(seq)
