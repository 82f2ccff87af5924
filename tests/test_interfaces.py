"""The growth axes' interfaces, tested at the interface: a toy task and a toy format each touch one module and
register in one place; the micro-batch split is a pure function; the batcher runs against a fake engine."""

from __future__ import annotations

import asyncio
import itertools
import threading
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import torchship
from tests.conftest import TS
from torchship import formats, tasks
from torchship.engine import Executed, route, split
from torchship.errors import QueueFullError
from torchship.serve.batcher import Batcher, Item
from torchship.serve.metrics import Metrics
from torchship.tasks import Batch, Context, Param, Task, Work
from torchship.tokenize import Encoded

# ---- a toy task: one class, one @register ----------------------------------------------------------------------


class TokenNorms(Task):
    """Per text: the L2 norm of each real token's hidden state, scaled by ``scale``."""

    name = "toy-token-norms"
    auto_class = "AutoModel"
    arch_suffix = "ForToyTokenNorms"
    params = (Param("scale", 1, "multiply every norm by this"),)

    def postprocess(
        self, ctx: Context, prepared: Any, batch: Batch, payloads: list[Any], params: Mapping[str, Any]
    ) -> list[Any]:
        hidden = batch.outputs["last_hidden_state"]  # (batch, seq, dim)
        return [(hidden[i, :n].norm(dim=-1) * params["scale"]).tolist() for i, n in enumerate(batch.lengths)]


@pytest.fixture
def toy_task() -> Iterator[type[Task]]:
    tasks.register(TokenNorms)
    yield TokenNorms
    del tasks._REGISTRY[TokenNorms.name]  # the registry is process-wide: leave it as it was


def test_a_toy_task_exports_runs_and_validates_its_options(toy_task, tiny_bert_dir: Path, tmp_path: Path) -> None:
    out = torchship.export(
        tiny_bert_dir, tmp_path / "toy", torchship.ExportOptions(formats=TS, task=toy_task.name, seq_lengths=(8, 16))
    )
    predictor = torchship.load(out)
    assert predictor.task == toy_task.name
    texts = ["hello world", "a somewhat longer sentence about puppets"]
    norms = predictor(texts, scale=2)
    raw = predictor.run(predictor.encode(texts[1]).ids[0])
    np.testing.assert_allclose(norms[1], (raw["last_hidden_state"][0].norm(dim=-1) * 2).tolist(), rtol=1e-5)
    assert len(norms[0]) == len(predictor.encode(texts[0]).ids[0])
    with pytest.raises(torchship.InputError, match="scale must be a positive integer"):
        predictor(texts, scale=0)
    with pytest.raises(torchship.InputError, match=r"unknown option\(s\) \['top_k'\] for task toy-token-norms"):
        predictor(texts, top_k=3)
    schema = toy_task().params_schema()  # the server's OpenAPI schema comes from the same Param
    assert schema["properties"]["scale"] == {
        "type": "integer", "minimum": 1, "default": 1, "description": "multiply every norm by this"
    }  # fmt: skip


def test_no_default_is_written_twice(capsys) -> None:
    """Task options come from one Param each: the runtime's defaults, the schema's and the CLI's agree."""
    from torchship.cli import main

    qa = tasks.get("question-answering")
    assert qa.check_params({}) == {"top_k": 1, "doc_stride": 128, "max_answer_len": 15}
    assert qa.params_schema()["properties"]["doc_stride"]["default"] == 128
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "overlap by (default 128)" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(torchship.InputError, match="over this server's limit of 100"):
        tasks.get("fill-mask").check_params({"top_k": 101}, server=True)
    assert tasks.get("fill-mask").check_params({"top_k": 101}) == {"top_k": 101}  # a server limit only


# ---- a toy format: one class, one @register ----------------------------------------------------------------------


