"""Rotary position embedding (ESM-2's rotate-half form) on packed q/k.

On CUDA a Triton kernel rotates q and k in place inside the fused qkv buffer,
one program per token, computing cos/sin from the token's position on the fly:
one read and one write of q and k, no cos/sin tables, no temporaries. Elsewhere
(CPU, no Triton) the same math runs as plain PyTorch.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["rotary_qk"]


@functools.lru_cache(maxsize=None)
def _kernel():
    try:
        import triton
        import triton.language as tl
    except Exception:
        return None

    @triton.jit
    def rotary_inplace(qkv_ptr, pos_ptr, inv_freq_ptr, row_stride, n_heads2,
                       HALF: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr):
        t = tl.program_id(0)
        d = tl.arange(0, BLOCK_D)  # BLOCK_D >= HALF: head dims like 24 (esm2_t12) are not powers of two
        angle = tl.load(inv_freq_ptr + d, mask=d < HALF, other=0.0) * tl.load(pos_ptr + t).to(tl.float32)
        c = tl.cos(angle)[None, :]
        s = tl.sin(angle)[None, :]
        h = tl.arange(0, BLOCK_H)[:, None]
        mask = (h < n_heads2) & (d[None, :] < HALF)
        ptr = qkv_ptr + t.to(tl.int64) * row_stride + h * (2 * HALF) + d[None, :]
        x1 = tl.load(ptr, mask=mask).to(tl.float32)
        x2 = tl.load(ptr + HALF, mask=mask).to(tl.float32)
        tl.store(ptr, (x1 * c - x2 * s).to(qkv_ptr.dtype.element_ty), mask=mask)
        tl.store(ptr + HALF, (x2 * c + x1 * s).to(qkv_ptr.dtype.element_ty), mask=mask)

    return triton, rotary_inplace


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotary_qk(qkv: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor,
              cos_sin: tuple[torch.Tensor, torch.Tensor] | None = None):
    """Rotate q and k of ``qkv [T, 3, H, D]``; returns ``(q, k, v)`` as ``[T, H, D]`` views or tensors.

    ``cos_sin``: precomputed ``([T, 1, D], [T, 1, D])`` tables for the PyTorch path (shared by all layers).
    """
    kern = _kernel() if qkv.is_cuda else None
    if kern is not None and qkv.is_contiguous():
        triton, rotary_inplace = kern
        t, _, heads, dim = qkv.shape
        rotary_inplace[(t,)](qkv, positions, inv_freq, qkv.stride(0), 2 * heads, HALF=dim // 2,
                             BLOCK_D=triton.next_power_of_2(dim // 2), BLOCK_H=triton.next_power_of_2(2 * heads),
                             num_warps=4)
        return qkv.unbind(1)
    cos, sin = cos_sin if cos_sin is not None else rotary_tables(positions, inv_freq, qkv.dtype)
    q, k, v = qkv.unbind(1)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin, v


def rotary_tables(positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype):
    freqs = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]  # [T, 1, D]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def uses_triton(device: torch.device) -> bool:
    return device.type == "cuda" and _kernel() is not None
