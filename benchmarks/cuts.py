"""How the runtime cuts micro-batches, with dense layers on real tokens only: the cuts it makes now against cuts
by what padding costs in that layout (issue #17).

    .venv/bin/torchship export demo build/cuts/minilm          # the default artifact (padding-free)
    .venv/bin/python benchmarks/cuts.py build/cuts/minilm      # about 4 minutes

Now, rows are grouped by bucket and each group sorted by length is cut where padding costs more than another
call, padding priced at the whole row's FLOPs. With dense layers on real tokens only, a padded position costs
only attention (and the scatters and gathers around it), which argues for fewer, larger micro-batches. The
variants price padding at attention FLOPs plus ``alpha`` x the dense ones, and may merge neighbouring bucket
groups that route to the same dynamic graph before cutting. All run in one process on the repository's corpus,
interleaved pass by pass, so the machine's drift hits each alike.
"""

from __future__ import annotations

import argparse
import bisect
import json
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from common import corpus, pin_threads

VARIANTS = {  # name -> (alpha: None prices padding at whole rows, as now; merge neighbouring groups)
    "now": (None, False),
    "attention": (0.0, False),
    "attention, merged": (0.0, True),
    "attention + 5% dense, merged": (0.05, True),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--passes", type=int, default=8)
    args = parser.parse_args()
    pin_threads(args.threads)
    import torchship
    from torchship import engine
    from torchship.flops import head_flops, layer_flops

    config = json.loads((args.artifact / "config.json").read_text())
    predictor = torchship.load(args.artifact, threads=args.threads)
    eng = predictor.engine
    texts = corpus()
    plain_split, plain_plan = engine.split, engine.Engine.plan
    state: dict[str, Any] = {"alpha": None}

    def padding(seq: int) -> float:
        dense, attention = layer_flops(config, 1, seq)
        return attention + head_flops(config, 1, seq, predictor.task, pooler=True) + state["alpha"] * dense

    def split(pads: list[int], cost: Any, **kw: Any) -> list[int]:
        return plain_split(pads, cost if state["alpha"] is None else padding, **kw)

    def merged_plan(self: Any, lengths: np.ndarray) -> list[Any]:
        """Engine.plan, with neighbouring bucket groups that route to one dynamic backend cut as one."""
        groups: dict[int, list[int]] = {}
        for r in np.argsort(lengths, kind="stable").tolist():
            edge = self.buckets[min(bisect.bisect_left(self.buckets, int(lengths[r])), len(self.buckets) - 1)]
            groups.setdefault(edge, []).append(r)
        runs: list[tuple[Any, list[int]]] = []
        for members in groups.values():
            backend = self.select(len(members), int(lengths[members[-1]]))
            if runs and runs[-1][0] is backend and backend.lengths is None:
                runs[-1][1].extend(members)
            else:
                runs.append((backend, list(members)))
        max_rows = max(1, min(self.options.micro_batch_size, engine.MAX_BATCH))
        jobs = []
        for backend, members in runs:
            if backend.lengths is None:
                pads = [backend.pad_length(int(lengths[r])) for r in members]
                starts = engine.split(pads, self.cost, call=self.cost(16), max_rows=max_rows,
                                      max_tokens=self.options.max_batch_tokens)  # fmt: skip
                chunks = [members[a:b] for a, b in zip(starts, [*starts[1:], len(members)], strict=True)]
            else:
                size = max(
                    1, min(max_rows, self.options.max_batch_tokens // backend.pad_length(int(lengths[members[-1]])))
                )
                chunks = [members[i : i + size] for i in range(0, len(members), size)]
            jobs += [(rows, backend.pad_length(int(lengths[rows[-1]])), backend) for rows in chunks]
        return jobs

    engine.split = split  # type: ignore[assignment]
    calls: dict[str, int] = {}
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # texts over the longest bucket are truncated alike in every variant
        predictor(texts[:64])
        for _ in range(args.passes):
            for name, (alpha, merge) in VARIANTS.items():
                state["alpha"] = alpha
                engine.Engine.plan = merged_plan if merge else plain_plan  # type: ignore[method-assign]
                made: list[int] = []
                eng.hooks.append(lambda executed, made=made: made.append(executed.rows))
                started = time.perf_counter()
                predictor(texts)
                seconds[name].append(time.perf_counter() - started)
                eng.hooks.pop()
                calls[name] = len(made)
    engine.Engine.plan = plain_plan  # type: ignore[method-assign]
    print(f"{len(texts)} texts, {args.threads} threads, {args.passes} interleaved passes; formats {list(eng.backends)}")
    base = statistics.median(seconds["now"])
    for name, times in seconds.items():
        median = statistics.median(times)
        print(f"{name:30s} {calls[name]:3d} calls  median {median:.3f} s  ({base / median:.3f}x now)  "
              f"min {min(times):.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
