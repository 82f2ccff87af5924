"""Frozen, keyword-only option objects: one object travels instead of many keyword arguments.

Every field is checked in ``__post_init__``, so a bad value fails where it is written, with a message
that names it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import OptionsError

ALL_FORMATS = ("torchscript", "aoti", "onnx", "openvino")  # what "all" means: every format that runs on a plain CPU
DTYPES = ("float32", "float16", "bfloat16", "int8")
TRUNCATION = ("warn", "error")
# The defaults, chosen by measurement (benchmarks/defaults.py, README "Defaults"): TorchScript (the seed's model.pt,
# for libtorch and Triton) next to ONNX, which ONNX Runtime runs fastest at short lengths; buckets each at most 1.5x
# the one before, so no text is padded by more than half its length whatever the corpus.
DEFAULT_FORMATS = ("torchscript", "onnx")
DEFAULT_SEQ_LENGTHS = (16, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256)
AUTO_CALIBRATE_S = 3.0  # what re-timing stale timings may add to a load that did not ask for it (LoadOptions)


def parse_int_list(text: str, *, name: str) -> tuple[int, ...]:
    """Parse ``"16,32,64"`` into ``(16, 32, 64)``; the error names the option and the bad item."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise OptionsError(f"{name} is empty; give a comma list of integers such as 16,32,64")
    values = []
    for item in items:
        try:
            values.append(int(item))
        except ValueError as e:
            raise OptionsError(f"{name}: {item!r} is not an integer; give a comma list such as 16,32,64") from e
    return tuple(values)


