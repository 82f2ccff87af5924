"""Sentence embeddings: sentence-transformers pooling (cls, mean, max, mean_sqrt_len) and normalization."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ArtifactError
from . import Batch

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


def postprocess(batch: Batch, *, pooling: dict[str, Any]) -> list[torch.Tensor]:
    mode = pooling.get("mode")
    if mode not in POOLING_MODES:
        raise ArtifactError(f"manifest pooling mode {mode!r} is unknown; export the artifact again", path=".")
    pooled = pool(
        batch.outputs["last_hidden_state"].float(),
        batch.attention_mask,
        mode=mode,
        normalize=bool(pooling.get("normalize")),
    )
    return list(pooled.float())
