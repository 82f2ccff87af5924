"""``torchship embed`` at corpus scale: sharded, globbed and gzipped inputs, a Parquet dataset written part by part,
resumed exactly once after a crash at any point, and refusing to mix jobs. (Ray's half is in test_ray.py.)"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import torchship
from tests.conftest import copy_artifact, corpus_texts
from torchship.cli import main
from torchship.embed import RECORD, EmbedOptions, embed_dataset

ROWS = 150
PER_PART = 25


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """150 corpus rows in three shards of three kinds: .jsonl (string ids), .jsonl.gz (no ids), .txt."""
    texts = corpus_texts()[:ROWS]
    root = tmp_path_factory.mktemp("shards")
    (root / "a.jsonl").write_text(
        "".join(json.dumps({"id": f"doc-{i}", "text": t}) + "\n" for i, t in enumerate(texts[:60]))
    )
    with gzip.open(root / "b.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps({"text": t}) for t in texts[60:110]) + "\n\n")  # a blank line is not a row
    (root / "c.txt").write_text("".join(t.replace("\n", " ") + "\n" for t in texts[110:]))
    (root / "notes.md").write_text("not a shard")  # not matched by the glob below
    return root


def _dataset(path: Path):
    import pyarrow.dataset as ds

    return ds.dataset(path, format="parquet").to_table().sort_by("row")


@pytest.fixture(scope="module")
def reference(demo_artifact: Path, shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "out"
    embed_dataset(demo_artifact, str(shards / "*.[jt]*"), str(out), EmbedOptions(rows_per_part=PER_PART, batch_size=64))
    return out


def test_a_dataset_holds_every_row_once_with_the_predictors_embeddings(
    demo_artifact: Path, shards: Path, reference: Path
) -> None:
    table = _dataset(reference)
    assert table.num_rows == ROWS
    assert table.column("row").to_pylist() == list(range(ROWS))
    assert table.column_names == ["id", "row", "shard", "shard_row", "embedding", "truncated", "error"]
    ids = table.column("id").to_pylist()
    assert ids[:2] == ["doc-0", "doc-1"]
    assert ids[60] == "60"  # no id field: the row
    assert ids[110] == "1"  # a .txt row's id is its line number
    assert [Path(s).name for s in table.column("shard").to_pylist()[59:61]] == ["a.jsonl", "b.jsonl.gz"]
    assert table.column("shard_row").to_pylist()[110] == 0
    texts = corpus_texts()[:110] + [t.replace("\n", " ") for t in corpus_texts()[110:ROWS]]
    with pytest.warns(UserWarning, match="truncated"):
        want = torchship.load(demo_artifact)(texts)
    np.testing.assert_allclose(np.array(table.column("embedding").to_pylist()), want, atol=1e-6)
    record = json.loads((reference / RECORD).read_text())
    assert record["complete"] is True
    assert len(record["parts"]) == 3 + 2 + 2  # 60, 50 and 40 rows in parts of 25
    for name, part in record["parts"].items():  # every part's row count and checksum, as written
        import hashlib

        assert hashlib.sha256((reference / name).read_bytes()).hexdigest() == part["sha256"]
    assert sum(p["rows"] for p in record["parts"].values()) == ROWS
    assert sum(p["truncated"] for p in record["parts"].values()) == sum(table.column("truncated").to_pylist())


def _same(a: Path, b: Path) -> None:
    x, y = _dataset(a), _dataset(b)
    assert x.column("row").to_pylist() == y.column("row").to_pylist() == list(range(ROWS))
    assert x.column("id").to_pylist() == y.column("id").to_pylist()
    np.testing.assert_allclose(
        np.array(x.column("embedding").to_pylist()), np.array(y.column("embedding").to_pylist()), atol=1e-6
    )


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("crash", ["between parts", "in the middle of writing a part", "before the record is updated"])
def test_resume_after_a_crash_gives_every_row_exactly_once(
    demo_artifact: Path, shards: Path, reference: Path, tmp_path: Path, crash: str
) -> None:
    """Each state a crash can leave, made from a finished run: later parts missing; a half-written hidden temporary
    file; a whole part on disk that the record does not list yet."""
    out = _copy(reference, tmp_path / "out")
    record = json.loads((out / RECORD).read_text())
    names = sorted(record["parts"])
    for name in names[3:]:
        del record["parts"][name]
        (out / name).unlink()
    if crash == "in the middle of writing a part":
        (out / f".{names[3]}.tmp-4242").write_bytes(b"PAR1 half a part")
    if crash == "before the record is updated":
        _copy(reference, tmp_path / "again")
        (out / names[3]).write_bytes((tmp_path / "again" / names[3]).read_bytes())
    record["complete"] = False
    (out / RECORD).write_text(json.dumps(record))
    summary = embed_dataset(demo_artifact, str(shards / "*.[jt]*"), str(out), EmbedOptions(rows_per_part=PER_PART))
    assert summary["resumed_parts"] == 3
    assert summary["rows"] == ROWS
    assert not [p for p in os.listdir(out) if p.startswith(".")]
    _same(out, reference)


def test_resume_after_kill_9_of_a_real_run(demo_artifact: Path, shards: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["embed", str(demo_artifact), "--input", str(shards / "*.[jt]*"), "--output", str(out),
            "--rows-per-part", "10", "--batch-size", "16"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "torchship.cli", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:  # kill it once a few parts have landed, mid-run
            done = json.loads((out / RECORD).read_text())["parts"] if (out / RECORD).is_file() else {}
            if len(done) >= 4 or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed; give it more rows"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert main(args) == 0
    record = json.loads((out / RECORD).read_text())
    assert len(record["parts"]) == 6 + 5 + 4
    _same(out, reference)


def test_a_rerun_refuses_to_mix_artifacts_options_or_inputs(
    demo_artifact: Path, shards: Path, reference: Path, tmp_path: Path, capsys
) -> None:
    out = _copy(reference, tmp_path / "out")
    other = copy_artifact(demo_artifact, tmp_path / "other")
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["source"]["model"] = "another export"
    (other / "manifest.json").write_text(json.dumps(manifest))
    base = ["embed", "--input", str(shards / "*.[jt]*"), "--output", str(out)]
    assert main([base[0], str(other), *base[1:], "--rows-per-part", str(PER_PART)]) == 1
    assert "holds a job with another artifact" in capsys.readouterr().err
    assert main([base[0], str(demo_artifact), *base[1:], "--rows-per-part", "30"]) == 1
    err = capsys.readouterr().err
    assert "another options" in err
    assert "--overwrite" in err
    assert main([base[0], str(demo_artifact), "--input", str(shards / "a.jsonl"), "--output", str(out),
                 "--rows-per-part", str(PER_PART)]) == 1  # fmt: skip
    assert "another inputs" in capsys.readouterr().err
    _same(out, reference)  # nothing was touched
    assert main([base[0], str(demo_artifact), *base[1:], "--rows-per-part", "30", "--overwrite"]) == 0
    assert len(json.loads((out / RECORD).read_text())["parts"]) == 2 + 2 + 2
    _same(out, reference)


def test_bad_rows_name_file_and_line_or_are_kept_as_errors(demo_artifact: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.jsonl").write_text('{"id": 1, "text": "fine"}\nnot json\n{"id": 3, "text": ""}\n')
    out = tmp_path / "out"
    args = ["embed", str(demo_artifact), "--input", str(tmp_path / "in"), "--output", str(out)]
    assert main(args) == 1
    assert "x.jsonl:2: not valid JSON" in capsys.readouterr().err
    assert not list(out.glob("part-*"))
    assert main([*args, "--on-error", "skip", "--overwrite"]) == 0
    table = _dataset(out)
    assert table.column("error").to_pylist()[0] is None
    assert "not valid JSON" in table.column("error").to_pylist()[1]
    assert "is empty" in table.column("error").to_pylist()[2]
    assert table.column("embedding").to_pylist()[1] is None
    assert "3 rows in 1 parts, 1 embedded, 2 skipped" in capsys.readouterr().out
