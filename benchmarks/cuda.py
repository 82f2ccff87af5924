"""The corpus on a CUDA GPU: torchship artifacts (each dtype, each format, and routed) vs sentence-transformers.

    python benchmarks/cuda.py --artifact float32=DIR --artifact bfloat16=DIR ... [--copies 8] [--batch-size 128]

Every contender embeds the same texts (the repository corpus repeated ``--copies`` times, so one pass keeps the
GPU busy for longer than a launch) end to end, tokenization included, at the same batch size and the same
maximum length (sentence-transformers' ``max_seq_length`` is set to the artifacts' longest bucket). Each reports
its median seconds over ``--repeats`` passes and its minimum cosine against float32 sentence-transformers.
Run by scripts/device-check.sh on a GPU machine; results go to ``--output`` (JSON) and stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import corpus, machine, timed  # noqa: E402

import torchship  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", action="append", default=[], metavar="DTYPE=DIR", required=True)
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--st-dtypes", default="float16,bfloat16", help="besides float32, always run")
    parser.add_argument("--device", default="cuda", help="cpu rehearses the script on a machine without a GPU")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/cuda.json"))
    args = parser.parse_args()
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("benchmarks/cuda.py: no CUDA device (torch.cuda.is_available() is False)", file=sys.stderr)
        return 1
    artifacts = dict(a.split("=", 1) for a in args.artifact)
    texts = corpus() * args.copies
    warnings.simplefilter("ignore", UserWarning)  # a few texts exceed the longest bucket: every contender truncates

    seconds: dict[str, float] = {}
    embeddings: dict[str, np.ndarray] = {}
    max_length = 0
    for dtype, path in artifacts.items():
        routed = torchship.load(path, device=args.device, micro_batch_size=args.batch_size)
        max_length = max(max_length, routed.max_length)
        for fmt in [None, *routed.engine.available]:
            predictor = (
                routed
                if fmt is None
                else torchship.load(path, device=args.device, format=fmt, micro_batch_size=args.batch_size)
            )
            name = f"torchship {dtype} {'routed' if fmt is None else fmt}"
            seconds[name], _ = timed(lambda p=predictor: p(texts), args.repeats)
            embeddings[name] = predictor(texts)
            print(f"{name:40} {seconds[name]:8.3f} s", flush=True)

    from sentence_transformers import SentenceTransformer

    source = json.loads((Path(next(iter(artifacts.values()))) / "manifest.json").read_text())["source"]["path"]
    st_dtypes = ["float32", *(d for d in args.st_dtypes.split(",") if d and d != "float32")]  # float32: the reference
    for dtype in st_dtypes:
        st = SentenceTransformer(source, device=args.device).to(getattr(torch, dtype))
        st.max_seq_length = max_length
        name = f"sentence-transformers {dtype}"
        run = lambda st=st: st.encode(texts, batch_size=args.batch_size, convert_to_numpy=False, convert_to_tensor=True)  # noqa: E731
        seconds[name], _ = timed(lambda r=run: (r(), sync()), args.repeats)
        embeddings[name] = run().float().cpu().numpy()
        print(f"{name:40} {seconds[name]:8.3f} s", flush=True)

    reference = embeddings["sentence-transformers float32"]
    reference = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    rows = {}
    for name, secs in seconds.items():
        e = embeddings[name] / np.linalg.norm(embeddings[name], axis=1, keepdims=True)
        rows[name] = {
            "seconds": secs,
            "texts_per_s": len(texts) / secs,
            "min_cosine_vs_st_float32": float((e * reference).sum(1).min()),
        }
    gpu = torch.cuda.get_device_name() if args.device != "cpu" else "cpu"
    result = {
        "machine": {**machine(), "gpu": gpu},
        "texts": len(texts),
        "batch_size": args.batch_size,
        "max_length": max_length,
        "contenders": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{len(texts)} texts, batch {args.batch_size}, max length {max_length}, on {result['machine']['gpu']}")
    print(f"{'contender':40} {'seconds':>8} {'texts/s':>9} {'vs ST fp32':>10} {'min cosine':>10}")
    base = seconds["sentence-transformers float32"]
    for name, row in sorted(rows.items(), key=lambda kv: kv[1]["seconds"]):
        print(
            f"{name:40} {row['seconds']:8.3f} {row['texts_per_s']:9.0f} {base / row['seconds']:9.2f}x "
            f"{row['min_cosine_vs_st_float32']:10.5f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
