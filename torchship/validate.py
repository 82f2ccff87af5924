"""Parity checks: an artifact against the eager model, at shapes that were never traced.

For each bucket S the check uses a batch of ``trace_batch + 1`` text pairs whose longest row is shorter
than S (so the runtime pads up to S) and whose other rows are shorter still (padding inside the batch).
The eager model sees the same rows padded only to their own longest length. Every failing output is
collected into one error.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from .errors import ParityError
from .runtime import Predictor
from .tokenize import Encoded

EagerFn = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]

_TEXT = (
    "jim henson was a puppeteer who created the muppets and worked on sesame street for many years before "
    "he died in new york the museum shows his puppets films drawings and notes from a long career in "
    "television where small teams built characters that millions of children still remember today"
)


def synthetic_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` (question, context) pairs of varied words, long enough to fill the longest bucket when cut."""
    rng = random.Random(seed)
    words = _TEXT.split()
    pairs = []
    for _ in range(n):
        question = " ".join(rng.choices(words, k=8)) + " ?"
        context = " ".join(rng.choices(words, k=600))
        pairs.append((question, context))
    return pairs


def rows_at_lengths(base: Tokenizer, lengths: list[int], seed: int) -> Encoded:
    """Tokenize synthetic pairs cut to exactly ``lengths`` tokens (segment ids include 1s)."""
    encoded = Encoded(ids=[], type_ids=[], offsets=[], truncated=[])
    tok = Tokenizer.from_str(base.to_str())  # a copy (once: the whole vocabulary goes through JSON)
    tok.no_padding()
    for i, n in enumerate(lengths):
        tok.enable_truncation(n)
        question, context = synthetic_pairs(1, seed + i)[0]
        # n words are at least n tokens, and 64 more keep the context the longer of the two, as truncation (longest
        # first) needs to cut the same: whole, its overflow (which truncation computes too) cost up to 0.15 s a row
        # at short lengths, 1.7 s of each parity check of a 12-bucket artifact
        enc = tok.encode(question, " ".join(context.split()[: n + 64]))
        encoded.ids.append(np.asarray(enc.ids, dtype=np.int64))
        encoded.type_ids.append(np.asarray(enc.type_ids, dtype=np.int64))
        encoded.offsets.append(list(enc.offsets))
        encoded.truncated.append(True)
    return encoded


def case_lengths(buckets: list[int], seq: int, batch: int, seed: int) -> list[int]:
    """Row lengths for bucket ``seq``: longest strictly between the previous bucket and ``seq``, others shorter."""
    lower = max([b for b in buckets if b < seq], default=2)
    longest = max(lower + 1, seq - 3) if seq - 1 > lower else seq
    rng = random.Random(seed + seq)
    others = [rng.randint(min(3, longest), longest) for _ in range(batch - 1)]
    return [longest, *others]


@dataclass
class ParityReport:
    """Max abs diff per bucket and output. An output passes when its diff is at most ``atol`` plus 1.5 x its
    measured ``tolerance`` (reduced precision: how far the eager model in that dtype is from float32)."""

    atol: float
    tolerance: dict[str, float] = field(default_factory=dict)
    max_abs_diff: dict[int, dict[str, float]] = field(default_factory=dict)
    shapes: dict[int, list[int]] = field(default_factory=dict)

    def allowed(self, name: str) -> float:
        return self.atol + 1.5 * self.tolerance.get(name, 0.0)

    def failures(self) -> dict[str, float]:
        return {
            f"seq {seq}/{name}": diff
            for seq, diffs in self.max_abs_diff.items()
            for name, diff in diffs.items()
            if not diff <= self.allowed(name)
        }

    def entry(self, seq: int) -> dict[str, object]:
        diffs = self.max_abs_diff[seq]
        return {
            "atol": self.atol,
            "passed": all(d <= self.allowed(n) for n, d in diffs.items()),
            "max_abs_diff": diffs,
            "validated_shape": self.shapes[seq],
        }

    def summary(self) -> dict[str, object]:
        """One parity record over every validated shape (for formats with dynamic shapes)."""
        names = {n for diffs in self.max_abs_diff.values() for n in diffs}
        worst = {n: max(d[n] for d in self.max_abs_diff.values()) for n in sorted(names)}
        return {
            "atol": self.atol,
            "passed": all(v <= self.allowed(n) for n, v in worst.items()),
            "max_abs_diff": worst,
            "validated_shapes": [self.shapes[s] for s in sorted(self.shapes)],
        }

    def raise_on_failure(self, fmt: str) -> None:
        failures = self.failures()
        if failures:
            lines = "\n".join(
                f"- {fmt}/{k}: max diff {v:.3g} > allowed {self.allowed(k.split('/')[-1]):.3g}"
                + (f" (atol {self.atol:g})" if not self.tolerance else "")
                for k, v in failures.items()
            )
            raise ParityError(
                f"exported outputs differ from the eager model:\n{lines}\n"
                "Raise --atol only if this drift is acceptable for your use; otherwise report it as a bug.",
                failures=failures,
                atol=self.atol,
            )


