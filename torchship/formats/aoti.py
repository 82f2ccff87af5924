"""AOTInductor: ``torch.export`` with dynamic batch and sequence, compiled ahead of time into a ``.pt2``.

One package serves every shape in range (batch 1..MAX_BATCH, seq 2..max_length). The example is taken at
batch 2 x seq >= 16 so neither dimension specializes to 0/1. Compiled with freezing (weights folded in).
Loads from Python with ``torch._inductor.aoti_load_package`` and from C++ with ``AOTIModelPackageLoader``.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from . import MAX_BATCH, Backend, ExportJob, Format, Target, register

if TYPE_CHECKING:
    from ..artifact import Manifest

FILE = "model.pt2"


@register
class AOTInductor(Format):
    name = "aoti"
    file = FILE
    triton_platform = "torch_aoti"
    static = False

    def export(self, job: ExportJob) -> list[warnings.WarningMessage]:
        """Export and compile; reuse ``job.cache`` (a compiled package) when it exists. Exports of the same key
        take turns (a file lock), so a second one started meanwhile waits and reuses the first one's package."""
        path, cache = job.out / FILE, job.cache.with_suffix(".pt2")
        cache.parent.mkdir(parents=True, exist_ok=True)
        with open(cache.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if cache.is_file():
                shutil.copyfile(cache, path)
                return []
            seen = self._compile(job, path)
            tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
            shutil.copyfile(path, tmp)
            tmp.replace(cache)
        return seen

    def _compile(self, job: ExportJob, path: Path) -> list[warnings.WarningMessage]:
        batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
        seq = torch.export.Dim("seq", min=2, max=job.max_length)
        dynamic = {name: {0: batch, 1: seq} for name in job.input_names}
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with torch.no_grad():
                program = torch.export.export(
                    job.wrapper.eval(), job.dynamic_example(), dynamic_shapes=dynamic, strict=False
                )
                torch._inductor.aoti_compile_and_package(
                    program, package_path=str(path), inductor_configs={"freezing": True}
                )
        return list(seen)

    def load(self, root: Path, manifest: Manifest, target: Target) -> Backend:
        runner = torch._inductor.aoti_load_package(str(root / FILE))

        def run(seq: int, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            return tuple(runner(*inputs))

        return Backend(self.name, manifest.max_length, None, run, snap=target.snap)
