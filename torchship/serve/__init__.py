"""``torchship serve``: an HTTP server with dynamic batching over a loaded artifact.

    app.py      the app: OpenAI /v1/embeddings and /v1/models, /predict, /health, /info, /metrics, /docs
    models.py   the served models (one or several), each with its batcher; the one way a request runs
    tei.py      Hugging Face text-embeddings-inference routes (/embed, /rerank, /tokenize, ...)
    hf.py       the Hugging Face Inference API at POST / (what InferenceClient sends)
    rerank.py   Cohere-style /v1/rerank and /v2/rerank
    schema.py   the OpenAPI contract, built for the served tasks and the limits
    batcher.py  the bounded queue and the worker thread that batches requests by token budget
    metrics.py  Prometheus metrics (each with a model label), recorded by hooks rather than flags on the hot path

Needs the ``serve`` extra (fastapi, uvicorn, prometheus-client).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path

from ..errors import OptionsError
from ..options import ServeOptions

INSTALL = "pip install 'torchship[serve]'"


def serve(artifacts: Mapping[str, str | Path] | str | Path, options: ServeOptions) -> int:
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

    app = create_app(artifacts, options)
    config = uvicorn.Config(app, host=options.host, port=options.port, log_level="info", timeout_graceful_shutdown=30)
    GracefulServer(config).run()
    return 0
