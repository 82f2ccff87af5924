"""The server's OpenAPI contract, built for the artifact and the limits it serves with.

Request bodies are documented here exactly as the server takes them (the task's fields and parameters,
``max_input_items``, ``max_input_chars``, the embedding width), and validated in the handlers, so a client
generated from ``/openapi.json`` sends only what is accepted, and every error keeps its own message.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from ..options import ServeOptions
from ..tasks import Task


class ErrorDetail(BaseModel):
    message: str
    type: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


ERRORS = {
    400: "this artifact serves another task",
    401: "missing or wrong API key",
    413: "over a limit: texts per request, characters per text, or tokens per text (without --truncate)",
    422: "malformed JSON, a missing or empty field, or an invalid parameter",
    503: "the queue is full; retry after Retry-After seconds",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse, "description": ERRORS[code]} for code in codes}


def _body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/json": {"schema": schema}},
        }
    }


def _text(options: ServeOptions) -> dict[str, Any]:
    # a text with at least one non-blank character, within max_input_chars
    return {"type": "string", "minLength": 1, "maxLength": options.max_input_chars, "pattern": r"\S"}


def _one_or_many(one: dict[str, Any], options: ServeOptions, item: dict[str, Any] | None = None) -> dict[str, Any]:
    array = {"type": "array", "items": item or one, "minItems": 1, "maxItems": options.max_input_items}
    return {"anyOf": [one, array]}


def embeddings_body(options: ServeOptions, dim: int) -> dict[str, Any]:
    schema = {
        "type": "object",
        "required": ["input"],
        "properties": {
            "input": {**_one_or_many(_text(options), options), "description": "a text or a list of texts"},
            "model": {"type": "string", "default": "torchship", "description": "any name; echoed back"},
            "encoding_format": {"enum": ["float", "base64"], "default": "float"},
            "user": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "dimensions": {
                "anyOf": [{"enum": [dim]}, {"type": "null"}],
                "description": f"this model's embeddings have {dim} dimensions; any other value is refused",
            },
        },
    }
    return _body(schema, "OpenAI-compatible embeddings request")


def embeddings_response(dim: int) -> dict[int | str, dict[str, Any]]:
    item = {
        "type": "object",
        "properties": {
            "object": {"const": "embedding"},
            "index": {"type": "integer"},
            "embedding": {
                "anyOf": [
                    {"type": "array", "items": {"type": "number"}, "minItems": dim, "maxItems": dim},
                    {"type": "string", "description": "base64 of little-endian float32"},
                ]
            },
        },
        "required": ["object", "index", "embedding"],
    }
    usage = {
        "type": "object",
        "properties": {"prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}},
        "required": ["prompt_tokens", "total_tokens"],
    }
    schema = {
        "type": "object",
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": item},
            "model": {"type": "string"},
            "usage": usage,
        },
        "required": ["object", "data", "model", "usage"],
    }
    return {
        200: {"description": "one embedding per input, in order", "content": {"application/json": {"schema": schema}}}
    }


def predict_body(task: Task, options: ServeOptions) -> dict[str, Any]:
    """The /predict body of ``task``: its keyword fields, or texts (and text pairs where it takes them), and its
    options as the task declares them (defaults and bounds from the same ``Param``s the runtime checks)."""
    parameters = task.params_schema()
    text = _text(options)
    if task.fields:
        schema: dict[str, Any] = {
            "type": "object",
            "required": list(task.fields),
            "properties": {
                **{name: _one_or_many(text, options) for name in task.fields},
                "parameters": parameters,
            },
            "description": f"{' and '.join(task.fields)}: one of them and a list of the other, or equal-length lists",
        }
        return _body(schema, f"{task.name} inputs")
    item: dict[str, Any] = text
    if task.takes_pairs:  # in a list, an item may be a (text, text_pair) pair: two texts, each within the limit
        pair = {"type": "array", "prefixItems": [text, text], "items": False, "minItems": 2, "maxItems": 2}
        item = {"anyOf": [text, pair]}
    schema = {
        "type": "object",
        "required": ["inputs"],
        "properties": {"inputs": _one_or_many(text, options, item), "parameters": parameters},
    }
    return _body(schema, f"{task.name} inputs")


class InferenceError(BaseModel):
    error: str
    error_type: str


def inference_error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """Errors of the Hugging Face routes: ``{"error", "error_type"}``, as TEI and the Inference API answer."""
    return {code: {"model": InferenceError, "description": ERRORS[code]} for code in codes}


def inference_body(task: Task, options: ServeOptions) -> dict[str, Any]:
    """``POST /``: ``{"inputs", "parameters"}`` as huggingface_hub.InferenceClient sends them for ``task``."""
    text = _text(options)
    if task.fields:
        inputs: dict[str, Any] = {
            "type": "object",
            "required": list(task.fields),
            "properties": {name: text for name in task.fields},
            "additionalProperties": False,
        }
    else:
        inputs = _one_or_many(text, options)
        if task.embeds:  # sentence similarity: the source's cosine to each sentence
            similarity = {
                "type": "object",
                "required": ["source_sentence", "sentences"],
                "properties": {
                    "source_sentence": text,
                    "sentences": {"type": "array", "items": text, "minItems": 1,
                                  "maxItems": options.max_input_items - 1},
                },
                "additionalProperties": False,
            }  # fmt: skip
            inputs = {"anyOf": [*inputs["anyOf"], similarity]}
    schema = {
        "type": "object",
        "required": ["inputs"],
        "properties": {"inputs": inputs, "parameters": {"anyOf": [task.params_schema(), {"type": "null"}]}},
    }
    return _body(schema, f"{task.name}, as the Hugging Face Inference API takes it")


METRICS_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"description": "Prometheus text exposition format", "content": {"text/plain": {"schema": {"type": "string"}}}}
}
HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "ready"},
    503: {"description": "still warming up"},
}
