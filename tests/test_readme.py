"""README code blocks run as tests, so the docs cannot drift (LitServe's test_readme).

The ``python`` blocks run in order, in one namespace, in a scratch working directory, as a reader would
paste them into one session.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(tmp_path: Path, monkeypatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    blocks = [b for b in blocks if not b.startswith("# needs a running server")]  # exercised in test_serve.py
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__readme__"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i}", "exec"), namespace)


def test_readme_lists_exactly_two_setup_commands() -> None:
    setup = README.read_text().split("\n## ", 2)[1]
    assert re.findall(r"^make \w+", setup, flags=re.MULTILINE) == ["make demo", "make test"]


def test_support_matrix_covers_every_registered_architecture_and_task() -> None:
    from torchship import registry
    from torchship.tasks import names as task_names

    block = README.read_text().split("<!-- support-matrix:start -->")[1].split("<!-- support-matrix:end -->")[0]
    rows = [line.split("|")[1:-1] for line in block.strip().splitlines() if line.startswith("| ")]
    header, body = rows[0], rows[2:]  # rows[1] is the | --- | separator
    assert [c.strip() for c in header[1:]] == list(task_names())
    assert sorted(r[0].strip() for r in body) == sorted(registry.supported()), "run tools/support_matrix.py"
