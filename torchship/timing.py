"""Timing: each format's median latency on a (batch, seq) grid, recorded in the manifest at export (and taken
again at load where they do not describe the process, machine.stale, or with ``calibrate=True``). The engine routes
each micro-batch to the fastest format by them."""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from .artifact import Timings
from .engine import Engine
from .formats import Backend
from .machine import DISTURBED, OthersLoad, fingerprint

GRID_BATCHES = (1, 8, 32)
REPAIR = 1.5  # disturbed points are timed again while the timing has spent less than this times its budget


def time_formats(
    engine: Engine,
    seqs: list[int],
    *,
    budget_s: float = 0.15,
    max_reps: int = 15,
    total_s: float | None = None,
) -> Timings:
    """Median milliseconds of each loaded format at every (batch, seq) of the grid.

    Each point: each format in turn warms up once, then runs alone, at least 3 times and until ``budget_s`` is
    spent or ``max_reps`` runs. Formats are not interleaved run by run: a run right after another runtime's pays
    for its thread pool still spinning (MiniLM at 8x16: 31 against 14.5 ms for AOTInductor, 40 against 19.7 ms
    for TorchScript), a cost a run of micro-batches in one format never pays. What other processes used of the
    CPUs meanwhile is recorded (``Timings.others_load``), with the machine (``Timings.machine``): a load re-times
    where they do not describe it (machine.stale), as a busy machine can change which format is fastest. A point
    during which others used ``machine.DISTURBED`` of the CPUs or more is timed once more at the end (within
    ``REPAIR`` times ``total_s``), and each format keeps its lower median: a job that comes and goes (busy
    0.2 s, idle 0.2 s) averaged 14-15 % over the whole timing, under what a load re-times for, yet spoiled the
    points it hit (benchmarks/routing.py).
    With ``workers > 1`` (LoadOptions.workers), each run is ``workers`` micro-batches at once, and a format's
    time is the round's over ``workers``: what it costs when the engine runs micro-batches concurrently. A
    format that holds the GIL cannot overlap them (AOTInductor's runner, measured: MiniLM's corpus at 1 thread,
    6.82 s with one worker and 6.70 with two, where ONNX went from 6.77 to 3.43 s and TorchScript from 8.13 to
    4.00), so timed alone it looked fastest and took every micro-batch, at twice the time.
    With ``total_s``, the cheapest point of each grid batch is timed first, then the others cheapest first, and
    a point whose expected cost (``expected_s``: the last timed point's runs, scaled by FLOPs) would pass
    ``total_s`` is skipped.
    A point left out is estimated from the format's most expensive timed point of the same batch, scaled by
    FLOPs (of any batch where none of it was timed), and listed in ``Timings.estimated``; a re-timing at load
    never keeps the export's figures, which are re-timed because they do not describe this process (a disturbed
    table scaled by this machine's pace kept 17 % of its regret on the corpus: benchmarks/routing.py).
    Which format is fastest depends on the batch more than on
    the length: one batch-1 point scaled to batch 32 sent MiniLM's whole corpus to ONNX, 1.23x slower than
    AOTInductor (benchmarks/routing.py). Runs through ``Engine.forward``, so no hook counts them.
    """
    medians: dict[str, dict[str, float]] = {name: {} for name in engine.backends}
    generator = torch.Generator().manual_seed(0)
    points = order(engine, seqs)
    probe = OthersLoad().start()
    started, last = time.perf_counter(), None
    busy: list[tuple[int, int]] = []  # points timed while other processes used DISTURBED of the CPUs or more

    workers = engine.options.workers
    pool = ThreadPoolExecutor(workers, thread_name_prefix="torchship-timing") if workers > 1 else None

    def run(backend: Backend, padded: dict[str, torch.Tensor]) -> None:
        """One micro-batch, or ``workers`` at once: what each then costs is the round's time over ``workers``."""
        if pool is None:
            engine.forward(backend, padded)
        else:
            list(pool.map(lambda _: engine.forward(backend, padded), range(workers)))

    def time_point(batch: int, seq: int) -> dict[str, float]:
        """Time every format at (batch, seq); return each one's median seconds per run (``workers`` at once)."""
        point = OthersLoad().start()
        rounds = {}
        ids = torch.randint(1000, 2000, (batch, seq), generator=generator)
        for name, backend in engine.backends.items():
            padded = engine.pad({"input_ids": ids}, backend.pad_length(seq))
            run(backend, padded)  # warm-up: the first run after another format pays for the switch
            times: list[float] = []
            while len(times) < 3 or (sum(times) < budget_s and len(times) < max_reps):
                start = time.perf_counter()
                run(backend, padded)
                times.append((time.perf_counter() - start) / workers)
            ms = round(statistics.median(times) * 1e3, 4)
            key = f"{batch}x{seq}"
            medians[name][key] = min(ms, medians[name].get(key, ms))  # timed again: the less disturbed time
            rounds[name] = statistics.median(times) * workers
        share = point.share()
        if share is not None and share >= DISTURBED:
            busy.append((batch, seq))
        return rounds

    for batch, seq in points:
        cost = _cost(engine, batch, seq)
        if total_s is not None and last is not None:
            rounds, last_cost = last
            expected = expected_s(rounds, cost / last_cost, budget_s, max_reps, workers)
            if time.perf_counter() - started + expected > total_s:
                continue  # a cheaper point further on may still fit
        last = (time_point(batch, seq), cost)
    for batch, seq in sorted(busy, key=lambda p: _cost(engine, *p)):  # once more: a job that comes and goes
        if total_s is not None and time.perf_counter() - started > REPAIR * total_s:  # spares some of them now
            break
        time_point(batch, seq)
    if pool is not None:
        pool.shutdown()
    others = probe.share()
    estimated: set[str] = set()
    for timed in medians.values():
        estimated |= estimate(engine, timed, points)
    return Timings(
        list(GRID_BATCHES),
        list(seqs),
        torch.get_num_threads(),
        medians,
        workers=workers,
        estimated=sorted(estimated),
        machine=fingerprint(engine.device),
        others_load=others,
    )


