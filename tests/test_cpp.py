"""The libtorch consumer: build cpp/ against the torch wheel's libtorch, run both formats, match Python."""

from __future__ import annotations

import json
import os
import re
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
ENV = "TORCHSHIP_ONEDNN_LINEAR"  # machine.ONEDNN_ENV: forces oneDNN's linear layers (1) or not (0)


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


@pytest.mark.parametrize(
    ("fmt", "onednn"), [("torchscript", None), ("torchscript", "1"), ("torchscript", "0"), ("aoti", None)]
)
def test_cpp_matches_python(binary: Path, both_formats: Path, fmt: str, onednn: str | None, capsys) -> None:
    """Both formats match Python; TorchScript's float32 linear layers run on oneDNN where measured faster, or as
    forced (TORCHSHIP_ONEDNN_LINEAR), as torchship.load runs them, with every weight packed once."""
    from torchship.formats import torchscript

    lines = _token_lines(both_formats, capsys)
    assert len(lines.splitlines()) == len(TEXTS)
    env = {k: v for k, v in os.environ.items() if k != ENV}
    run = subprocess.run(
        [str(binary), str(both_formats), "--format", fmt], input=lines, capture_output=True, text=True, check=False,
        env=env if onednn is None else {**env, ENV: onednn},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    if fmt == "torchscript":
        module = torch.jit.load(str(both_formats / "model.pt"))
        graphs = [getattr(module, f"seq_{seq}").graph for seq in (8, 32)]
        packed = torchscript.prepack_linears(graphs)  # what the Python runtime packs for the same file
        assert packed > 0
        said = run.stderr.strip()
        if onednn == "1":
            assert said == f"torchship-run: linear layers on oneDNN ({packed} weights packed): {ENV}=1"
        elif onednn == "0":
            assert said == f"torchship-run: linear layers as traced: {ENV}=0"
        else:  # measured at the largest layer: either way, said with the measurement
            assert re.fullmatch(
                rf"torchship-run: linear layers (on oneDNN \({packed} weights packed\)|as traced): oneDNN's prepacked "
                r"linear ran \d+\.\d\dx aten::linear at \d+->\d+ \((measured now, recorded|measured quiet on this "
                r"machine on \d{4}-\d\d-\d\d|measured now while other processes used \d+% of the CPUs; not "
                r"recorded)\): (pays|does not pay \(under 1\.05x\))",
                said,
            ), said
    else:
        assert run.stderr == ""
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


def test_cpp_and_python_share_the_paces_recorded_per_machine(
    binary: Path, both_formats: Path, tmp_path: Path, capsys
) -> None:  # fmt: skip
    """oneDNN's pace, measured quiet, is recorded under one key by either runtime and reused by both
    (machine.recorded_pace): the C++ loader reads what Python recorded and records what Python then reads."""
    from torchship import machine
    from torchship.formats import torchscript

    lines = _token_lines(both_formats, capsys)
    module = torch.jit.load(str(both_formats / "model.pt"))
    graphs = [getattr(module, f"seq_{seq}").graph for seq in (8, 32)]
    out_features, in_features = torchscript._largest_linear(graphs)  # type: ignore[misc]
    key = f"onednn-linear {in_features}->{out_features} threads=1"
    env = {k: v for k, v in os.environ.items() if k != ENV} | {"TORCHSHIP_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1"}

    def run() -> str:
        done = subprocess.run([str(binary), str(both_formats)], input=lines, capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        assert len(done.stdout.splitlines()) == len(TEXTS)
        return done.stderr.strip()

    shape = f"{in_features}->{out_features}"
    for pace, verdict in ((3.0, "on oneDNN"), (0.5, "as traced")):  # made-up paces, as if Python had recorded them
        recorded = {machine.pace_key(key): {"pace": pace, "when": "2026-12-01", "others_load": 0.0}}
        (tmp_path / machine.PACES).write_text(json.dumps(recorded))
        said = run()
        assert said.startswith(f"torchship-run: linear layers {verdict}"), said
        assert f"ran {pace:.2f}x aten::linear at {shape} (measured quiet on this machine on 2026-12-01)" in said

    (tmp_path / machine.PACES).write_text("{damaged")  # only costs the measurement
    said = run()
    assert re.search(rf"ran (\d+\.\d\d)x aten::linear at {shape} \(measured now", said), said
    if "(measured now, recorded)" in said:  # quiet: what C++ recorded, Python reuses without measuring
        recorded = json.loads((tmp_path / machine.PACES).read_text())
        assert set(recorded[machine.pace_key(key)]) == {"pace", "when", "others_load"}
        pace, when = machine.recorded_pace(key, lambda: pytest.fail("Python measured again"), tmp_path)
        assert f"ran {pace:.2f}x" in said
        assert when.startswith("measured quiet on this machine on ")
    else:  # the load here decides which branch runs; each asserts its own outcome
        assert "% of the CPUs; not recorded)" in said, said
        assert (tmp_path / machine.PACES).read_text() == "{damaged"  # nothing written
    assert not list(tmp_path.glob("*.tmp"))


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


def test_cpp_writes_only_the_outputs_asked_for(binary: Path, both_formats: Path, capsys) -> None:
    lines = _token_lines(both_formats, capsys)
    everything = subprocess.run([str(binary), str(both_formats)], input=lines, capture_output=True, text=True)
    pooled = subprocess.run(
        [str(binary), str(both_formats), "--output", "pooler_output"], input=lines, capture_output=True, text=True
    )
    assert pooled.returncode == 0, pooled.stderr
    for whole, only in zip(everything.stdout.splitlines(), pooled.stdout.splitlines(), strict=True):
        assert json.loads(only) == {"pooler_output": json.loads(whole)["pooler_output"]}
    bad = subprocess.run(
        [str(binary), str(both_formats), "--output", "pooled"], input=lines, capture_output=True, text=True
    )
    assert bad.returncode == 1
    assert bad.stdout == ""
    assert "--output pooled: the artifact has no such output; its outputs are last_hidden_state, pooler_output" in (
        bad.stderr
    )


def test_cpp_rejects_a_bad_onednn_setting(binary: Path, both_formats: Path) -> None:
    env = {**os.environ, "TORCHSHIP_ONEDNN_LINEAR": "yes"}
    r = subprocess.run([str(binary), str(both_formats)], input="", capture_output=True, text=True, env=env)
    assert r.returncode == 1
    assert "TORCHSHIP_ONEDNN_LINEAR='yes': set it to 1 (always oneDNN), 0 (never), or leave it unset" in r.stderr


def test_cpp_rejects_unknown_arguments(binary: Path, both_formats: Path) -> None:
    r = subprocess.run([str(binary), str(both_formats), "--fromat", "aoti"], capture_output=True, text=True)
    assert r.returncode == 1
    assert "unexpected argument '--fromat'" in r.stderr
