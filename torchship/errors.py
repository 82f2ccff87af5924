"""The torchship exception tree.

Every error subclasses ``TorchshipError`` and a builtin, so callers can catch either::

    TorchshipError
    ├── ModelNotFoundError(FileNotFoundError)     the MODEL argument resolves to nothing loadable
    ├── UnsupportedModelError(ValueError)         an architecture or task torchship does not export
    ├── OptionsError(ValueError)                  an option value that cannot work
    ├── ExportError(RuntimeError)                 tracing or saving failed
    │   └── ParityError                           the exported model disagrees with the eager model
    ├── ArtifactError(ValueError)                 a directory that is not a usable artifact
    │   ├── NotAnArtifactError                    no manifest.json
    │   ├── MissingFileError                      a file the manifest lists is gone
    │   └── ChecksumError                         a file's sha256 differs from the manifest
    ├── InputError(ValueError)                    bad input handed to a Predictor
    │   ├── SequenceTooLongError                  a text exceeds the longest traced length
    │   └── TaskMismatchError                     inputs of another task (question= for a classifier)
    └── QueueFullError(RuntimeError)              the server's queue is full; retry shortly

Each message names the bad value and says how to fix it.
"""

from __future__ import annotations

from pathlib import Path


class TorchshipError(Exception):
    """Base class of every torchship error."""


class ModelNotFoundError(TorchshipError, FileNotFoundError):
    """The MODEL argument is neither a checkpoint directory, a cached hub id, nor ``demo``."""


class UnsupportedModelError(TorchshipError, ValueError):
    """The checkpoint's architecture or the requested task is not supported."""


class OptionsError(TorchshipError, ValueError):
    """An option value is invalid."""


class ExportError(TorchshipError, RuntimeError):
    """Tracing, compiling or writing an artifact failed."""


class ParityError(ExportError):
    """The exported model's outputs differ from the eager model's by more than ``atol``.

    ``failures`` maps ``"<format>/<entry>/<output>"`` to its max abs diff.
    """

    def __init__(self, message: str, *, failures: dict[str, float], atol: float) -> None:
        super().__init__(message)
        self.failures = failures
        self.atol = atol


class ArtifactError(TorchshipError, ValueError):
    """A directory is not a usable torchship artifact."""

    def __init__(self, message: str, *, path: Path | str) -> None:
        super().__init__(message)
        self.path = Path(path)


class NotAnArtifactError(ArtifactError):
    """The directory has no ``manifest.json``."""


class MissingFileError(ArtifactError):
    """A file listed in the manifest is missing."""


class ChecksumError(ArtifactError):
    """A file's sha256 does not match the manifest."""


class InputError(TorchshipError, ValueError):
    """Input handed to a ``Predictor`` is empty, of the wrong type, or out of range."""


class SequenceTooLongError(InputError):
    """A text is longer than the longest traced sequence length and truncation is off."""


class TaskMismatchError(InputError):
    """The inputs belong to another task: ``question=`` for a classifier, positional texts for QA."""


class QueueFullError(TorchshipError, RuntimeError):
    """More items are waiting than the server's ``max_queue`` allows."""
