"""VirNucPro's MLP classifier and a safe loader for its published checkpoints.

The published ``300_model.pth`` / ``500_model.pth`` are WHOLE PICKLED MODULES
(``torch.save(model)`` from a training script whose ``__main__`` defines
``MLPClassifier``). :func:`load_classifier` reads them with
``torch.load(weights_only=True)``: only the handful of globals such a file needs are
allow-listed (``__main__.MLPClassifier`` is mapped onto our own class), so a file
that asks for anything else (``os.system``...) is refused before any of it runs.
The weights are then copied into a fresh :class:`MLPClassifier` with a strict
``load_state_dict``; no unpickled object survives the load. Plain state dicts
(``.pth``/``.pt``) and ``.safetensors`` files are read too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal, Mapping

import torch
from torch import nn

__all__ = [
    "INPUT_DIM",
    "HIDDEN_DIM",
    "NUM_CLASSES",
    "MLPClassifier",
    "load_classifier",
    "classifier_chunk_size_hint",
    "random_state_dict",
    "save_random_classifier",
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
    f"a VirNucPro MLP classifier (hidden_layer {INPUT_DIM}->{HIDDEN_DIM}, bn1 {HIDDEN_DIM}, "
    f"output_layer {HIDDEN_DIM}->{NUM_CLASSES})"
)


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
    raise ValueError(
        f"{path}: holds a {type(obj).__name__}, not {_EXPECTED} nor its state dict; "
        "pass VirNucPro's 300_model.pth/500_model.pth or a state dict of that model"
    )


def _load_torch_file(path: Path) -> object:
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if not (magic.startswith(b"PK\x03\x04") or magic.startswith(b"\x80")):  # zip or legacy pickle
        raise ValueError(
            f"{path}: not a PyTorch checkpoint; pass VirNucPro's 300_model.pth/500_model.pth, "
            "a state dict (.pth/.pt) or a .safetensors file"
        )
    try:
        with torch.serialization.safe_globals(_PICKLE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - turned into one clear message
        msg = str(exc)
        m = re.search(r"GLOBAL ([\w.]+)", msg)
        if m:
            raise ValueError(
                f"{path}: refused to load: the pickle needs the global '{m.group(1)}', which is not part "
                f"of {_EXPECTED}. Only VirNucPro's own checkpoints are unpickled; if you trust this file, "
                "save its state_dict() (or a .safetensors file) and pass that instead"
            ) from None
        lines = [ln.strip() for ln in msg.splitlines() if ln.strip() and not ln.startswith(("Weights only", "Check the"))]
        detail = lines[-1] if lines else type(exc).__name__
        raise ValueError(
            f"{path}: not a readable PyTorch checkpoint ({detail}); pass VirNucPro's "
            "300_model.pth/500_model.pth, a state dict (.pth/.pt) or a .safetensors file"
        ) from None


def load_classifier(path: str | os.PathLike) -> MLPClassifier:
    """Load a classifier from a pickled original module, a state dict or a .safetensors file.

    Returns a fresh :class:`MLPClassifier` in eval mode on the CPU.
    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` (naming the
    file and what to do) for anything else: a pickle needing other globals, a file
    that is not a checkpoint, or weights of another shape.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: classifier file not found; pass the path of VirNucPro's 300_model.pth or 500_model.pth"
        )
    if _is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a readable .safetensors file ({exc})") from None
    else:
        state = _state_dict_from_object(_load_torch_file(path), path)
    model = MLPClassifier()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        if len(detail) > 400:
            detail = detail[:400] + "..."
        raise ValueError(f"{path}: these weights do not fit {_EXPECTED}: {detail}") from None
    return model.eval()


def classifier_chunk_size_hint(path: str | os.PathLike) -> int | None:
    """Chunk size a classifier file was trained for, guessed from its name (``300_model``/``500_model``)."""
    name = Path(path).name
    for size in (300, 500):
        if f"{size}_model" in name:
            return size
    return None


def random_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """Seeded random weights for :class:`MLPClassifier`, BN running stats non-trivial."""
    g = torch.Generator().manual_seed(seed)
    model = MLPClassifier()
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000, dtype=value.dtype)
        elif key.endswith("running_var") or key == "bn1.weight":
            state[key] = 0.5 + torch.rand(value.shape, generator=g)
        else:
            state[key] = 0.05 * torch.randn(value.shape, generator=g)
    return state


# Written the way VirNucPro's train.py does it: the class lives in __main__ and the
# whole module is pickled. Optionally saves a probe input and its eval-mode logits.
_PICKLE_WRITER = r'''
import sys
import torch
import torch.nn as nn


class MLPClassifier(nn.Module):
    def __init__(self, input_dim, hidden_dim, num_class):
        super(MLPClassifier, self).__init__()
        self.hidden_layer = nn.Linear(input_dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(0.5)
        self.output_layer = nn.Linear(hidden_dim, num_class)

    def forward(self, x):
        x = self.hidden_layer(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.dropout(x)
        x = self.output_layer(x)
        return x


weights, out, probe, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
model = MLPClassifier(3328, 512, 2)
model.load_state_dict(torch.load(weights, weights_only=True))
if probe != "-":
    model.eval()
    x = torch.randn(8, 3328, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        logits = model(x)
    torch.save({"x": x, "logits": logits}, probe)
model.train()  # as left at the end of a training loop; loaders must set eval mode
torch.save(model, out)
'''


def save_random_classifier(
    path: str | os.PathLike,
    seed: int = 0,
    fmt: Literal["pickle", "state_dict", "safetensors"] = "pickle",
    probe_path: str | os.PathLike | None = None,
) -> Path:
    """Write a seeded random classifier for tests and demos; returns ``path``.

    ``fmt="pickle"`` writes the file exactly as the original train.py does, from a
    subprocess whose ``__main__`` defines ``MLPClassifier`` (``torch.save(model)``).
    The same ``seed`` gives the same weights in every format. With ``probe_path``,
    a tensor dict ``{"x": [8, 3328], "logits": [8, 2]}`` is saved too: a seeded input
    and the eval-mode logits computed by the model that was written (for ``pickle``,
    inside the subprocess by the original-style class).
    """
    path = Path(path)
    state = random_state_dict(seed)
    if fmt == "state_dict":
        torch.save(state, path)
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    elif fmt == "pickle":
        with tempfile.TemporaryDirectory() as tmp:
            weights = Path(tmp) / "weights.pt"
            torch.save(state, weights)
            probe = str(probe_path) if probe_path is not None else "-"
            subprocess.run(
                [sys.executable, "-c", _PICKLE_WRITER, str(weights), str(path), probe, str(seed)],
                check=True,
            )
        return path
    else:
        raise ValueError(f"unknown classifier format {fmt!r}; use 'pickle', 'state_dict' or 'safetensors'")
    if probe_path is not None:
        model = MLPClassifier()
        model.load_state_dict(state)
        model.eval()
        x = torch.randn(8, INPUT_DIM, generator=torch.Generator().manual_seed(seed + 1))
        with torch.no_grad():
            torch.save({"x": x, "logits": model(x)}, probe_path)
    return path
