"""``torchship triton ARTIFACT REPO``: a Triton Inference Server model repository from an artifact.

Up to three models, each a directory of REPO that Triton loads as it is:

``NAME``              text in. Triton's Python backend runs ``torchship.triton_model`` on a copy of the artifact:
                      tokenization, buckets and the task's post-processing happen on the server. Dynamic batching
                      on, and ``model_warmup`` runs one text per bucket before the model reports ready.
``NAME_torchscript``  token ids in, for the native ``pytorch_libtorch`` backend: the artifact's ``model.pt``
                      (``forward``, the longest bucket), inputs by their forward() names, outputs ``<name>__<i>``.
``NAME_aoti``         token ids in, for ``platform: "torch_aoti"`` (Triton 26.05 and later), when the artifact
                      has a ``model.pt2``: inputs ``INPUT__<i>``, outputs ``OUTPUT__<i>``, any batch and length.

Names, dtypes and dims come from the manifest and from running each format once on a one-row input, so a
config can never disagree with the file it describes. ``config.pbtxt`` is protobuf text format
(``inference.ModelConfig``); the tests parse it with ``tritonclient.grpc.model_config_pb2``.
Each model is written to a temporary sibling and renamed into place: an interrupted run leaves nothing loadable.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import artifact, formats
from .errors import ArtifactError, OptionsError
from .formats.openvino import PRECISIONS
from .triton_model import output_name, text_inputs

TRITON_DTYPES = {
    torch.float32: "TYPE_FP32",
    torch.float16: "TYPE_FP16",
    torch.bfloat16: "TYPE_BF16",
    torch.int64: "TYPE_INT64",
    torch.int32: "TYPE_INT32",
    torch.bool: "TYPE_BOOL",
}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
PYTHON_TRITON = (
    "Triton 24.10 (2.51, the release it is tested with) or later with its Python backend, and torchship "
    "installed in the Python that backend runs (`pip install /path/to/torchship 'numpy<2'`: the 2.51 stub needs "
    "numpy 1)"
)
LIBTORCH_TRITON = (
    "Triton with its PyTorch backend, which binds inputs by forward()'s argument names (any recent NGC "
    "`tritonserver:YY.MM-py3` image)"
)
AOTI_TRITON = 'Triton 26.05 or later with its PyTorch backend (`platform: "torch_aoti"`, which is in beta)'
OPENVINO_TRITON = (
    'Triton with its OpenVINO backend (`backend: "openvino"`, in the NGC `tritonserver:YY.MM-py3` images), which '
    "binds inputs and outputs by the IR's tensor names"
)


class Enum(str):
    """A protobuf enum value: written bare, not quoted."""


@dataclass(frozen=True)
class TritonOptions:
    name: str | None = None  # default: the artifact directory's name
    max_batch_size: int = 64
    max_queue_delay_us: int = 2000
    instances: int = 1
    kind: str | None = None  # "cpu" or "gpu"; default: the artifact's device
    threads: int | None = None  # torch threads per text-in instance
    truncate: bool = False  # the text-in model's default for over-long texts: cut (true) or refuse (false)
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.name is not None and not NAME.match(self.name):
            raise OptionsError(
                f"model name {self.name!r} is invalid; use letters, digits, '_', '-' and '.' (Triton's model names)"
            )
        for field in ("max_batch_size", "instances"):
            if getattr(self, field) < 1:
                raise OptionsError(f"{field} must be >= 1, got {getattr(self, field)}")
        if self.max_queue_delay_us < 0:
            raise OptionsError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")
        if self.kind not in (None, "cpu", "gpu"):
            raise OptionsError(f"kind {self.kind!r} is invalid; choose cpu or gpu")
        if self.threads is not None and self.threads < 1:
            raise OptionsError(f"threads must be >= 1, got {self.threads}")


# ---- protobuf text format --------------------------------------------------------------------------------------


class Msg(list):  # type: ignore[type-arg]
    """A protobuf message: a list of (field, value) pairs, in order; a field may repeat (map entries)."""


def pbtxt(message: Msg, indent: int = 0) -> str:
    """Protobuf text format: a Msg value -> ``field { ... }``, a list of Msg -> ``field [ {...}, {...} ]``,
    a list of scalars -> ``field: [ a, b ]``; str -> quoted, Enum -> bare, int and bool -> literals."""
    pad = "  " * indent
    lines = []
    for key, value in message:
        if isinstance(value, Msg):
            lines.append(f"{pad}{key} {{\n{pbtxt(value, indent + 1)}{pad}}}\n")
        elif isinstance(value, list) and value and all(isinstance(v, Msg) for v in value):
            inner = ",\n".join(f"{pad}  {{\n{pbtxt(v, indent + 2)}{pad}  }}" for v in value)
            lines.append(f"{pad}{key} [\n{inner}\n{pad}]\n")
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]\n")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}\n")
    return "".join(lines)


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    raise TypeError(f"no protobuf text for {value!r}")


def _parameters(values: dict[str, str]) -> list[tuple[str, Any]]:
    return [("parameters", Msg([("key", k), ("value", Msg([("string_value", v)]))])) for k, v in values.items()]


def _tensor(name: str, dtype: str, dims: list[int], **extra: Any) -> Msg:
    return Msg([("name", name), ("data_type", Enum(dtype)), ("dims", dims), *extra.items()])


# ---- what each format computes ---------------------------------------------------------------------------------


@dataclass
class Probe:
    """A format run once on a one-row input: each output's shape (batch 1) and dtype, in manifest order."""

    shapes: list[list[int]]
    dtypes: list[torch.dtype]
    seq: int  # the length it was run at


