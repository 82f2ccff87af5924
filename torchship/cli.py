"""The ``torchship`` command: parse arguments -> one options object -> call the library -> print.

Errors print as one line on stderr with exit code 1 (2 for usage errors); ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from .errors import OptionsError, TorchshipError
from .options import DEFAULT_FORMATS, DEFAULT_SEQ_LENGTHS, DTYPES, parse_int_list


def _parser() -> argparse.ArgumentParser:
    from . import formats, tasks

    parser = argparse.ArgumentParser(
        prog="torchship", description="Export Hugging Face encoders to validated artifacts and run them."
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("export", help="export a checkpoint to an artifact directory")
    p.add_argument("model", metavar="MODEL", help="checkpoint directory, cached hub id, or 'demo'")
    p.add_argument("output_dir", metavar="OUTPUT_DIR")
    p.add_argument("--task", default="auto", choices=["auto", *tasks.names()])
    p.add_argument(
        "--format",
        default="default",
        help=f"comma list of: {', '.join(formats.names())}; or all; default: {','.join(DEFAULT_FORMATS)}, those of "
        "them that --dtype and --device allow",
    )
    p.add_argument(
        "--seq-lengths", default=",".join(map(str, DEFAULT_SEQ_LENGTHS)), help="traced sequence-length buckets"
    )
    p.add_argument("--batch-size", type=int, default=2, help="batch the trace is taken at (batch stays dynamic)")
    p.add_argument(
        "--atol", type=float, default=None, help="max abs diff allowed against the eager model (default: the family's)"
    )
    p.add_argument("--max-length", type=int, default=None, help="cap on the longest bucket")
    p.add_argument(
        "--buckets", default="manual", choices=["manual", "auto"], help="auto: plan buckets from --lengths-from"
    )
    p.add_argument("--lengths-from", type=Path, help="texts (JSON lines) or lengths to plan buckets from")
    p.add_argument("--max-buckets", type=int, default=16, help="number of planned buckets (--buckets auto)")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT_DIR if it exists")
    p.add_argument("--device", default="cpu", help="trace and run on: cpu, cuda, cuda:N")
    p.add_argument(
        "--attn-implementation",
        choices=["eager", "sdpa"],
        default=None,
        help="attention to trace (default: the family's measured choice)",
    )
    p.add_argument(
        "--unpad",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="dense layers on real tokens only, inside the graph (default: wherever it applies, BERT-layout "
        "encoders in formats other than neuron; --no-unpad keeps the padded layout)",
    )
    p.add_argument(
        "--dtype",
        default="float32",
        choices=DTYPES,
        help="int8 (CPU): ONNX Runtime's dynamic int8 for onnx, torchao PT2E for aoti, NNCF for openvino",
    )
    p.add_argument(
        "--timing-budget", type=float, default=6.0, metavar="SECONDS",
        help="what timing several formats against each other may cost; points past it are estimated by FLOPs",
    )  # fmt: skip
    p.add_argument(
        "--min-cosine", type=float, default=0.995,
        help="int8 gate for embeddings: lowest cosine to float32 on real text (default 0.995)",
    )  # fmt: skip
    p.add_argument(
        "--gate-texts", type=Path, metavar="FILE",
        help="texts the int8 gate measures on (JSON lines or text lines; default: stdlib docstrings)",
    )  # fmt: skip
    p.add_argument(
        "--int8-scheme", choices=["dynamic", "weights", "static"],
        help="how int8 is quantized: dynamic (onnx, aoti), weights (int8 weights, activations quantized per group "
        "as they run; openvino's default) or static (activations calibrated at export; openvino)",
    )  # fmt: skip
    p.add_argument(
        "--min-top1", type=float, default=0.99,
        help="int8 gate for labels, tokens and spans: share of top-1 choices kept from float32 (default 0.99)",
    )  # fmt: skip

    p = sub.add_parser("predict", help="run texts through an artifact")
    p.add_argument("artifact", metavar="ARTIFACT")
    p.add_argument("texts", metavar="TEXT", nargs="*")
    p.add_argument("--file", type=Path, help="read texts from a file: one per line, or JSON lines with 'text'")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--truncation", default="warn", choices=["warn", "error"])
    _task_options(p)

    p = sub.add_parser("plan", help="plan FLOP-optimal sequence-length buckets from a length sample")
    p.add_argument("--lengths-from", type=Path, required=True, help="JSON lines of texts, text lines, or lengths")
    p.add_argument("--model", required=True, help="artifact, checkpoint directory, cached hub id, or 'demo'")
    p.add_argument("--max-buckets", type=int, default=16)
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("bench", help="benchmark every format of an artifact against baselines; JSON, Markdown, plots")
    p.add_argument("artifact", metavar="ARTIFACT")
    p.add_argument("--texts", type=Path, help="a corpus (JSON lines with 'text', or text lines) to embed end to end")
    p.add_argument("--shapes", default="1x16,1x128,8x128", help="BATCHxSEQ list")
    p.add_argument("--compare", default="eager,onnxruntime", help="baselines: eager, onnxruntime (empty: none)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads for every contender")
    p.add_argument("--output", type=Path, default=Path("bench"), help="directory for report.json, report.md, PNGs")
    p.add_argument("--seq-sweep", default="16,32,64,128,256", help="batch-1 lengths for the latency plot")
    p.add_argument("--batch-sweep", default="1,2,4,8,16", help="batch sizes for the throughput plot")
    p.add_argument("--min-time", type=float, default=0.5, help="seconds of timed runs per point (at least 5 runs)")

    p = sub.add_parser("serve", help="serve an artifact over HTTP with dynamic batching")
    p.add_argument(
        "artifacts",
        metavar="ARTIFACT",
        nargs="*",
        help="artifacts to serve, each named after its directory (or use --model NAME=PATH)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch-tokens", type=int, default=8192, help="padded tokens per batch")
    p.add_argument("--max-batch-size", type=int, default=64, help="items per batch")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits to fill")
    p.add_argument("--max-queue", type=int, default=1024, help="items waiting; more get 503")
    p.add_argument("--max-input-items", type=int, default=256, help="texts per request")
    p.add_argument("--max-input-chars", type=int, default=100_000, help="characters per text")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    p.add_argument("--truncate", action=argparse.BooleanOptionalAction, default=True,
                   help="cut over-long texts (listed in X-Truncated-Inputs), or refuse them with 413 (--no-truncate); "
                        "a request's own truncate field wins")  # fmt: skip
    p.add_argument(
        "--split-client-batches",
        action="store_true",
        help="run a request of more than --max-input-items texts in slices instead of refusing it",
    )
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="serve another artifact under NAME (repeatable); its routes are at /models/NAME/...",
    )
    p.add_argument("--workers", type=int, default=1, help="micro-batches run concurrently")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads")
    p.add_argument(
        "--calibrate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="re-time the artifact's formats here before serving (default: only where the export's timings do not "
        "describe this machine, threads or load); --no-calibrate never re-times",
    )
    p.add_argument("--calibrate-budget", type=float, default=15.0, metavar="SECONDS", help="time --calibrate may take")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="deploy on Ray Serve (join ADDRESS, or start a local Ray)")  # fmt: skip
    p.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas (with --ray)")

    p = sub.add_parser("embed", help="embed a corpus into a Parquet dataset (resumable), or one Parquet file")
    p.add_argument("artifact", metavar="ARTIFACT")
    p.add_argument("--input", required=True, help="a file, a directory or a glob of .jsonl, .jsonl.gz, .txt, .parquet")
    p.add_argument("--output", required=True, help="a directory (a resumable Parquet dataset), or FILE.parquet")
    p.add_argument("--text-field", default="text")
    p.add_argument("--id-field", default="id")
    p.add_argument("--batch-size", type=int, default=1024, help="rows embedded at a time")
    p.add_argument("--rows-per-part", type=int, default=10_000, help="rows per part file: the unit of resuming")
    p.add_argument("--on-error", default="raise", choices=["raise", "skip"], help="what a bad row does")
    p.add_argument("--overwrite", action="store_true", help="replace what --output holds instead of resuming it")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on Ray Data (join ADDRESS, or start a local Ray)")  # fmt: skip
    p.add_argument("--actors", default="2", help="Ray actor pool size: N, or MIN,MAX to autoscale")

    p = sub.add_parser("triton", help="write a Triton Inference Server model repository from an artifact")
    p.add_argument("artifact", metavar="ARTIFACT")
    p.add_argument("repo", metavar="REPO", help="the model repository directory (created; other models are kept)")
    p.add_argument(
        "--name", help="model name (default: the artifact's directory name); also NAME_torchscript, NAME_aoti"
    )
    p.add_argument("--max-batch-size", type=int, default=64, help="Triton's max_batch_size (dynamic batching)")
    p.add_argument("--max-queue-delay-us", type=int, default=2000, help="dynamic batching's max queue delay")
    p.add_argument("--instances", type=int, default=1, help="model instances (instance_group count)")
    p.add_argument("--kind", choices=["cpu", "gpu"], default=None, help="default: the artifact's device")
    p.add_argument("--threads", type=int, default=None, help="torch threads per text-in instance")
    p.add_argument("--truncate", action="store_true", help="cut over-long texts (default: refuse them; see README)")
    p.add_argument("--overwrite", action="store_true", help="replace models of the same names in REPO")

    p = sub.add_parser("tokenize", help="token ids as JSON lines, for torchship-run (C++) and other consumers")
    p.add_argument("artifact", metavar="ARTIFACT")
    p.add_argument("texts", metavar="TEXT", nargs="*")
    p.add_argument("--file", type=Path, help="read texts from a file: one per line, or JSON lines with 'text'")
    p.add_argument("--truncation", default="warn", choices=["warn", "error"])

    p = sub.add_parser("info", help="summarize an artifact's manifest")
    p.add_argument("artifact", metavar="ARTIFACT")
    p.add_argument("--json", action="store_true", help="print the whole manifest")

    p = sub.add_parser("cache", help="show the export cache (ONNX graphs, AOTInductor packages), or clear it")
    p.add_argument("--dir", type=Path, default=None, help="the cache (default: $TORCHSHIP_CACHE or ~/.cache/torchship)")
    p.add_argument("--clear", action="store_true", help="remove its entries (those no running export holds)")
    p.add_argument("--older-than", type=float, default=None, metavar="DAYS",
                   help="with --clear: only entries unused for more than DAYS days")  # fmt: skip

    p = sub.add_parser("validate", help="re-check an artifact's parity against the eager model")
    p.add_argument("artifact", metavar="ARTIFACT")
    p.add_argument("--model", required=True, help="checkpoint directory, cached hub id, or 'demo'")
    p.add_argument("--atol", type=float, default=None, help="default: the atol recorded at export")
    p.add_argument("--batch-size", type=int, default=3)
    return parser


def _task_options(p: argparse.ArgumentParser) -> None:
    """One flag per task option, from the tasks' own Param declarations (defaults and help included)."""
    from . import tasks

    seen: dict[str, list[str]] = {}
    for task in tasks.all_tasks():
        for param in task.params:
            seen.setdefault(param.flag, []).append(f"{task.name}: {param.help} (default {param.default})")
    for task in tasks.all_tasks():
        for param in task.params:
            if param.flag in seen:
                kinds: dict[str, dict[str, Any]] = {
                    "choice": {"choices": list(param.choices)}, "bool": {"type": _yes_no}, "number": {"type": float},
                }  # fmt: skip
                kind = kinds.get(param.kind, {"type": int})
                p.add_argument(param.flag, dest=param.name, default=None, help="; ".join(seen.pop(param.flag)), **kind)


