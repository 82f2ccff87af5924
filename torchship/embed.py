"""``torchship embed``: embed a corpus file into Parquet, in-process or on Ray Data.

Rows come from ``.jsonl`` (one object per line), ``.parquet`` or ``.txt`` (one text per line, id = line
number). The output keeps each row's id and the input order, stores each embedding as a fixed-size
float32 list, and marks in ``truncated`` the rows whose text was cut to the artifact's longest bucket.
A bad row (missing field, non-string) stops the run with its row named, or, with ``on_error="skip"``,
is kept in the output with a null embedding and the reason in ``error``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import textfile
from .errors import InputError, OptionsError

INSTALL_ARROW = "pip install 'torchship[embed]'"
INSTALL_RAY = "pip install 'torchship[ray]'"


@dataclass(frozen=True, kw_only=True)
class EmbedOptions:
    text_field: str = "text"
    id_field: str = "id"
    batch_size: int = 256
    on_error: str = "raise"
    ray: bool = False
    ray_address: str | None = None
    actors: int = 2
    progress: bool = False

    def __post_init__(self) -> None:
        if self.on_error not in ("raise", "skip"):
            raise OptionsError(f"on_error {self.on_error!r} is invalid; choose 'raise' or 'skip'")
        if self.batch_size < 1:
            raise OptionsError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.actors < 1:
            raise OptionsError(f"actors must be >= 1, got {self.actors}")


@dataclass
class Row:
    row: int
    id: Any
    text: str | None
    error: str | None


def read_rows(path: Path, options: EmbedOptions) -> list[Row]:
    """Every row of ``path``, checked: a bad row raises (naming it) or is kept with its error."""
    if not path.is_file():
        raise OptionsError(f"--input {path} does not exist")
    suffix = path.suffix.lower()
    records: list[tuple[str, Any]]  # (where, record)
    if suffix == ".txt":
        field = options.text_field
        records = [(where, {options.id_field: int(where.rsplit(":", 1)[1]), field: rec[field]})
                   for where, rec in textfile.records(path, text_field=field, plain=True)]  # fmt: skip
    elif suffix == ".jsonl":
        records = list(textfile.records(path, text_field=options.text_field))
    elif suffix == ".parquet":
        pq = _pyarrow_parquet()
        table = pq.read_table(path)
        records = [(f"{path} row {i}", rec) for i, rec in enumerate(table.to_pylist())]
    else:
        raise OptionsError(f"--input {path}: unsupported suffix {suffix!r}; use .jsonl, .parquet or .txt")
    rows = []
    for index, (where, record) in enumerate(records):
        rows.append(_check(index, where, record, options))
    if not rows:
        raise OptionsError(f"--input {path} has no rows")
    return rows


def _check(index: int, where: str, record: Any, options: EmbedOptions) -> Row:
    problem = None
    text = None
    ident = index
    if isinstance(record, Exception):
        problem = f"not valid JSON ({record})"
    elif not isinstance(record, dict):
        problem = f"expected an object, got {type(record).__name__}"
    else:
        ident = record.get(options.id_field, index)
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
    return Row(index, ident, text, problem)


def embed_file(artifact: str | Path, input_path: Path, output_path: Path, options: EmbedOptions) -> dict[str, Any]:
    """Embed ``input_path`` into ``output_path`` (Parquet, written atomically); return a summary."""
    if output_path.suffix.lower() != ".parquet":
        raise OptionsError(f"--output {output_path} must end in .parquet")
    rows = read_rows(input_path, options)
    good = [r for r in rows if r.text is not None]
    texts = [r.text for r in good if r.text is not None]
    embed = _embed_ray if options.ray else _embed_local
    vectors, truncated, max_length = embed(artifact, texts, options)
    dim = vectors.shape[1] if len(vectors) else 0
    by_row = {r.row: v for r, v in zip(good, vectors, strict=True)}
    cut = {r.row for r, t in zip(good, truncated, strict=True) if t}
    _write(output_path, rows, by_row, cut, dim)
    return {
        "rows": len(rows),
        "embedded": len(good),
        "skipped": len(rows) - len(good),
        "truncated": len(cut),
        "max_length": max_length,
        "dim": dim,
    }


def _embed_batch(predictor: Any, texts: list[str]) -> tuple[np.ndarray, list[bool]]:
    """Embeddings and per-text truncation flags (counted and reported, not warned about)."""
    works = predictor.works(texts, {})
    return np.stack(predictor.run_works(works, {})), [bool(w.encoded.truncated[0]) for w in works]


def _check_task(predictor: Any) -> None:
    if not predictor.task_def.embeds:
        raise OptionsError(f"torchship embed needs a feature-extraction artifact; this one is {predictor.task}")


def _embed_local(artifact: str | Path, texts: list[str], options: EmbedOptions) -> tuple[np.ndarray, list[bool], int]:
    from tqdm import tqdm

    from .runtime import load

    predictor = load(artifact)
    _check_task(predictor)
    out, truncated = [], []
    for start in tqdm(range(0, len(texts), options.batch_size), disable=not options.progress, unit="batch"):
        vectors, cut = _embed_batch(predictor, texts[start : start + options.batch_size])
        out.append(vectors)
        truncated += cut
    vectors = np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)
    return vectors, truncated, predictor.max_length


class _EmbedActor:
    """A Ray Data actor: loads the artifact once, embeds every batch it is handed."""

    def __init__(self, artifact: str) -> None:
        from .runtime import load

        self.predictor = load(artifact, threads=1)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vectors, truncated = _embed_batch(self.predictor, [str(t) for t in batch["text"]])
        return {"row": batch["row"], "embedding": vectors, "truncated": np.asarray(truncated, dtype=bool)}


def _embed_ray(artifact: str | Path, texts: list[str], options: EmbedOptions) -> tuple[np.ndarray, list[bool], int]:
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise OptionsError(f"--ray needs Ray Data: {INSTALL_RAY}") from e
    from .runtime import load

    predictor = load(artifact)
    _check_task(predictor)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=options.ray_address, include_dashboard=False, log_to_driver=False)
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = options.progress
        items = [{"row": i, "text": t} for i, t in enumerate(texts)]
        dataset = ray.data.from_items(items).map_batches(
            _EmbedActor,
            fn_constructor_kwargs={"artifact": str(Path(artifact).absolute())},
            batch_size=options.batch_size,
            batch_format="numpy",
            concurrency=options.actors,
            num_cpus=1,
        )
        out = np.zeros((len(texts), 0), dtype=np.float32)
        truncated = np.zeros(len(texts), dtype=bool)
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            vectors = np.stack(list(batch["embedding"])).astype(np.float32)
            if out.shape[1] == 0:
                out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
            out[batch["row"]] = vectors  # placed by row index: the order is kept whatever Ray does
            truncated[batch["row"]] = batch["truncated"]
        return out, truncated.tolist(), predictor.max_length
    finally:
        if started_here:
            ray.shutdown()


def _write(path: Path, rows: list[Row], vectors: dict[int, np.ndarray], truncated: set[int], dim: int) -> None:
    import pyarrow as pa

    pq = _pyarrow_parquet()
    flat = np.zeros((len(rows), dim), dtype=np.float32)
    valid = np.zeros(len(rows), dtype=bool)
    for r in rows:
        if r.row in vectors:
            flat[r.row] = vectors[r.row]
            valid[r.row] = True
    values = pa.array(flat.reshape(-1), type=pa.float32())
    embeddings = pa.FixedSizeListArray.from_arrays(values, dim, mask=pa.array(~valid))
    ids = [r.id for r in rows]
    table = pa.table({
        "id": pa.array(ids) if len({type(i) for i in ids}) == 1 else pa.array([str(i) for i in ids]),
        "row": pa.array([r.row for r in rows], type=pa.int64()),
        "embedding": embeddings,
        "truncated": pa.array([r.row in truncated for r in rows], type=pa.bool_()),
        "error": pa.array([r.error for r in rows], type=pa.string()),
    })  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise OptionsError(f"Parquet needs pyarrow: {INSTALL_ARROW}") from e
    return pq
