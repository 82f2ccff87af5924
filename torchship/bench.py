"""``torchship bench``: latency, throughput and padding of every format in an artifact, against baselines.

Writes ``report.json`` (schema ``torchship/bench_schema.json``), ``report.md`` and PNG plots into the
output directory, and prints a rich table. Every contender runs in one process on the same threads.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import machine
from .device import DTYPES
from .engine import Counters
from .errors import OptionsError
from .flops import flops
from .runtime import Predictor, load

SCHEMA = "torchship.bench/1"
RunFn = Callable[[torch.Tensor], object]


@dataclass(frozen=True, kw_only=True)
class BenchOptions:
    shapes: tuple[tuple[int, int], ...] = ((1, 16), (1, 128), (8, 128))
    seq_sweep: tuple[int, ...] = (16, 32, 64, 128, 256)
    batch_sweep: tuple[int, ...] = (1, 2, 4, 8, 16)
    compare: tuple[str, ...] = ("eager", "onnxruntime")
    threads: int | None = None
    texts: Path | None = None
    min_time: float = 0.5
    output: Path = Path("bench")

    def __post_init__(self) -> None:
        unknown = set(self.compare) - {"eager", "onnxruntime"}
        if unknown:
            raise OptionsError(f"--compare {sorted(unknown)} is unknown; choose from: eager, onnxruntime")
        if any(b < 1 or s < 1 for b, s in self.shapes):
            raise OptionsError(f"shapes must be BATCHxSEQ with both >= 1, got {self.shapes}")
        if self.min_time <= 0:
            raise OptionsError(f"min_time must be > 0, got {self.min_time}")
        if self.texts is not None and not self.texts.is_file():
            raise OptionsError(f"--texts {self.texts} does not exist")


def parse_shapes(text: str) -> tuple[tuple[int, int], ...]:
    shapes = []
    for item in text.split(","):
        try:
            batch, seq = (int(x) for x in item.strip().lower().split("x"))
        except ValueError as e:
            raise OptionsError(f"--shapes item {item!r} is not BATCHxSEQ (for example 8x128)") from e
        shapes.append((batch, seq))
    return tuple(shapes)


def measure(fn: RunFn, ids: torch.Tensor, min_time: float) -> dict[str, float]:
    """Warm up, then repeat for at least ``min_time`` seconds (5..1000 runs): median, p90, p99 in ms."""
    for _ in range(2):
        fn(ids)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < min_time and len(times) < 1000):
        t0 = time.perf_counter()
        fn(ids)
        times.append(time.perf_counter() - t0)
    ms = np.asarray(times) * 1e3
    return {
        "median_ms": float(statistics.median(ms)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "repetitions": len(times),
    }


def gemm_peak(
    n: int = 2048, repeats: int = 8, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> float:
    """Best GEMM rate (FLOP/s) at n^3 on ``device`` in ``dtype`` (CPU: on the current threads).

    Both ``torch.mm`` and ``F.linear`` (addmm, what the models' Linear layers run) are timed and the faster
    counts: on CPUs without native float16 arithmetic, float16 ``mm`` takes a fallback ~100x slower than
    float16 ``linear``, which would make every model look faster than the peak. On CPU in float32 oneDNN's
    prepacked linear is timed too, since on AMD CPUs MKL's kernels fall short of the machine (2-core EPYC with
    AVX-512, 2026-12-02: MKL 128-204 GFLOP/s, oneDNN 202-223, ONNX Runtime's MLAS 199-226 at MiniLM's shapes), and
    a TorchScript artifact runs its linear layers on oneDNN there (formats/torchscript.py).
    """
    device = device or torch.device("cpu")
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)

    def gemm(op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            op(a, b)
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        return run

    runs = [gemm(torch.mm), gemm(torch.nn.functional.linear)]
    if device.type == "cpu" and dtype == torch.float32 and machine.onednn_linear():
        packed = torch.ops.mkldnn._reorder_linear_weight(b)
        runs.append(lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], ""))
    best = float("inf")
    for run in runs:
        run()
        best = min(best, *(_timed(run) for _ in range(repeats)))
    return 2 * n**3 / best


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def plain_onnxruntime(model: torch.nn.Module, input_names: tuple[str, ...], path: Path, threads: int | None) -> RunFn:
    """What a user gets without torchship: ``torch.onnx.export`` of the model and a default ORT session."""
    import onnxruntime as ort

    from .formats.onnx import export_graph as onnx_export
    from .wrap import ExportWrapper

    out = model(**{n: torch.ones(1, 4, dtype=torch.long) for n in input_names}, return_dict=True)
    names = tuple(k for k, v in out.items() if isinstance(v, torch.Tensor))
    wrapper = ExportWrapper(model, input_names, names).eval()
    example = tuple(torch.ones(2, 16, dtype=torch.long) for _ in input_names)
    onnx_export(wrapper, example, input_names, names, 512, path)
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(ids: torch.Tensor) -> object:
        x = ids.numpy()
        feed = {"input_ids": x, "attention_mask": np.ones_like(x), "token_type_ids": np.zeros_like(x)}
        return session.run(None, {n: feed[n] for n in input_names})

    return run


def _runner(predictor: Predictor) -> RunFn:
    def run(ids: torch.Tensor) -> object:
        return predictor.run(ids)

    return run


def _contenders(predictor: Predictor, options: BenchOptions, notes: list[str], work: Path) -> dict[str, RunFn]:
    contenders: dict[str, RunFn] = {}
    for fmt in predictor.manifest.formats:
        forced = load(predictor.root, format=fmt, threads=options.threads, verify=False)
        contenders[f"torchship {fmt}"] = _runner(forced)
    wanted = set(options.compare)
    if not wanted:
        return contenders
    source = Path(predictor.manifest.source["path"])
    if not (source / "config.json").is_file():
        notes.append(f"baselines {sorted(wanted)} skipped: the source model {source} is not on this machine")
        return contenders
    try:
        import transformers
        from transformers.utils import logging as hf_logging
    except ImportError:
        notes.append("baselines skipped: transformers is not installed")
        return contenders
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    auto = getattr(transformers, predictor.task_def.auto_class)
    model = auto.from_pretrained(source).eval()
    names = predictor.input_names
    if "eager" in wanted:

        def eager(ids: torch.Tensor) -> object:
            feed = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
            with torch.inference_mode():
                return model(**{n: feed[n] for n in names})

        contenders["transformers eager"] = eager
    if "onnxruntime" in wanted:
        try:
            contenders["onnxruntime (plain export)"] = plain_onnxruntime(
                model, names, work / "plain.onnx", options.threads
            )
        except (ImportError, OptionsError) as e:
            notes.append(f"baseline onnxruntime skipped: {e}; pip install 'torchship[onnx]'")
    return contenders


def run_bench(artifact: str | Path, options: BenchOptions) -> dict[str, Any]:
    """Measure, write report.json, report.md and the plots into ``options.output``; return the report."""
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    predictor = load(artifact, threads=options.threads)
    if options.shapes and all(s > predictor.max_length for _, s in options.shapes):
        raise OptionsError(
            f"every shape in --shapes is longer than the artifact's max_length {predictor.max_length}; "
            f"use sequence lengths up to {predictor.max_length}, or export with longer buckets"
        )
    out = options.output
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    scratch = Path(tempfile.mkdtemp(prefix="torchship-bench-"))  # the baseline's plain ONNX export lives here
    try:
        contenders = _contenders(predictor, options, notes, scratch)
        return _measure(predictor, options, contenders, notes, out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _measure(
    predictor: Predictor, options: BenchOptions, contenders: dict[str, RunFn], notes: list[str], out: Path
) -> dict[str, Any]:
    config = json.loads((predictor.root / "config.json").read_text())
    pooler = "pooler_output" in predictor.output_names
    dtype = predictor.manifest.dtype
    if dtype not in DTYPES:  # int8: ONNX Runtime's int8 kernels, set against the float32 peak
        notes.append(f"{dtype}: % of peak is against the float32 GEMM peak, so it can pass 100 %")
        dtype = "float32"
    peak = gemm_peak(device=predictor.engine.device, dtype=DTYPES[dtype])
    generator = torch.Generator().manual_seed(0)

    def record(series: str, name: str, batch: int, seq: int) -> dict[str, Any]:
        ids = torch.randint(1000, 2000, (batch, seq), generator=generator)
        stats = measure(contenders[name], ids, options.min_time)
        work = flops(config, batch, seq, predictor.task, pooler=pooler)
        seconds = stats["median_ms"] / 1e3
        return {
            "series": series, "contender": name, "batch": batch, "seq": seq, **stats,
            "items_per_s": batch / seconds, "tokens_per_s": batch * seq / seconds,
            "gflops": work / seconds / 1e9, "percent_of_peak": 100 * work / seconds / peak,
        }  # fmt: skip

    limit = predictor.max_length
    measurements = []
    for name in contenders:
        measurements += [record("shapes", name, b, s) for b, s in options.shapes if s <= limit]
        measurements += [record("seq_sweep", name, 1, s) for s in options.seq_sweep if s <= limit]
        sweep_seq = min(128, limit)
        measurements += [record("batch_sweep", name, b, sweep_seq) for b in options.batch_sweep]
    skipped = [f"{b}x{s}" for b, s in options.shapes if s > limit]
    if skipped:
        notes.append(f"shapes {skipped} skipped: longer than the artifact's max_length {limit}")
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "artifact": str(predictor.root),
        "task": predictor.task,
        "formats": list(predictor.manifest.formats),
        "machine": machine_info(),
        "gemm_peak_gflops": peak / 1e9,
        "measurements": measurements,
        "corpus": _corpus(predictor, options) if options.texts else None,
        "notes": notes,
        "plots": [],
    }
    from .bench_report import write_outputs

    write_outputs(report, out)
    return report


def _corpus(predictor: Predictor, options: BenchOptions) -> dict[str, Any]:
    from .plan import read_lengths
    from .textfile import read_texts

    assert options.texts is not None
    texts = read_texts(options.texts)
    lengths = read_lengths(options.texts, predictor.encoder.tokenizer)
    rows = []
    for fmt in [None, *predictor.manifest.formats]:
        p = load(predictor.root, format=fmt, threads=options.threads, verify=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            p(texts)  # warm-up
            c = Counters()  # counts the timed run only
            p.engine.hooks.append(c)
            started = time.perf_counter()
            p(texts)
            seconds = time.perf_counter() - started
        rows.append({
            "contender": "torchship (fastest per shape)" if fmt is None else f"torchship {fmt}",
            "seconds": seconds, "texts_per_s": len(texts) / seconds,
            "real_tokens": c.real_tokens, "padded_tokens": c.padded_tokens, "padding_waste": c.padding_waste,
            "flops_executed": c.flops_executed, "flops_unpadded": c.flops_unpadded, "flops_ratio": c.flops_ratio,
        })  # fmt: skip
    return {
        "file": str(options.texts),
        "texts": len(texts),
        "lengths": lengths,
        "bucket_edges": predictor.buckets,
        "max_length": predictor.max_length,
        "contenders": rows,
    }


def machine_info() -> dict[str, Any]:
    from .machine import cpu_name

    cpu = cpu_name()
    try:
        import onnxruntime

        ort_version: str | None = onnxruntime.__version__
    except ImportError:
        ort_version = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "onnxruntime": ort_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
