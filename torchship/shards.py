"""Corpus shards: find them (a file, a directory or a glob, on any filesystem pyarrow understands), index them
into fixed-size chunks, and read a chunk's rows back one at a time.

A shard is ``.jsonl`` (one JSON object per line), ``.jsonl.gz``, ``.txt`` (one text per line; its id is the
line number) or ``.parquet``. Blank lines are not rows. A chunk is ``rows_per_part`` consecutive rows of one
shard; ``index`` finds where each chunk starts (a byte offset in a plain text file, so a reader seeks there;
a row-group position in Parquet), so any process can read any chunk without the others, and memory stays
bounded by what one batch holds, whatever the corpus size.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import OptionsError

KINDS = (".jsonl.gz", ".jsonl", ".txt", ".parquet")
INSTALL_ARROW = "pip install 'torchship[embed]'"


def _fs(uri: str) -> tuple[Any, str]:
    try:
        from pyarrow import fs
    except ImportError as e:
        raise OptionsError(f"torchship embed reads and writes through pyarrow: {INSTALL_ARROW}") from e
    try:
        filesystem, path = fs.FileSystem.from_uri(uri)
        return filesystem, str(path)
    except (ValueError, OSError) as e:
        if "://" in uri:
            raise OptionsError(f"{uri}: pyarrow cannot open this filesystem ({e})") from e
        import os

        return fs.LocalFileSystem(), os.path.abspath(uri)


def kind_of(path: str) -> str | None:
    lower = path.lower()
    return next((k for k in KINDS if lower.endswith(k)), None)


@dataclass
class Shard:
    uri: str  # as the user named it (a local path, or scheme://...)
    path: str  # within its filesystem
    kind: str
    size: int
    mtime_ns: int | None
    rows: int | None = None  # known once indexed
    starts: list[Any] = field(default_factory=list)  # per chunk: where it starts (byte offset, or row)
    lines: list[int] = field(default_factory=list)  # per chunk: its first row's line number (text kinds)

    def key(self) -> dict[str, Any]:
        """What identifies this shard's content for resuming: path, size and modification time."""
        return {"uri": self.uri, "size": self.size, "mtime_ns": self.mtime_ns}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def find(spec: str) -> list[Shard]:
    """The shards ``spec`` names: a file, a directory (its files of a known kind), or a glob; sorted by path."""
    from pyarrow import fs

    filesystem, path = _fs(spec)
    scheme = spec.split("://", 1)[0] + "://" if "://" in spec else ""
    if any(c in path for c in "*?["):
        base = path[: min(path.find(c) for c in "*?[" if c in path)].rsplit("/", 1)[0] or "/"
        infos = filesystem.get_file_info(fs.FileSelector(base, recursive=True, allow_not_found=True))
        infos = [i for i in infos if i.type == fs.FileType.File and fnmatch.fnmatch(i.path, path)]
    else:
        info = filesystem.get_file_info(path)
        if info.type == fs.FileType.NotFound:
            raise OptionsError(f"--input {spec} does not exist")
        if info.type == fs.FileType.Directory:
            infos = filesystem.get_file_info(fs.FileSelector(path, recursive=True))
            infos = [i for i in infos if i.type == fs.FileType.File and kind_of(i.path)]
        else:
            infos = [info]
    shards = []
    for i in sorted(infos, key=lambda i: i.path):
        kind = kind_of(i.path)
        if kind is None:
            raise OptionsError(f"--input {i.path}: unsupported file; use {', '.join(KINDS)} shards")
        uri = scheme + i.path if scheme else i.path
        shards.append(Shard(uri, i.path, kind, int(i.size or 0), i.mtime_ns))
    if not shards:
        raise OptionsError(f"--input {spec} names no {', '.join(KINDS)} files")
    return shards


def _lines(stream: Any) -> Iterator[bytes]:
    """Lines (with their newline) of a binary stream, read in 1 MiB blocks: pyarrow's streams have no readline."""
    carry = b""
    for block in iter(lambda: stream.read(1 << 20), b""):
        lines = (carry + block).split(b"\n")
        carry = lines.pop()
        for line in lines:
            yield line + b"\n"
    if carry:
        yield carry


