"""Export: checkpoint -> wrapper -> traced formats -> validated, checksummed artifact (atomic)."""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from tqdm import tqdm

from . import __version__, artifact, device, plan, registry, source, validate
from .errors import ArtifactError, ExportError, OptionsError, UnsupportedModelError
from .formats import torchscript
from .options import ExportOptions, LoadOptions
from .runtime import Predictor
from .timing import time_formats
from .tokenize import pad_rows
from .wrap import ExportWrapper, untie_weights


def export(model: str | Path, output_dir: str | Path, options: ExportOptions | None = None) -> Path:
    """Export ``model`` (directory, cached hub id or ``"demo"``) to an artifact directory; return its path."""
    options = options or ExportOptions()
    output_dir = Path(output_dir)
    if output_dir.exists() and not options.overwrite:  # fail before the slow part; atomic_dir checks again
        raise ArtifactError(
            f"{output_dir} already exists; choose another OUTPUT_DIR or pass --overwrite to replace it",
            path=output_dir,
        )
    started = time.perf_counter()
    target = device.resolve(options.device)  # fail before anything is loaded or written
    if target.type == "cpu" and options.dtype == "float16":
        warnings.warn(
            "float16 on cpu: most CPUs have no float16 arithmetic, so it runs on slow fallback kernels (measured "
            "here: ~6x slower than float32 for all-MiniLM-L6-v2); for reduced precision on CPU use bfloat16",
            UserWarning,
            stacklevel=2,
        )
    if "neuron" in options.formats:
        from .formats import neuron

        neuron.require_sdk()
    src = source.resolve(model)
    with (
        _quiet_transformers(),
        tqdm(total=3, desc="export", unit="step", disable=not options.progress, file=sys.stderr) as steps,
    ):
        steps.set_postfix_str("loading model")
        loaded = load_eager(src, options.task)
        steps.update()
        with artifact.atomic_dir(output_dir, overwrite=options.overwrite) as tmp:
            _build(tmp, src, loaded, options, steps)
            manifest = artifact.read_manifest(tmp)
            manifest["export"]["seconds"] = round(time.perf_counter() - started, 3)
            artifact.write_manifest(tmp, manifest)
    return output_dir


