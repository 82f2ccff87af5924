"""Tasks: one registered ``Task`` object per task, and nothing outside this package asks which task it holds.

A task says, for its artifacts, everything that differs between tasks:

    params        its options, each one ``Param`` with a default and bounds: the runtime's validation, the
                  server's OpenAPI schema and the CLI's flags are all built from this one tuple
    parse         how a call's inputs (positional texts, or keyword fields such as question/context)
                  become a ``Request`` of items
    works         how items become ``Work``: rows of token ids, plus what post-processing needs per row
                  (question answering: one work item per pair, one row per context window)
    postprocess   raw outputs of one executed micro-batch -> one result per row
    combine       a work item's row results -> its result (question answering: the best spans across windows)
    head_flops    what its head costs, for the FLOP model
    export_info   what the exporter records in the manifest for it (pooling, labels, ...)

Adding a task: one module with a ``Task`` subclass, decorated with ``@register``, imported at the bottom of this
file. The runtime, the server's batcher and the FLOP model call the interface; they never compare names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import InputError, TaskMismatchError, UnsupportedModelError

if TYPE_CHECKING:
    import torch

    from ..tokenize import Encoded, TextEncoder


@dataclass
class Batch:
    """One executed micro-batch: its padded inputs, raw outputs and the rows' real lengths."""

    input_ids: torch.Tensor  # (batch, seq)
    attention_mask: torch.Tensor  # (batch, seq)
    outputs: dict[str, torch.Tensor]
    lengths: list[int]
    rows: list[int]  # positions of these rows in the caller's input


@dataclass(frozen=True)
class Param:
    """One task option: its default and bounds, the single source of validation, OpenAPI schema and CLI flag.

    ``kind`` is ``"positive"`` (an integer >= 1), ``"number"`` (a finite float >= 0), ``"bool"`` or ``"choice"``
    (one of ``choices``). ``nullable`` lets
    ``None`` through (text-classification's ``top_k=None``: the best label only). ``server_max`` is a limit the
    HTTP server adds on top (fill-mask decodes a whole sequence per candidate).
    """

    name: str
    default: Any
    help: str
    kind: str = "positive"
    choices: tuple[str, ...] = ()
    nullable: bool = False
    server_max: int | None = None

    def check(self, value: object, *, server: bool = False) -> Any:
        if value is None and self.nullable:
            return None
        if self.kind == "choice":
            if value not in self.choices:
                raise InputError(f"{self.name} {value!r} is invalid; choose one of: {', '.join(self.choices)}")
            return value
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise InputError(f"{self.name} must be true or false, got {value!r}")
            return value
        if self.kind == "number":
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf"):
                raise InputError(f"{self.name} must be a number >= 0, got {value!r}")
            return float(value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON has one number type: 5.0 is the integer 5, as JSON Schema counts it
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"{self.name} must be a positive integer, got {value!r}")
        if server and self.server_max is not None and value > self.server_max:
            raise InputError(f"{self.name} {value} is over this server's limit of {self.server_max}")
        return value

    def json_schema(self, *, server: bool = True) -> dict[str, Any]:
        if self.kind == "choice":
            one: dict[str, Any] = {"enum": list(self.choices)}
        elif self.kind == "bool":
            one = {"type": "boolean"}
        elif self.kind == "number":
            one = {"type": "number", "minimum": 0}
        else:
            one = {"type": "integer", "minimum": 1}
            if server and self.server_max is not None:
                one["maximum"] = self.server_max
        schema = {"anyOf": [one, {"type": "null"}]} if self.nullable else one
        return {**schema, "default": self.default, "description": self.help}

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass
class Request:
    """A call's inputs, checked: ``items`` are texts, text pairs or (question, context) pairs; ``single`` says
    the caller passed one and expects one result back."""

    items: list[Any]
    single: bool
    truncation: str | None = None  # "warn" or "error" for this call; None: the encoder's default
    direction: str = "right"  # which end of an over-long text is cut


@dataclass
class Work:
    """What the engine runs for one item: ``encoded`` rows, with ``payloads[i]`` what post-processing needs of
    row i beside its outputs, and ``data`` what ``combine`` needs of the whole item."""

    encoded: Encoded
    payloads: list[Any]
    data: Any = None


