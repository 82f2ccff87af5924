"""The Hugging Face Inference API shape at ``POST /`` (and SageMaker's ``POST /invocations``): what
``huggingface_hub.InferenceClient(model="http://host:port")`` sends for every task.

The client posts ``{"inputs": ..., "parameters": {...}}`` to the server's root, whatever the task; the server
answers in the task's own shape. This router never asks which task it serves: a task's keyword inputs
(question answering's ``{"question", "context"}``) come as a dict in ``inputs``; an embedding artifact also
answers sentence similarity (``{"source_sentence", "sentences"}``: cosine of each sentence to the source);
the results are shaped by the task's ``to_hf`` (text classification: one ranked list per text, as the
Inference API). ``parameters`` may also hold TEI's ``truncate``, ``truncation_direction`` and ``prompt_name``,
which ``InferenceClient.feature_extraction`` sends. Errors are ``{"error", "error_type"}``, which the client
surfaces as its message.

With several models, each one's routes are at ``/models/NAME/`` and ``/models/NAME/invocations``:
``InferenceClient(model="http://host:port/models/NAME")``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from ..options import ServeOptions
from . import schema
from .models import Body, Int, Served, invalid, parse, serving_options

SIMILARITY = ("source_sentence", "sentences")
ERROR_TYPES = {"queue_full": "Overloaded", "unauthorized": "Unauthorized", "model_not_found": "Validation"}


ROOT_FIELDS = ("truncate", "truncation_direction", "prompt_name", "normalize", "dimensions")


class InferenceRequest(Body):
    """What InferenceClient posts: ``{"inputs", "parameters"}``, except for feature extraction, whose options it
    sends at the top level, as TEI's /embed takes them (``{"inputs", "normalize", "dimensions", ...}``)."""

    inputs: Any = Field(description="a text, a list of texts, or the task's fields as an object")
    parameters: dict[str, Any] | None = Field(None, description="the task's options")
    truncate: bool | None = None
    truncation_direction: str | None = None
    prompt_name: str | None = None
    normalize: bool | None = None
    dimensions: Int | None = None

    def all_parameters(self, served: Served) -> dict[str, Any]:
        """``parameters`` with the top-level options merged in (the top level wins, as it is what the client's
        feature_extraction sends)."""
        top = {k: getattr(self, k) for k in ROOT_FIELDS if getattr(self, k) is not None}
        if not served.task.embeds and ({"normalize", "dimensions"} & set(top)):
            raise invalid(f"normalize and dimensions apply to embeddings; this model serves {served.task.name}")
        given, _ = serving_options(self.parameters or {})  # an option overridden at the top level must still be valid
        served.check_dimensions(served.task.check_params(given, server=True).get("dimensions"))
        return {**(self.parameters or {}), **top}


async def similarity(
    served: Served, inputs: Mapping[str, Any], options: Mapping[str, Any], parameters: Mapping[str, Any] | None = None
) -> list[float]:
    """The cosine of each of ``sentences`` to ``source_sentence`` (TEI's /similarity, the Inference API's
    sentence-similarity)."""
    source, sentences = inputs.get("source_sentence"), inputs.get("sentences")
    if not isinstance(source, str) or not isinstance(sentences, list) or not sentences:
        raise invalid("sentence similarity takes a source_sentence string and a non-empty sentences list")
    outcome = await served.run([source, *sentences], {}, parameters or {}, **options)
    matrix = np.stack(outcome.results)  # (1 + n, dim)
    matrix = matrix / np.linalg.norm(matrix, axis=1, keepdims=True).clip(min=1e-12)
    return [float(x) for x in matrix[1:] @ matrix[0]]


def add_routes(
    app: FastAPI, root: str, served: Served, *, authorize: Callable[..., None], options: ServeOptions
) -> list[str]:
    """``POST {root}/`` and ``{root}/invocations`` for ``served``; returns the paths added."""
    task = served.task

    async def infer(request: Request) -> JSONResponse:
        request.state.model = served.name
        body = await parse(request, InferenceRequest)
        inputs = body.inputs
        parameters, run_options = serving_options(body.all_parameters(served))
        if isinstance(inputs, dict) and task.embeds and set(inputs) == set(SIMILARITY):
            if parameters.get("output", "sentence") != "sentence":
                raise invalid("sentence similarity compares sentence embeddings; drop output")
            return JSONResponse(await similarity(served, inputs, run_options, parameters))
        fields: dict[str, object] = {}
        if isinstance(inputs, dict):
            unknown = sorted(set(inputs) - set(task.fields))
            if unknown or not task.fields:
                raise invalid(f"inputs has fields {unknown or sorted(inputs)} that {task.name} does not take; "
                              f"send {' and '.join(task.fields) or 'a text or a list of texts'}")  # fmt: skip
            fields, inputs = dict(inputs), None
        outcome = await served.run(inputs, fields, parameters, **run_options)
        return JSONResponse(task.to_hf(outcome.results, outcome.single), headers=outcome.headers)

    description = (
        f"Hugging Face Inference API for model {served.name!r} ({task.name}): what huggingface_hub.InferenceClient "
        "sends"
    )
    paths = [root or "/", f"{root}/invocations"]
    for path in paths:
        app.add_api_route(
            path, infer, methods=["POST"], dependencies=[Depends(authorize)], description=description,
            openapi_extra=schema.inference_body(task, options, list(served.predictor.manifest.prompts), served.dim),
            responses={200: {"description": f"{task.name} results in the Inference API's shape"},
                       **schema.inference_error_responses(400, 401, 413, 422, 503)},
        )  # fmt: skip
    return paths
