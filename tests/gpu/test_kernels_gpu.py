"""The fused Triton kernels and FP8 ESM-2 on a real GPU: kernels against the eager math, and
per-sequence fidelity (cosine vs fp32 over random proteins: min / 0.1th percentile / mean) of
bf16 unfused, bf16 fused and FP8. Skips without CUDA (FP8 parts: without compute capability 8.9)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _helpers import AA

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_kernels_match_eager_on_gpu():
    from virnucdist.models import fused

    assert fused.uses_triton(torch.zeros(1, device="cuda"))
    torch.manual_seed(0)
    for t, d in [(4097, 2560), (333, 768), (50, 480)]:
        x = torch.randn(t, d, device="cuda", dtype=torch.bfloat16)
        delta = torch.randn_like(x)
        w = (1 + 0.3 * torch.randn(d, device="cuda")).bfloat16()
        b = (0.3 * torch.randn(d, device="cuda")).bfloat16()
        r, y = fused.add_layer_norm(x, delta, w, b, 1e-5)
        assert torch.equal(r, x + delta)  # the same bf16 rounding of the sum
        assert rel(y, F.layer_norm((x + delta).float(), (d,), w.float(), b.float(), 1e-5)) < 4e-3
        q, s = fused.quant_rows(x)
        rq, rs = fused._quant_ref(x)
        assert torch.equal(q.view(torch.uint8), rq.view(torch.uint8)) and torch.allclose(s, rs, rtol=1e-7)
        g = 3 * torch.randn(t, 4 * d, device="cuda", dtype=torch.bfloat16)
        assert rel(fused.gelu(g), F.gelu(g.float())) < 4e-3
        gq, gs = fused.gelu(g, quant=True)
        assert rel(fused.dequant_rows(gq, gs), F.gelu(g.float())) < 4e-2
        assert rel(fused.gated_gelu(g), F.gelu(g[:, :2 * d].float()) * g[:, 2 * d:].float()) < 6e-3


def test_short_attention_kernel_on_gpu():
    from virnucdist.models.attention import alibi_slopes
    from virnucdist.models.short_attention import short_attention

    torch.manual_seed(1)
    lengths = [128, 1, 37, 0, 100, 64] * 50
    heads, dim = 12, 64
    cu = torch.tensor([0] + np.cumsum(lengths).tolist(), dtype=torch.int32, device="cuda")
    qkv = torch.randn(sum(lengths), 3, heads, dim, device="cuda", dtype=torch.bfloat16)
    q, k, v = qkv.unbind(1)
    slopes = alibi_slopes(heads).cuda()
    got = short_attention(q, k, v, cu, 128, dim**-0.5, slopes)
    starts = cu.tolist()
    want = torch.empty(q.shape, dtype=torch.float32, device="cuda")
    for i, n in enumerate(lengths):
        if n == 0:
            continue
        s = slice(starts[i], starts[i] + n)
        pos = torch.arange(n, device="cuda")
        bias = -slopes[:, None, None] * (pos[None, :] - pos[:, None]).abs()
        o = F.scaled_dot_product_attention(q[s].float().transpose(0, 1), k[s].float().transpose(0, 1),
                                           v[s].float().transpose(0, 1), attn_mask=bias, scale=dim**-0.5)
        want[s] = o.transpose(0, 1)
    err = rel(got, want)
    print(f"short ALiBi attention bf16 vs fp32: rel error {err:.2e}")
    assert err < 1e-2


@pytest.fixture(scope="module")
def esm_setup():
    from virnucdist.models.loading import load_model

    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(AA, size=int(n))) for n in rng.integers(20, 400, size=300)]
    lm = load_model("esm2_t12_35M_UR50D", device="cuda", dtype=torch.float32, random_init=True, seed=3)
    with torch.no_grad():  # non-trivial LayerNorms and biases (random init has ones/zeros-like ones)
        g = torch.Generator(device="cuda").manual_seed(1)
        for name, p in lm.module.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn(p.shape, device="cuda", generator=g))
    arrays = [lm.tokenizer.encode(s) for s in seqs]
    return lm, arrays


def _embed(module, arrays, budget=8192):
    from virnucdist.packing import pack_token_arrays, plan_batches

    out = []
    for a, b in plan_batches(np.fromiter(map(len, arrays), dtype=np.int64, count=len(arrays)), budget):
        pb = pack_token_arrays(arrays[a:b], range(b - a)).to("cuda")
        with torch.inference_mode():
            out.append(module.embed(pb.tokens, pb.positions, pb.seg, pb.cu_seqlens, pb.max_seqlen).cpu())
    return torch.cat(out)


def _variant(lm, dtype, fused_on, fp8=False, policy=None):
    from virnucdist.models import fused
    from virnucdist.models.esm2 import PackedESM2

    m = PackedESM2(lm.module.cfg).cuda()
    m.load_state_dict(lm.module.state_dict())
    m = m.to(dtype).eval()
    m.inv_freq = m.inv_freq.float()
    if fp8:
        from virnucdist.models.fp8 import to_fp8

        m = to_fp8(m, policy)
    fused.set_enabled(fused_on)
    return m


def _stats(cos):
    return cos.min().item(), torch.quantile(cos.double(), 0.001).item(), cos.mean().item()


def test_esm2_fidelity(esm_setup):
    from virnucdist.models import fused
    from virnucdist.models.fp8 import fp8_supported

    lm, arrays = esm_setup
    try:
        fused.set_enabled(False)
        ref = _embed(lm.module, arrays)  # fp32, eager
        rows = {}
        for name, dtype, on, fp8 in [("bf16 unfused", torch.bfloat16, False, False),
                                     ("bf16 fused", torch.bfloat16, True, False),
                                     ("fp16 fused", torch.float16, True, False),
                                     ("fp8", torch.bfloat16, True, True),  # the default policy (bias-corrected)
                                     ("fp8 all, no bias correction", torch.bfloat16, True, "all")]:
            if fp8 and not fp8_supported("cuda"):
                continue
            emb = _embed(_variant(lm, dtype, on, bool(fp8), fp8 if isinstance(fp8, str) else None), arrays)
            assert torch.isfinite(emb).all(), name
            rows[name] = _stats(F.cosine_similarity(emb.double(), ref.double()))
            print(f"ESM-2 t12 {name} vs fp32, {len(arrays)} seqs: cosine min {rows[name][0]:.6f}, "
                  f"0.1th pct {rows[name][1]:.6f}, mean {rows[name][2]:.6f}")
    finally:
        fused.set_enabled(True)
    for name in ("bf16 unfused", "bf16 fused", "fp16 fused"):
        assert rows[name][0] >= 0.999, (name, rows[name])
    if "fp8" in rows:
        assert rows["fp8"][0] >= 0.99 and rows["fp8"][2] >= 0.998, rows["fp8"]
        # the default policy's bias correction must not lose fidelity against plain FP8 (mean, min)
        plain = rows["fp8 all, no bias correction"]
        assert rows["fp8"][2] >= plain[2] and rows["fp8"][0] >= plain[0] - 1e-4, (rows["fp8"], plain)


def test_fp8_refused_without_fp8_cores():
    from virnucdist.models.fp8 import FP8UnsupportedError, fp8_supported, to_fp8
    from virnucdist.models.loading import load_model

    if fp8_supported("cuda"):
        pytest.skip("this GPU has FP8 tensor cores")
    lm = load_model("esm2_t6_8M_UR50D", device="cuda", dtype=torch.bfloat16, random_init=True)
    with pytest.raises(FP8UnsupportedError, match="compute capability >= 8.9"):
        to_fp8(lm.module)
