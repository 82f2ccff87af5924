"""``torchship embed`` at 1x, 10x and 30x the repository's corpus: memory, throughput, Ray, and kill-and-resume.

    python benchmarks/embed_scale.py [--sizes 1,10,30] [--threads 2]   # writes benchmarks/results/embed_scale.json

Corpora are the repository's corpus repeated with new ids, as .jsonl shards of 820 rows. Every job runs in a
process of its own (peak RSS is that process's ``ru_maxrss``), on the same threads, one after another:

- in-process ``embed`` into a dataset, at each size: peak RSS and rows/s;
- the Predictor called directly on the same texts (all at once, all in memory) at each size: the throughput to
  match, each timed from the start of the job to its end (loading the artifact included);
- ``--ray`` with 2 actors (1 thread each): rows/s, and the driver's peak RSS at each size;
- at ``--resume-size`` (10x by default), a run killed (SIGKILL) at about 50 % of its rows and resumed: total
  time against the uninterrupted run of that size, and the output compared row by row with it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CORPUS, machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def build(root: Path, times: int) -> Path:
    """``times`` copies of the corpus, one .jsonl shard per copy, every row with a new id."""
    texts = [json.loads(line)["text"] for line in CORPUS.read_text().splitlines() if line.strip()]
    root.mkdir(parents=True, exist_ok=True)
    for k in range(times):
        lines = (json.dumps({"id": f"c{k}-{i}", "text": t}) for i, t in enumerate(texts))
        (root / f"shard-{k:03d}.jsonl").write_text("\n".join(lines) + "\n")
    return root


CHILD = r"""
import json, resource, sys, time, warnings
from pathlib import Path
mode, artifact, src, out, threads = sys.argv[1:6]
import torch
torch.set_num_threads(int(threads))
started = time.perf_counter()
if mode == "direct":
    import torchship
    texts = [json.loads(l)["text"] for p in sorted(Path(src).glob("*.jsonl")) for l in p.read_text().splitlines()]
    p = torchship.load(artifact, threads=int(threads))  # loading counts, as it does for the embed job
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p(texts)
    rows, seconds = len(texts), time.perf_counter() - started
else:
    from torchship.embed import EmbedOptions, embed_dataset
    options = EmbedOptions(ray=mode == "ray", actors=(2, 2), rows_per_part=2048)
    if mode == "ray":
        import ray
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    summary = embed_dataset(artifact, src + "/*.jsonl", out, options)
    rows, seconds = summary["rows"], time.perf_counter() - started
print(json.dumps({"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def child(mode: str, artifact: Path, src: Path, out: Path, threads: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(artifact), str(src), str(out), str(threads)],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    return json.loads(proc.stdout.strip().splitlines()[-1])


def killed_and_resumed(artifact: Path, src: Path, out: Path, threads: int, total_rows: int) -> dict:
    cmd = [sys.executable, "-m", "torchship.cli", "embed", str(artifact), "--input", f"{src}/*.jsonl",
           "--output", str(out), "--rows-per-part", "2048"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    record = out / "_torchship_embed.json"
    while proc.poll() is None:
        done = json.loads(record.read_text())["parts"] if record.is_file() else {}
        if sum(p["rows"] for p in done.values()) >= total_rows / 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.1)
    proc.wait()
    first = time.perf_counter() - started
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    return {"killed_after_s": first, "total_s": time.perf_counter() - started}


def compare(a: Path, b: Path) -> dict:
    import numpy as np
    import pyarrow.dataset as ds

    x = ds.dataset(a, format="parquet").to_table().sort_by("row")
    y = ds.dataset(b, format="parquet").to_table().sort_by("row")
    same_ids = x.column("id").to_pylist() == y.column("id").to_pylist()
    rows_once = y.column("row").to_pylist() == list(range(y.num_rows))
    diff = float(
        np.abs(np.array(x.column("embedding").to_pylist()) - np.array(y.column("embedding").to_pylist())).max()
    )
    return {"rows": y.num_rows, "identical_ids": same_ids, "every_row_once": rows_once, "max_abs_diff": diff}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,30")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume-size", type=int, default=10)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "embed_scale.json")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        artifact = work / "minilm"
        subprocess.run([sys.executable, "-m", "torchship.cli", "export", "demo", str(artifact)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        results: dict[str, dict] = {}
        for times in sizes:
            src = build(work / f"corpus-{times}", times)
            row = {
                "local": child("local", artifact, src, work / f"out-local-{times}", args.threads),
                "direct": child("direct", artifact, src, work / "unused", args.threads),
                "ray": child("ray", artifact, src, work / f"out-ray-{times}", 1),
            }
            row["local_vs_direct"] = row["local"]["rows_per_s"] / row["direct"]["rows_per_s"]
            row["ray_vs_local"] = row["ray"]["rows_per_s"] / row["local"]["rows_per_s"]
            results[f"{times}x"] = row
            print(f"{times:>3}x  rows {row['local']['rows']:>6}  local {row['local']['rows_per_s']:7.1f} rows/s "
                  f"(RSS {row['local']['peak_rss_mb']:6.1f} MB)  direct {row['direct']['rows_per_s']:7.1f}  "
                  f"ray {row['ray']['rows_per_s']:7.1f} (driver RSS {row['ray']['peak_rss_mb']:6.1f} MB)  "
                  f"local/direct {row['local_vs_direct']:.3f}  ray/local {row['ray_vs_local']:.3f}",
                  flush=True)  # fmt: skip
        size = args.resume_size if args.resume_size in sizes else max(sizes)
        src = work / f"corpus-{size}"
        resumed = killed_and_resumed(artifact, src, work / "out-resumed", args.threads, size * 820)
        uninterrupted = results[f"{size}x"]["local"]["seconds"]
        resumed["size"] = f"{size}x"
        resumed["vs_uninterrupted"] = resumed["total_s"] / uninterrupted
        resumed["compared"] = compare(work / f"out-local-{size}", work / "out-resumed")
        print(f"kill at ~50 % and resume at {size}x: {resumed['total_s']:.1f} s against {uninterrupted:.1f} s "
              f"= {resumed['vs_uninterrupted']:.2f}x; {resumed['compared']}")  # fmt: skip
    first = results[f"{min(sizes)}x"]
    last = results[f"{max(sizes)}x"]
    record = {
        "machine": {**machine(), "threads": args.threads},
        "sizes": results,
        "resume": resumed,
        "targets": {
            "rss_growth_mb_at_largest": last["local"]["peak_rss_mb"] - first["local"]["peak_rss_mb"],
            "local_vs_direct_min": min(r["local_vs_direct"] for r in results.values()),
            "ray_vs_local_min": min(r["ray_vs_local"] for r in results.values()),
            "ray_driver_rss_growth_mb": last["ray"]["peak_rss_mb"] - first["ray"]["peak_rss_mb"],
            "resume_vs_uninterrupted": resumed["vs_uninterrupted"],
        },
    }
    print(json.dumps(record["targets"], indent=1))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
