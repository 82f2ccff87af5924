#!/usr/bin/env bash
# CUDA check, for a machine with an NVIDIA GPU (under 5 minutes on an H100/H200):
#   for float32, float16 and bfloat16, export the bundled all-MiniLM-L6-v2 to every format that runs on CUDA
#   (torchscript, aoti) with --device cuda (export-time parity against float32 is part of the export), then a
#   short `torchship bench` per dtype. Prints the figures; writes reports under ${OUT:-device-check}/.
# Usage: bash scripts/device-check.sh        (PYTHON=... to pick the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-device-check}
mkdir -p "$OUT"
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "device-check: no CUDA device visible to $PY (torch.cuda.is_available() is False)" >&2
  exit 1
fi
"$PY" -c 'import torch; print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__)'
export TORCHSHIP_CACHE="$OUT/cache"
for dtype in float32 float16 bfloat16; do
  echo "== $dtype =="
  "$PY" -m torchship.cli export demo "$OUT/minilm-$dtype" --device cuda --dtype "$dtype" \
    --format torchscript,aoti --seq-lengths 16,128 --overwrite
  "$PY" -m torchship.cli bench "$OUT/minilm-$dtype" --shapes 1x16,1x128,8x128,64x128 --compare "" \
    --seq-sweep 16,128 --batch-sweep 1,64 --min-time 0.3 --output "$OUT/bench-$dtype"
done
"$PY" - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
for dtype in ("float32", "float16", "bfloat16"):
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