def _build(tmp: Path, src: source.ModelSource, loaded: EagerModel, options: ExportOptions, steps: tqdm) -> None:
    """Write tokenizer, traced model and manifest into ``tmp``, then validate what was written."""
    config, spec, task = loaded.config, loaded.spec, loaded.task
    st = src.sentence_transformers()
    input_names = spec.input_names(config)
    tokenizer_info = _save_tokenizer(loaded.tokenizer, tmp / artifact.TOKENIZER_DIR)
    tokenizer = Tokenizer.from_file(str(tmp / artifact.TOKENIZER_DIR / "tokenizer.json"))
    config.to_json_file(str(tmp / "config.json"))
    tied = untie_weights(loaded.model)
    _check_expected_ties(spec, tied)
    output_axes = _output_axes(loaded.model, input_names)
    reference = loaded.model  # float32 on CPU: what reduced precision is measured against
    quantized = options.dtype == "int8"  # ONNX Runtime's quantization of the float32 graph, after export
    target, dtype = device.resolve(options.device), device.dtype_of("float32" if quantized else options.dtype)
    model = reference if (target.type, dtype) == ("cpu", torch.float32) else copy.deepcopy(reference).to(target, dtype)
    output_names = tuple(output_axes)
    max_length = _max_length(config, st, options)
    bucket_plan: dict[str, Any] | None = None
    if options.buckets == "auto":
        assert options.lengths_from is not None  # ExportOptions checks this
        info = plan.ModelInfo(config.to_dict(), tokenizer, task, max_length, "pooler_output" in output_names)
        buckets, result, hist = plan.make_plan(
            plan.read_lengths(options.lengths_from, tokenizer), info, options.max_buckets
        )
        bucket_plan = {
            "lengths_from": str(options.lengths_from),
            "max_buckets": options.max_buckets,
            "histogram": hist,
            "expected": result.to_json(),
        }
    else:
        buckets = sorted({min(s, max_length) for s in options.seq_lengths})
    manifest: dict[str, Any] = {
        "schema_version": artifact.SCHEMA_VERSION,
        "torchship_version": __version__,
        "torch_version": torch.__version__,
        "transformers_version": loaded.transformers_version,
        "source": {"model": src.name, "path": str(src.path), "weights_sha256": src.weights_sha256()},
        "task": task,
        "architecture": {"model_type": config.model_type, "class": type(loaded.model).__name__},
        "inputs": list(input_names),
        "outputs": list(output_names),
        "output_axes": output_axes,
        "dtype": options.dtype,
        "device": options.device,
        "inference_only": True,
        "tied_weights": tied,
        "max_length": buckets[-1],
        "buckets": buckets,
        "tokenizer": tokenizer_info,
        "pooling": _pooling(st) if task == "feature-extraction" else None,
        "labels": _labels(config) if task in ("text-classification", "token-classification") else None,
        "problem_type": getattr(config, "problem_type", None),
        "plan": bucket_plan,
        "formats": {},
    }
    wrapper = ExportWrapper(model, input_names, output_names).eval()
    examples = {}
    for seq in buckets:  # batch_size rows, padding inside the batch; row 0 fills the bucket
        lengths = validate.case_lengths(buckets, seq, options.batch_size, seed=1)
        lengths[0] = seq
        encoded = validate.rows_at_lengths(tokenizer, lengths, seed=1)
        rows = list(range(len(lengths)))
        padded = pad_rows(encoded, rows, seq, input_names=input_names, pad_token_id=tokenizer_info["pad_token_id"])
        examples[seq] = tuple(padded[name].to(target) for name in input_names)

    format_seconds: dict[str, float] = {}
    seen: list[warnings.WarningMessage] = []
    entries: dict[str, list[dict[str, Any]]] = {}
    cache_key = _cache_key(manifest, config)
    for fmt in options.formats:
        steps.set_postfix_str(f"{fmt}: exporting")
        started = time.perf_counter()
        if fmt == "torchscript":
            seen += torchscript.export(wrapper, examples, tmp / torchscript.FILE)
            entries[fmt] = _entries(buckets, options, None)
        elif fmt == "neuron":
            from .formats import neuron

            seen += neuron.export(wrapper, examples, tmp)
            entries[fmt] = [
                {**e, "file": neuron.file_for(e["seq"]), "method": "forward"} for e in _entries(buckets, options, None)
            ]
        else:
            cache = (options.cache_dir or default_cache_dir()) / "aoti" / f"{cache_key}.pt2"
            seen += _export_dynamic(fmt, wrapper, _dynamic_example(examples), max_length, tmp, cache)
            entries[fmt] = [_dynamic_entry(fmt, max_length)]
        format_seconds[fmt] = round(time.perf_counter() - started, 3)
    manifest["formats"] = entries
    artifact.write_manifest(tmp, manifest)
    steps.update()

    staging = Predictor(tmp, artifact.read_manifest(tmp), LoadOptions(verify=False))
    batch = options.batch_size + 1
    reference_fn = eager_fn(ExportWrapper(reference, input_names, output_names).eval())
    tolerance: dict[str, float] = {}
    if model is not reference:  # measured, not guessed: the eager model in this dtype against float32
        tolerance = validate.measure_tolerance(staging, eager_fn(wrapper), reference_fn, batch=batch, grid=buckets)
        manifest["precision"] = {
            "dtype": options.dtype,
            "device": options.device,
            "reference": "the eager model in float32 on cpu",
            "tolerance": tolerance,
            "rule": "each output's max abs diff from the float32 reference <= atol + 1.5 x tolerance",
        }
    check = functools.partial(
        validate.check, staging, reference_fn, batch=batch, atol=options.atol, grid=buckets, tolerance=tolerance
    )
    notes: dict[str, str] = {}
    for fmt in options.formats:
        steps.set_postfix_str(f"{fmt}: validating parity")
        report = check(format=fmt)
        report.raise_on_failure(fmt)
        if fmt == "torchscript":
            entries[fmt] = _entries(buckets, options, report)
        else:
            entries[fmt][0]["parity"] = report.summary()
        if fmt == "onnx":
            notes["onnx_fusion"] = _try_onnx_fusion(tmp, staging, check, config, entries["onnx"][0])
        if fmt == "onnx" and quantized:
            steps.set_postfix_str("onnx: quantizing to int8")
            manifest["precision"] = _quantize_onnx(tmp, staging, reference_fn, batch, buckets, options.atol)
            report = check(format=fmt, tolerance=manifest["precision"]["tolerance"])
            report.raise_on_failure(fmt)
            entries[fmt][0]["parity"] = report.summary()
    steps.set_postfix_str("timing formats")
    manifest["timings"] = time_formats(staging, buckets)
    manifest["formats"] = entries
    manifest["export"] = {
        "options": {k: _jsonable(v) for k, v in asdict(options).items()},
        "seconds": None,
        "format_seconds": format_seconds,
        "notes": notes,
        "warnings": summarize_warnings(seen),
    }
    artifact.write_manifest(tmp, manifest)
    steps.update()
    steps.set_postfix_str("done")


