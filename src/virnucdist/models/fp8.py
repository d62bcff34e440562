"""FP8 (e4m3) inference for ESM-2's four layer GEMMs: qkv, out_proj, fc1, fc2 (opt-in, ``--dtype fp8``).

Weights: e4m3 with one fp32 scale per output channel, quantised once by :func:`to_fp8`.
Activations: e4m3 with one fp32 scale per token, produced by the kernel that computes them (the
fused add + LayerNorm kernel for qkv and fc1, the GELU kernel for fc2, a small quantisation kernel
for the attention output before out_proj; see :mod:`.fused`). The GEMM is
``torch._scaled_mm(a, w.t(), scale_a [T, 1], scale_b [1, N], out_dtype=bf16)`` with the bias in
its epilogue. Attention, LayerNorm statistics, the residual stream and pooling stay bf16 / fp32.

The model to convert is a bf16 :class:`~.esm2.PackedESM2` (``load_model(..., dtype=bf16)``, then
:func:`to_fp8`). On a GPU without FP8 tensor cores (compute capability < 8.9) or on CPU,
:func:`to_fp8` raises :class:`FP8UnsupportedError`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError
from .fused import _quant_ref, quant_rows

__all__ = ["fp8_supported", "to_fp8", "quantize_model", "FP8Linear", "FP8UnsupportedError", "FP8Policy",
           "POLICIES", "policy_from_env"]

#: ``use_fast_accum`` of ``torch._scaled_mm`` (skips the periodic fp32 promotion of the tensor-core
#: accumulator: faster, less exact over long K); off unless VIRNUCDIST_FP8_FAST_ACCUM=1.
FAST_ACCUM = os.environ.get("VIRNUCDIST_FP8_FAST_ACCUM", "0") == "1"

LINEARS = ("self_attn.qkv", "self_attn.out_proj", "fc1", "fc2")
SHORT = {"qkv": "self_attn.qkv", "out": "self_attn.out_proj", "fc1": "fc1", "fc2": "fc2"}


@dataclass(frozen=True)
class FP8Policy:
    """Which GEMMs run in FP8: the ``gemms`` (short names qkv, out, fc1, fc2) of every layer except the
    first ``bf16_first`` and the last ``bf16_last`` layers, which stay bf16 whole; ``fast_accum``: the
    GEMMs' ``use_fast_accum`` (None: VIRNUCDIST_FP8_FAST_ACCUM); ``bias_correction``: fold the mean weight
    quantisation error into the biases (:mod:`.fp8_calibration`; one bf16 calibration forward at conversion).

    Written as a string (``VIRNUCDIST_FP8_POLICY``, benchmarks): a name of :data:`POLICIES`, or
    ``gemms=qkv+fc1+fc2;first=2;last=2;fast=0;bc=1`` (any of the keys; missing: all four GEMMs, 0, 0, None, 0).
    """

    gemms: tuple[str, ...] = ("qkv", "out", "fc1", "fc2")
    bf16_first: int = 0
    bf16_last: int = 0
    fast_accum: bool | None = None
    bias_correction: bool = False

    def __post_init__(self):
        bad = [g for g in self.gemms if g not in SHORT]
        if bad or self.bf16_first < 0 or self.bf16_last < 0:
            raise ValueError(f"bad FP8 policy {self}: GEMMs are {', '.join(SHORT)}; layer counts >= 0")

    def __str__(self) -> str:
        fast = "" if self.fast_accum is None else f";fast={int(self.fast_accum)}"
        bc = ";bc=1" if self.bias_correction else ""
        return f"gemms={'+'.join(self.gemms)};first={self.bf16_first};last={self.bf16_last}{bc}{fast}"

    @classmethod
    def parse(cls, text: str) -> "FP8Policy":
        text = text.strip()
        if text in POLICIES:
            return POLICIES[text]
        kw: dict = {}
        try:
            for part in filter(None, text.split(";")):
                key, _, val = part.partition("=")
                key = key.strip()
                if key == "gemms":
                    kw["gemms"] = tuple(g for g in val.strip().split("+") if g)
                elif key in ("first", "last"):
                    kw[f"bf16_{key}"] = int(val)
                elif key == "fast" and val.strip() in ("0", "1"):
                    kw["fast_accum"] = val.strip() == "1"
                elif key == "bc" and val.strip() in ("0", "1"):
                    kw["bias_correction"] = val.strip() == "1"
                else:
                    raise ValueError(key)
            return cls(**kw)
        except ValueError:
            raise UserError(f"FP8 policy {text!r}: give one of {', '.join(POLICIES)} or "
                            f"'gemms=qkv+out+fc1+fc2;first=N;last=N;fast=0|1;bc=0|1'") from None

    def fp8_paths(self, layer: int, num_layers: int) -> tuple[str, ...]:
        """The module paths (within a layer) of the GEMMs that run in FP8 in ``layer`` (0-based)."""
        if layer < self.bf16_first or layer >= num_layers - self.bf16_last:
            return ()
        return tuple(SHORT[g] for g in self.gemms)


def _p(**kw) -> FP8Policy:
    return FP8Policy(**kw)


#: the policies the fidelity benchmark (benchmarks/fp8_policies.py) measures, by name. On random
#: weights the first layers' FP8 error is amplified most by the layers after them (CPU, 6-layer model:
#: FP8 in the first 2 layers only, cosine 0.9971; in the last 2 only, 0.9995), hence the bf16-first family.
#: CPU, esm2_t12 (emulated FP8, 96 frames), min cosine to fp32: all 0.99456, all-bc 0.99678, first2-bc
#: 0.99873, edges2-bc 0.99877, first4-bc 0.99919.
POLICIES: dict[str, FP8Policy] = {
    "all": _p(),
    "all-bc": _p(bias_correction=True),
    "first2": _p(bf16_first=2),
    "first2-bc": _p(bf16_first=2, bias_correction=True),
    "first4": _p(bf16_first=4),
    "first4-bc": _p(bf16_first=4, bias_correction=True),
    "first4-bc-fast": _p(bf16_first=4, fast_accum=True, bias_correction=True),
    "first6-bc": _p(bf16_first=6, bias_correction=True),
    "first8-bc": _p(bf16_first=8, bias_correction=True),
    "edges2-bc": _p(bf16_first=2, bf16_last=2, bias_correction=True),
    "late-half": _p(bf16_first=18),   # where the error comes from: FP8 in the last 18 layers only
    "early-half": _p(bf16_last=18),   # ... in the first 18 only
}

#: the policy of ``--dtype fp8`` (VIRNUCDIST_FP8_POLICY overrides it)
DEFAULT_POLICY = "first4-bc-fast"  # chosen on the H100 curve (RESULTS.md): 1.42x bf16, cos min 0.99902


def policy_from_env() -> FP8Policy:
    return FP8Policy.parse(os.environ.get("VIRNUCDIST_FP8_POLICY", DEFAULT_POLICY))



class FP8UnsupportedError(UserError, ValueError):
    """``--dtype fp8`` on a device without FP8 tensor cores (a user error: one line, exit code 2)."""


def fp8_supported(device) -> bool:
    """CUDA device of compute capability >= 8.9 (Ada, Hopper, Blackwell) with ``torch._scaled_mm``."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available() or not hasattr(torch, "_scaled_mm"):
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