def expected_s(rounds: dict[str, float], scale: float, budget_s: float, max_reps: int, workers: int = 1) -> float:
    """What ``time_formats`` should spend on a point, from another point's runs (``rounds``: each format's median
    seconds per run of ``workers`` micro-batches at once) scaled by FLOPs (``scale``: this point's over that
    one's): per format a warm-up, then the runs it makes (3 at least, then until each micro-batch's share has
    spent ``budget_s``, or ``max_reps``). Not that point's wall time scaled: it
    held each format's first runs, which at load cost seconds (AOTInductor's, OpenVINO's first request), and
    ``budget_s`` caps what a cheap point costs, so a re-timing at load had expected 8x11 to take longer than its
    whole budget and timed 1 point of 51, estimating the rest from one text of 11 tokens (all-MiniLM-L6-v2, four
    formats, two workers, an AMX Xeon: it routed the corpus to ONNX Runtime, 2.35 s, where OpenVINO took 2.03)."""
    total = 0.0
    for run_s in rounds.values():
        t = run_s * scale
        total += t + min(max(3 * t, budget_s * workers), max_reps * t)
    return total


def order(engine: Engine, seqs: list[int]) -> list[tuple[int, int]]:
    """The grid's (batch, seq) points in the order they are timed: each batch's cheapest (an anchor for every
    batch), then each batch's next cheapest, batch by batch. Not all the others cheapest first: that spent an
    export's budget on batch 1 (12 of the 19 points timed, one at batch 32), while a corpus runs in micro-batches
    of dozens of rows, whose times were then scaled by FLOPs from 32x16, where ONNX Runtime led; the default
    artifact routed the corpus 1.04-1.14x slower than TorchScript alone (all-MiniLM-L6-v2, an AMX Xeon)."""
    ranked = sorted(seqs, key=engine.cost)
    return [(batch, seq) for seq in ranked for batch in GRID_BATCHES]


def estimate(engine: Engine, timed: dict[str, float], points: list[tuple[int, int]]) -> set[str]:
    """Fill ``timed`` (one format's milliseconds by point) at the ``points`` it lacks: the most expensive timed
    point of the same batch (else of any batch) scaled by FLOPs. Returns the points filled."""
    measured = dict(timed)
    filled = set()
    for batch, seq in points:
        key = f"{batch}x{seq}"
        pool = [k for k in measured if _point(k)[0] == batch] or list(measured)
        if key not in timed and pool:
            anchor = max(pool, key=lambda k: _cost(engine, *_point(k)))
            timed[key] = round(measured[anchor] * _cost(engine, batch, seq) / _cost(engine, *_point(anchor)), 4)
            filled.add(key)
    return filled


def _cost(engine: Engine, batch: int, seq: int) -> int:
    return batch * engine.cost(seq)


def _point(key: str) -> tuple[int, int]:
    batch, seq = key.split("x")
    return int(batch), int(seq)
