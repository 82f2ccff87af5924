"""Parity checks: an artifact against the eager model, at shapes that were never traced.

For each bucket S the check uses a batch of ``trace_batch + 1`` text pairs whose longest row is shorter
than S (so the runtime pads up to S) and whose other rows are shorter still (padding inside the batch).
The eager model sees the same rows padded only to their own longest length. Every failing output is
collected into one error.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

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
    for i, n in enumerate(lengths):
        tok = Tokenizer.from_str(base.to_str())
        tok.no_padding()
        tok.enable_truncation(n)
        enc = tok.encode(*synthetic_pairs(1, seed + i)[0])
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
    atol: float
    max_abs_diff: dict[int, dict[str, float]] = field(default_factory=dict)
    shapes: dict[int, list[int]] = field(default_factory=dict)

    def failures(self) -> dict[str, float]:
        return {
            f"seq {seq}/{name}": diff
            for seq, diffs in self.max_abs_diff.items()
            for name, diff in diffs.items()
            if not diff <= self.atol
        }

    def entry(self, seq: int) -> dict[str, object]:
        diffs = self.max_abs_diff[seq]
        return {
            "atol": self.atol,
            "passed": all(d <= self.atol for d in diffs.values()),
            "max_abs_diff": diffs,
            "validated_shape": self.shapes[seq],
        }

    def summary(self) -> dict[str, object]:
        """One parity record over every validated shape (for formats with dynamic shapes)."""
        names = {n for diffs in self.max_abs_diff.values() for n in diffs}
        worst = {n: max(d[n] for d in self.max_abs_diff.values()) for n in sorted(names)}
        return {
            "atol": self.atol,
            "passed": all(v <= self.atol for v in worst.values()),
            "max_abs_diff": worst,
            "validated_shapes": [self.shapes[s] for s in sorted(self.shapes)],
        }

    def raise_on_failure(self, fmt: str) -> None:
        failures = self.failures()
        if failures:
            lines = "\n".join(f"- {fmt}/{k}: max diff {v:.3g} > atol {self.atol:g}" for k, v in failures.items())
            raise ParityError(
                f"exported outputs differ from the eager model:\n{lines}\n"
                "Raise --atol only if this drift is acceptable for your use; otherwise report it as a bug.",
                failures=failures,
                atol=self.atol,
            )


def check(
    predictor: Predictor,
    eager: EagerFn,
    *,
    batch: int,
    atol: float,
    format: str | None = None,
    grid: list[int] | None = None,
    seed: int = 0,
) -> ParityReport:
    """Compare ``format`` of ``predictor`` against ``eager`` at lengths just under each ``grid`` length (its
    buckets by default); return the max abs diff per output and length."""
    grid = grid or predictor.buckets
    report = ParityReport(atol=atol)
    for seq in grid:
        lengths = case_lengths(grid, seq, batch, seed)
        encoded = rows_at_lengths(predictor.encoder.tokenizer, lengths, seed)
        longest = max(lengths)
        inputs = predictor.pad_rows(encoded, list(range(len(lengths))), longest)
        exported = predictor.run(
            inputs["input_ids"], inputs["attention_mask"], inputs.get("token_type_ids"), format=format
        )
        reference = eager(inputs)
        real = inputs["attention_mask"].bool()  # (batch, longest): padded positions carry no meaning
        diffs = {}
        for name in predictor.output_names:
            got, want = exported[name].float(), reference[name].float()
            if predictor.seq_axis(name) == 1 and got.shape == want.shape:
                got, want = got[real], want[real]
            if got.shape != want.shape:
                raise ParityError(
                    f"output {name} has shape {tuple(got.shape)}, the eager model gives {tuple(want.shape)}",
                    failures={name: float("inf")},
                    atol=atol,
                )
            diffs[name] = float((got - want).abs().max())
        report.max_abs_diff[seq] = diffs
        report.shapes[seq] = [len(lengths), longest]
    return report
