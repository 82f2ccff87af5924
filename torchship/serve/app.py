"""The FastAPI app: OpenAI-compatible embeddings, task-native /predict, health, info, metrics.

Every bad input maps to a 4xx with a message that names the problem: 401 bad key, 400 wrong task,
413 over a limit, 422 malformed or empty, 503 queue full (with Retry-After). Nothing is a 500.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError

from ..errors import InputError, QueueFullError, SequenceTooLongError, TaskMismatchError
from ..options import ServeOptions
from ..runtime import Predictor, load
from ..tokenize import TextInput
from . import hf, schema
from .batcher import Batcher, Item
from .metrics import Metrics


class HTTPError(Exception):
    def __init__(self, status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers or {}


class EmbeddingRequest(BaseModel):
    input: str | list[str] = Field(description="a text or a list of texts")
    model: str = Field("torchship", description="any name; echoed back")
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None
    dimensions: int | None = None


class PredictRequest(BaseModel):
    inputs: str | list[str | tuple[str, str]] | None = Field(None, description="texts, or (text, pair) tuples")
    question: str | list[str] | None = None
    context: str | list[str] | None = None
    parameters: dict[str, Any] = Field(default_factory=dict, description="top_k, aggregation_strategy, ...")


def create_app(artifact: str | Path, options: ServeOptions) -> FastAPI:
    predictor = load(
        artifact,
        truncation="warn" if options.truncate else "error",
        workers=options.workers,
        threads=options.threads,
        calibrate=options.calibrate,
        micro_batch_size=options.max_batch_size,  # the server's limits are the engine's
        max_batch_tokens=options.max_batch_tokens,
    )
    metrics = Metrics()
    predictor.engine.hooks.append(metrics.executed)
    state: dict[str, Any] = {"ready": False}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state["batcher"] = Batcher(
            predictor, metrics, max_batch_tokens=options.max_batch_tokens, max_batch_size=options.max_batch_size,
            max_wait_ms=options.max_wait_ms, max_queue=options.max_queue,
        )  # fmt: skip
        await asyncio.to_thread(_warm_up, predictor)
        state["ready"] = True
        yield
        state["ready"] = False
        await asyncio.to_thread(state["batcher"].close)

    app = FastAPI(title="torchship", version=predictor.manifest.torchship_version, lifespan=lifespan)
    app.state.predictor = predictor
    task = predictor.task_def
    dim = _embedding_dim(predictor)

    @app.middleware("http")
    async def record(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        endpoint = request.url.path
        if endpoint == "/metrics":  # a scrape does not count itself in flight
            response = await call_next(request)
        else:
            with metrics.in_flight.track_inprogress():
                response = await call_next(request)
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(HTTPError)
    async def on_http_error(request: Request, e: HTTPError) -> JSONResponse:
        if e.status in (413, 503):
            metrics.rejected.labels(e.kind).inc()
        if request.url.path in hf.PATHS:  # Hugging Face's routes answer errors as TEI and the Inference API do
            body: dict[str, Any] = {"error": e.message, "error_type": hf.ERROR_TYPES.get(e.kind, "Validation")}
        else:
            body = {"error": {"message": e.message, "type": e.kind}}
        return JSONResponse(body, status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, e: RequestValidationError) -> JSONResponse:
        return await on_http_error(request, HTTPError(422, _problems(e.errors()), "invalid_request"))

    def authorize(request: Request) -> None:
        if options.api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), options.api_key.encode()):
            raise HTTPError(401, "missing or wrong API key; send 'Authorization: Bearer KEY'", "unauthorized")

    def check_limits(items: list[Any]) -> None:
        """413 for more than max_input_items items, or a text over max_input_chars."""
        if len(items) > options.max_input_items:
            raise HTTPError(
                413, f"{len(items)} inputs exceed max_input_items {options.max_input_items}; split the request",
                "too_many_items",
            )  # fmt: skip
        for i, item in enumerate(items):  # a pair is two texts, each held to the limit
            chars = len(item) if isinstance(item, str) else max(map(len, item))
            if chars > options.max_input_chars:
                raise HTTPError(
                    413, f"input {i} has {chars} characters, over max_input_chars {options.max_input_chars}",
                    "too_many_characters",
                )  # fmt: skip

    async def run_request(
        inputs: object, fields: Mapping[str, object], parameters: dict[str, Any]
    ) -> tuple[list[Any], int, bool]:
        """Parse, check and tokenize a request as the task says; queue its work items through the batcher.
        Returns the results in order, the token count, and whether the client sent a single input."""
        try:
            request = task.parse(inputs, fields)
            check_limits(request.items)
            params = task.check_params(parameters, server=True)
            works = await asyncio.to_thread(predictor.works, request.items, params)
        except SequenceTooLongError as e:
            raise HTTPError(413, f"{e} (or start the server with --truncate)", "too_many_tokens") from e
        except TaskMismatchError as e:
            raise HTTPError(400, str(e), "wrong_task") from e
        except InputError as e:
            raise HTTPError(422, str(e), "invalid_request") from e
        loop = asyncio.get_running_loop()
        key = tuple(sorted(params.items()))
        items = [Item(work, key, loop.create_future(), loop) for work in works]
        try:
            state["batcher"].submit(items)
        except QueueFullError as e:
            raise HTTPError(503, str(e), "queue_full", {"Retry-After": "1"}) from e
        try:
            results = list(await asyncio.gather(*(item.future for item in items)))
        except InputError as e:
            raise HTTPError(422, str(e), "invalid_request") from e
        finally:
            for item in items:
                item.future.cancel()  # the client left: the batcher skips what has not run yet
        tokens = sum(len(ids) for w in works for ids in w.encoded.ids)
        return results, tokens, request.single

    @app.post(
        "/v1/embeddings",
        dependencies=[Depends(authorize)],
        include_in_schema=dim is not None,  # other tasks: only a 400 that points to /predict
        openapi_extra=schema.embeddings_body(options, dim or 0),
        responses={**schema.embeddings_response(dim or 0), **schema.error_responses(401, 413, 422, 503)},
    )
    async def embeddings(request: Request) -> JSONResponse:
        body = await _parse(request, EmbeddingRequest)
        if not task.embeds:
            raise HTTPError(400, f"this artifact serves {task.name}, not embeddings; use POST /predict", "wrong_task")
        if body.dimensions is not None and body.dimensions != dim:
            raise HTTPError(
                422, f"dimensions {body.dimensions}: this model's embeddings have {dim}; omit dimensions or pass {dim}",
                "invalid_request",
            )  # fmt: skip
        texts: list[TextInput] = [body.input] if isinstance(body.input, str) else list(body.input)
        if not texts:
            raise HTTPError(422, "input is empty; pass a string or a non-empty list of strings", "invalid_request")
        vectors, tokens, _ = await run_request(texts, {}, {})
        data = [
            {"object": "embedding", "index": i, "embedding": _encode_vector(v, body.encoding_format)}
            for i, v in enumerate(vectors)
        ]
        return JSONResponse({
            "object": "list", "data": data, "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })  # fmt: skip

    @app.post(
        "/predict",
        dependencies=[Depends(authorize)],
        openapi_extra=schema.predict_body(task, options),
        responses={
            200: {"description": f"{task.name} outputs, in input order (a single input gets a single output)"},
            **schema.error_responses(400, 401, 413, 422, 503),
        },
    )
    async def predict(request: Request) -> JSONResponse:
        body = await _parse(request, PredictRequest)
        inputs = body.inputs if body.inputs is None or isinstance(body.inputs, str) else list(body.inputs)
        fields = {"question": body.question, "context": body.context}
        results, _, single = await run_request(inputs, fields, body.parameters)
        outputs = [task.to_json(r) for r in results]
        return JSONResponse({"task": task.name, "outputs": outputs[0] if single else outputs})

    hf.add_routes(app, task=task, run=run_request, authorize=authorize, parse=_parse, options=options)

    @app.get("/health", responses=schema.HEALTH_RESPONSES)
    async def health() -> JSONResponse:
        ready = state["ready"]
        return JSONResponse({"status": "ready" if ready else "warming up"}, status_code=200 if ready else 503)

    @app.get("/info")
    async def info() -> dict[str, Any]:
        m = predictor.manifest
        return {
            "task": m.task, "architecture": m.architecture, "source": m.source["model"],
            "inputs": m.inputs, "outputs": m.outputs, "max_length": m.max_length,
            "formats": {f: len(e) for f, e in m.formats.items()}, "buckets": predictor.buckets,
            "pooling": m.pooling, "labels": m.labels, "torchship_version": m.torchship_version,
            "limits": {
                "max_batch_tokens": options.max_batch_tokens, "max_batch_size": options.max_batch_size,
                "max_wait_ms": options.max_wait_ms, "max_queue": options.max_queue,
                "max_input_items": options.max_input_items, "max_input_chars": options.max_input_chars,
                "truncate": options.truncate,
            },
        }  # fmt: skip

    @app.get("/metrics", response_class=Response, responses=schema.METRICS_RESPONSE)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    return app


M = TypeVar("M", bound=BaseModel)


async def _parse(request: Request, model: type[M]) -> M:
    """The JSON body as ``model``; malformed JSON or a wrong field is a 422 naming it."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as e:
        raise HTTPError(422, _problems(e.errors(include_url=False)), "invalid_request") from e


def _problems(errors: Any) -> str:
    return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in errors)


def _embedding_dim(predictor: Predictor) -> int | None:
    """The width of the embeddings, read off one short forward pass (every family names it differently)."""
    if not predictor.task_def.embeds:
        return None
    import torch

    engine = predictor.engine
    backend = engine.select(1, engine.buckets[0])
    padded = engine.pad({"input_ids": torch.full((1, engine.buckets[0]), 1000)}, backend.pad_length(engine.buckets[0]))
    return int(engine.forward(backend, padded)[engine.output_names[0]].shape[-1])


def _encode_vector(vector: np.ndarray, fmt: str) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return [float(x) for x in vector]


def _warm_up(predictor: Predictor) -> None:
    """Run every loaded format at every bucket once, so no request pays for lazy initialization.
    Through ``Engine.forward``: warm-up is not work, and no hook counts it."""
    import torch

    engine = predictor.engine
    for backend in engine.backends.values():
        for seq in engine.buckets:
            engine.forward(backend, engine.pad({"input_ids": torch.full((1, seq), 1000)}, backend.pad_length(seq)))
