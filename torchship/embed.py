"""``torchship embed``: embed a corpus into a Parquet dataset, streaming, resumable, in-process or on Ray Data.

Inputs are shards (``.jsonl``, ``.jsonl.gz``, ``.txt``, ``.parquet``) named by a file, a directory or a glob,
on any filesystem pyarrow understands (``shards.py``). Each shard is cut into chunks of ``rows_per_part`` rows;
each chunk becomes one part file of the output dataset, ``part-SSSSS-CCCCCC.parquet`` (shard, chunk), streamed
into a hidden temporary file and renamed into place when whole, so no half-written part is ever visible
(pyarrow and Ray Data skip names that start with ``.`` or ``_``). ``_torchship_embed.json`` in the output
directory records the artifact's sha256, the options, the input shards (size, modification time, chunk index)
and every completed part with its row count and sha256. Rerunning the same command continues from there; a
rerun with another artifact, other options or changed inputs is refused unless ``overwrite``.

Columns: ``id`` (a string in a dataset, since shards may mix integer and string ids; a ``.txt`` row's id is its
line number), ``row`` (the row's index over all shards, in order), ``shard`` and ``shard_row`` (where it came
from), ``embedding`` (a fixed-size float32 list), ``truncated`` (cut to the artifact's longest bucket) and
``error``. A bad row stops the run naming ``FILE:LINE``, or with ``on_error="skip"`` is kept with a null
embedding and its reason in ``error``.

A single ``.parquet`` output file is for small jobs: the same rows (without ``shard``, ``shard_row``; ids keep
their type), gathered in memory and written atomically at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import shards as shard_io
from .errors import InputError, OptionsError
from .shards import Chunk, Shard

INSTALL_RAY = "pip install 'torchship[ray]'"
RECORD = "_torchship_embed.json"
RECORD_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class EmbedOptions:
    """``batch_size`` rows are embedded at a time (sorted by length inside); ``rows_per_part`` rows make one
    part file, the unit of resuming. ``actors`` is the Ray actor pool's (min, max) size."""

    text_field: str = "text"
    id_field: str = "id"
    batch_size: int = 1024
    rows_per_part: int = 10_000
    on_error: str = "raise"
    ray: bool = False
    ray_address: str | None = None
    actors: tuple[int, int] = (2, 2)
    overwrite: bool = False
    progress: bool = False

    def __post_init__(self) -> None:
        if self.on_error not in ("raise", "skip"):
            raise OptionsError(f"on_error {self.on_error!r} is invalid; choose 'raise' or 'skip'")
        if self.batch_size < 1:
            raise OptionsError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.rows_per_part < 1:
            raise OptionsError(f"rows_per_part must be >= 1, got {self.rows_per_part}")
        low, high = self.actors
        if not 1 <= low <= high:
            raise OptionsError(f"actors must be MIN,MAX with 1 <= MIN <= MAX, got {low},{high}")

    def identity(self) -> dict[str, Any]:
        """The options a part's content depends on: a resumed run must use the same."""
        return {"text_field": self.text_field, "id_field": self.id_field, "on_error": self.on_error,
                "rows_per_part": self.rows_per_part}  # fmt: skip


@dataclass
class Row:
    row: int  # over all shards
    shard: str
    shard_row: int
    id: Any
    text: str | None
    error: str | None


def _check(where: str, row: int, uri: str, shard_row: int, record: Any, options: EmbedOptions) -> Row:
    problem, text, ident = None, None, None
    if isinstance(record, Exception):
        problem = f"not valid JSON ({record})"
    elif not isinstance(record, dict):
        problem = f"expected an object, got {type(record).__name__}"
    else:
        ident = record.get(options.id_field)
        value = record.get(options.text_field)
        if options.text_field not in record:
            problem = f"missing field {options.text_field!r} (fields: {', '.join(map(str, record)) or 'none'})"
        elif not isinstance(value, str):
            problem = f"field {options.text_field!r} is {type(value).__name__}, not a string"
        elif not value.strip():
            problem = f"field {options.text_field!r} is empty"
        else:
            text = value
    if problem is not None and options.on_error == "raise":
        raise InputError(f"{where}: {problem}; fix the row or pass --on-error skip to record and skip it")
    return Row(row, uri, shard_row, row if ident is None else ident, text, problem)


