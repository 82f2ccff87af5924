"""The artifact on disk: manifest schema, atomic write, checksums.

An artifact is a directory::

    manifest.json        schema_version, versions, source, task, inputs/outputs, formats, parity, files
    tokenizer/           tokenizer.json and the files beside it
    model.pt             TorchScript: one method per sequence bucket, weights stored once

``manifest["files"]`` maps every other file's relative path to its sha256; ``verify`` checks them all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ArtifactError, ChecksumError, MissingFileError, NotAnArtifactError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"

Manifest = dict[str, Any]


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
    manifest = {**manifest, "files": checksum_tree(root)}
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
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
        manifest: Manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path} is unreadable ({e}); export the artifact again", path=root) from e
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ArtifactError(
            f"{path} has schema_version {version!r}, this torchship reads {SCHEMA_VERSION}; "
            "export the artifact again with this version",
            path=root,
        )
    return manifest


def verify(root: Path, manifest: Manifest) -> None:
    """Check every file the manifest lists against its sha256."""
    files = manifest.get("files") or {}
    if not files:
        raise ArtifactError(f"{root / MANIFEST} lists no files; export the artifact again", path=root)
    for rel, expected in files.items():
        path = root / rel
        if not path.is_file():
            raise MissingFileError(
                f"artifact file {rel} is missing from {root}; the artifact is incomplete, export it again",
                path=root,
            )
        actual = sha256_file(path)
        if actual != expected:
            raise ChecksumError(
                f"artifact file {rel} in {root} has sha256 {actual[:12]}…, the manifest says {expected[:12]}…: "
                "the file was modified or corrupted; export the artifact again",
                path=root,
            )


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
