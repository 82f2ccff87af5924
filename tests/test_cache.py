"""The export cache: bounded by size, least recently used evicted, held entries and the new one kept; the CLI."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

import torchship
from torchship import cache
from torchship.cli import main


def _entry(root: Path, name: str, size: int, age_s: float) -> Path:
    path = root / "onnx" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    when = path.stat().st_mtime - age_s
    os.utime(path, (when, when))
    return path


def test_evict_takes_the_least_recently_used_but_never_the_new_or_a_held_entry(tmp_path: Path) -> None:
    oldest, held, middle, new = (
        _entry(tmp_path, f"{name}.onnx", 1000, age)
        for name, age in (("oldest", 400), ("held", 300), ("middle", 200), ("new", 0))
    )
    (tmp_path / "onnx" / "partial.onnx.123.tmp").write_bytes(b"x" * 5000)  # a write under way: not an entry
    assert [e.path for e in cache.entries(tmp_path)] == [oldest, held, middle, new]
    with open(held.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # an export of that key is running
        removed = cache.evict(tmp_path, 1500, keep=new)
    assert [e.path for e in removed] == [oldest, middle]
    assert [p.exists() for p in (oldest, middle)] == [False, False]
    assert [p.exists() for p in (held, new)] == [True, True]  # over the bound: one is in use, one just written
    assert held.with_suffix(".lock").exists()  # lock files stay

    assert cache.evict(tmp_path, 10**6) == []  # under the bound: nothing goes
    assert [e.path for e in cache.clear(tmp_path)] == [held, new]
    assert cache.entries(tmp_path) == []


def test_max_bytes_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cache.ENV_MAX, raising=False)
    assert cache.max_bytes() == 10 * 2**30
    monkeypatch.setenv(cache.ENV_MAX, "0.5")
    assert cache.max_bytes() == 2**29
    for bad in ("abc", "-1", "nan"):
        monkeypatch.setenv(cache.ENV_MAX, bad)
        with pytest.raises(torchship.OptionsError, match="TORCHSHIP_CACHE_MAX_GB"):
            cache.max_bytes()


def test_exports_keep_the_cache_within_its_bound(
    tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real exports: a reuse counts as a use, and a new entry over the bound evicts the least recently used."""
    root = tmp_path / "cache"

    def export(name: str, longest: int) -> None:
        options = torchship.ExportOptions(formats=("onnx",), seq_lengths=(8, longest), cache_dir=root)
        torchship.export(tiny_bert_dir, tmp_path / name, options)

    monkeypatch.delenv(cache.ENV_MAX, raising=False)
    export("a", 16)
    export("b", 32)
    first, second = (e.path for e in cache.entries(root))
    export("a-again", 16)  # reused: now the most recently used
    assert [e.path for e in cache.entries(root)] == [second, first]
    size = max(e.size for e in cache.entries(root))
    monkeypatch.setenv(cache.ENV_MAX, str(2.5 * size / 2**30))  # room for two entries
    export("c", 64)
    left = [e.path for e in cache.entries(root)]
    assert len(left) == 2
    assert (first in left, second in left) == (True, False)  # the least recently used went, the reused stayed

    monkeypatch.setenv(cache.ENV_MAX, "bad")
    with pytest.raises(torchship.OptionsError, match="TORCHSHIP_CACHE_MAX_GB"):
        export("d", 128)
    assert not (tmp_path / "d").exists()  # nothing written


def test_cache_command_shows_and_clears(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _entry(tmp_path, "old.onnx", 2**20, 10 * 86400)
    _entry(tmp_path, "recent.onnx", 2**20, 0)
    assert main(["cache", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 entries, 2.0 MiB" in out
    assert out.index("recent.onnx") < out.index("old.onnx")  # most recently used first
    assert main(["cache", "--dir", str(tmp_path), "--clear", "--older-than", "5"]) == 0
    assert "removed 1 entries" in capsys.readouterr().out
    assert [e.path.name for e in cache.entries(tmp_path)] == ["recent.onnx"]
    assert main(["cache", "--dir", str(tmp_path), "--clear", "--older-than", "-1"]) == 1
    assert "--older-than must be a number of days >= 0" in capsys.readouterr().err
    assert main(["cache", "--dir", str(tmp_path), "--older-than", "1"]) == 1
    assert "goes with --clear" in capsys.readouterr().err
    assert main(["cache", "--dir", str(tmp_path), "--clear"]) == 0
    assert cache.entries(tmp_path) == []