def _describe(device) -> str:
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor})"
    return f"a {device.type.upper()} device"


def _scaled_mm_emulated(a, w, scale_a, scale_w, bias, out_dtype):
    """What ``torch._scaled_mm`` computes, in fp32 (CPU tests; exact dequantisation, fp32 products)."""
    out = (a.float() * scale_a) @ (w.float() * scale_w[:, None]).t()
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)


class FP8Linear(nn.Module):
    """``y = x @ W^T + b`` with W in e4m3 (per-output-channel scales) and x quantised per token.

    ``forward`` takes a bf16 ``[T, K]`` (quantised here, one kernel) or the ``(e4m3 [T, K],
    scale [T])`` pair a fused kernel emitted, and returns ``[T, N]`` in ``out_dtype``.
    """

    takes_fp8 = True
    _bias_in_epilogue: bool | None = None  # learnt on the first CUDA call (torch versions differ)

    def __init__(self, linear: nn.Linear, out_dtype=torch.bfloat16, fast_accum: bool | None = None):
        super().__init__()
        self.fast_accum = FAST_ACCUM if fast_accum is None else bool(fast_accum)
        w = linear.weight.detach()
        q, scale = _quant_ref(w)  # per output channel = per row of W [N, K]
        self.register_buffer("weight", q)
        self.register_buffer("weight_scale", scale.reshape(1, -1))  # [1, N], as _scaled_mm's scale_b
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(out_dtype))
        self.out_dtype = out_dtype
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, e4m3 per-channel x per-token"

    def forward(self, x):
        a, sa = x if isinstance(x, tuple) else quant_rows(x)
        sa = sa.reshape(-1, 1)
        if not a.is_cuda:
            return _scaled_mm_emulated(a, self.weight, sa, self.weight_scale[0], self.bias, self.out_dtype)
        cls = type(self)
        if cls._bias_in_epilogue is not False:
            try:
                out = torch._scaled_mm(a, self.weight.t(), scale_a=sa, scale_b=self.weight_scale, bias=self.bias,
                                       out_dtype=self.out_dtype, use_fast_accum=self.fast_accum)
                cls._bias_in_epilogue = True
                return out
            except (RuntimeError, NotImplementedError, TypeError, ValueError):
                if cls._bias_in_epilogue:
                    raise
                cls._bias_in_epilogue = False
        out = torch._scaled_mm(a, self.weight.t(), scale_a=sa, scale_b=self.weight_scale,
                               out_dtype=self.out_dtype, use_fast_accum=self.fast_accum)
        return out if self.bias is None else out.add_(self.bias)


