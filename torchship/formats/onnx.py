"""ONNX: ``torch.onnx.export`` (dynamo exporter, opset 18) with dynamic batch and sequence, run by ONNX Runtime.

ONNX Runtime's transformer fusion (attention, LayerNorm, GELU) is applied only where it keeps parity:
the exporter validates the fused graph and falls back to the plain one, recording why.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import OptionsError
from . import MAX_BATCH, Backend

FILE = "model.onnx"
OPSET = 18
INSTALL = "ONNX support needs the onnx extra: pip install 'torchship[onnx]'"


def require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise OptionsError(f"format 'onnx' needs onnxruntime, which is not installed. {INSTALL}") from e
    return onnxruntime


def export(
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


def fuse(path: Path, out: Path, *, model_type: str, num_heads: int, hidden_size: int) -> str | None:
    """Write ONNX Runtime's transformer-fused graph of ``path`` to ``out``; return why not, or None."""
    try:
        from onnxruntime.transformers.optimizer import optimize_model
    except ImportError as e:
        return f"onnxruntime.transformers is unavailable ({e})"
    ort_type = {"distilbert": "bert", "roberta": "bert", "xlm-roberta": "bert", "electra": "bert"}.get(
        model_type, model_type if model_type in ("bert",) else ""
    )
    if not ort_type:
        return f"ONNX Runtime has no transformer fusion for {model_type}"
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
        try:
            model = optimize_model(str(path), model_type=ort_type, num_heads=num_heads, hidden_size=hidden_size)
        except Exception as e:  # noqa: BLE001  ORT's optimizer raises anything; fusion is optional, record why
            return f"fusion failed: {type(e).__name__}: {e}"
        model.save_model_to_file(str(out))
    return None


def quantize(path: Path, out: Path) -> None:
    """Write ONNX Runtime's dynamic int8 quantization of ``path`` to ``out``: int8 weights per output channel,
    activations quantized per tensor at run time. Per-tensor weights lost too much here (all-MiniLM-L6-v2
    embeddings: cosine 0.89 at worst over 200 corpus texts, against 0.987 per channel)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # "Please consider to run pre-processing before quantization"
        try:
            quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8, per_channel=True)
        finally:
            root.setLevel(level)


def load(path: Path, max_length: int, *, threads: int | None) -> Backend:
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(seq: int, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        feed = {name: np.ascontiguousarray(x.numpy()) for name, x in zip(names, inputs, strict=True)}
        return tuple(torch.from_numpy(o) for o in session.run(None, feed))

    return Backend("onnx", max_length, None, run)
