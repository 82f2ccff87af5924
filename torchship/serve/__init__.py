"""``torchship serve``: an HTTP server with dynamic batching over a loaded artifact.

    app.py      routes: /v1/embeddings (OpenAI-compatible), /predict, /health, /info, /metrics, /docs
    batcher.py  the bounded queue and the worker thread that batches requests by token budget
    metrics.py  Prometheus metrics, recorded by hook objects rather than flags on the hot path

Needs the ``serve`` extra (fastapi, uvicorn, prometheus-client).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from ..errors import OptionsError
from ..options import ServeOptions

INSTALL = "pip install 'torchship[serve]'"


def serve(artifact: str | Path, options: ServeOptions) -> int:
    """Run the server until SIGINT/SIGTERM; in-flight requests finish first. Returns the exit code."""
    try:
        import uvicorn
    except ImportError as e:
        raise OptionsError(f"torchship serve needs uvicorn and fastapi: {INSTALL}") from e
    from .app import create_app

    class GracefulServer(uvicorn.Server):
        """uvicorn re-raises SIGTERM after its graceful shutdown, so the process would die by the signal.
        A drained shutdown is a success: forget the captured signal and exit 0."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                try:
                    yield
                finally:
                    captured = getattr(self, "_captured_signals", None)
                    if isinstance(captured, list):
                        captured.clear()

    app = create_app(artifact, options)
    config = uvicorn.Config(app, host=options.host, port=options.port, log_level="info", timeout_graceful_shutdown=30)
    GracefulServer(config).run()
    return 0
