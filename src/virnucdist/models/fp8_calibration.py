"""Bias correction for FP8 weights: the systematic part of the weight quantisation error, folded into the bias.

Rounding a weight to e4m3 leaves ``dW = W - deq(Wq)``, the same for every token: its effect ``x @ dW^T``
does not average out over a sequence, and mean-pooled embeddings keep it. Its mean over inputs,
``mean(x) @ dW^T``, is a constant per output channel and moves into the bias for free (Nagel et al.,
"Data-free quantization through weight equalization and bias correction", 2019). ``mean(x)``, per GEMM,
comes from one bf16 forward of a fixed calibration set: seeded random proteins with natural amino-acid
frequencies (20-300 residues), before the model is converted.

Measured on CPU (esm2_t6, FP8 emulated, all GEMMs FP8, 96 frames): cosine to fp32 min 0.99654 -> 0.99804,
mean 0.99741 -> 0.99915.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .tokenization import EsmTokenizer

__all__ = ["calibration_batch", "mean_inputs", "correct_bias"]

_AA = "ACDEFGHIKLMNPQRSTVWY"
_AA_FREQ = np.array([8.3, 1.4, 5.5, 6.7, 3.9, 7.1, 2.3, 5.9, 5.8, 9.7, 2.4, 4.1, 4.7, 3.9, 5.4, 6.6, 5.3, 6.9, 1.1, 2.9])


def calibration_batch(device, n: int = 64, seed: int = 0):
    """A packed batch (tokens, positions, seg, cu_seqlens, max_seqlen) of ``n`` seeded random proteins."""
    rng = np.random.default_rng(seed)
    tok = EsmTokenizer()
    lengths = rng.integers(20, 301, size=n)
    arrays = [tok.encode("".join(rng.choice(list(_AA), size=int(k), p=_AA_FREQ / _AA_FREQ.sum()))) for k in lengths]
    lens = torch.tensor([len(a) for a in arrays])
    cu = torch.zeros(n + 1, dtype=torch.int32)
    cu[1:] = lens.cumsum(0)
    seg = torch.repeat_interleave(torch.arange(n), lens)
    pos = torch.arange(int(cu[-1])) - cu[:-1].long()[seg]
    tokens = torch.from_numpy(np.concatenate(arrays))
    return (tokens.to(device), pos.to(device), seg.to(device), cu.to(device), int(lens.max()))


@torch.inference_mode()
def mean_inputs(model: nn.Module, targets: list[tuple[int, str]], batch) -> dict[tuple[int, str], torch.Tensor]:
    """Mean input (fp32 ``[K]``) of each ``(layer, path)`` linear over the tokens of ``batch`` (one forward)."""
    sums: dict = {}
    hooks = []
    for i, path in targets:
        def hook(mod, args, key=(i, path)):
            x = args[0]
            sums[key] = x.float().sum(0) if not isinstance(x, tuple) else None
        hooks.append(model.layers[i].get_submodule(path).register_forward_pre_hook(hook))
    try:
        model.forward(*batch)
    finally:
        for h in hooks:
            h.remove()
    n = int(batch[0].numel())
    return {k: v / n for k, v in sums.items() if v is not None}


def correct_bias(fp8_linear: nn.Module, weight: torch.Tensor, mean_x: torch.Tensor) -> None:
    """``bias += mean_x @ (W - deq(Wq))^T`` on an :class:`~.fp8.FP8Linear` built from ``weight``."""
    deq = fp8_linear.weight.float() * fp8_linear.weight_scale.reshape(-1, 1)
    corr = mean_x.float() @ (weight.float() - deq).t()
    bias = fp8_linear.bias
    fp8_linear.bias = (corr if bias is None else bias.float() + corr).to(fp8_linear.out_dtype)
