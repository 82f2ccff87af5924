"""AOTInductor: ``torch.export`` with dynamic batch and sequence, compiled ahead of time into a ``.pt2``.

One package serves every shape in range (batch 1..MAX_BATCH, seq 2..max_length). The example is taken at
batch 2 x seq >= 16 so neither dimension specializes to 0/1. Compiled with freezing (weights folded in).
Loads from Python with ``torch._inductor.aoti_load_package`` and from C++ with ``AOTIModelPackageLoader``.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import torch

from . import MAX_BATCH, Backend

FILE = "model.pt2"


def export(
    wrapper: torch.nn.Module, example: tuple[torch.Tensor, ...], input_names: tuple[str, ...], max_length: int,
    path: Path, cache: Path | None,
) -> list[warnings.WarningMessage]:  # fmt: skip
    """Export and compile ``wrapper`` to ``path``; reuse ``cache`` (a compiled package) when it exists."""
    if cache is not None and cache.is_file():
        shutil.copyfile(cache, path)
        return []
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    seq = torch.export.Dim("seq", min=2, max=max_length)
    dynamic = {name: {0: batch, 1: seq} for name in input_names}
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with torch.no_grad():
            program = torch.export.export(wrapper.eval(), example, dynamic_shapes=dynamic, strict=False)
            torch._inductor.aoti_compile_and_package(
                program, package_path=str(path), inductor_configs={"freezing": True}
            )
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        shutil.copyfile(path, tmp)
        tmp.replace(cache)
    return list(seen)


def load(path: Path, max_length: int) -> Backend:
    runner = torch._inductor.aoti_load_package(str(path))

    def run(seq: int, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(runner(*inputs))

    return Backend("aoti", max_length, None, run)