def probe(root: Path, manifest: artifact.Manifest, name: str, seq: int) -> Probe:
    target = formats.Target(torch.device("cpu"), None, sorted(manifest.buckets))
    backend = formats.get(name).load(root, manifest, target)
    ids = torch.full((1, seq), manifest.tokenizer.pad_token_id, dtype=torch.long)
    ids[0, 0] = 0
    mask = torch.ones(1, seq, dtype=torch.long)
    inputs = tuple(ids if n == "input_ids" else mask if n == "attention_mask" else torch.zeros_like(ids)
                   for n in manifest.inputs)  # fmt: skip
    with torch.inference_mode():
        outputs = backend.run(seq, inputs)
    return Probe([list(o.shape) for o in outputs], [o.dtype for o in outputs], seq)


def _dtype(dtype: torch.dtype) -> str:
    if dtype not in TRITON_DTYPES:
        raise OptionsError(f"output dtype {dtype} has no Triton data type; export in float32, float16 or bfloat16")
    return TRITON_DTYPES[dtype]


def _dims(manifest: artifact.Manifest, output: str, shape: list[int], seq: int | None, batched: bool) -> list[int]:
    """Config dims of an output: the batch axis dropped when Triton batches, the sequence axis ``seq`` (static)
    or -1 (dynamic), fixed axes as probed."""
    dims = []
    for axis, size in zip(manifest.output_axes[output], shape, strict=True):
        if axis == "batch":
            if not batched:
                dims.append(-1)
        elif axis == "seq":
            dims.append(seq if seq is not None else -1)
        else:
            dims.append(size)
    return dims


# ---- the three models ------------------------------------------------------------------------------------------


def _model(
    name: str,
    runtime: tuple[str, str],
    batch: int,
    inputs: list[Msg],
    outputs: list[Msg],
    opts: TritonOptions,
    kind: str,
) -> Msg:
    """What every model's config starts with: its name, backend or platform, I/O, batching and instances."""
    message = Msg([("name", name), runtime, ("max_batch_size", batch), ("input", inputs), ("output", outputs)])
    if batch > 0:
        message.append(("dynamic_batching", Msg([("max_queue_delay_microseconds", opts.max_queue_delay_us)])))
    group = Msg([("count", opts.instances), ("kind", Enum("KIND_GPU" if kind == "gpu" else "KIND_CPU"))])
    message.append(("instance_group", [group]))
    return message


