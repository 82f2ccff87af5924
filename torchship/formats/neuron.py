"""AWS Neuron: one compiled TorchScript model per bucket (Neuron needs static shapes).

Uses ``torch_neuronx.trace`` (Inf2, Trn1, Trn2) or ``torch.neuron.trace`` from ``torch-neuron`` (Inf1).
Without either SDK the export fails before anything is written. Not verified on Neuron hardware: no Neuron
SDK or device was available where torchship is developed; see the README.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import torch

from ..errors import OptionsError
from . import Backend, ExportJob, Format, Target, register

if TYPE_CHECKING:
    from ..artifact import FormatEntry, Manifest
    from ..options import ExportOptions

SDK_HELP = (
    "format 'neuron' needs the AWS Neuron SDK, and none is importable here: install torch-neuronx (with "
    "neuronx-cc) for Inf2, Trn1 and Trn2 instances, or torch-neuron (with neuron-cc) for Inf1 instances, from "
    "AWS's Neuron pip repository (https://pip.repos.neuron.amazonaws.com), on the instance itself"
)


def require_sdk() -> ModuleType:
    """The Neuron tracing module, or an OptionsError that names the packages and instance types."""
    try:
        import torch_neuronx

        return torch_neuronx  # type: ignore[no-any-return]
    except ImportError:
        pass
    try:
        import torch_neuron  # noqa: F401  (registers torch.neuron)

        return torch.neuron  # type: ignore[attr-defined,no-any-return]
    except (ImportError, AttributeError):
        raise OptionsError(SDK_HELP) from None


def file_for(seq: int) -> str:
    return f"model.neuron.seq_{seq}.pt"


@register
class Neuron(Format):
    name = "neuron"
    file = "model.neuron.seq_{seq}.pt"
    static = True
    devices = ("cpu",)  # traced on the host; the compiled graphs run on the NeuronCores

    def unpads(self, options: ExportOptions) -> str | None:
        return "format 'neuron' compiles static shapes, and padding-free layers take their shapes from the data"

    def require(self) -> None:
        require_sdk()

    def export(self, job: ExportJob) -> list[warnings.WarningMessage]:
        sdk = require_sdk()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            for seq, example in job.examples.items():
                compiled = sdk.trace(job.wrapper.eval(), example)
                torch.jit.save(compiled, str(job.out / file_for(seq)))
        return list(seen)

    def entries(self, job: ExportJob) -> list[FormatEntry]:
        entries = super().entries(job)
        for entry in entries:
            entry.file, entry.method = file_for(entry.seq or 0), "forward"
        return entries

    def load(self, root: Path, manifest: Manifest, target: Target) -> Backend:
        require_sdk()  # registers the Neuron ops that the saved graphs call
        seqs = sorted(int(e.seq or 0) for e in manifest.formats[self.name])
        modules = {seq: torch.jit.load(str(root / file_for(seq))) for seq in seqs}  # type: ignore[no-untyped-call]

        def run(seq: int, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            return tuple(modules[seq](*inputs))

        return Backend(self.name, max(seqs), seqs, run)
