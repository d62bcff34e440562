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
    assert kernel_name("cuda", alibi=True, max_seqlen=40) == "sdpa-padded"  # 150/500-bp reads: measured faster
    assert kernel_name("cuda", alibi=True, max_seqlen=120) == "sdpa-padded"
    assert kernel_name("cuda", alibi=True, max_seqlen=129) == "flex_attention"  # long reads
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
