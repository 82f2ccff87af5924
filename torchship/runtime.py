"""The runtime: tokenize -> bucket -> run -> post-process. Imports torch, tokenizers and numpy only."""

from __future__ import annotations

import bisect
import dataclasses
import functools
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Encoding

from . import artifact, device
from .errors import ArtifactError, InputError, SequenceTooLongError, UnsupportedModelError
from .flops import flops
from .formats import MAX_BATCH, Backend, torchscript
from .options import LoadOptions
from .tasks import Batch, feature_extraction, fill_mask, question_answering, text_classification, token_classification
from .tokenize import Encoded, TextEncoder, TextInput, check_texts, pad_rows

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
    if opts.verify:
        artifact.verify(root, manifest)
    return Predictor(root, manifest, opts)


@dataclass
class Counters:
    """What the Predictor has executed: real vs padded tokens, executed vs unpadded FLOPs."""

    real_tokens: int = 0
    padded_tokens: int = 0
    flops_executed: int = 0
    flops_unpadded: int = 0

    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record(self, lengths: list[int], bucket: int, cost: Callable[[int], int]) -> None:
        unpadded = sum(cost(n) for n in lengths)
        with self._lock:
            self.real_tokens += sum(lengths)
            self.padded_tokens += len(lengths) * bucket
            self.flops_executed += len(lengths) * cost(bucket)
            self.flops_unpadded += unpadded

    @property
    def padding_waste(self) -> float:
        return 1 - self.real_tokens / self.padded_tokens if self.padded_tokens else 0.0

    @property
    def flops_ratio(self) -> float:
        return self.flops_executed / self.flops_unpadded if self.flops_unpadded else 1.0

    def reset(self) -> None:
        self.real_tokens = self.padded_tokens = self.flops_executed = self.flops_unpadded = 0


