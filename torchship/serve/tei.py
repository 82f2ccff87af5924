"""Hugging Face text-embeddings-inference (TEI) routes, with TEI's request fields and response shapes
(from TEI's ``router/src/http/types.rs``), so TEI's clients and the RAG stacks built on them work unchanged.

    POST /embed         {inputs, truncate, truncation_direction, prompt_name, normalize, dimensions} -> [[float]]
    POST /embed_all     token embeddings -> [[[float]]]
    POST /embed_sparse  SPLADE -> [[{index, value}]]            (torchship also takes top_k and threshold)
    POST /rerank        {query, texts, raw_scores, return_text, truncate} -> [{index, score, text?}], best first
    POST /similarity    {inputs: {source_sentence, sentences}, parameters} -> [float]
    POST /tokenize      {inputs, add_special_tokens, prompt_name} -> [[{id, text, special, start, stop}]]
    POST /decode        {ids, skip_special_tokens} -> [str]
    POST /predict       {inputs, truncate, truncation_direction, raw_scores} -> [{score, label}] (or a list of them)
    GET  /info          TEI's Info

At the root, ``/predict`` and ``/info`` stay torchship's own (their bodies differ from TEI's), so TEI's two are
served under the model's prefix: point a TEI client at ``http://host:port/models/NAME`` to get every route in
TEI's shape. A route a model's task cannot answer is a 400 naming the task that can (and is left out of the
OpenAPI document). ``start``/``stop`` in /tokenize are UTF-8 byte offsets, as TEI's. Errors are
``{"error", "error_type"}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from .. import __version__
from ..options import ServeOptions
from ..runtime import ranked
from ..tokenize import check_texts, is_blank
from . import schema
from .hf import similarity as cosine
from .models import Body, HTTPError, Int, Served, invalid, parse, wrong_task

Direction = Literal["Left", "Right", "left", "right"]


class TruncatingRequest(Body):
    truncate: bool | None = None
    truncation_direction: Direction | None = None

    prompt_name: str | None = None

    def run_options(self) -> dict[str, Any]:
        return {
            "truncate": self.truncate,
            "direction": (self.truncation_direction or "right").lower(),
            "prompt_name": self.prompt_name,
        }


class EmbedRequest(TruncatingRequest):
    inputs: str | list[str]
    normalize: bool = True
    dimensions: Int | None = None


class EmbedAllRequest(TruncatingRequest):
    inputs: str | list[str]


class EmbedSparseRequest(TruncatingRequest):
    inputs: str | list[str]
    top_k: Int | None = Field(None, description="torchship: keep the largest N weights per text")
    threshold: float = Field(0.0, description="torchship: drop weights at or below this value")


class PredictRequest(TruncatingRequest):
    inputs: str | list[str] | list[list[str]]
    raw_scores: bool = False


class RerankRequest(TruncatingRequest):
    query: str
    texts: list[str]
    raw_scores: bool = False
    return_text: bool = False


class SimilarityParameters(TruncatingRequest):
    pass


class SimilarityInput(Body):
    source_sentence: str
    sentences: list[str]


class SimilarityRequest(Body):
    inputs: SimilarityInput
    parameters: SimilarityParameters | None = None


class TokenizeRequest(Body):
    inputs: str | list[str]
    add_special_tokens: bool = True
    prompt_name: str | None = None


class DecodeRequest(Body):
    ids: list[Int] | list[list[Int]]
    skip_special_tokens: bool = True


def add_routes(
    app: FastAPI, root: str, served: Served, *, authorize: Callable[..., None], options: ServeOptions,
    at_root: bool,
) -> list[str]:  # fmt: skip
    """TEI's routes for ``served`` under ``root``; at the server's root, without /predict and /info."""
    task, predictor, paths = served.task, served.predictor, []
    errors = schema.inference_error_responses(400, 401, 413, 422, 503)

    def route(
        name: str, answers: bool, summary: str, body: dict[str, Any] | None = None, method: str = "POST"
    ) -> Callable[[Any], Any]:
        def register(handler: Any) -> Any:
            path = f"{root}/{name}"
            paths.append(path)
            app.add_api_route(
                path, handler, methods=[method], dependencies=[Depends(authorize)], include_in_schema=answers,
                summary=f"TEI {summary}", responses={200: {"description": summary}, **errors},
                openapi_extra=schema.body(body, [k for k in ("inputs", "query", "texts", "ids") if k in body],
                                          f"TEI {name} request") if body is not None else None,
            )  # fmt: skip
            return handler

        return register

    text, texts = schema.text(options), schema.texts(options)
    prompts = list(predictor.manifest.prompts) if task.takes_prompts else None
    serving = schema.truncation(prompts)
    flag = {"type": "boolean"}
    dimensions = {"anyOf": [{"type": "integer", "minimum": 1, "maximum": served.dim or 1}, {"type": "null"}]}
    n_items = {"minItems": 1, "maxItems": options.max_input_items}
    vocab = predictor.encoder.tokenizer.get_vocab_size(with_added_tokens=True)
    ids = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": vocab - 1}, "minItems": 1,
           "maxItems": options.max_input_chars}  # fmt: skip
    one_or_two = {"type": "array", "items": text, "minItems": 1, "maxItems": 2}

    def need(answers: bool, what: str) -> None:
        if not answers:
            raise wrong_task(f"model {served.name!r} serves {task.name}; {what}")

    def texts_of(inputs: str | list[str]) -> list[str]:
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        if not texts:
            raise invalid("inputs is empty; pass a string or a non-empty list of strings")
        return texts

    @route(
        "embed",
        task.embeds,
        "sentence embeddings",
        {"inputs": texts, **serving, "normalize": flag, "dimensions": dimensions},
    )
    async def embed(request: Request) -> JSONResponse:
        request.state.model = served.name
        body = await parse(request, EmbedRequest)
        need(task.embeds, "/embed needs a feature-extraction artifact")
        served.check_dimensions(body.dimensions)
        params = {"dimensions": body.dimensions, "normalize": body.normalize}
        outcome = await served.run(texts_of(body.inputs), {}, params, **body.run_options())
        return JSONResponse([task.to_json(v) for v in outcome.results], headers=outcome.headers)

    @route("embed_all", task.embeds, "token embeddings", {"inputs": texts, **serving})
    async def embed_all(request: Request) -> JSONResponse:
        request.state.model = served.name
        body = await parse(request, EmbedAllRequest)
        need(task.embeds, "/embed_all needs a feature-extraction artifact")
        outcome = await served.run(texts_of(body.inputs), {}, {"output": "tokens"}, **body.run_options())
        return JSONResponse([v.tolist() for v in outcome.results], headers=outcome.headers)

    @route("embed_sparse", task.sparse, "sparse (SPLADE) embeddings", {
        "inputs": texts, **serving, "top_k": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]},
        "threshold": {"type": "number", "minimum": 0},
    })  # fmt: skip
    async def embed_sparse(request: Request) -> JSONResponse:
        request.state.model = served.name
        body = await parse(request, EmbedSparseRequest)
        need(task.sparse, "/embed_sparse needs a sparse-embedding artifact (export a masked LM with --task "
                          "sparse-embedding)")  # fmt: skip
        params = {"top_k": body.top_k, "threshold": body.threshold}
        outcome = await served.run(texts_of(body.inputs), {}, params, **body.run_options())
        return JSONResponse([task.to_json(v) for v in outcome.results], headers=outcome.headers)

    rerankable = served.reranks

    @route("rerank", rerankable, "rerank texts against a query", {
        "query": text, "texts": {"type": "array", "items": text, **n_items}, **schema.truncation(None),
        "raw_scores": flag, "return_text": flag,
    })  # fmt: skip
    async def rerank(request: Request) -> JSONResponse:
        request.state.model = served.name
        body = await parse(request, RerankRequest)
        need(rerankable, "/rerank needs a cross-encoder: a text-classification model with one label")
        if not body.texts:
            raise invalid("texts is empty; pass at least one text to rank")
        ranks, headers = await rank(served, body.query, body.texts, raw=body.raw_scores, **body.run_options())
        return JSONResponse(
            [{"index": r["corpus_id"], **({"text": body.texts[r["corpus_id"]]} if body.return_text else {}),
              "score": r["score"]} for r in ranks],
            headers=headers,
        )  # fmt: skip

    @route("similarity", task.embeds, "cosine similarity of sentences to a source sentence", {
        "inputs": {"type": "object", "required": ["source_sentence", "sentences"], "properties": {
            "source_sentence": text,
            "sentences": {"type": "array", "items": text, "minItems": 1, "maxItems": options.max_input_items - 1},
        }},
        "parameters": {"anyOf": [{"type": "object", "properties": serving}, {"type": "null"}]},
    })  # fmt: skip
    async def similarity(request: Request) -> JSONResponse:
        request.state.model = served.name
        body = await parse(request, SimilarityRequest)
        need(task.embeds, "/similarity needs a feature-extraction artifact")
        p = body.parameters or SimilarityParameters()
        return JSONResponse(await cosine(served, body.inputs.model_dump(), p.run_options()))

    @route(
        "tokenize",
        True,
        "tokens with their ids, text and byte offsets",
        {"inputs": texts, "add_special_tokens": flag, "prompt_name": serving["prompt_name"]},
    )
    async def tokenize(request: Request) -> JSONResponse:
        request.state.model = served.name
        body = await parse(request, TokenizeRequest)
        texts = texts_of(body.inputs)
        check_texts(texts)  # each non-blank, as the schema says
        served.check_limits(texts)
        prompt = predictor.prompt(body.prompt_name) if body.prompt_name is not None else None
        tokenizer = predictor.encoder.tokenizer
        out = []
        for text in texts:
            text = (prompt or "") + text
            encoding = tokenizer.encode(text, add_special_tokens=body.add_special_tokens)
            out.append([_token(text, *t) for t in zip(encoding.ids, encoding.tokens, encoding.offsets,
                                                      encoding.special_tokens_mask, strict=True)])  # fmt: skip
        return JSONResponse(out)

    @route("decode", True, "token ids back to text", {
        "ids": {"anyOf": [ids, {"type": "array", "items": ids, **n_items}]}, "skip_special_tokens": flag,
    })  # fmt: skip
    async def decode(request: Request) -> JSONResponse:
        request.state.model = served.name
        body = await parse(request, DecodeRequest)
        batch = [body.ids] if body.ids and isinstance(body.ids[0], int) else body.ids
        if not batch or any(not ids for ids in batch):
            raise invalid("ids is empty; pass a list of token ids or a list of such lists")
        longest = max(len(ids) for ids in batch)  # type: ignore[arg-type]
        if len(batch) > options.max_input_items or longest > options.max_input_chars:
            raise HTTPError(
                413, f"{len(batch)} sequences of up to {longest} ids exceed max_input_items {options.max_input_items} "
                f"or max_input_chars {options.max_input_chars} ids each; split the request", "too_many_items",
            )  # fmt: skip
        vocab = predictor.encoder.tokenizer.get_vocab_size(with_added_tokens=True)
        bad = next((i for ids in batch for i in ids if not 0 <= i < vocab), None)  # type: ignore[union-attr]
        if bad is not None:
            raise invalid(f"token id {bad} is outside this tokenizer's vocabulary (0 to {vocab - 1})")
        return JSONResponse(
            [predictor.encoder.decode(list(ids), skip_special_tokens=body.skip_special_tokens) for ids in batch]  # type: ignore[arg-type]
        )

    if not at_root:

        @route("predict", task.classifies, "classify texts or text pairs", {
            "inputs": {"anyOf": [text, one_or_two, {"type": "array", "items": one_or_two, **n_items}]},
            **schema.truncation(None), "raw_scores": flag,
        })  # fmt: skip
        async def predict(request: Request) -> JSONResponse:
            request.state.model = served.name
            body = await parse(request, PredictRequest)
            need(task.classifies, "/predict in TEI's shape needs a text-classification artifact")
            single, items = _predict_inputs(body.inputs)
            labels = max(1, len(predictor.manifest.labels or {}))
            params = {"top_k": min(labels, 100), "function_to_apply": "none" if body.raw_scores else None}
            outcome = await served.run(items, {}, params, **body.run_options())
            results = [[{"score": r["score"], "label": r["label"]} for r in ranked] for ranked in outcome.results]
            return JSONResponse(results[0] if single else results, headers=outcome.headers)

        @route("info", True, "model and router information", None, method="GET")
        async def info(request: Request) -> JSONResponse:
            return JSONResponse(_info(served, options))

    return paths


async def rank(
    served: Served, query: str, texts: list[str], *, raw: bool, **run_options: Any
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Score (query, text) pairs through the batcher; ``[{"corpus_id", "score"}]`` best first, and the
    truncation header."""
    if not isinstance(query, str) or is_blank(query):
        raise invalid("query is empty; pass the text to rank against")
    params = {"top_k": None, "function_to_apply": "none" if raw else None}
    outcome = await served.run([(query, t) for t in texts], {}, params, **run_options)
    scores = [r["score"] for r in outcome.results]
    return ranked(scores, texts, top_k=None, return_documents=False), outcome.headers


