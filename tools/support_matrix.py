"""Regenerate the README's support matrix (architecture x task x format) from the registry and the tests.

    .venv/bin/python tools/support_matrix.py      # runs tests/test_architectures.py, rewrites README.md

A cell is "tested" when, for that architecture and task, the raw-parity test at untraced shapes, the FLOP
model test and the task's post-processing test all passed; otherwise it names the failing tests.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_architectures import TASK_TESTS  # noqa: E402
from torchship import registry  # noqa: E402
from torchship.tasks import names as task_names  # noqa: E402

TASKS = task_names()

START, END = "<!-- support-matrix:start -->", "<!-- support-matrix:end -->"


def results() -> dict[str, bool]:
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "report.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
               "tests/test_architectures.py"]  # fmt: skip
        subprocess.run(cmd, cwd=ROOT, check=False)
        tree = ET.parse(xml)
    out = {}
    for case in tree.iter("testcase"):
        failed = any(child.tag in ("failure", "error", "skipped") for child in case)
        out[case.get("name", "")] = not failed
    return out


def cell(outcomes: dict[str, bool], family: str, task: str) -> str:
    names = [
        f"test_raw_parity_at_untraced_shapes[{family}-{task}]",
        f"test_flop_model_matches_torch_flop_counter[{family}-{task}]",
    ]
    prefix = f"{TASK_TESTS[task]}[{family}"
    names += [n for n in outcomes if n.startswith(prefix) and n[len(prefix)] in "]-"]  # "-<strategy>]" for NER
    missing = [n for n in names if n not in outcomes]
    failed = [n for n in names if not outcomes.get(n, False)]
    if missing or failed or len(names) < 3:
        return "failing: " + ", ".join(failed or missing or ["no task test"])
    return "tested"


def render(outcomes: dict[str, bool]) -> str:
    lines = [START, "", f"| architecture | {' | '.join(TASKS)} |", "| --- |" + " --- |" * len(TASKS)]
    for family in registry.supported():
        cells = [cell(outcomes, family, task) for task in TASKS]
        lines.append(f"| {family} | {' | '.join(cells)} |")
    lines += [
        "",
        "Formats: every cell in torchscript, onnx and openvino, and in aoti on bert (`AOTI_FAMILY` in the test),",
        "except sparse-embedding: a masked LM (the fill-mask cell, in every format) plus SPLADE pooling, in",
        "torchscript, and onnx too on bert (`formats_of` in the test).",
        "Regenerate with `.venv/bin/python tools/support_matrix.py`.",
        "",
        END,
    ]
    return "\n".join(lines)


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = text.index(START), text.index(END) + len(END)
    readme.write_text(text[:start] + render(results()) + text[end:])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
