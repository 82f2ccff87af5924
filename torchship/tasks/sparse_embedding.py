"""sparse-embedding: SPLADE. A masked-LM checkpoint whose exported graph ends in SPLADE pooling, so the
(batch, seq, vocab) logits never leave the model: each text becomes one vocabulary-wide vector,
``max`` (or ``sum``) over its tokens of ``log(1 + relu(logits))``, as sentence-transformers' ``SpladePooling``.

Results are scipy-free sparse vectors: ``{"indices": int64 array, "values": float32 array}``, indices ascending,
zeros dropped (``threshold`` drops more, ``top_k`` keeps the largest).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..errors import UnsupportedModelError
from . import Batch, Context, Dims, Param, Task, register

if TYPE_CHECKING:
    from ..unpad import UnpaddedEncoder

OUTPUT = "sparse_embedding"
STRATEGIES = ("max", "sum")
ACTIVATIONS = ("relu", "log1p_relu")


class SpladeModel(nn.Module):
    """A masked LM with SPLADE pooling on top; forward returns ``{"sparse_embedding": (batch, vocab)}``."""

    def __init__(self, mlm: nn.Module, *, strategy: str = "max", activation: str = "relu") -> None:
        super().__init__()
        if strategy not in STRATEGIES or activation not in ACTIVATIONS:
            raise UnsupportedModelError(
                f"SPLADE pooling_strategy {strategy!r} / activation_function {activation!r} is not supported; "
                f"torchship supports {STRATEGIES} / {ACTIVATIONS}"
            )
        self.mlm = mlm
        self.config = mlm.config  # what the exporter records (attention implementation, model type)
        self.strategy, self.activation = strategy, activation
        self.real_tokens = False  # on_real_tokens: the masked-LM head sees the real tokens only

    @property
    def base_model(self) -> Any:
        """The masked LM's encoder (what unpad.base_of looks for)."""
        return self.mlm.base_model

    def on_real_tokens(self, encoder: UnpaddedEncoder) -> SpladeModel:
        """This graph with ``encoder`` (unpad.UnpaddedEncoder) as the masked LM's base, so the head runs on the
        real tokens only as well as the dense layers: the head's decoder (hidden x vocabulary per token) is the
        largest matrix product of the model. The real tokens' scores are scattered back to the padded layout,
        zeros at padded positions, as the padded graph's mask makes them, before pooling."""
        from ..unpad import TokensOnly

        setattr(self.mlm, str(self.mlm.base_model_prefix), TokensOnly(encoder))
        self.real_tokens = True
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> dict[str, torch.Tensor]:
        kwargs.pop("return_dict", None)
        logits = self.mlm(input_ids=input_ids, attention_mask=attention_mask, **kwargs, return_dict=True).logits
        if self.real_tokens:  # (1, tokens, vocab)
            from ..unpad import real_positions, scatter

            scores = scatter(self._activate(logits.squeeze(0)), real_positions(attention_mask), *input_ids.shape)
        else:
            scores = self._activate(logits * attention_mask.unsqueeze(-1).to(logits.dtype))
        pooled = scores.amax(dim=1) if self.strategy == "max" else scores.sum(dim=1)
        return {OUTPUT: pooled}

    def _activate(self, logits: torch.Tensor) -> torch.Tensor:
        scores = torch.log1p(torch.relu(logits))
        return torch.log1p(scores) if self.activation == "log1p_relu" else scores


def sparsify(vector: np.ndarray, *, top_k: int | None, threshold: float) -> dict[str, np.ndarray]:
    keep = np.flatnonzero(vector > min(threshold, float(np.finfo(vector.dtype).max)))  # no float32 overflow
    if top_k is not None and len(keep) > top_k:
        keep = np.sort(keep[np.argsort(-vector[keep], kind="stable")[:top_k]])
    return {"indices": keep.astype(np.int64), "values": vector[keep].astype(np.float32)}


@register
class SparseEmbedding(Task):
    name = "sparse-embedding"
    auto_class = "AutoModelForMaskedLM"
    arch_suffix = None  # a masked LM is fill-mask unless --task sparse-embedding says otherwise
    takes_pairs = False
    takes_prompts = True
    sparse = True
    head_on_real_tokens = True  # SpladeModel.on_real_tokens
    agreement = "cosine"  # the vectors are compared by dot product, as dense embeddings are
    params = (
        Param("top_k", None, "keep the largest N weights per text; null: every non-zero one", nullable=True),
        Param("threshold", 0.0, "drop weights at or below this value", "number"),
    )

    def graph(self, model: Any, sentence_transformers: Mapping[str, Any]) -> Any:
        splade = sentence_transformers.get("splade") or {}
        return SpladeModel(
            model, strategy=splade.get("pooling_strategy", "max"), activation=splade.get("activation_function", "relu")
        )

    def postprocess(
        self, ctx: Context, prepared: Any, batch: Batch, payloads: list[Any], params: Mapping[str, Any]
    ) -> list[Any]:
        dense = batch.outputs[OUTPUT].float().numpy()  # (batch, vocab)
        return [sparsify(row, top_k=params["top_k"], threshold=params["threshold"]) for row in dense]

    def to_json(self, result: Any) -> Any:
        """TEI's shape: ``[{"index", "value"}]``."""
        return [{"index": int(i), "value": float(v)} for i, v in zip(result["indices"], result["values"], strict=True)]

    def to_hf(self, results: list[Any], single: bool) -> Any:
        return [self.to_json(r) for r in results]  # TEI answers a list, one text included

    def export_info(self, config: Any, sentence_transformers: Mapping[str, Any]) -> dict[str, Any]:
        splade = sentence_transformers.get("splade") or {}
        return {"pooling": {"mode": "splade", "pooling_strategy": splade.get("pooling_strategy", "max"),
                            "activation_function": splade.get("activation_function", "relu")}}  # fmt: skip

    def head_flops(self, dims: Dims, batch: int, seq: int, *, pooler: bool) -> int:
        # the masked-LM head over every token (transform, then decode to the vocabulary); pooling is memory-bound
        return 2 * batch * seq * (dims.hidden * dims.embedding + dims.embedding * dims.vocab)
