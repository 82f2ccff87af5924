"""The FLOP model: what one forward pass of an encoder costs, from its config alone.

Counted as 2 FLOPs per multiply-add, over the matmuls that dominate (embedding lookups, norms, softmax
and activations are left out, as torch's FlopCounterMode leaves them out). Per layer, for ``batch``
sequences of ``seq`` tokens with hidden size ``h`` and FFN size ``i``:

    dense      2 * batch * seq * (4 h^2 + 2 h i)      Q, K, V, output projections and the FFN
    attention  4 * batch * seq^2 * h                  Q K^T and attention x V

plus the task head, the ALBERT/ELECTRA embedding projection, ModernBERT's GLU FFN (``3 h i``) and
DeBERTa-v2's disentangled-attention terms. The dense term grows linearly with padding, the attention
term quadratically, which is why bucket planning weighs long buckets more than their token count.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# config attribute aliases across families (DistilBERT names its dims differently)
_ALIASES = {
    "hidden_size": ("hidden_size", "dim"),
    "num_hidden_layers": ("num_hidden_layers", "n_layers"),
    "intermediate_size": ("intermediate_size", "hidden_dim"),
}


def _get(config: Any, key: str, default: int | None = None) -> int:
    for name in _ALIASES.get(key, (key,)):
        value = config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)
        if value is not None:
            return int(value)
    if default is None:
        raise ValueError(f"config has no {key!r} (tried {', '.join(_ALIASES.get(key, (key,)))})")
    return default


def layer_flops(config: Any, batch: int, seq: int) -> tuple[int, int]:
    """(dense, attention) FLOPs of the whole encoder stack, embedding projection included."""
    h = _get(config, "hidden_size")
    i = _get(config, "intermediate_size")
    layers = _get(config, "num_hidden_layers")
    e = _get(config, "embedding_size", h)
    ffn = 3 * h * i if _model_type(config) == "modernbert" else 2 * h * i  # ModernBERT's FFN is a GLU
    dense = 2 * batch * seq * (4 * h * h + ffn) * layers
    if e != h:  # ALBERT and ELECTRA project embeddings up to the hidden size
        dense += 2 * batch * seq * e * h
    attention = 4 * batch * seq * seq * h * layers
    if _model_type(config) == "deberta-v2" and _get(config, "relative_attention", 0):
        attention += layers * _deberta_relative(config, batch, seq, h)
    return dense, attention


def _deberta_relative(config: Any, batch: int, seq: int, h: int) -> int:
    """Disentangled attention, per layer and per c2p/p2c term: project the 2*span relative embeddings,
    then score every token against them."""
    span = _get(config, "position_buckets", 0)
    if span <= 0:
        span = _get(config, "max_relative_positions", -1)
    if span <= 0:
        span = _get(config, "max_position_embeddings")
    raw = config.get("pos_att_type") if isinstance(config, Mapping) else getattr(config, "pos_att_type", None)
    terms = sum(t in ("c2p", "p2c") for t in (raw or []))
    return terms * (2 * (2 * span) * h * h + 2 * batch * seq * (2 * span) * h)


def head_flops(config: Any, batch: int, seq: int, task: str, *, pooler: bool) -> int:
    """FLOPs of the task head on top of the encoder."""
    h = _get(config, "hidden_size")
    labels = _num_labels(config)
    if task == "fill-mask":  # transform to the embedding size, then decode to the vocabulary
        e = _get(config, "embedding_size", h)
        return 2 * batch * seq * (h * e + e * _get(config, "vocab_size"))
    if task == "text-classification":  # every family: a hidden x hidden pooler or dense, then the classifier
        return 2 * batch * h * h + 2 * batch * h * labels
    per_token_head = 2 * batch * seq * h * h if _model_type(config) == "modernbert" else 0  # a dense before the head
    if task == "token-classification":
        return per_token_head + 2 * batch * seq * h * labels
    if task == "question-answering":
        return per_token_head + 2 * batch * seq * h * 2
    return 2 * batch * h * h if pooler else 0


def flops(config: Any, batch: int, seq: int, task: str = "feature-extraction", *, pooler: bool = True) -> int:
    """FLOPs of one forward pass at (batch, seq): encoder dense + attention terms, plus the task head."""
    dense, attention = layer_flops(config, batch, seq)
    return dense + attention + head_flops(config, batch, seq, task, pooler=pooler)


def _model_type(config: Any) -> str:
    value = config.get("model_type") if isinstance(config, Mapping) else getattr(config, "model_type", None)
    return str(value or "")


def _num_labels(config: Any) -> int:
    id2label = config.get("id2label") if isinstance(config, Mapping) else getattr(config, "id2label", None)
    return len(id2label) if id2label else 2
