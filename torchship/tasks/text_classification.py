"""text-classification: ``{label, score}`` with softmax or sigmoid by ``problem_type``, as the pipeline."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import TaskMismatchError
from . import Batch, Context, Dims, Param, Task, register

FUNCTIONS = ("sigmoid", "softmax", "none")


def postprocess(
    batch: Batch, *, labels: dict[str, str], problem_type: str | None, top_k: int | None, function: str | None = None
) -> list[Any]:
    """Scores as the pipeline's ``function_to_apply`` (None: sigmoid for one label or multi-label problems, else
    softmax; "none": the raw logits, TEI's ``raw_scores``), ranked best first."""
    logits = batch.outputs["logits"].float()  # (batch, num_labels)
    if function is None:
        function = "sigmoid" if problem_type == "multi_label_classification" or logits.shape[-1] == 1 else "softmax"
    if function == "sigmoid":
        scores = logits.sigmoid()
    elif function == "softmax":
        scores = logits.softmax(dim=-1)
    else:
        scores = logits
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
    classifies = True
    params = (
        Param("top_k", None, "labels to return; null: the best one only", nullable=True, server_max=100),
        Param("function_to_apply", None, "sigmoid, softmax or none (raw logits); null: as the model's problem type",
              "choice", FUNCTIONS, nullable=True),
    )  # fmt: skip

    def postprocess(
        self, ctx: Context, prepared: Any, batch: Batch, payloads: list[Any], params: Mapping[str, Any]
    ) -> list[Any]:
        m = ctx.manifest
        return postprocess(
            batch, labels=m.labels or {}, problem_type=m.problem_type, top_k=params["top_k"],
            function=params["function_to_apply"],
        )  # fmt: skip

    def relevance(self, ctx: Context) -> None:
        """A cross-encoder is a text-classification model with one label, scored over (query, document) pairs."""
        if len(ctx.manifest.labels or {}) != 1:
            raise TaskMismatchError(
                f"reranking needs a cross-encoder: a text-classification model with one label; this one has "
                f"{len(ctx.manifest.labels or {})} ({', '.join((ctx.manifest.labels or {}).values())})"
            )

    def export_info(self, config: Any, sentence_transformers: Mapping[str, Any]) -> dict[str, Any]:
        return {"labels": labels_of(config)}

    def to_hf(self, results: list[Any], single: bool) -> Any:
        return [r if isinstance(r, list) else [r] for r in results]  # one ranked list per text, one text included

    def head_flops(self, dims: Dims, batch: int, seq: int, *, pooler: bool) -> int:
        # every family: a hidden x hidden pooler or dense, then the classifier
        return 2 * batch * dims.hidden * dims.hidden + 2 * batch * dims.hidden * dims.labels
