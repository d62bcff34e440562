"""Variable-length (packed) attention: the one place that picks a kernel.

Models call :func:`varlen_attention` with packed ``[T, H, D]`` tensors and
``cu_seqlens``; they never know which kernel ran. Order of preference:

* CUDA, no bias: ``flash_attn.flash_attn_varlen_func`` when importable, else
  PyTorch's ``torch.nn.attention.varlen.varlen_attn``.
* CUDA, ALiBi: ``flash_attn_varlen_func(alibi_slopes=...)`` when importable,
  else FlexAttention with a document mask and an ALiBi ``score_mod``.
* CPU (or anything else): SDPA over a padded view with a key mask (and an
  additive ALiBi bias), which equals block-diagonal attention on the packed
  tokens. Padding only exists inside this fallback.

All kernels accumulate in fp32 internally.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

__all__ = ["varlen_attention", "kernel_name", "alibi_slopes"]


@functools.lru_cache(maxsize=None)
def _flash_attn():
    if os.environ.get("VIRNUCDIST_NO_FLASH_ATTN"):
        return None
    try:
        from flash_attn import flash_attn_varlen_func  # type: ignore

        return flash_attn_varlen_func
    except Exception:
        return None


@functools.lru_cache(maxsize=None)
def _torch_varlen():
    try:
        from torch.nn.attention.varlen import varlen_attn

        return varlen_attn
    except Exception:
        return None


def kernel_name(device: torch.device | str, alibi: bool = False) -> str:
    """Name of the kernel :func:`varlen_attention` uses on ``device``."""
    if torch.device(device).type != "cuda":
        return "sdpa-padded"
    if _flash_attn() is not None:
        return "flash_attn"
    if alibi:
        return "flex_attention"
    if _torch_varlen() is not None:
        return "torch_varlen"
    return "sdpa-padded"


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi head slopes as in MosaicBERT / DNABERT-2 (``_get_alibi_head_slopes``)."""
    import math

    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        slopes = power_of_2(n_heads)
    else:
        closest = 2 ** math.floor(math.log2(n_heads))
        slopes = power_of_2(closest) + power_of_2(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    *,
    scale: float | None = None,
    alibi: torch.Tensor | None = None,
) -> torch.Tensor:
    """Self-attention within each packed sequence.

    q, k, v: ``[T, H, D]``; cu_seqlens: int32 ``[B+1]``; alibi: optional fp32
    slopes ``[H]`` for a symmetric bias ``-slope * |i - j|``. Returns ``[T, H, D]``.
    """
    if q.is_cuda:
        fa = _flash_attn()
        if fa is not None:
            return fa(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                      softmax_scale=scale, alibi_slopes=alibi)
        if alibi is not None:
            return _flex_alibi(q, k, v, cu_seqlens, scale, alibi)
        tv = _torch_varlen()
        if tv is not None:
            return tv(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, scale=scale)
    return _sdpa_padded(q, k, v, cu_seqlens, max_seqlen, scale, alibi)


def _sdpa_padded(q, k, v, cu_seqlens, max_seqlen, scale, alibi):
    total, heads, dim = q.shape
    n = cu_seqlens.numel() - 1
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    starts = cu_seqlens[:-1].long()
    pos = torch.arange(max_seqlen, device=q.device)
    valid = pos[None, :] < lengths[:, None]  # [B, L]
    src = (starts[:, None] + pos[None, :]).clamp(max=max(total - 1, 0))  # [B, L]

    def pad(x):
        return x[src].transpose(1, 2)  # [B, H, L, D]

    mask = valid[:, None, None, :]  # keys only: padded queries are dropped below
    if alibi is not None:
        rel = (pos[None, :] - pos[:, None]).abs().to(torch.float32)  # [L, L]
        bias = -alibi.to(q.device, torch.float32)[:, None, None] * rel  # [H, L, L]
        mask = torch.where(mask, bias[None].to(q.dtype), torch.finfo(q.dtype).min)
    out = F.scaled_dot_product_attention(pad(q), pad(k), pad(v), attn_mask=mask, scale=scale)
    return out.transpose(1, 2)[valid]  # [T, H, D]


_FLEX_CACHE: dict = {}


def _flex_alibi(q, k, v, cu_seqlens, scale, alibi):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    total = q.shape[0]
    doc = torch.repeat_interleave(
        torch.arange(cu_seqlens.numel() - 1, device=q.device),
        (cu_seqlens[1:] - cu_seqlens[:-1]).long(), output_size=total)
    pos = torch.arange(total, device=q.device)
    slopes = alibi.to(q.device, torch.float32)

    def same_doc(b, h, qi, kv):
        return doc[qi] == doc[kv]

    def score_mod(score, b, h, qi, kv):
        return score - slopes[h] * (qi - kv).abs()

    block_mask = create_block_mask(same_doc, None, None, total, total, device=q.device)
    fn = _FLEX_CACHE.get("flex")
    if fn is None:
        fn = _FLEX_CACHE["flex"] = torch.compile(flex_attention, dynamic=True)
    out = fn(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
             score_mod=score_mod, block_mask=block_mask, scale=scale)
    del pos
    return out[0].transpose(0, 1)
