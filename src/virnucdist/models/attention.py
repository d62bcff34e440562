"""Variable-length (packed) attention: the one place that picks a kernel.

Models call :func:`varlen_attention` with packed ``[T, H, D]`` tensors and
``cu_seqlens``; they never know which kernel ran. Order of preference:

* CUDA, no bias: ``flash_attn.flash_attn_varlen_func`` when importable, else
  PyTorch's ``torch.nn.attention.varlen.varlen_attn``.
* CUDA, ALiBi: ``flash_attn_varlen_func(alibi_slopes=...)`` when importable;
  else, up to 128 tokens per sequence, the Triton kernel of
  :mod:`.short_attention` (whole sequence per program, bias in fp32), and
  FlexAttention with a document mask and an ALiBi ``score_mod`` above.
* CPU (or anything else): SDPA over a padded view with a key mask (and an
  additive ALiBi bias), which equals block-diagonal attention on the packed
  tokens. Padding only exists inside this fallback.

All kernels accumulate in fp32 internally, and every ALiBi kernel adds the
bias in fp32 (the padded-SDPA path attends in fp32 when it carries a bias:
SDPA wants the mask in the query's dtype, and bf16 rounds ``slope * |i - j|``
by up to 0.25 logits at 128 tokens).
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

from . import short_attention
from .determinism import is_reproducible

__all__ = ["varlen_attention", "kernel_name", "alibi_slopes"]


#: ALiBi kernel on CUDA without flash_attn: "auto" (up to ALIBI_SDPA_MAX_LEN tokens per sequence the
#: Triton short-sequence kernel, or padded SDPA without Triton; FlexAttention above, where padding to
#: the longest sequence stops paying), "triton", "flex" or "sdpa". benchmarks/throughput.py --task
#: dnabert on an H200, 120k reads, before the Triton kernel: 150-bp reads (~35 tokens) SDPA 940k vs
#: Flex 926k tokens/s; 500-bp reads (~110 tokens) SDPA 964k vs Flex 952k.
ALIBI_KERNEL = os.environ.get("VIRNUCDIST_ALIBI_KERNEL", "auto")
ALIBI_SDPA_MAX_LEN = 128


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


def kernel_name(device: torch.device | str, alibi: bool = False, dtype: torch.dtype = torch.bfloat16,
                max_seqlen: int = 0) -> str:
    """Name of the kernel :func:`varlen_attention` uses on ``device`` (the flash kernels take fp16/bf16 only)."""
    if torch.device(device).type != "cuda" or (dtype == torch.float32 and not alibi):
        return "sdpa-padded"
    if _flash_attn() is not None and dtype != torch.float32:
        return "flash_attn"
    if alibi:
        flex = ALIBI_KERNEL == "flex" or (ALIBI_KERNEL != "sdpa" and max_seqlen > ALIBI_SDPA_MAX_LEN)
        if flex:
            return "flex_attention"
        if ALIBI_KERNEL in ("auto", "triton") and dtype != torch.float32 and short_attention.available():
            return "triton_short"
        return "sdpa-padded"
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
    name = kernel_name(q.device, alibi is not None, q.dtype, max_seqlen)
    if is_reproducible() and name not in _PER_SEQUENCE_KERNELS:
        return _each_sequence(q, k, v, cu_seqlens, scale, alibi)
    if name == "flash_attn":
        return _flash_attn()(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                             softmax_scale=scale, alibi_slopes=alibi)
    if name == "flex_attention":
        return _flex_alibi(q, k, v, cu_seqlens, scale, alibi)
    if name == "triton_short":
        return short_attention.short_attention(q, k, v, cu_seqlens, max_seqlen,
                                               q.shape[-1] ** -0.5 if scale is None else scale, alibi)
    if name == "torch_varlen":
        return _torch_varlen()(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, scale=scale)
    return _sdpa_padded(q, k, v, cu_seqlens, max_seqlen, scale, alibi)


#: kernels whose result for a sequence depends on that sequence only (each program covers one sequence's
#: queries and walks its keys from its own start) and whose choice does not depend on the batch; the others
#: (padded SDPA: the padded length; Flex: block offsets in the packed stream; the Triton short kernel: chosen
#: and tiled by the batch's longest sequence) are replaced by :func:`_each_sequence` in reproducible mode
_PER_SEQUENCE_KERNELS = ("flash_attn", "torch_varlen")


def _each_sequence(q, k, v, cu_seqlens, scale, alibi):
    """Each sequence attends on its own ``[1, H, L, D]`` tensors: its result never depends on its neighbours.
    On CUDA with ALiBi, the sequences of up to ``short_attention.MAX_LEN`` tokens go through the Triton
    short-sequence kernel (one program per sequence, its tile fixed at ``MAX_LEN``), gathered together."""
    bounds = cu_seqlens.tolist()
    out = torch.empty_like(q)
    slopes = alibi.to(q.device, torch.float32) if alibi is not None else None
    done = set()
    if (slopes is not None and q.is_cuda and q.dtype != torch.float32 and ALIBI_KERNEL in ("auto", "triton")
            and short_attention.available()):
        short = [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if 0 < b - a <= short_attention.MAX_LEN]
        if short:
            idx = torch.cat([torch.arange(a, b) for a, b in short]).to(q.device)
            cu = torch.tensor([0] + [b - a for a, b in short], dtype=torch.int64).cumsum(0).to(q.device, torch.int32)
            out[idx] = short_attention.short_attention(q[idx], k[idx], v[idx], cu, short_attention.MAX_LEN,
                                                       q.shape[-1] ** -0.5 if scale is None else scale, slopes)
            done = {a for a, _ in short}
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b <= a or a in done:
            continue
        qs, ks, vs = (x[a:b].transpose(0, 1)[None] for x in (q, k, v))
        mask = None
        if slopes is not None:
            pos = torch.arange(b - a, device=q.device)
            mask = -slopes[:, None, None] * (pos[None, :] - pos[:, None]).abs().to(torch.float32)[None]
            qs, ks, vs = qs.float(), ks.float(), vs.float()
        out[a:b] = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scale)[0].transpose(0, 1).to(q.dtype)
    return out


def _sdpa_padded(q, k, v, cu_seqlens, max_seqlen, scale, alibi):
    """Pad to ``[B, H, L, D]`` by a gather, attend, gather back: no host synchronisation."""
    total = q.shape[0]
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    starts = cu_seqlens[:-1].long()
    pos = torch.arange(max_seqlen, device=q.device)
    valid = pos[None, :] < lengths[:, None]  # [B, L]
    src = (starts[:, None] + pos[None, :]).clamp(max=max(total - 1, 0))  # [B, L]
    # padded slot of every packed token: (its sequence) * L + (its position)
    seq = torch.repeat_interleave(torch.arange(lengths.numel(), device=q.device), lengths, output_size=total)
    slot = seq * max_seqlen + torch.arange(total, device=q.device) - starts[seq]

    def pad(x):
        return x[src].transpose(1, 2)  # [B, H, L, D]

    mask = valid[:, None, None, :]  # keys only: padded queries are dropped below
    qp, kp, vp = pad(q), pad(k), pad(v)
    if alibi is not None:
        # the bias stays fp32 (SDPA wants the mask in the query dtype: attend in fp32)
        qp, kp, vp = qp.float(), kp.float(), vp.float()
        rel = (pos[None, :] - pos[:, None]).abs().to(torch.float32)  # [L, L]
        bias = -alibi.to(q.device, torch.float32)[:, None, None] * rel  # [H, L, L]
        mask = torch.where(mask, bias[None], torch.finfo(torch.float32).min)
    out = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask, scale=scale).to(q.dtype)
    return out.transpose(1, 2).flatten(0, 1)[slot]  # [T, H, D]


_FLEX_CACHE: dict = {}
_FLEX_BLOCK = 128


def _version(t):
    try:
        return t._version
    except RuntimeError:  # inference tensors have no version counter
        return None


def _doc_block_mask(cu_seqlens, total):
    """Block-diagonal (same-sequence) BlockMask for packed tokens, plus the
    per-token sequence index. Built at block granularity, O((T/128)^2), instead of
    ``create_block_mask``'s dense T x T mask (GiBs at 64k tokens). Cached while
    the same ``cu_seqlens`` tensor comes back (every layer of one forward); do
    not modify ``cu_seqlens`` in place between calls (inference tensors have no
    version counter to notice it)."""
    from torch.nn.attention.flex_attention import BlockMask

    key = (_version(cu_seqlens), total)
    hit = _FLEX_CACHE.get("mask")
    if hit is not None and hit[0] is cu_seqlens and hit[1] == key:
        return hit[2], hit[3]
    dev = cu_seqlens.device
    doc = torch.searchsorted(cu_seqlens[1:].long(), torch.arange(total, device=dev), right=True)
    nb = (total + _FLEX_BLOCK - 1) // _FLEX_BLOCK
    first = torch.arange(nb, device=dev) * _FLEX_BLOCK
    last = (first + _FLEX_BLOCK - 1).clamp(max=total - 1)
    d0, d1 = doc[first], doc[last]  # sequence range of each block (sorted)
    touch = (d0[:, None] <= d1[None, :]) & (d0[None, :] <= d1[:, None])
    whole = (d0 == d1) & (last - first + 1 == _FLEX_BLOCK)  # one sequence, no tail
    full = touch & whole[:, None] & whole[None, :] & (d0[:, None] == d0[None, :])
    partial = touch & ~full

    def ordered(dense):
        num = dense.sum(-1, dtype=torch.int32)
        idx = torch.argsort(dense.to(torch.int8), dim=-1, descending=True, stable=True)
        return num[None, None], idx.to(torch.int32)[None, None]

    def same_doc(b, h, qi, kv):
        return doc[qi] == doc[kv]

    block_mask = BlockMask.from_kv_blocks(*ordered(partial), *ordered(full), BLOCK_SIZE=_FLEX_BLOCK,
                                          mask_mod=same_doc, seq_lengths=(total, total))
    _FLEX_CACHE["mask"] = (cu_seqlens, key, block_mask, doc)
    return block_mask, doc


def _flex_alibi(q, k, v, cu_seqlens, scale, alibi):
    from torch.nn.attention.flex_attention import flex_attention

    block_mask, _ = _doc_block_mask(cu_seqlens, q.shape[0])
    slopes = alibi.to(q.device, torch.float32)

    def score_mod(score, b, h, qi, kv):
        # packed positions: qi - kv is the distance within the shared sequence
        return score - slopes[h] * (qi - kv).abs()

    fn = _FLEX_CACHE.get("flex")
    if fn is None:
        fn = _FLEX_CACHE["flex"] = torch.compile(flex_attention, dynamic=True)
    out = fn(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
             score_mod=score_mod, block_mask=block_mask, scale=scale)
    return out[0].transpose(0, 1)
