"""The Triton Python-backend model behind ``torchship triton``: text in, task results out, on torchship's runtime.

A generated ``model.py`` is one line, ``from torchship.triton_model import TritonPythonModel``, so the code that
runs inside Triton is this module, tested here without Triton (``TextModel``) and inside a real ``tritonserver``
(``tests/test_triton.py``). ``triton_python_backend_utils`` exists only inside Triton's Python stub, so it is
imported in ``initialize``, never at module level.

Every request Triton's dynamic batcher hands to ``execute`` is checked on its own: a bad one (an empty text, a
text over the longest bucket, an unknown parameter) gets its own error response, and the others run together
through ``Predictor.run_works``, sorted by length into the artifact's buckets, as the HTTP server's batcher does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, SequenceTooLongError, TorchshipError

# the request parameters the text model reads besides the task's own options
REQUEST_OPTIONS = ("truncate", "truncation_direction", "prompt_name")
# feature-extraction options whose results do not fit the fixed [-1, dim] FP32 output
NOT_ON_TRITON = {
    "output": "sentence",
    "dimensions": None,
}


def text_inputs(task: Any) -> list[tuple[str, bool]]:
    """The BYTES inputs of a task's text-in model: (name, optional)."""
    if task.fields:
        return [(name, False) for name in task.fields]  # question-answering: question, context
    if task.takes_pairs:
        return [("text", False), ("text_pair", True)]
    return [("text", False)]


def output_name(task: Any) -> str:
    return "embedding" if task.embeds else "result"


@dataclass
class TextRequest:
    """One Triton request: its input tensors by name (BYTES, shape [rows, 1] or [rows]) and its parameters."""

    inputs: Mapping[str, np.ndarray]
    parameters: Mapping[str, Any] = field(default_factory=dict)


class TextModel:
    """Triton-free core of the text-in model: requests in, output tensors (or an error) per request out."""

    def __init__(self, predictor: Any, *, truncate: bool = False) -> None:
        self.predictor = predictor
        self.task = predictor.task_def
        self.truncate = truncate
        self.inputs = text_inputs(self.task)
        self.output = output_name(self.task)

    def infer(self, requests: Sequence[TextRequest]) -> list[dict[str, np.ndarray] | TorchshipError]:
        """One entry per request, in order: its outputs, or the error that names what is wrong with it."""
        out: list[dict[str, np.ndarray] | TorchshipError] = [InputError("not run")] * len(requests)
        groups: dict[str, list[tuple[int, list[Any], dict[str, Any]]]] = {}
        for i, request in enumerate(requests):
            try:
                works, params = self._works(request)
            except TorchshipError as e:
                out[i] = e
                continue
            groups.setdefault(json.dumps(params, sort_keys=True), []).append((i, works, params))
        for members in groups.values():
            params = members[0][2]
            try:
                results = self.predictor.run_works([w for _, works, _ in members for w in works], params)
            except TorchshipError as e:
                for i, _, _ in members:
                    out[i] = e
                continue
            start = 0
            for i, works, _ in members:
                out[i] = self._outputs(results[start : start + len(works)])
                start += len(works)
        return out

    def _works(self, request: TextRequest) -> tuple[list[Any], dict[str, Any]]:
        given = dict(request.parameters)
        options = {k: given.pop(k) for k in REQUEST_OPTIONS if k in given}
        for name, default in NOT_ON_TRITON.items():
            if self.task.embeds and name in given and given[name] != default:
                raise InputError(
                    f"parameter {name!r} is not offered by the Triton text-in model, whose output {self.output!r} "
                    "is one FP32 vector of the model's full width per text; use torchship serve for it"
                )
        try:
            params = self.task.check_params(given, server=True)
        except InputError as e:
            raise InputError(f"{e} (request parameters {sorted(REQUEST_OPTIONS)} are also accepted)") from e
        truncate = options.get("truncate", self.truncate)
        direction = options.get("truncation_direction", "right")
        if not isinstance(truncate, bool):
            raise InputError(f"parameter truncate must be true or false, got {truncate!r}")
        if direction not in ("right", "left"):
            raise InputError(f"parameter truncation_direction must be 'right' or 'left', got {direction!r}")
        prompt_name = options.get("prompt_name")
        if prompt_name is not None and not isinstance(prompt_name, str):
            raise InputError(f"parameter prompt_name must be a string, got {prompt_name!r}")
        columns = self._columns(request.inputs)
        if self.task.fields:
            parsed = self.task.parse(None, columns)
        elif "text_pair" in columns:
            parsed = self.task.parse(list(zip(columns["text"], columns["text_pair"], strict=True)), {})
        else:
            parsed = self.task.parse(columns["text"], {})
        try:
            works = self.predictor.works(
                parsed.items,
                params,
                prompt_name=prompt_name,
                truncation="warn" if truncate else "error",
                direction=direction,
            )
        except SequenceTooLongError as e:  # its fix names the Python API's option; here it is a request parameter
            what = str(e).split("; shorten")[0]
            raise SequenceTooLongError(
                f"{what}; shorten them, set the request parameter truncate to true, or export with a longer bucket"
            ) from e
        return works, params

    def _columns(self, tensors: Mapping[str, np.ndarray]) -> dict[str, list[str]]:
        columns: dict[str, list[str]] = {}
        for name, optional in self.inputs:
            if name not in tensors:
                if optional:
                    continue
                raise InputError(f"input {name!r} is missing; this {self.task.name} model takes {self._names()}")
            array = np.asarray(tensors[name])
            if array.ndim == 2 and array.shape[1] == 1:
                array = array[:, 0]
            if array.ndim != 1 or array.shape[0] == 0:
                raise InputError(
                    f"input {name!r} has shape {list(np.asarray(tensors[name]).shape)}; send [rows, 1] BYTES"
                )
            columns[name] = [_text(value, name, row) for row, value in enumerate(array.tolist())]
        extra = sorted(set(tensors) - {name for name, _ in self.inputs})
        if extra:
            raise InputError(f"unknown input(s) {extra}; this {self.task.name} model takes {self._names()}")
        rows = {name: len(texts) for name, texts in columns.items()}
        if len(set(rows.values())) > 1:
            raise InputError(f"inputs have different row counts {rows}; send one row per item in each")
        return columns

    def _names(self) -> str:
        return ", ".join(f"{name} (optional)" if optional else name for name, optional in self.inputs)

    def _outputs(self, results: list[Any]) -> dict[str, np.ndarray]:
        if self.task.embeds:
            return {self.output: np.asarray(self.task.finish(results, False), dtype=np.float32)}
        encoded = [json.dumps(self.task.to_json(r), ensure_ascii=False).encode() for r in results]
        return {self.output: np.array(encoded, dtype=np.object_).reshape(-1, 1)}


