"""The engine: loaded formats, routing, padding, execution and the micro-batch split. It knows no task.

``Engine.batches(encoded)`` sorts rows by length, cuts them into micro-batches (``split``, a pure function),
pads each only as far as its format needs, runs it, and yields ``(rows, Batch)``. Who wants to know what ran
(the Predictor's counters, the server's Prometheus metrics) registers a hook; the engine calls every hook
once per executed micro-batch. ``forward`` runs without hooks, for warm-up and timing.
"""

from __future__ import annotations

import bisect
import functools
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import artifact, device, formats, machine, tasks
from .artifact import Manifest
from .errors import ArtifactError, InputError, SequenceTooLongError
from .flops import flops, head_flops, layer_dense_flops
from .formats import MAX_BATCH, Backend, Target
from .options import LoadOptions
from .tasks import Batch
from .tokenize import Encoded, pad_rows


@dataclass(frozen=True)
class Executed:
    """What one executed micro-batch cost: what hooks are told."""

    format: str
    rows: int
    lengths: list[int]  # real tokens per row
    padded_length: int
    flops_executed: int
    flops_unpadded: int


Hook = Callable[[Executed], None]  # called once per executed micro-batch


@dataclass
class Counters:
    """A hook that adds up what ran: real vs padded tokens, executed vs unpadded FLOPs."""

    real_tokens: int = 0
    padded_tokens: int = 0
    flops_executed: int = 0
    flops_unpadded: int = 0

    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __call__(self, executed: Executed) -> None:
        with self._lock:
            self.real_tokens += sum(executed.lengths)
            self.padded_tokens += executed.rows * executed.padded_length
            self.flops_executed += executed.flops_executed
            self.flops_unpadded += executed.flops_unpadded

    @property
    def padding_waste(self) -> float:
        return 1 - self.real_tokens / self.padded_tokens if self.padded_tokens else 0.0

    @property
    def flops_ratio(self) -> float:
        return self.flops_executed / self.flops_unpadded if self.flops_unpadded else 1.0


def split(pads: list[int], cost: Callable[[int], float], *, call: float, max_rows: int, max_tokens: int) -> list[int]:
    """Where to cut rows sorted by length (``pads``: each row's padded length, non-decreasing) into
    micro-batches: the cut points that minimise the executed FLOPs plus ``call`` per micro-batch, with at most
    ``max_rows`` rows and ``max_tokens`` padded tokens in each (a single row may exceed the token budget).

    A micro-batch pads to its last (longest) row, so an exact dynamic program over cut points finds the best
    split. Returns the start index of every micro-batch.
    """
    n = len(pads)
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest split of the first j rows
    start = [0] * (n + 1)
    for j in range(1, n + 1):
        last = cost(pads[j - 1])
        for i in range(j - 1, max(-1, j - 1 - max_rows), -1):  # the batch is rows i..j-1, padded to pads[j-1]
            if (j - i) * pads[j - 1] > max_tokens and j - i > 1:
                break
            total = best[i] + (j - i) * last + call
            if total < best[j]:
                best[j], start[j] = total, i
    starts, j = [], n
    while j > 0:
        starts.append(start[j])
        j = start[j]
    return starts[::-1]


def route(timings: dict[str, dict[str, float]], grid_batches: list[int], grid_seqs: list[int], batch: int, seq: int,
          loaded: list[str]) -> str:  # fmt: skip
    """The format fastest at the timing grid point nearest to (batch, seq): the seq at or above, the batch
    nearest in log scale. A format with no timing there is never preferred."""
    s = grid_seqs[min(bisect.bisect_left(grid_seqs, seq), len(grid_seqs) - 1)]
    b = min(grid_batches, key=lambda g: abs(np.log(g) - np.log(max(batch, 1))))
    return min(loaded, key=lambda name: timings.get(name, {}).get(f"{b}x{s}", float("inf")))


Job = tuple[list[int], int, Backend]  # (rows, padded length, backend)


