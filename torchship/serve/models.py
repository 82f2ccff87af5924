"""The models a server serves: each a loaded artifact with its own batcher, and the one way a request runs.

Every route (OpenAI, TEI, Hugging Face, Cohere, torchship's own) parses its body, then calls ``Served.run``
with the task's inputs and options; ``run`` checks limits, tokenizes, queues the work through the batcher and
maps every failure to an ``HTTPError`` with the status and message the client sees. Routes never branch on a
task's name: they ask the task (``embeds``, ``relevance``, ``takes_prompts``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from ..errors import InputError, QueueFullError, SequenceTooLongError, TaskMismatchError, TorchshipError
from ..options import ServeOptions
from ..runtime import Predictor, load
from ..tasks import Task
from .batcher import Batcher, Item
from .metrics import Metrics


class HTTPError(Exception):
    def __init__(self, status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers or {}


def invalid(message: str) -> HTTPError:
    return HTTPError(422, message, "invalid_request")


def wrong_task(message: str) -> HTTPError:
    return HTTPError(400, message, "wrong_task")


@dataclass
class Outcome:
    """A request's results in input order, its token count, whether the client sent a single input, and which
    inputs were truncated (their indices)."""

    results: list[Any]
    tokens: int
    single: bool
    truncated: list[int]

    @property
    def headers(self) -> dict[str, str]:
        """``X-Truncated-Inputs: 0,3``: the inputs cut to the model's length, so no cut is silent."""
        return {"X-Truncated-Inputs": ",".join(map(str, self.truncated))} if self.truncated else {}


SERVING = ("truncate", "truncation_direction", "prompt_name")  # per-request options that are not the task's


