"""What names a model in a run's manifest, without loading it (a refused run must be quick and harmless)."""

from __future__ import annotations

from pathlib import Path

from ..models.errors import ModelLoadError
from ..models.esm2 import ESM2_ARCHS
from ..models.hf_cache import local_model_dir, read_config
from ..models.loading import DNABERT_S_HUB_ID, DNABERT_S_NAMES, is_dnabert_spec, model_family

__all__ = ["model_identity", "molecule_of_spec", "width_of_spec", "check_model_spec", "check_model_roles"]


def model_identity(spec: str, random_init: bool, seed: int) -> dict:
    """The model as the manifest records it: a resolved path (or name), and the seed of random weights."""
    p = Path(spec).expanduser()
    return {"spec": str(p.resolve()) if p.exists() else spec, "random_init": random_init,
            "seed": seed if random_init else None}


def check_model_spec(spec: str, flag: str = "--model") -> None:
    """Refuse, in one line about the model, a path that cannot be a model: a directory without
    ``config.json`` or a file that is not a PyTorch checkpoint. Runs before the input's molecule is
    checked against the model, so that a wrong path is never reported as a wrong input."""
    p = Path(spec).expanduser()
    if p.is_dir() and not (p / "config.json").is_file():
        what = "an empty directory" if not any(p.iterdir()) else "a directory without config.json"
        raise ModelLoadError(f"{flag} {spec} is {what}, not a model: give an ESM-2 name or fair-esm .pt file, or a "
                             f"Hugging Face ESM-2 / DNABERT-S directory (config.json and weights)")
    if p.is_file():
        with open(p, "rb") as fh:
            head = fh.read(4)
        if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch.save: a zip, or a legacy pickle
            raise ModelLoadError(f"{flag} {spec} is not a model checkpoint (not a file written by torch.save): give a "
                                 f"fair-esm ESM-2 .pt file, an ESM-2 name, or a model directory")


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
            from ..models.random_init import DNABERT_S_TINY

            return DNABERT_S_TINY.hidden_size
        return 768
    name = Path(spec).stem if spec.endswith(".pt") else spec.rsplit("/", 1)[-1]
    return ESM2_ARCHS[name][1] if name in ESM2_ARCHS else None


def check_model_roles(esm_spec: str, dnabert_spec: str) -> None:
    """Before any width check or indexing: one line when a model known here without loading it (a model
    directory or cached hub id, a DNABERT-S or ESM-2 name) is of the other family than its flag asks for, or
    when ``--dnabert-model`` names nothing there (a missing path or an uncached hub id)."""
    def family(spec: str) -> str | None:
        if local_model_dir(spec) is not None or spec.lower() in DNABERT_S_NAMES or spec == DNABERT_S_HUB_ID:
            return model_family(spec)
        return "esm2" if spec in ESM2_ARCHS else None  # a path that is not there: its loader says so

    names = {"esm2": "ESM-2", "dnabert_s": "DNABERT-S"}
    for flag, spec, want in (("--esm-model", esm_spec, "esm2"), ("--dnabert-model", dnabert_spec, "dnabert_s")):
        got = family(str(spec))
        if got is None and want == "dnabert_s":  # else the ESM-2 loader, the fallback, would answer about ESM-2
            raise ModelLoadError(f"--dnabert-model {spec}: no DNABERT-S model there; give the DNABERT-S directory "
                                 f"(config.json and weights), its hub id {DNABERT_S_HUB_ID} from the local Hugging "
                                 f"Face cache, or dnabert-s with --random-init")
        if got is not None and got != want:
            raise ModelLoadError(f"{flag} {spec} is {names[got]}, but {flag} takes {names[want]}: --esm-model must "
                                 f"be ESM-2 and --dnabert-model DNABERT-S")
