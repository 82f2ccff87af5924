"""Artifact formats: one ``Format`` per format, in one table; nothing outside this package asks which it holds.

Every format has the same pair, ``export(job) -> entries`` and ``load(root, manifest, target) -> Backend``,
plus ``check`` (the dtypes and devices it can be exported for) and ``refine`` (what it does to its own files
once parity holds: ONNX Runtime fusion, int8 quantization (formats/int8.py)). A ``Backend`` is a loaded format:
how far it pads a sequence, and how it runs padded inputs.

Static formats (TorchScript, Neuron) pad to the smallest traced bucket and get one manifest entry, with its own
parity record, per bucket; dynamic ones (AOTInductor, ONNX) pad only to a small multiple, so sorted
micro-batches waste almost nothing, and get one entry.

Adding a format: a module with a ``Format`` subclass decorated with ``@register``, imported at the bottom.
"""

from __future__ import annotations

import bisect
import fcntl
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import ArtifactError, OptionsError, SequenceTooLongError

if TYPE_CHECKING:
    import torch

    from ..artifact import FormatEntry, Manifest
    from ..options import ExportOptions

PAD_MULTIPLE = 8  # dynamic formats pad to a multiple of this
MAX_BATCH = 1024  # dynamic formats' batch bound
INT8 = (
    "dtype 'int8' is int8 quantization for CPU, in formats onnx (ONNX Runtime, dynamic), aoti (torchao PT2E, "
    "dynamic) and openvino (NNCF: weight-only, or static)"
)

Run = Callable[[int, "tuple[torch.Tensor, ...]"], "tuple[torch.Tensor, ...]"]


