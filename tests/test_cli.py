"""The CLI through main([...]): exit codes, one-line errors, JSON output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from torchship.cli import main


def test_export_info_predict_validate(tiny_bert_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "art"
    assert main(["export", str(tiny_bert_dir), str(out), "--seq-lengths", "8,16", "--batch-size", "3"]) == 0
    printed = capsys.readouterr().out
    assert "seq     8  model.pt:seq_8  parity ok" in printed

    assert main(["info", str(out)]) == 0
    assert "input_ids, attention_mask, token_type_ids" in capsys.readouterr().out
    assert main(["info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["formats"]["torchscript"][0]["traced_batch"] == 3

    assert main(["predict", str(out), "hello world", "second text", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dim"] == 32
    assert len(result["embeddings"]) == 2

    texts = tmp_path / "texts.jsonl"
    texts.write_text('{"text": "from a file"}\n\nplain line\n')
    assert main(["predict", str(out), "--file", str(texts)]) == 0
    assert "'from a file'" in capsys.readouterr().out

    assert main(["validate", str(out), "--model", str(tiny_bert_dir)]) == 0
    assert "parity ok" in capsys.readouterr().out


def test_errors_are_one_line_with_nonzero_exit(tmp_path: Path, capsys) -> None:
    assert main(["predict", str(tmp_path), "hello"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("torchship predict: error:")
    assert "no manifest.json" in err
    assert "Traceback" not in err
    assert err.count("\n") == 1


def test_empty_predict_input_is_an_error(tiny_bert_artifact: Path, capsys) -> None:
    assert main(["predict", str(tiny_bert_artifact)]) == 1
    assert "the input list is empty" in capsys.readouterr().err
    assert main(["predict", str(tiny_bert_artifact), "--file", "/nonexistent/texts.txt"]) == 1
    assert "--file /nonexistent/texts.txt does not exist" in capsys.readouterr().err


def test_truncation_error_flag(demo_artifact: Path, capsys) -> None:
    assert main(["predict", str(demo_artifact), "word " * 300, "--truncation", "error"]) == 1
    assert "exceed the longest traced length 256" in capsys.readouterr().err


def test_bad_seq_lengths(tiny_bert_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["export", str(tiny_bert_dir), str(tmp_path / "x"), "--seq-lengths", "16,abc"]) == 1
    assert "--seq-lengths: 'abc' is not an integer" in capsys.readouterr().err


def test_int8_scheme_a_format_lacks_is_one_line_and_writes_nothing(tiny_bert_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "x"
    args = ["export", str(tiny_bert_dir), str(out), "--format", "onnx", "--dtype", "int8", "--int8-scheme", "static"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "int8 scheme 'static' is not available in format 'onnx', whose schemes are: dynamic" in err
    assert err.count("\n") == 1
    assert not out.exists()


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    from torchship import NotAnArtifactError

    with pytest.raises(NotAnArtifactError):
        main(["--debug", "info", str(tmp_path)])


def test_validate_fails_on_a_different_model(tiny_bert_artifact: Path, tmp_path: Path, demo_dir: Path, capsys) -> None:
    from tests.conftest import save_tiny

    other = save_tiny(tmp_path / "other", "BertModel", demo_dir, initializer_range=0.5)
    assert main(["validate", str(tiny_bert_artifact), "--model", str(other)]) == 1
    captured = capsys.readouterr()
    assert "FAIL" in captured.out
    assert "exported outputs differ from the eager model" in captured.err


def test_predict_many_texts_shows_progress_and_keeps_order(tiny_bert_artifact: Path, tmp_path: Path, capsys) -> None:
    import numpy as np

    import torchship

    texts = [f"text number {i} " + "word " * (i % 17) for i in range(300)]
    source = tmp_path / "many.txt"
    source.write_text("\n".join(texts) + "\n")
    assert main(["predict", str(tiny_bert_artifact), "--file", str(source), "--json"]) == 0
    captured = capsys.readouterr()
    got = np.asarray(json.loads(captured.out)["embeddings"], dtype=np.float32)
    np.testing.assert_allclose(got, torchship.load(tiny_bert_artifact)(texts), atol=1e-6)
    assert "predict" in captured.err  # the progress bar, on stderr
