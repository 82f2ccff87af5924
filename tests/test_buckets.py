"""The FLOP model, the exact bucket plan, plan-driven export and the runtime's dispatch counters."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import torchship
from tests.conftest import CORPUS, TS, corpus_texts
from torchship import buckets
from torchship.cli import main
from torchship.flops import layer_dense_flops
from torchship.plan import model_info, read_lengths


@pytest.mark.parametrize(
    ("cls_name", "task", "pooler"), [("BertModel", "feature-extraction", True), ("BertForMaskedLM", "fill-mask", False)]
)
@pytest.mark.parametrize(("batch", "seq"), [(1, 16), (3, 40)])
def test_flops_match_torch_flop_counter(cls_name: str, task: str, pooler: bool, batch: int, seq: int) -> None:
    import transformers
    from torch.utils.flop_counter import FlopCounterMode

    config = transformers.BertConfig(
        vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128
    )
    config._attn_implementation = "eager"  # matmul attention, which the counter sees (CPU SDPA it does not)
    model = getattr(transformers, cls_name)(config).eval()
    ids = torch.randint(0, 1000, (batch, seq))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert torchship.flops(config, batch, seq, task, pooler=pooler) == counter.get_total_flops()


def _brute_force(counts: np.ndarray, k: int, cost) -> float:
    lengths = [int(x) for x in np.flatnonzero(counts)]
    best = float("inf")
    for j in range(1, k + 1):
        for inner in itertools.combinations(lengths[:-1], j - 1):
            report = buckets.evaluate("x", counts, [*inner, lengths[-1]], cost)
            best = min(best, report.executed_flops)
    return best


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_plan_is_optimal_against_brute_force(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 60, size=40)
    counts = buckets.histogram(lengths, 64)

    def cost(n: int) -> float:
        return 1000.0 * n + 3.0 * n * n

    edges = buckets.plan(counts, k, cost)
    assert len(edges) <= k
    assert edges[-1] == lengths.max()
    planned = buckets.evaluate("plan", counts, edges, cost).executed_flops
    assert planned == pytest.approx(_brute_force(counts, k, cost))


def test_plan_report_accounts_every_input() -> None:
    counts = buckets.histogram([5, 5, 9, 20, 300], max_length=256)
    assert counts[256] == 1  # longer than max_length counts as truncated
    report = buckets.evaluate("x", counts, [10, 256], lambda n: float(n))
    assert [r.inputs for r in report.rows] == [3, 2]
    assert report.real_tokens == 5 + 5 + 9 + 20 + 256
    assert report.padded_tokens == 3 * 10 + 2 * 256
    assert report.flops_ratio == pytest.approx(report.padded_tokens / report.real_tokens)
    with pytest.raises(torchship.OptionsError, match="cannot hold"):
        buckets.evaluate("x", counts, [10, 100], lambda n: float(n))
    with pytest.raises(torchship.OptionsError, match="empty"):
        buckets.histogram([], 10)


def test_planned_buckets_beat_the_seed_and_powers_of_two_on_the_corpus(demo_artifact: Path) -> None:
    from torchship.plan import make_plan

    corpus_texts()  # skips when the corpus is absent
    info = model_info(demo_artifact)
    lengths = read_lengths(CORPUS, info.tokenizer)
    assert len(lengths) == 820
    _, result, hist = make_plan(lengths, info, 5)
    assert result.seed.flops_ratio > 5  # the seed's single max-length trace
    assert result.planned.flops_ratio < result.powers_of_two.flops_ratio  # same K=5 as powers of two up to 256
    assert sum(hist.values()) == 820
    _, result16, _ = make_plan(lengths, info, 16)
    assert result16.planned.flops_ratio <= 1.10


def test_read_lengths_accepts_texts_lists_and_numbers(demo_artifact: Path, tmp_path: Path) -> None:
    info = model_info(demo_artifact)
    (tmp_path / "a.jsonl").write_text('{"text": "hello world"}\n{"text": "a"}\n')
    assert read_lengths(tmp_path / "a.jsonl", info.tokenizer) == [4, 3]
    (tmp_path / "b.txt").write_text("12\n40\n\n7\n")
    assert read_lengths(tmp_path / "b.txt", info.tokenizer) == [12, 40, 7]
    (tmp_path / "c.json").write_text("[3, 4, 5]")
    assert read_lengths(tmp_path / "c.json", info.tokenizer) == [3, 4, 5]
    (tmp_path / "d.jsonl").write_text('{"txt": 1}\n')
    with pytest.raises(torchship.OptionsError, match="d.jsonl:1: expected a JSON object with a 'text' field"):
        read_lengths(tmp_path / "d.jsonl", info.tokenizer)


def test_plan_cli_prints_table_and_json(demo_artifact: Path, tmp_path: Path, capsys) -> None:
    sample = tmp_path / "lengths.txt"
    sample.write_text("\n".join(str(n) for n in [10] * 50 + [30] * 30 + [100] * 5))
    assert main(["plan", "--lengths-from", str(sample), "--model", str(demo_artifact), "--max-buckets", "3"]) == 0
    out = capsys.readouterr().out
    assert "seed: one trace at max_length" in out
    assert "powers of two" in out
    assert "--seq-lengths 10,30,100,256" in out
    assert main(["plan", "--lengths-from", str(sample), "--model", str(demo_artifact), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["planned"]["edges"] == [10, 30, 100, 256]
    assert data["planned"]["waste"] == pytest.approx(0.0)


def test_export_with_auto_buckets_records_the_plan(tiny_bert_dir: Path, tmp_path: Path) -> None:
    sample = tmp_path / "texts.jsonl"
    sample.write_text("".join(json.dumps({"text": "word " * n}) + "\n" for n in [3] * 20 + [12] * 10 + [40] * 3))
    opts = torchship.ExportOptions(formats=TS, buckets="auto", lengths_from=sample, max_buckets=3, max_length=64)
    out = torchship.export(tiny_bert_dir, tmp_path / "art", opts)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [e["seq"] for e in manifest["formats"]["torchscript"]] == [5, 14, 42, 64]
    assert manifest["plan"]["histogram"] == {"5": 20, "14": 10, "42": 3}
    assert manifest["plan"]["expected"]["planned"]["waste"] == pytest.approx(0.0)
    with pytest.raises(torchship.OptionsError, match="--lengths-from"):
        torchship.ExportOptions(buckets="auto")


def test_dispatch_uses_the_smallest_bucket_and_counts(tiny_bert_artifact: Path) -> None:
    predictor = torchship.load(tiny_bert_artifact, max_batch_tokens=32)  # buckets 8, 16, 32
    texts = ["a b", "one two three four five six seven eight nine ten eleven", "x"]
    lengths = predictor.encode(texts).lengths.tolist()
    out = predictor(texts)
    assert out.shape == (3, 32)
    counters = predictor.counters
    assert counters.real_tokens == sum(lengths)
    expected_padded = sum(predictor.bucket_for(n) for n in lengths)
    assert counters.padded_tokens == expected_padded
    cost = predictor.engine.cost
    # the dense layers run real tokens only (padding-free, the default for BERT): padding costs attention and the
    # head, not the dense FLOPs
    assert predictor.manifest.architecture["dense_layers"] == "real tokens only"
    config = json.loads((tiny_bert_artifact / "config.json").read_text())

    def dense(seq: int) -> int:
        return layer_dense_flops(config, 1, seq)

    padded = sum(cost(predictor.bucket_for(n)) for n in lengths)
    assert counters.flops_executed == padded - sum(dense(predictor.bucket_for(n)) - dense(n) for n in lengths)
    assert counters.flops_unpadded == sum(cost(n) for n in lengths)
    assert 1.0 < counters.flops_ratio < padded / counters.flops_unpadded
    np.testing.assert_allclose(out, np.stack([predictor([t])[0] for t in texts]), atol=1e-5)


def test_padded_dense_layers_count_every_padded_flop(tiny_bert_dir: Path, tmp_path: Path) -> None:
    """With --no-unpad every term runs at the padded length, and the counters say so."""
    options = torchship.ExportOptions(formats=TS, seq_lengths=(8, 16, 32), unpad=False)
    predictor = torchship.load(torchship.export(tiny_bert_dir, tmp_path / "padded", options), max_batch_tokens=32)
    assert predictor.manifest.architecture["dense_layers"] == "padded"
    texts = ["a b", "one two three four five six seven eight nine ten eleven", "x"]
    lengths = predictor.encode(texts).lengths.tolist()
    predictor(texts)
    cost = predictor.engine.cost
    assert predictor.counters.flops_executed == sum(cost(predictor.bucket_for(n)) for n in lengths)


def test_workers_give_the_same_results_in_input_order(demo_artifact: Path) -> None:
    texts = corpus_texts()[:120]
    one = torchship.load(demo_artifact, max_batch_tokens=256)
    two = torchship.load(demo_artifact, max_batch_tokens=256, workers=2)
    a, b = one(texts), two(texts)
    np.testing.assert_allclose(a, b, atol=1e-5)
    # every row ran exactly once; the plans themselves may differ, because a load with two workers times the
    # formats with two micro-batches at once and can route a length to another format (machine.stale)
    assert (one.counters.real_tokens, one.counters.flops_unpadded) == (
        two.counters.real_tokens,
        two.counters.flops_unpadded,
    )
    lengths = one.encode(texts).lengths
    for predictor in (one, two):  # and each ran its own plan, no micro-batch lost or run twice
        jobs = predictor.engine.plan(lengths)
        executed = sum(predictor.engine.executed_flops([int(lengths[r]) for r in rows], pad) for rows, pad, _ in jobs)
        assert predictor.counters.flops_executed == executed
    assert len(two.engine.plan(lengths)) > 4  # several micro-batches really ran concurrently
