"""Writers of the real on-disk formats, for tests and benchmarks (random weights: models/random_init.py).

* :func:`save_fair_esm_checkpoint`: fair-esm's ``.pt`` layout;
* :func:`save_hf_dir`: a DNABERT-S Hugging Face directory like the published one;
* :func:`save_random_classifier`: VirNucPro's classifier written like the original ``train.py`` does
  (a whole pickled module), or as a state dict / safetensors.

Tests import it as ``_formats`` (tests/ is on pytest's path); benchmarks add tests/ to ``sys.path``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from virnucdist.models.classifier import HIDDEN_DIM, INPUT_DIM, NUM_CLASSES
from virnucdist.models.dnabert_s import PackedDnaBertS
from virnucdist.models.esm2 import ESM2Config, PackedESM2
from virnucdist.models.random_init import random_classifier, random_state_dict
from virnucdist.models.tokenization import PACKAGED_TOKENIZER, DnaBertSTokenizer

__all__ = ["save_fair_esm_checkpoint", "save_hf_dir", "save_random_classifier"]


def save_fair_esm_checkpoint(model: PackedESM2 | nn.Module, path: str | Path, cfg: ESM2Config | None = None) -> Path:
    """Write weights in fair-esm's on-disk format (``encoder.sentence_encoder.`` prefix, Namespace cfg).

    Accepts a :class:`PackedESM2` (q/k/v split back out) or a fair-esm ``ESM2``.
    """
    if isinstance(model, PackedESM2):
        cfg = model.cfg
        state = {}
        for k, v in model.state_dict().items():
            if ".self_attn.qkv." in k:
                q, kk, vv = v.chunk(3)
                for p, t in zip("qkv", (q, kk, vv)):
                    state[k.replace(".qkv.", f".{p}_proj.")] = t.clone()
            else:
                state[k] = v
    else:
        state = dict(model.state_dict())
        cfg = cfg or ESM2Config(model.num_layers, model.embed_dim, model.attention_heads, model.token_dropout)
    ns = argparse.Namespace(encoder_layers=cfg.num_layers, encoder_embed_dim=cfg.embed_dim,
                            encoder_attention_heads=cfg.attention_heads, token_dropout=cfg.token_dropout)
    payload = {"model": {f"encoder.sentence_encoder.{k}": v.detach().float().cpu() for k, v in state.items()},
               "cfg": {"model": ns}, "args": None}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


_TOKENIZER_CONFIG = {
    "clean_up_tokenization_spaces": True,
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
    "model_max_length": 1000000000000000019884624838656,
    "pad_token": "[PAD]",
    "sep_token": "[SEP]",
    "tokenizer_class": "PreTrainedTokenizerFast",
    "unk_token": "[UNK]",
}
_SPECIAL_TOKENS_MAP = {"cls_token": "[CLS]", "mask_token": "[MASK]", "pad_token": "[PAD]",
                       "sep_token": "[SEP]", "unk_token": "[UNK]"}


def save_hf_dir(model: PackedDnaBertS, out_dir: str | os.PathLike, fmt: str = "safetensors",
                tokenizer: DnaBertSTokenizer | None = None) -> Path:
    """Writes ``model`` as a DNABERT-S Hugging Face directory (fp32 weights as
    ``model.safetensors`` or ``pytorch_model.bin``, config.json, tokenizer files)."""
    if fmt not in ("safetensors", "bin"):
        raise ValueError(f"fmt must be 'safetensors' or 'bin', not {fmt!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "config.json", "w") as f:
        json.dump(model.config.to_hf_json(), f, indent=2)
    sd = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(sd, out / "pytorch_model.bin")
    shutil.copyfile(tokenizer.path if tokenizer else PACKAGED_TOKENIZER, out / "tokenizer.json")
    with open(out / "tokenizer_config.json", "w") as f:
        json.dump(_TOKENIZER_CONFIG, f, indent=2)
    with open(out / "special_tokens_map.json", "w") as f:
        json.dump(_SPECIAL_TOKENS_MAP, f, indent=2)
    return out


# VirNucPro's classifier class as its train.py and prediction.py define it (in __main__).
VIRNUCPRO_MLP_SOURCE = r'''
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
'''

# Written the way VirNucPro's train.py does it: the class lives in __main__ and the
# whole module is pickled. Optionally saves a probe input and its eval-mode logits.
_PICKLE_WRITER = VIRNUCPRO_MLP_SOURCE + r'''
import sys
import torch


weights, out, probe, seed, input_dim, hidden, classes = sys.argv[1:4] + [int(a) for a in sys.argv[4:8]]
model = MLPClassifier(input_dim, hidden, classes)
model.load_state_dict(torch.load(weights, weights_only=True))
if probe != "-":
    model.eval()
    x = torch.randn(8, input_dim, generator=torch.Generator().manual_seed(seed + 1))
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
    input_dim: int = INPUT_DIM,
) -> Path:
    """Write a seeded random classifier for tests and demos; returns ``path``.

    ``fmt="pickle"`` writes the file exactly as the original train.py does, from a
    subprocess whose ``__main__`` defines ``MLPClassifier`` (``torch.save(model)``).
    The same ``seed`` gives the same weights in every format. With ``probe_path``,
    a tensor dict ``{"x": [8, input_dim], "logits": [8, 2]}`` is saved too: a seeded
    input and the eval-mode logits computed by the model that was written (for
    ``pickle``, inside the subprocess by the original-style class).
    """
    path = Path(path)
    state = random_state_dict(seed, input_dim)
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
                [sys.executable, "-c", _PICKLE_WRITER, str(weights), str(path), probe, str(seed), str(input_dim),
                 str(HIDDEN_DIM), str(NUM_CLASSES)],
                check=True,
            )
        return path
    else:
        raise ValueError(f"unknown classifier format {fmt!r}; use 'pickle', 'state_dict' or 'safetensors'")
    if probe_path is not None:
        model = random_classifier(input_dim, seed)
        x = torch.randn(8, input_dim, generator=torch.Generator().manual_seed(seed + 1))
        with torch.no_grad():
            torch.save({"x": x, "logits": model(x)}, probe_path)
    return path
