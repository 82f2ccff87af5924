"""Export: checkpoint -> wrapper -> traced formats -> validated, checksummed artifact (atomic)."""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from tqdm import tqdm

from . import __version__, artifact, plan, registry, source, validate
from .errors import ArtifactError, ExportError, OptionsError, UnsupportedModelError
from .formats import torchscript
from .options import ExportOptions, LoadOptions
from .runtime import Predictor
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
        "dtype": "float32",
        "inference_only": True,
        "tied_weights": tied,
        "max_length": buckets[-1],
        "tokenizer": tokenizer_info,
        "pooling": _pooling(st) if task == "feature-extraction" else None,
        "labels": _labels(config) if task in ("text-classification", "token-classification") else None,
        "problem_type": getattr(config, "problem_type", None),
        "plan": bucket_plan,
        "formats": {},
    }
    wrapper = ExportWrapper(loaded.model, input_names, output_names).eval()
    examples = {}
    for seq in buckets:  # batch_size rows, padding inside the batch; row 0 fills the bucket
        lengths = validate.case_lengths(buckets, seq, options.batch_size, seed=1)
        lengths[0] = seq
        encoded = validate.rows_at_lengths(tokenizer, lengths, seed=1)
        rows = list(range(len(lengths)))
        padded = pad_rows(encoded, rows, seq, input_names=input_names, pad_token_id=tokenizer_info["pad_token_id"])
        examples[seq] = tuple(padded[name] for name in input_names)

    steps.set_postfix_str(f"tracing {len(buckets)} bucket(s)")
    fmt_started = time.perf_counter()
    seen = torchscript.export(wrapper, examples, tmp / torchscript.FILE)
    format_seconds = {"torchscript": round(time.perf_counter() - fmt_started, 3)}
    manifest["formats"] = {"torchscript": _entries(buckets, options, None)}
    artifact.write_manifest(tmp, manifest)
    steps.update()

    steps.set_postfix_str("validating parity")
    staging = Predictor(tmp, artifact.read_manifest(tmp), LoadOptions(verify=False))
    report = validate.check(staging, eager_fn(wrapper), batch=options.batch_size + 1, atol=options.atol)
    report.raise_on_failure("torchscript")
    manifest["formats"] = {"torchscript": _entries(buckets, options, report)}
    manifest["export"] = {
        "options": {k: _jsonable(v) for k, v in asdict(options).items()},
        "seconds": None,
        "format_seconds": format_seconds,
        "warnings": summarize_warnings(seen),
    }
    artifact.write_manifest(tmp, manifest)
    steps.update()
    steps.set_postfix_str("done")


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


def validate_artifact(path: str | Path, model: str | Path, *, atol: float | None, batch: int) -> validate.ParityReport:
    """Re-run the parity check of an existing artifact against the eager ``model``."""
    from .runtime import load

    predictor = load(path)
    src = source.resolve(model)
    with _quiet_transformers():
        loaded = load_eager(src, predictor.task)
    wrapper = ExportWrapper(loaded.model, predictor.input_names, predictor.output_names).eval()
    recorded = predictor.manifest["formats"][predictor.format][0].get("parity") or {}
    return validate.check(predictor, eager_fn(wrapper), batch=batch, atol=atol or float(recorded.get("atol", 1e-4)))


def eager_fn(wrapper: ExportWrapper) -> validate.EagerFn:
    """The eager model as ``inputs by name -> outputs by name``, for parity checks."""

    def eager(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            outputs = wrapper(*(inputs[n] for n in wrapper.input_names))
        return dict(zip(wrapper.output_names, outputs, strict=True))

    return eager
