"""The Predictor: a thin task pipeline (parse -> work items -> engine -> post-process) over the Engine.

Imports torch, tokenizers and numpy only. What differs per task lives in ``tasks/``; what differs per format
lives in ``formats/``; cutting, routing, padding and running micro-batches live in ``engine.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import artifact, tasks
from .engine import Counters, Engine
from .errors import InputError, UnsupportedModelError
from .options import AUTO_CALIBRATE_S, LoadOptions
from .tasks import Context, Work
from .tokenize import Encoded, TextEncoder

log = logging.getLogger(__name__)
ArrayLike = torch.Tensor | np.ndarray | Sequence[Sequence[int]]


def load(path: str | Path, **options: Any) -> Predictor:
    """Open an artifact directory; ``options`` are ``LoadOptions`` fields (unknown keys are an error)."""
    try:
        opts = LoadOptions(**options)
    except TypeError as e:
        valid = ", ".join(f.name for f in dataclasses.fields(LoadOptions))
        raise InputError(f"{e}; valid options are: {valid}") from e
    root = Path(path)
    manifest = artifact.read_manifest(root)
    return Predictor(root, manifest, opts)  # the engine checks the files it loads (LoadOptions.verify)


class Predictor:
    """A loaded artifact. ``predictor(texts)`` gives task outputs; ``predictor.run(...)`` raw tensors.

    With several formats in the artifact and ``format=None``, each micro-batch runs in the format that was
    fastest for the nearest recorded (batch, seq) shape: at export, or at load where the export's timings do not
    describe this process (machine.stale) or with ``calibrate=True``.
    """

    def __init__(self, root: Path, manifest: artifact.Manifest, options: LoadOptions) -> None:
        self.root = root
        self.manifest = manifest
        self.options = options
        self.engine = Engine(root, manifest, options)
        self.counters = Counters()
        self.engine.hooks.append(self.counters)
        self.task: str = manifest.task
        self.task_def = tasks.get(manifest.task)
        self.input_names = self.engine.input_names
        self.output_names = self.engine.output_names
        self.max_length = self.engine.max_length
        self.encoder = TextEncoder(
            root / manifest.tokenizer.dir / "tokenizer.json", max_length=self.max_length, truncation=options.truncation
        )
        self.context = Context(self.encoder, manifest, self.max_length)
        self._seq_axis = manifest.sequence_axes()
        if self.engine.retime is not None and len(self.engine.backends) > 1:
            from .timing import time_formats

            budget = options.calibrate_budget_s
            if options.calibrate is None:  # not asked for: re-timing stale timings costs the load little
                budget = min(budget, AUTO_CALIBRATE_S)
                log.info("torchship: re-timing %s's formats at load: %s", root, self.engine.retime)
            grid = manifest.timings.seq if manifest.timings else self.engine.buckets
            timings = time_formats(self.engine, grid, total_s=budget)
            source = "calibrated" if options.calibrate else f"re-timed at load: {self.engine.retime}"
            self.engine.timings = dataclasses.replace(timings, source=source)
            keep = self.engine.routed()  # a format that won nowhere is never used: let it go
            self.engine.backends = {n: b for n, b in self.engine.backends.items() if n in keep}

    def __repr__(self) -> str:
        return (
            f"Predictor(task={self.task!r}, formats={list(self.backends)}, buckets={self.buckets}, "
            f"path={str(self.root)!r})"
        )

    @property
    def backends(self) -> Mapping[str, Any]:
        return self.engine.backends

    @property
    def buckets(self) -> list[int]:
        return self.engine.buckets

    @property
    def timings(self) -> artifact.Timings | None:
        return self.engine.timings

    def bucket_for(self, seq: int, batch: int = 1) -> int:
        """The length a (batch, seq) input is padded to."""
        return self.engine.pad_length(seq, batch)

    # ---- raw tensors -------------------------------------------------------------------------------------------

    def run(
        self,
        input_ids: ArrayLike,
        attention_mask: ArrayLike | None = None,
        token_type_ids: ArrayLike | None = None,
        *,
        format: str | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run raw inputs of any (batch, seq) within range; pads inside, cuts outputs back to ``seq``."""
        ids = _as_2d_long(input_ids, "input_ids")
        given = {"input_ids": ids}
        if attention_mask is not None:
            given["attention_mask"] = _as_2d_long(attention_mask, "attention_mask", like=ids)
        if token_type_ids is not None:
            if "token_type_ids" not in self.input_names:
                raise InputError(
                    f"this {self.manifest.architecture['model_type']} artifact takes no token_type_ids "
                    f"(its inputs are {list(self.input_names)}); drop the argument"
                )
            given["token_type_ids"] = _as_2d_long(token_type_ids, "token_type_ids", like=ids)
        batch, seq = ids.shape
        backend = self.engine.select(batch, seq, format)
        padded = self.engine.pad(given, backend.pad_length(seq))
        outputs = self.engine.execute(backend, padded, padded["attention_mask"].sum(dim=1).tolist())
        return {name: self._cut(name, out, seq) for name, out in outputs.items()}

    def seq_axis(self, name: str) -> int | None:
        """The sequence axis of output ``name``, or None when it has none (``pooler_output``)."""
        return self._seq_axis.get(name)

    def _cut(self, name: str, tensor: torch.Tensor, seq: int) -> torch.Tensor:
        axis = self._seq_axis.get(name)
        return tensor if axis is None else tensor.narrow(axis, 0, seq)

    # ---- task outputs ------------------------------------------------------------------------------------------

    def encode(self, texts: object) -> Encoded:
        """Tokenize texts (or ``(text, text_pair)`` tuples) without padding, after checking them."""
        from .tokenize import check_texts

        return self.encoder.encode(check_texts(texts))

    def __call__(
        self,
        inputs: object = None,
        /,
        *,
        prompt_name: str | None = None,
        prompt: str | None = None,
        truncation_direction: str = "right",
        **kwargs: Any,
    ) -> Any:
        """Task outputs, shaped as transformers pipelines (feature extraction: an (n, dim) float32 array).

        Keyword arguments are the task's inputs (question answering: ``question=`` and ``context=``, strings or
        lists of equal length) and its options (``top_k=...``; see ``torchship.tasks``). Embedding tasks take
        sentence-transformers' ``prompt_name`` (or a literal ``prompt``), applied as sentence-transformers does;
        ``truncation_direction="left"`` keeps the end of an over-long text instead of its start.
        """
        task = self.task_def
        keyword_inputs = {f for t in tasks.all_tasks() for f in t.fields}  # another task's get a pointed error
        fields = {k: kwargs.pop(k) for k in keyword_inputs if k in kwargs}
        request = task.parse(inputs, fields)
        params = task.check_params(kwargs)
        works = self.works(
            request.items, params, prompt_name=prompt_name, prompt=prompt, direction=truncation_direction
        )
        cut = sum(t for w in works for t in w.encoded.truncated)
        if cut and self.options.truncation == "warn":
            warnings.warn(
                f"truncated {cut} text(s) to {self.max_length} tokens; export with a longer bucket to keep them whole",
                UserWarning,
                stacklevel=2,
            )
        return task.finish(self.run_works(works, params), request.single)

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_k: int | None = None,
        return_documents: bool = False,
        raw_scores: bool = False,
    ) -> list[dict[str, Any]]:
        """Score each document against ``query`` with a cross-encoder artifact; best first, as
        sentence-transformers' ``CrossEncoder.rank``: ``[{"corpus_id", "score"(, "text")}]``. Scores are the
        sigmoid of the logit (``raw_scores=True``: the logit itself)."""
        self.task_def.relevance(self.context)
        if not isinstance(query, str) or isinstance(documents, str) or not documents:
            raise InputError("rank takes a query string and a non-empty list of document strings")
        results = self([(query, d) for d in documents], function_to_apply="none" if raw_scores else None)
        return ranked([r["score"] for r in results], documents, top_k=top_k, return_documents=return_documents)

    def works(
        self,
        items: list[Any],
        params: Mapping[str, Any],
        *,
        prompt_name: str | None = None,
        prompt: str | None = None,
        truncation: str | None = None,
        direction: str = "right",
    ) -> list[Work]:
        """Checked items -> work items (tokenized; question answering: split into context windows). ``truncation``
        overrides the load-time choice for this call ("warn": cut, "error": refuse)."""
        text = self.prompt(prompt_name, prompt)
        if text:
            items = [text + item if isinstance(item, str) else item for item in items]
        return self.task_def.works(self.context, tasks.Request(items, False, truncation, direction), params)

    def prompt(self, prompt_name: str | None = None, prompt: str | None = None) -> str | None:
        """The prompt a call prefixes its texts with, as sentence-transformers picks it: ``prompt`` itself, else
        the one named ``prompt_name``, else the model's ``default_prompt_name``, else none."""
        m = self.manifest
        if prompt is not None and prompt_name is not None:
            raise InputError("pass prompt_name or prompt, not both")
        if (prompt or prompt_name) and not self.task_def.takes_prompts:
            raise InputError(f"{self.task} takes no prompts; drop prompt_name and prompt")
        if prompt is None:
            name = prompt_name if prompt_name is not None else m.default_prompt_name
            if name is None:
                return None
            if name not in m.prompts:
                known = ", ".join(map(repr, m.prompts)) or "none: its config_sentence_transformers.json has no prompts"
                raise InputError(f"prompt_name {name!r} is not one of this model's prompts ({known})")
            prompt = m.prompts[name]
        if prompt and not (m.pooling or {}).get("include_prompt", True):
            raise UnsupportedModelError(
                "this model's pooling excludes prompt tokens (include_prompt: false), which torchship does not "
                "implement; embed without a prompt, or with sentence-transformers"
            )
        return prompt or None

    def run_works(self, works: list[Work], params: Mapping[str, Any]) -> list[Any]:
        """Run work items (from one call, or many requests: the server's batcher) together, sorted by length
        into micro-batches; return one result per work item, in order."""
        task = self.task_def
        prepared = task.prepare(self.context, params)
        encoded = Encoded.concat([w.encoded for w in works])
        payloads = [p for w in works for p in w.payloads]
        rows: list[Any] = [None] * len(payloads)
        for batch_rows, batch in self.engine.batches(encoded):
            results = task.postprocess(self.context, prepared, batch, [payloads[r] for r in batch_rows], params)
            for r, result in zip(batch_rows, results, strict=True):
                rows[r] = result
        out, start = [], 0
        for w in works:
            n = len(w.payloads)
            out.append(task.combine(w, rows[start : start + n], params))
            start += n
        return out


def ranked(
    scores: Sequence[float], documents: Sequence[str], *, top_k: int | None, return_documents: bool
) -> list[dict[str, Any]]:
    """``[{"corpus_id", "score"(, "text")}]``, best first (ties keep input order), at most ``top_k``."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[:top_k]
    return [
        {"corpus_id": i, "score": float(scores[i]), **({"text": documents[i]} if return_documents else {})}
        for i in order
    ]


def _as_2d_long(value: ArrayLike, name: str, like: torch.Tensor | None = None) -> torch.Tensor:
    try:
        tensor = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
    except (ValueError, TypeError) as e:
        raise InputError(f"{name} must be a rectangular (batch, seq) array of integers: {e}") from e
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex:
        raise InputError(f"{name} must hold integers, got dtype {tensor.dtype}")
    if tensor.dim() == 1:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 2 or tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise InputError(f"{name} must have shape (batch, seq) with both > 0, got {tuple(tensor.shape)}")
    if like is not None and tensor.shape != like.shape:
        raise InputError(
            f"{name} has shape {tuple(tensor.shape)} but input_ids has {tuple(like.shape)}; they must match"
        )
    return tensor.long()