class Engine:
    """A loaded artifact's formats, and how micro-batches are cut, routed, padded and run."""

    def __init__(self, root: Path, manifest: Manifest, options: LoadOptions) -> None:
        self.root = root
        self.manifest = manifest
        self.options = options
        self.input_names: tuple[str, ...] = tuple(manifest.inputs)
        self.output_names: tuple[str, ...] = tuple(manifest.outputs)
        self.max_length = manifest.max_length
        self.pad_token_id = manifest.tokenizer.pad_token_id
        available = list(manifest.formats)
        if options.format is not None and options.format not in available:
            raise ArtifactError(
                f"artifact {root} has no {options.format!r} format; it holds: {', '.join(available)}", path=root
            )
        if options.threads is not None:
            torch.set_num_threads(options.threads)  # process-wide: torch has one intra-op pool
        self.device = device.resolve(options.device or manifest.device or "cpu")
        self.format = options.format
        self.target = Target(self.device, options.threads, sorted(manifest.buckets), options.workers)
        self.available = available
        self.timings = manifest.timings
        self.retime = self._retime(options)
        self._lock = threading.Lock()
        names = [options.format] if options.format else self.routed(self.retime is not None)
        self._check(names)
        self.backends: dict[str, Backend] = {n: formats.get(n).load(root, manifest, self.target) for n in names}
        static = [b.lengths for b in self.backends.values() if b.lengths]
        self.buckets: list[int] = static[0] if static else list(manifest.buckets or [self.max_length])
        config = json.loads((root / "config.json").read_text())
        pooler = "pooler_output" in self.output_names
        self.cost = functools.cache(lambda seq: flops(config, 1, seq, manifest.task, pooler=pooler))
        # padding-free dense layers (unpad.py) run on real tokens only, and some tasks' heads too: what a
        # micro-batch executes is less than its padded cost
        self.dense_unpadded = manifest.architecture.get("dense_layers") == "real tokens only"
        head = tasks.get(manifest.task).head_on_real_tokens
        self._dense = functools.cache(
            lambda seq: (
                layer_dense_flops(config, 1, seq)
                + (head_flops(config, 1, seq, manifest.task, pooler=pooler) if head else 0)
            )
        )
        self.hooks: list[Hook] = []

    # ---- routing -----------------------------------------------------------------------------------------------

    def _retime(self, options: LoadOptions) -> str | None:
        """Why the formats are timed again at load (Predictor), or None: asked to (``calibrate=True``), or the
        recorded timings do not describe this process (``calibrate=None``, machine.stale). Never with one format
        to route to."""
        if options.format is not None or len(self.available) == 1 or options.calibrate is False:
            return None
        if options.calibrate:
            return "calibrate=True"
        if self.timings is None:
            return None
        return machine.stale(self.timings, self.device, torch.get_num_threads(), options.workers)

    def routed(self, calibrate: bool = False) -> list[str]:
        """The formats routing can pick: those fastest at one grid point or more of the recorded timings (the
        first format when there are none; every format when they are to be re-timed). Only these are loaded."""
        if calibrate or len(self.available) == 1:
            return list(self.available)
        t = self.timings
        if t is None:
            return self.available[:1]
        wins = {route(t.median_ms, t.batch, t.seq, b, s, self.available) for b in t.batch for s in t.seq}
        return [n for n in self.available if n in wins]

    def backend(self, name: str) -> Backend:
        """A format's backend, loaded (and its files checked) on first use when routing did not need it."""
        if name not in self.backends:
            if name not in self.available:
                raise InputError(f"format {name!r} is not in this artifact; it holds: {', '.join(self.available)}")
            with self._lock:
                if name not in self.backends:
                    self._check([name])
                    loaded = formats.get(name).load(self.root, self.manifest, self.target)
                    self.backends = {**self.backends, name: loaded}  # a new dict: no reader sees one change size
        return self.backends[name]

    def _check(self, names: list[str]) -> None:
        """sha256-check the files of formats ``names`` and those every format shares (LoadOptions.verify)."""
        if self.options.verify:
            own = artifact.format_files(self.manifest)
            others = (own[n] for n in self.available if n not in names)
            artifact.verify(self.root, self.manifest, skip=set().union(*others))

    def select(self, batch: int, seq: int, format: str | None = None) -> Backend:
        """The backend for a (batch, seq) micro-batch: the forced one, the only one, or the fastest timed."""
        format = format or self.format
        if format is not None:
            return self.backend(format)
        if len(self.backends) == 1 or self.timings is None:
            return next(iter(self.backends.values()))
        t = self.timings
        return self.backends[route(t.median_ms, t.batch, t.seq, batch, seq, list(self.backends))]

    def pad_length(self, seq: int, batch: int = 1) -> int:
        """The length a (batch, seq) input is padded to."""
        return self.select(batch, seq).pad_length(seq)

    # ---- execution ---------------------------------------------------------------------------------------------

    def forward(self, backend: Backend, padded: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run padded inputs (by name) through ``backend``; outputs by name, on the CPU. Calls no hooks."""
        length = padded["input_ids"].shape[1]  # (batch, length)
        if self.device.type == "cpu" and not backend.torch_ops:  # no torch call it can spare: see Backend
            outputs = backend.run(length, tuple(padded[n] for n in self.input_names))
        else:
            inputs = device.to_device(padded, self.device)
            with torch.inference_mode():
                outputs = tuple(out.cpu() for out in backend.run(length, tuple(inputs[n] for n in self.input_names)))
        return dict(zip(self.output_names, outputs, strict=True))

    def execute(self, backend: Backend, padded: dict[str, torch.Tensor], lengths: list[int]) -> dict[str, torch.Tensor]:
        """``forward``, then tell every hook what ran."""
        outputs = self.forward(backend, padded)
        length = padded["input_ids"].shape[1]
        executed = Executed(
            backend.name, len(lengths), lengths, length, self.executed_flops(lengths, length),
            sum(self.cost(n) for n in lengths),
        )  # fmt: skip
        for hook in self.hooks:
            hook(executed)
        return outputs

    def executed_flops(self, lengths: list[int], length: int) -> int:
        """The FLOPs a micro-batch of rows of ``lengths`` real tokens padded to ``length`` executes: every term at
        the padded length, but an artifact's padding-free dense layers, which run each row's real tokens only
        (attention, embeddings and the task head still run the padded layout, but SPLADE's head:
        ``Task.head_on_real_tokens``)."""
        padded = len(lengths) * self.cost(length)
        if not self.dense_unpadded:
            return padded
        return padded - sum(self._dense(length) - self._dense(n) for n in lengths)

    def pad(self, given: dict[str, torch.Tensor], length: int) -> dict[str, torch.Tensor]:
        """Raw inputs (``input_ids`` and optionally the others) padded to ``length``, one tensor per input name."""
        ids = given["input_ids"]
        batch, seq = ids.shape
        defaults = {"input_ids": self.pad_token_id, "attention_mask": 0, "token_type_ids": 0}
        padded = {}
        for name in self.input_names:
            out = torch.full((batch, length), defaults[name], dtype=torch.long)  # (batch, length)
            if name in given:
                out[:, :seq] = given[name]
            elif name == "attention_mask":
                out[:, :seq] = 1
            padded[name] = out
        return padded

    def pad_rows(self, encoded: Encoded, rows: list[int], length: int) -> dict[str, torch.Tensor]:
        return pad_rows(encoded, rows, length, input_names=self.input_names, pad_token_id=self.pad_token_id)

    # ---- micro-batches -----------------------------------------------------------------------------------------

    def plan(self, lengths: np.ndarray) -> list[Job]:
        """(rows, padded length, backend) micro-batches: rows sorted by length and grouped by bucket (the
        static buckets, or the bucket edges for dynamic formats), cut within the row and token budgets."""
        if len(lengths) == 1:  # one text (what a server answers most): one micro-batch, as below, in fewer steps
            n = int(lengths[0])
            if n > self.max_length:
                raise SequenceTooLongError(f"sequence length {n} exceeds the longest traced length {self.max_length}")
            backend = self.select(1, n)
            return [([0], backend.pad_length(n), backend)]
        order = np.argsort(lengths, kind="stable").tolist()
        groups: dict[int, list[int]] = {}
        for r in order:
            n = int(lengths[r])
            if n > self.max_length:
                raise SequenceTooLongError(f"sequence length {n} exceeds the longest traced length {self.max_length}")
            edge = self.buckets[min(bisect.bisect_left(self.buckets, n), len(self.buckets) - 1)]
            groups.setdefault(edge, []).append(r)
        max_rows = max(1, min(self.options.micro_batch_size, MAX_BATCH))
        jobs = []
        for members in groups.values():
            backend = self.select(len(members), int(lengths[members[-1]]))
            if backend.lengths is None:  # dynamic: cut where padding costs more than another call
                pads = [backend.pad_length(int(lengths[r])) for r in members]
                # one more call costs about one 16-token row (batch 1 x 16 runs at about half the GEMM rate)
                starts = split(pads, self.cost, call=self.cost(16), max_rows=max_rows,
                               max_tokens=self.options.max_batch_tokens)  # fmt: skip
                chunks = [members[a:b] for a, b in zip(starts, [*starts[1:], len(members)], strict=True)]
            else:
                budget = self.options.max_batch_tokens // backend.pad_length(int(lengths[members[-1]]))
                size = max(1, min(max_rows, budget))
                chunks = [members[i : i + size] for i in range(0, len(members), size)]
            jobs += [(rows, backend.pad_length(int(lengths[rows[-1]])), backend) for rows in chunks]
        return jobs

    def batches(self, encoded: Encoded) -> Iterator[tuple[list[int], Batch]]:
        """Run encoded rows in micro-batches; with ``workers > 1`` they run concurrently, largest first."""
        jobs = self.plan(encoded.lengths)
        lengths = encoded.lengths

        def run(job: Job) -> tuple[list[int], Batch]:
            rows, length, backend = job
            padded = self.pad_rows(encoded, rows, length)
            row_lengths = [int(lengths[r]) for r in rows]
            outputs = self.execute(backend, padded, row_lengths)
            return rows, Batch(padded["input_ids"], padded["attention_mask"], outputs, row_lengths, rows)

        if self.options.workers == 1:
            yield from map(run, jobs)
            return
        jobs.sort(key=lambda job: -self.cost(job[1]) * len(job[0]))
        with ThreadPoolExecutor(self.options.workers, thread_name_prefix="torchship") as pool:
            yield from pool.map(run, jobs)
