"""Export: checkpoint -> wrapper -> traced formats -> validated, checksummed artifact (atomic)."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
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

from . import __version__, artifact, cache, device, formats, machine, plan, registry, source, tasks, unpad, validate
from .errors import ArtifactError, ExportError, OptionsError, UnsupportedModelError
from .formats.int8 import PAYS
from .machine import DISTURBED
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
            "here: ~6x slower than float32 for all-MiniLM-L6-v2); for reduced precision on CPU use bfloat16 where "
            "the CPU has it (AMX, AVX512-BF16), float32 elsewhere",
            UserWarning,
            stacklevel=3,  # torchship.export's caller
        )
    for fmt in options.formats:
        formats.get(fmt).require()
    gate = _gate_texts(options)  # a bad file fails here, before the slow part
    src = source.resolve(model)
    with (
        _quiet_transformers(),
        tqdm(total=3, desc="export", unit="step", disable=not options.progress, file=sys.stderr) as steps,
    ):
        steps.set_postfix_str("loading model")
        loaded = load_eager(src, options.task, options.attn_implementation)
        steps.update()
        with artifact.atomic_dir(output_dir, overwrite=options.overwrite) as tmp:
            manifest = _build(tmp, src, loaded, options, steps, gate)
            manifest.export["seconds"] = round(time.perf_counter() - started, 3)
            artifact.write_manifest(tmp, manifest)  # hashed and written once
    return output_dir


TORCH_FORMATS = {"torchscript", "aoti"}  # the formats PyTorch's own CPU kernels run: bfloat16 is theirs to pay for


def _gate_texts(options: ExportOptions) -> list[str] | None:
    """The texts of ``options.gate_texts``, read and checked; None for the default sample."""
    if options.gate_texts is None:
        return None
    from .textfile import read_texts

    texts = [t for t in read_texts(options.gate_texts) if t.strip()]
    if not texts:
        raise OptionsError(f"--gate-texts {options.gate_texts} holds no text; give JSON lines or lines of text")
    return texts


def _build(
    tmp: Path, src: source.ModelSource, loaded: EagerModel, options: ExportOptions, steps: tqdm,
    gate: list[str] | None = None,
) -> artifact.Manifest:  # fmt: skip
    """Write tokenizer, config and every format into ``tmp``; validate them; return the manifest to write."""
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
    quantized = options.dtype == "int8"  # a format's own rewrite of the float32 graph, after export
    target, dtype = device.resolve(options.device), device.dtype_of("float32" if quantized else options.dtype)
    model = reference if (target.type, dtype) == ("cpu", torch.float32) else copy.deepcopy(reference).to(target, dtype)
    output_names = tuple(output_axes)
    max_length = _max_length(config, spec, st, options)
    atol = options.atol if options.atol is not None else spec.atol
    bucket_plan: dict[str, Any] | None = None
    if options.buckets == "auto":
        assert options.lengths_from is not None  # ExportOptions checks this
        info = plan.ModelInfo(config.to_dict(), tokenizer, task.name, max_length, "pooler_output" in output_names)
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
        # every format covers max_length: a --max-length above the largest bucket is a bucket of its own
        buckets = sorted({min(s, max_length) for s in options.seq_lengths} | {max_length})
    unpadded = options.unpad  # None: wherever the layout and every format allow it (measured: README, "--unpad")
    if unpadded is None:
        unpadded = unpad.base_of(model) is not None and not any(formats.get(f).unpads(options) for f in options.formats)
    manifest = artifact.Manifest(
        task=task.name,
        architecture={
            "model_type": config.model_type,
            "class": type(loaded.model).__name__,
            "attn_implementation": str(loaded.model.config._attn_implementation),
            "dense_layers": "real tokens only" if unpadded else "padded",
        },
        inputs=list(input_names),
        outputs=list(output_names),
        output_axes=output_axes,
        max_length=buckets[-1],
        buckets=buckets,
        tokenizer=tokenizer_info,
        torchship_version=__version__,
        torch_version=torch.__version__,
        transformers_version=loaded.transformers_version,
        source={"model": src.name, "path": str(src.path), "weights_sha256": src.weights_sha256()},
        dtype=options.dtype,
        device=options.device,
        tied_weights=tied,
        problem_type=getattr(config, "problem_type", None),
        plan=bucket_plan,
        prompts=st["prompts"] if task.takes_prompts else {},
        default_prompt_name=st["default_prompt_name"] if task.takes_prompts else None,
        **task.export_info(config, st),
    )
    # dense layers on real tokens only; parity is still checked against the unchanged eager model
    wrapper = ExportWrapper(unpad.unpadded(model) if unpadded else model, input_names, output_names).eval()
    examples = {}
    for seq in buckets:  # batch_size rows, padding inside the batch; row 0 fills the bucket
        lengths = validate.case_lengths(buckets, seq, options.batch_size, seed=1)
        lengths[0] = seq
        encoded = validate.rows_at_lengths(tokenizer, lengths, seed=1)
        rows = list(range(len(lengths)))
        padded = pad_rows(encoded, rows, seq, input_names=input_names, pad_token_id=tokenizer_info.pad_token_id)
        examples[seq] = tuple(padded[name].to(target) for name in input_names)
    job = formats.ExportJob(
        wrapper=wrapper, examples=examples, input_names=input_names, output_names=output_names,
        max_length=buckets[-1], out=tmp,
        cache_dir=options.cache_dir or cache.default_dir(), cache_key=_cache_key(manifest, config, quantized),
        options=options, model_type=config.model_type, ort_fusion=spec.ort_fusion,
        num_heads=int(getattr(config, "num_attention_heads", 0) or 0),
        hidden_size=int(getattr(config, "hidden_size", 0) or 0),
    )  # fmt: skip

    format_seconds: dict[str, float] = {}
    seen: list[warnings.WarningMessage] = []
    for name in options.formats:
        steps.set_postfix_str(f"{name}: exporting")
        started = time.perf_counter()
        fmt = formats.get(name)
        seen += fmt.export(job)
        manifest.formats[name] = fmt.entries(job)
        format_seconds[name] = round(time.perf_counter() - started, 3)
    steps.update()

    staging = Predictor(tmp, manifest, LoadOptions(verify=False))
    batch = options.batch_size + 1
    reference_fn = eager_fn(ExportWrapper(reference, input_names, output_names).eval())
    parity_fn = validate.memoized(reference_fn)  # every format's parity checks run the same cases
    tolerance: dict[str, float] = {}
    if model is not reference:  # measured, not guessed: the eager model in this dtype against float32
        tolerance = validate.measure_tolerance(staging, eager_fn(wrapper), parity_fn, batch=batch, grid=buckets)
        manifest.precision = {
            "dtype": options.dtype,
            "device": options.device,
            "reference": "the eager model in float32 on cpu",
            "tolerance": tolerance,
            "rule": "each output's max abs diff from the float32 reference <= atol + 1.5 x tolerance",
        }
    notes: dict[str, str] = {}
    if (target.type, options.dtype) == ("cpu", "bfloat16") and set(options.formats) & TORCH_FORMATS:
        pace = _bfloat16_pace(config)
        assert manifest.precision is not None  # set above: bfloat16 is measured against float32
        manifest.precision["bfloat16_vs_float32"] = pace
        shape, ratio = pace["shape"], pace["ratio"]
        if ratio >= PAYS:
            notes["bfloat16"] = f"bfloat16 pays on this CPU: {ratio:.2f}x float32 ({shape})"
        else:
            native = machine.native_bfloat16()
            why = " (no AMX or AVX512-BF16: PyTorch converts to float32 and back)" if native is False else ""
            notes["bfloat16"] = (
                f"bfloat16 does not pay on this CPU{why}: {ratio:.2f}x float32 ({shape}); export float32"
            )
            warnings.warn(notes["bfloat16"], UserWarning, stacklevel=4)  # torchship.export's caller
    judges: dict[str, validate.Judge] = {}  # built on first use (the int8 gate): each runs the eager model once

    def judge(kind: str = "gate") -> validate.Judge:
        if kind not in judges:
            cosine = staging.task_def.agreement == "cosine"
            minimum = options.min_cosine if cosine else options.min_top1
            texts: list[str] | None
            source: str | None
            if kind == "stress":
                texts, source = validate.stress_texts(), validate.STRESS_SOURCE
            else:  # "sample": what int8's sensitivities are measured on (int8.search), a quarter of the gate's
                texts, source = gate, str(options.gate_texts) if gate else None
                if kind == "sample":
                    texts = (texts or validate.gate_texts())[:: validate.SAMPLE_EVERY]
            judges[kind] = validate.Judge(staging, reference_fn, minimum=minimum, texts=texts, source=source)
        return judges[kind]

    for name in options.formats:
        steps.set_postfix_str(f"{name}: validating parity")
        fmt = formats.get(name)

        def check(tol: dict[str, float] | None = None, name: str = name) -> validate.ParityReport:
            return validate.check(
                staging, parity_fn, batch=batch, atol=atol, grid=buckets, tolerance=tol or tolerance, format=name
            )

        def measure(name: str = name) -> dict[str, float]:
            ran = validate.run_format(staging, name)
            return validate.measure_tolerance(staging, ran, parity_fn, batch=batch, grid=buckets, seed=1)

        def cosine(name: str = name) -> dict[str, float]:
            ran = validate.run_format(staging, name)
            return validate.measure_cosine(staging, ran, parity_fn, batch=batch, grid=buckets, seed=1)

        def agreement(name: str = name, *, sample: bool = False) -> validate.Agreement:
            return judge("sample" if sample else "gate")(validate.run_format(staging, name))

        def unusual(name: str = name) -> validate.Agreement:
            return judge("stress")(validate.run_format(staging, name))

        def use(backend: formats.Backend, name: str = name) -> None:
            staging.engine.backends[name] = backend

        report = check()
        report.raise_on_failure(name)
        entries = manifest.formats[name]
        for entry in entries:  # static formats: a record per bucket; dynamic ones: one over every shape
            entry.parity = report.entry(entry.seq) if entry.seq is not None else report.summary()

        def calibration() -> list[dict[str, torch.Tensor]]:
            return validate.calibration_batches(staging, validate.calibration_texts())

        def batches() -> list[dict[str, torch.Tensor]]:
            return judge("sample").batches

        refined = fmt.refine(job, entries[0], formats.Refiner(use, lambda tolerance=None, c=check: c(tolerance),
                                                               measure, cosine, agreement, calibration,
                                                               unusual, batches))  # fmt: skip
        for key, note in refined.get("notes", {}).items():  # a format's note joins the torch formats' one
            notes[key] = f"{notes[key]}; {name}: {note}" if key in notes else note
        if "precision" in refined:
            manifest.precision = refined["precision"]
    steps.set_postfix_str("timing formats")
    for name in options.formats:  # every format is timed, whichever the staging engine loaded so far
        staging.engine.backend(name)
    if len(options.formats) > 1:
        manifest.timings = time_formats(staging.engine, buckets, total_s=options.timing_budget_s)
        busy = manifest.timings.others_load
        if busy is not None and busy >= DISTURBED:
            notes["timings"] = (
                f"other processes used {busy:.0%} of the CPUs while the formats were timed: a load on a quiet "
                "machine re-times them (LoadOptions.calibrate=None); or export again on a quiet machine"
            )
    manifest.export = {
        "options": {k: _jsonable(v) for k, v in asdict(options).items()},
        "seconds": None,
        "format_seconds": format_seconds,
        "notes": notes,
        "warnings": summarize_warnings(seen),
    }
    steps.update()
    steps.set_postfix_str("done")
    return manifest


def _bfloat16_pace(config: Any) -> dict[str, Any]:
    """How fast this CPU runs the model's largest dense layer in bfloat16 against float32 (machine.bfloat16_pace),
    for the manifest: ``{"shape", "ratio"}``."""
    hidden = int(getattr(config, "hidden_size", 0) or 0) or 768
    intermediate = int(getattr(config, "intermediate_size", 0) or 0) or 4 * hidden
    ratio = machine.bfloat16_pace(hidden, intermediate)
    return {"shape": f"dense 128x{hidden}->{intermediate}, the fastest of 5 runs and 0.05 s", "ratio": round(ratio, 3)}


def _cache_key(manifest: artifact.Manifest, config: Any, quantized: bool = False) -> str:
    """Everything an exported graph or compiled package depends on: weights, config, task, attention, dense
    layout, in-graph pooling, names, lengths, versions of what exports. ``quantized``: the float32 graph an int8
    export quantizes, the same as a float32 export's."""
    from .formats import MAX_BATCH

    keyed = {
        "weights": manifest.source["weights_sha256"],
        "config": {k: v for k, v in config.to_dict().items() if k != "_name_or_path"},  # where it lies: not keyed
        "task": manifest.task,
        "architecture": manifest.architecture,  # the attention implementation traced, the dense layers' layout
        "unpad revision": unpad.REVISION if manifest.architecture.get("dense_layers") == "real tokens only" else None,
        "pooling": manifest.pooling,  # SPLADE pools inside the graph
        "inputs": manifest.inputs,
        "outputs": manifest.outputs,
        "max_length": manifest.max_length,
        "dtype": "float32" if quantized else manifest.dtype,
        "device": manifest.device,
        "max_batch": MAX_BATCH,
        "torch": torch.__version__,
        "torchship": __version__,
        "onnx exporter": [_installed(p) for p in ("onnxscript", "onnx")],
    }
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _installed(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return str(value) if isinstance(value, Path) else value


class EagerModel:
    """The eager transformers model, its tokenizer, config and spec, for a task."""

    def __init__(self, model: Any, tokenizer: Any, config: Any, spec: registry.ArchSpec, task: tasks.Task) -> None:
        import transformers

        self.model, self.tokenizer, self.config, self.spec, self.task = model, tokenizer, config, spec, task
        self.transformers_version = transformers.__version__


def load_eager(src: source.ModelSource, task_name: str, attn_implementation: str | None = None) -> EagerModel:
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(src.path)
    except (OSError, ValueError) as e:
        raise UnsupportedModelError(f"cannot read the config of {src.name}: {e}") from e
    spec = registry.get_spec(config.model_type)
    task = tasks.infer(getattr(config, "architectures", None) or []) if task_name == "auto" else tasks.get(task_name)
    if spec.tasks is not None and task.name not in spec.tasks:
        raise UnsupportedModelError(
            f"task {task.name!r} is not supported for {config.model_type}; supported: {', '.join(spec.tasks)}"
        )
    auto = getattr(transformers, task.auto_class)
    try:
        attn = attn_implementation or spec.attn_implementation
        model = task.graph(auto.from_pretrained(src.path, attn_implementation=attn), src.sentence_transformers())
        model = model.eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(src.path)
    except (OSError, ValueError) as e:
        raise UnsupportedModelError(f"cannot load {src.name} for task {task.name}: {e}") from e
    if not getattr(tokenizer, "is_fast", False):
        raise UnsupportedModelError(
            f"{src.name} has no fast tokenizer (tokenizer.json); torchship's runtime needs one. "
            "Convert it with transformers' AutoTokenizer(..., use_fast=True).save_pretrained(DIR)"
        )
    return EagerModel(model, tokenizer, config, spec, task)


def _max_length(config: Any, spec: registry.ArchSpec, st: dict[str, Any], options: ExportOptions) -> int:
    """The longest sequence to export: --max-length, else the longest bucket, within what the model can take
    (its position embeddings, less the RoBERTa-style offset) and sentence-transformers' max_seq_length."""
    positions = spec.max_positions(config)
    if options.max_length is not None:
        if positions is not None and options.max_length > positions:
            why = f"max_position_embeddings {config.max_position_embeddings}"
            if spec.position_padding is not None:
                why += f", less {config.max_position_embeddings - positions}: positions start after the padding index"
            raise OptionsError(
                f"max_length {options.max_length} exceeds the {positions} positions this {config.model_type} "
                f"checkpoint can take ({why}); pass --max-length {positions} or less"
            )
        return options.max_length
    limits = [positions or 10**9]
    if st.get("max_seq_length"):
        limits.append(int(st["max_seq_length"]))
    return min(max(options.seq_lengths), *limits)


def _save_tokenizer(tokenizer: Any, path: Path) -> artifact.TokenizerInfo:
    tokenizer.save_pretrained(str(path))
    if not (path / "tokenizer.json").is_file():
        raise ExportError(f"the tokenizer did not write {path / 'tokenizer.json'}; torchship needs a fast tokenizer")
    return artifact.TokenizerInfo(
        dir=artifact.TOKENIZER_DIR,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        mask_token=tokenizer.mask_token,
        cls_token=tokenizer.cls_token,
        sep_token=tokenizer.sep_token,
        do_lower_case=getattr(tokenizer, "do_lower_case", None),
    )


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
    """Silence transformers' logger and weight-loading bars while loading; restore afterwards. Where torchao is
    installed (the int8 extra), transformers imports it while loading, and torchao logs that its kernels for other
    platforms do not load, and torch's pytree that torchao registers enums it no longer needs to: quiet too."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            # torchao 0.18's sources, compiled on first import (SyntaxWarning from Python 3.12)
            warnings.filterwarnings("ignore", "invalid escape sequence", DeprecationWarning)
            warnings.filterwarnings("ignore", "invalid escape sequence", SyntaxWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


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
    measured = (predictor.manifest.precision or {}).get("tolerance") or {}
    for fmt in predictor.engine.available:  # every format, loaded or not yet
        recorded = predictor.manifest.formats[fmt][0].parity or {}
        tolerance = atol or float(recorded.get("atol", 1e-4))
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
