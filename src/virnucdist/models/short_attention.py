"""Triton attention for short packed sequences (<= 128 tokens), with an optional ALiBi bias in fp32.

One program per (sequence, head) holds the whole sequence in one tile: ``S = q k^T`` accumulated in
fp32, ``S * scale - slope_h * |i - j|`` in fp32, a plain (not online) softmax in fp32, ``P v`` with
P rounded to the input dtype (as flash attention does; fp32 inputs: fp32 products, no tf32). q, k and v are read in place through their
strides (e.g. straight out of a fused qkv buffer ``[T, 3, H, D]``), the output is written packed:
no padding, no ``[B, H, L, L]`` bias tensor, no gathers. DNABERT-S's 150-500-bp reads are 35-130
tokens.
"""

from __future__ import annotations

import functools
import os

import torch

__all__ = ["short_attention", "MAX_LEN"]

MAX_LEN = 128
# Triton's interpreter (CPU tests) multiplies bf16 tiles wrongly: there the dots run in fp32
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@functools.lru_cache(maxsize=None)
def _kernel():
    try:
        import triton
        import triton.language as tl
    except Exception:
        return None

    @triton.jit
    def attn_kernel(q_ptr, k_ptr, v_ptr, o_ptr, cu_ptr, slopes_ptr, scale,
                    sq_t, sq_h, sk_t, sk_h, sv_t, sv_h, so_t, so_h,
                    HEAD_DIM: tl.constexpr, HAS_ALIBI: tl.constexpr, IEEE: tl.constexpr,
                    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
        b = tl.program_id(0)
        h = tl.program_id(1)
        start = tl.load(cu_ptr + b).to(tl.int64)
        n = tl.load(cu_ptr + b + 1).to(tl.int64) - start
        rows = tl.arange(0, BLOCK_L)
        d = tl.arange(0, BLOCK_D)
        mr = rows < n
        m2 = mr[:, None] & (d[None, :] < HEAD_DIM)
        tok = (start + rows)[:, None]
        q = tl.load(q_ptr + tok * sq_t + h * sq_h + d[None, :], mask=m2, other=0.0)
        k = tl.load(k_ptr + tok * sk_t + h * sk_h + d[None, :], mask=m2, other=0.0)
        v = tl.load(v_ptr + tok * sv_t + h * sv_h + d[None, :], mask=m2, other=0.0)
        if IEEE:
            q, k, v = q.to(tl.float32), k.to(tl.float32), v.to(tl.float32)
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = s * scale
        if HAS_ALIBI:
            slope = tl.load(slopes_ptr + h).to(tl.float32)
            dist = tl.abs(rows[:, None] - rows[None, :]).to(tl.float32)
            s = s - slope * dist
        s = tl.where(mr[None, :], s, float("-inf"))
        mx = tl.max(s, axis=1)
        p = tl.exp(s - mx[:, None])
        l = tl.sum(p, axis=1)
        if IEEE:
            o = tl.dot(p, v, input_precision="ieee")
        else:
            o = tl.dot(p.to(v.dtype), v)
        o = o / l[:, None]
        tl.store(o_ptr + tok * so_t + h * so_h + d[None, :], o.to(o_ptr.dtype.element_ty), mask=m2)

    return triton, attn_kernel


def available() -> bool:
    return _kernel() is not None


def short_attention(q, k, v, cu_seqlens, max_seqlen: int, scale: float, alibi: torch.Tensor | None = None):
    """Attention within each packed sequence of at most :data:`MAX_LEN` tokens.

    q, k, v: ``[T, H, D]`` (any strides with a unit last stride); ``alibi``: fp32 slopes ``[H]``.
    Returns a new contiguous ``[T, H, D]``.
    """
    if max_seqlen > MAX_LEN:
        raise ValueError(f"short_attention handles sequences up to {MAX_LEN} tokens, not {max_seqlen}")
    triton, kern = _kernel()
    t, heads, dim = q.shape
    out = torch.empty(t, heads, dim, device=q.device, dtype=q.dtype)
    b = cu_seqlens.numel() - 1
    if t == 0 or b == 0:
        return out
    block_l = max(16, triton.next_power_of_2(int(max_seqlen)))
    slopes = alibi.to(q.device, torch.float32) if alibi is not None else cu_seqlens
    kern[(b, heads)](q, k, v, out, cu_seqlens, slopes, float(scale),
                     q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                     out.stride(0), out.stride(1),
                     HEAD_DIM=dim, HAS_ALIBI=alibi is not None, IEEE=q.dtype == torch.float32 or _INTERPRET,
                     BLOCK_L=block_l, BLOCK_D=max(16, triton.next_power_of_2(dim)),
                     num_warps=8 if block_l >= 128 else 4)
    return out
