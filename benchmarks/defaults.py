"""What `torchship export` should do with no flags: candidate defaults measured side by side (issue #17).

    .venv/bin/python benchmarks/defaults.py      # about 8 minutes; writes benchmarks/results/defaults.json

Each candidate is exported from the bundled all-MiniLM-L6-v2 (export seconds, artifact size), then run in its
own process exactly as ``benchmarks/peers.py`` runs a contender: load time, fixed shapes, and the corpus end to
end (median of ``--repeats`` passes) with ``torchship.load(path, threads=N)``, so no load option is assumed
either; the ``-2w`` rows load the same artifact with two workers of one thread. sentence-transformers runs the
same way, for the ratio. The requirements (issue #17): the corpus in at most 1.15x the FLOP limit, at least
1.75x sentence-transformers' throughput, an export in at most 60 s, and a TorchScript ``model.pt`` kept.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import peers

POW2 = (16, 32, 64, 128, 256)  # the first default's buckets
GEOMETRIC = (16, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256)  # each edge at most 1.5x the one before
PADDED = {"unpad": False}  # the candidates measured before padding-free dense layers became the default
CANDIDATES: dict[str, dict[str, Any]] = {
    "ts-pow2": {"formats": ("torchscript",), "seq_lengths": POW2, **PADDED},  # the first default
    "ts-geo": {"formats": ("torchscript",), "seq_lengths": GEOMETRIC, **PADDED},
    "ts+onnx-pow2": {"formats": ("torchscript", "onnx"), "seq_lengths": POW2, **PADDED},
    "ts+onnx-geo": {"formats": ("torchscript", "onnx"), "seq_lengths": GEOMETRIC, **PADDED},  # the second
    "ts+onnx-geo-unpad": {"formats": ("torchscript", "onnx"), "seq_lengths": GEOMETRIC, "unpad": True},  # now
    # OpenVINO as a default format (it would make openvino a dependency of every install)
    "ts+ov-geo-unpad": {"formats": ("torchscript", "openvino"), "seq_lengths": GEOMETRIC, "unpad": True},
    "ts+onnx+ov-geo-unpad": {"formats": ("torchscript", "onnx", "openvino"), "seq_lengths": GEOMETRIC, "unpad": True},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=peers.ROOT / "build" / "defaults")
    parser.add_argument("--output", type=Path, default=peers.ROOT / "benchmarks" / "results" / "defaults.json")
    parser.add_argument("--only", default=",".join(CANDIDATES), help="comma list of candidates (with --output)")
    parser.add_argument("--workers", default="1,2", help="run each with 1 worker (2 threads), 2 (1 thread), or both")
    args = parser.parse_args()
    chosen = {n: CANDIDATES[n] for n in args.only.split(",") if n}
    suffixes = [{"1": "", "2": "-2w"}[w] for w in args.workers.split(",")]
    import torch

    import torchship
    from torchship.bench import machine_info

    torch.set_num_threads(args.threads)
    work: Path = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    exports: dict[str, Any] = {}
    for name, fields in chosen.items():
        started = time.perf_counter()
        cache = work / "cache" / name  # each candidate from an empty export cache: what a first export costs
        options = torchship.ExportOptions(**fields, cache_dir=cache)
        out = torchship.export("demo", work / f"torchship-{name}", options)
        seconds = time.perf_counter() - started
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        exports[name] = {"options": {k: v if isinstance(v, bool) else list(v) for k, v in fields.items()},
                         "export_s": seconds,
                         "size_mb": size / 2**20}  # fmt: skip
        print(f"exported {name} in {seconds:.1f} s ({size / 2**20:.0f} MB)", flush=True)
        if "-2w" in suffixes:
            shutil.copytree(out, work / f"torchship-{name}-2w")
    limit = peers.flop_limit(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    runs = ["sentence-transformers", *(f"torchship-{n}{w}" for n in chosen for w in suffixes)]
    results: dict[str, Any] = {}
    for name in runs:
        print(f"running {name} ...", flush=True)
        cmd = [sys.executable, str(Path(peers.__file__)), "--contender", name, "--threads", str(args.threads),
               "--repeats", str(args.repeats), "--workdir", str(work)]  # fmt: skip
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
        results[name] = json.loads(line[-1][len("RESULT ") :])
    st = results["sentence-transformers"]["corpus_s"]
    for r in results.values():
        r["x_flop_limit"] = r["corpus_s"] / limit["limit_s"]
        r["throughput_vs_st"] = st / r["corpus_s"]
    record = {"machine": machine_info(), "threads": args.threads, "flop_limit": limit,
              "exports": exports, "results": results}  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"FLOP limit {limit['limit_s']:.2f} s at {limit['gemm_peak_gflops']:.1f} GFLOP/s")
    print("| candidate | export s | MB | load s | corpus s | × FLOP limit | vs ST | 1×16 ms | 1×128 ms | 8×128 ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        e = exports.get(name.removeprefix("torchship-").removesuffix("-2w"), {})
        s = r["shapes_ms"]
        print(
            f"| {name} | {e.get('export_s', 0):.1f} | {e.get('size_mb', 0):.0f} | {r['load_s']:.2f} | "
            f"{r['corpus_s']:.2f} | {r['x_flop_limit']:.2f} | {r['throughput_vs_st']:.2f}× | {s['1x16']:.2f} | "
            f"{s['1x128']:.2f} | {s['8x128']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
