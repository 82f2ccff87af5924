"""The FLOP model: what one forward pass of an encoder costs, from its config alone.

Counted as 2 FLOPs per multiply-add, over the matmuls that dominate (embedding lookups, norms, softmax
and activations are left out, as torch's FlopCounterMode leaves them out). Per layer, for ``batch``
sequences of ``seq`` tokens with hidden size ``h`` and FFN size ``i``:

    dense      2 * batch * seq * (4 h^2 + 2 h i)      Q, K, V, output projections and the FFN
    attention  4 * batch * seq^2 * h                  Q K^T and attention x V

plus the task head. The dense term grows linearly with padding, the attention term quadratically, which is
why bucket planning weighs long buckets more than their token count.
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
    """(dense, attention) FLOPs of the whole encoder stack."""
    h = _get(config, "hidden_size")
    i = _get(config, "intermediate_size")
    layers = _get(config, "num_hidden_layers")
    dense = 2 * batch * seq * (4 * h * h + 2 * h * i) * layers
    attention = 4 * batch * seq * seq * h * layers
    return dense, attention


def head_flops(config: Any, batch: int, seq: int, task: str, *, pooler: bool) -> int:
    """FLOPs of the task head on top of the encoder."""
    h = _get(config, "hidden_size")
    labels = _num_labels(config)
    pool = 2 * batch * h * h if pooler else 0
    if task == "fill-mask":
        return 2 * batch * seq * (h * h + h * _get(config, "vocab_size"))
    if task == "text-classification":
        return pool + 2 * batch * h * labels
    if task == "token-classification":
        return 2 * batch * seq * h * labels
    if task == "question-answering":
        return 2 * batch * seq * h * 2
    return pool


def flops(config: Any, batch: int, seq: int, task: str = "feature-extraction", *, pooler: bool = True) -> int:
    """FLOPs of one forward pass at (batch, seq): encoder dense + attention terms, plus the task head."""
    dense, attention = layer_flops(config, batch, seq)
    return dense + attention + head_flops(config, batch, seq, task, pooler=pooler)


def _num_labels(config: Any) -> int:
    id2label = config.get("id2label") if isinstance(config, Mapping) else getattr(config, "id2label", None)
    return len(id2label) if id2label else 2