def _predict_inputs(inputs: str | list[str] | list[list[str]]) -> tuple[bool, list[Any]]:
    """TEI's PredictInput: a string, a pair ``[a, b]``, or a batch of ``[a]`` / ``[a, b]``."""
    if isinstance(inputs, str):
        return True, [inputs]
    if not inputs:
        raise invalid("inputs is empty; pass a string, a pair of strings, or a batch of [string] or [string, string]")
    if all(isinstance(x, str) for x in inputs):
        if len(inputs) > 2:
            raise invalid("a list of strings is one input of one or two texts; send a batch as [[a], [b, c], ...]")
        return True, [inputs[0] if len(inputs) == 1 else (inputs[0], inputs[1])]
    items: list[Any] = []
    for i, seq in enumerate(inputs):
        if isinstance(seq, str) or not 1 <= len(seq) <= 2:
            raise invalid(f"inputs[{i}] must be [string] or [string, string]")
        items.append(seq[0] if len(seq) == 1 else (seq[0], seq[1]))
    return False, items


def _token(text: str, id_: int, token: str, offsets: tuple[int, int], special: int) -> dict[str, Any]:
    if special:
        return {"id": id_, "text": token, "special": True, "start": None, "stop": None}
    start, stop = len(text[: offsets[0]].encode()), len(text[: offsets[1]].encode())  # TEI counts UTF-8 bytes
    return {"id": id_, "text": text[offsets[0] : offsets[1]], "special": False, "start": start, "stop": stop}


def _info(served: Served, options: ServeOptions) -> dict[str, Any]:
    m = served.predictor.manifest
    labels = {k: v for k, v in (m.labels or {}).items()}
    if served.task.embeds or served.task.sparse:
        model_type: dict[str, Any] = {"embedding": {"pooling": (m.pooling or {}).get("mode", "splade")}}
    else:
        kind = "reranker" if served.reranks else "classifier"
        model_type = {kind: {"id2label": labels, "label2id": {v: int(k) for k, v in labels.items()}}}
    return {
        "model_id": m.source.get("model", served.name), "model_sha": m.source.get("weights_sha256"),
        "model_dtype": m.dtype, "served_model_name": served.name, "model_type": model_type,
        "max_concurrent_requests": options.max_queue, "max_input_length": m.max_length,
        "max_batch_tokens": options.max_batch_tokens, "max_batch_requests": options.max_batch_size,
        "max_client_batch_size": options.max_input_items, "auto_truncate": options.truncate,
        "tokenization_workers": 1, "version": __version__, "sha": None, "docker_label": None,
        "torchship_task": m.task,
    }  # fmt: skip
