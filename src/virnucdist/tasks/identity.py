"""What names a model in a run's manifest, without loading it (a refused run must be quick and harmless)."""

from __future__ import annotations

from pathlib import Path

from ..models.esm2 import ESM2_ARCHS
from ..models.hf_cache import local_model_dir, read_config
from ..models.loading import is_dnabert_spec

__all__ = ["model_identity", "molecule_of_spec", "width_of_spec"]


def model_identity(spec: str, random_init: bool, seed: int) -> dict:
    """The model as the manifest records it: a resolved path (or name), and the seed of random weights."""
    p = Path(spec).expanduser()
    return {"spec": str(p.resolve()) if p.exists() else spec, "random_init": random_init,
            "seed": seed if random_init else None}


def molecule_of_spec(spec: str) -> str:
    """'dna' for DNABERT-S, 'protein' for ESM-2."""
    return "dna" if is_dnabert_spec(spec) else "protein"


def width_of_spec(spec: str, random_init: bool) -> int | None:
    """A model's embedding width read from its name or config, without loading weights (None: unknown here)."""
    d = local_model_dir(spec)
    if d is not None and (d / "config.json").is_file():  # a Hugging Face directory of either model
        try:
            return int(read_config(d)["hidden_size"])
        except (ValueError, KeyError, TypeError):
            return None  # the loader says what is wrong with it
    if is_dnabert_spec(spec):
        if spec.lower() == "dnabert-s-tiny":
            from ..testing import DNABERT_S_TINY

            return DNABERT_S_TINY.hidden_size
        return 768
    name = Path(spec).stem if spec.endswith(".pt") else spec.rsplit("/", 1)[-1]
    return ESM2_ARCHS[name][1] if name in ESM2_ARCHS else None
