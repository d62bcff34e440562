"""ESM-2 on CUDA: virnucdist half precision vs fair-esm fp32 on the same weights.

Skips without CUDA; run on a GPU machine with ``python -m pytest tests/gpu``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _helpers import AA

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _proteins(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return [(f"p{i}", "".join(rng.choice(AA, size=int(L)))) for i, L in enumerate(rng.integers(5, 400, size=n))]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    import esm

    from _formats import save_fair_esm_checkpoint

    torch.manual_seed(0)
    ref = esm.model.esm2.ESM2(num_layers=12, embed_dim=480, attention_heads=20,
                              alphabet=esm.data.Alphabet.from_architecture("ESM-1b"))
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    path = save_fair_esm_checkpoint(ref, tmp_path_factory.mktemp("w") / "esm2_t12_random.pt")
    return ref.cuda().eval(), path


def _fair_esm_means(ref, seqs):
    import esm

    conv = esm.data.Alphabet.from_architecture("ESM-1b").get_batch_converter()
    out = []
    with torch.inference_mode():
        for i in range(0, len(seqs), 16):
            part = seqs[i:i + 16]
            _, _, toks = conv(part)
            rep = ref(toks.cuda(), repr_layers=[ref.num_layers])["representations"][ref.num_layers]
            out += [rep[j, 1:len(s) + 1].float().mean(0).cpu() for j, (_, s) in enumerate(part)]
    return torch.stack(out)


def _ours(path, seqs, dtype):
    from virnucdist.models.loading import load_model
    from virnucdist.packing import pack_token_arrays

    lm = load_model(str(path), device="cuda", dtype=dtype)
    batch = pack_token_arrays([lm.tokenizer.encode(s) for _, s in seqs], list(range(len(seqs)))).to("cuda")
    with torch.inference_mode():
        return lm.embed(batch).pooled[0].cpu()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_matches_fair_esm_fp32(weights, dtype):
    ref, path = weights
    seqs = _proteins()
    expected = _fair_esm_means(ref, seqs)
    got = _ours(path, seqs, dtype)
    cos = torch.nn.functional.cosine_similarity(got, expected)
    print(f"{dtype}: min cosine {cos.min():.6f}, mean {cos.mean():.6f}")
    assert torch.isfinite(got).all()
    assert cos.min() >= 0.999


def test_half_matches_own_fp32(weights):
    _, path = weights
    seqs = _proteins(seed=1)
    full = _ours(path, seqs, torch.float32)
    for dtype in (torch.bfloat16, torch.float16):
        cos = torch.nn.functional.cosine_similarity(_ours(path, seqs, dtype), full)
        print(f"{dtype} vs fp32 (virnucdist): min cosine {cos.min():.6f}")
        assert cos.min() >= 0.999


def test_kernel_is_varlen_on_cuda():
    from virnucdist.models.attention import kernel_name

    assert kernel_name("cuda") in {"flash_attn", "torch_varlen"}


def test_fair_esm_pt_loads_straight_to_the_gpu_in_bf16(tmp_path):
    """Every tensor lands on the GPU in bf16 and equals the checkpoint's fp32 tensor cast once."""
    from virnucdist.models.esm2 import ESM2Config
    from virnucdist.models.loading import load_model
    from virnucdist.models.random_init import random_esm2
    from _formats import save_fair_esm_checkpoint

    src = random_esm2(ESM2Config(4, 128, 4), seed=3)
    path = save_fair_esm_checkpoint(src, tmp_path / "esm2_gpu.pt")
    lm = load_model(str(path), device="cuda", dtype=torch.bfloat16)
    got = lm.module.state_dict()
    for k, v in src.state_dict().items():
        assert got[k].device.type == "cuda" and got[k].dtype == torch.bfloat16, k
        assert torch.equal(got[k].cpu(), v.to(torch.bfloat16)), k
    assert lm.module.inv_freq.device.type == "cuda" and lm.module.inv_freq.dtype == torch.float32