def text_config(name: str, manifest: artifact.Manifest, opts: TritonOptions, kind: str, dim: int | None) -> str:
    from . import tasks

    task = tasks.get(manifest.task)
    inputs = [
        _tensor(n, "TYPE_STRING", [1], **({"optional": True} if optional else {})) for n, optional in text_inputs(task)
    ]
    out = output_name(task)
    outputs = [_tensor(out, "TYPE_FP32", [dim or -1]) if task.embeds else _tensor(out, "TYPE_STRING", [1])]
    warmup = []
    for seq in manifest.buckets:
        files = [(n, f"{n}_{seq}") for n, optional in text_inputs(task) if not optional]
        entry = Msg([("name", f"bucket_{seq}"), ("batch_size", 1)])
        for n, f in files:
            spec = Msg([("data_type", Enum("TYPE_STRING")), ("dims", [1]), ("input_data_file", f)])
            entry.append(("inputs", Msg([("key", n), ("value", spec)])))
        warmup.append(entry)
    params = {"artifact": "artifact", "truncate": "true" if opts.truncate else "false"}
    if opts.threads is not None:
        params["threads"] = str(opts.threads)
    message = _model(name, ("backend", "python"), opts.max_batch_size, inputs, outputs, opts, kind)
    message += [*_parameters(params), ("model_warmup", warmup)]
    header = (
        f"# {name}: text in, {manifest.task} out, on torchship's runtime (Triton's Python backend).\n"
        f"# Needs {PYTHON_TRITON}.\n"
    )
    return header + pbtxt(message)


def torchscript_config(name: str, manifest: artifact.Manifest, opts: TritonOptions, kind: str, p: Probe) -> str:
    seq = p.seq
    inputs = [_tensor(n, "TYPE_INT64", [seq]) for n in manifest.inputs]
    outputs = [
        _tensor(f"{o}__{i}", _dtype(dtype), _dims(manifest, o, shape, seq, batched=True))
        for i, (o, shape, dtype) in enumerate(zip(manifest.outputs, p.shapes, p.dtypes, strict=True))
    ]
    message = _model(name, ("platform", "pytorch_libtorch"), opts.max_batch_size, inputs, outputs, opts, kind)
    # torchship loads model.pt without TorchScript's profiling executor on CPU: half the memory, equal speed
    # (README, "Memory of a long job"); Triton's switch for the same is DISABLE_OPTIMIZED_EXECUTION.
    optimized = "true" if kind == "cpu" else "false"
    message += _parameters({"DISABLE_OPTIMIZED_EXECUTION": optimized, "INFERENCE_MODE": "true"})
    header = (
        f"# {name}: token ids in (int64, padded to {seq} tokens, the artifact's longest bucket), raw outputs out.\n"
        f"# model.pt is the artifact's TorchScript file; its forward() takes {', '.join(manifest.inputs)}.\n"
        f"# Needs {LIBTORCH_TRITON}.\n"
    )
    return header + pbtxt(message)


def aoti_config(name: str, manifest: artifact.Manifest, opts: TritonOptions, kind: str, p: Probe) -> str:
    inputs = [_tensor(f"INPUT__{i}", "TYPE_INT64", [-1, -1]) for i, _ in enumerate(manifest.inputs)]
    outputs = [
        _tensor(f"OUTPUT__{i}", _dtype(dtype), _dims(manifest, o, shape, None, batched=False))
        for i, (o, shape, dtype) in enumerate(zip(manifest.outputs, p.shapes, p.dtypes, strict=True))
    ]
    # Triton's torch_aoti does not batch yet (max_batch_size 0); the package takes any batch itself
    message = _model(name, ("platform", "torch_aoti"), 0, inputs, outputs, opts, kind)
    names = ", ".join(f"INPUT__{i} = {n}" for i, n in enumerate(manifest.inputs))
    outs = ", ".join(f"OUTPUT__{i} = {n}" for i, n in enumerate(manifest.outputs))
    header = (
        f"# {name}: token ids in (int64, [batch, seq], any batch <= {formats.MAX_BATCH}, "
        f"seq 2..{manifest.max_length}), raw outputs out.\n"
        f"# {names}; {outs}.\n"
        f"# Needs {AOTI_TRITON}.\n"
    )
    return header + pbtxt(message)


