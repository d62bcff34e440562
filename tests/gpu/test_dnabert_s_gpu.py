"""DNABERT-S packed forward on CUDA (default kernel: flash_attn with ALiBi if
installed, else FlexAttention) in bf16/fp16 vs the fp32 CPU path (which the
unit tests check against a plain per-sequence reference)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from virnucdist.models.attention import kernel_name
from virnucdist.models.random_init import random_dnabert_s

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _seqs(rng, lengths):
    out = []
    for n in lengths:
        s = rng.choice(list("ACGT"), int(n)).tolist()
        i = int(rng.integers(0, n))
        s[i:i + 4] = ["N"] * len(s[i:i + 4])
        out.append("".join(s))
    return out


def _pack(arrays, device):
    lens = [len(a) for a in arrays]
    cu = torch.tensor(np.concatenate([[0], np.cumsum(lens)]), dtype=torch.int32, device=device)
    return torch.from_numpy(np.concatenate(arrays)).to(device), cu, max(lens)


def _cos(a, b):
    return F.cosine_similarity(a.double().cpu(), b.double().cpu(), dim=-1)


@pytest.fixture(scope="module")
def setup():
    model, tok = random_dnabert_s(7)
    rng = np.random.default_rng(0)
    # 20 .. 3000 bp: the longest pass 512 tokens (no ALiBi length cap)
    seqs = _seqs(rng, list(rng.integers(20, 1500, 30)) + [3000, 2900])
    ids = [tok.encode(s) for s in seqs]
    assert max(len(a) for a in ids) > 512
    with torch.inference_mode():
        ref_emb = model.embed(*_pack(ids, "cpu"))
        ref_hidden = model(*_pack(ids, "cpu"))
    return model, ids, ref_emb, ref_hidden


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_matches_fp32_reference(setup, dtype):
    _, ids, ref_emb, ref_hidden = setup
    m = random_dnabert_s(7, device="cuda", dtype=dtype)[0]
    tokens, cu, max_len = _pack(ids, "cuda")
    with torch.inference_mode():
        emb = m.embed(tokens, cu, max_len)
        hidden = m(tokens, cu, max_len)
    assert emb.dtype == torch.float32 and hidden.dtype == dtype
    c = _cos(emb, ref_emb)
    c_tok = _cos(hidden, ref_hidden)
    print(f"{kernel_name('cuda', alibi=True)} {dtype}: embedding cos min {c.min().item():.6f}, "
          f"token cos min {c_tok.min().item():.5f}, "
          f"max abs diff {(emb.cpu() - ref_emb).abs().max().item():.3e}")
    assert c.min().item() >= (0.99999 if dtype == torch.float32 else 0.999)
    assert c_tok.min().item() >= (0.9999 if dtype == torch.float32 else 0.99)


def test_cuda_packing_invariance(setup):
    _, ids, _, _ = setup
    m = random_dnabert_s(7, device="cuda", dtype=torch.bfloat16)[0]
    with torch.inference_mode():
        together = m.embed(*_pack(ids, "cuda"))
        alone = torch.cat([m.embed(*_pack([a], "cuda")) for a in ids[:6]])
    assert _cos(alone, together[:6]).min().item() >= 0.999


def test_cuda_large_batch_matches_fp32_reference(setup):
    """A token budget of ~32k tokens (variable lengths) in bf16 on the GPU: the fp32 CPU reference's
    embeddings (the time is printed, not asserted)."""
    model, tok = setup[0], random_dnabert_s(7)[1]
    m = random_dnabert_s(7, device="cuda", dtype=torch.bfloat16)[0]
    rng = np.random.default_rng(1)
    ids = tok.encode_batch(_seqs(rng, rng.integers(100, 2000, 300)))
    tokens, cu, max_len = _pack(ids, "cuda")
    with torch.inference_mode():
        ref = model.embed(*_pack(ids, "cpu"))
        m.embed(tokens, cu, max_len)  # warm-up / compile
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        emb = m.embed(tokens, cu, max_len)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
    c = _cos(emb, ref)
    print(f"{tokens.numel()} tokens / {len(ids)} seqs: {dt * 1e3:.1f} ms, "
          f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB, embedding cos min {c.min().item():.6f}")
    assert emb.shape == ref.shape and torch.isfinite(emb).all()
    assert c.min().item() >= 0.999


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_short_reads_triton_alibi_kernel(setup, dtype):
    """150-500-bp reads (<= 128 tokens): the Triton short-sequence ALiBi kernel and fused kernels."""
    model = setup[0]
    tok = random_dnabert_s(7)[1]
    rng = np.random.default_rng(5)
    ids = tok.encode_batch(_seqs(rng, list(rng.integers(100, 500, 400)) + [150] * 200))
    tokens, cu, max_len = _pack(ids, "cpu")
    assert max_len <= 128
    with torch.inference_mode():
        ref = model.embed(tokens, cu, max_len)
    m = random_dnabert_s(7, device="cuda", dtype=dtype)[0]
    assert kernel_name("cuda", alibi=True, dtype=dtype, max_seqlen=max_len) == "triton_short"
    with torch.inference_mode():
        emb = m.embed(tokens.cuda(), cu.cuda(), max_len)
    c = _cos(emb, ref)
    print(f"triton_short {dtype}, {len(ids)} reads: embedding cos min {c.min().item():.6f}, "
          f"0.1th pct {torch.quantile(c, 0.001).item():.6f}, mean {c.mean().item():.6f}")
    assert c.min().item() >= 0.999
