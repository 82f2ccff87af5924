"""Dynamic batching: a bounded queue of items and one worker thread that runs them in token-budget batches.

Handlers ``submit`` items and await their futures; the event loop never runs the model. The worker takes
the first waiting item, then keeps collecting until the batch reaches ``max_batch_tokens`` padded tokens or
``max_batch_size`` items, or ``max_wait_ms`` has passed. The Predictor then sorts the batch by length into
per-bucket micro-batches. Items whose client went away are dropped before running, never breaking a batch.
An item is one task work item (question answering: one (question, context) pair, with all its context
windows); the batcher never asks which task it serves.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import QueueFullError
from ..tasks import Work
from .metrics import ModelMetrics

__all__ = ["Batcher", "Item", "QueueFullError"]


class Runner(Protocol):
    """What the batcher needs of a Predictor: how far a row pads, and how work items run."""

    def bucket_for(self, seq: int, batch: int = 1) -> int: ...

    def run_works(self, works: list[Work], params: Mapping[str, Any]) -> list[Any]: ...


@dataclass
class Item:
    work: Work  # one text's row; question answering: one row per context window
    options: tuple[tuple[str, Any], ...]  # the task's options, hashable: items batch together only when equal
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop

    def padded_tokens(self, bucket_for: Callable[[int], int]) -> int:
        return sum(bucket_for(len(ids)) for ids in self.work.encoded.ids)


class Batcher:
    def __init__(
        self, runner: Runner, metrics: ModelMetrics, *, max_batch_tokens: int, max_batch_size: int,
        max_wait_ms: float, max_queue: int,
    ) -> None:  # fmt: skip
        self.runner = runner
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
            tokens = first.padded_tokens(self.runner.bucket_for)
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
                tokens += item.padded_tokens(self.runner.bucket_for)
            self._run(batch)

    def _run(self, batch: list[Item]) -> None:
        live = [item for item in batch if not item.future.done()]  # a cancelled future: the client left
        groups: dict[tuple[tuple[str, Any], ...], list[Item]] = {}
        for item in live:
            groups.setdefault(item.options, []).append(item)
        self.metrics.batch_size.observe(len(live))
        for options, items in groups.items():
            try:
                results = self.runner.run_works([item.work for item in items], dict(options))
            except Exception as e:  # noqa: BLE001  handed to each waiting request, which maps it to a status
                for item in items:
                    item.loop.call_soon_threadsafe(_fail, item.future, e)
                continue
            for item, result in zip(items, results, strict=True):
                item.loop.call_soon_threadsafe(_resolve, item.future, result)


def _resolve(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
