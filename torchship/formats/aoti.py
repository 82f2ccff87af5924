"""AOTInductor: ``torch.export`` with dynamic batch and sequence, compiled ahead of time into a ``.pt2``.

One package serves every shape in range (batch 1..MAX_BATCH, seq 2..max_length). The example is taken at
batch 2 x seq >= 16 so neither dimension specializes to 0/1. Compiled with freezing (weights folded in).
Loads from Python with ``torch._inductor.aoti_load_package`` and from C++ with ``AOTIModelPackageLoader``.

``--dtype int8`` (CPU) quantizes with torchao's PT2E flow, the supported successor of ``quantize_dynamic``:
``X86InductorQuantizer`` with dynamic int8 activations and int8 weights per output channel, which Inductor
lowers to oneDNN's int8 linear. The float32 package is compiled and validated first, as for a float32 export
(the baseline int8 must beat); the gate (formats/int8.py) then judges the quantized module in eager mode, where
a trial costs seconds instead of a compile, and only its choice is compiled, and judged again compiled.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import OptionsError
from . import MAX_BATCH, Backend, ExportJob, Format, Refiner, Target, int8, register

if TYPE_CHECKING:
    from ..artifact import FormatEntry, Manifest
    from ..options import ExportOptions

FILE = "model.pt2"
TORCHAO = "torchao==0.18.0"  # the PT2E quantizer int8 is made with (pyproject's int8 extra)


@register
class AOTInductor(Format):
    name = "aoti"
    file = FILE
    triton_platform = "torch_aoti"
    static = False
    dtypes = ("float32", "float16", "bfloat16", "int8")

    def fits(self, options: ExportOptions) -> bool:
        if options.dtype == "int8":  # Inductor's int8 linear is oneDNN's, for CPU
            return options.device.split(":")[0] == "cpu"
        return super().fits(options)

    def check(self, options: ExportOptions) -> None:
        super().check(options)
        if options.dtype == "int8":
            try:
                _torchao()
            except ImportError:
                raise OptionsError(
                    "int8 for format 'aoti' is quantized with torchao's PT2E flow, and torchao is not installed: "
                    f"pip install 'torchship[int8]' (or {TORCHAO})"
                ) from None

    def export(self, job: ExportJob) -> list[warnings.WarningMessage]:
        """Export and compile, or reuse the package an export of the same key compiled (``job.reuse``)."""
        return job.reuse(self.name, job.out / FILE, lambda path: self._compile(job, path))

    def _compile(
        self, job: ExportJob, path: Path, module: torch.nn.Module | None = None
    ) -> list[warnings.WarningMessage]:
        """Compile ``module`` (default: the job's wrapper) into the package ``path``."""
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            program = _program(job, job.wrapper.eval() if module is None else module)
            with torch.no_grad():
                torch._inductor.aoti_compile_and_package(
                    program, package_path=str(path), inductor_configs={"freezing": True}
                )
        return list(seen)

    def load(self, root: Path, manifest: Manifest, target: Target) -> Backend:
        return _backend(root / FILE, manifest.max_length, target.snap)

    def refine(self, job: ExportJob, entry: FormatEntry, refiner: Refiner) -> dict[str, Any]:
        return self._quantize(job, entry, refiner) if job.options.dtype == "int8" else {}

    def _quantize(self, job: ExportJob, entry: FormatEntry, refiner: Refiner) -> dict[str, Any]:
        """Replace model.pt2 (float32, validated) with its int8 PT2E quantization, gated on agreement with float32
        on real text: each trial is the quantized module run eagerly; the chosen one is compiled, and judged again
        compiled, keeping more groups in float32 while it misses (int8.hold_compiled; an OptionsError, nothing
        written, if it still misses)."""
        _torchao()
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        example = job.dynamic_example()
        program = _program(job, job.wrapper.eval())
        groups = linear_groups(program)

        def trial(keep: tuple[str, ...], *, sample: bool = False) -> tuple[Any, torch.nn.Module]:
            quantizer = _quantizer()
            for name in (n for g in keep for n in groups[g]):
                quantizer.set_module_name_qconfig(name, None)  # stays float32
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # torchao's deprecation notices about its own internals
                prepared = prepare_pt2e(program.module(), quantizer)
                prepared(*example)  # dynamic activations: one pass records nothing but the graph's shape
                module = convert_pt2e(prepared)
            refiner.use(Backend(self.name, job.max_length, None, _eager(module), snap=job.buckets))
            return refiner.agreement(sample=sample), module

        def probe(keep: tuple[str, ...]) -> float:
            return float(trial(keep, sample=True)[0].worst)

        gated = int8.search(list(groups), trial, lambda module: None, probe)
        path, compiled = job.out / FILE, job.out / "model.int8.pt2"
        float32 = _backend(path, job.max_length, job.buckets)
        loaded: list[Backend] = []

        def judge(module: torch.nn.Module) -> Any:
            self._compile(job, compiled, module)  # a loaded package runs from its own extracted copy
            loaded[:] = [_backend(compiled, job.max_length, job.buckets)]
            refiner.use(loaded[0])
            return refiner.agreement()

        try:
            gated = int8.hold_compiled(gated, list(groups), trial, judge, probe=probe)
            pace = int8.speedup(job, float32, loaded[0], refiner.batches())
            compiled.replace(path)
        finally:
            compiled.unlink(missing_ok=True)
        method = (
            "torchao PT2E (X86InductorQuantizer, linears): int8 weights per output channel, activations quantized "
            "per tensor at run time, compiled by AOTInductor"
        )
        return int8.finish(self.name, job, entry, refiner, gated, method=method, pace=pace, measured_on="AOTInductor")


def _program(job: ExportJob, module: torch.nn.Module) -> torch.export.ExportedProgram:
    """``module`` exported with dynamic batch and sequence at the job's dynamic example."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    seq = torch.export.Dim("seq", min=2, max=job.max_length)
    dynamic = {name: {0: batch, 1: seq} for name in job.input_names}
    with torch.no_grad():
        return torch.export.export(module, job.dynamic_example(), dynamic_shapes=dynamic, strict=False)


def _backend(path: Path, max_length: int, snap: list[int]) -> Backend:
    return Backend("aoti", max_length, None, _eager(torch._inductor.aoti_load_package(str(path))), snap=snap)


def _eager(runner: Any) -> Any:
    """A Backend's run for a callable that takes the inputs in manifest order and returns the outputs."""

    def run(seq: int, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        out = runner(*inputs)
        return (out,) if isinstance(out, torch.Tensor) else tuple(out)

    return run


def linear_groups(program: torch.export.ExportedProgram) -> dict[str, list[str]]:
    """The linear layers int8 quantizes, by module path, grouped as the gate keeps them in float32: each encoder
    layer (``model.encoder.layer.3``), else the module holding the linear (the pooler, the head), in graph order."""
    groups: dict[str, list[str]] = {}
    for node in program.graph.nodes:
        if node.target is not torch.ops.aten.linear.default:
            continue
        stack = node.meta.get("nn_module_stack") or {}
        if not stack:
            continue
        path = str(list(stack.values())[-1][0])
        parts = path.split(".")
        numbered = [i for i, p in enumerate(parts) if p.isdigit()]
        key = ".".join(parts[: numbered[-1] + 1]) if numbered else ".".join(parts[:-1]) if len(parts) > 2 else path
        if path not in groups.setdefault(key, []):
            groups[key].append(path)
    return groups


def _torchao() -> Any:
    """Import torchao without its import-time warnings about kernels for other platforms (CUDA, MX formats)."""
    import logging

    log = logging.getLogger("torchao")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import torchao
    finally:
        log.setLevel(level)
    return torchao


def _quantizer() -> Any:
    """torchao's X86InductorQuantizer, dynamic int8, annotating plain linears only: with torch 2.13, torchao 0.18's
    linear + unary and linear + binary + unary annotators raise IndexError on these graphs
    (``_get_output_nodes_of_partitions``), which costs the int8 linear + GELU fusion, not correctness."""
    with warnings.catch_warnings():  # it imports torch._inductor, whose first import warns about torch.jit
        warnings.filterwarnings("ignore", "`torch.jit.script_method` is deprecated", DeprecationWarning)
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq

    class LinearsOnly(xiq.X86InductorQuantizer):  # type: ignore[misc]
        def _annotate_linear_unary(self, *args: Any, **kwargs: Any) -> None:
            return None

        def _annotate_linear_binary_unary(self, *args: Any, **kwargs: Any) -> None:
            return None

    return LinearsOnly().set_global(xiq.get_default_x86_inductor_quantization_config(is_dynamic=True))
