"""Sentence embeddings: sentence-transformers pooling (cls, mean, max, mean_sqrt_len) and normalization."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..errors import ArtifactError, InputError
from . import Batch, Context, Param, Task, register

POOLING_MODES = ("cls", "mean", "max", "mean_sqrt_len")
OUTPUTS = ("sentence", "tokens")


def pool(hidden: torch.Tensor, mask: torch.Tensor, *, mode: str, normalize: bool) -> torch.Tensor:
    """Pool ``hidden`` (batch, seq, dim) over the tokens where ``mask`` (batch, seq) is 1 -> (batch, dim).

    Computed in numpy, in float32, on one thread: torch would spread these ops over its OpenMP threads, which then
    contend with ONNX Runtime's, still spinning after the run that made ``hidden`` (benchmarks/pooling.py measures
    both side by side: all-MiniLM-L6-v2, one text of 128 tokens end to end, the README's "Pooling" figures).
    """
    pooled = pooled_array(_array(hidden), mask.detach().cpu().numpy(), mode=mode)
    if normalize:
        pooled = normalized(pooled)
    return torch.from_numpy(pooled).to(hidden.dtype)


def _array(hidden: torch.Tensor) -> np.ndarray:
    """``hidden`` as a float32 numpy array, without a copy when it is one already."""
    if hidden.dtype != torch.float32 or hidden.device.type != "cpu" or hidden.requires_grad:
        hidden = hidden.detach().cpu().float()
    return hidden.numpy()


def pooled_array(hidden: np.ndarray, mask: np.ndarray, *, mode: str) -> np.ndarray:
    """``pool`` on float32 numpy arrays, unnormalized, in as few numpy calls as it takes: they run right after the
    model has swept the caches, where each costs several times what it costs warm (all-MiniLM-L6-v2 at one text
    of 16 tokens: four calls took 55-70 us after an OpenVINO run, 15-20 us warm)."""
    if mode == "cls":
        return np.ascontiguousarray(hidden[:, 0])
    weights = mask.astype(np.float32)[:, :, None]  # (batch, seq, 1)
    if mode == "max":
        maxed: np.ndarray = np.where(weights == 0, np.float32(-np.inf), hidden).max(axis=1)
        return maxed
    counts = np.maximum(weights.sum(axis=1), np.float32(1e-9))  # (batch, 1)
    pooled: np.ndarray = (hidden * weights).sum(axis=1) / (counts if mode == "mean" else np.sqrt(counts))
    return pooled  # (batch, dim)


def normalized(vectors: np.ndarray) -> np.ndarray:
    """Each row of ``vectors`` (n, dim) L2-normalized, as torch.nn.functional.normalize (eps 1e-12)."""
    out: np.ndarray = vectors / np.maximum(np.sqrt((vectors * vectors).sum(axis=1, keepdims=True)), np.float32(1e-12))
    return out


def check_pooling(pooling: Mapping[str, Any] | None) -> dict[str, Any]:
    mode = (pooling or {}).get("mode")
    if mode not in POOLING_MODES:
        raise ArtifactError(
            f"manifest pooling mode {mode!r} is unknown (known: {', '.join(POOLING_MODES)}); export the artifact "
            "again with this torchship",
            path=".",
        )
    return dict(pooling or {})


def postprocess(
    batch: Batch, *, pooling: Mapping[str, Any], dimensions: int | None = None, normalize: bool | None = None
) -> list[np.ndarray]:
    """Pool, keep the first ``dimensions`` (Matryoshka, as sentence-transformers' ``truncate_dim``), then
    L2-normalize when ``normalize`` says (None: when the model's sentence-transformers pipeline does). Normalizing
    after the cut is what sentence-transformers does with ``truncate_dim`` and ``normalize_embeddings=True``."""
    vectors = pooled_array(
        _array(batch.outputs["last_hidden_state"]), batch.attention_mask.numpy(), mode=pooling["mode"]
    )
    if dimensions is not None:
        if dimensions > vectors.shape[-1]:
            raise InputError(
                f"dimensions {dimensions} is over this model's {vectors.shape[-1]}; pass {vectors.shape[-1]} or fewer"
            )
        vectors = vectors[:, :dimensions]
    if normalize if normalize is not None else pooling.get("normalize"):
        vectors = normalized(vectors)
    return list(vectors)


@register
class FeatureExtraction(Task):
    name = "feature-extraction"
    auto_class = "AutoModel"
    arch_suffix = "Model"
    embeds = True
    has_pooler = True
    agreement = "cosine"
    takes_prompts = True
    params = (
        Param("dimensions", None, "keep the first N dimensions (Matryoshka); null: all", nullable=True),
        Param("normalize", None, "L2-normalize; null: as the model's sentence-transformers pipeline", "bool",
              nullable=True),
        Param("output", "sentence", "sentence: one pooled vector per text; tokens: every token's vector", "choice",
              OUTPUTS),
    )  # fmt: skip

    def prepare(self, ctx: Context, params: Mapping[str, Any]) -> Any:
        return check_pooling(ctx.manifest.pooling)

    def postprocess(
        self, ctx: Context, prepared: Any, batch: Batch, payloads: list[Any], params: Mapping[str, Any]
    ) -> list[Any]:
        if params["output"] == "tokens":  # the encoder's last hidden state, each text cut to its own length
            hidden = batch.outputs["last_hidden_state"].float()
            return [hidden[i, :n].numpy() for i, n in enumerate(batch.lengths)]
        return postprocess(batch, pooling=prepared, dimensions=params["dimensions"], normalize=params["normalize"])

    def judged(self, ctx: Context, outputs: Mapping[str, torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """The sentence embeddings, pooled as this model's sentence-transformers pipeline pools (what is
        compared by cosine: normalizing does not change it)."""
        pooling = check_pooling(ctx.manifest.pooling)
        hidden = outputs["last_hidden_state"].float()
        return {"sentence_embedding": pool(hidden, mask, mode=pooling["mode"], normalize=False)}

    def finish(self, results: list[Any], single: bool) -> Any:
        if results and results[0].ndim == 2:  # output="tokens": one (seq_i, dim) array per text
            return results[0] if single else results
        return np.stack(results)  # (n, dim) float32, a single text included

    def to_json(self, result: Any) -> Any:
        return np.asarray(result).tolist()

    def to_hf(self, results: list[Any], single: bool) -> Any:
        return [self.to_json(r) for r in results]  # (n, dim), one text included, as TEI answers

    def export_info(self, config: Any, sentence_transformers: Mapping[str, Any]) -> dict[str, Any]:
        keep = ("mode", "normalize", "include_prompt", "source")
        return {"pooling": {k: v for k, v in sentence_transformers.items() if k in keep}}
