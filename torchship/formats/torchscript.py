"""TorchScript: one traced, frozen method per sequence bucket, in one file, weights stored once.

``forward`` is the longest bucket, so the seed's ``torch.jit.load(path)(*inputs)`` works; bucket ``S``
is also reachable as method ``seq_S``. Freezing folds the weights into constants shared by every
method, so K buckets cost one copy of the weights on disk and in memory.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from . import Backend

FILE = "model.pt"


def method_name(seq: int) -> str:
    return f"seq_{seq}"


def export(
    wrapper: torch.nn.Module,
    examples: dict[int, tuple[torch.Tensor, ...]],
    path: Path,
) -> list[warnings.WarningMessage]:
    """Trace ``wrapper`` once per bucket (``examples``: seq -> inputs), freeze, save; return the warnings seen."""
    longest = max(examples)
    for seq in examples:
        setattr(wrapper, method_name(seq), wrapper.forward)
    inputs = {"forward": examples[longest], **{method_name(seq): x for seq, x in examples.items()}}
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with torch.no_grad():
            traced = torch.jit.trace_module(wrapper.eval(), inputs, check_trace=False)  # type: ignore[no-untyped-call]
        frozen = torch.jit.freeze(traced.eval(), preserved_attrs=[method_name(seq) for seq in examples])
        torch.jit.save(frozen, str(path))
    for seq in examples:
        delattr(wrapper, method_name(seq))
    return list(seen)


def load(path: Path, seqs: list[int], device: torch.device | None = None) -> Backend:
    """Load ``path`` onto ``device``; the backend runs bucket ``S`` through method ``seq_S``."""
    with warnings.catch_warnings():
        # torch.jit is deprecated upstream; the artifact's whole point is to keep it loadable. Silence that one notice.
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated", category=DeprecationWarning)
        module = torch.jit.load(str(path), map_location=device or "cpu")  # type: ignore[no-untyped-call]
    module.eval()
    methods = {seq: getattr(module, method_name(seq)) for seq in seqs}

    def run(seq: int, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(methods[seq](*inputs))

    return Backend("torchscript", max(seqs), sorted(seqs), run)
