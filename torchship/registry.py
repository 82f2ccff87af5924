"""One small declarative spec per architecture, registered by a decorator.

Adding a BERT-style family takes a few lines::

    @register
    def _bert() -> ArchSpec:
        return ArchSpec("bert", token_type_ids=True)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import UnsupportedModelError

# Dynamic axes, named once; formats and bucket planning reuse these names.
BATCH = "batch"
SEQ = "seq"


@dataclass(frozen=True)
class ArchSpec:
    """Everything torchship knows about one ``config.model_type``; every field is read somewhere.

    ``tasks``: the tasks it exports (None: all). ``token_type_ids``: the family has segment embeddings (used
    only when ``type_vocab_size > 1``).
    ``tied_weights``: parameter-name suffixes (input side, output side) that the checkpoint ties; the
    exporter clones them and asserts it found them.
    ``atol``: the default parity tolerance against the eager model (``--atol`` overrides it).
    ``attn_implementation``: what the eager model is traced with, chosen per family by measurement (README,
    "Attention implementation"); ``"eager"`` where transformers has no SDPA path.
    ``position_padding``: RoBERTa-style families number positions from a padding index + 1, so only
    ``max_position_embeddings - index - 1`` positions are usable; the index is the config's ``pad_token_id``
    (``"pad_token_id"``: RoBERTa, XLM-R) or fixed (MPNet's is 1 whatever the config says).
    ``config_aliases``: config attribute names this family uses for the FLOP model's standard ones.
    ``glu_ffn``: the FFN is a GLU (3 h i instead of 2 h i). ``head_dense``: per-token heads start with a
    hidden x hidden dense. ``relative_attention``: DeBERTa-v2's disentangled attention terms.
    ``ort_fusion``: the ``model_type`` ONNX Runtime's transformer optimizer fuses this family as, or None.
    """

    model_type: str
    token_type_ids: bool = False
    tasks: tuple[str, ...] | None = None  # None: every registered task
    tied_weights: tuple[tuple[str, str], ...] = ()
    atol: float = 1e-4
    attn_implementation: str = "sdpa"
    position_padding: str | int | None = None
    config_aliases: tuple[tuple[str, str], ...] = ()
    glu_ffn: bool = False
    head_dense: bool = False
    relative_attention: bool = False
    ort_fusion: str | None = None

    def input_names(self, config: Any) -> tuple[str, ...]:
        names: tuple[str, ...] = ("input_ids", "attention_mask")
        if self.token_type_ids and int(getattr(config, "type_vocab_size", 0) or 0) > 1:
            names += ("token_type_ids",)
        return names

    def max_positions(self, config: Any) -> int | None:
        """The longest sequence the position embeddings hold, or None when the family has no such limit."""
        limit = int(config_get(config, "max_position_embeddings") or 0)
        if not limit:
            return None
        if self.position_padding is not None:
            index = self.position_padding
            limit -= int(config_get(config, "pad_token_id") or 0 if index == "pad_token_id" else index) + 1
        return limit

    def dim(self, config: Any, key: str, default: int | None = None) -> int:
        """A config dimension by its standard name (hidden_size, ...), through this family's aliases."""
        names = [alias for standard, alias in self.config_aliases if standard == key] + [key]
        for name in names:
            value = config_get(config, name)
            if value is not None:
                return int(value)
        if default is None:
            raise ValueError(f"config has no {key!r} (tried {', '.join(names)})")
        return default


def config_get(config: Any, name: str) -> Any:
    """An attribute of a transformers config, or a key of its dict form."""
    return config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)


def spec_of(config: Any) -> ArchSpec:
    """The spec of a config's model_type, or the generic one for a config of no registered family."""
    return _REGISTRY.get(str(config_get(config, "model_type") or ""), GENERIC)


_REGISTRY: dict[str, ArchSpec] = {}


def register(factory: Callable[[], ArchSpec]) -> Callable[[], ArchSpec]:
    spec = factory()
    if spec.model_type in _REGISTRY:
        raise ValueError(f"architecture {spec.model_type!r} is registered twice")
    _REGISTRY[spec.model_type] = spec
    return factory


def supported() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


GENERIC = ArchSpec("")  # what the FLOP model assumes of a config whose model_type is not registered


def get_spec(model_type: str) -> ArchSpec:
    try:
        return _REGISTRY[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"architecture {model_type!r} is not supported; supported model_type values are: {', '.join(supported())}"
        ) from None


@register
def _bert() -> ArchSpec:
    return ArchSpec(
        "bert",
        token_type_ids=True,
        tied_weights=(("embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"),),
        ort_fusion="bert",
        attn_implementation="eager",  # measured (README): ONNX 14 % faster at 1x128, 8x128
    )


@register
def _distilbert() -> ArchSpec:
    return ArchSpec(
        "distilbert",
        tied_weights=(("embeddings.word_embeddings.weight", "vocab_projector.weight"),),
        config_aliases=(("hidden_size", "dim"), ("num_hidden_layers", "n_layers"), ("intermediate_size", "hidden_dim")),
        ort_fusion="bert",
        attn_implementation="sdpa",  # measured: ONNX 13-28 % faster at 1x128 and 8x128
    )


@register
def _roberta() -> ArchSpec:
    return ArchSpec(
        "roberta",
        token_type_ids=True,
        tied_weights=(("embeddings.word_embeddings.weight", "lm_head.decoder.weight"),),
        position_padding="pad_token_id",
        ort_fusion="bert",
        attn_implementation="eager",  # measured: ONNX 9-19 % faster, TorchScript within noise
    )


@register
def _xlm_roberta() -> ArchSpec:
    return ArchSpec(
        "xlm-roberta",
        token_type_ids=True,
        tied_weights=(("embeddings.word_embeddings.weight", "lm_head.decoder.weight"),),
        position_padding="pad_token_id",
        ort_fusion="bert",
        attn_implementation="eager",  # measured: a tie; RoBERTa's architecture, so RoBERTa's choice
    )


@register
def _albert() -> ArchSpec:
    return ArchSpec(
        "albert",
        token_type_ids=True,
        tied_weights=(("embeddings.word_embeddings.weight", "predictions.decoder.weight"),),
        attn_implementation="eager",  # measured: 16-44 % faster in both formats
    )


@register
def _electra() -> ArchSpec:
    return ArchSpec(
        "electra",
        token_type_ids=True,
        tied_weights=(("embeddings.word_embeddings.weight", "generator_lm_head.weight"),),
        ort_fusion="bert",
        attn_implementation="eager",  # measured (README): ONNX 9 % faster at 1x128, 8x128
    )


@register
def _mpnet() -> ArchSpec:
    return ArchSpec(
        "mpnet",
        tied_weights=(("embeddings.word_embeddings.weight", "lm_head.decoder.weight"),),
        position_padding=1,  # MPNetEmbeddings.padding_idx, fixed
        attn_implementation="eager",  # transformers has no SDPA path for MPNet
    )


@register
def _deberta_v2() -> ArchSpec:
    return ArchSpec(
        "deberta-v2",
        token_type_ids=True,
        tied_weights=(("embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"),),
        attn_implementation="eager",  # disentangled attention has no SDPA path
        relative_attention=True,
    )


@register
def _modernbert() -> ArchSpec:
    return ArchSpec(
        "modernbert",
        tied_weights=(("embeddings.tok_embeddings.weight", "decoder.weight"),),
        glu_ffn=True,
        head_dense=True,
        attn_implementation="eager",  # measured: ONNX 8-16 % faster, TorchScript within noise
    )
