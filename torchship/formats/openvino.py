"""OpenVINO: the ONNX export's graph (the same file, shared through the export cache) converted by
``openvino.convert_model`` to OpenVINO IR, ``openvino/model.xml`` with its weights in ``openvino/model.bin``, and run
by OpenVINO's CPU plugin in float32 (``INFERENCE_PRECISION_HINT`` f32: left to itself the plugin may run bfloat16
on CPUs that have it). Dynamic batch and sequence, padding-free dense layers like the ONNX graph it comes from.

Why a format of its own: the plugin's oneDNN kernels and its own fusions (attention, LayerNorm, GELU) ran the
padding-free graph of all-MiniLM-L6-v2 about 7 % faster than ONNX Runtime on the corpus and 7-11 % faster at
1x128 and 8x128 (an AVX-512 VNNI machine; benchmarks/peers.py), and weight-only int8 keeps float32's quality
much better than dynamic int8 (README, "int8").

``--dtype int8`` is NNCF's weight compression (``nncf.compress_weights``, INT8_ASYM): 8-bit weights per output
channel (uint8 with a zero point), decompressed inside the kernels; activations stay float32. Gated like every
int8 export (formats/int8.py): the most sensitive linear layers stay in float32 until the agreement with float32
on real text holds.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import OptionsError
from . import Backend, ExportJob, Format, Refiner, Target, int8, register
from . import onnx as onnx_format

if TYPE_CHECKING:
    from ..artifact import FormatEntry, Manifest

FILE = "openvino/model.xml"  # its weights: openvino/model.bin (a format whose file lies in a folder owns it)
INSTALL = "pip install 'torchship[openvino]'"
SOURCE = "openvino.source.onnx"  # in the staging directory while the IR is made from it; never in an artifact


def require_openvino() -> Any:
    try:
        import openvino
    except ImportError as e:
        raise OptionsError(f"format 'openvino' needs openvino, which is not installed: {INSTALL}") from e
    return openvino


def compiled(path: Path, max_length: int, *, threads: int | None, workers: int, snap: list[int]) -> Backend:
    """``path`` compiled for the CPU plugin. One stream per worker (``workers`` micro-batches run at once, each on
    ``threads`` threads), and one infer request per calling thread: a request's buffers are its own."""
    ov = require_openvino()
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if workers > 1:
        config = {"INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": workers}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads * max(workers, 1)
    model = ov.Core().compile_model(str(path), "CPU", config)
    names = [i.get_any_name() for i in model.inputs]
    outputs = list(model.outputs)
    local = threading.local()

    def run(seq: int, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        request = getattr(local, "request", None)
        if request is None:
            request = local.request = model.create_infer_request()
        feed = {name: np.ascontiguousarray(x.numpy()) for name, x in zip(names, inputs, strict=True)}
        result = request.infer(feed)  # releases the GIL while it runs
        return tuple(torch.from_numpy(np.array(result[o])) for o in outputs)  # copied: the request reuses its buffers

    return Backend("openvino", max_length, None, run, snap=snap)


def weighted(path: Path) -> set[str]:
    """The names of the MatMul and Gather nodes of the IR at ``path`` that take a constant (weights or an
    embedding table): what weight compression can compress."""
    ov = require_openvino()
    names = set()
    for op in ov.Core().read_model(str(path)).get_ordered_ops():
        if op.get_type_name() not in ("MatMul", "Gather"):
            continue
        sources = [i.get_source_output().get_node() for i in op.inputs()]
        while any(s.get_type_name() == "Convert" for s in sources):  # a constant stored in another precision
            sources = [s.input_value(0).get_node() if s.get_type_name() == "Convert" else s for s in sources]
        if any(s.get_type_name() == "Constant" and len(s.get_output_shape(0)) >= 2 for s in sources):
            names.add(op.get_friendly_name())
    return names


def compress(path: Path, out: Path, *, exclude: list[str]) -> None:
    """Write NNCF's int8 weight compression of the IR at ``path`` to ``out``; the nodes in ``exclude`` keep float32
    weights."""
    ov = require_openvino()
    try:
        import nncf
    except ImportError as e:
        raise OptionsError(f"int8 for format 'openvino' needs nncf, which is not installed: {INSTALL}") from e
    model = ov.Core().read_model(str(path))
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("nncf").setLevel(logging.ERROR)
        nncf.set_log_level(logging.ERROR)
        ignored = nncf.IgnoredScope(names=exclude, validate=False)
        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM, ignored_scope=ignored)
    ov.save_model(model, str(out), compress_to_fp16=False)


