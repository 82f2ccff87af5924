"""ONNX: ``torch.onnx.export`` (dynamo exporter, opset 18) with dynamic batch and sequence, run by ONNX Runtime.

ONNX Runtime's transformer fusion (attention, LayerNorm, GELU) is applied only where it keeps parity:
the exporter validates the fused graph and falls back to the plain one, recording why.
"""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import OptionsError
from . import MAX_BATCH, Backend, ExportJob, Format, Refiner, Target, int8, register

if TYPE_CHECKING:
    from ..artifact import FormatEntry, Manifest
    from ..options import ExportOptions

FILE = "model.onnx"
OPSET = 18
INSTALL = "ONNX support needs the onnx extra: pip install 'torchship[onnx]'"


def require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise OptionsError(f"format 'onnx' needs onnxruntime, which is not installed. {INSTALL}") from e
    return onnxruntime


def export_graph(
    wrapper: torch.nn.Module, example: tuple[torch.Tensor, ...], input_names: tuple[str, ...],
    output_names: tuple[str, ...], max_length: int, path: Path,
) -> list[warnings.WarningMessage]:  # fmt: skip
    """Export ``wrapper`` to a self-contained ``.onnx`` file at ``path``."""
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError as e:
        raise OptionsError(f"format 'onnx' needs onnx and onnxscript, which are not installed. {INSTALL}") from e
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    seq = torch.export.Dim("seq", min=2, max=max_length)
    dynamic = {name: {0: batch, 1: seq} for name in input_names}
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(record=True) as seen,
            contextlib.redirect_stdout(io.StringIO()),
            torch.no_grad(),
        ):
            warnings.simplefilter("always")
            torch.onnx.export(
                wrapper.eval(), example, str(path), input_names=list(input_names), output_names=list(output_names),
                dynamic_shapes=dynamic, opset_version=OPSET, dynamo=True, external_data=False, verbose=False,
            )  # fmt: skip
    finally:
        quiet.setLevel(level)
    return list(seen)


def cached_graph(job: ExportJob, path: Path) -> list[warnings.WarningMessage]:
    """Write the exported float32 graph of ``job`` to ``path``: exported now, or the one an export of the same key
    wrote (``job.reuse``; the OpenVINO format converts the same file)."""

    def make(out: Path) -> list[warnings.WarningMessage]:
        return export_graph(job.wrapper, job.dynamic_example(), job.input_names, job.output_names, job.max_length, out)

    return job.reuse("onnx", path, make)


def fuse(
    path: Path, out: Path, *, model_type: str, ort_type: str | None, num_heads: int, hidden_size: int
) -> str | None:
    """Write ONNX Runtime's transformer-fused graph of ``path`` to ``out``; return why not, or None."""
    if not ort_type:
        return f"ONNX Runtime has no transformer fusion for {model_type}"
    try:
        from onnxruntime.transformers.optimizer import optimize_model
    except ImportError as e:
        return f"onnxruntime.transformers is unavailable ({e})"
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
        try:
            model = optimize_model(str(path), model_type=ort_type, num_heads=num_heads, hidden_size=hidden_size)
        except Exception as e:  # noqa: BLE001  ORT's optimizer raises anything; fusion is optional, record why
            return f"fusion failed: {type(e).__name__}: {e}"
        _keep_scopes(path, model.model)
        model.save_model_to_file(str(out))
    return None


def _keep_scopes(path: Path, fused: Any) -> None:
    """Give the nodes of ``fused`` (an ONNX ModelProto) that the optimizer rewrote without their metadata the
    metadata of the node of the same name in ``path``: the module path the exporter recorded, which int8's
    ``layer_groups`` reads. The optimizer drops it from every node it writes out again, so without this the
    gate's groups and the manifest's ``float32_layers`` were node names (``node_MatMul_94``), not modules."""
    import onnx

    recorded = {n.name: n.metadata_props for n in onnx.load(str(path), load_external_data=False).graph.node}
    for node in fused.graph.node:
        if not node.metadata_props and node.name in recorded:
            node.metadata_props.extend(recorded[node.name])


