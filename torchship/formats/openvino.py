"""OpenVINO: the ONNX export's graph (the same file, shared through the export cache) converted by
``openvino.convert_model`` to OpenVINO IR, ``openvino/model.xml`` with its weights in ``openvino/model.bin``, and run
by OpenVINO's CPU plugin in float32 (``INFERENCE_PRECISION_HINT`` f32: left to itself the plugin may run bfloat16
on CPUs that have it). Dynamic batch and sequence, padding-free dense layers like the ONNX graph it comes from.

Why a format of its own: the plugin's oneDNN kernels and its own fusions (attention, LayerNorm, GELU) ran the
padding-free graph of all-MiniLM-L6-v2 about 7 % faster than ONNX Runtime on the corpus and 7-11 % faster at
1x128 and 8x128 (an AVX-512 VNNI machine), and NNCF's int8 is both faster and closer to float32 than ONNX
Runtime's dynamic int8 (README, "int8").

``--dtype int8`` is NNCF's, in one of two schemes (``--int8-scheme``), gated like every int8 export
(formats/int8.py): the most sensitive layers, by module, stay in float32 until the agreement with float32 on real
text holds.
- ``weights`` (the default): ``nncf.compress_weights`` INT8_ASYM, 8-bit weights per output channel; the CPU
  plugin quantizes those layers' activations to 8 bits as they run, per group of values of each token (dynamic
  quantization), and the gate picks the group size (``GROUPS``). all-MiniLM-L6-v2: quantized whole at groups of
  128, min cosine 0.9964 on the corpus, about 2x float32 (one machine, AVX-512 VNNI); at the plugin's default of
  32, 0.9984 and 1.7x.
- ``static``: ``nncf.quantize`` (model type TRANSFORMER): SmoothQuant, then 8-bit weights and 8-bit activations
  per tensor whose ranges are set on calibration text the gate never judges: prose, and text unlike prose
  (tables, code, ids: validate.stress_texts). A trial does not calibrate again: ``keep_float`` takes a layer's
  FakeQuantize out of the one quantized model. Calibrated on prose alone, it clipped what prose never reaches:
  gated at 0.9958 on the corpus' odd half, the even half's two ASCII tables fell to 0.992 (layer 2's attention
  output, harmless on prose, took them there). With the unusual text in its calibration, the same gate kept the
  same 4 of 33 layer groups in float32, and the whole corpus held 0.9965.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import logging
import threading
import warnings
from collections.abc import Iterator
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
STATIC = (
    "nncf.quantize (model type TRANSFORMER): SmoothQuant, 8-bit weights per output channel and 8-bit activations "
    "per tensor, their ranges set on 128 prose texts the gate does not judge and 64 texts unlike prose "
    "(validate.calibration_texts)"
)
WEIGHTS = "nncf.compress_weights (INT8_ASYM): 8-bit weights per output channel (uint8 with a zero point); activations "
DYNAMIC = (
    "quantized to 8 bits as they run, per group of {group} values of a token (the CPU plugin's dynamic "
    "quantization, DYNAMIC_QUANTIZATION_GROUP_SIZE, set in the IR's runtime_options)"
)
UNGROUPED = "in float32 (no dynamic quantization group size of {groups} divides the hidden size, {hidden})"
# dynamic quantization group sizes, largest (fastest) first: the gate takes the first that divides the hidden size
# and holds quantized whole. all-MiniLM-L6-v2's corpus, one process, 4 interleaved passes: 32 (the plugin's
# default) 1.86-1.89 s at min cosine 0.99838, 128 1.57-1.66 s at 0.99639; 64 0.99770; off, 3.74 s (float32's
# speed). A whole token (384) ran 1.51-1.52 s but reached 0.99182 on the corpus after holding the docstring gate
# (0.99533), so it is not tried: like static int8, it holds worse beyond the gate's texts. A group must divide the
# hidden size, or the plugin leaves that layer's activations in float32 (tested on a hidden size of 32).
GROUPS = (128, 64, 32, 16)
RUNTIME_OPTION = ["runtime_options", "DYNAMIC_QUANTIZATION_GROUP_SIZE"]
# the plugin's inference precision per artifact dtype, set wherever torchship compiles an IR (and in Triton's
# config): left to itself the plugin runs bf16 on CPUs that have it (AMX), outside a float32 artifact's parity
PRECISIONS = {"float32": "f32", "int8": "f32", "bfloat16": "bf16"}
SOURCE = "openvino.source.onnx"
# what static int8 quantizes the inputs of: linear layers, the attention products (which OpenVINO fuses into one
# ScaledDotProductAttention, named as the ONNX graph's second product) and the embedding tables
QUANTIZED = ("MatMul", "ScaledDotProductAttention", "Gather")


def require_openvino() -> Any:
    try:
        import openvino
    except ImportError as e:
        raise OptionsError(f"format 'openvino' needs openvino, which is not installed: {INSTALL}") from e
    return openvino


def compiled(
    path: Path | Any,
    max_length: int,
    *,
    threads: int | None,
    workers: int,
    snap: list[int],
    group: int | None = None,
    precision: str = "f32",
) -> Backend:
    """``path`` (or an ``openvino.Model``) compiled for the CPU plugin. One stream per worker (``workers``
    micro-batches run at once, each on ``threads`` threads), and one infer request per calling thread: a request's
    buffers are its own. ``group``: the dynamic quantization group size of weight-compressed layers, when not the
    one the IR's runtime_options set (or the plugin's default). ``precision``: the inference precision, f32 or
    bf16 (``PRECISIONS``)."""
    ov = require_openvino()
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
    if workers > 1:
        config = {"INFERENCE_PRECISION_HINT": precision, "NUM_STREAMS": workers}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads * max(workers, 1)
    if group is not None:
        config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = group
    model = ov.Core().compile_model(str(path) if isinstance(path, Path) else path, "CPU", config)
    names = [i.get_any_name() for i in model.inputs]
    outputs = range(len(model.outputs))
    local = threading.local()

    def run(seq: int, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        request = getattr(local, "request", None)
        if request is None:
            request = local.request = model.create_infer_request()
        feed = {name: np.ascontiguousarray(x.numpy()) for name, x in zip(names, inputs, strict=True)}
        # the inputs are read in place (they outlive the call), and the GIL is released while it runs; outputs are
        # copied out of the request's buffers, which its next call reuses
        request.infer(feed, share_inputs=True, share_outputs=True)
        return tuple(torch.from_numpy(request.get_output_tensor(i).data.copy()) for i in outputs)

    return Backend("openvino", max_length, None, run, snap=snap, torch_ops=False)


def bfloat16_pace(
    job: ExportJob, model: Any = None, batches: list[dict[str, Any]] | None = None
) -> tuple[tuple[str, float] | None, str]:  # fmt: skip
    """Whether this CPU runs the IR (``model``, or the export's) in bfloat16 natively (AMX or AVX512-BF16: the
    plugin's optimization capabilities list BF16; elsewhere a bf16 hint runs float32), and if so how fast against
    float32 on ``batches`` as int8 is timed (int8.speedup): ``((shape, ratio) or None, a note)``."""
    if "BF16" not in require_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        return None, (
            "this CPU has no native bfloat16 (AMX or AVX512-BF16): OpenVINO runs this IR in float32 here, and in "
            "bfloat16 where the CPU has it"
        )
    model = _read(job.out / FILE) if model is None else model
    float32 = compiled(model, job.max_length, threads=None, workers=1, snap=job.buckets)
    bf16 = compiled(model, job.max_length, threads=None, workers=1, snap=job.buckets, precision="bf16")
    shape, ratio = int8.speedup(job, float32, bf16, batches)
    verdict = "pays" if ratio >= int8.PAYS else f"does not pay (under {int8.PAYS}x): export float32"
    return (shape, ratio), f"bfloat16 is native on this CPU and {verdict}: {ratio:.2f}x float32 on {shape}"


def _read(path: Path) -> Any:
    return require_openvino().Core().read_model(str(path))


def _names(model: Any, *kinds: str) -> dict[str, Any]:
    return {op.get_friendly_name(): op for op in model.get_ordered_ops() if op.get_type_name() in kinds}


def _through(node: Any, kind: str) -> Any:
    """``node``, or the node it converts from when it is a ``kind`` (Convert: a constant stored in another type)."""
    while node.get_type_name() == kind:
        node = node.input_value(0).get_node()
    return node


def weighted(model: Any) -> set[str]:
    """The names of the MatMul and Gather nodes of ``model`` that take a constant (weights or an embedding
    table): what weight compression compresses."""
    names = set()
    for kind in ("MatMul", "Gather"):
        for name, op in _names(model, kind).items():
            sources = [_through(i.get_source_output().get_node(), "Convert") for i in op.inputs()]
            if any(s.get_type_name() == "Constant" and len(s.get_output_shape(0)) >= 2 for s in sources):
                names.add(name)
    return names


def quantize_static(model: Any, batches: list[dict[str, torch.Tensor]]) -> Any:
    """NNCF's static int8 (``nncf.quantize``, model type TRANSFORMER: SmoothQuant, then 8-bit weights per output
    channel and 8-bit activations per tensor, their ranges set on ``batches``) of the float32 IR ``model``. Without
    bias correction, which would change the biases of layers that ``keep_float`` may restore to float32 (its
    effect on all-MiniLM-L6-v2's worst cosine on the corpus: 0.9587 with, 0.9581 without, one calibration)."""
    nncf = _nncf()
    data = [{k: v.numpy() for k, v in batch.items()} for batch in batches]
    with _quiet(nncf):
        return nncf.quantize(
            model, nncf.Dataset(data), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(data),
            advanced_parameters=nncf.AdvancedQuantizationParameters(disable_bias_correction=True),
        )  # fmt: skip


def compress_weights(model: Any, *, exclude: list[str]) -> Any:
    """NNCF's weight-only int8 (``nncf.compress_weights``, INT8_ASYM) of the float32 IR ``model``; the nodes in
    ``exclude`` keep float32 weights."""
    nncf = _nncf()
    with _quiet(nncf):
        ignored = nncf.IgnoredScope(names=exclude, validate=False)
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM, ignored_scope=ignored)