def openvino_config(name: str, manifest: artifact.Manifest, opts: TritonOptions, kind: str, p: Probe) -> str:
    inputs = [_tensor(n, "TYPE_INT64", [-1, -1]) for n in manifest.inputs]
    outputs = [
        _tensor(o, _dtype(dtype), _dims(manifest, o, shape, None, batched=False))
        for o, shape, dtype in zip(manifest.outputs, p.shapes, p.dtypes, strict=True)
    ]
    # the IR takes any [batch, seq] itself, so Triton does not batch it (max_batch_size 0): the OpenVINO backend
    # pads requests to max_batch_size otherwise (ENABLE_BATCH_PADDING) or refuses smaller batches
    message = _model(name, ("backend", "openvino"), 0, inputs, outputs, opts, kind)
    # the artifact's precision, stated: the plugin's own default is bf16 on CPUs that have it (AMX), which would
    # run a float32 or int8 artifact outside the parity it was validated at
    params = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_PRECISION_HINT": PRECISIONS[manifest.dtype]}
    if opts.threads is not None:
        params["INFERENCE_NUM_THREADS"] = str(opts.threads)
    message += _parameters(params)
    header = (
        f"# {name}: token ids in (int64, [batch, seq], any batch <= {formats.MAX_BATCH}, "
        f"seq 2..{manifest.max_length}), raw outputs out, bound by name.\n"
        "# model.xml and model.bin are the artifact's OpenVINO IR (an int8 IR carries its runtime options).\n"
        f"# Needs {OPENVINO_TRITON}.\n"
    )
    return header + pbtxt(message)


@dataclass(frozen=True)
class Native:
    """A Triton platform that runs an artifact's file itself: its config writer, the file name it loads, the
    length its outputs are probed at (given the longest bucket), and what its README says."""

    config: Callable[[str, artifact.Manifest, TritonOptions, str, Probe], str]
    file: str
    probe_seq: Callable[[int], int]
    readme: Callable[[int], str]


# keyed by ``Format.triton_platform``
NATIVE = {
    "pytorch_libtorch": Native(
        torchscript_config,
        "model.pt",
        lambda longest: longest,
        lambda longest: (
            f"Token ids in (int64, padded to {longest}), raw outputs out: the artifact's TorchScript `model.pt` for "
            f"the native `pytorch_libtorch` backend. Needs {LIBTORCH_TRITON}. torchship did not run it in Triton (the "
            "backend is not on PyPI); its config was checked against Triton's ModelConfig schema and against "
            "`torch.jit.load`."
        ),
    ),
    "torch_aoti": Native(
        aoti_config,
        "model.pt2",
        lambda longest: min(8, longest),
        lambda longest: (
            "Token ids in (int64, any [batch, seq]), raw outputs out: the artifact's AOTInductor `model.pt2`. "
            f"Needs {AOTI_TRITON}. torchship did not run it in Triton (the backend is not on PyPI); its config was "
            "checked against Triton's ModelConfig schema."
        ),
    ),
    "openvino": Native(
        openvino_config,
        "model.xml",
        lambda longest: min(8, longest),
        lambda longest: (
            "Token ids in (int64, any [batch, seq]), raw outputs out, by name: the artifact's OpenVINO IR "
            f"(`model.xml`, `model.bin`). Needs {OPENVINO_TRITON}. torchship did not run it in Triton (the backend "
            "is not on PyPI); its config was checked against Triton's ModelConfig schema and against the IR, "
            "compiled by OpenVINO."
        ),
    ),
}


# ---- warm-up inputs --------------------------------------------------------------------------------------------


def serialize_bytes(values: list[bytes]) -> bytes:
    """Triton's binary form of a BYTES tensor: each element as a little-endian uint32 length, then its bytes."""
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def text_of_length(encoder: Any, tokens: int, *, reserve: int = 0) -> str:
    """A text that tokenizes to at most ``tokens`` tokens (special tokens included) and as close to it as the
    tokenizer allows; ``reserve`` tokens are left for a second segment."""
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards", "box"]
    text, n = "", 0
    while True:
        longer = (text + " " + words[n % len(words)]).strip()
        if len(encoder.tokenizer.encode(longer).ids) + reserve > tokens:
            return text or words[0]
        text, n = longer, n + 1


