"""Kernel choice of the attention dispatch point, and the CPU path against plain per-sequence attention."""

from __future__ import annotations

import pytest
import torch

from virnucdist.models import attention
from virnucdist.models.attention import kernel_name, varlen_attention


def test_kernel_choice(monkeypatch):
    monkeypatch.setattr(attention, "_flash_attn", lambda: None)
    assert kernel_name("cpu") == "sdpa-padded"
    assert kernel_name("cpu", alibi=True, max_seqlen=500) == "sdpa-padded"
    assert kernel_name("cuda", dtype=torch.bfloat16) == "torch_varlen"
    assert kernel_name("cuda", dtype=torch.float32) == "sdpa-padded"  # flash kernels take half precision only
    monkeypatch.setattr(attention, "ALIBI_KERNEL", "auto")
    monkeypatch.setattr(attention.short_attention, "available", lambda: False)  # CUDA without Triton
    assert kernel_name("cuda", alibi=True, max_seqlen=40) == "sdpa-padded"  # 150/500-bp reads: measured faster
    assert kernel_name("cuda", alibi=True, max_seqlen=120) == "sdpa-padded"
    assert kernel_name("cuda", alibi=True, max_seqlen=129) == "flex_attention"  # long reads
    monkeypatch.setattr(attention.short_attention, "available", lambda: True)
    assert kernel_name("cuda", alibi=True, max_seqlen=40) == "triton_short"
    assert kernel_name("cuda", alibi=True, max_seqlen=128) == "triton_short"
    assert kernel_name("cuda", alibi=True, max_seqlen=129) == "flex_attention"
    assert kernel_name("cuda", alibi=True, max_seqlen=40, dtype=torch.float32) == "sdpa-padded"  # exact fp32 path
    assert kernel_name("cpu", alibi=True, max_seqlen=40) == "sdpa-padded"
    monkeypatch.setattr(attention, "ALIBI_KERNEL", "sdpa")
    assert kernel_name("cuda", alibi=True, max_seqlen=40) == "sdpa-padded"
    assert kernel_name("cuda", alibi=True, max_seqlen=500) == "sdpa-padded"
    monkeypatch.setattr(attention, "ALIBI_KERNEL", "flex")
    assert kernel_name("cuda", alibi=True, max_seqlen=40) == "flex_attention"
    monkeypatch.setattr(attention, "_flash_attn", lambda: object())
    assert kernel_name("cuda", alibi=True, max_seqlen=40) == "flash_attn"


@pytest.mark.parametrize("alibi", [False, True])
def test_sdpa_padded_equals_per_sequence_attention(alibi):
    torch.manual_seed(0)
    lengths = [1, 7, 3, 12, 5]
    heads, dim = 3, 8
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)
    q, k, v = (torch.randn(sum(lengths), heads, dim) for _ in range(3))
    slopes = torch.tensor([0.5, 0.25, 0.125]) if alibi else None
    got = varlen_attention(q, k, v, cu, max(lengths), scale=0.3, alibi=slopes)
    for i, n in enumerate(lengths):
        s = slice(int(cu[i]), int(cu[i + 1]))
        scores = torch.einsum("qhd,khd->hqk", q[s], k[s]) * 0.3
        if alibi:
            pos = torch.arange(n)
            scores = scores - slopes[:, None, None] * (pos[None, :] - pos[:, None]).abs()
        want = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v[s])
        torch.testing.assert_close(got[s], want, atol=1e-5, rtol=1e-5)


def _reference(q, k, v, cu, scale, slopes):
    """Per-sequence attention in float64 with the ALiBi bias in float64."""
    out = torch.empty(q.shape, dtype=torch.float64)
    for i in range(cu.numel() - 1):
        s = slice(int(cu[i]), int(cu[i + 1]))
        n = s.stop - s.start
        scores = torch.einsum("qhd,khd->hqk", q[s].double(), k[s].double()) * scale
        pos = torch.arange(n)
        scores = scores - slopes.double()[:, None, None] * (pos[None, :] - pos[:, None]).abs()
        out[s] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v[s].double())
    return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_alibi_bias_is_added_in_fp32(dtype):
    """Issue 13.8: at 128 tokens the bias reaches ~90 logits, which bf16 rounds by up to 0.25; the
    padded-SDPA kernel must add it in fp32 (as the Triton and Flex kernels do), so that its error is
    that of the half-precision inputs alone. Scores are built to cancel the bias (q.k*scale ~ slope*j),
    so every key's weight depends on the bias being exact. With the bias rounded to the input dtype
    (the old code) the errors were 1.5e-2 (bf16) and 1.8e-3 (fp16); with it in fp32, 1.7e-3 / 2.1e-4."""
    from virnucdist.models.attention import alibi_slopes

    torch.manual_seed(1)
    lengths = [128, 97, 128]
    heads, dim = 12, 64
    scale = dim**-0.5
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)
    total = sum(lengths)
    seq = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    pos = torch.arange(total) - cu[:-1].long()[seq]
    slopes = alibi_slopes(heads)  # DNABERT-S's 12 heads: 2^-0.5 .. 2^-8
    q, k = torch.zeros(total, heads, dim), torch.zeros(total, heads, dim)
    q[:, :, 0] = 1.0
    k[:, :, 0] = pos[:, None].float() * slopes[None, :] / scale
    q = (q + 0.05 * torch.randn(total, heads, dim)).to(dtype)
    k = (k + 0.05 * torch.randn(total, heads, dim)).to(dtype)
    v = torch.randn(total, heads, dim).to(dtype)
    want = _reference(q, k, v, cu, scale, slopes)
    got = varlen_attention(q, k, v, cu, max(lengths), scale=scale, alibi=slopes)
    assert got.dtype == dtype
    err = ((got.double() - want).norm() / want.norm()).item()
    assert err < (5e-3 if dtype == torch.bfloat16 else 6e-4), err