def _dequantized(node: Any) -> bool:
    """Whether ``node`` is NNCF's int8 weights read back: Multiply(Convert(int8 constant), scale), "…/fq_weights_"."""
    return bool(node.get_type_name() == "Multiply" and "/fq_weights_" in node.get_friendly_name())


def quantized_nodes(model: Any) -> set[str]:
    """The names of the nodes of the statically quantized ``model`` that take an int8 input: activations through a
    FakeQuantize, or int8 weights (linear layers, attention, embedding tables)."""

    def int8_input(node: Any) -> bool:
        return _dequantized(node) or node.get_type_name() == "FakeQuantize"

    ops = _names(model, *QUANTIZED)
    return {name for name, op in ops.items() if any(int8_input(v.get_node()) for v in op.input_values())}


def keep_float(quantized: Any, float32: Any, keep: list[str]) -> Any:
    """A copy of the statically quantized ``quantized`` whose nodes named in ``keep`` run in float32 again: each
    takes its activations from before their FakeQuantize (and before SmoothQuant's scaling, which the quantized
    weights absorbed) and the float32 weights of the same node in ``float32``. The other nodes keep the ranges
    NNCF set on the float32 model, so a trial costs a compile, not another calibration."""
    ov = require_openvino()
    from openvino import opset13

    model = quantized.clone()
    ops, originals = _names(model, *QUANTIZED), _names(float32, *QUANTIZED)
    for name in keep:
        op = ops[name]
        for i, value in enumerate(op.input_values()):
            source = value.get_node()
            if source.get_type_name() == "FakeQuantize":
                before = source.input_value(0)
                if before.get_node().get_friendly_name().endswith("nncf_smooth_quant"):
                    before = before.get_node().input_value(0)
                op.input(i).replace_source_output(before)
            elif _dequantized(source):
                original = _through(originals[name].input_value(i).get_node(), "Convert")
                op.input(i).replace_source_output(opset13.constant(original.get_data(), ov.Type.f32).output(0))
    model.validate_nodes_and_infer_types()
    return model


