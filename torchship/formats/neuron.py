"""AWS Neuron: one compiled TorchScript model per bucket (Neuron needs static shapes).

Uses ``torch_neuronx.trace`` (Inf2, Trn1, Trn2) or ``torch.neuron.trace`` from ``torch-neuron`` (Inf1).
Without either SDK the export fails before anything is written. Not verified on Neuron hardware: no Neuron
SDK or device was available where torchship is developed; see the README.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from types import ModuleType

import torch

from ..errors import OptionsError
from . import Backend

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


def export(
    wrapper: torch.nn.Module, examples: dict[int, tuple[torch.Tensor, ...]], root: Path
) -> list[warnings.WarningMessage]:
    sdk = require_sdk()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for seq, example in examples.items():
            compiled = sdk.trace(wrapper.eval(), example)
            torch.jit.save(compiled, str(root / file_for(seq)))
    return list(seen)


def load(root: Path, seqs: list[int]) -> Backend:
    require_sdk()  # registers the Neuron ops that the saved graphs call
    modules = {seq: torch.jit.load(str(root / file_for(seq))) for seq in seqs}  # type: ignore[no-untyped-call]

    def run(seq: int, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(modules[seq](*inputs))

    return Backend("neuron", max(seqs), sorted(seqs), run)
