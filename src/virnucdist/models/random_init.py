"""Seeded random weights: ``--random-init`` (demos, tests, benchmarks) and a small DNABERT-S for CPU demos.

* ESM-2: :func:`random_esm2` (any architecture of :data:`~.esm2.ESM2_ARCHS`, built on the device).
* DNABERT-S: :func:`random_dnabert_s`, :data:`DNABERT_S_TINY` (``--model dnabert-s-tiny --random-init``).
* VirNucPro's classifier: :func:`random_state_dict`, :func:`random_classifier` (any input width, e.g.
  DNABERT-S-tiny 128 + ESM-2 t6 320: predict's demo without ``--classifier``).

The same seed gives the same weights on every run. Writers of the real on-disk formats (fair-esm
``.pt``, a Hugging Face directory, VirNucPro's pickled classifier) are test helpers: ``tests/_formats.py``.
"""

from __future__ import annotations

import torch

from .classifier import INPUT_DIM, MLPClassifier
from .dnabert_s import DnaBertSConfig, PackedDnaBertS
from .dnabert_s_loading import finish_dnabert_s
from .esm2 import ESM2Config, PackedESM2, rotary_inv_freq
from .tokenization import PACKAGED_TOKENIZER, DnaBertSTokenizer

__all__ = ["DNABERT_S_TINY", "random_esm2", "random_dnabert_s", "random_state_dict", "random_classifier"]

# --------------------------------------------------------------------------- ESM-2


def random_esm2(cfg: ESM2Config, seed: int, device="cpu", dtype=torch.float32) -> PackedESM2:
    """Seeded random weights, built directly on ``device`` (no 11 GB fp32 CPU copy for the 3B)."""
    device = torch.device(device)
    with torch.device("meta"):
        module = PackedESM2(cfg)
    module = module.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "layer_norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
        module.inv_freq = rotary_inv_freq(cfg, device)
    module = module.to(dtype)
    module.inv_freq = module.inv_freq.float()
    return module.requires_grad_(False)


# --------------------------------------------------------------------------- DNABERT-S

#: A small DNABERT-S (random weights only) for demos on a laptop CPU: ``--model dnabert-s-tiny
#: --random-init``. Same tokenizer and layer structure as the real one (768 wide, 12 layers).
DNABERT_S_TINY = DnaBertSConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512)


def random_dnabert_s(seed: int = 0, *, config: DnaBertSConfig | None = None,
                     device="cpu", dtype=torch.float32) -> tuple[PackedDnaBertS, DnaBertSTokenizer]:
    """Random BERT-initialised weights (normal(0, initializer_range) for linear and
    embedding weights, zero biases, LayerNorm 1/0) with the packaged tokenizer."""
    cfg = config or DnaBertSConfig()
    with torch.device("meta"):
        model = PackedDnaBertS(cfg)
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, p in model.state_dict().items():
        if ".LayerNorm." in name or ".layernorm." in name:
            t = torch.ones(p.shape) if name.endswith("weight") else torch.zeros(p.shape)
        elif name.endswith("bias"):
            t = torch.zeros(p.shape)
        else:
            t = torch.empty(p.shape).normal_(0.0, cfg.initializer_range, generator=gen)
        sd[name] = t
    model.load_state_dict(sd, strict=True, assign=True)
    return finish_dnabert_s(model, device, dtype), DnaBertSTokenizer(PACKAGED_TOKENIZER)


# --------------------------------------------------------------------------- classifier


def random_state_dict(seed: int, input_dim: int = INPUT_DIM) -> dict[str, torch.Tensor]:
    """Seeded random weights for :class:`MLPClassifier` (``input_dim`` wide), BN running stats non-trivial."""
    g = torch.Generator().manual_seed(seed)
    model = MLPClassifier(input_dim)
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000, dtype=value.dtype)
        elif key.endswith("running_var") or key == "bn1.weight":
            state[key] = 0.5 + torch.rand(value.shape, generator=g)
        else:
            state[key] = 0.05 * torch.randn(value.shape, generator=g)
    return state


def random_classifier(input_dim: int = INPUT_DIM, seed: int = 0) -> MLPClassifier:
    """A seeded random classifier in eval mode, e.g. ``input_dim = 128 + 320`` for
    DNABERT-S-tiny + esm2_t6_8M_UR50D (a CPU demo of predict)."""
    model = MLPClassifier(input_dim)
    model.load_state_dict(random_state_dict(seed, input_dim))
    return model.eval()
