"""The artifact on disk: manifest schema, atomic write, checksums.

An artifact is a directory::

    manifest.json        schema_version, versions, source, task, inputs/outputs, formats, parity, files
    tokenizer/           tokenizer.json and the files beside it
    model.pt             TorchScript: one method per sequence bucket, weights stored once

``manifest["files"]`` maps every other file's relative path to its sha256; ``verify`` checks them all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import ArtifactError, ChecksumError, MissingFileError, NotAnArtifactError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"


@dataclass
class TokenizerInfo:
    dir: str
    pad_token_id: int
    mask_token: str | None = None
    cls_token: str | None = None
    sep_token: str | None = None
    do_lower_case: bool | None = None
    padding: str = "torchship buckets (tokenizer.json padding disabled at load)"


@dataclass
class FormatEntry:
    """One loadable unit of a format: a static bucket (``seq``, ``method``) or a dynamic file (``max_seq``)."""

    file: str
    seq: int | None = None
    method: str | None = None
    batch: int | None = None
    traced_batch: int | None = None
    max_batch: int | None = None
    max_seq: int | None = None
    pad_multiple: int | None = None
    parity: dict[str, Any] | None = None
    fusion: str | None = None


@dataclass
class Timings:
    """Each format's median milliseconds on a (batch, seq) grid: how the runtime routes micro-batches."""

    batch: list[int]
    seq: list[int]
    threads: int
    median_ms: dict[str, dict[str, float]]
    source: str = "export"
    estimated: list[str] = field(default_factory=list)  # grid points not timed: scaled from what was (timing.py)
    machine: dict[str, Any] = field(default_factory=dict)  # what they were timed on (machine.fingerprint)
    others_load: float | None = None  # the share of the CPUs other processes used meanwhile (machine.OthersLoad)
    workers: int = 1  # micro-batches run at once while timing (LoadOptions.workers)


@dataclass
class Manifest:
    """``manifest.json``, typed. ``read_manifest`` is its one reader and ``write_manifest`` its one writer."""

    task: str
    architecture: dict[str, str]
    inputs: list[str]
    outputs: list[str]
    output_axes: dict[str, list[str | None]]
    max_length: int
    buckets: list[int]
    tokenizer: TokenizerInfo
    formats: dict[str, list[FormatEntry]] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    torchship_version: str = ""
    torch_version: str = ""
    transformers_version: str = ""
    source: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"
    device: str = "cpu"
    inference_only: bool = True
    tied_weights: list[list[str]] = field(default_factory=list)
    pooling: dict[str, Any] | None = None
    prompts: dict[str, str] = field(default_factory=dict)  # sentence-transformers' prompts, by name
    default_prompt_name: str | None = None
    labels: dict[str, str] | None = None
    problem_type: str | None = None
    plan: dict[str, Any] | None = None
    precision: dict[str, Any] | None = None
    timings: Timings | None = None
    export: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], *, path: Path) -> Manifest:
        try:
            fields = {**data}
            fields["tokenizer"] = TokenizerInfo(**data["tokenizer"])
            fields["formats"] = {
                name: [FormatEntry(**entry) for entry in entries] for name, entries in data["formats"].items()
            }
            if data.get("timings"):
                fields["timings"] = Timings(**data["timings"])
            return cls(**fields)
        except (KeyError, TypeError) as e:
            raise ArtifactError(f"{path} is not a valid manifest ({e}); export the artifact again", path=path) from e

    def sequence_axes(self) -> dict[str, int]:
        """Output name -> its sequence axis, for outputs that have one."""
        return {name: axes.index("seq") for name, axes in self.output_axes.items() if "seq" in axes}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksum_tree(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` except the manifest, keyed by POSIX relative path."""
    return {
        path.relative_to(root).as_posix(): sha256_file(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }


def write_manifest(root: Path, manifest: Manifest) -> None:
    """Hash every file under ``root`` into ``manifest.files`` and write it (atomically): once per export."""
    manifest.files = checksum_tree(root)
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest.to_json(), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, root / MANIFEST)


def read_manifest(root: Path) -> Manifest:
    root = Path(root)
    if not root.is_dir():
        raise NotAnArtifactError(
            f"{root} is not a directory; pass the directory that `torchship export` wrote", path=root
        )
    path = root / MANIFEST
    if not path.is_file():
        raise NotAnArtifactError(
            f"{root} is not a torchship artifact: it has no {MANIFEST}; "
            "create one with `torchship export MODEL OUTPUT_DIR`",
            path=root,
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path} is unreadable ({e}); export the artifact again", path=root) from e
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != SCHEMA_VERSION:
        raise ArtifactError(
            f"{path} has schema_version {version!r}, this torchship reads {SCHEMA_VERSION}; "
            "export the artifact again with this version, or use the torchship that wrote it",
            path=root,
        )
    return Manifest.from_json(data, path=path)


# files already checked by this process: (path, size, mtime, ctime, inode, expected sha256); a file is hashed again only
# when it changed, so loading one artifact several times (a server's models, a job's parts) hashes it once
_VERIFIED: set[tuple[str, int, int, int, int, str]] = set()


def format_files(manifest: Manifest) -> dict[str, set[str]]:
    """Each format's own files (what only that format loads): its entries' files, and every file in the folder of
    an entry's file when that lies in a folder of its own (OpenVINO's ``openvino/model.xml`` and ``model.bin``)."""
    owned = {}
    for name, entries in manifest.formats.items():
        folders = {PurePosixPath(e.file).parent for e in entries} - {PurePosixPath(".")}
        owned[name] = {e.file for e in entries} | {f for f in manifest.files if PurePosixPath(f).parent in folders}
    return owned


def verify(root: Path, manifest: Manifest, *, skip: set[str] | frozenset[str] = frozenset()) -> None:
    """Check every file the manifest lists, except those in ``skip``, against its sha256 (streamed, 1 MiB at a
    time; a file this process checked already and that has not changed since is not read again)."""
    files = manifest.files
    if not files:
        raise ArtifactError(f"{root / MANIFEST} lists no files; export the artifact again", path=root)
    for rel, expected in files.items():
        if rel in skip:
            continue
        path = root / rel
        if not path.is_file():
            raise MissingFileError(
                f"artifact file {rel} is missing from {root}; the artifact is incomplete, export it again",
                path=root,
            )
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, expected)
        if key in _VERIFIED:
            continue
        actual = sha256_file(path)
        if actual != expected:
            raise ChecksumError(
                f"artifact file {rel} in {root} has sha256 {actual[:12]}…, the manifest says {expected[:12]}…: "
                "the file was modified or corrupted; export the artifact again",
                path=root,
            )
        _VERIFIED.add(key)


@contextlib.contextmanager
def atomic_dir(target: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary sibling of ``target``; rename it into place only if the block succeeds.

    A failure or interrupt removes the temporary directory, so nothing half-written is ever loadable.
    """
    target = Path(target).absolute()
    if target.exists() and not overwrite:
        raise ArtifactError(
            f"{target} already exists; choose another OUTPUT_DIR or pass --overwrite to replace it", path=target
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; an artifact is meant to be shared
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
