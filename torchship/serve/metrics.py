"""Prometheus metrics for the server, in a registry of its own (no global state between apps).

Every metric carries a ``model`` label (the served model's name; empty for routes no model answers, such as
/health), so one server's several models are told apart on one dashboard.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from ..engine import Executed

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class ModelMetrics:
    """What one model's batcher records: its queue depth and its batch sizes."""

    queue_depth: Any
    batch_size: Any


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "torchship_requests", "HTTP requests by endpoint and status", ["endpoint", "status", "model"], registry=r
        )
        self.latency = Histogram(
            "torchship_request_latency_seconds", "Request latency", ["endpoint", "model"], buckets=LATENCY_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "torchship_batch_size", "Items per executed batch", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("torchship_queue_depth", "Items waiting for the batcher", ["model"], registry=r)
        self.in_flight = Gauge(
            "torchship_requests_in_flight", "Requests queued or running in the batcher", ["model"], registry=r
        )
        self.tokens = Counter("torchship_tokens", "Tokens executed, real or padded", ["kind", "model"], registry=r)
        self.flops = Counter(
            "torchship_flops", "FLOPs executed, and what unpadded inputs would cost", ["kind", "model"], registry=r
        )
        self.rejected = Counter(
            "torchship_rejected", "Requests refused by backpressure or limits", ["reason", "model"], registry=r
        )

    def of(self, model: str) -> ModelMetrics:
        return ModelMetrics(self.queue_depth.labels(model), self.batch_size.labels(model))

    def executed_by(self, model: str) -> Callable[[Executed], None]:
        """The engine's hook for ``model``: count every executed micro-batch's tokens and FLOPs."""
        real, padded = self.tokens.labels("real", model), self.tokens.labels("padded", model)
        executed, unpadded = self.flops.labels("executed", model), self.flops.labels("unpadded", model)

        def hook(e: Executed) -> None:
            real.inc(sum(e.lengths))
            padded.inc(e.rows * e.padded_length)
            executed.inc(e.flops_executed)
            unpadded.inc(e.flops_unpadded)

        return hook

    def render(self) -> bytes:
        return generate_latest(self.registry)
