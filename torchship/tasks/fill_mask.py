"""fill-mask: for each mask, the ``top_k`` ``{score, token, token_str, sequence}``, as transformers' pipeline."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ArtifactError
from . import Batch, Context, Dims, Param, Task, register

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


@register
class FillMask(Task):
    name = "fill-mask"
    auto_class = "AutoModelForMaskedLM"
    arch_suffix = "ForMaskedLM"
    params = (Param("top_k", 5, "candidates per mask", server_max=100),)

    def prepare(self, ctx: Context, params: Mapping[str, Any]) -> Any:
        mask_id = ctx.encoder.token_to_id(ctx.manifest.tokenizer.mask_token or "")
        if mask_id is None:
            raise ArtifactError("the tokenizer has no mask token; export the artifact again", path=".")
        return mask_id

    def postprocess(
        self, ctx: Context, prepared: Any, batch: Batch, payloads: list[Any], params: Mapping[str, Any]
    ) -> list[Any]:
        return postprocess(batch, mask_token_id=prepared, top_k=params["top_k"], decode=ctx.encoder.decode)

    def head_flops(self, dims: Dims, batch: int, seq: int, *, pooler: bool) -> int:
        # transform to the embedding size, then decode to the vocabulary
        return 2 * batch * seq * (dims.hidden * dims.embedding + dims.embedding * dims.vocab)
