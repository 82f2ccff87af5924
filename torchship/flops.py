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

from typing import Any

from .registry import ArchSpec, config_get, spec_of


def layer_dense_flops(config: Any, batch: int, seq: int) -> int:
    """FLOPs of the encoder layers' dense matmuls (Q, K, V, output projections, FFN): what padding-free dense
    layers (unpad.py) run on real tokens only."""
    spec = spec_of(config)
    h = spec.dim(config, "hidden_size")
    i = spec.dim(config, "intermediate_size")
    ffn = 3 * h * i if spec.glu_ffn else 2 * h * i
    return 2 * batch * seq * (4 * h * h + ffn) * spec.dim(config, "num_hidden_layers")


def layer_flops(config: Any, batch: int, seq: int) -> tuple[int, int]:
    """(dense, attention) FLOPs of the whole encoder stack, embedding projection included."""
    spec = spec_of(config)
    h = spec.dim(config, "hidden_size")
    layers = spec.dim(config, "num_hidden_layers")
    e = spec.dim(config, "embedding_size", h)
    dense = layer_dense_flops(config, batch, seq)
    if e != h:  # ALBERT and ELECTRA project embeddings up to the hidden size
        dense += 2 * batch * seq * e * h
    attention = 4 * batch * seq * seq * h * layers
    if spec.relative_attention and spec.dim(config, "relative_attention", 0):
        attention += layers * _relative(spec, config, batch, seq, h)
    return dense, attention


def _relative(spec: ArchSpec, config: Any, batch: int, seq: int, h: int) -> int:
    """Disentangled attention, per layer and per c2p/p2c term: project the 2*span relative embeddings,
    then score every token against them."""
    span = spec.dim(config, "position_buckets", 0)
    if span <= 0:
        span = spec.dim(config, "max_relative_positions", -1)
    if span <= 0:
        span = spec.dim(config, "max_position_embeddings")
    terms = sum(t in ("c2p", "p2c") for t in (config_get(config, "pos_att_type") or []))
    return terms * (2 * (2 * span) * h * h + 2 * batch * seq * (2 * span) * h)


def head_flops(config: Any, batch: int, seq: int, task: str, *, pooler: bool) -> int:
    """FLOPs of the task head on top of the encoder, as the task counts them."""
    from . import tasks

    return tasks.get(task).head_flops(dims(config), batch, seq, pooler=pooler)


def dims(config: Any) -> Any:
    """The dimensions a task head's cost depends on."""
    from .tasks import Dims

    spec = spec_of(config)
    h = spec.dim(config, "hidden_size")
    id2label = config_get(config, "id2label")
    return Dims(
        hidden=h,
        embedding=spec.dim(config, "embedding_size", h),
        vocab=spec.dim(config, "vocab_size", 0),
        labels=len(id2label) if id2label else 2,
        head_dense=spec.head_dense,
    )


def flops(config: Any, batch: int, seq: int, task: str = "feature-extraction", *, pooler: bool = True) -> int:
    """FLOPs of one forward pass at (batch, seq): encoder dense + attention terms, plus the task head."""
    dense, attention = layer_flops(config, batch, seq)
    return dense + attention + head_flops(config, batch, seq, task, pooler=pooler)
