"""A real Triton Inference Server on 127.0.0.1, from the ``nvidia-pytriton`` wheel's ``tritonserver`` binary.

The wheel holds the server, its Python backend and one Python-backend stub per Python version. As pytriton does
itself, a server home is assembled from those: the binary and backends, plus the stub of ``.venv-triton``'s
Python in ``backends/python``. The stub embeds ``libpython`` (found through ``LD_LIBRARY_PATH``) and, like any
embedded Python, finds its ``sys.prefix`` from ``python3`` on ``PATH``: with a virtualenv's ``bin`` first,
the models run in that environment, torchship included. Both the wheel and that environment are
``.venv-triton``, which ``make test`` creates: the stub of Triton 2.51 needs numpy<2, and the project's own
``.venv`` has numpy 2.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRITON_VENV = ROOT / ".venv-triton"  # made by `make test` (the Makefile says why it is a venv of its own)


def python() -> Path:
    """The interpreter of the environment Triton's Python backend runs the models in."""
    return TRITON_VENV / "bin" / "python"


def dist_dir() -> Path | None:
    """The nvidia-pytriton wheel's tritonserver directory in .venv-triton, or None when it is not installed."""
    found = sorted(TRITON_VENV.glob("lib/python3*/site-packages/pytriton/tritonserver/bin/tritonserver"))
    return found[0].parents[1] if found else None


def libs_dir() -> Path:
    dist = dist_dir()
    assert dist is not None
    return dist.parents[1] / "nvidia_pytriton.libs"


def home(root: Path) -> Path:
    """A server home under ``root``: the wheel's server with this Python's stub installed in its Python backend."""
    dist = dist_dir()
    assert dist is not None, "nvidia-pytriton is not installed"
    out = root / "tritonserver"
    shutil.copytree(dist, out, ignore=shutil.ignore_patterns("python_backend_stubs"))
    version, _ = _python_info()
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    shutil.copy2(stub, out / "backends" / "python" / "triton_python_backend_stub")
    return out


def _python_info() -> tuple[str, str]:
    """(major.minor, the directory of its libpython) of .venv-triton's Python."""
    code = "import sys, sysconfig; print('%d.%d' % sys.version_info[:2], sysconfig.get_config_var('LIBDIR'))"
    version, libdir = subprocess.run(
        [str(python()), "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    return version, libdir


def environment() -> dict[str, str]:
    """The server's environment: the wheel's libraries and libpython on LD_LIBRARY_PATH, and the ``bin`` of the
    virtualenv the models run in first on PATH."""
    env = dict(os.environ)
    libs = [str(libs_dir()), _python_info()[1]]
    env["LD_LIBRARY_PATH"] = ":".join([*libs, env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    env["PATH"] = f"{python().parent}:{env.get('PATH', '')}"
    return env


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    http: str
    grpc: str
    log: Path

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(repo: Path, root: Path, ports: tuple[int, int, int], *, timeout: float = 600) -> Server:
    """Start tritonserver on ``repo`` and wait until it is ready (every model loaded and warmed up)."""
    import tritonclient.http as httpclient

    server_home = home(root)
    http, grpc, metrics = ports
    log = root / "tritonserver.log"
    args = [
        str(server_home / "bin" / "tritonserver"),
        f"--model-repository={repo}",
        f"--backend-directory={server_home / 'backends'}",
        f"--http-port={http}",
        "--http-address=127.0.0.1",
        f"--grpc-port={grpc}",
        "--grpc-address=127.0.0.1",
        f"--metrics-port={metrics}",
        "--allow-metrics=false",
        "--exit-on-error=true",
        "--strict-readiness=true",
        "--exit-timeout-secs=5",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=environment())
    server = Server(process, f"127.0.0.1:{http}", f"127.0.0.1:{grpc}", log)
    deadline = time.monotonic() + timeout
    client = httpclient.InferenceServerClient(server.http)
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tritonserver exited with {process.returncode}:\n{server.logs()}")
        try:
            if client.is_server_ready():
                return server
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"tritonserver was not ready within {timeout:.0f} s:\n{server.logs()}")


def text_models_only(repo: Path, out: Path) -> Path:
    """A view of ``repo`` without its ``_torchscript``, ``_aoti`` and ``_openvino`` models, whose backends the
    wheel lacks."""
    out.mkdir(parents=True, exist_ok=True)
    for model in sorted(repo.iterdir()):
        if model.is_dir() and not model.name.endswith(("_torchscript", "_aoti", "_openvino")):
            (out / model.name).symlink_to(model.resolve(), target_is_directory=True)
    return out


if __name__ == "__main__":  # .venv/bin/python -m tests.triton_server REPO: serve REPO's text-in models until ^C
    import argparse
    import signal
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    args = parser.parse_args()
    if dist_dir() is None:
        raise SystemExit("no tritonserver in .venv-triton; run `make .venv-triton/.installed` first")

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # `kill %1` of a background job stops the server too
    signal.signal(signal.SIGINT, interrupt)  # even where a background job was started with SIGINT ignored
    with tempfile.TemporaryDirectory() as tmp:
        served = text_models_only(args.repo.resolve(), Path(tmp) / "models")
        server = start(served, Path(tmp), (args.http_port, args.grpc_port, args.http_port + 2))
        print(f"ready: HTTP {server.http}, gRPC {server.grpc} (log: {server.log}); ^C or SIGTERM stops it", flush=True)
        try:
            server.process.wait()
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