@torch.no_grad()  # a conversion: nothing here is for autograd (the calibration forward yields inference tensors)
def quantize_model(model: nn.Module, policy: FP8Policy | str | None = None) -> nn.Module:
    """Replace the layer GEMMs that ``policy`` names (default: :func:`policy_from_env`) by
    :class:`FP8Linear` (in place; no device check). The model records the policy as ``fp8_policy``."""
    layers = getattr(model, "layers", None)
    if layers is None:
        raise TypeError(f"FP8 conversion needs a PackedESM2 (ESM-2), not {type(model).__name__}")
    policy = policy_from_env() if policy is None else FP8Policy.parse(policy) if isinstance(policy, str) else policy
    model.fp8_policy = str(policy)
    targets = [(i, path) for i, layer in enumerate(layers) for path in policy.fp8_paths(i, len(layers))
               if isinstance(layer.get_submodule(path), nn.Linear)]
    means = {}
    if policy.bias_correction and targets:
        from .fp8_calibration import calibration_batch, mean_inputs

        means = mean_inputs(model, targets, calibration_batch(next(model.parameters()).device))
    for i, path in targets:
        layer = layers[i]
        parent_name, _, attr = path.rpartition(".")
        parent = layer.get_submodule(parent_name) if parent_name else layer
        lin = getattr(parent, attr)
        f = FP8Linear(lin, out_dtype=lin.weight.dtype if lin.weight.dtype != torch.float32 else torch.bfloat16,
                      fast_accum=policy.fast_accum)
        if (i, path) in means:
            from .fp8_calibration import correct_bias

            correct_bias(f, lin.weight, means[(i, path)])
        setattr(parent, attr, f)
    return model


def require_fp8(device) -> None:
    """One clear error (before any model is loaded) when ``device`` cannot run ``--dtype fp8``."""
    if not fp8_supported(device):
        raise FP8UnsupportedError(
            "--dtype fp8 needs a GPU with FP8 tensor cores (compute capability >= 8.9, e.g. H100); "
            f"this is {_describe(device)}. Use --dtype bf16.")


def to_fp8(model: nn.Module, policy: FP8Policy | str | None = None) -> nn.Module:
    """``--dtype fp8``: a bf16 PackedESM2 on an FP8-capable GPU -> its FP8 version (see :class:`FP8Policy`)."""
    require_fp8(next(model.parameters()).device)
    if getattr(model, "layers", None) is None:
        raise FP8UnsupportedError("--dtype fp8 is implemented for ESM-2 only (DNABERT-S runs in bf16/fp16)")
    return quantize_model(model, policy)

