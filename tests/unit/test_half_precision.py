"""bf16 / fp16 on the CPU (issue 13.9): ESM-2 and DNABERT-S in half precision against their fp32
forward on the same weights, per sequence, over random inputs; DNABERT-S through the padded-SDPA
ALiBi kernel at up to 128 tokens. These paths otherwise run only under tests/gpu.

The thresholds (MIN_COS) sit between what correct half-precision code gives here (printed) and
what a real defect gives: dropping DNABERT-S's ALiBi bias gives 0.9995 per sequence and 0.977 per
token (checked below), and a LayerNorm or softmax in half precision, or positions off by one, move
the cosines as far.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from virnucdist.models.attention import kernel_name
from virnucdist.models.dnabert_s import DnaBertSConfig, PackedDnaBertS
from virnucdist.models.esm2 import ESM2Config, PackedESM2

HALF = [torch.bfloat16, torch.float16]
# (min sequence cosine, min token cosine) vs fp32; measured here: bf16 0.99994 / 0.99991, fp16 0.999999 / 0.99999
MIN_COS = {torch.bfloat16: (0.9998, 0.9995), torch.float16: (0.99999, 0.9999)}


def _packed(lengths, seed):
    g = torch.Generator().manual_seed(seed)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    seg = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    pos = torch.arange(int(cu[-1])) - cu[:-1].long()[seg]
    return cu, seg, pos, g


def _perturbed(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.lower() and name.endswith("weight"):
                p.add_(0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):  # small: a large shared offset would hide what the tokens carry
                p.add_(0.02 * torch.randn(p.shape, generator=g))
            else:
                p.normal_(0.0, 0.05, generator=g)
    return model.eval()


def _cos(a, b):
    return F.cosine_similarity(a.double(), b.double(), dim=-1)


@pytest.fixture(scope="module")
def esm():
    model = _perturbed(PackedESM2(ESM2Config(4, 160, 8)), 0)
    lengths = [3, 10, 22, 35, 50, 80, 130, 7, 64, 100, 41, 18]
    cu, seg, pos, g = _packed(lengths, 1)
    tokens = torch.randint(4, 29, (int(cu[-1]),), generator=g)
    tokens[cu[:-1].long()], tokens[cu[1:].long() - 1] = 0, 2
    args = (tokens, pos, seg, cu, max(lengths))
    with torch.inference_mode():
        return model, args, model.embed(*args), model(*args)


@pytest.mark.parametrize("dtype", HALF)
def test_esm2_half_precision_on_cpu(esm, dtype):
    model, args, ref, ref_tok = esm
    m = PackedESM2(model.cfg)
    m.load_state_dict(model.state_dict())
    m = m.to(dtype).eval()
    m.inv_freq = m.inv_freq.float()
    with torch.inference_mode():
        emb, tok = m.embed(*args), m(*args)
    assert emb.dtype == torch.float32 and tok.dtype == dtype
    c, ct = _cos(emb, ref), _cos(tok, ref_tok)
    print(f"ESM-2 {dtype}: sequence cosine min {c.min():.6f} mean {c.mean():.6f}; token cosine min {ct.min():.5f}")
    assert c.min() >= MIN_COS[dtype][0] and ct.min() >= MIN_COS[dtype][1]


@pytest.fixture(scope="module")
def dnabert():
    cfg = DnaBertSConfig(vocab_size=512, hidden_size=192, num_hidden_layers=4, num_attention_heads=12,
                         intermediate_size=384)
    model = _perturbed(PackedDnaBertS(cfg), 2)
    lengths = [128, 3, 35, 120, 64, 97, 128, 12, 40, 77]  # 150-500-bp reads: 35-130 tokens
    cu, _, _, g = _packed(lengths, 3)
    tokens = torch.randint(5, 512, (int(cu[-1]),), generator=g)
    args = (tokens, cu, max(lengths))
    with torch.inference_mode():
        return model, args, model.embed(*args), model(*args)


@pytest.mark.parametrize("dtype", HALF)
def test_dnabert_s_half_precision_on_cpu_padded_sdpa_alibi(dnabert, dtype):
    model, args, ref, ref_tok = dnabert
    assert kernel_name("cpu", alibi=True, dtype=dtype, max_seqlen=args[2]) == "sdpa-padded"
    m = PackedDnaBertS(model.config)
    m.load_state_dict(model.state_dict())
    m = m.to(dtype).eval()
    with torch.inference_mode():
        emb, tok = m.embed(*args), m(*args)
    assert emb.dtype == torch.float32 and tok.dtype == dtype
    c, ct = _cos(emb, ref), _cos(tok, ref_tok)
    print(f"DNABERT-S {dtype}: sequence cosine min {c.min():.6f} mean {c.mean():.6f}; token cosine min {ct.min():.5f}")
    assert c.min() >= MIN_COS[dtype][0] and ct.min() >= MIN_COS[dtype][1]
    # the bias is what makes DNABERT-S position-aware: without it the embeddings move far away
    slopes = m._slopes
    m._slopes = {k: torch.zeros_like(v) for k, v in slopes.items()} or {torch.device("cpu"): torch.zeros(12)}
    with torch.inference_mode():
        no_bias, no_bias_tok = m.embed(*args), m(*args)
    m._slopes = slopes
    print(f"  without ALiBi: sequence cosine min {_cos(no_bias, ref).min():.4f}, "
          f"token {_cos(no_bias_tok, ref_tok).min():.4f}")
    # (measured: 0.9995 per sequence, 0.977 per token: both thresholds above catch it)
    assert _cos(no_bias, ref).min() < MIN_COS[dtype][0] and _cos(no_bias_tok, ref_tok).min() < 0.99
