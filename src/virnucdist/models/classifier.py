"""VirNucPro's MLP classifier and a safe loader for its published checkpoints.

The published ``300_model.pth`` / ``500_model.pth`` are WHOLE PICKLED MODULES
(``torch.save(model)`` from a training script whose ``__main__`` defines
``MLPClassifier``). :func:`load_classifier` reads them with
``torch.load(weights_only=True)``: only the handful of globals such a file needs are
allow-listed (``__main__.MLPClassifier`` is mapped onto our own class), so a file
that asks for anything else (``os.system``...) is refused before any of it runs.
The weights are then copied into a fresh :class:`MLPClassifier` with a strict
``load_state_dict``; no unpickled object survives the load. Plain state dicts
(``.pth``/``.pt``) and ``.safetensors`` files are read too. The input width is read
from the weights (3328 for VirNucPro's own; any width for a classifier trained on
other models); ``expected_input_dim`` checks it against the models in use.

Random classifiers (predict's demo without ``--classifier``) are in :mod:`.random_init`; the writer
of original-style pickles is a test helper (``tests/_formats.py``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from .errors import CheckpointError, ModelNotFoundError, torch_error_line

__all__ = [
    "INPUT_DIM",
    "HIDDEN_DIM",
    "NUM_CLASSES",
    "MLPClassifier",
    "load_classifier",
    "classifier_chunk_size_hint",
    "check_input_dim",
    "ClassifierError",
]

INPUT_DIM = 3328  # DNABERT-S 768 + ESM-2 3B 2560
HIDDEN_DIM = 512
NUM_CLASSES = 2  # 0 = others, 1 = virus


class MLPClassifier(nn.Module):
    """Linear(3328->512) -> BatchNorm1d(512) -> ReLU -> Dropout(0.5) -> Linear(512->2).

    Attribute names match the original, so state-dict keys are ``hidden_layer.*``,
    ``bn1.*`` and ``output_layer.*``. Returns logits; softmax them for scores.
    """

    def __init__(self, input_dim: int = INPUT_DIM, hidden_dim: int = HIDDEN_DIM, num_class: int = NUM_CLASSES):
        super().__init__()
        self.hidden_layer = nn.Linear(input_dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(0.5)
        self.output_layer = nn.Linear(hidden_dim, num_class)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hidden_layer(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.dropout(x)
        return self.output_layer(x)


# Exactly what a pickled original module references (found with
# torch.serialization.get_unsafe_globals_in_checkpoint); tensors, parameters and
# OrderedDicts are allowed by torch's weights_only unpickler already.
_PICKLE_GLOBALS: list = [
    (MLPClassifier, "__main__.MLPClassifier"),
    nn.Linear,
    nn.BatchNorm1d,
    nn.ReLU,
    nn.Dropout,
]

_EXPECTED = (
    f"a VirNucPro MLP classifier (hidden_layer N->{HIDDEN_DIM}, bn1 {HIDDEN_DIM}, "
    f"output_layer {HIDDEN_DIM}->{NUM_CLASSES}; N = {INPUT_DIM} for VirNucPro's own)"
)


class ClassifierError(CheckpointError):
    """The classifier file is unsafe, unreadable, or not VirNucPro's MLP (or not sized to the models)."""


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as fh:
        head = fh.read(9)
    # safetensors: 8-byte little-endian header length, then a JSON object.
    return len(head) == 9 and head[8:9] == b"{"


def _state_dict_from_object(obj: object, path: Path) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
        if all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            if obj and all(k.startswith("module.") for k in obj):  # saved from DataParallel/DDP
                obj = {k[len("module."):]: v for k, v in obj.items()}
            return obj
    raise ClassifierError(
        f"{path}: holds a {type(obj).__name__}, not {_EXPECTED} nor its state dict; "
        "pass VirNucPro's 300_model.pth/500_model.pth or a state dict of that model"
    )


