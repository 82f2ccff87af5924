"""Sentence embeddings: sentence-transformers pooling (cls, mean, max, mean_sqrt_len) and normalization."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..errors import ArtifactError
from . import Batch, Context, Task, register

POOLING_MODES = ("cls", "mean", "max", "mean_sqrt_len")


def pool(hidden: torch.Tensor, mask: torch.Tensor, *, mode: str, normalize: bool) -> torch.Tensor:
    """Pool ``hidden`` (batch, seq, dim) over the tokens where ``mask`` (batch, seq) is 1 -> (batch, dim)."""
    if mode == "cls":
        pooled = hidden[:, 0]
    else:
        weights = mask.unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
        if mode == "max":
            pooled = hidden.masked_fill(weights == 0, float("-inf")).amax(dim=1)
        else:
            summed = (hidden * weights).sum(dim=1)  # (batch, dim)
            counts = weights.sum(dim=1).clamp(min=1e-9)  # (batch, 1)
            pooled = summed / (counts if mode == "mean" else counts.sqrt())
    if normalize:
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
    return pooled


def check_pooling(pooling: Mapping[str, Any] | None) -> dict[str, Any]:
    mode = (pooling or {}).get("mode")
    if mode not in POOLING_MODES:
        raise ArtifactError(
            f"manifest pooling mode {mode!r} is unknown (known: {', '.join(POOLING_MODES)}); export the artifact "
            "again with this torchship",
            path=".",
        )
    return dict(pooling or {})


def postprocess(batch: Batch, *, pooling: Mapping[str, Any]) -> list[np.ndarray]:
    pooled = pool(
        batch.outputs["last_hidden_state"].float(),
        batch.attention_mask,
        mode=pooling["mode"],
        normalize=bool(pooling.get("normalize")),
    )
    return list(pooled.float().numpy())


@register
class FeatureExtraction(Task):
    name = "feature-extraction"
    auto_class = "AutoModel"
    arch_suffix = "Model"
    embeds = True
    has_pooler = True

    def prepare(self, ctx: Context, params: Mapping[str, Any]) -> Any:
        return check_pooling(ctx.manifest.pooling)

    def postprocess(
        self, ctx: Context, prepared: Any, batch: Batch, payloads: list[Any], params: Mapping[str, Any]
    ) -> list[Any]:
        return postprocess(batch, pooling=prepared)

    def finish(self, results: list[Any], single: bool) -> Any:
        return np.stack(results)  # (n, dim) float32, a single text included

    def to_json(self, result: Any) -> Any:
        return np.asarray(result).tolist()

    def to_hf(self, results: list[Any], single: bool) -> Any:
        return [self.to_json(r) for r in results]  # (n, dim), one text included, as TEI answers

    def export_info(self, config: Any, sentence_transformers: Mapping[str, Any]) -> dict[str, Any]:
        return {"pooling": {k: v for k, v in sentence_transformers.items() if k != "max_seq_length"}}