def serving_options(parameters: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``parameters`` into the task's options and ``Served.run``'s keyword arguments (TEI's and the
    Inference API's ``truncate``, ``truncation_direction`` and ``prompt_name``), checked."""
    task_params = {k: v for k, v in parameters.items() if k not in SERVING}
    truncate, direction, prompt_name = (parameters.get(k) for k in SERVING)
    if truncate is not None and not isinstance(truncate, bool):
        raise invalid(f"truncate must be true or false, got {truncate!r}")
    if direction is not None and (not isinstance(direction, str) or direction.lower() not in ("left", "right")):
        raise invalid(f"truncation_direction {direction!r} is invalid; choose Left or Right")
    if prompt_name is not None and not isinstance(prompt_name, str):
        raise invalid(f"prompt_name must be a string, got {prompt_name!r}")
    return task_params, {
        "truncate": truncate, "direction": (direction or "right").lower(), "prompt_name": prompt_name,
    }  # fmt: skip


class Served:
    """One artifact behind the server: its Predictor, its batcher, its name and its metrics' label."""

    def __init__(self, name: str, artifact: str | Path, options: ServeOptions, metrics: Metrics) -> None:
        self.name, self.options, self.metrics = name, options, metrics
        self.predictor: Predictor = load(
            artifact,
            truncation="warn",  # whether to cut is decided per request (TEI's truncate), the server's default else
            workers=options.workers,
            threads=options.threads,
            calibrate=options.calibrate,
            calibrate_budget_s=options.calibrate_budget_s,
            micro_batch_size=options.max_batch_size,  # the server's limits are the engine's
            max_batch_tokens=options.max_batch_tokens,
        )
        self.task: Task = self.predictor.task_def
        self.predictor.engine.hooks.append(metrics.executed_by(name))
        self.dim = _embedding_dim(self.predictor)
        self.reranks = _reranks(self.predictor)
        self.batcher: Batcher | None = None

    def start(self) -> None:
        """Start the batcher and run every format at every bucket once (blocking; call it off the event loop)."""
        self.batcher = Batcher(
            self.predictor, self.metrics.of(self.name), max_batch_tokens=self.options.max_batch_tokens,
            max_batch_size=self.options.max_batch_size, max_wait_ms=self.options.max_wait_ms,
            max_queue=self.options.max_queue,
        )  # fmt: skip
        _warm_up(self.predictor)

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()

    def info(self) -> dict[str, Any]:
        m = self.predictor.manifest
        return {
            "name": self.name, "task": m.task, "architecture": m.architecture, "source": m.source["model"],
            "inputs": m.inputs, "outputs": m.outputs, "max_length": m.max_length,
            "formats": {f: len(e) for f, e in m.formats.items()}, "buckets": self.predictor.buckets,
            "pooling": m.pooling, "labels": m.labels, "prompts": m.prompts,
            "default_prompt_name": m.default_prompt_name, "dimensions": self.dim,
            "torchship_version": m.torchship_version,
        }  # fmt: skip

    def check_dimensions(self, dimensions: int | None) -> None:
        if dimensions is None:
            return
        if self.dim is None:
            raise wrong_task(f"model {self.name!r} serves {self.task.name}; dimensions applies to embeddings")
        if not 1 <= dimensions <= self.dim:
            raise invalid(
                f"dimensions {dimensions}: this model's embeddings have {self.dim}; pass 1 to {self.dim} or omit it"
            )

    def check_limits(self, items: list[Any]) -> None:
        """413 for more than max_input_items items (unless the server splits them), or a text over
        max_input_chars."""
        options = self.options
        if len(items) > options.max_input_items and not options.split_client_batches:
            raise HTTPError(
                413, f"{len(items)} inputs exceed max_input_items {options.max_input_items}; split the request "
                "(or start the server with --split-client-batches)", "too_many_items",
            )  # fmt: skip
        for i, item in enumerate(items):  # a pair is two texts, each held to the limit
            chars = len(item) if isinstance(item, str) else max(map(len, item))
            if chars > options.max_input_chars:
                raise HTTPError(
                    413, f"input {i} has {chars} characters, over max_input_chars {options.max_input_chars}",
                    "too_many_characters",
                )  # fmt: skip

    async def run(
        self,
        inputs: object,
        fields: Mapping[str, object],
        parameters: Mapping[str, Any],
        *,
        truncate: bool | None = None,
        direction: str = "right",
        prompt_name: str | None = None,
    ) -> Outcome:
        """Parse, check and tokenize a request as the task says; queue its work through the batcher (in slices
        of max_input_items, so one large request cannot fill the queue); return its outcome."""
        try:
            request = self.task.parse(inputs, fields)
            self.check_limits(request.items)
            params = self.task.check_params(dict(parameters), server=True)
            cut = self.options.truncate if truncate is None else truncate
            works = await asyncio.to_thread(
                self.predictor.works, request.items, params, prompt_name=prompt_name,
                truncation="warn" if cut else "error", direction=direction,
            )  # fmt: skip
        except SequenceTooLongError as e:
            raise HTTPError(413, f"{e} (or send truncate: true)", "too_many_tokens") from e
        except TaskMismatchError as e:
            raise wrong_task(str(e)) from e
        except (InputError, TorchshipError) as e:
            raise invalid(str(e)) from e
        results: list[Any] = []
        in_flight = self.metrics.in_flight.labels(self.name)
        with in_flight.track_inprogress():
            step = self.options.max_input_items
            for start in range(0, len(works), step):
                results += await self._queue(works[start : start + step], params)
        tokens = sum(len(ids) for w in works for ids in w.encoded.ids)
        truncated = [i for i, w in enumerate(works) if any(w.encoded.truncated)]
        return Outcome(results, tokens, request.single, truncated)

    async def _queue(self, works: list[Any], params: Mapping[str, Any]) -> list[Any]:
        assert self.batcher is not None, "the server has not started"
        loop = asyncio.get_running_loop()
        key = tuple(sorted(params.items()))
        items = [Item(work, key, loop.create_future(), loop) for work in works]
        try:
            self.batcher.submit(items)
        except QueueFullError as e:
            raise HTTPError(503, str(e), "queue_full", {"Retry-After": "1"}) from e
        try:
            return list(await asyncio.gather(*(item.future for item in items)))
        except (InputError, TorchshipError) as e:
            raise invalid(str(e)) from e
        finally:
            for item in items:
                item.future.cancel()  # the client left: the batcher skips what has not run yet


class Models:
    """The served models by name. With one model, a request that names none (or any name, as OpenAI clients
    must send one) gets it; with several, the name picks, and an unknown one is a 404 listing the names."""

    def __init__(self, served: list[Served]) -> None:
        self.by_name = {s.name: s for s in served}

    def __iter__(self) -> Any:
        return iter(self.by_name.values())

    def __len__(self) -> int:
        return len(self.by_name)

    @property
    def single(self) -> Served | None:
        return next(iter(self.by_name.values())) if len(self.by_name) == 1 else None

    def pick(self, name: str | None) -> Served:
        if self.single is not None and (name is None or name not in self.by_name):
            return self.single
        if name is None:
            raise invalid(f"this server serves several models; pass model: one of {', '.join(self.by_name)}")
        try:
            return self.by_name[name]
        except KeyError:
            raise HTTPError(
                404, f"model {name!r} is not served here; served: {', '.join(self.by_name)}", "model_not_found"
            ) from None


def model_names(artifacts: Mapping[str, str | Path] | str | Path) -> dict[str, Path]:
    """``{name: path}``: a mapping as given, or one artifact named after its directory."""
    if isinstance(artifacts, str | Path):
        path = Path(artifacts)
        return {path.resolve().name or "model": path}
    return {name: Path(p) for name, p in artifacts.items()}


def _reranks(predictor: Predictor) -> bool:
    """Whether the artifact scores (query, document) pairs: a cross-encoder."""
    try:
        predictor.task_def.relevance(predictor.context)
    except TaskMismatchError:
        return False
    return True


def _integral(value: object) -> object:
    return int(value) if isinstance(value, float) and value.is_integer() else value


Int = Annotated[int, BeforeValidator(_integral)]  # JSON Schema's integer: 5.0 is 5; strict otherwise


class Body(BaseModel):
    """A request body, validated strictly: ``0`` is not ``false`` and ``"1"`` is not ``1``, as the OpenAPI
    document says."""

    model_config = ConfigDict(strict=True)


M = TypeVar("M", bound=BaseModel)


async def parse(request: Request, model: type[M]) -> M:
    """The JSON body as ``model``; malformed JSON or a wrong field is a 422 naming it."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as e:
        raise invalid(problems(e.errors(include_url=False))) from e


def problems(errors: Any) -> str:
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


def _warm_up(predictor: Predictor) -> None:
    """Run every loaded format at every bucket once, so no request pays for lazy initialization.
    Through ``Engine.forward``: warm-up is not work, and no hook counts it."""
    import torch

    engine = predictor.engine
    for backend in engine.backends.values():
        for seq in engine.buckets:
            engine.forward(backend, engine.pad({"input_ids": torch.full((1, seq), 1000)}, backend.pad_length(seq)))