def _load_torch_file(path: Path) -> object:
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if not (magic.startswith(b"PK\x03\x04") or magic.startswith(b"\x80")):  # zip or legacy pickle
        raise ClassifierError(
            f"{path}: not a PyTorch checkpoint; pass VirNucPro's 300_model.pth/500_model.pth, "
            "a state dict (.pth/.pt) or a .safetensors file"
        )
    try:
        with torch.serialization.safe_globals(_PICKLE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - turned into one clear message
        m = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if m:
            raise ClassifierError(
                f"{path}: refused to load: the pickle needs the global '{m.group(1)}', which is not part "
                f"of {_EXPECTED}. Only VirNucPro's own checkpoints are unpickled; if you trust this file, "
                "save its state_dict() (or a .safetensors file) and pass that instead"
            ) from None
        raise ClassifierError(
            f"{path}: not a readable PyTorch checkpoint ({torch_error_line(exc)}); pass VirNucPro's "
            "300_model.pth/500_model.pth, a state dict (.pth/.pt) or a .safetensors file"
        ) from None


def _dims(state: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """``(input, hidden)`` widths of the weights (``train --hidden-dim`` makes other hidden widths)."""
    w = state.get("hidden_layer.weight")
    if isinstance(w, torch.Tensor) and w.ndim == 2:
        return int(w.shape[1]), int(w.shape[0])
    return INPUT_DIM, HIDDEN_DIM


def load_classifier(path: str | os.PathLike, expected_input_dim: int | tuple[int, int] | None = None) -> MLPClassifier:
    """Load a classifier from a pickled original module, a state dict or a .safetensors file.

    Returns a fresh :class:`MLPClassifier` in eval mode on the CPU, as wide as its weights
    (``hidden_layer``'s input and output). With ``expected_input_dim`` (the models' ``(DNABERT-S dim,
    ESM-2 dim)``, or their sum), a classifier of another width is refused in one line naming both.
    Raises a :class:`~virnucdist.models.errors.ModelNotFoundError` (a ``FileNotFoundError``)
    for a missing file and a :class:`ClassifierError` (a ``ValueError``), naming the file
    and what to do, for anything else: a pickle needing other globals, a file that is not
    a checkpoint, weights of another shape. Both are ``UserError``s.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(
            f"{path}: classifier file not found; pass the path of VirNucPro's 300_model.pth or 500_model.pth"
        )
    if _is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ClassifierError(f"{path}: not a readable .safetensors file ({' '.join(str(exc).split())[:200]})"
                                  ) from None
    else:
        state = _state_dict_from_object(_load_torch_file(path), path)
    model = MLPClassifier(*_dims(state))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        if len(detail) > 400:
            detail = detail[:400] + "..."
        raise ClassifierError(f"{path}: these weights do not fit {_EXPECTED}: {detail}") from None
    if expected_input_dim is not None:
        check_input_dim(model, expected_input_dim, path)
    return model.eval()


def _esm_size(width: int) -> str:
    """ESM-2 width -> its published name(s), e.g. 1280 -> 'esm2_t33_650M_UR50D'."""
    from .esm2 import ESM2_ARCHS

    names = [n for n, (_, d, _) in ESM2_ARCHS.items() if d == width]
    return f"ESM-2 width {width} ({' / '.join(names)})" if names else f"ESM-2 width {width} (no published ESM-2 size)"


def check_input_dim(model: MLPClassifier, expected: int | tuple[int, int], path: str | os.PathLike) -> None:
    """One clear line if ``model`` does not take ``expected`` values per frame (the models'
    ``(DNABERT-S dim, ESM-2 dim)`` or their sum). With the pair, the line names both ESM-2
    sizes: the one the classifier was trained on (assuming the same DNABERT-S) and the one given."""
    have = model.hidden_layer.in_features
    if isinstance(expected, tuple):
        dna, esm = expected
        if have == dna + esm:
            return
        wants = _esm_size(have - dna) if have > dna else f"{have} values (fewer than DNABERT-S's {dna})"
        raise ClassifierError(
            f"{path}: this classifier takes {have} values per frame = DNABERT-S {dna} + {wants}, but "
            f"--esm-model gives {dna} + {esm} = {dna + esm}: {_esm_size(esm)}. Use the ESM-2 the classifier was "
            f"trained with, or train one for this model (virnucdist train); VirNucPro's own take {INPUT_DIM} "
            f"(DNABERT-S 768 + esm2_t36_3B_UR50D 2560)")
    if have != expected:
        raise ClassifierError(
            f"{path}: this classifier takes {have} values per frame, but the models give {expected} "
            f"(DNABERT-S + ESM-2); VirNucPro's classifiers take {INPUT_DIM} (DNABERT-S 768 + esm2_t36_3B_UR50D "
            f"2560): use those models, or a classifier sized to yours")


def classifier_chunk_size_hint(path: str | os.PathLike) -> int | None:
    """Chunk size a classifier file was trained for: from the ``metrics.json`` that ``virnucdist train``
    writes beside it, else guessed from its name (``300_model``/``500_model``)."""
    metrics = Path(path).parent / "metrics.json"
    if metrics.is_file():
        import json

        try:
            pieces = json.loads(metrics.read_text())["pieces"]
            size = pieces.get("window") or pieces.get("chunk_size")
            if isinstance(size, int):
                return size
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
    name = Path(path).name
    for size in (300, 500):
        if f"{size}_model" in name:
            return size
    return None