@dataclass
class Backend:
    """A loaded format: ``lengths`` are its traced buckets (static) or None (dynamic up to ``max_length``).

    A dynamic format pads to a multiple of ``pad_multiple``, or to the artifact's planned bucket edge
    (``snap``) when that is shorter: for short texts a planned edge wastes less than a multiple of 8.
    """

    name: str
    max_length: int
    lengths: list[int] | None
    run: Run  # (padded length, inputs in manifest order) -> outputs in manifest order
    pad_multiple: int = PAD_MULTIPLE
    snap: list[int] = field(default_factory=list)
    # whether ``run`` runs torch ops (TorchScript, AOTInductor: under inference_mode), or hands numpy to another
    # runtime (ONNX Runtime, OpenVINO), whose calls the engine makes without torch around them: right after a
    # run every torch call meets cold caches (four trivial ones took 100-110 us after a 1x16 OpenVINO run, four
    # numpy calls 37-47 us)
    torch_ops: bool = True

    def pad_length(self, seq: int) -> int:
        """The length a sequence of ``seq`` tokens is padded to."""
        if seq > self.max_length:
            raise SequenceTooLongError(
                f"sequence length {seq} exceeds the longest traced length {self.max_length}; "
                "truncate the input or export with a longer --seq-lengths bucket / --max-length"
            )
        if self.lengths is not None:
            return self.lengths[bisect.bisect_left(self.lengths, seq)]
        padded = min(-(-seq // self.pad_multiple) * self.pad_multiple, self.max_length)
        i = bisect.bisect_left(self.snap, seq)
        return min(padded, self.snap[i]) if i < len(self.snap) else padded


@dataclass
class ExportJob:
    """What every format's ``export`` gets: the wrapper to trace, example inputs per bucket, and where to write."""

    wrapper: torch.nn.Module  # ExportWrapper: inputs by position in ``input_names`` order, outputs as a tuple
    examples: dict[int, tuple[torch.Tensor, ...]]  # bucket -> example inputs (batch >= 1, padding inside)
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    max_length: int
    out: Path  # the artifact's staging directory
    cache_dir: Path  # where exported graphs and compiled packages are reused from (``reuse``)
    cache_key: str  # everything they depend on, hashed
    options: ExportOptions
    model_type: str
    ort_fusion: str | None  # the architecture's ONNX Runtime fusion type
    num_heads: int
    hidden_size: int

    @property
    def buckets(self) -> list[int]:
        return sorted(self.examples)

    def reuse(
        self, fmt: str, path: Path, make: Callable[[Path], list[warnings.WarningMessage]]
    ) -> list[warnings.WarningMessage]:
        """Write ``path`` by ``make(path)`` (returning the warnings seen), or copy it from the cache, where an
        export of the same key wrote it before (``cache_dir/fmt/cache_key``; a reused file brings no warnings).
        Exports of the same key take turns (a file lock), so one started meanwhile waits and reuses the file.
        The cache stays within its bound (cache.py): a new entry evicts the least recently used others."""
        from .. import cache

        limit = cache.max_bytes()  # a bad $TORCHSHIP_CACHE_MAX_GB stops the export before anything is made
        cached = self.cache_dir / fmt / (self.cache_key + path.suffix)
        cached.parent.mkdir(parents=True, exist_ok=True)
        with open(cached.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if cached.is_file():
                shutil.copyfile(cached, path)
                cache.touch(cached)
                return []
            seen = make(path)
            tmp = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
            shutil.copyfile(path, tmp)
            tmp.replace(cached)  # atomic: a reader sees the whole file or none
        cache.evict(self.cache_dir, limit, keep=cached)
        return seen

    def dynamic_example(self) -> tuple[torch.Tensor, ...]:
        """An example at batch >= 2 and seq >= 16, so neither dynamic dim specializes to 0 or 1."""
        import torch

        seq = min((s for s in self.examples if s >= 16), default=max(self.examples))
        example = self.examples[seq]
        return example if example[0].shape[0] >= 2 else tuple(torch.cat([x, x]) for x in example)


@dataclass(frozen=True)
class Target:
    """Where and how a format is loaded."""

    device: torch.device
    threads: int | None
    snap: list[int]  # the artifact's bucket edges, which dynamic formats may pad to
    workers: int = 1  # micro-batches run at once (LoadOptions.workers)


@dataclass
class Refiner:
    """What ``Format.refine`` may use: ``use(backend)`` makes the staging artifact run this format by ``backend``;
    ``check(tolerance=None)`` returns its ParityReport against the eager model; ``measure()`` returns its
    measured drift from the float32 eager model, per output (for a lossy rewrite such as int8), and ``cosine()``
    its lowest cosine similarity to that model, per output (validate.measure_cosine); ``agreement()`` its
    validate.Agreement with that model on real text, as the task's results are read, against the export's gate
    (``agreement(sample=True)``: on every ``validate.SAMPLE_EVERY``-th of those texts, what int8's sensitivities
    are measured on);
    ``calibration()`` inputs by name, real text the gate does not judge in the runtime's micro-batches, to set
    static int8's activation ranges on (validate.calibration_texts); ``unusual()`` its validate.Agreement on text
    unlike prose (validate.stress_texts), reported, not gated; ``batches()`` the gate's sample texts (those of
    ``agreement(sample=True)``) in the runtime's micro-batches, inputs by name: what a reduced precision's speed
    is timed on (int8.speedup)."""

    use: Callable[[Backend], None]
    check: Callable[..., Any]
    measure: Callable[[], dict[str, float]]
    cosine: Callable[[], dict[str, float]]
    agreement: Callable[..., Any]  # (sample=False): on the gate's texts, or on a sample of them (int8.search)
    calibration: Callable[[], list[dict[str, torch.Tensor]]]
    unusual: Callable[[], Any]
    batches: Callable[[], list[dict[str, torch.Tensor]]]


class Format:
    """The interface. Subclasses set the class attributes and implement ``export`` and ``load``."""

    name: ClassVar[str]
    file: ClassVar[str]
    static: ClassVar[bool]  # one traced graph per bucket, vs one dynamic graph
    dtypes: ClassVar[tuple[str, ...]] = ("float32", "float16", "bfloat16")
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    triton_platform: ClassVar[str | None] = None  # the Triton platform that serves this format's file natively
    int8_schemes: ClassVar[tuple[str, ...]] = ("dynamic",)  # how its int8 can be quantized; the first by default

    def fits(self, options: ExportOptions) -> bool:
        """Whether this format can be exported in ``options``' dtype on its device."""
        return options.dtype in self.dtypes and options.device.split(":")[0] in self.devices

    def unpads(self, options: ExportOptions) -> str | None:
        """Why this format cannot be exported with padding-free dense layers in ``options`` (ExportOptions.unpad),
        or None when it can."""
        return None

    def check(self, options: ExportOptions) -> None:
        """An OptionsError when this format cannot be exported with ``options`` (dtype, device)."""
        if self.fits(options):
            return
        if options.dtype == "int8":
            raise OptionsError(
                f"{INT8} (asked: {', '.join(options.formats)} on {options.device}); "
                "export it with --format onnx, aoti or openvino, on --device cpu"
            )
        raise OptionsError(self.unsupported(options))

    def unsupported(self, options: ExportOptions) -> str:
        return (
            f"format {self.name!r} is exported in {', '.join(self.dtypes)} on {', '.join(self.devices)} only "
            f"(asked: {options.dtype} on {options.device})"
        )

    def require(self) -> None:
        """Fail before anything is written when this format's toolchain is missing."""

    def export(self, job: ExportJob) -> list[warnings.WarningMessage]:
        """Write this format's files into ``job.out``; return the warnings the toolchain raised."""
        raise NotImplementedError

    def entries(self, job: ExportJob) -> list[FormatEntry]:
        """The manifest entries of what ``export`` wrote (parity is filled in after validation)."""
        from ..artifact import FormatEntry

        if self.static:
            return [FormatEntry(file=self.file, seq=seq, traced_batch=job.options.batch_size) for seq in job.buckets]
        return [FormatEntry(file=self.file, max_batch=MAX_BATCH, max_seq=job.max_length, pad_multiple=PAD_MULTIPLE)]

    def load(self, root: Path, manifest: Manifest, target: Target) -> Backend:
        raise NotImplementedError

    def refine(self, job: ExportJob, entry: FormatEntry, refiner: Refiner) -> dict[str, Any]:
        """After parity holds: rewrite this format's files if that keeps parity (fusion, quantization).
        Returns what to record: ``notes`` for the export record, ``precision`` when it changes the dtype."""
        return {}


_TABLE: dict[str, Format] = {}


def register(cls: type[Format]) -> type[Format]:
    if cls.name in _TABLE:
        raise ValueError(f"format {cls.name!r} is registered twice")
    _TABLE[cls.name] = cls()
    return cls


def get(name: str) -> Format:
    try:
        return _TABLE[name]
    except KeyError:
        raise ArtifactError(
            f"artifact format {name!r} is unknown to this torchship (known: {', '.join(_TABLE)}); upgrade torchship",
            path=".",
        ) from None


def names() -> tuple[str, ...]:
    return tuple(_TABLE)


# The built-in formats, registered in the order the CLI lists them.
# isort: off
from . import torchscript  # noqa: E402, F401
from . import aoti  # noqa: E402, F401
from . import onnx  # noqa: E402, F401
from . import neuron  # noqa: E402, F401
from . import openvino  # noqa: E402, F401
# isort: on
