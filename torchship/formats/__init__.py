"""Artifact formats. Each module offers the same pair, ``export(...)`` and ``load(...)``; ``load`` returns a
``Backend``: how far it pads a sequence, and how it runs padded inputs.

Static formats (TorchScript) pad to the smallest traced bucket; dynamic ones (AOTInductor, ONNX) pad only
to a small multiple, so sorted micro-batches waste almost nothing.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import SequenceTooLongError

PAD_MULTIPLE = 8  # dynamic formats pad to a multiple of this
MAX_BATCH = 1024  # dynamic formats' batch bound

Run = Callable[[int, tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]


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
