"""Every registered architecture x every task: raw parity at untraced shapes, pipeline-shaped outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import torchship
from tests.conftest import TS
from tests.families import FAMILIES, NER_LABELS, TASK_SUFFIX
from torchship import registry, tasks
from torchship.tasks import names as task_names

TASKS = task_names()


def _grouped(family: str, *rest: str):  # noqa: ANN202
    """A parameter set that pytest-xdist's loadgroup keeps on one worker with its family's other tests, so each
    (family, task) artifact is exported once (`make test` runs this module on several workers)."""
    return pytest.param(family, *rest, marks=pytest.mark.xdist_group(family))


CELLS = [_grouped(family, task) for family in FAMILIES for task in TASKS]
GROUPED_FAMILIES = [_grouped(family) for family in FAMILIES]
# The task-level test of each task; tools/support_matrix.py reads their results by these names.
TASK_TESTS = {
    "feature-extraction": "test_feature_extraction_pools_the_pipeline_states",
    "fill-mask": "test_fill_mask_matches_pipeline",
    "text-classification": "test_text_classification_matches_pipeline",
    "token-classification": "test_token_classification_matches_pipeline",
    "question-answering": "test_question_answering_finds_the_best_span_across_windows",
    "sparse-embedding": "test_sparse_embedding_matches_sparse_encoder",
}
AOTI_FAMILY = "bert"  # every task is also compiled with AOTInductor on this family (minutes each on 2 cores)


def formats_of(family: str, task: str) -> tuple[str, ...]:
    """What each cell exports. SPLADE is a masked LM plus a pooling head, so its cells run in TorchScript only
    (the masked LM itself is every family's fill-mask cell, in every format); on bert also in ONNX. OpenVINO
    converts the ONNX graph the cell exports anyway (a second or two)."""
    if task == "sparse-embedding":
        return ("torchscript", "onnx") if family == AOTI_FAMILY else ("torchscript",)
    every = ("torchscript", "onnx", "openvino")
    return (*every, "aoti") if family == AOTI_FAMILY else every


TEXTS = ["Jim Henson was a puppeteer in New York.", "Sesame Street", "the muppets were filmed in london studios"]


def test_every_registered_architecture_has_a_test_row() -> None:
    assert sorted(FAMILIES) == sorted(registry.supported()), "add a tiny config to tests/families.py"


def _save(path: Path, family: str, task: str, demo_dir: Path) -> Path:
    import transformers

    config_name, prefix, kwargs = FAMILIES[family]
    config = getattr(transformers, config_name)(**kwargs)
    class_name = prefix + TASK_SUFFIX[task]
    config.architectures = [class_name]
    if task == "token-classification":
        config.id2label = NER_LABELS
        config.label2id = {v: k for k, v in NER_LABELS.items()}
    if task == "text-classification":
        config.id2label = {0: "negative", 1: "positive", 2: "neutral"}
        config.label2id = {v: k for k, v in config.id2label.items()}
    torch.manual_seed(0)
    getattr(transformers, class_name)(config).eval().save_pretrained(path)
    transformers.AutoTokenizer.from_pretrained(demo_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path):
    cache: dict[tuple[str, str], tuple[Path, Path]] = {}

    def get(family: str, task: str) -> tuple[Path, Path]:
        if (family, task) not in cache:
            root = tmp_path_factory.mktemp(f"{family}-{task}")
            src = _save(root / "model", family, task, demo_dir)
            inferred = "auto" if tasks.get(task).arch_suffix else task  # SPLADE: never inferred from the config
            # routing is not what this matrix tests: the formats are timed at their cheapest point only
            options = torchship.ExportOptions(
                task=inferred, seq_lengths=(8, 32), formats=formats_of(family, task), timing_budget_s=0
            )
            art = torchship.export(src, root / "art", options)
            cache[family, task] = (src, art)
        return cache[family, task]

    return get


def _eager(src: Path, task: str):
    import transformers

    spec = registry.get_spec(transformers.AutoConfig.from_pretrained(src).model_type)
    auto = getattr(transformers, tasks.get(task).auto_class)
    model = auto.from_pretrained(src, attn_implementation=spec.attn_implementation)
    return tasks.get(task).graph(model, {}).eval()


@pytest.mark.parametrize(("family", "task"), CELLS)
def test_raw_parity_at_untraced_shapes(family: str, task: str, exported) -> None:
    src, art = exported(family, task)
    predictor = torchship.load(art)
    assert predictor.task == task
    assert set(predictor.engine.available) == set(formats_of(family, task))
    eager = _eager(src, task)
    atol = registry.get_spec(family).atol
    torch.manual_seed(2)
    for batch, seq in [(3, 13), (5, 27)]:
        ids = torch.randint(1000, 5000, (batch, seq))
        ids[:, 0], ids[:, -1] = 101, 102
        mask = torch.ones(batch, seq, dtype=torch.long)
        mask[1, seq // 2 :] = 0  # padding inside the batch
        inputs = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in predictor.input_names:
            inputs["token_type_ids"] = (torch.arange(seq) > seq // 2).long().expand(batch, seq)
        with torch.inference_mode():
            want = eager(**inputs)
        for fmt in predictor.engine.available:  # every format of the cell, not only the one routing would pick
            got = predictor.run(**inputs, format=fmt)
            for name, value in got.items():
                ref = want[name]
                diff = (value - ref)[mask.bool()] if predictor.seq_axis(name) == 1 else value - ref
                assert diff.abs().max() <= atol, f"{family}/{task}/{fmt}/{name} at {batch}x{seq}"


def _pipeline(task: str, src: Path):
    from transformers import pipeline

    return pipeline(task, model=str(src), device="cpu")


@pytest.mark.parametrize("family", GROUPED_FAMILIES)
def test_feature_extraction_pools_the_pipeline_states(family: str, exported) -> None:
    src, art = exported(family, "feature-extraction")
    got = torchship.load(art)(TEXTS)
    states = _pipeline("feature-extraction", src)(TEXTS)
    want = np.stack([np.asarray(s[0]).mean(axis=0) for s in states])  # mean pooling, no normalization (default)
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("family", GROUPED_FAMILIES)
def test_fill_mask_matches_pipeline(family: str, exported) -> None:
    src, art = exported(family, "fill-mask")
    text = "Jim Henson was a [MASK] in new york."
    got = torchship.load(art)(text, top_k=4)
    want = _pipeline("fill-mask", src)(text, top_k=4)
    assert [g["token"] for g in got] == [w["token"] for w in want]
    assert [g["sequence"] for g in got] == [w["sequence"] for w in want]
    np.testing.assert_allclose([g["score"] for g in got], [w["score"] for w in want], atol=1e-5)


@pytest.mark.parametrize("family", GROUPED_FAMILIES)
def test_text_classification_matches_pipeline(family: str, exported) -> None:
    src, art = exported(family, "text-classification")
    predictor, pipe = torchship.load(art), _pipeline("text-classification", src)
    got, want = predictor(TEXTS), pipe(TEXTS)
    assert [g["label"] for g in got] == [w["label"] for w in want]
    np.testing.assert_allclose([g["score"] for g in got], [w["score"] for w in want], atol=1e-5)
    got_all, want_all = predictor(TEXTS[0], top_k=3), pipe(TEXTS[0], top_k=3)
    assert [g["label"] for g in got_all] == [w["label"] for w in want_all]


@pytest.mark.parametrize(
    ("family", "strategy"),
    [_grouped(f, s) for f in FAMILIES for s in ("none", "simple", "first", "average", "max")],
)
def test_token_classification_matches_pipeline(family: str, strategy: str, exported) -> None:
    src, art = exported(family, "token-classification")
    text = "Jim Henson was a puppeteer from Greenville, Mississippi who founded the Muppets."
    got = torchship.load(art)(text, aggregation_strategy=strategy)
    want = _pipeline("token-classification", src)(text, aggregation_strategy=strategy)
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        assert {k: v for k, v in g.items() if k != "score"} == {k: v for k, v in w.items() if k != "score"}
        assert g["score"] == pytest.approx(float(w["score"]), abs=1e-5)


@pytest.mark.parametrize("family", GROUPED_FAMILIES)
def test_question_answering_finds_the_best_span_across_windows(family: str, exported) -> None:
    from transformers import AutoTokenizer

    src, art = exported(family, "question-answering")
    predictor = torchship.load(art)
    eager = _eager(src, "question-answering")
    question = "Who created the muppets?"
    context = " ".join(["Jim Henson was a puppeteer who created the muppets in new york."] * 6)  # > 32 tokens
    got = predictor(question=question, context=context, doc_stride=8)
    assert set(got) == {"score", "start", "end", "answer"}
    assert got["answer"] == context[got["start"] : got["end"]]

    # Reference: transformers' own tokenizer windows, the eager model, brute-force best span per window.
    tok = AutoTokenizer.from_pretrained(src)
    enc = tok(
        question, context, truncation="only_second", max_length=32, stride=8,
        return_overflowing_tokens=True, return_offsets_mapping=True,
    )  # fmt: skip
    assert len(enc["input_ids"]) > 1, "the context must span several windows"
    best = (-1.0, 0, 0)
    for w in range(len(enc["input_ids"])):
        ids = torch.tensor([enc["input_ids"][w]])
        kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if "token_type_ids" in predictor.input_names:
            kwargs["token_type_ids"] = torch.tensor([enc["token_type_ids"][w]])
        with torch.inference_mode():
            out = eager(**kwargs)
        in_context = torch.tensor([s == 1 for s in enc.sequence_ids(w)])
        start = out.start_logits[0].masked_fill(~in_context, -10000.0).softmax(-1)
        end = out.end_logits[0].masked_fill(~in_context, -10000.0).softmax(-1)
        for s in torch.nonzero(in_context).flatten().tolist():
            for e in range(s, min(s + 15, len(in_context))):
                if in_context[e] and start[s] * end[e] > best[0]:
                    offsets = enc["offset_mapping"][w]
                    best = (float(start[s] * end[e]), offsets[s][0], offsets[e][1])
    assert got["score"] == pytest.approx(best[0], rel=1e-4)
    assert (got["start"], got["end"]) == best[1:]
    several = predictor(question=[question, "Where?"], context=[context, "In new york."], top_k=2)
    assert len(several) == 2
    assert len(several[0]) == 2


@pytest.mark.xdist_group("bert")
def test_question_answering_input_errors(exported) -> None:
    _, art = exported("bert", "question-answering")
    predictor = torchship.load(art)
    with pytest.raises(torchship.InputError, match="needs both"):
        predictor(question="who?")
    with pytest.raises(torchship.InputError, match="not positional texts"):
        predictor(["who?"])
    with pytest.raises(torchship.InputError, match=r"unknown option\(s\) \['aggregation_strategy'\]"):
        predictor(question="who?", context="me", aggregation_strategy="simple")
    with pytest.raises(torchship.InputError, match="too long for the longest traced length 32"):
        predictor(question="word " * 40, context="short")
    with pytest.raises(torchship.InputError, match="got 1 questions and 2 contexts; pass lists of equal length"):
        predictor(question=["a"], context=["b", "c"])
    contexts = ["Jim Henson was a puppeteer.", "The muppets were filmed in london."]
    one_question = predictor(question="Where?", context=contexts)  # one question over every context
    assert one_question == predictor(question=["Where?", "Where?"], context=contexts)
    one_context = predictor(question=["Who?", "What?"], context=contexts[0])  # many questions, one context
    assert one_context == predictor(question=["Who?", "What?"], context=[contexts[0]] * 2)
    assert isinstance(one_context, list)
    assert len(one_context) == 2


@pytest.mark.parametrize("family", GROUPED_FAMILIES)
def test_sparse_embedding_matches_sparse_encoder(family: str, exported) -> None:
    import warnings

    from sentence_transformers import SparseEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    src, art = exported(family, "sparse-embedding")
    got = torchship.load(art)(TEXTS)
    reference = SparseEncoder(modules=[Transformer(str(src), transformer_task="fill-mask"), SpladePooling()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's sparse tensors warn that their support is in beta
        want = reference.encode(TEXTS, convert_to_tensor=True).to_dense().cpu().numpy()
    for g, w in zip(got, want, strict=True):
        dense = np.zeros_like(w)
        dense[g["indices"]] = g["values"]
        np.testing.assert_allclose(dense, w, atol=1e-4)


@pytest.mark.parametrize(("family", "task"), CELLS)
def test_flop_model_matches_torch_flop_counter(family: str, task: str) -> None:
    import transformers
    from torch.utils.flop_counter import FlopCounterMode

    config_name, prefix, kwargs = FAMILIES[family]
    config = getattr(transformers, config_name)(**kwargs)
    config._attn_implementation = "eager"  # matmul attention, which the counter sees (CPU SDPA it does not)
    model = tasks.get(task).graph(getattr(transformers, prefix + TASK_SUFFIX[task])(config), {}).eval()
    ids = torch.randint(1000, 2000, (3, 40))
    with FlopCounterMode(display=False) as counter:  # grad mode on: DeBERTa's hooks need it under the counter
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    pooler = "pooler_output" in out
    assert torchship.flops(config, 3, 40, task, pooler=pooler) == counter.get_total_flops()


@pytest.mark.parametrize("family", GROUPED_FAMILIES)
def test_export_at_the_familys_true_length_limit(family: str, demo_dir: Path, tmp_path: Path) -> None:
    """RoBERTa-style families number positions from pad_token_id + 1, so max_position_embeddings overstates
    their limit; the spec knows, and an export right at the limit holds parity while one past it is refused."""
    import transformers

    src = _save(tmp_path / "model", family, "feature-extraction", demo_dir)
    config = transformers.AutoConfig.from_pretrained(src)
    spec = registry.get_spec(family)
    limit = spec.max_positions(config)
    assert limit is not None
    # RoBERTa and XLM-R count from pad_token_id + 1 (0 + 1 here); MPNet from a fixed padding index 1 + 1
    assert limit == {"roberta": 513, "xlm-roberta": 513, "mpnet": 512}.get(family, config.max_position_embeddings)
    options = torchship.ExportOptions(formats=TS, seq_lengths=(8,), max_length=limit, batch_size=1)
    predictor = torchship.load(torchship.export(src, tmp_path / "art", options))
    assert predictor.max_length == limit
    assert predictor.buckets == [8, limit]  # --max-length above the largest bucket is a bucket of its own
    assert predictor.manifest.formats["torchscript"][-1].parity["passed"] is True
    with pytest.raises(torchship.OptionsError, match=f"exceeds the {limit} positions .* --max-length {limit} or less"):
        torchship.export(src, tmp_path / "over", torchship.ExportOptions(seq_lengths=(8,), max_length=limit + 1))
