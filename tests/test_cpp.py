"""The libtorch consumer: build cpp/ against the torch wheel's libtorch, run both formats, match Python."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import torchship
from torchship.cli import main

ROOT = Path(__file__).resolve().parents[1]
BINARY = ROOT / "build" / "cpp" / "torchship-run"


@pytest.fixture(scope="module")
def binary() -> Path:
    compiler = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        pytest.skip("no C++ compiler on this machine (c++, g++ or clang++); torchship-run cannot be built")
    result = subprocess.run(["make", "cpp"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert BINARY.is_file()
    return BINARY


@pytest.fixture(scope="module")
def both_formats(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path, export_cache: Path) -> Path:
    options = torchship.ExportOptions(formats=("torchscript", "aoti"), seq_lengths=(8, 32), cache_dir=export_cache)
    return torchship.export(tiny_bert_dir, tmp_path_factory.mktemp("cpp") / "art", options)


TEXTS = ["Jim Henson was a puppeteer", "hi", "the muppets were filmed in london studios for many years"]


def _token_lines(artifact: Path, capsys) -> str:
    assert main(["tokenize", str(artifact), *TEXTS]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["torchscript", "aoti"])
def test_cpp_matches_python(binary: Path, both_formats: Path, fmt: str, capsys) -> None:
    lines = _token_lines(both_formats, capsys)
    assert len(lines.splitlines()) == len(TEXTS)
    run = subprocess.run(
        [str(binary), str(both_formats), "--format", fmt], input=lines, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
    outputs = [json.loads(line) for line in run.stdout.splitlines()]
    predictor = torchship.load(both_formats, format=fmt)
    for line, out in zip(lines.splitlines(), outputs, strict=True):
        ids = json.loads(line)
        want = predictor.run(
            torch.tensor([ids["input_ids"]]),
            torch.tensor([ids["attention_mask"]]),
            torch.tensor([ids["token_type_ids"]]),
        )
        assert set(out) == {"last_hidden_state", "pooler_output"}
        got_hidden = np.asarray(out["last_hidden_state"], dtype=np.float32)
        assert got_hidden.shape == (len(ids["input_ids"]), 32)  # cut back to the input's length
        np.testing.assert_allclose(got_hidden, want["last_hidden_state"][0].numpy(), atol=1e-5)
        np.testing.assert_allclose(np.asarray(out["pooler_output"]), want["pooler_output"][0].numpy(), atol=1e-5)


def test_cpp_bad_input_is_a_clear_error(binary: Path, both_formats: Path) -> None:
    def run(stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(binary), *args], input=stdin, capture_output=True, text=True, check=False)

    too_long = json.dumps({"input_ids": [101] * 40})
    r = run(too_long + "\n", str(both_formats))
    assert r.returncode == 2
    assert "stdin line 1: sequence length 40 exceeds the longest traced length 32" in r.stderr
    r = run('{"input_ids": [101, 102], "attention_mask": [1]}\n', str(both_formats))
    assert r.returncode == 2
    assert "'attention_mask' has 1 ids, input_ids has 2" in r.stderr
    r = run("not json\n", str(both_formats))
    assert r.returncode == 2
    r = run("", str(both_formats / "nope"))
    assert r.returncode == 1
    assert "has no manifest.json" in r.stderr
    r = run("", str(both_formats), "--format", "onnx")
    assert r.returncode == 1
    assert "has no 'onnx' format" in r.stderr


def test_cpp_checks_every_file_against_its_sha256(binary: Path, both_formats: Path, tmp_path: Path, capsys) -> None:
    lines = _token_lines(both_formats, capsys)
    art = tmp_path / "art"
    shutil.copytree(both_formats, art)
    ok = subprocess.run([str(binary), str(art)], input=lines, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr  # the C++ SHA-256 agrees with hashlib on every file

    weights = art / "model.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of the TorchScript archive
    weights.write_bytes(bytes(data))
    bad = subprocess.run([str(binary), str(art)], input=lines, capture_output=True, text=True, check=False)
    assert bad.returncode == 1
    assert "artifact file model.pt" in bad.stderr
    assert "the file was modified or corrupted; export the artifact again" in bad.stderr
    assert bad.stdout == ""

    # --no-verify skips the check: the corrupted archive still loads, which is why the check is on by default
    unchecked = subprocess.run([str(binary), str(art), "--no-verify"], input="", capture_output=True, text=True)
    assert unchecked.returncode == 0, unchecked.stderr

    shutil.copy2(both_formats / "model.pt", weights)
    (art / "model.pt2").unlink()
    missing = subprocess.run([str(binary), str(art), "--format", "aoti"], input="", capture_output=True, text=True)
    assert missing.returncode == 1
    assert "artifact file model.pt2 is missing" in missing.stderr


def test_cpp_rejects_unknown_arguments(binary: Path, both_formats: Path) -> None:
    r = subprocess.run([str(binary), str(both_formats), "--fromat", "aoti"], capture_output=True, text=True)
    assert r.returncode == 1
    assert "unexpected argument '--fromat'" in r.stderr