def _open_lines(uri: str, path: str, kind: str, offset: int = 0) -> tuple[Any, Iterator[bytes]]:
    """(the stream to close, its lines from byte ``offset``); gzip is decompressed, from its start."""
    filesystem, _ = _fs(uri)
    if kind == ".jsonl.gz":
        raw = filesystem.open_input_stream(path, compression="gzip")
        return raw, _lines(raw)
    f = filesystem.open_input_file(path)
    f.seek(offset)
    return f, _lines(f)


def index(shard: Shard, rows_per_part: int) -> Shard:
    """Count ``shard``'s rows and find where each chunk of ``rows_per_part`` rows starts (one streaming pass)."""
    starts: list[Any] = []
    lines: list[int] = []
    rows = 0
    if shard.kind == ".parquet":
        import pyarrow.parquet as pq

        filesystem, _ = _fs(shard.uri)
        with filesystem.open_input_file(shard.path) as f:
            rows = pq.ParquetFile(f).metadata.num_rows
        starts = list(range(0, rows, rows_per_part))
    else:
        stream, lines_of = _open_lines(shard.uri, shard.path, shard.kind)
        offset = 0
        with stream:
            for number, line in enumerate(lines_of, 1):  # bytes: offsets are byte offsets
                if line.strip():
                    if rows % rows_per_part == 0:
                        starts.append(offset)
                        lines.append(number)
                    rows += 1
                offset += len(line)
    shard.rows, shard.starts, shard.lines = rows, starts, lines
    return shard


@dataclass(frozen=True)
class Chunk:
    """``count`` consecutive rows of one shard, from its row ``first`` (which starts at ``start``: a byte
    offset, or a row for Parquet; on line ``line``): all a worker needs to read it, and no more."""

    uri: str
    path: str
    kind: str
    start: int
    line: int
    first: int
    count: int


def chunks(shard: Shard, rows_per_part: int) -> list[Chunk]:
    assert shard.rows is not None, "index the shard first"
    return [
        Chunk(shard.uri, shard.path, shard.kind, int(start), shard.lines[i] if shard.lines else 0,
              i * rows_per_part, min(rows_per_part, shard.rows - i * rows_per_part))
        for i, start in enumerate(shard.starts)
    ]  # fmt: skip


def read_chunk(chunk: Chunk, text_field: str, id_field: str = "id") -> Iterator[tuple[str, int, Any]]:
    """``(FILE:LINE, row within shard, record)`` for every row of ``chunk``; a record is a dict, or the
    exception that made its line unreadable."""
    if chunk.kind == ".parquet":
        yield from _parquet_rows(chunk)
        return
    gz = chunk.kind == ".jsonl.gz"
    plain = chunk.kind == ".txt"
    number = chunk.line - 1
    stream, lines_of = _open_lines(chunk.uri, chunk.path, chunk.kind, 0 if gz else chunk.start)
    with stream:
        if gz:  # not seekable: decompress up to the chunk's first line
            for _ in range(number):
                next(lines_of)
        row = chunk.first
        for raw in lines_of:
            if row >= chunk.first + chunk.count:
                break
            number += 1
            if not raw.strip():
                continue
            where = f"{chunk.uri}:{number}"
            text = raw.decode("utf-8").rstrip("\n").rstrip("\r")
            if plain:
                yield where, row, {id_field: number, text_field: text}
            elif text.lstrip().startswith("{"):
                try:
                    yield where, row, json.loads(text)
                except json.JSONDecodeError as e:
                    yield where, row, e
            else:
                yield where, row, ValueError("not a JSON object")
            row += 1


def _parquet_rows(chunk: Chunk) -> Iterator[tuple[str, int, Any]]:
    import pyarrow.parquet as pq

    first, count = chunk.first, chunk.count
    filesystem, _ = _fs(chunk.uri)
    with filesystem.open_input_file(chunk.path) as f:
        pf = pq.ParquetFile(f)
        groups: list[int] = []
        position, seen = 0, 0  # position: the first row of the first row group read
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if seen + n > first and seen < first + count:
                position = seen if not groups else position
                groups.append(g)
            seen += n
        for batch in pf.iter_batches(batch_size=1024, row_groups=groups):
            for record in batch.to_pylist():
                if position >= first:
                    yield f"{chunk.uri} row {position}", position, record
                position += 1
                if position >= first + count:
                    return
