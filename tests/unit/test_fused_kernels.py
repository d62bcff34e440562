"""The CUDA kernels of models/fused.py and models/short_attention.py, run through Triton's interpreter
on the CPU, against the eager PyTorch math (the path CPU runs and ``VIRNUCDIST_FUSED=0`` selects).

Each test runs a script in a subprocess with ``TRITON_INTERPRET=1`` (read at import time), on fresh
random inputs with poisoned outputs, at tiny shapes (including non-power-of-two widths).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

PRELUDE = """
import os
os.environ["TRITON_INTERPRET"] = "1"
import torch
import torch.nn.functional as F
from virnucdist.models import fused
assert fused.uses_triton(torch.zeros(1))
torch.manual_seed(0)

def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()

def eager(fn, *args, **kw):
    fused.set_enabled(False)
    try:
        return fn(*args, **kw)
    finally:
        fused.set_enabled(True)
"""


def run(body: str) -> str:
    code = PRELUDE + textwrap.dedent(body) + "\nprint('ok')\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    print(out.stdout)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok"), out.stdout[-2000:]
    return out.stdout


def test_add_layer_norm_and_gelu_match_eager():
    run("""
    for T, D in [(5, 48), (3, 320), (7, 100)]:
        x, d = torch.randn(T, D), torch.randn(T, D)
        w, b, db = 1 + 0.3 * torch.randn(D), 0.3 * torch.randn(D), torch.randn(D)
        want_r, want_y = x + d, F.layer_norm(x + d, (D,), w, b, 1e-5)
        r, y = fused.add_layer_norm(x, d, w, b, 1e-5)
        assert rel(r, want_r) < 1e-6 and rel(y, want_y) < 1e-6, (T, D, rel(r, want_r), rel(y, want_y))
        r, y = fused.add_layer_norm(x, None, w, b, 1e-5)          # first layer: no pending add
        assert r is x and rel(y, F.layer_norm(x, (D,), w, b, 1e-5)) < 1e-6
        r, y = fused.add_layer_norm(x, d, w, b, 1e-12, write_sum=False, delta_bias=db)  # post-LN, bias
        assert r is None and rel(y, F.layer_norm(x + d + db, (D,), w, b, 1e-12)) < 1e-6
        r2, y2 = eager(fused.add_layer_norm, x, d, w, b, 1e-12, write_sum=False, delta_bias=db)
        assert r2 is None and rel(y, y2) < 1e-6
        # bf16 in and out: the sum is rounded to bf16 as eager does, statistics in fp32
        xb, db16 = x.bfloat16(), d.bfloat16()
        r, y = fused.add_layer_norm(xb, db16, w.bfloat16(), b.bfloat16(), 1e-5)
        er, ey = eager(fused.add_layer_norm, xb, db16, w.bfloat16(), b.bfloat16(), 1e-5)
        # (Triton's interpreter truncates fp32 -> bf16 where the GPU rounds to nearest: one ulp apart at most)
        assert r.dtype == y.dtype == torch.bfloat16
        assert ((r.float() - er.float()).abs() <= er.float().abs() * 2.0**-7).all(), (T, D)
        assert rel(y, want_y) < 1e-2 and rel(y, ey) < 8e-3, (rel(y, want_y), rel(y, ey))

    for T, C in [(4, 40), (3, 1280), (2, 5000)]:
        x, bias = 3 * torch.randn(T, C), torch.randn(C)
        assert rel(fused.gelu(x), F.gelu(x)) < 1e-6
        assert rel(fused.gelu(x, bias), F.gelu(x + bias)) < 1e-6
        g = 3 * torch.randn(T, 2 * C)
        want = F.gelu(g[:, :C]) * g[:, C:]
        assert rel(fused.gated_gelu(g), want) < 1e-6 and rel(eager(fused.gated_gelu, g), want) < 1e-6
        gb = fused.gated_gelu(g.bfloat16())
        assert gb.dtype == torch.bfloat16 and rel(gb, want) < 8e-3
        # exact erf form, not the tanh approximation (they differ by ~1e-3 here)
        assert rel(fused.gelu(x), F.gelu(x, approximate="tanh")) > 1e-5
    """)


def test_fp8_quantisation_kernels():
    run("""
    E4M3 = torch.float8_e4m3fn
    # every e4m3 code's neighbourhood: values exactly between two codes (ties), binade edges, subnormals
    codes = torch.arange(256, dtype=torch.uint8).view(E4M3).float()
    codes = codes[torch.isfinite(codes)].unique()
    mids = (codes[1:] + codes[:-1]) / 2
    for T, C in [(6, 64), (3, 320), (2, 5000), (1, 7)]:
        x = torch.randn(T, C) * torch.logspace(-3, 3, T)[:, None]
        row0 = torch.cat([torch.tensor([448.0]), mids])[:C]  # amax 448: scale 1, the midpoints stay exact ties
        x[0] = 0
        x[0, : row0.numel()] = row0
        x[-1] = 0 if T > 1 else x[-1]                          # an all-zero row
        q, s = fused.quant_rows(x)
        rq, rs = fused._quant_ref(x)
        assert q.dtype == E4M3 and s.shape == (T,)
        assert torch.equal(q.view(torch.uint8), rq.view(torch.uint8)), (q.float() - rq.float()).abs().max()
        assert torch.equal(s, rs)
        # per-row scale and error bound: |x - q*s| <= half an e4m3 step (2^-4 relative) + subnormal floor
        deq = fused.dequant_rows(q, s)
        bound = x.abs() * 2.0**-4 + s[:, None] * 2.0**-10
        assert ((deq - x).abs() <= bound).all()
        assert torch.allclose(q.float().abs().amax(1)[s > 1e-12], torch.tensor(448.0))
        # bf16 input
        qb, sb = fused.quant_rows(x.bfloat16())
        rqb, rsb = fused._quant_ref(x.bfloat16())
        assert torch.equal(qb.view(torch.uint8), rqb.view(torch.uint8)) and torch.equal(sb, rsb)

    def close_codes(q, s, rq, rs):
        # the producing kernels' fp32 math (erf, LayerNorm statistics) can differ from torch in the last
        # bit, which may flip a code by one step: require >= 99% identical bytes, all others 1 step apart
        same = (q.view(torch.uint8) == rq.view(torch.uint8)).float().mean().item()
        steps = (q.view(torch.uint8).int() - rq.view(torch.uint8).int()).abs()
        assert same >= 0.99 and steps.max() <= 1, (same, steps.max())
        assert torch.allclose(s, rs, rtol=1e-6, atol=0)

    for T, C in [(5, 48), (3, 320), (4, 1000)]:
        x, bias = 3 * torch.randn(T, C), torch.randn(C)
        q, s = fused.gelu(x, bias, quant=True)
        close_codes(q, s, *fused._quant_ref(F.gelu(x + bias)))
        q2, s2 = eager(fused.gelu, x, bias, quant=True)
        close_codes(q, s, q2, s2)
        d, w, b = torch.randn(T, C), 1 + 0.3 * torch.randn(C), 0.3 * torch.randn(C)
        r, (q, s) = fused.add_layer_norm(x, d, w, b, 1e-5, quant=True)
        assert torch.equal(r, x + d)
        close_codes(q, s, *fused._quant_ref(F.layer_norm(x + d, (C,), w, b, 1e-5)))
    """)


def test_short_attention_kernel_matches_per_sequence_attention():
    run("""
    from virnucdist.models.attention import alibi_slopes
    from virnucdist.models.short_attention import short_attention
    for lengths, heads, dim in [([1, 7, 0, 12, 5], 3, 16), ([128, 3, 64], 12, 64), ([40, 33], 2, 24)]:
        cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
        T = sum(lengths)
        qkv = torch.randn(T, 3, heads, dim)  # read in place through strides, as from a fused qkv GEMM
        q, k, v = qkv.unbind(1)
        slopes = alibi_slopes(heads) * 4  # steeper than DNABERT-S's: the bias dominates the scores
        for alibi in (None, slopes):
            want = torch.empty(T, heads, dim)
            for i, n in enumerate(lengths):
                s = slice(int(cu[i]), int(cu[i + 1]))
                sc = torch.einsum("qhd,khd->hqk", q[s].double(), k[s].double()) * 0.3
                if alibi is not None:
                    pos = torch.arange(n)
                    sc = sc - alibi.double()[:, None, None] * (pos[None, :] - pos[:, None]).abs()
                want[s] = torch.einsum("hqk,khd->qhd", sc.softmax(-1), v[s].double()).float()
            got = short_attention(q, k, v, cu, max(lengths), 0.3, alibi)
            assert rel(got, want) < 1e-6, rel(got, want)
            qb, kb, vb = (t.bfloat16() for t in (q, k, v))
            got = short_attention(qb, kb, vb, cu, max(lengths), 0.3, alibi)
            assert got.dtype == torch.bfloat16 and rel(got, want) < 1e-2, rel(got, want)
    """)


def test_models_fused_equal_eager():
    """Whole ESM-2 and DNABERT-S forwards through the kernels vs the eager path (fp32: ~1e-6),
    and the FP8 ESM-2 layer math with the Triton quantisation kernels vs the torch reference."""
    run("""
    from virnucdist.models.esm2 import ESM2Config, PackedESM2
    from virnucdist.models.dnabert_s import DnaBertSConfig, PackedDnaBertS
    from virnucdist.models.fp8 import quantize_model
    lengths = [5, 17, 3, 30]
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    seg = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    pos = torch.arange(cu[-1]) - cu[:-1].long()[seg]
    tokens = torch.randint(4, 29, (int(cu[-1]),))
    tokens[cu[:-1].long()] = 0
    esm = PackedESM2(ESM2Config(2, 64, 4)).eval()
    with torch.no_grad():
        for n, p in esm.named_parameters():
            p.add_(0.2 * torch.randn_like(p)) if "norm" in n or n.endswith("bias") else None
    with torch.inference_mode():
        for layer in (-1, 1):
            got = esm(tokens, pos, seg, cu, max(lengths), layer)
            want = eager(esm, tokens, pos, seg, cu, max(lengths), layer)
            assert rel(got, want) < 1e-5, (layer, rel(got, want))
        ref = esm.embed(tokens, pos, seg, cu, max(lengths))
        esm = esm.to(torch.bfloat16)               # FP8 converts a bf16 model (as load_model builds it)
        esm.inv_freq = esm.inv_freq.float()
        bf16 = eager(esm.embed, tokens, pos, seg, cu, max(lengths))
        quantize_model(esm, "all")  # the kernels vs the torch quantiser (no calibration pass)
        got = esm.embed(tokens, pos, seg, cu, max(lengths))
        want = eager(esm.embed, tokens, pos, seg, cu, max(lengths))
        print("fp8 fused vs eager", rel(got, want), "fp8 vs fp32", rel(got, ref), rel(want, ref),
              "bf16 vs fp32", rel(bf16, ref))
        # the Triton and torch quantisers agree to a code step (test above), which the layers amplify
        # into independent-looking FP8 noise: both paths must be equally close to fp32, and further
        # than bf16 is (FP8 did run)
        e_fused, e_eager, e_bf16 = rel(got, ref), rel(want, ref), rel(bf16, ref)
        assert e_fused < 1.5 * e_eager and e_eager < 1.5 * e_fused and e_fused < 5e-2, (e_fused, e_eager)
        assert e_fused > 2 * e_bf16, (e_fused, e_bf16)
        assert F.cosine_similarity(got, ref).min().item() > 0.995

    dna = PackedDnaBertS(DnaBertSConfig(vocab_size=64, hidden_size=48, num_hidden_layers=2,
                                        num_attention_heads=4, intermediate_size=96)).eval()
    with torch.no_grad():
        for n, p in dna.named_parameters():
            p.add_(0.2 * torch.randn_like(p))
    toks = torch.randint(0, 64, (int(cu[-1]),))
    with torch.inference_mode():
        got, want = dna(toks, cu, max(lengths)), eager(dna, toks, cu, max(lengths))
        assert rel(got, want) < 1e-5, rel(got, want)
    """)


def test_quantisation_two_pass_path_equals_one_pass():
    """Rows wider than ONE_PASS_MAX take the two-pass path (amax, then quantise): same bytes."""
    run("""
    x = torch.randn(5, 300) * 3
    b = torch.randn(300)
    fused.ONE_PASS_MAX = 1 << 14
    one = fused.quant_rows(x), fused.gelu(x, b, quant=True)
    fused.ONE_PASS_MAX = 64  # 300 columns no longer fit one block
    two = fused.quant_rows(x), fused.gelu(x, b, quant=True)
    for (q1, s1), (q2, s2) in zip(one, two):
        assert torch.equal(q1.view(torch.uint8), q2.view(torch.uint8)) and torch.equal(s1, s2)
    rq, rs = fused._quant_ref(x)
    assert torch.equal(two[0][0].view(torch.uint8), rq.view(torch.uint8))
    """)


def test_split_blocks_cover_a_row_with_two_powers_of_two():
    from virnucdist.models.fused import split_blocks

    assert split_blocks(10240) == (8192, 2048) and split_blocks(2560) == (2048, 512)
    for c in range(1, 3000):
        b1, b2 = split_blocks(c)
        assert b1 & (b1 - 1) == 0 and b2 & (b2 - 1) == 0  # powers of two (or 0)
        assert b1 <= c <= b1 + b2 or (b2 == 0 and c == b1)
        assert b2 <= b1 and (b2 == 0) == (c == b1) and b2 < 2 * (c - b1) + (b2 == 0)  # the rest, tightly
