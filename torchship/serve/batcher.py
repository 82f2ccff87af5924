"""Dynamic batching: a bounded queue of items and one worker thread that runs them in token-budget batches.

Handlers ``submit`` items and await their futures; the event loop never runs the model. The worker takes
the first waiting item, then keeps collecting until the batch reaches ``max_batch_tokens`` padded tokens or
``max_batch_size`` items, or ``max_wait_ms`` has passed. The Predictor then sorts the batch by length into
per-bucket micro-batches. Items whose client went away are dropped before running, never breaking a batch.
A question-answering item is one (question, context) pair: its context windows all run in the same batch.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

from tokenizers import Encoding

from ..errors import TorchshipError
from ..runtime import Predictor
from ..tokenize import Encoded, TextInput
from .metrics import Metrics


class QueueFullError(TorchshipError):
    """More items are waiting than ``max_queue`` allows."""


@dataclass
class Item:
    text: TextInput  # question answering: (question, context)
    encoded: Encoded  # one row; question answering: one per context window
    options: tuple[tuple[str, Any], ...]  # post-processing keyword arguments, hashable
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    windows: list[Encoding] | None = None  # question answering: the windows ``encoded`` holds

    def padded_tokens(self, predictor: Predictor) -> int:
        return sum(predictor.bucket_for(len(ids)) for ids in self.encoded.ids)


class Batcher:
    def __init__(
        self, predictor: Predictor, metrics: Metrics, *, max_batch_tokens: int, max_batch_size: int,
        max_wait_ms: float, max_queue: int,
    ) -> None:  # fmt: skip
        self.predictor = predictor
        self.metrics = metrics
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1e3
        self.max_queue = max_queue
        self._queue: queue.Queue[Item | None] = queue.Queue()
        self._waiting = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="torchship-batcher", daemon=True)
        self._thread.start()

    def submit(self, items: list[Item]) -> None:
        """Queue all of ``items`` or none: a request is never half-queued."""
        with self._lock:
            if self._waiting + len(items) > self.max_queue:
                raise QueueFullError(
                    f"the queue is full ({self._waiting} items waiting, max_queue {self.max_queue}); retry shortly"
                )
            self._waiting += len(items)
            self.metrics.queue_depth.set(self._waiting)
        for item in items:
            self._queue.put(item)

    def close(self) -> None:
        """Finish everything queued, then stop the worker."""
        self._queue.put(None)
        self._thread.join()

    def _took_one(self) -> None:
        with self._lock:
            self._waiting -= 1
            self.metrics.queue_depth.set(self._waiting)

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            self._took_one()
            batch = [first]
            tokens = first.padded_tokens(self.predictor)
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch_size and tokens < self.max_batch_tokens:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                self._took_one()
                batch.append(item)
                tokens += item.padded_tokens(self.predictor)
            self._run(batch)

    def _run(self, batch: list[Item]) -> None:
        live = [item for item in batch if not item.future.done()]  # a cancelled future: the client left
        groups: dict[tuple[tuple[str, Any], ...], list[Item]] = {}
        for item in live:
            groups.setdefault(item.options, []).append(item)
        self.metrics.batch_size.observe(len(live))
        counters = self.predictor.counters
        for options, items in groups.items():
            before = (counters.real_tokens, counters.padded_tokens, counters.flops_executed, counters.flops_unpadded)
            try:
                results = self._predict(items, dict(options))
            except Exception as e:  # noqa: BLE001  handed to each waiting request, which maps it to a status
                for item in items:
                    item.loop.call_soon_threadsafe(_fail, item.future, e)
                continue
            after = (counters.real_tokens, counters.padded_tokens, counters.flops_executed, counters.flops_unpadded)
            self.metrics.tokens.labels("real").inc(after[0] - before[0])
            self.metrics.tokens.labels("padded").inc(after[1] - before[1])
            self.metrics.flops.labels("executed").inc(after[2] - before[2])
            self.metrics.flops.labels("unpadded").inc(after[3] - before[3])
            for item, result in zip(items, results, strict=True):
                item.loop.call_soon_threadsafe(_resolve, item.future, result)

    def _predict(self, items: list[Item], options: dict[str, Any]) -> list[Any]:
        if self.predictor.task == "question-answering":
            contexts = [str(i.text[1]) for i in items]
            return self.predictor.answer_windows(contexts, [i.windows or [] for i in items], **options)
        return self.predictor.predict_encoded(
            [i.text for i in items], Encoded.concat([i.encoded for i in items]), **options
        )


def _resolve(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