def _rows(chunk: Chunk, first_row: int, options: EmbedOptions) -> Iterator[Row]:
    """A chunk's rows, checked; ``first_row`` is the chunk's first row over all shards."""
    for where, shard_row, record in shard_io.read_chunk(chunk, options.text_field, options.id_field):
        yield _check(where, first_row + shard_row - chunk.first, chunk.uri, shard_row, record, options)


def _batches(rows: Iterator[Row], size: int) -> Iterator[list[Row]]:
    batch: list[Row] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# ---- embedding rows ------------------------------------------------------------------------------------------------


class Embedder:
    """A loaded artifact that embeds batches of checked rows (one per process, or per Ray actor)."""

    def __init__(self, artifact: str | Path, *, threads: int | None = None) -> None:
        from .runtime import load

        self.predictor = load(artifact, threads=threads)
        if not self.predictor.task_def.embeds:
            raise OptionsError(
                f"torchship embed needs a feature-extraction artifact; this one is {self.predictor.task}"
            )
        self.max_length = self.predictor.max_length
        self.dim = int(self.predictor(["x"]).shape[1])

    def __call__(self, rows: list[Row]) -> tuple[dict[int, np.ndarray], set[int]]:
        """Embeddings of the rows that have text, by ``row``; and which of those were truncated."""
        good = [r for r in rows if r.text is not None]
        if not good:
            return {}, set()
        params = self.predictor.task_def.check_params({})  # the task's defaults: pooled, as the model normalizes
        works = self.predictor.works([r.text for r in good], params)
        vectors = self.predictor.run_works(works, params)
        cut = {r.row for r, w in zip(good, works, strict=True) if w.encoded.truncated[0]}
        return {r.row: v for r, v in zip(good, vectors, strict=True)}, cut


def _table(rows: list[Row], vectors: dict[int, np.ndarray], truncated: set[int], dim: int, *, dataset: bool) -> Any:
    import pyarrow as pa

    flat = np.zeros((len(rows), dim), dtype=np.float32)  # (rows, dim)
    valid = np.zeros(len(rows), dtype=bool)
    for i, r in enumerate(rows):
        if r.row in vectors:
            flat[i], valid[i] = vectors[r.row], True
    embeddings = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1), pa.float32()), dim, mask=pa.array(~valid))
    raw = [r.id for r in rows]
    if dataset:  # parts of one dataset must agree on a type
        ids = pa.array([str(i) for i in raw], pa.string())
    else:
        ids = pa.array(raw) if len({type(i) for i in raw}) == 1 else pa.array([str(i) for i in raw])
    columns: dict[str, Any] = {"id": ids, "row": pa.array([r.row for r in rows], pa.int64())}
    if dataset:
        columns["shard"] = pa.array([r.shard for r in rows], pa.string())
        columns["shard_row"] = pa.array([r.shard_row for r in rows], pa.int64())
    columns["embedding"] = embeddings
    columns["truncated"] = pa.array([r.row in truncated for r in rows], pa.bool_())
    columns["error"] = pa.array([r.error for r in rows], pa.string())
    return pa.table(columns)


# ---- one part --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """A chunk to embed into one part file of the dataset."""

    name: str
    chunk: Chunk
    first_row: int  # the chunk's first row over all shards

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "chunk": asdict(self.chunk), "first_row": self.first_row})

    @classmethod
    def from_json(cls, text: str) -> Part:
        data = json.loads(text)
        return cls(data["name"], Chunk(**data["chunk"]), data["first_row"])


