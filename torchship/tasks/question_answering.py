"""question-answering: ``{score, start, end, answer}``, with long contexts split into overlapping windows.

As transformers' (v4) QuestionAnsweringPipeline: the context is cut into windows of ``max_length`` tokens
that overlap by ``doc_stride`` tokens; per window, start and end logits outside the context are masked,
softmaxed, and the best span (end >= start, at most ``max_answer_len`` tokens) scores start_p * end_p;
the best span across windows wins. Character offsets come from the tokenizer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tokenizers import Encoding, Tokenizer

from ..errors import InputError


def windows(tokenizer: Tokenizer, question: str, context: str, *, max_length: int, doc_stride: int) -> list[Encoding]:
    """The (question, context window) encodings covering the whole context."""
    question_tokens = len(tokenizer.encode(question, add_special_tokens=False).ids)
    room = max_length - question_tokens - 3  # [CLS] q [SEP] ctx [SEP]
    if room < 1:
        raise InputError(
            f"the question has {question_tokens} tokens, too long for the longest traced length {max_length}; "
            "shorten it or export with a longer bucket"
        )
    tok = Tokenizer.from_str(tokenizer.to_str())
    tok.no_padding()
    tok.enable_truncation(max_length, stride=min(doc_stride, room - 1), strategy="only_second")
    first = tok.encode(question, context)
    return [first, *first.overflowing]


def best_spans(
    start_logits: np.ndarray, end_logits: np.ndarray, window: Encoding, *, max_answer_len: int, top_k: int
) -> list[tuple[float, int, int]]:
    """The ``top_k`` best (score, start token, end token) of one window, over context tokens only."""
    context = np.array([s == 1 for s in window.sequence_ids])  # (seq,)
    start = _masked_softmax(start_logits, context)
    end = _masked_softmax(end_logits, context)
    scores = np.triu(np.outer(start, end))  # (seq, seq): end >= start
    scores = np.tril(scores, max_answer_len - 1)  # at most max_answer_len tokens
    scores[~context, :] = 0
    scores[:, ~context] = 0
    flat = scores.ravel()
    best = np.argsort(-flat, kind="stable")[:top_k]
    spans = []
    for i in best:
        if flat[i] > 0:
            s, e = np.unravel_index(int(i), scores.shape)
            spans.append((float(flat[i]), int(s), int(e)))
    return spans


def _masked_softmax(logits: np.ndarray, keep: np.ndarray) -> np.ndarray:
    masked = np.where(keep, logits, -10000.0)
    shifted = np.exp(masked - masked.max())
    probs: np.ndarray = shifted / shifted.sum()
    return probs


def answer(context: str, candidates: list[tuple[float, int, int, Encoding]], *, top_k: int) -> list[dict[str, Any]]:
    """The ``top_k`` best distinct answers across windows, as ``{score, start, end, answer}``."""
    seen, out = set(), []
    for score, s, e, window in sorted(candidates, key=lambda c: -c[0]):
        start, end = window.offsets[s][0], window.offsets[e][1]
        if (start, end) in seen:
            continue
        seen.add((start, end))
        out.append({"score": score, "start": start, "end": end, "answer": context[start:end]})
        if len(out) == top_k:
            break
    return out