def _dynamic_example(examples: dict[int, tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """A trace example at batch >= 2 and seq >= 16, so neither dynamic dim specializes to 0 or 1."""
    seq = min((s for s in examples if s >= 16), default=max(examples))
    example = examples[seq]
    return example if example[0].shape[0] >= 2 else tuple(torch.cat([x, x]) for x in example)


def _export_dynamic(
    fmt: str, wrapper: ExportWrapper, example: tuple[torch.Tensor, ...], max_length: int, tmp: Path, cache: Path
) -> list[warnings.WarningMessage]:
    if fmt == "aoti":
        from .formats import aoti

        return aoti.export(wrapper, example, wrapper.input_names, max_length, tmp / aoti.FILE, cache)
    from .formats import onnx

    return onnx.export(wrapper, example, wrapper.input_names, wrapper.output_names, max_length, tmp / onnx.FILE)


def _dynamic_entry(fmt: str, max_length: int) -> dict[str, Any]:
    from .formats import MAX_BATCH, PAD_MULTIPLE, aoti, onnx

    file = aoti.FILE if fmt == "aoti" else onnx.FILE
    return {
        "file": file,
        "batch": None,
        "seq": None,
        "max_batch": MAX_BATCH,
        "max_seq": max_length,
        "pad_multiple": PAD_MULTIPLE,
        "parity": None,
    }


def _try_onnx_fusion(
    tmp: Path, staging: Predictor, check: Callable[..., validate.ParityReport], config: Any, entry: dict[str, Any]
) -> str:
    """Apply ONNX Runtime's transformer fusion if it keeps parity; return what happened."""
    from .formats import onnx

    fused = tmp / "model.fused.onnx.tmp"
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    why = onnx.fuse(tmp / onnx.FILE, fused, model_type=config.model_type, num_heads=heads, hidden_size=hidden)
    if why is not None:
        return f"not fused: {why}"
    plain = staging.backends["onnx"]
    staging.backends["onnx"] = onnx.load(fused, staging.max_length, threads=None)
    report = check(format="onnx")
    if report.failures():
        staging.backends["onnx"] = plain
        fused.unlink()
        return f"not fused: the fused graph drifts to {max(report.failures().values()):.2e} > atol {report.atol:g}"
    fused.replace(tmp / onnx.FILE)
    entry["parity"] = report.summary()
    entry["fusion"] = "onnxruntime.transformers"
    return "fused with onnxruntime.transformers.optimizer; parity kept"


def _quantize_onnx(
    tmp: Path, staging: Predictor, reference_fn: validate.EagerFn, batch: int, buckets: list[int], atol: float
) -> dict[str, Any]:
    """Replace model.onnx with its int8 dynamic quantization; measure how far it lands from float32.

    The tolerance is measured on one sample of parity cases (seed 1); the parity check that follows uses
    another (seed 0), so a graph that only fits the sample it was measured on still fails.
    """
    from .formats import onnx

    quantized = tmp / "model.int8.onnx.tmp"
    onnx.quantize(tmp / onnx.FILE, quantized)
    quantized.replace(tmp / onnx.FILE)
    staging.backends["onnx"] = onnx.load(tmp / onnx.FILE, staging.max_length, threads=None)
    int8_fn = validate.run_format(staging, "onnx")
    tolerance = validate.measure_tolerance(staging, int8_fn, reference_fn, batch=batch, grid=buckets, seed=1)
    return {
        "dtype": "int8",
        "device": "cpu",
        "method": "onnxruntime.quantization.quantize_dynamic: int8 weights per output channel, activations "
        "quantized per tensor at run time",
        "reference": "the eager model in float32 on cpu",
        "tolerance": tolerance,
        "measured_on": "parity cases drawn with seed 1; validated on those with seed 0",
        "rule": f"each output's max abs diff from the float32 reference <= atol ({atol:g}) + 1.5 x tolerance",
    }


def default_cache_dir() -> Path:
    """Where compiled packages are reused from: $TORCHSHIP_CACHE, else ~/.cache/torchship."""
    env = os.environ.get("TORCHSHIP_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "torchship"


def _cache_key(manifest: dict[str, Any], config: Any) -> str:
    """Everything a compiled package depends on: weights, config, task, names, lengths, versions."""
    from .formats import MAX_BATCH

    keyed = {
        "weights": manifest["source"]["weights_sha256"],
        "config": config.to_dict(),
        "task": manifest["task"],
        "inputs": manifest["inputs"],
        "outputs": manifest["outputs"],
        "max_length": manifest["max_length"],
        "dtype": manifest["dtype"],
        "device": manifest["device"],
        "max_batch": MAX_BATCH,
        "torch": torch.__version__,
        "torchship": __version__,
    }
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return str(value) if isinstance(value, Path) else value


def _pooling(st: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in st.items() if k != "max_seq_length"}


def _labels(config: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in (config.id2label or {}).items()}


def _entries(buckets: list[int], options: ExportOptions, report: validate.ParityReport | None) -> list[dict[str, Any]]:
    return [
        {
            "file": torchscript.FILE,
            "method": torchscript.method_name(seq),
            "batch": None,
            "seq": seq,
            "traced_batch": options.batch_size,
            "parity": report.entry(seq) if report else None,
        }
        for seq in buckets
    ]


class EagerModel:
    """The eager transformers model, its tokenizer, config and spec, for a task."""

    def __init__(self, model: Any, tokenizer: Any, config: Any, spec: registry.ArchSpec, task: str) -> None:
        import transformers

        self.model, self.tokenizer, self.config, self.spec, self.task = model, tokenizer, config, spec, task
        self.transformers_version = transformers.__version__


def load_eager(src: source.ModelSource, task: str) -> EagerModel:
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(src.path)
    except (OSError, ValueError) as e:
        raise UnsupportedModelError(f"cannot read the config of {src.name}: {e}") from e
    spec = registry.get_spec(config.model_type)
    task = registry.infer_task(config) if task == "auto" else task
    if task not in spec.tasks:
        raise UnsupportedModelError(
            f"task {task!r} is not supported for {config.model_type}; supported: {', '.join(spec.tasks)}"
        )
    auto = getattr(transformers, registry.TASK_AUTO_CLASS[task])
    try:
        model = auto.from_pretrained(src.path, attn_implementation=spec.attn_implementation).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(src.path)
    except (OSError, ValueError) as e:
        raise UnsupportedModelError(f"cannot load {src.name} for task {task}: {e}") from e
    if not getattr(tokenizer, "is_fast", False):
        raise UnsupportedModelError(
            f"{src.name} has no fast tokenizer (tokenizer.json); torchship's runtime needs one. "
            "Convert it with transformers' AutoTokenizer(..., use_fast=True).save_pretrained(DIR)"
        )
    return EagerModel(model, tokenizer, config, spec, task)


def _max_length(config: Any, st: dict[str, Any], options: ExportOptions) -> int:
    limits = [int(getattr(config, "max_position_embeddings", 0) or 0) or 10**9]
    if st.get("max_seq_length"):
        limits.append(int(st["max_seq_length"]))
    if options.max_length is not None:
        if options.max_length > limits[0]:
            raise OptionsError(
                f"max_length {options.max_length} exceeds the model's max_position_embeddings {limits[0]}"
            )
        return options.max_length
    return min(max(options.seq_lengths), *limits)


def _save_tokenizer(tokenizer: Any, path: Path) -> dict[str, Any]:
    tokenizer.save_pretrained(str(path))
    if not (path / "tokenizer.json").is_file():
        raise ExportError(f"the tokenizer did not write {path / 'tokenizer.json'}; torchship needs a fast tokenizer")
    return {
        "dir": artifact.TOKENIZER_DIR,
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        "mask_token": tokenizer.mask_token,
        "cls_token": tokenizer.cls_token,
        "sep_token": tokenizer.sep_token,
        "do_lower_case": getattr(tokenizer, "do_lower_case", None),
        "padding": "torchship buckets (tokenizer.json padding disabled at load)",
    }


def _check_expected_ties(spec: registry.ArchSpec, tied: list[list[str]]) -> None:
    """Fail loudly if the spec's tie appears in only half (one name tied, the other not)."""
    names = {n for group in tied for n in group}
    for left, right in spec.tied_weights:
        hits = [any(n.endswith(x) for n in names) for x in (left, right)]
        if any(hits) and not all(hits):
            raise ExportError(f"{spec.model_type}: expected {left} and {right} to be tied together, found {tied}")


def _output_axes(model: Any, input_names: tuple[str, ...]) -> dict[str, list[str | None]]:
    """Output names in transformers' order, each dim named batch, seq or None (fixed), probed at two shapes."""
    shapes = []
    for batch, seq in ((2, 7), (3, 11)):
        probe = {n: torch.ones(batch, seq, dtype=torch.long) for n in input_names}
        with torch.no_grad():
            out = model(**probe, return_dict=True)
        shapes.append({k: tuple(v.shape) for k, v in out.items() if isinstance(v, torch.Tensor) and k != "loss"})
    axes: dict[str, list[str | None]] = {}
    for name, first in shapes[0].items():
        second = shapes[1][name]
        axes[name] = [
            registry.BATCH if (a, b) == (2, 3) else registry.SEQ if (a, b) == (7, 11) else None
            for a, b in zip(first, second, strict=True)
        ]
    return axes


def summarize_warnings(seen: list[warnings.WarningMessage]) -> list[dict[str, Any]]:
    """Group captured warnings by (category, first line, location) with a count, for the manifest."""
    groups: dict[tuple[str, str, str], int] = {}
    for w in seen:
        key = (w.category.__name__, str(w.message).splitlines()[0][:200], f"{Path(w.filename).name}:{w.lineno}")
        groups[key] = groups.get(key, 0) + 1
    return [{"category": c, "message": m, "where": where, "count": n} for (c, m, where), n in groups.items()]


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' logger and weight-loading bars while loading; restore afterwards."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def validate_artifact(
    path: str | Path, model: str | Path, *, atol: float | None, batch: int
) -> dict[str, validate.ParityReport]:
    """Re-run the parity check of every format of an existing artifact against the eager ``model``."""
    from .runtime import load

    predictor = load(path)
    src = source.resolve(model)
    with _quiet_transformers():
        loaded = load_eager(src, predictor.task)
    wrapper = ExportWrapper(loaded.model, predictor.input_names, predictor.output_names).eval()
    reports = {}
    for fmt in predictor.backends:
        recorded = predictor.manifest["formats"][fmt][0].get("parity") or {}
        tolerance = atol or float(recorded.get("atol", 1e-4))
        measured = (predictor.manifest.get("precision") or {}).get("tolerance") or {}
        reports[fmt] = validate.check(
            predictor, eager_fn(wrapper), batch=batch, atol=tolerance, format=fmt, tolerance=measured
        )
    return reports


def eager_fn(wrapper: ExportWrapper) -> validate.EagerFn:
    """The eager model as ``inputs by name -> outputs by name`` (on CPU), for parity checks."""
    where = next(wrapper.parameters()).device

    def eager(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            outputs = wrapper(*(inputs[n].to(where) for n in wrapper.input_names))
        return {name: out.cpu() for name, out in zip(wrapper.output_names, outputs, strict=True)}

    return eager
