"""Prometheus metrics for the server, in a registry of its own (no global state between apps)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from ..engine import Executed

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "torchship_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "torchship_request_latency_seconds", "Request latency", ["endpoint"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "torchship_batch_size", "Items per executed batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("torchship_queue_depth", "Items waiting for the batcher", registry=r)
        self.in_flight = Gauge(
            "torchship_requests_in_flight", "Requests received and not yet answered, /metrics excluded", registry=r
        )
        self.tokens = Counter("torchship_tokens", "Tokens executed, real or padded", ["kind"], registry=r)
        self.flops = Counter(
            "torchship_flops", "FLOPs executed, and what unpadded inputs would cost", ["kind"], registry=r
        )
        self.rejected = Counter(
            "torchship_rejected", "Requests refused by backpressure or limits", ["reason"], registry=r
        )

    def executed(self, e: Executed) -> None:
        """The engine's hook: count every executed micro-batch's tokens and FLOPs."""
        self.tokens.labels("real").inc(sum(e.lengths))
        self.tokens.labels("padded").inc(e.rows * e.padded_length)
        self.flops.labels("executed").inc(e.flops_executed)
        self.flops.labels("unpadded").inc(e.flops_unpadded)

    def render(self) -> bytes:
        return generate_latest(self.registry)