# ---- the repository --------------------------------------------------------------------------------------------


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # same filesystem: no second copy of the weights
    except OSError:
        shutil.copy2(src, dst)


def _copy_tree(src: Path, dst: Path) -> None:
    for path in sorted(src.rglob("*")):
        if path.is_file():
            _link_or_copy(path, dst / path.relative_to(src))


def write_repository(artifact_dir: str | Path, repo: str | Path, options: TritonOptions | None = None) -> list[Path]:
    """Write the models of ``artifact_dir`` into the Triton model repository ``repo``; return their directories."""
    from .runtime import load

    opts = options or TritonOptions()
    root = Path(artifact_dir)
    manifest = artifact.read_manifest(root)
    artifact.verify(root, manifest)
    name = opts.name or root.resolve().name
    if not NAME.match(name):
        raise OptionsError(f"the artifact's directory name {name!r} is not a valid Triton model name; pass --name")
    kind = opts.kind or ("gpu" if manifest.device.startswith("cuda") else "cpu")
    repo = Path(repo)
    native = {f: NATIVE[formats.get(f).triton_platform or ""] for f in manifest.formats
              if formats.get(f).triton_platform in NATIVE}  # fmt: skip
    names = {"text": name} | {f: f"{name}_{f}" for f in native}
    existing = [n for n in names.values() if (repo / n).exists()]
    if existing and not opts.overwrite:
        raise ArtifactError(
            f"{', '.join(str(repo / n) for n in existing)} already exist(s); pass --overwrite to replace, "
            "or --name to write under another name",
            path=repo,
        )
    predictor = load(root, verify=False, truncation="error")
    task = predictor.task_def
    dim = None
    if task.embeds:
        dim = int(predictor("a").shape[-1])
    longest = manifest.buckets[-1]
    written = []

    with artifact.atomic_dir(repo / names["text"], overwrite=opts.overwrite) as tmp:
        (tmp / "config.pbtxt").write_text(text_config(names["text"], manifest, opts, kind, dim))
        _copy_tree(root, tmp / "1" / "artifact")
        (tmp / "1" / "model.py").write_text(
            '"""Triton Python backend: torchship\'s text-in model (see torchship/triton_model.py)."""\n\n'
            "from torchship.triton_model import TritonPythonModel  # noqa: F401\n"
        )
        warm = tmp / "warmup"
        warm.mkdir()
        for seq in manifest.buckets:
            fields = [n for n, optional in text_inputs(task) if not optional]
            for n in fields:
                if n == "question":
                    text = "what is it"
                else:
                    text = text_of_length(predictor.encoder, seq, reserve=8 if task.fields else 0)
                (warm / f"{n}_{seq}").write_bytes(serialize_bytes([text.encode()]))
        (tmp / "README.md").write_text(
            f"# {names['text']}\n\nText in, `{manifest.task}` results out: Triton's Python backend runs torchship's "
            f"runtime on `1/artifact` (tokenization, buckets, post-processing on the server). Needs {PYTHON_TRITON}.\n"
        )
    written.append(repo / names["text"])

    for f, model in native.items():
        p = probe(root, manifest, f, model.probe_seq(longest))
        with artifact.atomic_dir(repo / names[f], overwrite=opts.overwrite) as tmp:
            (tmp / "config.pbtxt").write_text(model.config(names[f], manifest, opts, kind, p))
            source = root / formats.get(f).file
            if source.parent == root:
                _link_or_copy(source, tmp / "1" / model.file)
            else:  # a format whose file lies in a folder owns the folder (OpenVINO: model.xml beside model.bin)
                _copy_tree(source.parent, tmp / "1")
            (tmp / "README.md").write_text(f"# {names[f]}\n\n{model.readme(longest)}\n")
        written.append(repo / names[f])
    return written
