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
from ..tokenize import NON_BLANK


class ErrorDetail(BaseModel):
    message: str
    type: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


ERRORS = {
    400: "this artifact serves another task",
    401: "missing or wrong API key",
    413: "over a limit: texts per request, characters per text, or tokens per text (with truncate off)",
    404: "no model of that name is served here; the message lists the served names",
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
    return {"type": "string", "minLength": 1, "maxLength": options.max_input_chars, "pattern": NON_BLANK}


def _one_or_many(one: dict[str, Any], options: ServeOptions, item: dict[str, Any] | None = None) -> dict[str, Any]:
    array = {"type": "array", "items": item or one, "minItems": 1, "maxItems": options.max_input_items}
    return {"anyOf": [one, array]}


def _model_field(names: list[str]) -> dict[str, Any]:
    if len(names) == 1:
        return {"type": "string", "description": f"any name: this server serves one model ({names[0]})"}
    return {"enum": names, "description": "the served model to use"}


def embeddings_body(options: ServeOptions, dims: list[int], names: list[str]) -> dict[str, Any]:
    widest = max(dims, default=1)
    schema = {
        "type": "object",
        "required": ["input"] if len(names) == 1 else ["input", "model"],
        "properties": {
            "input": {**_one_or_many(_text(options), options), "description": "a text or a list of texts"},
            "model": {**_model_field(names), "default": names[0]} if len(names) == 1 else _model_field(names),
            "encoding_format": {"enum": ["float", "base64"], "default": "float"},
            "user": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "dimensions": {
                "anyOf": [{"type": "integer", "minimum": 1, "maximum": widest}, {"type": "null"}],
                "description": "keep the first N dimensions, re-normalized (Matryoshka); at most the model's width",
            },
        },
    }
    return _body(schema, "OpenAI-compatible embeddings request")


def embeddings_response(dims: list[int]) -> dict[int | str, dict[str, Any]]:
    item = {
        "type": "object",
        "properties": {
            "object": {"const": "embedding"},
            "index": {"type": "integer"},
            "embedding": {
                "anyOf": [
                    {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": max(dims, default=1)},
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


def predict_body(tasks: list[Task], options: ServeOptions, names: list[str], dims: list[int | None]) -> dict[str, Any]:
    """The /predict body: each served model's task inputs (its keyword fields, or texts and text pairs where it
    takes them) and options as the task declares them (defaults and bounds from the same ``Param``s the runtime
    checks). With several models, ``model`` picks one and the body follows its task."""
    bodies = [_predict_schema(task, options, dim) for task, dim in zip(tasks, dims, strict=True)]
    if len(names) == 1:
        bodies[0]["properties"]["model"] = {"anyOf": [_model_field(names), {"type": "null"}]}
        return _body(bodies[0], f"{tasks[0].name} inputs")
    for body, name in zip(bodies, names, strict=True):
        body["properties"]["model"] = {"const": name}
        body["required"] = [*body["required"], "model"]
    return _body({"oneOf": bodies}, "the inputs of the named model's task")


def _predict_schema(task: Task, options: ServeOptions, dim: int | None) -> dict[str, Any]:
    parameters = bounded(task.params_schema(), dim)
    text = _text(options)
    truncate = {"anyOf": [{"type": "boolean"}, {"type": "null"}], "description": "cut over-long texts (or refuse)"}
    if task.fields:
        return {
            "type": "object",
            "required": list(task.fields),
            "properties": {
                **{name: _one_or_many(text, options) for name in task.fields},
                "parameters": parameters,
                "truncate": truncate,
            },
            "description": f"{' and '.join(task.fields)}: one of them and a list of the other, or equal-length lists",
        }
    item: dict[str, Any] = text
    if task.takes_pairs:  # in a list, an item may be a (text, text_pair) pair: two texts, each within the limit
        pair = {"type": "array", "prefixItems": [text, text], "items": False, "minItems": 2, "maxItems": 2}
        item = {"anyOf": [text, pair]}
    return {
        "type": "object",
        "required": ["inputs"],
        "properties": {"inputs": _one_or_many(text, options, item), "parameters": parameters, "truncate": truncate},
    }


class InferenceError(BaseModel):
    error: str
    error_type: str


def inference_error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """Errors of the Hugging Face routes: ``{"error", "error_type"}``, as TEI and the Inference API answer."""
    return {code: {"model": InferenceError, "description": ERRORS[code]} for code in codes}


def truncation(prompts: list[str] | None) -> dict[str, Any]:
    """TEI's per-request ``truncate`` and ``truncation_direction``, and ``prompt_name`` where the task takes
    prompts (``prompts``: the model's prompt names; None: the task takes none)."""
    schema: dict[str, Any] = {
        "truncate": {"anyOf": [{"type": "boolean"}, {"type": "null"}],
                     "description": "cut over-long texts (true) or refuse them with 413 (false); null: the server's"},
        "truncation_direction": {"anyOf": [{"enum": ["Left", "Right", "left", "right"]}, {"type": "null"}],
                                 "default": "Right"},
    }  # fmt: skip
    if prompts:
        schema["prompt_name"] = {"anyOf": [{"enum": prompts}, {"type": "null"}], "description": "a model prompt"}
    else:
        schema["prompt_name"] = {"type": "null", "description": "this model has no prompts"}
    return schema


def texts(options: ServeOptions) -> dict[str, Any]:
    """A text or a non-empty list of texts, within the server's limits."""
    return _one_or_many(_text(options), options)


def text(options: ServeOptions) -> dict[str, Any]:
    return _text(options)


def body(properties: dict[str, Any], required: list[str], description: str) -> dict[str, Any]:
    return _body({"type": "object", "required": required, "properties": properties}, description)


def bounded(params: dict[str, Any], dim: int | None) -> dict[str, Any]:
    """A task's options schema with ``dimensions`` bounded by the model's width (known only once loaded)."""
    if dim is None or "dimensions" not in params["properties"]:
        return params
    dimensions = dict(params["properties"]["dimensions"])
    dimensions["anyOf"] = [{**dimensions["anyOf"][0], "maximum": dim}, *dimensions["anyOf"][1:]]
    return {**params, "properties": {**params["properties"], "dimensions": dimensions}}


def inference_body(task: Task, options: ServeOptions, prompts: list[str] | None, dim: int | None) -> dict[str, Any]:
    """``POST /``: ``{"inputs", "parameters"}`` as huggingface_hub.InferenceClient sends them for ``task``;
    ``parameters`` holds the task's options and TEI's truncation fields (and ``prompt_name``)."""
    text = _text(options)
    serving = truncation(prompts if task.takes_prompts else None)
    task_params = bounded(task.params_schema(), dim)

    # InferenceClient sends feature extraction's options at the top level, as TEI's /embed takes them; they win
    # over the same option in parameters
    top = dict(serving)
    if task.embeds:
        top |= {
            "normalize": {"anyOf": [{"type": "boolean"}, {"type": "null"}]},
            "dimensions": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": dim or 1}, {"type": "null"}]},
        }
    else:
        top |= {"normalize": {"type": "null", "description": "embeddings only"},
                "dimensions": {"type": "null", "description": "embeddings only"}}  # fmt: skip
    top = {k: {**v, "description": "top-level form; wins over the same option in parameters"} for k, v in top.items()}

    def with_params(inputs: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        parameters = {**params, "properties": {**params["properties"], **serving}}
        return {
            "type": "object",
            "required": ["inputs"],
            "properties": {"inputs": inputs, "parameters": {"anyOf": [parameters, {"type": "null"}]}, **top},
        }

    if task.fields:
        inputs: dict[str, Any] = {
            "type": "object",
            "required": list(task.fields),
            "properties": {name: text for name in task.fields},
            "additionalProperties": False,
        }
        return _body(with_params(inputs, task_params), f"{task.name}, as the Hugging Face Inference API takes it")
    plain = with_params(_one_or_many(text, options), task_params)
    if not task.embeds:
        return _body(plain, f"{task.name}, as the Hugging Face Inference API takes it")
    similarity = {  # sentence similarity: the source's cosine to each sentence, one vector per sentence
        "type": "object",
        "required": ["source_sentence", "sentences"],
        "properties": {
            "source_sentence": text,
            "sentences": {"type": "array", "items": text, "minItems": 1, "maxItems": options.max_input_items - 1},
        },
        "additionalProperties": False,
    }
    sentence_params = {**task_params, "properties": {k: v for k, v in task_params["properties"].items()
                                                      if k != "output"}}  # fmt: skip
    return _body(
        {"oneOf": [plain, with_params(similarity, sentence_params)]},
        f"{task.name} or sentence similarity, as the Hugging Face Inference API takes them",
    )


MODELS_RESPONSE: dict[int | str, dict[str, Any]] = {200: {"description": "the served models, in OpenAI's shape"}}
METRICS_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"description": "Prometheus text exposition format", "content": {"text/plain": {"schema": {"type": "string"}}}}
}
HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "ready"},
    503: {"description": "still warming up"},
}
