"""Padding-free dense layers inside the exported graph (what CTranslate2's ``Padder`` does).

The real tokens of a padded ``(batch, seq)`` input are gathered into one ``(tokens, hidden)`` matrix before the
first layer; every dense layer (QKV, attention output, FFN) and LayerNorm runs on real tokens only, and they are
laid out padded again only for attention, which needs it (gathered from the real tokens, ``padded_sources``).
Executed dense FLOPs then equal the unpadded ones, and buckets only shape attention. Padded positions of
``last_hidden_state`` come out as zeros (they carry no meaning; parity is checked on real positions only; an input
with no real token at all is run as if its first position were one).

It applies to the BERT-layout encoders (BERT, RoBERTa, XLM-R, ELECTRA): layers with ``attention.self.{query,
key,value}``, ``attention.output.{dense,LayerNorm}``, ``intermediate.dense`` and ``output.{dense,LayerNorm}``,
absolute positions, no cross-attention. The model's own embeddings and pooler are reused unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# The layout of the graph this module traces, keyed in the export cache (exporter._cache_key): a graph cached
# under an older revision is exported again. 2: linear layers take (1, tokens, features), so ONNX records them as
# MatMul and Add, which ONNX Runtime's dynamic int8 quantizes, not Gemm, which it leaves in float32. 3: the
# attention scale is folded into the query weights, and the real tokens' q, k and v are scattered into a (3, heads,
# batch, seq, head_dim) buffer, so that each is contiguous and the products copy nothing; on the corpus
# (all-MiniLM-L6-v2, 2 threads, AMX Xeon, interleaved passes) TorchScript 2-4 %, ONNX 2-3 % and OpenVINO about
# 1 % faster, 8x128 2-9 %. 4: the padded q, k and v are gathered from the real tokens (``padded_sources``) instead
# of scattered into zeros: ONNX Runtime's ScatterND copied the whole zero buffer at each layer before scattering,
# and a transpose back followed; over the corpus (all-MiniLM-L6-v2, 2 threads, 2-core AVX2 EPYC) that plumbing
# (ScatterND, Transpose, Gather) went from 0.29-0.36 s to 0.19-0.20 s of ONNX Runtime's kernel time.
REVISION = 4


def base_of(model: Any) -> Any:
    """The BERT-layout base model inside ``model`` (itself, or its ``base_model``), or None."""
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    config = getattr(base, "config", None)
    if layers is None or config is None or len(layers) == 0:
        return None
    if getattr(config, "position_embedding_type", "absolute") != "absolute" or getattr(config, "is_decoder", False):
        return None
    needed = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
              "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm")  # fmt: skip
    names = {n for n, _ in layers[0].named_modules()}
    return base if all(n in names for n in needed) else None


class UnpaddedEncoder(nn.Module):
    """Stands in for a BERT-layout base model: same keyword inputs, same ``last_hidden_state`` and
    ``pooler_output`` on real tokens, dense layers on real tokens only."""

    def __init__(self, base: Any) -> None:
        super().__init__()
        config = base.config
        self.embeddings = base.embeddings
        self.project = getattr(base, "embeddings_project", None)  # ELECTRA: embedding width -> hidden
        self.pooler = getattr(base, "pooler", None)
        self.heads = int(config.num_attention_heads)
        self.hidden = int(config.hidden_size)
        self.head_dim = self.hidden // self.heads
        self.encoder = _Layers(base.encoder.layer)  # named as in the model: int8's gate groups by these names
        self.config = config

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        **_: Any,
    ) -> dict[str, torch.Tensor]:
        x, idx = self.tokens(input_ids, attention_mask, token_type_ids)
        last = scatter(x, idx, *input_ids.shape)
        out = {"last_hidden_state": last}
        if self.pooler is not None:
            out["pooler_output"] = self.pooler(last)
        return out

    def tokens(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The last hidden states of the real tokens, ``(tokens, hidden)`` row-major, and their positions in the
        flattened ``(batch * seq)`` layout (``real_positions``)."""
        emb = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        if self.project is not None:
            emb = self.project(emb)
        batch, seq = input_ids.shape
        idx = real_positions(attention_mask)
        x = emb.reshape(batch * seq, self.hidden).index_select(0, idx)
        bias = (1.0 - attention_mask[None, :, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        source = padded_sources(attention_mask)
        for layer in self.encoder.layer:
            x = layer(x, idx, source, bias, batch, seq, self.heads, self.head_dim)
        return x, idx


def _real(attention_mask: torch.Tensor) -> torch.Tensor:
    """The flattened mask, with the first position taken as real when no position is, so that the layers never run
    on zero tokens (attention masks that position from every other; its output is not defined)."""
    real = attention_mask.reshape(-1)
    return torch.cat([torch.maximum(real[:1], 1 - real.max()), real[1:]])


def real_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """The positions of the real tokens in the flattened ``(batch * seq)`` layout, row-major."""
    return _real(attention_mask).nonzero().squeeze(1)


def padded_sources(attention_mask: torch.Tensor) -> torch.Tensor:
    """For each position of the flattened ``(batch * seq)`` layout, the real token (``real_positions``' index) that
    attention reads there: its own where it is real, else the last real one before it, or the first; attention
    masks padded keys out, and padded queries' outputs are dropped. Gathering the padded layout from the tokens
    by these replaces scattering the tokens into zeros (REVISION 4)."""
    return (_real(attention_mask).cumsum(0) - 1).clamp(min=0)


def scatter(x: torch.Tensor, idx: torch.Tensor, batch: int, seq: int) -> torch.Tensor:
    """``(tokens, features)`` back to ``(batch, seq, features)``, zeros at the padded positions."""
    return x.new_zeros(batch * seq, x.shape[-1]).index_copy(0, idx, x).view(batch, seq, x.shape[-1])


class _Layers(nn.Module):
    def __init__(self, layers: Any) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(layer) for layer in layers)


class _Layer(nn.Module):
    def __init__(self, layer: Any) -> None:
        super().__init__()
        sa = layer.attention.self
        weight = sa.query.weight
        self.qkv = nn.Linear(  # one GEMM instead of three
            sa.query.in_features, 3 * sa.query.out_features, device=weight.device, dtype=weight.dtype
        )
        scale = float(sa.attention_head_size) ** -0.5  # folded into the query rows: no scaling of the scores
        with torch.no_grad():
            self.qkv.weight.copy_(torch.cat([sa.query.weight * scale, sa.key.weight, sa.value.weight]))
            self.qkv.bias.copy_(torch.cat([sa.query.bias * scale, sa.key.bias, sa.value.bias]))
        self.attn_out, self.attn_norm = layer.attention.output.dense, layer.attention.output.LayerNorm
        self.inter, self.act = layer.intermediate.dense, layer.intermediate.intermediate_act_fn
        self.out, self.out_norm = layer.output.dense, layer.output.LayerNorm

    def forward(self, x: torch.Tensor, idx: torch.Tensor, source: torch.Tensor, bias: torch.Tensor, batch: int,
                seq: int, heads: int, head_dim: int) -> torch.Tensor:  # fmt: skip
        tokens, hidden = x.shape[0], heads * head_dim
        qkv = _dense(self.qkv, x).view(tokens, 3 * heads, head_dim).transpose(0, 1)
        padded = qkv.index_select(1, source)
        q, k, v = padded.view(3, heads, batch, seq, head_dim).unbind(0)  # each (heads, batch, seq, d), contiguous
        scores = torch.matmul(q, k.transpose(-1, -2)) + bias
        ctx = torch.matmul(scores.softmax(-1), v).view(heads, batch * seq, head_dim).index_select(1, idx)
        ctx = ctx.transpose(0, 1).reshape(tokens, hidden)
        x = self.attn_norm(_dense(self.attn_out, ctx) + x)
        out: torch.Tensor = self.out_norm(_dense(self.out, self.act(_dense(self.inter, x))) + x)
        return out


def _dense(linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``linear`` on a ``(tokens, features)`` matrix, applied as to a batch of one: ONNX then records MatMul and
    Add rather than Gemm, which ONNX Runtime's dynamic int8 quantization does not rewrite (REVISION 2). The same
    GEMM runs either way: float32 ONNX measured 3.46 s on the corpus against 3.49 s with Gemm."""
    out: torch.Tensor = linear(x.unsqueeze(0)).squeeze(0)
    return out


def unpadded(model: Any) -> nn.Module:
    """A copy of ``model`` whose BERT-layout base runs its dense layers on real tokens only (a task model keeps
    its head; a task graph with ``on_real_tokens(encoder)`` rebuilds itself around the encoder, as SPLADE runs
    its masked-LM head on real tokens too); an OptionsError when the layout is not one of those."""
    import copy

    from .errors import OptionsError

    if base_of(model) is None:
        kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise OptionsError(
            f"--unpad (padding-free dense layers) applies to BERT-layout encoders (bert, roberta, xlm-roberta, "
            f"electra), not {kind}; export without it"
        )
    copied: nn.Module = copy.deepcopy(model)
    base = base_of(copied)
    if base is copied:
        return UnpaddedEncoder(copied)
    on_real_tokens = getattr(copied, "on_real_tokens", None)
    if on_real_tokens is not None:  # a task graph whose head runs on real tokens too (SPLADE)
        rebuilt: nn.Module = on_real_tokens(UnpaddedEncoder(base))
        return rebuilt
    setattr(copied, model.base_model_prefix, _Adapter(UnpaddedEncoder(base)))
    return copied


class _Adapter(nn.Module):
    """What a task head calls as its base model: positional or keyword inputs, a ModelOutput-like answer."""

    def __init__(self, encoder: UnpaddedEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                **_: Any) -> Any:  # fmt: skip
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return BaseModelOutputWithPooling(**self.encoder(input_ids, attention_mask, token_type_ids))


class TokensOnly(nn.Module):
    """What a head calls as its base model when it too should run on real tokens only: ``last_hidden_state`` is
    ``(1, tokens, hidden)``, the real tokens row-major (a batch of one, as ``_dense`` feeds linear layers); the
    caller scatters what the head computes from them (``real_positions``, ``scatter``)."""

    def __init__(self, encoder: UnpaddedEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                **_: Any) -> Any:  # fmt: skip
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        x, _idx = self.encoder.tokens(input_ids, attention_mask, token_type_ids)
        return BaseModelOutputWithPooling(last_hidden_state=x.unsqueeze(0))