def write_part(out: str, part: Part, options: EmbedOptions, embed: Embedder,
               on_rows: Callable[[int], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Read, embed and write one part: streamed ``batch_size`` rows at a time into a hidden temporary file,
    renamed into place once whole. Returns its record: rows, skipped, truncated, sha256."""
    import pyarrow.parquet as pq
    from pyarrow import fs

    filesystem, root = shard_io._fs(out)
    tmp, final = f"{root}/.{part.name}.tmp-{os.getpid()}", f"{root}/{part.name}"
    counts = {"rows": 0, "skipped": 0, "truncated": 0}
    writer = None
    try:
        for batch in _batches(_rows(part.chunk, part.first_row, options), options.batch_size):
            vectors, cut = embed(batch)
            table = _table(batch, vectors, cut, embed.dim, dataset=True)
            if writer is None:
                writer = pq.ParquetWriter(filesystem.open_output_stream(tmp), table.schema)
            writer.write_table(table)
            counts["rows"] += len(batch)
            counts["skipped"] += len(batch) - len(vectors)
            counts["truncated"] += len(cut)
            if on_rows is not None:
                on_rows(len(batch))
        if writer is None:
            raise InputError(f"{part.chunk.uri}: the chunk at row {part.chunk.first} has no rows; the file changed")
        writer.close()
        writer = None
        digest = hashlib.sha256()
        with filesystem.open_input_stream(tmp) as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        filesystem.move(tmp, final)
    finally:
        if writer is not None:
            writer.close()
        if filesystem.get_file_info(tmp).type != fs.FileType.NotFound:
            filesystem.delete_file(tmp)
    return {"part": part.name, **counts, "sha256": digest.hexdigest()}


class _PartActor:
    """A Ray Data actor: loads the artifact once, then reads, embeds and writes every part it is handed."""

    def __init__(self, artifact: str, out: str, options: dict[str, Any]) -> None:
        self.embed = Embedder(artifact, threads=1)
        self.out = out
        self.options = EmbedOptions(**{**options, "actors": tuple(options["actors"])})

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = [write_part(self.out, Part.from_json(str(p)), self.options, self.embed) for p in batch["part"]]
        return {"result": np.array([json.dumps(r) for r in results], dtype=object)}


# ---- the job -------------------------------------------------------------------------------------------------------


class Record:
    """``_torchship_embed.json``: what this output holds and what it was made from; rewritten atomically."""

    def __init__(self, out: str) -> None:
        self.filesystem, self.root = shard_io._fs(out)
        self.path = f"{self.root}/{RECORD}"
        self.data: dict[str, Any] | None = None
        from pyarrow import fs

        if self.filesystem.get_file_info(self.path).type == fs.FileType.File:
            with self.filesystem.open_input_stream(self.path) as f:
                try:
                    self.data = json.loads(f.read())
                except json.JSONDecodeError as e:
                    raise OptionsError(f"{self.path} is unreadable ({e}); pass --overwrite to start again") from e

    def save(self) -> None:
        tmp = f"{self.root}/.{RECORD}.tmp-{os.getpid()}"
        with self.filesystem.open_output_stream(tmp) as f:
            f.write((json.dumps(self.data, indent=1) + "\n").encode())
        self.filesystem.move(tmp, self.path)


def _sha256_of(artifact: Path) -> str:
    """The artifact's identity: its manifest, which holds every other file's sha256."""
    return hashlib.sha256((artifact / "manifest.json").read_bytes()).hexdigest()


def embed_dataset(artifact: str | Path, input_spec: str, output: str, options: EmbedOptions) -> dict[str, Any]:
    """Embed every row of ``input_spec`` into the Parquet dataset ``output``, resuming what a previous run of the
    same job completed; return a summary."""

    started = time.perf_counter()
    artifact = Path(artifact)
    max_length = _check_artifact(artifact)  # before any output is touched
    embed = None if options.ray else Embedder(artifact)  # on Ray, each actor loads its own
    filesystem, root = shard_io._fs(output)
    filesystem.create_dir(root, recursive=True)
    found = shard_io.find(input_spec)
    record = Record(output)
    identity = {
        "version": RECORD_VERSION,
        "artifact": {"path": str(artifact.absolute()), "sha256": _sha256_of(artifact)},
        "options": options.identity(),
        "inputs": [s.key() for s in found],
    }
    old = record.data
    if old is not None and not options.overwrite:
        mismatch = [k for k in ("version", "options", "inputs") if old.get(k) != identity[k]]
        if old.get("artifact", {}).get("sha256") != _sha256_of(artifact):
            mismatch.insert(0, "artifact")
        if mismatch:
            raise OptionsError(
                f"{output} holds a job with another {', '.join(mismatch)}; its parts would not mix with this run's. "
                "Pass --overwrite to replace them, or choose another --output"
            )
        shards = [Shard(**s) for s in old["shards"]]
    else:
        if old is not None or any(i.base_name.startswith("part-") for i in _listing(filesystem, root)):
            if not options.overwrite:
                raise OptionsError(f"{output} holds part files but no {RECORD}; pass --overwrite to replace them")
            for info in _listing(filesystem, root):
                if info.base_name.startswith(("part-", ".part-", RECORD, f".{RECORD}")):
                    filesystem.delete_file(info.path)
        shards = _index(found, options)
        record.data = {**identity, "shards": [s.to_json() for s in shards], "parts": {}, "complete": False}
        record.save()
    assert record.data is not None
    parts, offset = [], 0
    for i, shard in enumerate(shards):
        for c, chunk in enumerate(shard_io.chunks(shard, options.rows_per_part)):
            parts.append(Part(f"part-{i:05d}-{c:06d}.parquet", chunk, offset + chunk.first))
        offset += shard.rows or 0
    done = record.data["parts"]
    present = {info.base_name: info for info in _listing(filesystem, root)}
    for name in list(done):  # a recorded part whose file is gone is done again
        if name not in present:
            del done[name]
    _sweep(filesystem, root)  # a crash mid-write leaves hidden temporary files: nothing refers to them
    todo = [p for p in parts if p.name not in done]
    total = sum(p.chunk.count for p in todo)
    bar = _progress(total, options.progress, resumed=len(parts) - len(todo), parts=len(parts))
    try:
        if options.ray:
            results = _run_ray(artifact, output, todo, options)
        else:
            assert embed is not None
            results = (write_part(output, p, options, embed, bar.update) for p in todo)
        for result in results:
            done[result.pop("part")] = result
            record.save()
            if options.ray:
                bar.update(result["rows"])
    finally:
        bar.close()
    if options.ray:  # an actor killed mid-part left its temporary file; the part was written again elsewhere
        _sweep(filesystem, root)
    record.data["complete"] = True
    record.save()
    seconds = time.perf_counter() - started
    rows = sum(p["rows"] for p in done.values())
    return {
        "rows": rows,
        "embedded": rows - sum(p["skipped"] for p in done.values()),
        "skipped": sum(p["skipped"] for p in done.values()),
        "truncated": sum(p["truncated"] for p in done.values()),
        "parts": len(parts),
        "resumed_parts": len(parts) - len(todo),
        "seconds": round(seconds, 3),
        "rows_per_s": round(total / seconds, 1) if seconds > 0 else 0.0,
        "max_length": max_length,
    }


def _check_artifact(artifact: Path) -> int:
    """The artifact's max_length, after checking that it embeds."""
    from . import artifact as artifacts
    from . import tasks

    manifest = artifacts.read_manifest(artifact)
    if not tasks.get(manifest.task).embeds:
        raise OptionsError(f"torchship embed needs a feature-extraction artifact; this one is {manifest.task}")
    return manifest.max_length


def _sweep(filesystem: Any, root: str) -> None:
    """Delete the hidden temporary files of parts (``.part-*.tmp-PID``) in ``root``: at a job's start, what a crashed
    run left; on Ray at its end, what a killed actor left (no writer is alive then: every part has landed)."""
    for info in _listing(filesystem, root):
        if info.base_name.startswith(".part-"):
            filesystem.delete_file(info.path)


def _listing(filesystem: Any, root: str) -> list[Any]:
    from pyarrow import fs

    return [i for i in filesystem.get_file_info(fs.FileSelector(root)) if i.type == fs.FileType.File]


def _index(found: list[Shard], options: EmbedOptions) -> list[Shard]:
    """Count every shard's rows and find its chunks: inline, or one Ray task per shard."""
    if options.ray and len(found) > 1:
        ray = _ray(options)
        index = ray.remote(num_cpus=1)(shard_io.index)
        return list(ray.get([index.remote(s, options.rows_per_part) for s in found]))
    return [shard_io.index(s, options.rows_per_part) for s in found]


def _ray(options: EmbedOptions) -> Any:
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise OptionsError(f"--ray needs Ray Data: {INSTALL_RAY}") from e
    if not ray.is_initialized():
        ray.init(address=options.ray_address, include_dashboard=False, log_to_driver=False)
    return ray


def _run_ray(artifact: Path, output: str, todo: list[Part], options: EmbedOptions) -> Iterator[dict[str, Any]]:
    """Every part on a Ray Data actor pool; yields each part's record as it lands. The driver holds only part
    descriptors and records: the texts are read, and the vectors written, by the actors."""
    if not todo:
        return
    ray = _ray(options)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # one bar, the job's own, in rows
    dataset = ray.data.from_items([{"part": p.to_json()} for p in todo], override_num_blocks=len(todo))
    results = dataset.map_batches(
        _PartActor,
        fn_constructor_kwargs={
            "artifact": str(artifact.absolute()),
            "out": output,
            "options": {**asdict(options), "progress": False},
        },  # fmt: skip
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=options.actors[0], max_size=options.actors[1]),
        num_cpus=1,
    )
    for row in results.iter_rows():
        yield json.loads(row["result"])


class _Bar:
    def __init__(self, bar: Any) -> None:
        self.bar = bar

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _progress(total: int, enabled: bool, *, resumed: int, parts: int) -> _Bar:
    if not enabled:
        return _Bar(None)
    from tqdm import tqdm

    desc = f"embed ({resumed} of {parts} parts done before)" if resumed else "embed"
    return _Bar(tqdm(total=total, unit="row", unit_scale=True, desc=desc, file=sys.stderr, smoothing=0.1))


# ---- a single file, for small jobs ---------------------------------------------------------------------------------


def embed_file(
    artifact: str | Path, input_spec: str | Path, output_path: Path, options: EmbedOptions
) -> dict[str, Any]:
    """Embed ``input_spec`` into one Parquet file, written atomically at the end; return a summary."""
    if output_path.suffix.lower() != ".parquet":
        raise OptionsError(f"--output {output_path} must end in .parquet, or name a directory for a dataset")
    started = time.perf_counter()
    shards = [shard_io.index(s, options.rows_per_part) for s in shard_io.find(str(input_spec))]
    rows, offset = [], 0
    for shard in shards:
        for chunk in shard_io.chunks(shard, options.rows_per_part):
            rows += list(_rows(chunk, offset + chunk.first, options))
        offset += shard.rows or 0
    if not rows:
        raise OptionsError(f"--input {input_spec} has no rows")
    if options.ray:
        vectors, truncated, dim, max_length = _embed_file_ray(artifact, rows, options)
    else:
        embed = Embedder(artifact)
        vectors, truncated = embed(rows)
        dim, max_length = embed.dim, embed.max_length
    table = _table(rows, vectors, truncated, dim, dataset=False)
    import pyarrow.parquet as pq

    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_path.with_name(f".{output_path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, output_path)
    finally:
        tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    return {
        "rows": len(rows),
        "embedded": len(vectors),
        "skipped": len(rows) - len(vectors),
        "truncated": len(truncated),
        "max_length": max_length,
        "dim": dim,
        "seconds": round(seconds, 3),
        "rows_per_s": round(len(rows) / seconds, 1),
    }


class _RowsActor:
    def __init__(self, artifact: str) -> None:
        self.embed = Embedder(artifact, threads=1)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [Row(int(r), "", 0, None, str(t), None) for r, t in zip(batch["row"], batch["text"], strict=True)]
        vectors, cut = self.embed(rows)
        return {
            "row": batch["row"],
            "embedding": np.stack([vectors[r.row] for r in rows]),
            "truncated": np.array([r.row in cut for r in rows]),
        }


def _embed_file_ray(
    artifact: str | Path, rows: list[Row], options: EmbedOptions
) -> tuple[dict[int, np.ndarray], set[int], int, int]:
    """Small jobs on Ray: the rows go out from the driver and the vectors come back to it (for corpora, write a
    dataset instead: then the driver holds neither)."""
    ray = _ray(options)
    probe = Embedder(artifact)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = options.progress
    items = [{"row": r.row, "text": r.text} for r in rows if r.text is not None]
    vectors: dict[int, np.ndarray] = {}
    truncated: set[int] = set()
    if items:
        dataset = ray.data.from_items(items).map_batches(
            _RowsActor, fn_constructor_kwargs={"artifact": str(Path(artifact).absolute())},
            batch_size=options.batch_size, batch_format="numpy", num_cpus=1,
            compute=ray.data.ActorPoolStrategy(min_size=options.actors[0], max_size=options.actors[1]),
        )  # fmt: skip
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for r, v, t in zip(batch["row"], batch["embedding"], batch["truncated"], strict=True):
                vectors[int(r)] = np.asarray(v, dtype=np.float32)
                if t:
                    truncated.add(int(r))
    return vectors, truncated, probe.dim, probe.max_length
