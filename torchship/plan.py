"""``torchship plan``: length sample -> histogram -> FLOP-optimal buckets, compared with the alternatives.

The sample is JSON lines of texts (``{"text": ...}``), plain text lines, or integer lengths (one per line,
or one JSON list). Texts are tokenized with the model's own tokenizer, special tokens included.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from . import buckets
from .artifact import MANIFEST, read_manifest
from .errors import OptionsError
from .flops import flops
from .textfile import read_texts


@dataclass(frozen=True)
class ModelInfo:
    """What planning needs from a model or an artifact: its config, tokenizer, task and length cap."""

    config: dict[str, Any]
    tokenizer: Tokenizer
    task: str
    max_length: int
    pooler: bool

    def cost(self, seq: int) -> float:
        return float(flops(self.config, 1, seq, self.task, pooler=self.pooler))


def model_info(model: str | Path, max_length: int | None = None) -> ModelInfo:
    """Read an artifact directory (no transformers needed) or resolve a checkpoint."""
    path = Path(model)
    if (path / MANIFEST).is_file():
        manifest = read_manifest(path)
        config = json.loads((path / "config.json").read_text())
        tokenizer = Tokenizer.from_file(str(path / manifest.tokenizer.dir / "tokenizer.json"))
        cap = max_length or manifest.max_length
        return ModelInfo(config, tokenizer, manifest.task, cap, "pooler_output" in manifest.outputs)
    from . import registry, source, tasks

    src = source.resolve(model)
    config = json.loads((src.path / "config.json").read_text())
    tok_file = src.path / "tokenizer.json"
    if not tok_file.is_file():
        raise OptionsError(f"{src.name} has no tokenizer.json; export it first and plan against the artifact")
    limits = [registry.spec_of(config).max_positions(config) or 512]
    st = source.read_sentence_transformers(src.path)
    if st.get("max_seq_length"):
        limits.append(int(st["max_seq_length"]))
    cap = max_length or min(limits)

    task = tasks.infer(config.get("architectures") or [])
    return ModelInfo(config, Tokenizer.from_file(str(tok_file)), task.name, cap, task.has_pooler)


def read_lengths(path: Path, tokenizer: Tokenizer) -> list[int]:
    """Token lengths (special tokens included) from a file of texts, JSON lines, or integers."""
    if not path.is_file():
        raise OptionsError(f"--lengths-from {path} does not exist; give a JSON-lines file of texts or of lengths")
    text = path.read_text()
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            return [int(x) for x in json.loads(stripped)]
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise OptionsError(f"{path}: a JSON list must hold integers ({e})") from e
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and all(line.strip().isdigit() for line in lines):
        return [int(line) for line in lines]
    texts = read_texts(path)
    tok = Tokenizer.from_str(tokenizer.to_str())
    tok.no_padding()
    tok.no_truncation()
    return [len(e.ids) for e in tok.encode_batch(texts)]


@dataclass(frozen=True)
class PlanResult:
    max_length: int
    sample_size: int
    longest: int
    truncated: int
    planned: buckets.Report
    seed: buckets.Report
    powers_of_two: buckets.Report

    def to_json(self) -> dict[str, Any]:
        return {
            "max_length": self.max_length,
            "sample_size": self.sample_size,
            "longest_in_sample": self.longest,
            "truncated": self.truncated,
            "planned": self.planned.to_json(),
            "seed_single_max_length": self.seed.to_json(),
            "powers_of_two": self.powers_of_two.to_json(),
        }


def make_plan(lengths: list[int], info: ModelInfo, max_buckets: int) -> tuple[list[int], PlanResult, dict[str, int]]:
    """Plan K buckets; the cap bucket (max_length) is added when the sample never reaches it."""
    counts = buckets.histogram(lengths, info.max_length)
    edges = buckets.plan(counts, max_buckets, info.cost)
    longest = max(lengths)
    runtime_edges = edges if edges[-1] == info.max_length else [*edges, info.max_length]
    result = PlanResult(
        max_length=info.max_length,
        sample_size=len(lengths),
        longest=longest,
        truncated=sum(n > info.max_length for n in lengths),
        planned=buckets.evaluate(f"planned (K={max_buckets})", counts, runtime_edges, info.cost),
        seed=buckets.evaluate("seed: one trace at max_length", counts, [info.max_length], info.cost),
        powers_of_two=buckets.evaluate("powers of two", counts, buckets.powers_of_two(info.max_length), info.cost),
    )
    sparse = {str(n): int(c) for n, c in enumerate(counts) if c}
    return runtime_edges, result, sparse


def format_table(result: PlanResult) -> str:
    lines = [
        f"{result.sample_size} inputs, longest {result.longest} tokens, max_length {result.max_length}"
        + (f" ({result.truncated} longer inputs count as truncated)" if result.truncated else ""),
        "",
        f"{'bucket':>8} {'share':>7} {'waste':>7} {'FLOPs/unpadded':>15}",
    ]
    for row in result.planned.rows:
        lines.append(f"{row.edge:>8} {row.share:>7.1%} {row.waste:>7.1%} {row.flops_ratio:>14.3f}x")
    lines += ["", f"{'strategy':34} {'buckets':>8} {'waste':>7} {'FLOPs/unpadded':>15}"]
    for report in (result.planned, result.powers_of_two, result.seed):
        lines.append(f"{report.name:34} {len(report.edges):>8} {report.waste:>7.1%} {report.flops_ratio:>14.3f}x")
    return "\n".join(lines)
