"""text-classification: ``{label, score}`` with softmax or sigmoid by ``problem_type``, as the pipeline."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import Batch, Context, Dims, Param, Task, register


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


def labels_of(config: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in (config.id2label or {}).items()}


@register
class TextClassification(Task):
    name = "text-classification"
    auto_class = "AutoModelForSequenceClassification"
    arch_suffix = "ForSequenceClassification"
    params = (Param("top_k", None, "labels to return; null: the best one only", nullable=True, server_max=100),)

    def postprocess(
        self, ctx: Context, prepared: Any, batch: Batch, payloads: list[Any], params: Mapping[str, Any]
    ) -> list[Any]:
        m = ctx.manifest
        return postprocess(batch, labels=m.labels or {}, problem_type=m.problem_type, top_k=params["top_k"])

    def export_info(self, config: Any, sentence_transformers: Mapping[str, Any]) -> dict[str, Any]:
        return {"labels": labels_of(config)}

    def to_hf(self, results: list[Any], single: bool) -> Any:
        return [r if isinstance(r, list) else [r] for r in results]  # one ranked list per text, one text included

    def head_flops(self, dims: Dims, batch: int, seq: int, *, pooler: bool) -> int:
        # every family: a hidden x hidden pooler or dense, then the classifier
        return 2 * batch * dims.hidden * dims.hidden + 2 * batch * dims.hidden * dims.labels
