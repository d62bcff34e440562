"""Loading DNABERT-S from a Hugging Face directory into :class:`PackedDnaBertS`.

The directory holds ``config.json``, ``model.safetensors`` or ``pytorch_model.bin``
and ``tokenizer.json`` (``huggingface-cli download zhihan1996/DNABERT-S``); a hub
id is looked up in the local Hugging Face cache, never downloaded. The model is
built on the meta device and the checked state dict is assigned to it (no random
init, no second copy); a ``.bin`` is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .dnabert_s import DnaBertSConfig, PackedDnaBertS
from .errors import CheckpointError, ModelNotFoundError
from .hf_cache import read_weights_file
from .tokenization import DnaBertSTokenizer

__all__ = ["HF_REPO_ID", "WEIGHT_FILES", "DnaBertSCheckpointError", "load_dnabert_s", "resolve_model_dir",
           "finish_dnabert_s"]

HF_REPO_ID = "zhihan1996/DNABERT-S"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
EXPECTED_FILES = f"config.json, {' or '.join(WEIGHT_FILES)}, tokenizer.json"


class DnaBertSCheckpointError(CheckpointError):
    """The weights do not match the DNABERT-S architecture (or are not safely loadable)."""


def _how_to_get(what: str) -> str:
    return (f"{what} Download DNABERT-S with `huggingface-cli download {HF_REPO_ID} --local-dir DIR` "
            f"and pass DIR (or --random-init for a test run with random weights).")


def resolve_model_dir(model_dir: str | os.PathLike) -> Path:
    """A local directory, or a hub id (``zhihan1996/DNABERT-S``) found in the
    local Hugging Face cache (never downloads)."""
    p = Path(model_dir).expanduser()
    if p.is_dir():
        return p
    s = str(model_dir)
    looks_like_repo_id = s.count("/") == 1 and not s.startswith((".", "/", "~")) and not p.exists()
    if looks_like_repo_id:
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(s, local_files_only=True))
        except Exception as e:  # not in the cache / no huggingface_hub
            raise ModelNotFoundError(_how_to_get(
                f"DNABERT-S model {s!r}: no such directory, and the hub id is not in the "
                f"local Hugging Face cache ({type(e).__name__})."
            )) from None
    raise ModelNotFoundError(_how_to_get(
        f"DNABERT-S model directory {str(p)!r} does not exist (expected {EXPECTED_FILES})."))


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    return read_weights_file(path, DnaBertSCheckpointError)


def _check_state_dict(sd: dict[str, torch.Tensor], model: PackedDnaBertS, source) -> dict:
    if sd and all(k.startswith("bert.") for k in sd):  # saved from a wrapper
        sd = {k[len("bert."):]: v for k, v in sd.items()}
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        hint = ""
        if any(k.startswith(("encoder.sentence_encoder.", "embed_tokens", "layers.",
                             "emb_layer_norm_after", "contact_head")) for k in sd):
            hint = " This looks like an ESM checkpoint, not DNABERT-S."
        elif any(k.startswith("cls.") for k in unexpected):
            hint = " This looks like a masked-LM (BertForMaskedLM) checkpoint."
        raise DnaBertSCheckpointError(
            f"{source}: the weights do not match DNABERT-S ({len(expected)} tensors).{hint} "
            f"missing ({len(missing)}): {missing[:8]}{' ...' if len(missing) > 8 else ''}; "
            f"unexpected ({len(unexpected)}): {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    bad = [f"{k}: {tuple(sd[k].shape)} != {s}" for k, s in expected.items() if tuple(sd[k].shape) != s]
    if bad:
        raise DnaBertSCheckpointError(f"{source}: tensor shapes do not match config.json: " + "; ".join(bad[:8]))
    return sd


def finish_dnabert_s(model: PackedDnaBertS, device, dtype) -> PackedDnaBertS:
    """On ``device`` in ``dtype``, eval mode, no grads."""
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def load_dnabert_s(model_dir: str | os.PathLike, *, device="cpu", dtype=torch.float32):
    """Loads a DNABERT-S Hugging Face directory (``config.json``, ``model.safetensors``
    or ``pytorch_model.bin``, ``tokenizer.json``) or a cached hub id.
    Returns ``(PackedDnaBertS in eval mode, DnaBertSTokenizer)``."""
    d = resolve_model_dir(model_dir)
    config_path = d / "config.json"
    weights = next((d / w for w in WEIGHT_FILES if (d / w).is_file()), None)
    tok_path = d / "tokenizer.json"
    missing = [name for name, ok in (("config.json", config_path.is_file()),
                                     (" or ".join(WEIGHT_FILES), weights is not None),
                                     ("tokenizer.json", tok_path.is_file())) if not ok]
    if missing:
        what = "is an empty directory" if not any(d.iterdir()) else f"lacks: {', '.join(missing)}"
        raise ModelNotFoundError(_how_to_get(
            f"model directory {str(d)!r} {what}: a DNABERT-S directory holds {EXPECTED_FILES}."))
    try:
        cfg = DnaBertSConfig.from_json(config_path)
    except (ValueError, TypeError, OSError) as e:  # JSON syntax, wrong field types, heads not dividing
        raise DnaBertSCheckpointError(f"{config_path}: not a usable DNABERT-S config.json "
                                      f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    with torch.device("meta"):
        model = PackedDnaBertS(cfg)
    sd = _check_state_dict(_read_state_dict(weights), model, weights)
    model.load_state_dict(sd, strict=True, assign=True)
    return finish_dnabert_s(model, device, dtype), DnaBertSTokenizer(tok_path)
