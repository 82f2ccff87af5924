"""The one reader of text files: JSON lines (objects with a text field) or plain lines, streamed.

``torchship predict --file``, ``tokenize --file``, ``plan --lengths-from``, ``bench --texts`` and ``embed`` all
read through here, so a file means the same thing to every command, and a bad line is named ``FILE:LINE``.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from .errors import OptionsError


def _open(path: Path) -> TextIO:
    if not path.is_file():
        raise OptionsError(f"{path} does not exist; give a file of texts, one per line or JSON lines")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def records(path: Path, *, text_field: str = "text", plain: bool = False) -> Iterator[tuple[str, Any]]:
    """``(FILE:LINE, record)`` per non-blank line, one line in memory at a time: a JSON object for a line that
    starts with ``{`` (a JSONDecodeError for one that does not parse), else ``{text_field: line}``; with
    ``plain`` every line is text."""
    with _open(path) as f:
        for i, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            where = f"{path}:{i}"
            if not plain and line.lstrip().startswith("{"):
                try:
                    yield where, json.loads(line)
                except json.JSONDecodeError as e:
                    yield where, e
            else:
                yield where, {text_field: line}


def read_texts(path: Path, *, text_field: str = "text") -> list[str]:
    """Every text of ``path``; a line that is not text or an object with ``text_field`` is an error naming it."""
    texts = []
    for where, record in records(path, text_field=text_field):
        value = record.get(text_field) if isinstance(record, dict) else None
        if not isinstance(value, str):
            problem = record if isinstance(record, Exception) else f"no string field {text_field!r}"
            raise OptionsError(f"{where}: expected a JSON object with a {text_field!r} field ({problem})")
        texts.append(value)
    return texts
