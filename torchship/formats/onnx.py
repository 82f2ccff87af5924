"""ONNX: ``torch.onnx.export`` (dynamo exporter, opset 18) with dynamic batch and sequence, run by ONNX Runtime.

ONNX Runtime's transformer fusion (attention, LayerNorm, GELU) is applied only where it keeps parity:
the exporter validates the fused graph and falls back to the plain one, recording why.
"""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import statistics
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import OptionsError
from . import MAX_BATCH, Backend, ExportJob, Format, Refiner, Target, register

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
        model.save_model_to_file(str(out))
    return None


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
    """The nodes dynamic quantization would rewrite, grouped by the module they were exported from, in graph
    order: each encoder layer (``model.encoder.layer.3``), else the module holding the node's own module (the
    embeddings, the pooler, the head). The dynamo exporter records each node's module path
    (``pkg.torch.onnx.name_scopes``, ending with the node's own name); a node without one (made by a fusion) is
    a group of its own."""
    import onnx
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    groups: dict[str, list[str]] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.op_type not in IntegerOpsRegistry:
            continue
        props = {p.key: p.value for p in node.metadata_props}
        try:
            scopes = [s for s in ast.literal_eval(props.get("pkg.torch.onnx.name_scopes", "[]"))[:-1] if s]
        except (ValueError, SyntaxError):
            scopes = []
        numbered = [s for s in scopes if s.rsplit(".", 1)[-1].isdigit()]
        key = numbered[-1] if numbered else scopes[-2] if len(scopes) > 2 else scopes[-1] if scopes else node.name
        groups.setdefault(key, []).append(node.name)
    return groups


INT8_PAYS = 1.1  # int8 must run at least this much faster than float32 to be worth its loss of precision


def _speedup(job: ExportJob, float32: Backend, int8: Backend) -> tuple[str, float]:
    """float32's median time over int8's at batch 8 and the longest bucket up to 128 (a corpus's typical shape),
    on the threads the export runs with."""
    seq = max([b for b in job.buckets if b <= 128] or job.buckets[:1])
    generator = torch.Generator().manual_seed(0)
    full = {
        "input_ids": torch.randint(1000, 2000, (8, seq), generator=generator),
        "attention_mask": torch.ones(8, seq, dtype=torch.long),
        "token_type_ids": torch.zeros(8, seq, dtype=torch.long),
    }
    inputs = tuple(full[name] for name in job.input_names)
    medians = []
    for backend in (float32, int8):
        backend.run(seq, inputs)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            backend.run(seq, inputs)
            times.append(time.perf_counter() - start)
        medians.append(statistics.median(times))
    return f"8x{seq}", medians[0] / medians[1]


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

    return Backend("onnx", max_length, None, run, snap=snap)


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
        return export_graph(
            job.wrapper, job.dynamic_example(), job.input_names, job.output_names, job.max_length, job.out / FILE
        )

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
        """Replace model.onnx with its int8 dynamic quantization, gated on agreement with float32 on real text;
        when the gate fails, keep the most sensitive layers in float32 until it holds. Then measure how far it
        lands from float32 and how much faster it runs.

        The tolerance is measured on one sample of parity cases (seed 1); the parity check that follows uses
        another (seed 0), so a graph that only fits the sample it was measured on still fails.
        """
        path = job.out / FILE
        kept, agreed, whole, sensitivity, quantized = _gate(job, path, refiner)
        float32 = session(path, job.max_length, threads=None, snap=job.buckets)
        int8 = session(quantized, job.max_length, threads=None, snap=job.buckets)
        shape, speedup = _speedup(job, float32, int8)
        del float32
        quantized.replace(path)  # the int8 session holds the graph in memory: the rename does not touch it
        refiner.use(int8)
        tolerance = refiner.measure()
        cosine = refiner.cosine()
        report = refiner.check(tolerance=tolerance)
        report.raise_on_failure(self.name)
        entry.parity = report.summary()
        pays = (
            f"int8 pays on this CPU: {speedup:.2f}x float32"
            if speedup >= INT8_PAYS
            else f"int8 does not pay on this CPU ({speedup:.2f}x float32, under {INT8_PAYS}x): export float32"
        )
        held = f"; {agreed.metric} {agreed.worst:.5f} >= {agreed.minimum} on real text"
        if kept:
            held += f" with {len(kept)} of {len(sensitivity)} layer groups kept in float32 ({', '.join(kept)})"
        return {
            "notes": {"int8": pays + held},
            "precision": {
                "dtype": "int8",
                "device": "cpu",
                "method": "onnxruntime.quantization.quantize_dynamic: int8 weights per output channel, "
                "activations quantized per tensor at run time",
                "reference": "the eager model in float32 on cpu",
                "tolerance": tolerance,
                "min_cosine": cosine,
                "gate": {**agreed.summary(), "quantized_whole": round(whole.worst, 7)},
                "float32_layers": kept,
                "sensitivity": sensitivity,
                "speedup_vs_float32": {"shape": shape, "ratio": round(speedup, 3)},
                "measured_on": "parity cases drawn with seed 1; validated on those with seed 0; speed: ONNX "
                "Runtime float32 against int8 at one shape, each the median of 5 runs after a warm-up, at export",
                "rule": f"each output's max abs diff from the float32 reference <= atol ({report.atol:g}) + 1.5 x "
                "tolerance",
            },
        }


def _gate(job: ExportJob, path: Path, refiner: Refiner) -> tuple[list[str], Any, Any, dict[str, float], Path]:
    """Quantize ``path`` whole; when its agreement with float32 is under the gate, measure each layer group's
    sensitivity (that group alone in int8) and find the fewest most sensitive groups whose staying in float32
    holds the gate (a bisection over that order). Returns (groups kept in float32, their Agreement, the
    Agreement quantized whole, each group's sensitivity (empty when none was needed), the quantized graph's
    path)."""
    groups = layer_groups(path)
    trials: dict[tuple[str, ...], tuple[Path, Any]] = {}
    written: list[Path] = []

    def trial(keep: Sequence[str]) -> Any:
        out = job.out / f"model.int8.{len(written)}.onnx.tmp"
        written.append(out)
        quantize(path, out, exclude=[n for g in keep for n in groups[g]])
        refiner.use(session(out, job.max_length, threads=None, snap=job.buckets))
        trials[tuple(keep)] = (out, refiner.agreement())
        return trials[tuple(keep)][1]

    sensitivity: dict[str, float] = {}
    chosen: tuple[str, ...] = ()
    if not trial(()).holds():
        for g in groups:
            sensitivity[g] = round(trial([h for h in groups if h != g]).worst, 7)
        order = sorted(groups, key=lambda g: sensitivity[g])  # the group that alone moves the results most first
        lo, hi, best = 1, len(order) - 1, None
        while lo <= hi:
            k = (lo + hi) // 2
            if trial(order[:k]).holds():
                best, hi = k, k - 1
            else:
                lo = k + 1
        if best is None:
            whole = trials[()][1]
            for out in written:
                out.unlink(missing_ok=True)
            raise OptionsError(
                f"int8 cannot hold the gate: {whole.metric} to float32 on real text is {whole.worst:.4f} quantized "
                f"whole, under {whole.minimum}, and still under it with all but one of {len(groups)} layer groups "
                "kept in float32; export float32 (--dtype float32), or lower the gate (--min-cosine / --min-top1)"
            )
        chosen = tuple(order[:best])
    quantized, agreed = trials[chosen]
    for out in written:
        if out != quantized:
            out.unlink(missing_ok=True)
    return list(chosen), agreed, trials[()][1], sensitivity, quantized