def _yes_no(value: str) -> bool:
    if value.lower() in ("true", "yes", "1"):
        return True
    if value.lower() in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"{value!r} is not true or false")


def _task_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The task options given on the command line (unset ones keep the task's defaults)."""
    from . import tasks

    names = {p.name for t in tasks.all_tasks() for p in t.params}
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _show_warning(
    command: str, show: Any, message: Warning | str, category: type[Warning], filename: str, lineno: int,
    file: Any = None, line: str | None = None,
) -> None:  # fmt: skip
    """torchship's own warnings as one line the user reads (``torchship export: warning: ...``), not Python's
    file, line and source; any other package's as Python shows them (``show``)."""
    if issubclass(category, UserWarning) and Path(filename).resolve().is_relative_to(Path(__file__).parent):
        from tqdm import tqdm

        tqdm.write(f"torchship {command}: warning: {message}", file=file or sys.stderr)  # above a progress bar
    else:
        show(message, category, filename, lineno, file, line)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit's own deprecation notices
            warnings.filterwarnings("always", category=UserWarning, module="torchship")
            warnings.showwarning = functools.partial(_show_warning, args.command, warnings.showwarning)
            return int(_COMMANDS[args.command](args))
    except (TorchshipError, OSError) as e:
        if args.debug:
            raise
        message = str(e).replace("\n", "\n  ")
        print(f"torchship {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _export(args: argparse.Namespace) -> int:
    from . import export
    from .options import ExportOptions

    options = ExportOptions(
        task=args.task,
        formats=tuple(f.strip() for f in args.format.split(",") if f.strip()),
        seq_lengths=parse_int_list(args.seq_lengths, name="--seq-lengths"),
        batch_size=args.batch_size,
        atol=args.atol,
        max_length=args.max_length,
        buckets=args.buckets,
        lengths_from=args.lengths_from,
        max_buckets=args.max_buckets,
        overwrite=args.overwrite,
        progress=True,
        device=args.device,
        dtype=args.dtype,
        attn_implementation=args.attn_implementation,
        unpad=args.unpad,
        min_cosine=args.min_cosine,
        min_top1=args.min_top1,
        gate_texts=args.gate_texts,
        int8_scheme=args.int8_scheme,
        timing_budget_s=args.timing_budget,
    )
    path = export(args.model, args.output_dir, options)
    _print_info(path)
    return 0


def _read_texts(args: argparse.Namespace) -> list[str]:
    from .errors import OptionsError
    from .textfile import read_texts

    if args.file is not None and not args.file.is_file():
        raise OptionsError(f"--file {args.file} does not exist; give a file of texts, one per line or JSON lines")
    return list(args.texts) + (read_texts(args.file) if args.file is not None else [])


def _predict(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from . import load

    texts = _read_texts(args)
    predictor = load(args.artifact, truncation=args.truncation)
    kwargs = _task_kwargs(args)
    if not texts:
        predictor(texts)  # raises the InputError that names the problem
    chunk = 256  # a progress bar over chunks; each chunk is still sorted into buckets inside
    starts = range(0, len(texts), chunk)
    parts = [
        predictor(texts[i : i + chunk], **kwargs)
        for i in tqdm(starts, desc="predict", unit="chunk", disable=len(starts) < 2, file=sys.stderr)
    ]
    if predictor.task_def.embeds:
        results = np.concatenate(parts)
        rows: list[Any] = results.tolist()
        if args.json:
            print(json.dumps({"embeddings": rows, "dim": results.shape[1]}))
        else:
            for text, row in zip(texts, rows, strict=True):
                head = ", ".join(f"{x:+.4f}" for x in row[:6])
                print(f"{text[:50]!r:54} [{head}, ...] dim={len(row)}")
        return 0
    outputs = [predictor.task_def.to_json(r) for part in parts for r in part]
    print(json.dumps(outputs, indent=None if args.json else 2))
    return 0


def _plan(args: argparse.Namespace) -> int:
    from . import plan

    info = plan.model_info(args.model, args.max_length)
    lengths = plan.read_lengths(args.lengths_from, info.tokenizer)
    edges, result, _ = plan.make_plan(lengths, info, args.max_buckets)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(plan.format_table(result))
        print(f"\nexport with: torchship export MODEL OUT --seq-lengths {','.join(map(str, edges))}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench import BenchOptions, parse_shapes, run_bench

    options = BenchOptions(
        shapes=parse_shapes(args.shapes),
        seq_sweep=parse_int_list(args.seq_sweep, name="--seq-sweep"),
        batch_sweep=parse_int_list(args.batch_sweep, name="--batch-sweep"),
        compare=tuple(c.strip() for c in args.compare.split(",") if c.strip()),
        threads=args.threads,
        texts=args.texts,
        min_time=args.min_time,
        output=args.output,
    )
    run_bench(args.artifact, options)
    print(f"wrote {args.output / 'report.json'}, {args.output / 'report.md'} and plots")
    return 0


def _tokenize(args: argparse.Namespace) -> int:
    from . import load

    predictor = load(args.artifact, truncation=args.truncation)
    encoded = predictor.encode(_read_texts(args))
    for ids, types in zip(encoded.ids, encoded.type_ids, strict=True):
        line = {"input_ids": ids.tolist(), "attention_mask": [1] * len(ids)}
        if "token_type_ids" in predictor.input_names:
            line["token_type_ids"] = types.tolist()
        print(json.dumps(line))
    return 0


def _embed(args: argparse.Namespace) -> int:
    from .embed import EmbedOptions, embed_dataset, embed_file

    actors = parse_int_list(args.actors, name="--actors")
    if len(actors) > 2:
        raise TorchshipError(f"--actors {args.actors}: give N, or MIN,MAX")
    options = EmbedOptions(
        text_field=args.text_field,
        id_field=args.id_field,
        batch_size=args.batch_size,
        rows_per_part=args.rows_per_part,
        on_error=args.on_error,
        ray=args.ray is not None,
        ray_address=args.ray or None,
        actors=(actors[0], actors[-1]),
        overwrite=args.overwrite,
        progress=True,
    )
    if args.output.lower().endswith(".parquet"):
        summary = embed_file(args.artifact, args.input, Path(args.output), options)
        print(
            f"wrote {args.output}: {summary['embedded']} of {summary['rows']} rows embedded (dim {summary['dim']}), "
            f"{summary['skipped']} skipped, {summary['truncated']} truncated to {summary['max_length']} tokens, "
            f"{summary['seconds']:.1f} s, {summary['rows_per_s']:.0f} rows/s"
        )
        return 0
    summary = embed_dataset(args.artifact, args.input, args.output, options)
    resumed = f"; {summary['resumed_parts']} of {summary['parts']} parts were done before" if summary[
        "resumed_parts"] else ""  # fmt: skip
    print(
        f"wrote {args.output}: {summary['rows']} rows in {summary['parts']} parts, {summary['embedded']} embedded, "
        f"{summary['skipped']} skipped, {summary['truncated']} truncated to {summary['max_length']} tokens; "
        f"{summary['seconds']:.1f} s, {summary['rows_per_s']:.0f} rows/s{resumed}"
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .options import ServeOptions
    from .serve import serve

    options = ServeOptions(
        host=args.host,
        port=args.port,
        max_batch_tokens=args.max_batch_tokens,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_input_items=args.max_input_items,
        max_input_chars=args.max_input_chars,
        api_key=args.api_key,
        truncate=args.truncate,
        split_client_batches=args.split_client_batches,
        workers=args.workers,
        threads=args.threads,
        calibrate=args.calibrate,
        calibrate_budget_s=args.calibrate_budget,
    )
    models = _served_models(args.artifacts, args.model)
    if args.ray is not None:
        from .serve import ray_serve

        absolute = {name: str(Path(path).absolute()) for name, path in models.items()}
        ray_serve.run(absolute, options, replicas=args.replicas, address=args.ray or None)
        return 0
    return serve(models, options)


def _served_models(artifacts: list[str], named: list[str]) -> dict[str, str]:
    """``{name: path}`` from positional artifacts (named after their directories) and ``--model NAME=PATH``."""
    models: dict[str, str] = {}
    pairs = [(Path(a).resolve().name, a) for a in artifacts]
    for spec in named:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise OptionsError(f"--model {spec!r} is not NAME=PATH; for example --model minilm=./minilm")
        pairs.append((name, path))
    for name, path in pairs:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise OptionsError(
                f"model name {name!r} is not usable in a URL path; use letters, digits, '.', '_' and '-' "
                "(--model NAME=PATH)"
            )
        if name in models:
            raise OptionsError(f"two artifacts are both named {name!r}; name them apart with --model NAME=PATH")
        models[name] = path
    if not models:
        raise OptionsError("serve needs an artifact: torchship serve ARTIFACT [ARTIFACT ...] or --model NAME=PATH")
    return models


def _print_info(path: str | Path) -> None:
    from .artifact import read_manifest

    m = read_manifest(Path(path))
    print(f"artifact      {path}")
    print(f"source        {m.source['model']}")
    print(f"task          {m.task} ({m.architecture['class']}, model_type {m.architecture['model_type']})")
    print(f"inputs        {', '.join(m.inputs)}")
    print(f"outputs       {', '.join(m.outputs)}")
    print(f"dtype         {m.dtype} on {m.device}   max_length {m.max_length}")
    print(f"inference     only (tied weights cloned: {len(m.tied_weights)} group(s))")
    if m.precision:
        tol = ", ".join(f"{k} {v:.2e}" for k, v in m.precision["tolerance"].items())
        print(f"precision     measured against float32: {tol}")
        if "min_cosine" in m.precision:
            cos = ", ".join(f"{k} {v:.4f}" for k, v in m.precision["min_cosine"].items())
            print(f"              min cosine: {cos}")
        for said in ("int8", "bfloat16"):
            if said in (m.export or {}).get("notes", {}):
                print(f"              {m.export['notes'][said]}")
    if m.plan:
        expected = m.plan["expected"]["planned"]
        print(
            f"plan          buckets planned from {m.plan['lengths_from']}: expected padding waste "
            f"{expected['waste']:.1%}, FLOPs {expected['flops_ratio']:.3f}x unpadded"
        )
    if m.pooling:
        print(f"pooling       {', '.join(f'{k}={v}' for k, v in m.pooling.items())}")
    seconds = m.export.get("format_seconds", {})
    for fmt, entries in m.formats.items():
        took = f", exported in {seconds[fmt]:.1f} s" if fmt in seconds else ""
        for e in entries:
            parity = e.parity or {}
            worst = max(parity.get("max_abs_diff", {}).values(), default=float("nan"))
            status = "ok" if parity.get("passed") else "FAILED"
            if e.seq is None:
                shape = f"dynamic batch <= {e.max_batch}, seq <= {e.max_seq} (pad to x{e.pad_multiple})"
                print(f"{fmt:13} {e.file}  {shape}  parity {status} max {worst:.2e}{took}")
            else:
                if e is entries[0]:
                    print(f"{fmt:13} {len(entries)} bucket(s), batch dynamic{took}")
                print(f"  seq {e.seq:>5}  {e.file}:{e.method}  parity {status} max {worst:.2e}")
    timings = m.timings
    if timings and len(m.formats) > 1:
        medians = timings.median_ms
        print(f"timings (median ms, {timings.threads} threads; the runtime picks the fastest per shape):")
        if timings.machine:
            busy = timings.others_load
            busy_text = "" if busy is None else f"; other processes used {busy:.0%} of the CPUs"
            at_once = f", {timings.workers} micro-batches at once" if timings.workers > 1 else ""
            print(f"  timed on {timings.machine.get('cpu')}, {timings.machine.get('cores')} cores{at_once}{busy_text}")
        for batch in timings.batch:
            for seq in timings.seq:
                key = f"{batch}x{seq}"
                row = {fmt: medians[fmt][key] for fmt in medians if key in medians[fmt]}
                best = min(row, key=row.__getitem__)
                cells = "  ".join(f"{fmt} {ms:8.2f}" for fmt, ms in row.items())
                print(f"  {key:>8}  {cells}  -> {best}")
    size = sum((Path(path) / f).stat().st_size for f in m.files)
    print(f"files         {len(m.files)}, {size / 1e6:.1f} MB, sha256-checked on load")


def _triton(args: argparse.Namespace) -> int:
    from .triton import TritonOptions, write_repository

    options = TritonOptions(
        name=args.name, max_batch_size=args.max_batch_size, max_queue_delay_us=args.max_queue_delay_us,
        instances=args.instances, kind=args.kind, threads=args.threads, truncate=args.truncate,
        overwrite=args.overwrite,
    )  # fmt: skip
    for path in write_repository(args.artifact, args.repo, options):
        print(f"wrote {path}: {(path / 'README.md').read_text().splitlines()[2]}")
    print(f"start it: tritonserver --model-repository {Path(args.repo).resolve()}")
    return 0


def _info(args: argparse.Namespace) -> int:
    if args.json:
        from .artifact import read_manifest

        print(json.dumps(read_manifest(Path(args.artifact)).to_json(), indent=2))
    else:
        _print_info(args.artifact)
    return 0


def _validate(args: argparse.Namespace) -> int:
    from .exporter import validate_artifact

    reports = validate_artifact(args.artifact, args.model, atol=args.atol, batch=args.batch_size)
    for fmt, report in reports.items():
        for seq, diffs in report.max_abs_diff.items():
            for name, diff in diffs.items():
                allowed = report.allowed(name)  # atol, plus 1.5 x the measured tolerance for reduced precision
                mark = "ok" if diff <= allowed else "FAIL"
                print(f"{fmt:12} seq {seq:>5}  {name:20} max abs diff {diff:.3e}  (allowed {allowed:.3g})  {mark}")
    for fmt, report in reports.items():
        report.raise_on_failure(fmt)
    print("parity ok")
    return 0


def _cache(args: argparse.Namespace) -> int:
    from . import cache

    root = args.dir or cache.default_dir()
    if args.older_than is not None and not args.clear:
        raise OptionsError("--older-than goes with --clear: torchship cache --clear --older-than DAYS")
    limit = cache.max_bytes()
    if args.clear:
        removed = cache.clear(root, older_than_days=args.older_than)
        print(f"removed {len(removed)} entries, {sum(e.size for e in removed) / 2**20:.1f} MiB, from {root}")
    found = cache.entries(root)
    total = sum(e.size for e in found)
    print(f"{root}: {len(found)} entries, {total / 2**20:.1f} MiB of {limit / 2**30:g} GiB (${cache.ENV_MAX})")
    now = time.time()
    for e in reversed(found):  # most recently used first
        print(f"  {e.format:6} {e.path.name:40} {e.size / 2**20:9.1f} MiB  used {(now - e.used) / 86400:.1f} days ago")
    return 0


_COMMANDS = {
    "bench": _bench,
    "cache": _cache,
    "embed": _embed,
    "export": _export,
    "predict": _predict,
    "plan": _plan,
    "serve": _serve,
    "tokenize": _tokenize,
    "triton": _triton,
    "info": _info,
    "validate": _validate,
}

if __name__ == "__main__":
    raise SystemExit(main())
