"""fill-mask: for each mask, the ``top_k`` ``{score, token, token_str, sequence}``, as transformers' pipeline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import Batch

Decode = Callable[[list[int]], str]


def postprocess(batch: Batch, *, mask_token_id: int, top_k: int, decode: Decode) -> list[Any]:
    logits = batch.outputs["logits"]  # (batch, seq, vocab)
    results: list[Any] = []
    for row, length in enumerate(batch.lengths):
        ids = batch.input_ids[row, :length]
        positions = (ids == mask_token_id).nonzero().flatten().tolist()
        per_mask = []
        for pos in positions:
            probs = logits[row, pos].float().softmax(dim=-1)  # (vocab,)
            scores, tokens = probs.topk(min(top_k, probs.numel()))  # no more candidates than the vocabulary
            candidates = []
            for score, token in zip(scores.tolist(), tokens.tolist(), strict=True):
                filled = ids.clone()
                filled[pos] = token
                candidates.append(
                    {"score": score, "token": token, "token_str": decode([token]), "sequence": decode(filled.tolist())}
                )
            per_mask.append(candidates)
        results.append(per_mask[0] if len(per_mask) == 1 else per_mask)
    return results
