"""Device and dtype handling, in one place: names are checked here, tensors are moved here."""

from __future__ import annotations

import torch

from .errors import OptionsError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``, checked against what this machine has."""
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise OptionsError(f"device {name!r} is not a device name; use cpu, cuda or cuda:N") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionsError(
                f"device {name!r} was asked for, but no CUDA device is visible (torch.cuda.is_available() is False); "
                "use --device cpu here, or run on a machine with an NVIDIA GPU and a CUDA build of torch"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise OptionsError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif device.type != "cpu":
        raise OptionsError(f"device {name!r} is not supported; use cpu, cuda or cuda:N")
    return device


def dtype_of(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise OptionsError(f"dtype {name!r} is not supported; choose one of: {', '.join(DTYPES)}") from None


def to_device(tensors: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    if device.type == "cpu":
        return tensors
    return {name: t.to(device, non_blocking=True) for name, t in tensors.items()}
