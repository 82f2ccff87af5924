"""TorchScript: one traced, frozen method per sequence bucket, in one file, weights stored once.

``forward`` is the longest bucket, so the seed's ``torch.jit.load(path)(*inputs)`` works; bucket ``S``
is also reachable as method ``seq_S``. Freezing folds the weights into constants shared by every
method, so K buckets cost one copy of the weights on disk and in memory.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from . import Backend, ExportJob, Format, Target, register

if TYPE_CHECKING:
    from ..artifact import FormatEntry, Manifest

FILE = "model.pt"


def method_name(seq: int) -> str:
    return f"seq_{seq}"


def load_module(path: Path, device: torch.device | str = "cpu") -> torch.jit.ScriptModule:
    """``torch.jit.load``, without its deprecation notice: keeping TorchScript loadable is the point."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated", category=DeprecationWarning)
        module = torch.jit.load(str(path), map_location=device)  # type: ignore[no-untyped-call]
    module.eval()
    return module  # type: ignore[no-any-return]


@register
class TorchScript(Format):
    name = "torchscript"
    file = FILE
    triton_platform = "pytorch_libtorch"
    static = True

    def export(self, job: ExportJob) -> list[warnings.WarningMessage]:
        """Trace the wrapper once per bucket, freeze, save; return the warnings seen."""
        wrapper, examples = job.wrapper, job.examples
        longest = max(examples)
        for seq in examples:
            setattr(wrapper, method_name(seq), wrapper.forward)
        inputs = {"forward": examples[longest], **{method_name(seq): x for seq, x in examples.items()}}
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with torch.no_grad():
                traced = torch.jit.trace_module(wrapper.eval(), inputs, check_trace=False)  # type: ignore[no-untyped-call]
            frozen = torch.jit.freeze(traced.eval(), preserved_attrs=[method_name(seq) for seq in examples])
            torch.jit.save(frozen, str(job.out / FILE))
        for seq in examples:
            delattr(wrapper, method_name(seq))
        return list(seen)

    def entries(self, job: ExportJob) -> list[FormatEntry]:
        entries = super().entries(job)
        for entry in entries:
            entry.method = method_name(entry.seq or 0)
        return entries

    def load(self, root: Path, manifest: Manifest, target: Target) -> Backend:
        """Load ``model.pt`` onto the target device; bucket ``S`` runs through method ``seq_S``."""
        seqs = sorted(int(e.seq or 0) for e in manifest.formats[self.name])
        if torch.device(target.device).type == "cpu":
            # TorchScript's profiling executor keeps a specialized graph per input shape it has seen. On CPU that
            # bought no speed here and cost memory: a corpus job peaked at 1.45-1.83 GB with it (varying run to
            # run) and at 0.85-0.88 GB without, at equal rows/s (benchmarks: README, "Memory of a long job").
            # The switch is process-wide, like torch.set_num_threads.
            torch._C._jit_set_profiling_executor(False)
        module = load_module(root / FILE, target.device)
        methods = {seq: getattr(module, method_name(seq)) for seq in seqs}

        def run(seq: int, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            return tuple(methods[seq](*inputs))

        return Backend(self.name, max(seqs), seqs, run)
