"""The FastAPI app: one or several artifacts, each behind the APIs its clients already speak.

    openai  POST /v1/embeddings, GET /v1/models                  (by the body's ``model``)
    cohere  POST /v1/rerank, POST /v2/rerank                      (by the body's ``model``)
    tei     /embed /embed_all /embed_sparse /rerank /similarity /tokenize /decode, and /predict and /info
            under /models/NAME/                                   (see tei.py)
    hf      POST / and /invocations: the Hugging Face Inference API (see hf.py)
    native  POST /predict, GET /info, /health, /metrics, /docs

Every model's routes are also at ``/models/NAME/...``; with one model they are at the root too. Every bad input
maps to a 4xx with a message that names the problem: 401 bad key, 400 wrong task, 404 unknown model, 413 over a
limit, 422 malformed or empty, 503 queue full (with Retry-After). Nothing is a 500.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import Field

from .. import __version__
from ..errors import TaskMismatchError, TorchshipError, UnsupportedModelError
from ..options import ServeOptions
from ..tokenize import TextInput
from . import hf, rerank, schema, tei
from .metrics import Metrics
from .models import Body, HTTPError, Int, Models, Served, invalid, model_names, parse, problems, wrong_task

__all__ = ["HTTPError", "create_app"]


class EmbeddingRequest(Body):
    input: str | list[str] = Field(description="a text or a list of texts")
    model: str = Field("torchship", description="the served model's name; with one model, any name")
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None
    dimensions: Int | None = None


class PredictRequest(Body):
    inputs: str | list[str | tuple[str, str]] | None = Field(None, description="texts, or (text, pair) tuples")
    question: str | list[str] | None = None
    context: str | list[str] | None = None
    parameters: dict[str, Any] = Field(default_factory=dict, description="top_k, aggregation_strategy, ...")
    model: str | None = None
    truncate: bool | None = None


def create_app(artifacts: Mapping[str, str | Path] | str | Path, options: ServeOptions) -> FastAPI:
    """The app for one artifact (named after its directory) or several (``{name: path}``)."""
    metrics = Metrics()
    models = Models([Served(name, path, options, metrics) for name, path in model_names(artifacts).items()])
    state: dict[str, Any] = {"ready": False}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for served in models:  # each warmed up before /health says ready
            await asyncio.to_thread(served.start)
        state["ready"] = True
        yield
        state["ready"] = False
        for served in models:
            await asyncio.to_thread(served.close)

    app = FastAPI(title="torchship", version=__version__, lifespan=lifespan)
    app.state.models = models
    if models.single is not None:
        app.state.predictor = models.single.predictor
    hf_style: set[str] = set()  # paths whose errors are {"error", "error_type"}, as TEI and the Inference API

    @app.middleware("http")
    async def record(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "unmatched")  # the route, not the raw path: bounded label values
        model = getattr(request.state, "model", "")
        metrics.requests.labels(endpoint, str(response.status_code), model).inc()
        metrics.latency.labels(endpoint, model).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(HTTPError)
    async def on_http_error(request: Request, e: HTTPError) -> JSONResponse:
        if e.status in (413, 503):
            metrics.rejected.labels(e.kind, getattr(request.state, "model", "")).inc()
        route = request.scope.get("route")
        if getattr(route, "path", None) in hf_style:
            body: dict[str, Any] = {"error": e.message, "error_type": hf.ERROR_TYPES.get(e.kind, "Validation")}
        else:
            body = {"error": {"message": e.message, "type": e.kind}}
        return JSONResponse(body, status_code=e.status, headers=e.headers)

    @app.exception_handler(TorchshipError)
    async def on_torchship_error(request: Request, e: TorchshipError) -> JSONResponse:
        """A refusal raised below the routes (a wrong task, a bad prompt name): the same 4xx as in Served.run."""
        if isinstance(e, TaskMismatchError | UnsupportedModelError):
            return await on_http_error(request, wrong_task(str(e)))
        return await on_http_error(request, invalid(str(e)))

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, e: RequestValidationError) -> JSONResponse:
        return await on_http_error(request, invalid(problems(e.errors())))

    def authorize(request: Request) -> None:
        if options.api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), options.api_key.encode()):
            raise HTTPError(401, "missing or wrong API key; send 'Authorization: Bearer KEY'", "unauthorized")

    def pick(request: Request, name: str | None) -> Served:
        served = models.pick(name)
        request.state.model = served.name
        return served

    embedders = [s for s in models if s.dim is not None]
    dims = sorted({s.dim for s in embedders if s.dim is not None})

    @app.post(
        "/v1/embeddings",
        dependencies=[Depends(authorize)],
        include_in_schema=bool(embedders),  # other tasks: only a 400 that points to /predict
        openapi_extra=schema.embeddings_body(options, dims, [s.name for s in models]),
        responses={**schema.embeddings_response(dims), **schema.error_responses(400, 401, 404, 413, 422, 503)},
    )
    async def embeddings(request: Request) -> JSONResponse:
        body = await parse(request, EmbeddingRequest)
        served = pick(request, body.model)
        if not served.task.embeds:
            raise wrong_task(f"this artifact serves {served.task.name}, not embeddings; use POST /predict")
        served.check_dimensions(body.dimensions)
        texts: list[TextInput] = [body.input] if isinstance(body.input, str) else list(body.input)
        if not texts:
            raise invalid("input is empty; pass a string or a non-empty list of strings")
        outcome = await served.run(texts, {}, {"dimensions": body.dimensions})
        data = [
            {"object": "embedding", "index": i, "embedding": encode_vector(v, body.encoding_format)}
            for i, v in enumerate(outcome.results)
        ]
        return JSONResponse(
            {
                "object": "list", "data": data, "model": body.model,
                "usage": {"prompt_tokens": outcome.tokens, "total_tokens": outcome.tokens},
            },
            headers=outcome.headers,
        )  # fmt: skip

    @app.get("/v1/models", responses=schema.MODELS_RESPONSE)
    async def list_models() -> dict[str, Any]:
        """The served models, in OpenAI's shape."""
        created = int(state.setdefault("created", time.time()))
        return {
            "object": "list",
            "data": [{"id": s.name, "object": "model", "created": created, "owned_by": "torchship"} for s in models],
        }

    def add_predict(path: str, served: Served | None) -> None:
        """torchship's own /predict: the task's inputs and options, answered as ``{"task", "outputs"}``."""
        tasks = [served] if served is not None else list(models)

        async def predict(request: Request) -> JSONResponse:
            body = await parse(request, PredictRequest)
            chosen = served if served is not None else pick(request, body.model)
            request.state.model = chosen.name
            inputs = body.inputs if body.inputs is None or isinstance(body.inputs, str) else list(body.inputs)
            fields = {"question": body.question, "context": body.context}
            outcome = await chosen.run(inputs, fields, body.parameters, truncate=body.truncate)
            outputs = [chosen.task.to_json(r) for r in outcome.results]
            return JSONResponse(
                {"task": chosen.task.name, "outputs": outputs[0] if outcome.single else outputs,
                 "truncated": outcome.truncated},
                headers=outcome.headers,
            )  # fmt: skip

        app.add_api_route(
            path, predict, methods=["POST"], dependencies=[Depends(authorize)],
            openapi_extra=schema.predict_body(
                [s.task for s in tasks], options, [s.name for s in tasks], [s.dim for s in tasks]
            ),
            responses={
                200: {"description": "task outputs, in input order (a single input gets a single output)"},
                **schema.error_responses(400, 401, 404, 413, 422, 503),
            },
        )  # fmt: skip

    add_predict("/predict", models.single)
    rerank.add_routes(app, models=models, pick=pick, authorize=authorize, options=options)
    for served in models:
        prefix = f"/models/{served.name}"
        roots = ["", prefix] if models.single is not None else [prefix]
        for root in roots:
            hf_style.update(hf.add_routes(app, root, served, authorize=authorize, options=options))
            hf_style.update(tei.add_routes(app, root, served, authorize=authorize, options=options, at_root=not root))

    @app.get("/health", responses=schema.HEALTH_RESPONSES)
    async def health() -> JSONResponse:
        ready = state["ready"]
        return JSONResponse({"status": "ready" if ready else "warming up"}, status_code=200 if ready else 503)

    @app.get("/info")
    async def info() -> dict[str, Any]:
        limits = {
            "max_batch_tokens": options.max_batch_tokens, "max_batch_size": options.max_batch_size,
            "max_wait_ms": options.max_wait_ms, "max_queue": options.max_queue,
            "max_input_items": options.max_input_items, "max_input_chars": options.max_input_chars,
            "truncate": options.truncate, "split_client_batches": options.split_client_batches,
        }  # fmt: skip
        if models.single is not None:
            return {**models.single.info(), "limits": limits}
        return {"models": [s.info() for s in models], "limits": limits, "torchship_version": __version__}

    @app.get("/metrics", response_class=Response, responses=schema.METRICS_RESPONSE)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    return app


def encode_vector(vector: np.ndarray, fmt: str) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return [float(x) for x in vector]