@dataclass
class Context:
    """What a task may read of a loaded artifact: its tokenizer, manifest and length limit."""

    encoder: TextEncoder
    manifest: Any  # artifact.Manifest
    max_length: int

    def encode(self, request: Request) -> Encoded:
        """The request's items tokenized, truncated as the request says."""
        return self.encoder.encode(request.items, truncation=request.truncation, direction=request.direction)


class Task:
    """The interface. Subclasses set ``name``, ``auto_class`` and ``arch_suffix``, and override what differs."""

    name: ClassVar[str]
    auto_class: ClassVar[str]  # the transformers Auto class the exporter loads
    arch_suffix: ClassVar[str | None]  # config.architectures suffix that implies this task (--task auto); None: never
    params: ClassVar[tuple[Param, ...]] = ()
    fields: ClassVar[tuple[str, ...]] = ()  # keyword inputs instead of positional texts
    takes_pairs: ClassVar[bool] = True  # positional items may be (text, text_pair)
    embeds: ClassVar[bool] = False  # results are one float32 vector per text (OpenAI /v1/embeddings)
    has_pooler: ClassVar[bool] = False  # its model may end in the base model's pooler (pooler_output)
    takes_prompts: ClassVar[bool] = False  # sentence-transformers prompts (prompt_name) prefix its texts
    sparse: ClassVar[bool] = False  # results are sparse vectors over the vocabulary (TEI /embed_sparse)
    # a padding-free artifact runs its head on real tokens too (its task graph's on_real_tokens: unpad.unpadded)
    head_on_real_tokens: ClassVar[bool] = False
    classifies: ClassVar[bool] = False  # results are ranked {label, score} per text or pair (TEI /predict)
    # how an int8 artifact is held to float32 (validate.Judge): "top1", the share of choices (labels, tokens,
    # spans) that stay the same, or "cosine", the lowest cosine similarity of the vectors people compare
    agreement: ClassVar[str] = "top1"

    # ---- options ---------------------------------------------------------------------------------------------

    def check_params(self, given: Mapping[str, Any], *, server: bool = False) -> dict[str, Any]:
        """Every option of this task, with defaults filled in; unknown names and bad values are InputErrors."""
        known = {p.name: p for p in self.params}
        unknown = set(given) - set(known)
        if unknown:
            raise InputError(
                f"unknown option(s) {sorted(unknown)} for task {self.name}; valid: {sorted(known) or 'none'}"
            )
        return {name: p.check(given.get(name, p.default), server=server) for name, p in known.items()}

    def params_schema(self) -> dict[str, Any]:
        """The JSON schema of this task's options, as the server documents them."""
        return {
            "type": "object",
            "properties": {p.name: p.json_schema() for p in self.params},
            "additionalProperties": False,
            "description": f"{self.name} options" if self.params else f"{self.name} takes no options",
        }

    # ---- inputs ----------------------------------------------------------------------------------------------

    def parse(self, inputs: object, fields: Mapping[str, object]) -> Request:
        """Positional texts (or text pairs) -> a Request; keyword fields belong to other tasks."""
        given = sorted(k for k, v in fields.items() if v is not None)
        if given:
            owners = [t.name for t in _REGISTRY.values() if set(given) & set(t.fields)]
            raise TaskMismatchError(
                f"this artifact serves {self.name}, not {' or '.join(owners) or 'a task with keyword inputs'}: "
                f"{', '.join(given)} are not its inputs; pass texts"
            )
        from ..tokenize import check_texts

        if inputs is None:
            raise InputError(f"{self.name} needs inputs: a text or a list of texts")
        single = isinstance(inputs, str) or (isinstance(inputs, tuple) and len(inputs) == 2)
        items = check_texts(inputs)
        if not self.takes_pairs and any(isinstance(t, tuple) for t in items):
            raise InputError(f"{self.name} takes single texts, not text pairs")
        return Request(list(items), single)

    def works(self, ctx: Context, request: Request, params: Mapping[str, Any]) -> list[Work]:
        """One work item per text, one row each; the row's payload is its text."""
        encoded = ctx.encode(request)
        return [Work(encoded.select([i]), [text]) for i, text in enumerate(request.items)]

    # ---- outputs ---------------------------------------------------------------------------------------------

    def prepare(self, ctx: Context, params: Mapping[str, Any]) -> Any:
        """Per call, what post-processing needs of the artifact (looked up once, not per batch)."""
        return None

    def postprocess(
        self, ctx: Context, prepared: Any, batch: Batch, payloads: list[Any], params: Mapping[str, Any]
    ) -> list[Any]:
        raise UnsupportedModelError(f"task {self.name!r} has no text post-processing; call Predictor.run(...)")

    def combine(self, work: Work, results: list[Any], params: Mapping[str, Any]) -> Any:
        """A work item's result from its rows' results (one row: that row's result)."""
        return results[0]

    def finish(self, results: list[Any], single: bool) -> Any:
        """What ``Predictor.__call__`` returns: one result for a single input, else the list."""
        return results[0] if single else results

    def to_json(self, result: Any) -> Any:
        """A result as JSON data (the server's response)."""
        return result

    def to_hf(self, results: list[Any], single: bool) -> Any:
        """Results in the Hugging Face Inference API's shape (what InferenceClient parses)."""
        out = [self.to_json(r) for r in results]
        return out[0] if single else out

    def judged(self, ctx: Context, outputs: Mapping[str, torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the int8 gate compares of a batch's raw outputs: what this task's results are read from."""
        return dict(outputs)

    # ---- export and cost -------------------------------------------------------------------------------------

    def relevance(self, ctx: Context) -> None:
        """Raise TaskMismatchError unless this artifact scores (query, document) pairs: a reranker."""
        raise TaskMismatchError(
            f"this artifact serves {self.name}; reranking needs a cross-encoder (text-classification, one label)"
        )

    def graph(self, model: Any, sentence_transformers: Mapping[str, Any]) -> Any:
        """The module every format exports: the transformers model itself, or the model with what the task
        computes inside the graph (SPLADE pooling). Its forward takes the inputs by keyword and returns a dict."""
        return model

    def export_info(self, config: Any, sentence_transformers: Mapping[str, Any]) -> dict[str, Any]:
        """Task-specific manifest fields (pooling, labels, problem_type)."""
        return {}

    def head_flops(self, dims: Dims, batch: int, seq: int, *, pooler: bool) -> int:
        """FLOPs of the head on top of the encoder (by default a hidden x hidden pooler, when exported)."""
        return 2 * batch * dims.hidden * dims.hidden if pooler else 0


@dataclass(frozen=True)
class Dims:
    """What a head's FLOPs depend on, read from the config by the architecture's spec."""

    hidden: int
    embedding: int
    vocab: int
    labels: int
    head_dense: bool  # a hidden x hidden dense before per-token heads (ModernBERT)


_REGISTRY: dict[str, Task] = {}


def register(cls: type[Task]) -> type[Task]:
    """Register a Task subclass by its ``name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"task {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls()
    return cls


def get(name: str) -> Task:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnsupportedModelError(f"task {name!r} is not supported; choose one of: {', '.join(_REGISTRY)}") from None


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def all_tasks() -> tuple[Task, ...]:
    return tuple(_REGISTRY.values())


def infer(architectures: Sequence[str]) -> Task:
    """The task a ``config.architectures`` entry implies (``BertForMaskedLM`` -> fill-mask)."""
    for arch in architectures:
        inferable = [t for t in _REGISTRY.values() if t.arch_suffix]
        for task in sorted(inferable, key=lambda t: -len(t.arch_suffix or "")):  # longest suffix first
            if arch.endswith(task.arch_suffix or ""):
                return task
    raise UnsupportedModelError(
        f"cannot infer the task from config.architectures={list(architectures)}; pass --task with one of: "
        f"{', '.join(_REGISTRY)}"
    )


# The built-in tasks, registered in the order the CLI and the docs list them.
# isort: off
from . import feature_extraction  # noqa: E402, F401
from . import fill_mask  # noqa: E402, F401
from . import text_classification  # noqa: E402, F401
from . import token_classification  # noqa: E402, F401
from . import question_answering  # noqa: E402, F401
from . import sparse_embedding  # noqa: E402, F401
# isort: on

__all__ = ["Batch", "Context", "Dims", "Param", "Request", "Task", "Work", "all_tasks", "get", "infer", "register"]