def _nncf() -> Any:
    try:
        import nncf
    except ImportError as e:
        raise OptionsError(f"int8 for format 'openvino' needs nncf, which is not installed: {INSTALL}") from e
    return nncf


@contextlib.contextmanager
def _quiet(nncf: Any) -> Iterator[None]:
    with (
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        nncf.set_log_level(logging.ERROR)
        yield


@register
class OpenVINO(Format):
    name = "openvino"
    file = FILE
    static = False
    dtypes = ("float32", "bfloat16", "int8")
    devices = ("cpu",)
    int8_schemes = ("weights", "static")
    triton_platform = "openvino"  # a backend, not a platform, in Triton's config: triton.openvino_config

    def unsupported(self, options: Any) -> str:
        return (
            f"format 'openvino' is exported in float32, bfloat16 or int8 for CPU only (asked: {options.dtype} on "
            f"{options.device}); use torchscript or aoti for float16 and CUDA"
        )

    def check(self, options: Any) -> None:
        super().check(options)
        require_openvino()  # before anything is written
        if options.dtype == "int8":
            _nncf()

    def export(self, job: ExportJob) -> list[warnings.WarningMessage]:
        """Convert the ONNX export's float32 graph, the one the ONNX format wrote (or writes now) to the cache.

        bfloat16: the graph of the bfloat16 model's weights held in float32 (exact: every bfloat16 is a float32),
        which the plugin runs in bfloat16 (``INFERENCE_PRECISION_HINT`` bf16, set where it is compiled: the CPU
        plugin does not take that hint from an IR's runtime_options): its kernels take float32 weights and convert
        them as they pack them, and keep what needs float32 (softmax, LayerNorm statistics, accumulation) in
        float32."""
        ov = require_openvino()
        source = job.out / SOURCE
        if job.options.dtype == "bfloat16":
            job = dataclasses.replace(job, wrapper=copy.deepcopy(job.wrapper).float())
        try:
            seen = onnx_format.cached_graph(job, source)
            (job.out / FILE).parent.mkdir(exist_ok=True)
            ov.save_model(ov.convert_model(str(source)), str(job.out / FILE), compress_to_fp16=False)
        finally:
            source.unlink(missing_ok=True)
        return seen

    def load(self, root: Path, manifest: Manifest, target: Target) -> Backend:
        return compiled(root / FILE, manifest.max_length, threads=target.threads, workers=target.workers,
                        snap=target.snap, precision=PRECISIONS[manifest.dtype])  # fmt: skip

    def refine(self, job: ExportJob, entry: FormatEntry, refiner: Refiner) -> dict[str, Any]:
        if job.options.dtype == "bfloat16":
            return {"notes": {"bfloat16": bfloat16_pace(job, batches=refiner.batches())[1]}}
        if job.options.dtype != "int8":
            return {}
        return self._compress(job, entry, refiner)

    def _compress(self, job: ExportJob, entry: FormatEntry, refiner: Refiner) -> dict[str, Any]:
        """Replace the IR with its int8 in the export's scheme (``weights`` unless ``static`` is asked for), gated
        on agreement with float32 on real text (int8.search over the ONNX graph's module groups, as the ONNX
        format's int8; OpenVINO keeps the ONNX node names). Then measure where it lands and how fast it runs.

        ``weights`` first picks the dynamic quantization group size: the largest of ``GROUPS`` that divides the
        hidden size and holds the gate quantized whole; when none does, the smallest, and layers are kept in
        float32 at that size (when no size divides it, the plugin's default, which then leaves activations in
        float32). The IR carries the size (``RUNTIME_OPTION``), so OpenVINO applies it wherever the IR is
        compiled."""
        ov = require_openvino()
        path = job.out / FILE
        source = job.out / SOURCE
        onnx_format.cached_graph(job, source)  # the graph the IR was converted from: its nodes' module paths
        try:
            modules = onnx_format.layer_groups(source)
        finally:
            source.unlink(missing_ok=True)
        float32 = _read(path)
        sizes: list[int | None] = [None]  # static int8: no weight-compressed layers to quantize dynamically
        if (job.options.int8_scheme or self.int8_schemes[0]) == "static":
            static = quantize_static(float32, refiner.calibration())
            nodes, method = quantized_nodes(static), STATIC

            def make(keep: list[str]) -> Any:
                return keep_float(static, float32, keep)
        else:
            nodes, method = weighted(float32), WEIGHTS
            sizes = [g for g in GROUPS if job.hidden_size % g == 0] or [None]

            def make(keep: list[str]) -> Any:
                return compress_weights(_read(path), exclude=keep)

        groups = {g: kept for g, names in modules.items() if (kept := [n for n in names if n in nodes])}

        def agreement(keep: tuple[str, ...], size: int | None, *, sample: bool = False) -> Any:
            model = make([n for g in keep for n in groups[g]])
            refiner.use(compiled(model, job.max_length, threads=None, workers=1, snap=job.buckets, group=size))
            return refiner.agreement(sample=sample)  # a trial's model is not kept: made again once chosen (memory)

        whole: dict[int | None, Any] = {}
        for size in sizes:
            whole[size] = agreement((), size)
            if whole[size].holds():
                break

        def trial(keep: tuple[str, ...]) -> tuple[Any, tuple[str, ...]]:
            return (whole[size] if not keep else agreement(keep, size)), keep

        def probe(keep: tuple[str, ...]) -> float:
            return float(agreement(keep, size, sample=True).worst)

        gated = int8.search(list(groups), trial, lambda keep: None, probe)
        model = make([n for g in gated.graph for n in groups[g]])
        if method == WEIGHTS:
            method += DYNAMIC.format(group=size) if size else UNGROUPED.format(groups=GROUPS, hidden=job.hidden_size)
        if size is not None:
            model.set_rt_info(str(size), RUNTIME_OPTION)
        baseline = compiled(float32, job.max_length, threads=None, workers=1, snap=job.buckets)
        chosen = compiled(model, job.max_length, threads=None, workers=1, snap=job.buckets)
        pace = int8.speedup(job, baseline, chosen, refiner.batches())
        del baseline
        # written beside and renamed over: the float32 IR is memory-mapped (read_model), so it is never overwritten
        written = path.with_name("model.int8.xml")
        ov.save_model(model, str(written), compress_to_fp16=False)
        written.with_suffix(".bin").replace(path.with_suffix(".bin"))
        written.replace(path)
        refiner.use(chosen)
        result = int8.finish(self.name, job, entry, refiner, gated, method=method, pace=pace, measured_on="OpenVINO")
        bf16, said = bfloat16_pace(job, float32, refiner.batches())
        if bf16 is not None:
            result["precision"]["bfloat16_vs_float32"] = {"shape": bf16[0], "ratio": round(bf16[1], 3)}
            if bf16[1] > pace[1]:
                result["notes"]["int8"] += (
                    f"; bfloat16 is faster here ({bf16[1]:.2f}x float32, native on this CPU) and closer to "
                    "float32: export --dtype bfloat16"
                )
        if size is not None:
            result["precision"]["dynamic_quantization"] = {
                "group_size": size,
                "quantized_whole": {str(g): round(a.worst, 7) for g, a in whole.items()},
                "tried": "largest first, the first to hold the gate quantized whole; else the smallest, with layers "
                "kept in float32",
            }
        return result
