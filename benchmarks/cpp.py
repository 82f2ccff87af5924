"""torchship-run (the C++ loader) with TorchScript's float32 linear layers on oneDNN against as traced (MKL).

    make cpp                                  # builds build/cpp/torchship-run
    .venv/bin/python benchmarks/cpp.py        # about 2 minutes; run nothing else meanwhile

all-MiniLM-L6-v2 exported as TorchScript alone at the default 12 buckets, the repository's corpus tokenized
into JSON lines of ids, one process per run of the binary (``--no-verify``: the checksums are not what is
compared), ``TORCHSHIP_ONEDNN_LINEAR=1`` and ``=0`` alternating round by round so that the machine's drift hits
each alike. The binary runs one text at a time and writes only ``pooler_output`` (``--output``: every token's
hidden state as JSON would cost more than the model); the figures are end to end, the process's start and load
included.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import arguments, corpus, machine, save

ROOT = Path(__file__).resolve().parents[1]
BINARY = ROOT / "build" / "cpp" / "torchship-run"


def main() -> int:
    parser = arguments(__doc__.split("\n")[0], "cpp.json")
    parser.add_argument("--texts", type=int, default=200, help="corpus texts per run (the first N)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "build" / "bench-cpp")
    args = parser.parse_args()
    if not BINARY.is_file():
        print(f"{BINARY} is not built: run `make cpp` first", file=sys.stderr)
        return 1
    import torchship
    from torchship import cli

    artifact = args.workdir / "minilm"
    if not (artifact / "manifest.json").exists():
        torchship.export("demo", artifact, torchship.ExportOptions(formats=("torchscript",), overwrite=True))
    ids = args.workdir / "ids.jsonl"
    with ids.open("w") as f, contextlib.redirect_stdout(f):  # `torchship tokenize`: what the README hands over
        cli.main(["tokenize", str(artifact), *corpus()[: args.texts]])
    lines = ids.read_text()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    times: dict[str, list[float]] = {"1": [], "0": []}
    said: dict[str, str] = {}
    outputs: dict[str, list[dict]] = {}
    for _ in range(args.rounds):
        for onednn in ("1", "0"):
            start = time.perf_counter()
            run = subprocess.run(
                [str(BINARY), str(artifact), "--no-verify", "--output", "pooler_output"], input=lines,
                capture_output=True, text=True,
                env={**env, "TORCHSHIP_ONEDNN_LINEAR": onednn}, check=True,
            )  # fmt: skip
            times[onednn].append(time.perf_counter() - start)
            said[onednn] = run.stderr.strip()
            outputs[onednn] = [json.loads(line) for line in run.stdout.splitlines()]
    diff = max(
        abs(a - b)
        for x, y in zip(outputs["1"], outputs["0"], strict=True)
        for a, b in zip(x["pooler_output"], y["pooler_output"], strict=True)
    )
    onednn, mkl = statistics.median(times["1"]), statistics.median(times["0"])
    record = {
        "machine": machine(),
        "threads": args.threads,
        "texts": args.texts,
        "rounds": args.rounds,
        "onednn_s": times["1"],
        "as_traced_s": times["0"],
        "said": said,
        "speedup": mkl / onednn,
        "max_abs_diff_pooler_output": diff,
    }
    print(f"{args.texts} texts, one at a time, {args.threads} threads, median of {args.rounds} runs each:")
    print(f"  as traced (MKL): {mkl:.2f} s   on oneDNN: {onednn:.2f} s   {mkl / onednn:.2f}x   max |diff| {diff:.1e}")
    print(f"  {said['1']}")
    save(record, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
