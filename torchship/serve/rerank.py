"""Cohere-style reranking: ``POST /v1/rerank`` and ``POST /v2/rerank``, as Cohere's API (and Jina's and
Infinity's, which copy it) takes and answers it.

    {model, query, documents: [str | {text}], top_n, return_documents}
      -> {id, results: [{index, relevance_score, document?: {text}}], meta}

The model is picked by the body's ``model`` (with one model served, any name). Scores are the cross-encoder's
sigmoid, as ``CrossEncoder.predict``; pairs go through the batcher like any other items.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from ..options import ServeOptions
from . import schema
from .models import Body, Int, Models, Served, invalid, parse
from .tei import rank


class Document(Body):
    text: str


class RerankRequest(Body):
    model: str | None = Field(None, description="the served model's name; with one model, any name")
    query: str
    documents: list[str | Document]
    top_n: Int | None = Field(None, description="return the best N; default: all")
    return_documents: bool = False
    max_tokens_per_doc: Int | None = Field(None, description="at least the model's max_length, where pairs are cut")


def add_routes(
    app: FastAPI, *, models: Models, pick: Callable[[Request, str | None], Served], authorize: Callable[..., None],
    options: ServeOptions,
) -> None:  # fmt: skip
    async def rerank(request: Request) -> JSONResponse:
        body = await parse(request, RerankRequest)
        served = pick(request, body.model)
        if not served.reranks:
            served.task.relevance(served.predictor.context)  # raises: names what a reranker is
        texts = [d if isinstance(d, str) else d.text for d in body.documents]
        if not texts:
            raise invalid("documents is empty; pass at least one document to rank")
        if body.top_n is not None and body.top_n < 1:
            raise invalid(f"top_n must be a positive integer, got {body.top_n}")
        longest = served.predictor.max_length
        if body.max_tokens_per_doc is not None and body.max_tokens_per_doc < longest:
            raise invalid(
                f"max_tokens_per_doc {body.max_tokens_per_doc} is not supported: pairs are cut at the model's "
                f"{longest} tokens; omit it or pass {longest} or more"
            )
        ranks, headers = await rank(served, body.query, texts, raw=False)
        results: list[dict[str, Any]] = [
            {"index": r["corpus_id"], "relevance_score": r["score"],
             **({"document": {"text": texts[r["corpus_id"]]}} if body.return_documents else {})}
            for r in ranks[: body.top_n]
        ]  # fmt: skip
        meta = {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}}
        return JSONResponse({"id": str(uuid.uuid4()), "results": results, "meta": meta}, headers=headers)

    rerankers = [s.name for s in models if s.reranks]
    text = schema.text(options)
    longest = max(s.predictor.max_length for s in models)
    properties = {
        "model": {"anyOf": [{"type": "string"}, {"type": "null"}]} if len(models) == 1
        else {"enum": rerankers or [s.name for s in models]},
        "query": text,
        "documents": {"type": "array", "items": {"anyOf": [
            text, {"type": "object", "required": ["text"], "properties": {"text": text}}
        ]}, "minItems": 1, "maxItems": options.max_input_items},
        "top_n": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]},
        "return_documents": {"type": "boolean"},
        "max_tokens_per_doc": {"anyOf": [{"type": "integer", "minimum": longest}, {"type": "null"}]},
    }  # fmt: skip
    required = ["query", "documents"] if len(models) == 1 else ["model", "query", "documents"]
    body = schema.body(properties, required, "Cohere-style rerank request")
    for path in ("/v1/rerank", "/v2/rerank"):
        app.add_api_route(
            path, rerank, methods=["POST"], dependencies=[Depends(authorize)], include_in_schema=bool(rerankers),
            summary="Cohere-style rerank", openapi_extra=body, responses={
                200: {"description": "documents by relevance, best first"},
                **schema.error_responses(400, 401, 404, 413, 422, 503),
            },
        )  # fmt: skip