def _cases(
    predictor: Predictor, grid: list[int], batch: int, seed: int
) -> Iterator[tuple[int, list[int], dict[str, torch.Tensor]]]:
    """For each grid length: (seq, row lengths, inputs padded to the longest row)."""
    for seq in grid:
        lengths = case_lengths(grid, seq, batch, seed)
        encoded = rows_at_lengths(predictor.encoder.tokenizer, lengths, seed)
        yield seq, lengths, predictor.engine.pad_rows(encoded, list(range(len(lengths))), max(lengths))


def _diffs(
    predictor: Predictor, got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], mask: torch.Tensor
) -> dict[str, float]:
    real = mask.bool()  # (batch, longest): padded positions carry no meaning
    diffs = {}
    for name in predictor.output_names:
        a, b = got[name].float().cpu(), want[name].float().cpu()
        if predictor.seq_axis(name) == 1 and a.shape == b.shape:
            a, b = a[real], b[real]
        if a.shape != b.shape:
            raise ParityError(
                f"output {name} has shape {tuple(a.shape)}, the eager model gives {tuple(b.shape)}",
                failures={name: float("inf")},
                atol=0.0,
            )
        diffs[name] = float((a - b).abs().max())
    return diffs


def memoized(eager: EagerFn) -> EagerFn:
    """``eager``, remembering its outputs by the content of its inputs: the parity cases (``_cases``) are the same
    for every format of an export, and the eager model ran them again for each (this and the short contexts of
    ``rows_at_lengths`` took the demo's export from 66-68 to 55-58 s on a 2-core EPYC). Meant for those cases, a
    batch per grid length: it keeps every answer."""
    import hashlib

    seen: dict[bytes, dict[str, torch.Tensor]] = {}

    def run(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        digest = hashlib.blake2b(digest_size=16)
        for name in sorted(inputs):
            tensor = inputs[name].detach().cpu().contiguous()
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
            digest.update(tensor.numpy().tobytes())
        key = digest.digest()
        if key not in seen:
            seen[key] = eager(inputs)
        return seen[key]

    return run


def run_format(predictor: Predictor, format: str | None) -> EagerFn:
    """``format`` of ``predictor`` as ``inputs by name -> outputs by name``, like an eager reference."""

    def run(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return predictor.run(inputs["input_ids"], inputs["attention_mask"], inputs.get("token_type_ids"), format=format)

    return run


def measure_tolerance(
    predictor: Predictor, reduced: EagerFn, reference: EagerFn, *, batch: int, grid: list[int], seed: int = 0
) -> dict[str, float]:
    """How far the eager model in reduced precision is from the float32 one, per output, on the parity cases."""
    worst: dict[str, float] = {}
    for _, _, inputs in _cases(predictor, grid, batch, seed):
        for name, diff in _diffs(predictor, reduced(inputs), reference(inputs), inputs["attention_mask"]).items():
            worst[name] = max(worst.get(name, 0.0), diff)
    return worst


def measure_cosine(
    predictor: Predictor, reduced: EagerFn, reference: EagerFn, *, batch: int, grid: list[int], seed: int = 1
) -> dict[str, float]:
    """The lowest cosine similarity of ``reduced``'s outputs to ``reference``'s, per output, on the parity cases:
    per real token for outputs that carry a vector per token, per row otherwise (padded positions zeroed)."""
    worst: dict[str, float] = {}
    for _, _, inputs in _cases(predictor, grid, batch, seed):
        got, want, real = reduced(inputs), reference(inputs), inputs["attention_mask"].bool()
        for name in predictor.output_names:
            a, b = _rows(predictor, name, got[name].float().cpu(), want[name].float().cpu(), real, padding=0.0)
            cosine = torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12)
            worst[name] = min(worst.get(name, 1.0), float(cosine.min()))
    return worst


def _rows(
    predictor: Predictor, name: str, a: torch.Tensor, b: torch.Tensor, real: torch.Tensor, *, padding: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``a`` and ``b`` as (rows, values) to compare row by row: a vector per token becomes a row per real token;
    a scalar per token (span logits) stays a row per sequence, its padded positions set to ``padding``."""
    if predictor.seq_axis(name) == 1 and a.shape[:2] == real.shape:
        if a.dim() > 2:
            a, b = a[real], b[real]
        else:
            a, b = a.masked_fill(~real, padding), b.masked_fill(~real, padding)
    return a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)


def check(
    predictor: Predictor,
    eager: EagerFn,
    *,
    batch: int,
    atol: float,
    format: str | None = None,
    grid: list[int] | None = None,
    tolerance: dict[str, float] | None = None,
    seed: int = 0,
) -> ParityReport:
    """Compare ``format`` of ``predictor`` against ``eager`` at lengths just under each ``grid`` length (its
    buckets by default); return the max abs diff per output and length."""
    grid = grid or predictor.buckets
    report = ParityReport(atol=atol, tolerance=tolerance or {})
    for seq, lengths, inputs in _cases(predictor, grid, batch, seed):
        exported = run_format(predictor, format)(inputs)
        report.max_abs_diff[seq] = _diffs(predictor, exported, eager(inputs), inputs["attention_mask"])
        report.shapes[seq] = [len(lengths), max(lengths)]
    return report


# ---- the int8 gate: agreement with float32 on real text, as each task's users read the outputs ------------------

GATE_MODULES = (
    "argparse", "collections", "csv", "dataclasses", "datetime", "decimal", "email.message", "enum", "fractions",
    "functools", "heapq", "http.client", "itertools", "json", "logging", "pathlib", "random", "shutil", "statistics",
    "string", "subprocess", "tarfile", "textwrap", "threading", "urllib.parse", "zipfile",
)  # fmt: skip


GATE_TEXTS = 256
SAMPLE_EVERY = 4  # int8's sensitivities are measured on every 4th gate text (int8.search's probe)
STRESS_TEXTS = 64
STRESS_SOURCE = "validate.stress_texts: tables, code, ids, rules, other scripts, one word or symbol, repeats"


def calibration_texts(n: int = 128, stress: int = STRESS_TEXTS) -> list[str]:
    """What static int8 sets its activation ranges on: ``n`` texts of the same source as ``gate_texts()`` that its
    default sample does not hold, short and long alike, so that the gate judges it on texts it never saw, and
    ``stress`` texts unlike prose (``stress_texts``, a seed the report does not use), so that unusual text is not
    clipped."""
    judged = set(gate_texts())
    rest = [t for t in gate_texts(GATE_TEXTS + 4 * n) if t not in judged]
    return rest[:: max(1, len(rest) // n)][:n] + stress_texts(stress, seed=1)


def calibration_batches(predictor: Predictor, texts: list[str]) -> list[dict[str, torch.Tensor]]:
    """``texts`` as the runtime would run them: tokenized, planned into micro-batches and padded (Engine.plan)."""
    encoded = predictor.encoder.encode(list(texts), truncation="warn")
    jobs = predictor.engine.plan(encoded.lengths)
    return [predictor.engine.pad_rows(encoded, rows, length) for rows, length, _ in jobs]


def gate_texts(n: int = GATE_TEXTS) -> list[str]:
    """``n`` distinct real English texts that every machine has: paragraphs of the Python standard library's
    docstrings (modules, their public classes and functions, in a fixed order), three in four short, one in four
    whole docstrings (long: they fill the longest buckets). Code examples are left out."""
    import importlib
    import inspect

    short: list[str] = []
    long: list[str] = []
    for module_name in GATE_MODULES:
        module = importlib.import_module(module_name)
        objects = [module] + [v for a, v in sorted(vars(module).items()) if not a.startswith("_")]
        for obj in objects:
            if getattr(obj, "__module__", module_name) != module_name or not (
                inspect.ismodule(obj) or inspect.isclass(obj) or inspect.isfunction(obj)
            ):
                continue
            doc = inspect.getdoc(obj) or ""
            paragraphs = [" ".join(p.split()) for p in doc.split("\n\n") if ">>>" not in p and "::" not in p]
            prose = [p for p in paragraphs if len(p.split()) >= 8]
            short += prose
            if len(prose) >= 3:
                long.append(" ".join(prose))
    short, long = list(dict.fromkeys(short)), list(dict.fromkeys(long))  # aliases share their docstrings
    texts = short[: n - n // 4] + long[: n // 4]
    return texts + short[n - n // 4 : 2 * n - len(texts) - n // 4]  # too few long ones: more short ones


_PHRASES = (
    "Die Funktion gibt eine Liste der Schlüssel zurück, sortiert nach ihrem Wert.",
    "La fonction renvoie la liste des clés, triée selon leur valeur.",
    "La función devuelve una lista de claves ordenadas por su valor.",
    "Функция возвращает список ключей, отсортированный по значению.",
    "该函数返回按值排序的键列表。",
    "この関数は値でソートされたキーのリストを返します。",
    "تعيد الدالة قائمة المفاتيح مرتبة حسب قيمتها.",
    "Deploy done ✅ 🚀 — latency p99 ↓ 12 % (was 48 ms → 42 ms) 🎉",
    "naïve café résumé coöperate façade jalapeño Zürich Ångström",
)


def stress_texts(n: int = STRESS_TEXTS, seed: int = 0) -> list[str]:
    """``n`` texts unlike prose, of the kinds that push activations past the ranges prose sets: grid, simple and
    Markdown tables, lines of Python source, ids (URLs, paths, hashes, numbers, dates), rules of one repeated
    character, other scripts and emoji, one word or one symbol, one word repeated. Made from the words of
    ``gate_texts()`` and the standard library's source by ``seed``, so every machine has the same ones.

    Static int8 calibrates on them as well as on prose (``calibration_texts``): calibrated on prose alone, its
    per-tensor activation ranges clip a table's, and the corpus' two ASCII tables fell to cosine 0.992 while the
    gate held 0.9958 on the corpus' other half. Every int8 export reports its agreement on another ``seed`` of
    them, ungated: a single symbol is the hardest text an int8 encoder meets."""
    import importlib
    import inspect

    rng = random.Random(seed)
    words = sorted({w.strip(".,;:()'\"`") for t in gate_texts() for w in t.split()} - {""})
    sources: list[list[str]] = []
    for name in GATE_MODULES:
        module = importlib.import_module(name)
        for _, obj in sorted(vars(module).items()):
            if inspect.isfunction(obj) and obj.__module__ == name:
                with contextlib.suppress(OSError, TypeError):
                    sources.append([line.strip() for line in inspect.getsource(obj).splitlines() if line.strip()])

    def some(k: int) -> str:
        return " ".join(rng.choice(words) for _ in range(k))

    def grid() -> str:
        widths = [rng.randint(6, 22) for _ in range(rng.randint(2, 4))]

        def rule(c: str) -> str:
            return "+" + "+".join(c * (w + 2) for w in widths) + "+"

        def row() -> str:
            return "| " + " | ".join(some(rng.randint(1, 2))[:w].ljust(w) for w in widths) + " |"

        body = [part for _ in range(rng.randint(2, 5)) for part in (row(), rule("-"))]
        return " ".join([rule("-"), row(), rule("="), *body])

    def simple() -> str:
        widths = [rng.randint(5, 14) for _ in range(rng.randint(2, 4))]
        rule = " ".join("=" * w for w in widths)
        rows = [" ".join(some(1)[:w].ljust(w) for w in widths) for _ in range(rng.randint(3, 7))]
        return " ".join([rule, rows[0], rule, *rows[1:], rule])

    def markdown() -> str:
        k = rng.randint(2, 4)
        rows = ["| " + " | ".join(some(rng.randint(1, 3)) for _ in range(k)) + " |" for _ in range(rng.randint(3, 6))]
        return " ".join([rows[0], "|" + "|".join(["---"] * k) + "|", *rows[1:]])

    def code() -> str:
        lines = rng.choice(sources)
        start = rng.randrange(len(lines))
        return " ".join(lines[start : start + rng.randint(3, 12)])

    def ids() -> str:
        module = rng.choice(GATE_MODULES)
        made = [
            f"https://docs.python.org/3/library/{module}.html#{rng.choice(words)}",
            f"/usr/lib/python3/{module.replace('.', '/')}.py:{rng.randint(1, 3000)}",
            f"{rng.getrandbits(64):016x}",
            f"{rng.uniform(-1e6, 1e6):.6g}",
            f"{rng.randint(1, 10**9):,}",
            f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randrange(60):02d}Z",
            f"{rng.choice(words).lower()}@example.com",
            f"v{rng.randint(0, 9)}.{rng.randint(0, 40)}.{rng.randint(0, 9)}",
        ]
        return " ".join(rng.choice(made) for _ in range(rng.randint(3, 12)))

    def rule() -> str:
        c = rng.choice("-=*#~_.")
        return f"{c * rng.randint(8, 60)} {some(rng.randint(1, 4)).upper()} {c * rng.randint(8, 60)}"

    def script() -> str:
        return f"{rng.choice(_PHRASES)} {some(rng.randint(0, 4))}".strip()

    def tiny() -> str:
        return rng.choice([some(1), rng.choice("?!.-=*#|"), some(2), some(1).upper()])

    def repeated() -> str:
        return " ".join([rng.choice(words)] * rng.randint(8, 120))

    kinds = (grid, simple, markdown, code, ids, rule, script, tiny, repeated)
    return [kinds[i % len(kinds)]() for i in range(n)]


@dataclass
class Agreement:
    """An int8 artifact's agreement with the float32 eager model, per judged output: the lowest cosine
    similarity ("cosine": vectors people compare) or the share of top-1 choices that stay the same ("top1":
    labels, tokens, spans). It holds when every value reaches ``minimum``."""

    metric: str
    minimum: float
    values: dict[str, float]
    texts: int
    source: str

    @property
    def worst(self) -> float:
        return min(self.values.values())

    def holds(self) -> bool:
        return self.worst >= self.minimum

    def margin(self) -> float:
        return self.worst - self.minimum

    def summary(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "min": self.minimum,
            "measured": {k: round(v, 7) for k, v in self.values.items()},
            "held": self.holds(),
            "on": f"{self.texts} texts from {self.source}",
        }


class Judge:
    """Measures an Agreement of a format of ``predictor`` with ``reference`` (the float32 eager model, run once)
    on ``texts`` (default: ``gate_texts()``) in the runtime's micro-batches; ``source`` says in the manifest where
    the texts came from."""

    def __init__(
        self, predictor: Predictor, reference: EagerFn, *, minimum: float, texts: list[str] | None = None,
        source: str | None = None,
    ) -> None:  # fmt: skip
        self.predictor, self.task = predictor, predictor.task_def
        self.minimum = minimum
        self.source = source or "the Python standard library's docstrings (validate.gate_texts)"
        texts = texts or gate_texts()
        # batched and padded as the runtime batches and pads them (Engine.plan): int8 activations are quantized
        # per tensor, padded positions included, so how a batch is padded moves the results
        self.batches = calibration_batches(predictor, texts)
        self.texts = len(texts)
        self.want = [self._judged(reference(inputs), inputs) for inputs in self.batches]

    def _judged(self, outputs: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        judged = self.task.judged(self.predictor.context, outputs, inputs["attention_mask"])
        return {k: v.float().cpu() for k, v in judged.items()}

    def __call__(self, reduced: EagerFn) -> Agreement:
        metric = self.task.agreement
        worst: dict[str, float] = {}
        same: dict[str, list[int]] = {}
        for inputs, want in zip(self.batches, self.want, strict=True):
            got = self._judged(reduced(inputs), inputs)
            real = inputs["attention_mask"].bool()
            for name, b in want.items():
                if metric == "cosine":
                    a, b = _rows(self.predictor, name, got[name], b, real, padding=0.0)
                    cosine = torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12)
                    worst[name] = min(worst.get(name, 1.0), float(cosine.min()))
                    continue
                # a choice per real token (labels, vocabulary), or a position per row (span starts and ends),
                # where padding can never win
                a, b = _rows(self.predictor, name, got[name], b, real, padding=float("-inf"))
                if a.shape[-1] == 1:  # one score per row (a cross-encoder): which row ranks first
                    a, b = a.reshape(1, -1), b.reshape(1, -1)
                counts = same.setdefault(name, [0, 0])
                counts[0] += int((a.argmax(-1) == b.argmax(-1)).sum())
                counts[1] += a.shape[0]
        values = worst if metric == "cosine" else {k: hit / total for k, (hit, total) in same.items()}
        return Agreement(metric, self.minimum, values, self.texts, self.source)
