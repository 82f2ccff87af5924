"""token-classification: entities with ``aggregation_strategy`` none/simple/first/average/max.

Mirrors transformers' TokenClassificationPipeline: softmax per token, special tokens dropped, character
offsets from the tokenizer, word grouping by the tokenizer's subword prefix, B-/I- grouping, ``O`` ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from . import Batch, Context, Dims, Param, Task, Work, register
from .text_classification import labels_of

STRATEGIES = ("none", "simple", "first", "average", "max")


@dataclass(frozen=True)
class RowText:
    """What a row needs beyond logits: its text, token ids, offsets and special-token mask."""

    text: str
    ids: np.ndarray
    offsets: list[tuple[int, int]]
    special: list[int]


def postprocess(
    batch: Batch,
    rows: list[RowText],
    *,
    labels: dict[str, str],
    strategy: str,
    tokenizer: Tokenizer,
    ignore_labels: tuple[str, ...] = ("O",),
) -> list[list[dict[str, Any]]]:
    logits = batch.outputs["logits"].float().numpy()  # (batch, seq, num_labels)
    word_aware = bool(getattr(tokenizer.model, "continuing_subword_prefix", None))
    unk = tokenizer.token_to_id(str(getattr(tokenizer.model, "unk_token", "") or "")) if word_aware else None
    results = []
    for i, row in enumerate(rows):
        n = len(row.ids)
        scores = _softmax(logits[i, :n])
        pre = _pre_entities(row, scores, tokenizer, word_aware, unk)
        entities = _aggregate(pre, strategy, labels, tokenizer)
        results.append(
            [e for e in entities if e.get("entity") not in ignore_labels and e.get("entity_group") not in ignore_labels]
        )
    return results


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    probs: np.ndarray = shifted / shifted.sum(axis=-1, keepdims=True)
    return probs


def _pre_entities(
    row: RowText, scores: np.ndarray, tokenizer: Tokenizer, word_aware: bool, unk: int | None
) -> list[dict[str, Any]]:
    pre = []
    for idx, token_scores in enumerate(scores):
        if row.special[idx]:
            continue
        token_id = int(row.ids[idx])
        word = tokenizer.id_to_token(token_id) or ""
        start, end = row.offsets[idx]
        word_ref = row.text[start:end]
        if word_aware:
            is_subword = len(word) != len(word_ref)
        else:
            is_subword = start > 0 and " " not in row.text[start - 1 : start + 1]
        if unk is not None and token_id == unk:
            word, is_subword = word_ref, False
        pre.append(
            {"word": word, "scores": token_scores, "start": start, "end": end, "index": idx, "is_subword": is_subword}
        )
    return pre


def _aggregate(
    pre: list[dict[str, Any]], strategy: str, labels: dict[str, str], tokenizer: Tokenizer
) -> list[dict[str, Any]]:
    if strategy in ("none", "simple"):
        entities = []
        for p in pre:
            best = int(p["scores"].argmax())
            entities.append(
                {
                    "entity": _label(labels, best),
                    "score": float(p["scores"][best]),
                    "index": p["index"],
                    "word": p["word"],
                    "start": p["start"],
                    "end": p["end"],
                }
            )
    else:
        entities = []
        group: list[dict[str, Any]] = []
        for p in pre:
            if group and not p["is_subword"]:
                entities.append(_aggregate_word(group, strategy, labels, tokenizer))
                group = []
            group.append(p)
        if group:
            entities.append(_aggregate_word(group, strategy, labels, tokenizer))
    return entities if strategy == "none" else _group_entities(entities, tokenizer)


def _aggregate_word(
    group: list[dict[str, Any]], strategy: str, labels: dict[str, str], tokenizer: Tokenizer
) -> dict[str, Any]:
    if strategy == "first":
        scores = group[0]["scores"]
    elif strategy == "max":
        scores = max(group, key=lambda p: p["scores"].max())["scores"]
    else:  # average
        scores = np.nanmean(np.stack([p["scores"] for p in group]), axis=0)
    best = int(scores.argmax())
    return {
        "entity": _label(labels, best),
        "score": float(scores[best]),
        "word": _tokens_to_string(tokenizer, [p["word"] for p in group]),
        "start": group[0]["start"],
        "end": group[-1]["end"],
    }


def _tag(name: str) -> tuple[str, str]:
    if name.startswith(("B-", "I-")):
        return name[0], name[2:]
    return "I", name


def _group_entities(entities: list[dict[str, Any]], tokenizer: Tokenizer) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    current: list[dict[str, Any]] = []
    for entity in entities:
        if current:
            bi, tag = _tag(entity["entity"])
            _, last_tag = _tag(current[-1]["entity"])
            if not (tag == last_tag and bi != "B"):
                groups.append(_group(current, tokenizer))
                current = []
        current.append(entity)
    if current:
        groups.append(_group(current, tokenizer))
    return groups


def _group(entities: list[dict[str, Any]], tokenizer: Tokenizer) -> dict[str, Any]:
    return {
        "entity_group": entities[0]["entity"].split("-", 1)[-1],
        "score": float(np.nanmean([e["score"] for e in entities])),
        "word": _tokens_to_string(tokenizer, [e["word"] for e in entities]),
        "start": entities[0]["start"],
        "end": entities[-1]["end"],
    }


def _tokens_to_string(tokenizer: Tokenizer, tokens: list[str]) -> str:
    decoder = tokenizer.decoder
    return decoder.decode(tokens) if decoder is not None else " ".join(tokens)


def _label(labels: dict[str, str], index: int) -> str:
    return labels.get(str(index), f"LABEL_{index}")


@register
class TokenClassification(Task):
    name = "token-classification"
    auto_class = "AutoModelForTokenClassification"
    arch_suffix = "ForTokenClassification"
    params = (Param("aggregation_strategy", "none", "how sub-word predictions become entities", "choice", STRATEGIES),)
    takes_pairs = False

    def works(self, ctx: Context, request: Any, params: Mapping[str, Any]) -> list[Work]:
        encoded = ctx.encode(request)
        return [
            Work(encoded.select([i]), [RowText(text, encoded.ids[i], encoded.offsets[i], encoded.special[i])])
            for i, text in enumerate(request.items)
        ]

    def postprocess(
        self, ctx: Context, prepared: Any, batch: Batch, payloads: list[Any], params: Mapping[str, Any]
    ) -> list[Any]:
        return postprocess(
            batch, payloads, labels=ctx.manifest.labels or {}, strategy=params["aggregation_strategy"],
            tokenizer=ctx.encoder.tokenizer,
        )  # fmt: skip

    def export_info(self, config: Any, sentence_transformers: Mapping[str, Any]) -> dict[str, Any]:
        return {"labels": labels_of(config)}

    def head_flops(self, dims: Dims, batch: int, seq: int, *, pooler: bool) -> int:
        dense = 2 * batch * seq * dims.hidden * dims.hidden if dims.head_dense else 0
        return dense + 2 * batch * seq * dims.hidden * dims.labels
