"""``torchship serve ARTIFACT --ray --replicas N``: the same FastAPI app, as a Ray Serve deployment.

Each replica builds the app (and loads the artifact) itself at start-up, through Ray Serve's late-bound
``__serve_build_asgi_app__`` hook, so nothing unpicklable crosses the wire.
"""

from __future__ import annotations

from typing import Any

from ..errors import OptionsError
from ..options import ServeOptions

Artifacts = str | dict[str, str]  # one artifact, or several by name
INSTALL = "pip install 'torchship[ray]'"


class TorchshipIngress:
    def __init__(self, artifact: Artifacts, options: ServeOptions) -> None:
        self.artifact = artifact
        self.options = options

    def __serve_build_asgi_app__(self) -> Any:
        from .app import create_app

        return create_app(self.artifact, self.options)


def deployment(artifact: Artifacts, options: ServeOptions, *, replicas: int, cpus_per_replica: float = 1.0) -> Any:
    """The bound Ray Serve application: ``replicas`` copies of the torchship app."""
    try:
        from ray import serve
    except ImportError as e:
        raise OptionsError(f"--ray needs Ray Serve: {INSTALL}") from e
    if replicas < 1:
        raise OptionsError(f"--replicas must be >= 1, got {replicas}")
    ingress = serve.ingress()(TorchshipIngress)
    deployed = serve.deployment(
        name="torchship", num_replicas=replicas, ray_actor_options={"num_cpus": cpus_per_replica}
    )(ingress)
    return deployed.bind(artifact, options)


def run(
    artifact: Artifacts, options: ServeOptions, *, replicas: int, address: str | None, blocking: bool = True
) -> None:
    """Start (or join) Ray, start Serve's HTTP proxy on host:port, deploy, and block until interrupted."""
    try:
        import ray
        from ray import serve
    except ImportError as e:
        raise OptionsError(f"--ray needs Ray Serve: {INSTALL}") from e
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": options.host, "port": options.port})
    serve.run(deployment(artifact, options, replicas=replicas), name="torchship", route_prefix="/", blocking=blocking)
