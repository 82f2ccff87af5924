"""One small declarative spec per architecture, registered by a decorator.

Adding a BERT-style family takes a few lines::

    @register
    def _bert() -> ArchSpec:
        return ArchSpec("bert", token_type_ids=True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import UnsupportedModelError
from .options import TASKS

# Dynamic axes, named once; formats and bucket planning reuse these names.
BATCH = "batch"
SEQ = "seq"

# The Auto class each task loads, and the config.architectures suffix that implies it.
TASK_AUTO_CLASS = {
    "feature-extraction": "AutoModel",
    "fill-mask": "AutoModelForMaskedLM",
    "text-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "question-answering": "AutoModelForQuestionAnswering",
}
_ARCH_SUFFIX_TASK = (
    ("ForMaskedLM", "fill-mask"),
    ("ForSequenceClassification", "text-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForQuestionAnswering", "question-answering"),
    ("Model", "feature-extraction"),
)


@dataclass(frozen=True)
class ArchSpec:
    """How one ``config.model_type`` is exported.

    ``token_type_ids``: the family has segment embeddings (used only when ``type_vocab_size > 1``).
    ``tied_weights``: parameter-name suffixes (input side, output side) that the checkpoint ties; the
    exporter clones them and asserts it found them.
    ``attn_implementation``: what the eager model is loaded with (``"eager"`` where transformers has no SDPA).
    """

    model_type: str
    token_type_ids: bool = False
    tasks: tuple[str, ...] = TASKS
    tied_weights: tuple[tuple[str, str], ...] = ()
    atol: float = 1e-4
    attn_implementation: str = "sdpa"

    def input_names(self, config: Any) -> tuple[str, ...]:
        names: tuple[str, ...] = ("input_ids", "attention_mask")
        if self.token_type_ids and int(getattr(config, "type_vocab_size", 0) or 0) > 1:
            names += ("token_type_ids",)
        return names


_REGISTRY: dict[str, ArchSpec] = {}


def register(factory: Callable[[], ArchSpec]) -> Callable[[], ArchSpec]:
    spec = factory()
    if spec.model_type in _REGISTRY:
        raise ValueError(f"architecture {spec.model_type!r} is registered twice")
    _REGISTRY[spec.model_type] = spec
    return factory


def supported() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def get_spec(model_type: str) -> ArchSpec:
    try:
        return _REGISTRY[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"architecture {model_type!r} is not supported; supported model_type values are: {', '.join(supported())}"
        ) from None


def infer_task(config: Any) -> str:
    """Read the task from ``config.architectures`` (``BertForMaskedLM`` -> ``fill-mask``)."""
    architectures = list(getattr(config, "architectures", None) or [])
    for arch in architectures:
        for suffix, task in _ARCH_SUFFIX_TASK:
            if arch.endswith(suffix):
                return task
    raise UnsupportedModelError(
        f"cannot infer the task from config.architectures={architectures}; pass --task with one of: {', '.join(TASKS)}"
    )


@register
def _bert() -> ArchSpec:
    return ArchSpec(
        "bert",
        token_type_ids=True,
        tied_weights=(("embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"),),
        attn_implementation="eager",  # disentangled attention has no SDPA path
    )


@register
def _distilbert() -> ArchSpec:
    return ArchSpec("distilbert", tied_weights=(("embeddings.word_embeddings.weight", "vocab_projector.weight"),))


@register
def _roberta() -> ArchSpec:
    return ArchSpec(
        "roberta", token_type_ids=True, tied_weights=(("embeddings.word_embeddings.weight", "lm_head.decoder.weight"),)
    )


@register
def _xlm_roberta() -> ArchSpec:
    return ArchSpec(
        "xlm-roberta",
        token_type_ids=True,
        tied_weights=(("embeddings.word_embeddings.weight", "lm_head.decoder.weight"),),
    )


@register
def _albert() -> ArchSpec:
    return ArchSpec(
        "albert",
        token_type_ids=True,
        tied_weights=(("embeddings.word_embeddings.weight", "predictions.decoder.weight"),),
    )


@register
def _electra() -> ArchSpec:
    return ArchSpec(
        "electra",
        token_type_ids=True,
        tied_weights=(("embeddings.word_embeddings.weight", "generator_lm_head.weight"),),
    )


@register
def _mpnet() -> ArchSpec:
    return ArchSpec(
        "mpnet",
        tied_weights=(("embeddings.word_embeddings.weight", "lm_head.decoder.weight"),),
        attn_implementation="eager",  # transformers has no SDPA path for MPNet
    )


@register
def _deberta_v2() -> ArchSpec:
    return ArchSpec(
        "deberta-v2",
        token_type_ids=True,
        tied_weights=(("embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"),),
        attn_implementation="eager",  # disentangled attention has no SDPA path
    )


@register
def _modernbert() -> ArchSpec:
    return ArchSpec("modernbert", tied_weights=(("embeddings.tok_embeddings.weight", "decoder.weight"),))
