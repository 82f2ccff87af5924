"""torchship bench on the tiny model: the JSON validates against its schema, the PNGs are real images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import torchship
from torchship.cli import main

SCHEMA = Path(torchship.__file__).parent / "bench_schema.json"


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("bench")
    options = torchship.ExportOptions(formats=("torchscript", "onnx"), seq_lengths=(8, 32))
    artifact = torchship.export(tiny_bert_dir, root / "art", options)
    texts = root / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": "word " * n}) + "\n" for n in (1, 3, 5, 9, 14, 20, 27)))
    args = [
        "bench", str(artifact), "--texts", str(texts), "--shapes", "1x8,2x32", "--compare", "eager,onnxruntime",
        "--threads", "1", "--output", str(root / "out"), "--seq-sweep", "8,16,32", "--batch-sweep", "1,2,4",
        "--min-time", "0.02",
    ]  # fmt: skip
    assert main(args) == 0
    return root / "out"


def test_report_json_validates_against_the_schema(report_dir: Path) -> None:
    import jsonschema

    report = json.loads((report_dir / "report.json").read_text())
    jsonschema.validate(report, json.loads(SCHEMA.read_text()))
    contenders = {r["contender"] for r in report["measurements"]}
    assert contenders == {"torchship torchscript", "torchship onnx", "transformers eager", "onnxruntime (plain export)"}
    shapes = {(r["batch"], r["seq"]) for r in report["measurements"] if r["series"] == "shapes"}
    assert shapes == {(1, 8), (2, 32)}
    assert report["machine"]["threads"] == 1
    corpus = report["corpus"]
    assert corpus["texts"] == 7
    for row in corpus["contenders"]:
        assert row["real_tokens"] == sum(corpus["lengths"])
        assert row["padded_tokens"] >= row["real_tokens"]
    assert report["plots"] == ["latency_vs_seq.png", "throughput_vs_batch.png", "lengths.png"]


def test_schema_rejects_a_broken_report(report_dir: Path) -> None:
    import jsonschema

    report = json.loads((report_dir / "report.json").read_text())
    del report["measurements"][0]["median_ms"]
    with pytest.raises(jsonschema.ValidationError, match="median_ms"):
        jsonschema.validate(report, json.loads(SCHEMA.read_text()))


def test_plots_are_real_images(report_dir: Path) -> None:
    import matplotlib.image

    for name in ("latency_vs_seq.png", "throughput_vs_batch.png", "lengths.png"):
        data = (report_dir / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(report_dir / name)
        assert image.shape[0] > 200
        assert image.shape[1] > 300
        assert image.std() > 0.01, f"{name} is blank"


def test_report_md_has_the_table(report_dir: Path) -> None:
    md = (report_dir / "report.md").read_text()
    assert "| contender | shape | median ms |" in md
    assert "| torchship onnx | 2x32 |" in md
    assert "![lengths.png](lengths.png)" in md


def test_bad_bench_options(tiny_bert_artifact: Path, tmp_path: Path, capsys) -> None:
    assert main(["bench", str(tiny_bert_artifact), "--shapes", "8by128", "--output", str(tmp_path)]) == 1
    assert "is not BATCHxSEQ" in capsys.readouterr().err
    assert main(["bench", str(tiny_bert_artifact), "--compare", "tensorrt", "--output", str(tmp_path)]) == 1
    assert "--compare ['tensorrt'] is unknown" in capsys.readouterr().err
    out = tmp_path / "too-long"
    assert main(["bench", str(tiny_bert_artifact), "--shapes", "1x100000", "--output", str(out)]) == 1
    assert "every shape in --shapes is longer than the artifact's max_length 32" in capsys.readouterr().err
    assert not out.exists()  # refused before measuring or writing anything