@dataclass(frozen=True, kw_only=True)
class ExportOptions:
    """What ``torchship.export`` builds.

    ``seq_lengths`` are the traced sequence-length buckets; ``batch_size`` is the batch the trace is taken
    at (validation always runs at a different one); ``max_length`` caps the longest bucket, defaulting to
    the smaller of the model's position limit and sentence-transformers' ``max_seq_length``.
    ``buckets="auto"`` replaces ``seq_lengths`` with the FLOP-optimal ``max_buckets`` edges planned from
    the length sample ``lengths_from`` (see ``torchship plan``). ``formats`` is any of torchscript, aoti,
    onnx, openvino (the ONNX graph as OpenVINO IR; the openvino extra), ``("all",)`` (all four), or
    ``("default",)``: TorchScript and ONNX, those of them that ``dtype`` and ``device`` allow; compiled
    AOTInductor packages and exported ONNX graphs are reused from ``cache_dir``
    (default ``$TORCHSHIP_CACHE`` or ``~/.cache/torchship``). ``dtype`` float16 or bfloat16 traces the model
    in that dtype on ``device``; int8 (CPU) is quantization of the validated float32 graph: ONNX Runtime's dynamic
    int8 for onnx, torchao's PT2E for aoti (the int8 extra), NNCF's weight-only int8 for openvino.
    Either way the drift from float32 is measured and recorded as ``manifest["precision"]``.
    ``atol`` and ``attn_implementation`` default to the architecture's ``ArchSpec`` (its measured choice).
    ``unpad`` runs the dense layers on real tokens only, inside the graph (torchship/unpad.py); None (the default)
    does so wherever it can: BERT-layout encoders (BERT, RoBERTa, XLM-R, ELECTRA), in formats that take shapes
    that depend on the data (all but Neuron: ``Format.unpads``), int8 included. False keeps the padded layout.
    An int8 export is gated on its agreement with float32 on real text (validate.Judge): the lowest cosine
    similarity of embeddings (``min_cosine``, for feature extraction and sparse embeddings) or the share of top-1
    choices kept (``min_top1``: labels, tokens, spans); when the gate fails, the most sensitive layers stay in
    float32 until it holds. The gate runs on 256 paragraphs of the Python standard library's docstrings, or on
    the texts of ``gate_texts`` (JSON lines with a text field, or text lines): yours, the closest to production.
    ``int8_scheme`` picks how: ``dynamic`` (int8 activations quantized at run time; onnx and aoti), ``weights``
    (int8 weights; activations quantized as they run, per group of values of a token whose size the gate picks;
    openvino's default) or ``static`` (int8 activations whose ranges are calibrated at export; openvino). None:
    each format's default.
    ``timing_budget_s`` bounds what timing the formats against each other may cost an
    export of several formats: the cheapest (batch, seq) points are timed first, and the points past the budget
    are estimated from the most expensive timed one by FLOPs (0: time the cheapest point only).
    """

    task: str = "auto"
    formats: tuple[str, ...] = ("default",)
    seq_lengths: tuple[int, ...] = DEFAULT_SEQ_LENGTHS
    batch_size: int = 2
    atol: float | None = None
    max_length: int | None = None
    buckets: str = "manual"
    lengths_from: Path | None = None
    max_buckets: int = 16
    overwrite: bool = False
    progress: bool = False
    cache_dir: Path | None = None
    device: str = "cpu"
    dtype: str = "float32"
    attn_implementation: str | None = None
    unpad: bool | None = None
    min_cosine: float = 0.995
    min_top1: float = 0.99
    gate_texts: Path | None = None
    int8_scheme: str | None = None
    timing_budget_s: float = 6.0

    def __post_init__(self) -> None:
        for name in ("lengths_from", "cache_dir", "gate_texts"):  # a str from Python is as good as a Path
            value = getattr(self, name)
            if isinstance(value, str | os.PathLike) and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
            elif value is not None and not isinstance(value, Path):
                raise OptionsError(f"{name} must be a path (str or pathlib.Path), got {value!r}")
        if isinstance(self.formats, str):  # "onnx" or "torchscript,onnx", as --format takes them
            object.__setattr__(self, "formats", tuple(f.strip() for f in self.formats.split(",") if f.strip()))
        for name in ("min_cosine", "min_top1"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
                raise OptionsError(f"{name} must be a number in (0, 1], got {value!r}; the default is "
                                   f"{type(self).__dataclass_fields__[name].default}")  # fmt: skip
        if self.gate_texts is not None and self.dtype != "int8":
            raise OptionsError("gate_texts is what the int8 gate measures on; it needs dtype='int8' (--dtype int8)")
        if (
            isinstance(self.timing_budget_s, bool)
            or not isinstance(self.timing_budget_s, int | float)
            or not (0 <= self.timing_budget_s < float("inf"))
        ):
            raise OptionsError(f"timing_budget_s must be a number of seconds >= 0, got {self.timing_budget_s!r}")
        if self.attn_implementation not in (None, "eager", "sdpa"):
            raise OptionsError(
                f"attn_implementation {self.attn_implementation!r} is invalid; choose 'eager' or 'sdpa' (or leave it "
                "unset for the family's measured default)"
            )
        from . import formats, tasks  # the registries: what exists, and what each format can be exported for

        if self.formats == ("all",):
            object.__setattr__(self, "formats", ALL_FORMATS)
        if self.formats == ("default",):  # those of the defaults that this dtype and device allow
            fitting = tuple(f for f in DEFAULT_FORMATS if formats.get(f).fits(self))
            object.__setattr__(self, "formats", fitting or DEFAULT_FORMATS[:1])

        if self.task != "auto" and self.task not in tasks.names():
            raise OptionsError(f"task {self.task!r} is not supported; choose one of: auto, {', '.join(tasks.names())}")
        if not self.formats:
            raise OptionsError(f"formats is empty; choose from: {', '.join(formats.names())}, or all")
        for fmt in self.formats:
            if fmt not in formats.names():
                raise OptionsError(
                    f"format {fmt!r} is not supported; choose from: {', '.join(formats.names())}, or all"
                )
        if self.dtype not in DTYPES:
            raise OptionsError(f"dtype {self.dtype!r} is not supported; choose one of: {', '.join(DTYPES)}")
        for fmt in self.formats:
            formats.get(fmt).check(self)
        if self.int8_scheme is not None:
            if self.dtype != "int8":
                raise OptionsError("int8_scheme is how int8 is quantized; it needs dtype='int8' (--dtype int8)")
            for fmt in self.formats:
                schemes = formats.get(fmt).int8_schemes
                if self.int8_scheme not in schemes:
                    raise OptionsError(
                        f"int8 scheme {self.int8_scheme!r} is not available in format {fmt!r}, whose schemes are: "
                        f"{', '.join(schemes)}"
                    )
        if self.unpad not in (None, True, False):
            raise OptionsError(f"unpad must be True, False or None (where it applies), got {self.unpad!r}")
        why = [w for w in (formats.get(f).unpads(self) for f in self.formats) if w]
        if self.unpad and why:
            raise OptionsError(
                f"unpad (padding-free dense layers) does not apply here: {why[0]}; export without --unpad"
            )
        if len(set(self.formats)) != len(self.formats):
            raise OptionsError(f"formats {list(self.formats)} repeats a format; list each once")
        if not self.seq_lengths:
            raise OptionsError("seq_lengths is empty; give at least one length such as 128")
        if any(s < 2 for s in self.seq_lengths):
            raise OptionsError(
                f"seq_lengths {list(self.seq_lengths)} has a length below 2; every bucket must hold [CLS] and [SEP]"
            )
        if len(set(self.seq_lengths)) != len(self.seq_lengths):
            raise OptionsError(f"seq_lengths {list(self.seq_lengths)} repeats a length; list each bucket once")
        if self.batch_size < 1:
            raise OptionsError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.atol is not None and not self.atol > 0:
            raise OptionsError(f"atol must be > 0, got {self.atol}")
        if self.max_length is not None and self.max_length < 2:
            raise OptionsError(f"max_length must be >= 2, got {self.max_length}")
        if self.buckets not in ("manual", "auto"):
            raise OptionsError(f"buckets {self.buckets!r} is invalid; choose 'manual' (--seq-lengths) or 'auto'")
        if self.buckets == "auto" and self.lengths_from is None:
            raise OptionsError("buckets='auto' plans from a length sample; pass lengths_from (--lengths-from FILE)")
        if self.max_buckets < 1:
            raise OptionsError(f"max_buckets must be >= 1, got {self.max_buckets}")


@dataclass(frozen=True, kw_only=True)
class LoadOptions:
    """How ``torchship.load`` opens an artifact.

    ``truncation="warn"`` cuts texts longer than the longest bucket and warns; ``"error"`` refuses them.
    One forward pass (a micro-batch) holds at most ``micro_batch_size`` rows and ``max_batch_tokens`` padded
    tokens (the server sets both from its own ``max_batch_size`` and ``max_batch_tokens``).
    ``workers`` micro-batches run at once (threads of Python: TorchScript and ONNX Runtime release the GIL,
    AOTInductor's runner does not, which timing measures and routing heeds), each op on
    ``threads`` intra-op threads (process-wide ``torch.set_num_threads``; None leaves it as it is). On
    small encoders ``workers=2, threads=1`` uses two cores better than ``workers=1, threads=2``.
    ``verify`` checks every file's sha256 first. ``device`` defaults to the one the artifact was exported for.
    With several formats, each micro-batch goes to the format that was fastest at export on the nearest grid
    point. Those timings belong to the export's machine, threads and load: with ``calibrate=None`` (the default)
    they are re-timed here at load when they do not describe this process (another CPU or accelerator, another
    thread count, or other processes busy while the export timed them and quiet now: machine.stale), within
    ``min(calibrate_budget_s, AUTO_CALIBRATE_S)``; ``calibrate=True`` always re-times, within ``calibrate_budget_s``
    seconds, and ``False`` never does. Only the formats that routing can pick are loaded (and checked); a format
    forced later loads then.
    """

    format: str | None = None
    device: str | None = None
    truncation: str = "warn"
    micro_batch_size: int = 64
    max_batch_tokens: int = 8192
    workers: int = 1
    threads: int | None = None
    verify: bool = True
    calibrate: bool | None = None
    calibrate_budget_s: float = 15.0

    def __post_init__(self) -> None:
        from . import formats

        if self.calibrate not in (None, True, False):
            raise OptionsError(f"calibrate must be True, False or None (re-time where stale), got {self.calibrate!r}")

        if not self.calibrate_budget_s > 0:
            raise OptionsError(f"calibrate_budget_s must be > 0 seconds, got {self.calibrate_budget_s}")

        if self.format is not None and self.format not in formats.names():
            raise OptionsError(f"format {self.format!r} is not supported; choose from: {', '.join(formats.names())}")
        if self.truncation not in TRUNCATION:
            raise OptionsError(f"truncation {self.truncation!r} is invalid; choose 'warn' or 'error'")
        if self.micro_batch_size < 1:
            raise OptionsError(f"micro_batch_size must be >= 1, got {self.micro_batch_size}")
        if self.max_batch_tokens < 1:
            raise OptionsError(f"max_batch_tokens must be >= 1, got {self.max_batch_tokens}")
        if self.workers < 1:
            raise OptionsError(f"workers must be >= 1, got {self.workers}")
        if self.threads is not None and self.threads < 1:
            raise OptionsError(f"threads must be >= 1 or None, got {self.threads}")


@dataclass(frozen=True, kw_only=True)
class ServeOptions:
    """How ``torchship serve`` runs.

    A batch closes at ``max_batch_tokens`` padded tokens, ``max_batch_size`` items, or ``max_wait_ms`` after
    its first item. At most ``max_queue`` items wait; beyond that requests get 503 with Retry-After.
    One request holds at most ``max_input_items`` texts (or text pairs) of at most ``max_input_chars`` characters each
    (with ``split_client_batches``, a longer request is run in slices of ``max_input_items`` instead of refused).
    Texts over the longest bucket are truncated, and the response's ``X-Truncated-Inputs`` header lists them; with
    ``truncate=False`` they are refused (413), and a request may choose either way (TEI's ``truncate``).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_tokens: int = 8192
    max_batch_size: int = 64
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    max_input_items: int = 256
    max_input_chars: int = 100_000
    api_key: str | None = None
    truncate: bool = True
    split_client_batches: bool = False
    workers: int = 1
    threads: int | None = None
    calibrate: bool | None = None
    calibrate_budget_s: float = 15.0

    def __post_init__(self) -> None:
        for name in (
            "max_batch_tokens",
            "max_batch_size",
            "max_queue",
            "max_input_items",
            "max_input_chars",
            "workers",
        ):
            if getattr(self, name) < 1:
                raise OptionsError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise OptionsError(f"port must be in 0..65535, got {self.port}")
        if self.max_wait_ms < 0:
            raise OptionsError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.max_input_items > self.max_queue:
            raise OptionsError(
                f"max_input_items {self.max_input_items} exceeds max_queue {self.max_queue}: such a request could "
                "never be queued; raise --max-queue or lower --max-input-items"
            )
        if self.api_key is not None and not self.api_key.strip():
            raise OptionsError("api_key is empty; pass a non-empty key or none")
