"""``--reproducible``: a record's bits do not depend on the records that share its batch, nor on the budget."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from virnucdist import EmbedConfig, embed
from virnucdist.data.fasta import write_fasta
from virnucdist.models.loading import load_model
from virnucdist.packing import pack_token_arrays, pad_to_tile
from virnucdist.tasks.tiles import tiled_embed

AA = list("ACDEFGHIKLMNPQRSTVWY")
TILE = 512


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_pad_to_tile_gives_exactly_the_tile_and_keeps_the_records():
    arrays = [np.arange(n) % 20 + 4 for n in (5, 130, 7)]
    b = pack_token_arrays(arrays, [3, 8, 9])
    p = pad_to_tile(b, 256)
    assert p.num_tokens == 256 and p.rows.tolist() == [3, 8, 9]
    assert torch.equal(p.tokens[:142], b.tokens) and torch.equal(p.cu_seqlens[:4], b.cu_seqlens)
    assert int(p.cu_seqlens[-1]) == 256 and int(torch.diff(p.cu_seqlens).max()) <= 130
    assert (p.seg[142:] >= 3).all() and p.positions[142] == 0
    assert pad_to_tile(pack_token_arrays([np.zeros(300, np.int64)], [0]), 256).num_tokens == 512


def _pooled(model, ids, groups, per_token=False):
    out, tok = {}, {}
    for g in groups:
        b = pack_token_arrays([ids[i] for i in g], g)
        with torch.inference_mode():
            o = tiled_embed(model, b, (-1,), per_token, TILE)
        for j, i in enumerate(g):
            out[i] = o.pooled[0][j].numpy().copy()
        if per_token:
            ends = np.cumsum(o.token_lengths.numpy())
            for j, i in enumerate(g):
                tok[i] = o.tokens[0][ends[j] - o.token_lengths[j]:ends[j]].numpy().copy()
    return np.stack([out[i] for i in range(len(ids))]), tok


@pytest.mark.parametrize("name", ["esm2_t6_8M_UR50D", "dnabert-s-tiny"])
def test_a_record_has_the_same_bits_whatever_its_batch(name):
    model = load_model(name, random_init=True)
    rng = np.random.default_rng(0)
    letters = list("ACGT") if "dnabert" in name else AA
    seqs = ["".join(rng.choice(letters, int(rng.integers(3, 300)))) for _ in range(10)]
    ids = [model.tokenizer.encode(s) for s in seqs]
    n = len(ids)
    alone, tok_alone = _pooled(model, ids, [[i] for i in range(n)], per_token=True)
    halves, tok_halves = _pooled(model, ids, [list(range(1, n, 2)), list(range(0, n, 2))], per_token=True)
    reverse, _ = _pooled(model, ids, [list(range(n))[::-1]])
    assert np.array_equal(alone, halves) and np.array_equal(alone, reverse)
    assert all(np.array_equal(tok_alone[i], tok_halves[i]) for i in range(n))
    with torch.inference_mode():  # the default path (one padded attention per batch) is what differs
        plain = model.embed(pack_token_arrays(ids, list(range(n))), (-1,)).pooled[0].numpy()
    np.testing.assert_allclose(plain, alone, rtol=0, atol=1e-4)


def test_embed_bytes_do_not_depend_on_the_token_budget(tmp_path):
    rng = np.random.default_rng(2)
    fasta = tmp_path / "p.fa"
    write_fasta(fasta, [(f"p{i}", "".join(rng.choice(AA, int(rng.integers(5, 200))))) for i in range(12)])
    digests = set()
    for toks in (200, 3000):
        out = tmp_path / f"t{toks}"
        embed(EmbedConfig(inputs=(str(fasta),), model="esm2_t6_8M_UR50D", output_dir=str(out), random_init=True,
                          num_workers=0, device="cpu", toks_per_batch=toks, quiet=True, reproducible=True))
        digests.add(hashlib.sha256((out / "embeddings.h5").read_bytes()).hexdigest())
    assert len(digests) == 1
