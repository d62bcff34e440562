"""``--reproducible`` on CUDA: a record's bits (bf16 models, fp32 pooled output) do not depend on the records
that share its batch, on their order or on where it sits in the packed stream, for ESM-2 and DNABERT-S.
The default mode is allowed to differ (that is what the mode is for)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from virnucdist.models.loading import load_model
from virnucdist.packing import pack_token_arrays
from virnucdist.tasks.tiles import TILE, tiled_embed

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

AA = list("ACDEFGHIKLMNPQRSTVWY")


def _pooled(model, ids, groups):
    out = {}
    for g in groups:
        b = pack_token_arrays([ids[i] for i in g], g).to("cuda")
        with torch.inference_mode():
            o = tiled_embed(model, b, (-1,), False, TILE["cuda"])
        for j, i in enumerate(g):
            out[i] = o.pooled[0][j].float().cpu().numpy()
    return np.stack([out[i] for i in range(len(ids))])


@pytest.mark.parametrize("name,letters,hi", [("esm2_t12_35M_UR50D", AA, 1000), ("dnabert-s", list("ACGT"), 2000)])
def test_a_record_has_the_same_bits_whatever_its_batch_on_cuda(name, letters, hi):
    model = load_model(name, random_init=True, device="cuda", dtype=torch.bfloat16)
    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(letters, int(rng.integers(10, hi)))) for _ in range(200)]
    ids = [model.tokenizer.encode(s) for s in seqs]
    n = len(ids)
    base = _pooled(model, ids, [list(range(n))])
    for groups in ([[i] for i in range(0, n, 7)] + [[i for i in range(n) if i % 7]],
                   [list(range(n))[::-1]], [list(range(1, n, 2)), list(range(0, n, 2))]):
        got = _pooled(model, ids, groups)
        assert np.array_equal(got, base), f"{int((got != base).any(1).sum())} of {n} records differ"
