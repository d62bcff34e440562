"""What names a model in a run's manifest, without loading it (a refused run must be quick and harmless)."""

from __future__ import annotations

from pathlib import Path

from ..models.loading import is_dnabert_spec

__all__ = ["model_identity", "molecule_of_spec"]


def model_identity(spec: str, random_init: bool, seed: int) -> dict:
    """The model as the manifest records it: a resolved path (or name), and the seed of random weights."""
    p = Path(spec).expanduser()
    return {"spec": str(p.resolve()) if p.exists() else spec, "random_init": random_init,
            "seed": seed if random_init else None}


def molecule_of_spec(spec: str) -> str:
    """'dna' for DNABERT-S, 'protein' for ESM-2."""
    return "dna" if is_dnabert_spec(spec) else "protein"