class ExportedProgram(formats.Format):
    """``torch.export`` saved as an ExportedProgram (no AOT compile): dynamic batch and sequence."""

    name = "toy-exported-program"
    file = "model.ep.pt2"
    static = False
    devices = ("cpu",)

    def export(self, job: formats.ExportJob) -> list[warnings.WarningMessage]:
        batch = torch.export.Dim("batch", min=1, max=formats.MAX_BATCH)
        seq = torch.export.Dim("seq", min=2, max=job.max_length)
        dynamic = {name: {0: batch, 1: seq} for name in job.input_names}
        with warnings.catch_warnings(record=True) as seen, torch.no_grad():
            warnings.simplefilter("always")
            program = torch.export.export(job.wrapper, job.dynamic_example(), dynamic_shapes=dynamic, strict=False)
            torch.export.save(program, str(job.out / self.file))
        return list(seen)

    def load(self, root: Path, manifest: Any, target: formats.Target) -> formats.Backend:
        module = torch.export.load(str(root / self.file)).module()

        def run(seq: int, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            return tuple(module(*inputs))

        return formats.Backend(self.name, manifest.max_length, None, run, snap=target.snap)


@pytest.fixture
def toy_format() -> Iterator[type[formats.Format]]:
    formats.register(ExportedProgram)
    yield ExportedProgram
    del formats._TABLE[ExportedProgram.name]


def test_a_toy_format_exports_validates_and_loads(toy_format, tiny_bert_dir: Path, tmp_path: Path) -> None:
    options = torchship.ExportOptions(formats=("torchscript", toy_format.name), seq_lengths=(8, 32))
    out = torchship.export(tiny_bert_dir, tmp_path / "ep", options)
    manifest = torchship.load(out).manifest
    (entry,) = manifest.formats[toy_format.name]
    assert entry.parity is not None
    assert entry.parity["passed"] is True  # validated like every format
    assert (entry.seq, entry.max_seq) == (None, 32)  # a dynamic format's single entry
    texts = ["hello world", "x", "a somewhat longer sentence about muppets and puppets"]
    toy = torchship.load(out, format=toy_format.name)(texts)
    np.testing.assert_allclose(toy, torchship.load(out, format="torchscript")(texts), atol=1e-5)
    assert toy_format.name in manifest.timings.median_ms  # routed like every format


def test_static_formats_get_a_parity_record_per_bucket(tiny_bert_artifact: Path) -> None:
    manifest = torchship.load(tiny_bert_artifact).manifest
    entries = manifest.formats["torchscript"]
    assert [e.seq for e in entries] == [8, 16, 32]
    for e in entries:
        assert e.parity is not None
        assert e.parity["passed"] is True
        assert e.parity["validated_shape"][1] < e.seq  # validated at a length that was never traced


# ---- the engine's pure parts ----------------------------------------------------------------------------------------


def _brute_force(pads: list[int], cost, call: float, max_rows: int, max_tokens: int) -> float:
    best = float("inf")
    for cuts in itertools.product([False, True], repeat=len(pads) - 1):
        chunks, current = [], [0]
        for i, cut in enumerate(cuts, 1):
            if cut:
                chunks.append(current)
                current = []
            current.append(i)
        chunks.append(current)
        if all(len(c) <= max_rows and (len(c) == 1 or len(c) * pads[c[-1]] <= max_tokens) for c in chunks):
            best = min(best, sum(len(c) * cost(pads[c[-1]]) + call for c in chunks))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_split_is_the_cheapest_contiguous_split(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pads = sorted(int(x) for x in rng.choice([8, 16, 24, 32, 64, 128], size=9))

    def cost(seq: int) -> float:
        return 10.0 * seq + 0.05 * seq * seq  # dense + attention, like the FLOP model

    for max_rows, max_tokens in [(4, 256), (16, 10_000), (2, 64)]:
        starts = split(pads, cost, call=160.0, max_rows=max_rows, max_tokens=max_tokens)
        bounds = [*starts[1:], len(pads)]
        chunks = [list(range(a, b)) for a, b in zip(starts, bounds, strict=True)]
        assert [i for c in chunks for i in c] == list(range(len(pads)))
        total = sum(len(c) * cost(pads[c[-1]]) + 160.0 for c in chunks)
        assert total == pytest.approx(_brute_force(pads, cost, 160.0, max_rows, max_tokens))


def test_route_picks_the_fastest_at_the_nearest_grid_point() -> None:
    timings = {"a": {"1x16": 1.0, "8x16": 9.0, "1x64": 5.0}, "b": {"1x16": 2.0, "8x16": 4.0, "1x64": 6.0}}
    assert route(timings, [1, 8], [16, 64], 1, 10, ["a", "b"]) == "a"
    assert route(timings, [1, 8], [16, 64], 6, 16, ["a", "b"]) == "b"  # batch 6 is nearer 8 in log scale
    assert route(timings, [1, 8], [16, 64], 1, 40, ["a", "b"]) == "a"  # seq 40 uses the grid point at or above
    assert route(timings, [1, 8], [16, 64], 1, 10, ["b"]) == "b"  # only loaded formats count


def test_hooks_see_every_executed_micro_batch_and_forward_none(tiny_bert_artifact: Path) -> None:
    predictor = torchship.load(tiny_bert_artifact)
    seen: list[Executed] = []
    predictor.engine.hooks.append(seen.append)
    predictor(["hello world", "a somewhat longer sentence about puppets and muppets"])
    assert sum(e.rows for e in seen) == 2
    assert all(e.flops_executed >= e.flops_unpadded for e in seen)
    before = len(seen)
    backend = predictor.engine.select(1, 8)
    predictor.engine.forward(backend, predictor.engine.pad({"input_ids": torch.tensor([[101, 102]])}, 8))
    assert len(seen) == before  # warm-up and timing run through forward: not work


# ---- the batcher, against a fake engine ----------------------------------------------------------------------------


class FakeRunner:
    """Pads every row to a multiple of 4 and returns each work item's row count times ``mult``; records calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, dict[str, Any]]] = []
        self.gate = threading.Event()
        self.gate.set()

    def bucket_for(self, seq: int, batch: int = 1) -> int:
        return -(-seq // 4) * 4

    def run_works(self, works: list[Work], params: Mapping[str, Any]) -> list[Any]:
        self.gate.wait(5)
        self.calls.append((len(works), dict(params)))
        if params.get("fail"):
            raise torchship.InputError("bad item")
        return [len(w.encoded.ids) * params.get("mult", 1) for w in works]


def _work(rows: int, length: int) -> Work:
    ids = [np.arange(length) for _ in range(rows)]
    encoded = Encoded(ids=ids, type_ids=ids, offsets=[[] for _ in ids], truncated=[False] * rows, special=[])
    return Work(encoded, [None] * rows)


def test_batcher_groups_by_options_and_keeps_budgets() -> None:
    runner = FakeRunner()
    batcher = Batcher(runner, Metrics().of("toy"), max_batch_tokens=64, max_batch_size=3, max_wait_ms=50, max_queue=20)

    async def go() -> list[Any]:
        loop = asyncio.get_running_loop()
        items = [Item(_work(1 + i % 2, 5), (("mult", 1 + i % 2),), loop.create_future(), loop) for i in range(6)]
        batcher.submit(items)
        return list(await asyncio.gather(*(i.future for i in items)))

    try:
        results = asyncio.run(go())
    finally:
        batcher.close()
    assert results == [1, 4, 1, 4, 1, 4]  # rows x mult, in order
    assert all(len({tuple(p.items())}) == 1 for _, p in runner.calls)  # one option set per call
    assert sum(n for n, _ in runner.calls) == 6
    assert all(n <= 3 for n, _ in runner.calls)  # max_batch_size


def test_batcher_is_all_or_nothing_on_a_full_queue_and_hands_errors_back() -> None:
    runner = FakeRunner()
    runner.gate.clear()  # hold the worker, so items pile up
    batcher = Batcher(runner, Metrics().of("toy"), max_batch_tokens=64, max_batch_size=1, max_wait_ms=0, max_queue=3)

    async def go() -> None:
        loop = asyncio.get_running_loop()

        def item(**options: Any) -> Item:
            return Item(_work(1, 3), tuple(options.items()), loop.create_future(), loop)

        first = [item(), item()]
        batcher.submit(first)
        with pytest.raises(QueueFullError, match="queue is full"):
            batcher.submit([item(), item(), item()])  # 2 waiting (or 1 + 1 running) + 3 > 3: none queued
        failing = item(fail=True)
        batcher.submit([failing])
        runner.gate.set()
        assert await asyncio.gather(*(i.future for i in first)) == [1, 1]
        with pytest.raises(torchship.InputError, match="bad item"):
            await failing.future

    try:
        asyncio.run(go())
    finally:
        runner.gate.set()
        batcher.close()