def _text(value: object, name: str, row: int) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"input {name!r} row {row} is not UTF-8 ({e}); send UTF-8 text") from e
    if isinstance(value, str):
        return value
    raise InputError(f"input {name!r} row {row} is {type(value).__name__}, not text; send BYTES")


class TritonPythonModel:
    """Triton's Python-backend interface: ``initialize``, ``execute``, ``finalize``."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils  # only inside Triton's Python stub

        from .runtime import load

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        root = Path(args["model_repository"]) / args["model_version"] / params.get("artifact", "artifact")
        device = None
        if args.get("model_instance_kind") == "GPU":
            device = f"cuda:{args['model_instance_device_id']}"
        threads = int(params["threads"]) if params.get("threads") else None
        predictor = load(
            root,
            device=device,
            threads=threads,
            format=params.get("format") or None,
            truncation="error",
            verify=params.get("verify", "true") == "true",
        )
        self.model = TextModel(predictor, truncate=params.get("truncate", "false") == "true")
        self.inputs = [i["name"] for i in config["input"]]
        # INVALID_ARG makes a bad request a 400 over HTTP (INVALID_ARGUMENT over gRPC), not a 500
        self.bad_input = getattr(pb_utils.TritonError, "INVALID_ARG", None)

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self.pb
        batch = []
        for request in requests:
            tensors = {}
            for name in self.inputs:
                tensor = pb.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    tensors[name] = tensor.as_numpy()
            raw = request.parameters() if hasattr(request, "parameters") else "{}"
            batch.append(TextRequest(tensors, json.loads(raw or "{}")))
        responses = []
        for out in self.model.infer(batch):
            if isinstance(out, TorchshipError):
                error = (
                    pb.TritonError(str(out), self.bad_input) if self.bad_input is not None else pb.TritonError(str(out))
                )
                responses.append(pb.InferenceResponse(output_tensors=[], error=error))
            else:
                responses.append(pb.InferenceResponse(output_tensors=[pb.Tensor(k, v) for k, v in out.items()]))
        return responses

    def finalize(self) -> None:
        self.model = None  # type: ignore[assignment]
