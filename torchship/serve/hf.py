"""The Hugging Face Inference API shape at ``POST /`` (and SageMaker's ``POST /invocations``): what
``huggingface_hub.InferenceClient(model="http://host:port")`` sends for every task.

The client posts ``{"inputs": ..., "parameters": {...}}`` to the server's root, whatever the task; the server
answers in the task's own shape. This router never asks which task it serves: a task's keyword inputs
(question answering's ``{"question", "context"}``) come as a dict in ``inputs``; an embedding artifact also
answers sentence similarity (``{"source_sentence", "sentences"}``: cosine of each sentence to the source);
the results are shaped by the task's ``to_hf`` (text classification: one ranked list per text, as the
Inference API). Errors are ``{"error", "error_type"}``, which the client surfaces as its message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ..options import ServeOptions
from ..tasks import Task
from . import schema

Run = Callable[[object, Mapping[str, object], dict[str, Any]], Awaitable[tuple[list[Any], int, bool]]]
SIMILARITY = ("source_sentence", "sentences")
PATHS = ("/", "/invocations")  # their errors are {"error", "error_type"}
ERROR_TYPES = {"queue_full": "Overloaded", "unauthorized": "Unauthorized"}  # the rest are TEI's "Validation"


class InferenceRequest(BaseModel):
    inputs: Any = Field(description="a text, a list of texts, or the task's fields as an object")
    parameters: dict[str, Any] | None = Field(None, description="the task's options")


def add_routes(
    app: FastAPI, *, task: Task, run: Run, authorize: Callable[..., None], options: ServeOptions,
    parse: Callable[[Request, type[InferenceRequest]], Awaitable[InferenceRequest]],
) -> None:  # fmt: skip
    from .app import HTTPError

    def fail(status: int, message: str) -> HTTPError:
        return HTTPError(status, message, "invalid_request")

    async def infer(request: Request) -> JSONResponse:
        body = await parse(request, InferenceRequest)
        inputs, parameters = body.inputs, dict(body.parameters or {})
        if isinstance(inputs, dict) and task.embeds and set(inputs) == set(SIMILARITY):
            return JSONResponse(await similarity(inputs))
        fields: dict[str, object] = {}
        if isinstance(inputs, dict):
            unknown = sorted(set(inputs) - set(task.fields))
            if unknown or not task.fields:
                raise fail(422, f"inputs has fields {unknown or sorted(inputs)} that {task.name} does not take; "
                                f"send {' and '.join(task.fields) or 'a text or a list of texts'}")  # fmt: skip
            fields, inputs = dict(inputs), None
        results, _, single = await run(inputs, fields, parameters)
        return JSONResponse(task.to_hf(results, single))

    async def similarity(inputs: Mapping[str, Any]) -> list[float]:
        source, sentences = inputs["source_sentence"], inputs["sentences"]
        if not isinstance(source, str) or not isinstance(sentences, list) or not sentences:
            raise fail(422, "sentence similarity takes a source_sentence string and a non-empty sentences list")
        vectors, _, _ = await run([source, *sentences], {}, {})
        matrix = np.stack(vectors)  # (1 + n, dim)
        matrix = matrix / np.linalg.norm(matrix, axis=1, keepdims=True).clip(min=1e-12)
        return [float(x) for x in matrix[1:] @ matrix[0]]

    description = (
        f"Hugging Face Inference API for this {task.name} artifact: what huggingface_hub.InferenceClient sends"
    )
    for path in PATHS:
        app.add_api_route(
            path, infer, methods=["POST"], dependencies=[Depends(authorize)], description=description,
            openapi_extra=schema.inference_body(task, options),
            responses={200: {"description": f"{task.name} results in the Inference API's shape"},
                       **schema.inference_error_responses(400, 401, 413, 422, 503)},
        )  # fmt: skip
