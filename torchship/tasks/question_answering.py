"""question-answering: ``{score, start, end, answer}``, with long contexts split into overlapping windows.

As transformers' (v4) QuestionAnsweringPipeline: the context is cut into windows of ``max_length`` tokens
that overlap by ``doc_stride`` tokens; per window, start and end logits outside the context are masked,
softmaxed, and the best span (end >= start, at most ``max_answer_len`` tokens) scores start_p * end_p;
the best span across windows wins. Character offsets come from the tokenizer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from tokenizers import Encoding, Tokenizer

from ..errors import InputError, TaskMismatchError
from ..tokenize import Encoded, check_texts
from . import Batch, Context, Dims, Param, Request, Task, Work, register


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
    scores = np.tril(scores, min(max_answer_len, len(start)) - 1)  # at most max_answer_len tokens (any huge value: all)
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


def pairs(question: object, context: object) -> list[tuple[str, str]]:
    """Checked (question, context) pairs: a single question or context is paired with every item of the
    other list; two lists must have equal lengths."""
    if question is None or context is None:
        raise InputError("question-answering needs both question= and context=")
    questions = [str(q) for q in check_texts(question)]
    contexts = [str(c) for c in check_texts(context)]
    if isinstance(question, str):  # one question over many contexts, or many questions about one context
        questions = questions * len(contexts)
    elif isinstance(context, str):
        contexts = contexts * len(questions)
    if len(questions) != len(contexts):
        raise InputError(
            f"got {len(questions)} questions and {len(contexts)} contexts; pass lists of equal length, "
            "or a single question or context to pair with every item of the other"
        )
    return list(zip(questions, contexts, strict=True))


@register
class QuestionAnswering(Task):
    name = "question-answering"
    auto_class = "AutoModelForQuestionAnswering"
    arch_suffix = "ForQuestionAnswering"
    params = (
        Param("top_k", 1, "answers per (question, context); 1 returns the answer itself", server_max=100),
        Param("doc_stride", 128, "tokens that consecutive context windows overlap by"),
        Param("max_answer_len", 15, "longest answer, in tokens"),
    )
    fields = ("question", "context")

    def parse(self, inputs: object, fields: Mapping[str, object]) -> Request:
        if inputs is not None:
            raise TaskMismatchError("question-answering takes question=... and context=..., not positional texts")
        question, context = fields.get("question"), fields.get("context")
        single = isinstance(question, str) and isinstance(context, str)
        return Request(list(pairs(question, context)), single)

    def works(self, ctx: Context, request: Request, params: Mapping[str, Any]) -> list[Work]:
        """One work item per pair: a row per (question, context window), the window as the row's payload."""
        out = []
        for question, context in request.items:
            ws = windows(
                ctx.encoder.tokenizer, question, context, max_length=ctx.max_length, doc_stride=params["doc_stride"]
            )
            out.append(Work(Encoded.of(ws), ws, context))
        return out

    def postprocess(
        self, ctx: Context, prepared: Any, batch: Batch, payloads: list[Any], params: Mapping[str, Any]
    ) -> list[Any]:
        start_logits = batch.outputs["start_logits"].float().numpy()  # (batch, seq)
        end_logits = batch.outputs["end_logits"].float().numpy()
        return [
            [
                (score, s, e, window)
                for score, s, e in best_spans(
                    start_logits[i, :n],
                    end_logits[i, :n],
                    window,
                    max_answer_len=params["max_answer_len"],
                    top_k=params["top_k"],
                )  # fmt: skip
            ]
            for i, (n, window) in enumerate(zip(batch.lengths, payloads, strict=True))
        ]

    def combine(self, work: Work, results: list[Any], params: Mapping[str, Any]) -> Any:
        answers = answer(work.data, [c for spans in results for c in spans], top_k=params["top_k"])
        return answers[0] if params["top_k"] == 1 and answers else answers

    def head_flops(self, dims: Dims, batch: int, seq: int, *, pooler: bool) -> int:
        dense = 2 * batch * seq * dims.hidden * dims.hidden if dims.head_dense else 0
        return dense + 2 * batch * seq * dims.hidden * 2
