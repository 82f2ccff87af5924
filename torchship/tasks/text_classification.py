"""text-classification: ``{label, score}`` with softmax or sigmoid by ``problem_type``, as the pipeline."""

from __future__ import annotations

from typing import Any

from . import Batch


def postprocess(batch: Batch, *, labels: dict[str, str], problem_type: str | None, top_k: int | None) -> list[Any]:
    logits = batch.outputs["logits"].float()  # (batch, num_labels)
    if problem_type == "multi_label_classification" or logits.shape[-1] == 1:
        scores = logits.sigmoid()
    else:
        scores = logits.softmax(dim=-1)
    results: list[Any] = []
    for row in scores:
        ranked = sorted(
            ({"label": labels.get(str(i), f"LABEL_{i}"), "score": s} for i, s in enumerate(row.tolist())),
            key=lambda r: -r["score"],
        )
        results.append(ranked[0] if top_k is None else ranked[:top_k])
    return results