def quantize(path: Path, out: Path, *, exclude: Sequence[str] = ()) -> None:
    """Write ONNX Runtime's dynamic int8 quantization of ``path`` to ``out``: int8 weights per output channel,
    activations quantized per tensor at run time; the nodes named in ``exclude`` stay in float32. Per-tensor
    weights lost too much here (all-MiniLM-L6-v2 embeddings: cosine 0.89 at worst over 200 corpus texts, against
    0.987 per channel)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # "Please consider to run pre-processing before quantization"
        try:
            quantize_dynamic(
                str(path), str(out), weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=list(exclude)
            )
        finally:
            root.setLevel(level)


def layer_groups(path: Path) -> dict[str, list[str]]:
    """The nodes dynamic quantization would rewrite, grouped by the module that owns them, in graph order: a
    linear layer (``model.encoder.layer.3.intermediate.dense``), the attention products of a layer, an embedding
    table. The dynamo exporter records each node's module path (``pkg.torch.onnx.name_scopes``, ending with the
    node's own name; fuse keeps it); a node without one (made by a fusion) is a group of its own. Transposes,
    which int8 only passes through, and Gathers from activations, which it leaves alone, are not groups.

    Groups are modules, not whole encoder layers: all-MiniLM-L6-v2's gate holds with 7 of 24 linear layers in
    float32 (the FFN's, in the first layers), where by layer it kept 4 of 6 layers; the corpus ran 1.49x faster
    than float32 against 1.19x (two runs), at the price of a longer search (one trial per group)."""
    import onnx
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    groups: dict[str, list[str]] = {}
    for node in graph.node:
        if node.op_type not in IntegerOpsRegistry or node.op_type == "Transpose":
            continue
        if node.op_type == "Gather" and node.input[0] not in weights:
            continue
        props = {p.key: p.value for p in node.metadata_props}
        try:
            scopes = [s for s in ast.literal_eval(props.get("pkg.torch.onnx.name_scopes", "[]"))[:-1] if s]
        except (ValueError, SyntaxError):
            scopes = []
        groups.setdefault(scopes[-1] if scopes else node.name, []).append(node.name)
    return groups


def session(path: Path, max_length: int, *, threads: int | None, snap: list[int]) -> Backend:
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]

    def run(seq: int, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        feed = {name: np.ascontiguousarray(x.numpy()) for name, x in zip(names, inputs, strict=True)}
        return tuple(torch.from_numpy(o) for o in sess.run(None, feed))

    return Backend("onnx", max_length, None, run, snap=snap, torch_ops=False)


@register
class ONNX(Format):
    name = "onnx"
    file = FILE
    static = False
    dtypes = ("float32", "int8")
    devices = ("cpu",)

    def unsupported(self, options: ExportOptions) -> str:
        return (
            f"format 'onnx' is exported in float32 or int8 for CPU only (asked: {options.dtype} on "
            f"{options.device}); use torchscript or aoti for float16, bfloat16 and CUDA"
        )

    def export(self, job: ExportJob) -> list[warnings.WarningMessage]:
        """The exported float32 graph (``cached_graph``): fusion and int8 quantization start from it."""
        return cached_graph(job, job.out / FILE)

    def load(self, root: Path, manifest: Manifest, target: Target) -> Backend:
        return session(root / FILE, manifest.max_length, threads=target.threads, snap=target.snap)

    def refine(self, job: ExportJob, entry: FormatEntry, refiner: Refiner) -> dict[str, Any]:
        """ONNX Runtime's transformer fusion where it keeps parity; then int8 quantization when asked for."""
        out: dict[str, Any] = {"notes": {"onnx_fusion": self._fuse(job, entry, refiner)}}
        if job.options.dtype == "int8":
            quantized = self._quantize(job, entry, refiner)
            out["notes"].update(quantized["notes"])
            out["precision"] = quantized["precision"]
        return out

    def _fuse(self, job: ExportJob, entry: FormatEntry, refiner: Refiner) -> str:
        path, fused = job.out / FILE, job.out / "model.fused.onnx.tmp"
        why = fuse(path, fused, model_type=job.model_type, ort_type=job.ort_fusion, num_heads=job.num_heads,
                   hidden_size=job.hidden_size)  # fmt: skip
        if why is not None:
            return f"not fused: {why}"
        refiner.use(session(fused, job.max_length, threads=None, snap=job.buckets))
        report = refiner.check()
        if report.failures():
            refiner.use(session(path, job.max_length, threads=None, snap=job.buckets))
            fused.unlink()
            return f"not fused: the fused graph drifts to {max(report.failures().values()):.2e} > atol {report.atol:g}"
        fused.replace(path)
        refiner.use(session(path, job.max_length, threads=None, snap=job.buckets))
        entry.parity = report.summary()
        entry.fusion = "onnxruntime.transformers"
        return "fused with onnxruntime.transformers.optimizer; parity kept"

    def _quantize(self, job: ExportJob, entry: FormatEntry, refiner: Refiner) -> dict[str, Any]:
        """Replace model.onnx with its int8 dynamic quantization, gated on agreement with float32 on real text
        (int8.search: the most sensitive layer groups stay in float32 until the gate holds). Then measure how far
        it lands from float32 and how much faster it runs.

        The tolerance is measured on one sample of parity cases (seed 1); the parity check that follows uses
        another (seed 0), so a graph that only fits the sample it was measured on still fails.
        """
        path = job.out / FILE
        groups = layer_groups(path)
        written: list[Path] = []

        def trial(keep: tuple[str, ...]) -> tuple[Any, Path]:
            out = job.out / f"model.int8.{len(written)}.onnx.tmp"
            written.append(out)
            quantize(path, out, exclude=[n for g in keep for n in groups[g]])
            refiner.use(session(out, job.max_length, threads=None, snap=job.buckets))
            return refiner.agreement(), out

        def probe(keep: tuple[str, ...]) -> float:
            out = job.out / "model.int8.probe.onnx.tmp"
            try:
                quantize(path, out, exclude=[n for g in keep for n in groups[g]])
                refiner.use(session(out, job.max_length, threads=None, snap=job.buckets))
                return float(refiner.agreement(sample=True).worst)
            finally:
                out.unlink(missing_ok=True)

        gated = int8.search(list(groups), trial, lambda out: out.unlink(missing_ok=True), probe)
        float32 = session(path, job.max_length, threads=None, snap=job.buckets)
        quantized = session(gated.graph, job.max_length, threads=None, snap=job.buckets)
        pace = int8.speedup(job, float32, quantized, refiner.batches())
        del float32
        gated.graph.replace(path)  # the int8 session holds the graph in memory: the rename does not touch it
        refiner.use(quantized)
        method = (
            "onnxruntime.quantization.quantize_dynamic: int8 weights per output channel, activations quantized "
            "per tensor at run time"
        )
        return int8.finish(self.name, job, entry, refiner, gated, method=method, pace=pace, measured_on="ONNX Runtime")
