"""Hugging Face model directories: where a hub id lives in the local cache, which family a directory is,
and how one of its weight files is read (safetensors, or a zip/pickle .bin through weights_only).

A hub id (``facebook/esm2_t33_650M_UR50D``) is looked up in the local cache only (never
downloaded): ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``,
read when called (so a job's environment counts), at ``models--ORG--NAME/snapshots/REV``
(the revision ``refs/main`` names, else the newest snapshot holding a ``config.json``).

The family comes from ``config.json``: ``model_type`` ``"esm"`` is ESM-2, ``"bert"`` (or a
``Bert*`` architecture) is DNABERT-S; a directory without a readable ``config.json`` is
left to the DNABERT-S loader (its message lists the files it needs), any other type is
refused in one line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .errors import CheckpointError, ModelLoadError, torch_error_line

__all__ = ["hub_cache_dir", "looks_like_hub_id", "cached_snapshot", "local_model_dir", "hf_family",
           "read_config", "UnknownModelTypeError"]

ESM_TYPES = ("esm", "fast_esm")  # fast_esm: FastESM2 re-packagings (the same tensor names)
DNABERT_TYPES = ("bert",)


class UnknownModelTypeError(ModelLoadError):
    """``config.json`` names a model family virnucdist does not run."""


def hub_cache_dir() -> Path:
    env = os.environ
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(key):
            return Path(env[key]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    base = Path(env["XDG_CACHE_HOME"]).expanduser() if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def looks_like_hub_id(spec: str) -> bool:
    """``ORG/NAME`` that is not an existing path (and not written like one)."""
    s = str(spec)
    return s.count("/") == 1 and not s.startswith((".", "/", "~")) and not s.endswith("/") \
        and not Path(s).expanduser().exists() and not s.endswith((".pt", ".bin", ".safetensors"))


def cached_snapshot(repo_id: str) -> Path | None:
    """The local snapshot directory of ``repo_id`` in the HF cache, or None."""
    repo = hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    snaps = repo / "snapshots"
    if not snaps.is_dir():
        return None
    ref = repo / "refs" / "main"
    if ref.is_file():
        d = snaps / ref.read_text().strip()
        if (d / "config.json").is_file():
            return d
    found = [d for d in snaps.iterdir() if (d / "config.json").is_file()]
    return max(found, key=lambda d: d.stat().st_mtime) if found else None


def local_model_dir(spec: str) -> Path | None:
    """An existing directory, or a hub id's cached snapshot; None for anything else."""
    p = Path(spec).expanduser()
    if p.is_dir():
        return p
    if looks_like_hub_id(spec):
        return cached_snapshot(spec)
    return None


def read_config(d: Path) -> dict | None:
    """``config.json`` of ``d`` as a dict, None when absent or unreadable (the loaders say why)."""
    try:
        cfg = json.loads((d / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) else None


def hf_family(d: Path) -> str:
    """``"esm2"`` or ``"dnabert_s"`` for a model directory; :class:`UnknownModelTypeError` otherwise."""
    cfg = read_config(d)
    if cfg is None:
        return "dnabert_s"
    mtype = str(cfg.get("model_type") or "").lower()
    archs = " ".join(str(a) for a in cfg.get("architectures") or [])
    if mtype in ESM_TYPES or (not mtype and archs.startswith("Esm")):
        return "esm2"
    if mtype in DNABERT_TYPES or (not mtype and "Bert" in archs) or (not mtype and not archs):
        return "dnabert_s"
    raise UnknownModelTypeError(
        f"{d / 'config.json'}: model_type {mtype or '?'!r} ({archs or 'no architectures'}) is not a model "
        f"virnucdist runs: give an ESM-2 directory (model_type 'esm') or DNABERT-S (model_type 'bert')")


def read_weights_file(path: Path, error: type[CheckpointError] = CheckpointError) -> dict[str, torch.Tensor]:
    """A state dict from ``model.safetensors`` (or one shard) or ``pytorch_model.bin``: safetensors as they
    are, a ``.bin`` memory-mapped when zipped and always ``weights_only`` (a pickle can run code).
    ``error`` is the model's own checkpoint error; every failure is one line naming the file."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise error(f"{path}: not a readable .safetensors file "
                        f"({' '.join(str(e).split())[:200]}); download it again") from None
    with open(path, "rb") as fh:
        zipped = fh.read(4) == b"PK\x03\x04"
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipped)
    except Exception as e:
        raise error(f"{path}: refused to load (weights_only=True): {torch_error_line(e)}; only plain tensor "
                    f"checkpoints are read") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise error(f"{path}: not a state dict of tensors")
    return sd
