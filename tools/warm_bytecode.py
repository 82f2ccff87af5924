"""Write the bytecode of what every test worker imports, once, before `make test` starts its workers.

On a fresh clone nothing is compiled yet (installs skip it: compiling every module of both environments took 86 s on
2 cores, most of it never imported). pytest-xdist then starts its workers together, and each compiles the same
torch, transformers and ONNX modules at once, since none finds the others' .pyc yet. This process imports them
first, while mypy runs on the other core (the Makefile runs both together), so the workers find them compiled.
Run it with PYTHONDONTWRITEBYTECODE unset, as `make test` does.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

# Imported lazily by fixtures that run on several workers (exports, the ONNX exporter, Inductor, the references).
LAZY = (
    "torch._inductor.compile_fx",
    "torch.export",
    "torch.onnx._internal.exporter._core",
    "onnxscript",
    "onnxruntime.transformers.optimizer",
    "transformers.models.bert.modeling_bert",
    "transformers.models.distilbert.modeling_distilbert",
    "transformers.models.roberta.modeling_roberta",
    "transformers.models.xlm_roberta.modeling_xlm_roberta",
    "transformers.models.albert.modeling_albert",
    "transformers.models.electra.modeling_electra",
    "transformers.models.mpnet.modeling_mpnet",
    "transformers.models.deberta_v2.modeling_deberta_v2",
    "transformers.models.modernbert.modeling_modernbert",
    "transformers.pipelines",
    "sentence_transformers",
    "torchship.exporter",
    "torchship.serve.app",
    "uvicorn",
)


def main() -> int:
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        print("warm_bytecode: PYTHONDONTWRITEBYTECODE is set, so nothing would be written", file=sys.stderr)
        return 1
    import pytest

    root = Path(__file__).resolve().parents[1]
    os.chdir(root)
    sys.path.insert(0, str(root))
    collected = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "-o", "addopts="], plugins=[])
    for name in LAZY:
        importlib.import_module(name)
    return 0 if collected == 0 else int(collected)


if __name__ == "__main__":
    raise SystemExit(main())
