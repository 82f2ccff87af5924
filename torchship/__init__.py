"""torchship: Hugging Face encoders to validated TorchScript artifacts, and a runtime without model code.

``import torchship`` stays light: the export side (transformers) loads only when ``export`` is called.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import (
    ArtifactError,
    ChecksumError,
    ExportError,
    InputError,
    MissingFileError,
    ModelNotFoundError,
    NotAnArtifactError,
    OptionsError,
    ParityError,
    SequenceTooLongError,
    TorchshipError,
    UnsupportedModelError,
)
from .flops import flops
from .options import ExportOptions, LoadOptions

if TYPE_CHECKING:
    from .runtime import Predictor

__version__ = "0.1.0"

__all__ = [
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


def export(model: str | Path, output_dir: str | Path, options: ExportOptions | None = None) -> Path:
    """Export a checkpoint to a validated artifact directory. See ``torchship.exporter.export``."""
    from .exporter import export as _export

    return _export(model, output_dir, options)


def load(path: str | Path, **options: Any) -> Predictor:
    """Load an artifact as a ``Predictor``; keyword options are ``LoadOptions`` fields."""
    from .runtime import load as _load

    return _load(path, **options)


def __getattr__(name: str) -> Any:
    if name == "Predictor":
        from .runtime import Predictor

        return Predictor
    raise AttributeError(f"module 'torchship' has no attribute {name!r}")
