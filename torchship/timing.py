"""Timing: each format's median latency on a (batch, seq) grid, recorded in the manifest at export (and taken
again at load where they do not describe the process, machine.stale, or with ``calibrate=True``). The engine routes
each micro-batch to the fastest format by them."""

from __future__ import annotations

import statistics
import time

import torch

from .artifact import Timings
from .engine import Engine
from .machine import OthersLoad, fingerprint

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

    Each point: every format warms up once, then the formats take turns, one run each per round (in alternating
    order), for at least 3 rounds and until ``budget_s`` per format is spent or ``max_reps`` rounds are run.
    Taking turns gives every format the same machine: a job that starts or stops meanwhile slows each format
    alike instead of whichever was being timed, so it cannot flip which one routing picks. What other processes
    used of the CPUs meanwhile is recorded (``Timings.others_load``), with the machine (``Timings.machine``).
    With ``total_s``, points are timed cheapest first, and timing stops before a point whose expected cost (the
    last point's, scaled by FLOPs) would pass ``total_s``. A point left out keeps its ``recorded`` timing scaled
    by how much faster or slower that format ran here than recorded at the points timed (the median ratio); with
    nothing recorded, it is estimated as the format's most expensive timed point scaled by FLOPs. Either way it
    is listed in ``Timings.estimated``. The points left out are the largest, where every format's FLOP rate has
    settled. Runs through ``Engine.forward``, so no hook counts them.
    """
    medians: dict[str, dict[str, float]] = {name: {} for name in engine.backends}
    generator = torch.Generator().manual_seed(0)
    points = sorted(((b, s) for b in GRID_BATCHES for s in seqs), key=lambda p: _cost(engine, *p))
    probe = OthersLoad().start()
    started, last = time.perf_counter(), None
    for batch, seq in points:
        cost = _cost(engine, batch, seq)
        if total_s is not None and last is not None:
            spent, (last_s, last_cost) = time.perf_counter() - started, last
            if spent + last_s * cost / last_cost > total_s:
                break
        point_started = time.perf_counter()
        ids = torch.randint(1000, 2000, (batch, seq), generator=generator)
        runs = []
        for backend in engine.backends.values():
            padded = engine.pad({"input_ids": ids}, backend.pad_length(seq))
            engine.forward(backend, padded)  # warm-up
            runs.append((backend, padded))
        times: list[list[float]] = [[] for _ in runs]
        rounds = 0
        while rounds < 3 or (rounds < max_reps and sum(map(sum, times)) < budget_s * len(runs)):
            order = range(len(runs)) if rounds % 2 == 0 else reversed(range(len(runs)))
            for i in order:
                start = time.perf_counter()
                engine.forward(*runs[i])
                times[i].append(time.perf_counter() - start)
            rounds += 1
        for name, taken in zip(engine.backends, times, strict=True):
            medians[name][f"{batch}x{seq}"] = round(statistics.median(taken) * 1e3, 4)
        last = (time.perf_counter() - point_started, cost)
    others = probe.share()
    estimated: set[str] = set()
    for name, timed in medians.items():
        before = recorded.median_ms.get(name, {}) if recorded is not None else {}
        ratios = [timed[k] / before[k] for k in timed if before.get(k)]
        scale = statistics.median(ratios) if ratios else 1.0
        for key, ms in before.items():  # points not timed here: what was recorded, at this machine's pace
            if key not in timed:
                timed[key] = round(ms * scale, 4)
                estimated.add(key)
    for timed in medians.values():
        anchor = max(timed, key=lambda k: _cost(engine, *_point(k)), default=None)
        for batch, seq in points:
            key = f"{batch}x{seq}"
            if key not in timed and anchor is not None:
                scale = _cost(engine, batch, seq) / _cost(engine, *_point(anchor))
                timed[key] = round(timed[anchor] * scale, 4)
                estimated.add(key)
    return Timings(
        list(GRID_BATCHES),
        list(seqs),
        torch.get_num_threads(),
        medians,
        estimated=sorted(estimated),
        machine=fingerprint(engine.device),
        others_load=others,
    )


def _cost(engine: Engine, batch: int, seq: int) -> int:
    return batch * engine.cost(seq)


def _point(key: str) -> tuple[int, int]:
    batch, seq = key.split("x")
    return int(batch), int(seq)