class Predictor:
    """A loaded artifact. ``predictor(texts)`` gives task outputs; ``predictor.run(...)`` raw tensors.

    With several formats in the artifact and ``format=None``, each micro-batch runs in the format that
    was fastest at export time for the nearest recorded (batch, seq) shape.
    """

    def __init__(self, root: Path, manifest: artifact.Manifest, options: LoadOptions) -> None:
        self.root = root
        self.manifest = manifest
        self.options = options
        self.task: str = manifest["task"]
        self.input_names: tuple[str, ...] = tuple(manifest["inputs"])
        self.output_names: tuple[str, ...] = tuple(manifest["outputs"])
        self._seq_axis = {name: axes.index("seq") for name, axes in manifest["output_axes"].items() if "seq" in axes}
        self.max_length: int = int(manifest["max_length"])
        available = list(manifest["formats"])
        if options.format is not None and options.format not in available:
            raise ArtifactError(
                f"artifact {root} has no {options.format!r} format; it holds: {', '.join(available)}", path=root
            )
        if options.threads is not None:
            torch.set_num_threads(options.threads)  # process-wide: torch has one intra-op pool
        self.device = device.resolve(options.device or manifest.get("device") or "cpu")
        self.format = options.format
        names = [options.format] if options.format else available
        self.backends: dict[str, Backend] = {n: _load_backend(n, root, manifest, options) for n in names}
        self.timings: dict[str, Any] = manifest.get("timings") or {}
        static = [b.lengths for b in self.backends.values() if b.lengths]
        self.buckets: list[int] = static[0] if static else list(manifest.get("buckets") or [self.max_length])
        tok = manifest["tokenizer"]
        self.pad_token_id = int(tok["pad_token_id"])
        self.encoder = TextEncoder(
            root / tok["dir"] / "tokenizer.json", max_length=self.max_length, truncation=options.truncation
        )
        config = json.loads((root / "config.json").read_text())
        pooler = "pooler_output" in self.output_names
        self._cost = functools.cache(lambda seq: flops(config, 1, seq, self.task, pooler=pooler))
        self.counters = Counters()
        if options.calibrate and len(self.backends) > 1:
            from .timing import time_formats

            self.timings = {**time_formats(self, self.timings.get("seq") or self.buckets), "source": "calibrated"}

    def __repr__(self) -> str:
        return (
            f"Predictor(task={self.task!r}, formats={list(self.backends)}, buckets={self.buckets}, "
            f"path={str(self.root)!r})"
        )

    # ---- format selection --------------------------------------------------------------------------------------

    def select(self, batch: int, seq: int, format: str | None = None) -> Backend:
        """The backend for a (batch, seq) micro-batch: the forced one, or the fastest timed (at export, or at
        load with ``calibrate=True``) on the nearest grid point."""
        if format is not None:
            if format not in self.backends:
                raise InputError(f"format {format!r} is not loaded; loaded: {', '.join(self.backends)}")
            return self.backends[format]
        if len(self.backends) == 1:
            return next(iter(self.backends.values()))
        grid_seqs = self.timings.get("seq") or [self.max_length]
        grid_batches = self.timings.get("batch") or [1]
        s = grid_seqs[min(bisect.bisect_left(grid_seqs, seq), len(grid_seqs) - 1)]
        b = min(grid_batches, key=lambda g: abs(np.log(g) - np.log(max(batch, 1))))
        medians = self.timings.get("median_ms", {})
        return min(self.backends.values(), key=lambda be: medians.get(be.name, {}).get(f"{b}x{s}", float("inf")))

    def bucket_for(self, seq: int, batch: int = 1) -> int:
        """The length a (batch, seq) input is padded to."""
        return self.select(batch, seq).pad_length(seq)

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
                    f"this {self.manifest['architecture']['model_type']} artifact takes no token_type_ids "
                    f"(its inputs are {list(self.input_names)}); drop the argument"
                )
            given["token_type_ids"] = _as_2d_long(token_type_ids, "token_type_ids", like=ids)
        batch, seq = ids.shape
        backend = self.select(batch, seq, format or self.format)
        padded = self._pad(given, backend.pad_length(seq))
        outputs = self._execute(backend, padded, padded["attention_mask"].sum(dim=1).tolist())
        return {name: self._cut(name, out, seq) for name, out in outputs.items()}

    def _pad(self, given: dict[str, torch.Tensor], length: int) -> dict[str, torch.Tensor]:
        ids = given["input_ids"]
        batch, seq = ids.shape
        defaults = {"input_ids": self.pad_token_id, "attention_mask": 0, "token_type_ids": 0}
        padded = {}
        for name in self.input_names:
            out = torch.full((batch, length), defaults[name], dtype=torch.long)  # (batch, length)
            if name in given:
                out[:, :seq] = given[name]
            elif name == "attention_mask":
                out[:, :seq] = 1
            padded[name] = out
        return padded

    def _execute(
        self, backend: Backend, padded: dict[str, torch.Tensor], lengths: list[int]
    ) -> dict[str, torch.Tensor]:
        length = padded["input_ids"].shape[1]  # (batch, length)
        inputs = device.to_device(padded, self.device)
        with torch.inference_mode():
            outputs = tuple(out.cpu() for out in backend.run(length, tuple(inputs[n] for n in self.input_names)))
        self.counters.record(lengths, length, self._cost)
        return dict(zip(self.output_names, outputs, strict=True))

    def seq_axis(self, name: str) -> int | None:
        """The sequence axis of output ``name``, or None when it has none (``pooler_output``)."""
        return self._seq_axis.get(name)

    def _cut(self, name: str, tensor: torch.Tensor, seq: int) -> torch.Tensor:
        axis = self._seq_axis.get(name)
        return tensor if axis is None else tensor.narrow(axis, 0, seq)

    # ---- texts -------------------------------------------------------------------------------------------------

    def encode(self, texts: object) -> Encoded:
        """Tokenize texts (or ``(text, text_pair)`` tuples) without padding, after checking them."""
        return self.encoder.encode(check_texts(texts))

    def batches(self, encoded: Encoded) -> Iterator[tuple[list[int], Batch]]:
        """Run encoded texts sorted by length in micro-batches, each padded only as far as its format needs
        (a static format's smallest bucket, a dynamic one's multiple of 8), bounded by ``max_batch_tokens``
        padded tokens and ``batch_size`` rows; with ``workers > 1`` they run concurrently, largest first."""
        jobs = self.plan_batches(encoded.lengths)
        lengths = encoded.lengths

        def run(job: tuple[list[int], int, Backend]) -> tuple[list[int], Batch]:
            rows, length, backend = job
            padded = self.pad_rows(encoded, rows, length)
            row_lengths = [int(lengths[r]) for r in rows]
            outputs = self._execute(backend, padded, row_lengths)
            return rows, Batch(padded["input_ids"], padded["attention_mask"], outputs, row_lengths, rows)

        if self.options.workers == 1:
            yield from map(run, jobs)
            return
        jobs.sort(key=lambda job: -self._cost(job[1]) * len(job[0]))
        with ThreadPoolExecutor(self.options.workers, thread_name_prefix="torchship") as pool:
            yield from pool.map(run, jobs)

    def plan_batches(self, lengths: np.ndarray) -> list[tuple[list[int], int, Backend]]:
        """(rows, padded length, backend) micro-batches: rows sorted by length and grouped by bucket (the
        static buckets, or the timing grid for dynamic formats), bounded by the token and row budgets."""
        order = np.argsort(lengths, kind="stable").tolist()
        groups: dict[int, list[int]] = {}
        for r in order:
            n = int(lengths[r])
            if n > self.max_length:
                raise SequenceTooLongError(f"sequence length {n} exceeds the longest traced length {self.max_length}")
            groups.setdefault(self.buckets[min(bisect.bisect_left(self.buckets, n), len(self.buckets) - 1)], []).append(
                r
            )
        jobs = []
        for members in groups.values():
            longest = int(lengths[members[-1]])
            backend = self.select(len(members), longest, self.format)
            if backend.lengths is None:  # dynamic: cut where padding costs more than another call
                chunks = self._split(members, [backend.pad_length(int(lengths[r])) for r in members])
            else:
                budget = self.options.max_batch_tokens // backend.pad_length(longest)
                size = max(1, min(self.options.batch_size, budget, MAX_BATCH))
                chunks = [members[i : i + size] for i in range(0, len(members), size)]
            jobs += [(rows, backend.pad_length(int(lengths[rows[-1]])), backend) for rows in chunks]
        return jobs

    def _split(self, rows: list[int], pads: list[int]) -> list[list[int]]:
        """Cut rows sorted by length (``pads``: each one's padded length) into micro-batches that minimise the
        executed FLOPs plus a fixed cost per call, within the ``batch_size`` and ``max_batch_tokens`` budgets.

        A batch pads to its longest row, so with rows sorted an exact dynamic program over cut points finds
        the best split. The per-call cost is one 16-token row: below that, one more call costs more than the
        padding it saves (batch 1 x 16 runs at about half the GEMM rate of 8 x 128 here).
        """
        call = self._cost(16)
        cap = max(1, min(self.options.batch_size, MAX_BATCH))
        n = len(rows)
        best = [0.0] + [float("inf")] * n  # best[j]: cheapest split of the first j rows
        start = [0] * (n + 1)
        for j in range(1, n + 1):
            last = self._cost(pads[j - 1])
            for i in range(j - 1, max(-1, j - 1 - cap), -1):  # the batch is rows i..j-1, padded to pads[j-1]
                if (j - i) * pads[j - 1] > self.options.max_batch_tokens and j - i > 1:
                    break
                cost = best[i] + (j - i) * last + call
                if cost < best[j]:
                    best[j], start[j] = cost, i
        chunks, j = [], n
        while j > 0:
            chunks.append(rows[start[j] : j])
            j = start[j]
        return chunks[::-1]

    def pad_rows(self, encoded: Encoded, rows: list[int], bucket: int) -> dict[str, torch.Tensor]:
        return pad_rows(encoded, rows, bucket, input_names=self.input_names, pad_token_id=self.pad_token_id)

    def __call__(
        self,
        inputs: object = None,
        *,
        question: str | list[str] | None = None,
        context: str | list[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Task outputs, shaped as transformers pipelines (feature extraction: an (n, dim) float32 array).

        Question answering takes ``question=`` and ``context=`` (strings, or lists of equal length).
        """
        if self.task == "question-answering":
            if inputs is not None:
                raise InputError("question-answering takes question=... and context=..., not positional texts")
            self.check_options(**kwargs)
            return self._answer(question, context, **kwargs)
        if question is not None or context is not None:
            raise InputError(f"question= and context= are for question-answering; this artifact is {self.task}")
        single = isinstance(inputs, str) or (isinstance(inputs, tuple) and len(inputs) == 2)
        texts = check_texts(inputs)
        results = self.predict_encoded(texts, self.encoder.encode(texts), **kwargs)
        if self.task == "feature-extraction":
            return np.stack(results)
        return results[0] if single else results

    def predict_encoded(self, texts: list[TextInput], encoded: Encoded, **kwargs: Any) -> list[Any]:
        """Task outputs for texts already checked and encoded, in input order (feature extraction: one
        float32 vector per text). The server's batcher calls this with rows from many requests."""
        post = self._postprocessor(texts, encoded, **kwargs)
        results: list[Any] = [None] * len(encoded.ids)
        for rows, batch in self.batches(encoded):
            for r, result in zip(rows, post(batch), strict=True):
                results[r] = result
        if self.task == "feature-extraction":
            return [r.numpy().astype(np.float32, copy=False) for r in results]
        return results

    def check_options(self, **kwargs: Any) -> None:
        """Raise InputError for a post-processing option this task does not take, or a bad value."""
        allowed = {
            "fill-mask": {"top_k"},
            "text-classification": {"top_k"},
            "token-classification": {"aggregation_strategy"},
            "question-answering": {"top_k", "doc_stride", "max_answer_len"},
        }.get(self.task, set())
        unknown = set(kwargs) - allowed
        if unknown:
            raise InputError(
                f"unknown option(s) {sorted(unknown)} for task {self.task}; valid: {sorted(allowed) or 'none'}"
            )
        if "top_k" in kwargs and (kwargs["top_k"] is not None or self.task == "question-answering"):
            _positive(kwargs["top_k"], "top_k")
        for name in ("doc_stride", "max_answer_len"):
            if name in kwargs:
                _positive(kwargs[name], name)
        if "aggregation_strategy" in kwargs:
            token_classification.check_strategy(kwargs["aggregation_strategy"])

    def _postprocessor(self, texts: list[TextInput], encoded: Encoded, **kwargs: Any) -> Callable[[Batch], list[Any]]:
        self.check_options(**kwargs)
        m = self.manifest
        labels = m.get("labels") or {}
        if self.task == "feature-extraction":
            return lambda b: feature_extraction.postprocess(b, pooling=m["pooling"])
        if self.task == "fill-mask":
            mask_id = self.encoder.token_to_id(m["tokenizer"]["mask_token"])
            if mask_id is None:
                raise ArtifactError("the tokenizer has no mask token; export the artifact again", path=self.root)
            top_k = _positive(kwargs.get("top_k", 5), "top_k")
            return lambda b: fill_mask.postprocess(b, mask_token_id=mask_id, top_k=top_k, decode=self.encoder.decode)
        if self.task == "text-classification":
            k = kwargs.get("top_k")
            top = None if k is None else _positive(k, "top_k")
            problem = m.get("problem_type")
            return lambda b: text_classification.postprocess(b, labels=labels, problem_type=problem, top_k=top)
        if self.task == "token-classification":
            strategy = token_classification.check_strategy(kwargs.get("aggregation_strategy", "none"))
            if any(isinstance(t, tuple) for t in texts):
                raise InputError("token-classification takes single texts, not text pairs")

            def rows_of(b: Batch) -> list[token_classification.RowText]:
                return [
                    token_classification.RowText(str(texts[r]), encoded.ids[r], encoded.offsets[r], encoded.special[r])
                    for r in b.rows
                ]

            tokenizer = self.encoder.tokenizer
            return lambda b: token_classification.postprocess(
                b, rows_of(b), labels=labels, strategy=strategy, tokenizer=tokenizer
            )
        raise UnsupportedModelError(f"task {self.task!r} has no text post-processing; call Predictor.run(...)")

    def _answer(
        self,
        question: str | list[str] | None,
        context: str | list[str] | None,
        *,
        top_k: int = 1,
        doc_stride: int = 128,
        max_answer_len: int = 15,
    ) -> Any:
        questions, contexts = self.question_pairs(question, context)
        top_k, max_answer_len = _positive(top_k, "top_k"), _positive(max_answer_len, "max_answer_len")
        windows = self.question_windows(questions, contexts, doc_stride=doc_stride)
        results = self.answer_windows(contexts, windows, top_k=top_k, max_answer_len=max_answer_len)
        return results[0] if isinstance(question, str) and isinstance(context, str) else results

    def question_pairs(self, question: object, context: object) -> tuple[list[str], list[str]]:
        """Checked (question, context) pairs: a single question or context is paired with every item of the
        other list; two lists must have equal lengths."""
        if question is None or context is None:
            raise InputError("question-answering needs both question= and context=")
        questions = [str(q) for q in check_texts(question)]
        contexts = [str(c) for c in check_texts(context)]
        if isinstance(question, str):  # one question over many contexts, or many questions about one context
            questions = questions * len(contexts)
        elif isinstance(context, str):
            contexts = contexts * len(questions)
        if len(questions) != len(contexts):
            raise InputError(
                f"got {len(questions)} questions and {len(contexts)} contexts; pass lists of equal length, "
                "or a single question or context to pair with every item of the other"
            )
        return questions, contexts

    def question_windows(self, questions: list[str], contexts: list[str], *, doc_stride: int) -> list[list[Encoding]]:
        """Per pair, the (question, context window) encodings that cover the whole context."""
        doc_stride = _positive(doc_stride, "doc_stride")
        return [
            question_answering.windows(self.encoder.tokenizer, q, c, max_length=self.max_length, doc_stride=doc_stride)
            for q, c in zip(questions, contexts, strict=True)
        ]

    def answer_windows(
        self, contexts: list[str], windows: list[list[Encoding]], *, top_k: int = 1, max_answer_len: int = 15
    ) -> list[Any]:
        """The best spans per context, from its windows run together in length-sorted micro-batches (the
        server's batcher calls this with the windows of many requests)."""
        top_k, max_answer_len = _positive(top_k, "top_k"), _positive(max_answer_len, "max_answer_len")
        owner = [i for i, ws in enumerate(windows) for _ in ws]
        all_windows = [w for ws in windows for w in ws]
        candidates: list[list[Any]] = [[] for _ in contexts]
        for rows, batch in self.batches(Encoded.of(all_windows)):
            start_logits = batch.outputs["start_logits"].float().numpy()  # (batch, seq)
            end_logits = batch.outputs["end_logits"].float().numpy()
            for i, (r, n) in enumerate(zip(rows, batch.lengths, strict=True)):
                spans = question_answering.best_spans(
                    start_logits[i, :n], end_logits[i, :n], all_windows[r], max_answer_len=max_answer_len, top_k=top_k
                )
                candidates[owner[r]] += [(score, s, e, all_windows[r]) for score, s, e in spans]
        results = []
        for c, found in zip(contexts, candidates, strict=True):
            answers = question_answering.answer(c, found, top_k=top_k)
            results.append(answers[0] if top_k == 1 and answers else answers)
        return results


def _load_backend(name: str, root: Path, manifest: artifact.Manifest, options: LoadOptions) -> Backend:
    entries = manifest["formats"][name]
    max_length = int(manifest["max_length"])
    seqs = sorted(int(e["seq"]) for e in entries) if entries[0]["seq"] is not None else []
    if name == "torchscript":
        return torchscript.load(
            root / entries[0]["file"], seqs, device.resolve(options.device or manifest.get("device", "cpu"))
        )
    if name == "neuron":
        from .formats import neuron

        return neuron.load(root, seqs)
    if name == "aoti":
        from .formats import aoti

        backend = aoti.load(root / entries[0]["file"], max_length)
    elif name == "onnx":
        from .formats import onnx

        backend = onnx.load(root / entries[0]["file"], max_length, threads=options.threads)
    else:
        raise ArtifactError(f"artifact format {name!r} is unknown to this torchship; upgrade torchship", path=root)
    backend.snap = sorted(int(b) for b in manifest.get("buckets") or [])
    return backend


def _positive(value: object, name: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON has one number type: 5.0 is the integer 5, as JSON Schema counts it
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return value


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
