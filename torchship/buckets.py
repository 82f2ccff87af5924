"""Sequence-length buckets: a length histogram, an exact FLOP-optimal plan, and its padding report.

Each input runs in the smallest bucket that holds it, so a bucket with edge ``e`` costs ``flops(1, e)``
for every input whose length falls in it. ``plan`` finds the K edges that minimise the expected executed
FLOPs over the sample's length histogram with an exact dynamic program (O(K n^2) over the n distinct
lengths); an optimal edge always sits on an observed length, so only those are candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from .errors import OptionsError

Cost = Callable[[int], float]


def histogram(lengths: Iterable[int], max_length: int) -> np.ndarray:
    """``counts[l]`` = inputs of ``l`` tokens, for l in 0..max_length; longer inputs count at max_length
    (they are truncated)."""
    values = np.fromiter((min(int(n), max_length) for n in lengths), dtype=np.int64)
    if values.size == 0:
        raise OptionsError("the length sample is empty; give at least one text or length")
    if values.min() < 1:
        raise OptionsError(f"lengths must be >= 1, found {int(values.min())}")
    return np.bincount(values, minlength=max_length + 1)


def plan(counts: np.ndarray, k: int, cost: Cost) -> list[int]:
    """The K (or fewer, if fewer distinct lengths) bucket edges minimising sum(count * cost(edge))."""
    if k < 1:
        raise OptionsError(f"max_buckets must be >= 1, got {k}")
    lengths = np.flatnonzero(counts)  # candidate edges: the observed lengths
    n = len(lengths)
    k = min(k, n)
    cum = np.concatenate([[0], np.cumsum(counts[lengths])])  # cum[i] = inputs with length <= lengths[i-1]
    costs = np.array([cost(int(x)) for x in lengths], dtype=np.float64)
    # best[j][i]: min cost covering the first i candidate lengths with j buckets, the last edge at lengths[i-1]
    best = np.full((k + 1, n + 1), np.inf)
    choice = np.zeros((k + 1, n + 1), dtype=np.int64)
    best[0, 0] = 0.0
    for j in range(1, k + 1):
        for i in range(1, n + 1):
            prev = best[j - 1, :i] + (cum[i] - cum[:i]) * costs[i - 1]  # previous bucket ends at candidate p < i
            p = int(np.argmin(prev))
            best[j, i], choice[j, i] = prev[p], p
    j = int(np.argmin(best[1:, n])) + 1  # fewer buckets can tie; take the smallest count that reaches the min
    edges, i = [], n
    while j > 0:
        edges.append(int(lengths[i - 1]))
        i, j = int(choice[j, i]), j - 1
    return sorted(edges)


@dataclass(frozen=True)
class BucketRow:
    edge: int
    inputs: int
    share: float
    real_tokens: int
    padded_tokens: int
    waste: float  # padded-but-empty tokens / padded tokens
    flops_ratio: float  # executed FLOPs / unpadded FLOPs, inside this bucket


@dataclass(frozen=True)
class Report:
    name: str
    edges: list[int]
    rows: list[BucketRow]
    real_tokens: int
    padded_tokens: int
    executed_flops: float
    unpadded_flops: float

    @property
    def waste(self) -> float:
        return 1 - self.real_tokens / self.padded_tokens if self.padded_tokens else 0.0

    @property
    def flops_ratio(self) -> float:
        return self.executed_flops / self.unpadded_flops if self.unpadded_flops else 1.0

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "edges": self.edges,
            "waste": self.waste,
            "flops_ratio": self.flops_ratio,
            "executed_flops": self.executed_flops,
            "unpadded_flops": self.unpadded_flops,
            "real_tokens": self.real_tokens,
            "padded_tokens": self.padded_tokens,
            "buckets": [row.__dict__ for row in self.rows],
        }


def evaluate(name: str, counts: np.ndarray, edges: list[int], cost: Cost) -> Report:
    """Padding and FLOPs when every input runs in the smallest of ``edges`` that holds it."""
    edges = sorted(edges)
    longest = int(np.flatnonzero(counts).max())
    if edges[-1] < longest:
        raise OptionsError(f"the largest bucket {edges[-1]} cannot hold the sample's longest input ({longest} tokens)")
    total = int(counts.sum())
    rows, lo = [], 0
    for edge in edges:
        ls = np.arange(lo + 1, edge + 1)
        c = counts[lo + 1 : edge + 1]
        n = int(c.sum())
        unpadded = float(sum(int(ci) * cost(int(li)) for li, ci in zip(ls, c, strict=True) if ci))
        real = int((ls * c).sum())
        rows.append(
            BucketRow(
                edge=edge,
                inputs=n,
                share=n / total,
                real_tokens=real,
                padded_tokens=n * edge,
                waste=1 - real / (n * edge) if n else 0.0,
                flops_ratio=n * cost(edge) / unpadded if unpadded else 1.0,
            )
        )
        lo = edge
    executed = float(sum(r.inputs * cost(r.edge) for r in rows))
    unpadded_total = float(sum(int(c) * cost(int(length)) for length, c in enumerate(counts) if c))
    return Report(
        name=name,
        edges=edges,
        rows=rows,
        real_tokens=int((np.arange(len(counts)) * counts).sum()),
        padded_tokens=sum(r.padded_tokens for r in rows),
        executed_flops=executed,
        unpadded_flops=unpadded_total,
    )


def powers_of_two(max_length: int, smallest: int = 16) -> list[int]:
    edges, e = [], smallest
    while e < max_length:
        edges.append(e)
        e *= 2
    return [*edges, max_length]
