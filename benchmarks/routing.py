"""Routing under a disturbed export: does the runtime still run the corpus as fast as forcing the artifact's best
single format (issue #17)?

    .venv/bin/torchship export demo build/routing/minilm       # the default artifact: TorchScript + ONNX
    .venv/bin/python benchmarks/routing.py build/routing/minilm # about 5 minutes; run nothing else meanwhile

The formats are timed as an export times them (``timing.time_formats``, 6 s budget) three ways: on the quiet
machine; while another process spins one core (a steady job); and while one spins and sleeps in turns of 0.2 s (a
bursty job), both format by format (every point of one format, then of the next) and point by point (at each
point, each format in turn: what torchship does). Each table then routes the corpus on the quiet machine,
interleaved pass by pass with the forced formats, so drift hits each alike. Last, each job's table (point by point)
is loaded as an artifact with the default ``calibrate=None``: where its timings say other processes were busy
(``machine.DISTURBED``) and the machine is quiet now, the load re-times them (``machine.stale``); the loads'
seconds are reported.

Each table's regret is what its routing of the corpus' micro-batches costs by the quiet table's times, over the
best routing: deterministic, where corpus seconds on a shared 2-core machine vary by 10 % between identical runs.
Tables that route every micro-batch alike run the same work, so the corpus runs once per distinct routing.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common import corpus, pin_threads, save

JOBS = {
    "steady": "while True: pass",
    "bursty": "import time\nwhile True:\n    t = time.time()\n    while time.time() - t < 0.2: pass\n"
    "    time.sleep(0.2)",
}


@contextmanager
def job(kind: str | None) -> Iterator[None]:
    """Another process on this machine while the block runs: ``kind`` of JOBS, or nothing."""
    if kind is None:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", JOBS[kind]])
    try:
        time.sleep(0.5)
        yield
    finally:
        proc.kill()
        proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--passes", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "routing.json")
    args = parser.parse_args()
    pin_threads(args.threads)
    import torchship
    from torchship import artifact
    from torchship.engine import route
    from torchship.timing import time_formats

    predictor = torchship.load(args.artifact, threads=args.threads, calibrate=False)
    engine = predictor.engine
    backends = {name: engine.backend(name) for name in engine.available}
    seqs = engine.buckets

    def alone(budget: float) -> artifact.Timings:
        """Each format timed in its own block (time_formats on an engine holding that format only)."""
        tables = []
        for name, backend in backends.items():
            engine.backends = {name: backend}
            tables.append(time_formats(engine, seqs, total_s=budget / len(backends)))
        engine.backends = dict(backends)
        medians = {k: v for t in tables for k, v in t.median_ms.items()}
        loads = [t.others_load for t in tables if t.others_load is not None]
        estimated = sorted({e for t in tables for e in t.estimated})
        return dataclasses.replace(
            tables[0], median_ms=medians, estimated=estimated, others_load=statistics.mean(loads) if loads else None
        )

    tables: dict[str, artifact.Timings] = {}
    with job(None):
        tables["quiet"] = time_formats(engine, seqs, total_s=6.0)
    for kind in ("steady", "bursty"):
        with job(kind):
            tables[f"{kind} job, format by format"] = alone(6.0)
        with job(kind):
            tables[f"{kind} job, point by point"] = time_formats(engine, seqs, total_s=6.0)
    grid = [(b, s) for b in tables["quiet"].batch for s in tables["quiet"].seq]
    flips = {
        name: sum(
            route(t.median_ms, t.batch, t.seq, b, s, list(backends))
            != route(tables["quiet"].median_ms, t.batch, t.seq, b, s, list(backends))
            for b, s in grid
        )
        for name, t in tables.items()
    }

    # each disturbed job's table (timed point by point, as an export times) as an artifact's, loaded the default
    # way on the (quiet) machine: whether the load re-times it, and in how long
    work = Path(tempfile.mkdtemp(prefix="routing-"))
    retimed: dict[str, artifact.Timings] = {}
    load_s: dict[str, float] = {}
    for kind in ("steady", "bursty"):
        disturbed = shutil.copytree(args.artifact, work / kind)
        data = json.loads((disturbed / "manifest.json").read_text())
        data["timings"] = dataclasses.asdict(tables[f"{kind} job, point by point"])
        (disturbed / "manifest.json").write_text(json.dumps(data))
        started = time.perf_counter()
        reloaded = torchship.load(disturbed, threads=args.threads)
        load_s[kind] = time.perf_counter() - started
        assert reloaded.timings is not None
        retimed[kind] = reloaded.timings

    texts = corpus()
    # The corpus' micro-batches (rows, padded length): what each table routes. Its regret is what its choices cost
    # by the quiet table, over the best choice, summed over them: a figure the machine's noise cannot blur.
    shapes: list[tuple[int, int]] = []
    engine.hooks.append(lambda done: shapes.append((done.rows, max(done.lengths))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predictor(texts)
    engine.hooks.pop()
    quiet = tables["quiet"]

    def regret(t: artifact.Timings) -> float:
        def ms(fmt: str, b: int, s: int) -> float:
            seq = quiet.seq[min(bisect.bisect_left(quiet.seq, s), len(quiet.seq) - 1)]
            batch = min(quiet.batch, key=lambda g: abs(math.log(g) - math.log(b)))
            return quiet.median_ms[fmt][f"{batch}x{seq}"]

        chosen = sum(ms(route(t.median_ms, t.batch, t.seq, b, s, list(backends)), b, s) for b, s in shapes)
        best = sum(min(ms(f, b, s) for f in backends) for b, s in shapes)
        return chosen / best - 1

    for kind, t in retimed.items():
        tables[f"{kind} job's table, loaded the default way"] = t
    regrets = {name: regret(t) for name, t in tables.items()}
    # tables that route every micro-batch alike run the same work: the corpus is run once per distinct routing
    variants: dict[str, Any] = {f"forced {name}": name for name in backends}
    seen: dict[tuple[str, ...], str] = {}
    for name, t in tables.items():
        signature = tuple(route(t.median_ms, t.batch, t.seq, b, s, list(backends)) for b, s in shapes)
        if signature in seen:
            continue
        seen[signature] = name
        variants[f"routed by: {name}"] = t
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # texts over the longest bucket are truncated alike in every variant
        predictor(texts[:64])
        for _ in range(args.passes):
            for name, how in variants.items():
                if isinstance(how, str):
                    engine.format, engine.timings = how, tables["quiet"]
                else:
                    engine.format, engine.timings = None, how
                started = time.perf_counter()
                predictor(texts)
                seconds[name].append(time.perf_counter() - started)
    shutil.rmtree(work)
    best = min(statistics.median(seconds[f"forced {name}"]) for name in backends)
    rows = {
        name: {"median_s": statistics.median(t), "runs_s": t, "vs_best_forced": statistics.median(t) / best}
        for name, t in seconds.items()
    }
    print(f"{len(texts)} texts, {args.threads} threads, {args.passes} interleaved passes; formats {list(backends)}")
    for name, t in tables.items():
        busy = "-" if t.others_load is None else f"{t.others_load:.0%}"
        print(f"table {name:48s} others used {busy:>4} of the CPUs; winner differs from quiet at "
              f"{flips.get(name, '-')}/{len(grid)} grid points; regret on the corpus {regrets[name]:.2%}")  # fmt: skip
    for kind, t in retimed.items():
        print(f"default load of the {kind} job's artifact: {load_s[kind]:.2f} s, source {t.source!r}")
    for name, row in rows.items():
        print(f"{name:62s} median {row['median_s']:.3f} s  ({row['vs_best_forced']:.3f}x best forced)  "
              f"min {min(row['runs_s']):.3f} s")  # fmt: skip
    from common import machine

    record = {
        "machine": machine(),
        "threads": args.threads,
        "passes": args.passes,
        "corpus_texts": len(texts),
        "tables": {n: dataclasses.asdict(t) for n, t in tables.items()},
        "flips": flips,
        "regret": regrets,
        "micro_batches": len(shapes),
        "grid_points": len(grid),
        "default_load_s": load_s,
        "retimed_source": {kind: t.source for kind, t in retimed.items()},
        "corpus": rows,
    }
    save(record, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