def _source(job: ExportJob, path: Path) -> list[warnings.WarningMessage]:
    """Write the ONNX export's float32 graph to ``path``: the one the ONNX format exported to the cache (the same
    key), or exported now."""

    def make(out: Path) -> list[warnings.WarningMessage]:
        return onnx_format.export_graph(
            job.wrapper, job.dynamic_example(), job.input_names, job.output_names, job.max_length, out
        )

    return job.reuse(onnx_format.ONNX.name, path, make)


@register
class OpenVINO(Format):
    name = "openvino"
    file = FILE
    static = False
    dtypes = ("float32", "int8")
    devices = ("cpu",)

    def unsupported(self, options: Any) -> str:
        return (
            f"format 'openvino' is exported in float32 or int8 for CPU only (asked: {options.dtype} on "
            f"{options.device}); use torchscript or aoti for float16, bfloat16 and CUDA"
        )

    def check(self, options: Any) -> None:
        super().check(options)
        require_openvino()
        if options.dtype == "int8":
            try:
                import nncf  # noqa: F401
            except ImportError:
                raise OptionsError(
                    f"int8 for format 'openvino' needs nncf, which is not installed: {INSTALL}"
                ) from None

    def export(self, job: ExportJob) -> list[warnings.WarningMessage]:
        """Convert the ONNX export's float32 graph, the one the ONNX format wrote (or writes now) to the cache."""
        ov = require_openvino()
        source = job.out / SOURCE
        try:
            seen = _source(job, source)
            (job.out / FILE).parent.mkdir(exist_ok=True)
            ov.save_model(ov.convert_model(str(source)), str(job.out / FILE), compress_to_fp16=False)
        finally:
            source.unlink(missing_ok=True)
        return seen

    def load(self, root: Path, manifest: Manifest, target: Target) -> Backend:
        return compiled(root / FILE, manifest.max_length, threads=target.threads, workers=target.workers,
                        snap=target.snap)  # fmt: skip

    def refine(self, job: ExportJob, entry: FormatEntry, refiner: Refiner) -> dict[str, Any]:
        if job.options.dtype != "int8":
            return {}
        return self._compress(job, entry, refiner)

    def _compress(self, job: ExportJob, entry: FormatEntry, refiner: Refiner) -> dict[str, Any]:
        """Replace the IR with its int8 weight compression, gated on agreement with float32 on real text
        (int8.search over the ONNX graph's module groups, as the ONNX format's int8; OpenVINO keeps the ONNX node
        names). Then measure where it lands and how much faster it runs."""
        path = job.out / FILE
        source = job.out / SOURCE
        _source(job, source)  # the graph the IR was converted from: it records each node's module path
        try:
            compressible = weighted(path)
            groups = {
                g: kept for g, nodes in onnx_format.layer_groups(source).items()
                if (kept := [n for n in nodes if n in compressible])
            }  # fmt: skip
        finally:
            source.unlink(missing_ok=True)
        written: list[Path] = []

        def trial(keep: tuple[str, ...]) -> tuple[Any, Path]:
            out = path.with_name(f"model.int8.{len(written)}.xml")
            written.append(out)
            compress(path, out, exclude=[n for g in keep for n in groups[g]])
            refiner.use(compiled(out, job.max_length, threads=None, workers=1, snap=job.buckets))
            return refiner.agreement(), out

        def discard(out: Path) -> None:
            out.unlink(missing_ok=True)
            out.with_suffix(".bin").unlink(missing_ok=True)

        gated = int8.search(list(groups), trial, discard)
        float32 = compiled(path, job.max_length, threads=None, workers=1, snap=job.buckets)
        quantized = compiled(gated.graph, job.max_length, threads=None, workers=1, snap=job.buckets)
        pace = int8.speedup(job, float32, quantized)
        del float32
        gated.graph.with_suffix(".bin").replace(path.with_suffix(".bin"))  # compiled: the files are not read again
        gated.graph.replace(path)
        refiner.use(quantized)
        method = (
            "nncf.compress_weights (INT8_ASYM): 8-bit weights per output channel (uint8 with a zero point), "
            "decompressed in OpenVINO's kernels; activations in float32"
        )
        return int8.finish(self.name, job, entry, refiner, gated, method=method, pace=pace, measured_on="OpenVINO")
