"""The public surface: __all__ is sorted and locked, import stays light, the registry errors clearly."""

from __future__ import annotations

import subprocess
import sys

import pytest

import torchship
from torchship import registry, tasks

PUBLIC = [
    "ArtifactError",
    "ChecksumError",
    "ExportError",
    "ExportOptions",
    "InputError",
    "LoadOptions",
    "MissingFileError",
    "ModelNotFoundError",
    "NotAnArtifactError",
    "OptionsError",
    "ParityError",
    "Predictor",
    "SequenceTooLongError",
    "TorchshipError",
    "UnsupportedModelError",
    "__version__",
    "export",
    "flops",
    "load",
]


def test_all_is_sorted_and_locked() -> None:
    assert torchship.__all__ == sorted(torchship.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(torchship, name) is not None


def test_import_is_light() -> None:
    code = "import sys, torchship; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_errors_subclass_builtins() -> None:
    assert issubclass(torchship.ModelNotFoundError, FileNotFoundError)
    assert issubclass(torchship.InputError, ValueError)
    assert issubclass(torchship.ChecksumError, torchship.ArtifactError)
    assert issubclass(torchship.ParityError, RuntimeError)
    from torchship.errors import QueueFullError, TaskMismatchError

    assert issubclass(QueueFullError, torchship.TorchshipError)  # inside the tree, where callers catch it
    assert issubclass(TaskMismatchError, torchship.InputError)


def test_an_unsupported_pooling_is_an_unsupported_model(tmp_path) -> None:
    import json

    from torchship.source import read_sentence_transformers

    (tmp_path / "modules.json").write_text(json.dumps([{"type": "sentence_transformers.models.Pooling", "path": "p"}]))
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "config.json").write_text(json.dumps({"pooling_mode_weightedmean_tokens": True}))
    with pytest.raises(torchship.UnsupportedModelError, match="pooling none is not supported"):
        read_sentence_transformers(tmp_path)


def test_unknown_architecture_lists_the_supported_ones() -> None:
    with pytest.raises(torchship.UnsupportedModelError, match="supported model_type values are: albert, bert, "):
        registry.get_spec("gpt2")


@pytest.mark.parametrize(
    ("architectures", "task"),
    [
        (["BertModel"], "feature-extraction"),
        (["BertForMaskedLM"], "fill-mask"),
        (["BertForSequenceClassification"], "text-classification"),
        (["BertForTokenClassification"], "token-classification"),
        (["BertForQuestionAnswering"], "question-answering"),
    ],
)
def test_task_is_inferred_from_architectures(architectures: list[str], task: str) -> None:
    class Config:
        pass

    config = Config()
    config.architectures = architectures  # type: ignore[attr-defined]
    assert tasks.infer(config.architectures).name == task


def test_task_inference_failure_says_what_to_pass() -> None:
    class Config:
        architectures = ["BertForPreTraining"]

    with pytest.raises(torchship.UnsupportedModelError, match="pass --task"):
        tasks.infer(Config.architectures)
