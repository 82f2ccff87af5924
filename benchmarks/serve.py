"""The server's throughput against the in-process Predictor, on the repository's corpus, side by side in one run.

    python benchmarks/serve.py [--artifact DIR] [--clients 16] [--batch 8] [--threads 2] [--repeats 3]
                                # writes benchmarks/results/serve.json

Contenders, each embedding every text of data/texts.jsonl, one after another on the same threads:

- ``predictor``: ``torchship.load(ARTIFACT)(texts)`` in this process, all texts in one call (the Predictor sorts
  them by length into micro-batches): the throughput to match;
- ``/embed`` and ``/v1/embeddings``: ``torchship serve ARTIFACT`` in a process of its own, and ``--clients``
  concurrent clients (threads here, one ``httpx.Client`` each) sending ``--batch`` texts per request in corpus
  order until the corpus is done;
- ``two models``: ``torchship serve --model a=ARTIFACT --model b=ARTIFACT``, half the clients on each model,
  every text embedded once by each model (twice the work, against two Predictor calls).

The server runs with ``--threads`` intra-op threads and the clients share the same cores, since on a 2-core
machine there is nowhere else for them to run: the ratio includes the cost of HTTP, JSON and the batcher. The
median of ``--repeats`` runs is reported.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import corpus, machine, pin_threads  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``torchship serve`` in a subprocess; ready when /health says so."""

    def __init__(self, args: list[str], threads: int) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "torchship.cli", "serve", *args, "--port", str(self.port),
               "--threads", str(threads), "--max-input-items", "256"]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self.log = tempfile.TemporaryFile()  # noqa: SIM115  closed in __exit__
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        import httpx

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"the server exited: {self.log.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the server did not become ready in 300 s")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        self.log.close()


def drive(jobs: list[tuple[str, dict[str, Any]]], clients: int) -> float:
    """Send every (url, body) job from ``clients`` threads, each taking the next job when free; seconds taken.
    Every response must be a 200 holding one vector per text."""
    import httpx

    todo = iter(enumerate(jobs))
    import threading

    lock = threading.Lock()

    def client() -> int:
        done = 0
        with httpx.Client(timeout=300) as http:
            while True:
                with lock:
                    nxt = next(todo, None)
                if nxt is None:
                    return done
                _, (url, body) = nxt
                r = http.post(url, json=body)
                r.raise_for_status()
                out = r.json()
                n = len(out["data"]) if isinstance(out, dict) else len(out)
                assert n == len(body.get("input", body.get("inputs", []))), "one vector per text"
                done += n

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        total = sum(pool.map(lambda _: client(), range(clients)))
    seconds = time.perf_counter() - started
    assert total == sum(len(b.get("input", b.get("inputs", []))) for _, b in jobs)
    return seconds


def chunks(texts: list[str], size: int) -> list[list[str]]:
    return [texts[i : i + size] for i in range(0, len(texts), size)]


def median_of(fn: Callable[[], float], repeats: int) -> tuple[float, list[float]]:
    fn()  # warm: first requests, lazy paths
    runs = [fn() for _ in range(repeats)]
    return statistics.median(runs), runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, default=None, help="default: export the demo model to a temp dir")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8, help="texts per request")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve.json")
    args = parser.parse_args()
    pin_threads(args.threads)
    import torchship

    texts = corpus()
    with tempfile.TemporaryDirectory() as tmp:
        artifact = args.artifact or torchship.export("demo", Path(tmp) / "minilm")
        predictor = torchship.load(artifact, threads=args.threads)
        results: dict[str, Any] = {"machine": machine(), "texts": len(texts), "clients": args.clients,
                                   "batch": args.batch, "threads": args.threads, "repeats": args.repeats}  # fmt: skip

        def in_process() -> float:
            started = time.perf_counter()
            predictor(texts)
            return time.perf_counter() - started

        base, runs = median_of(in_process, args.repeats)
        results["predictor"] = {"seconds": base, "runs": runs, "texts_per_s": len(texts) / base}
        print(f"predictor        {base:7.2f} s  {len(texts) / base:7.1f} texts/s")
        with Server([str(artifact)], args.threads) as server:
            for name, route, key in (("/embed", "/embed", "inputs"), ("/v1/embeddings", "/v1/embeddings", "input")):
                jobs = [(server.url + route, {key: c}) for c in chunks(texts, args.batch)]
                seconds, runs = median_of(lambda jobs=jobs: drive(jobs, args.clients), args.repeats)
                results[name] = {"seconds": seconds, "runs": runs, "texts_per_s": len(texts) / seconds,
                                 "vs_predictor": base / seconds}  # fmt: skip
                print(f"{name:16} {seconds:7.2f} s  {len(texts) / seconds:7.1f} texts/s  {base / seconds:5.2f}x")
        with Server(["--model", f"a={artifact}", "--model", f"b={artifact}"], args.threads) as server:
            jobs = [(f"{server.url}/models/{m}/embed", {"inputs": c}) for c in chunks(texts, args.batch) for m in "ab"]
            seconds, runs = median_of(lambda: drive(jobs, args.clients), args.repeats)
            results["two models"] = {"seconds": seconds, "runs": runs, "texts_per_s": 2 * len(texts) / seconds,
                                     "vs_predictor": 2 * base / seconds}  # fmt: skip
            rate, ratio = 2 * len(texts) / seconds, 2 * base / seconds
            print(f"two models       {seconds:7.2f} s  {rate:7.1f} texts/s  {ratio:5.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
