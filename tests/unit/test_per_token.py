"""``--include mean per_tok``: ragged per-token states in embeddings.h5, in input order, resumable."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from virnucdist import EmbedConfig, embed
from virnucdist.errors import UserError
from virnucdist.data.fasta import write_fasta
from virnucdist.models.dnabert_s import DnaBertSConfig
from virnucdist.models.loading import load_model
from virnucdist.packing import pack_token_arrays
from virnucdist.models.random_init import random_dnabert_s
from _formats import save_hf_dir
from virnucdist.writers import read_embeddings, read_token_embeddings
from _helpers import AA


def _proteins(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return [(f"p{i}", "".join(rng.choice(AA, size=int(L)))) for i, L in enumerate(rng.integers(1, 90, size=n))]


def _cfg(inputs, out, model="esm2_t6_8M_UR50D", **kw):
    base = dict(inputs=(str(inputs),), model=model, output_dir=str(out), random_init=True, device="cpu",
                num_workers=0, quiet=True, toks_per_batch=300, flush_every=8, include=("mean", "per_tok"))
    base.update(kw)
    return EmbedConfig(**base)


def _per_token(path):
    with h5py.File(path) as f:
        return f["per_token/offsets"][:], f["per_token/embeddings"][:]


def test_esm_per_token_matches_model_and_mean(tmp_path):
    recs = _proteins() + [("long", "M" * 70)]
    fa = write_fasta(tmp_path / "p.fa", recs) and tmp_path / "p.fa"
    embed(_cfg(fa, tmp_path / "out", truncation_seq_length=50))
    final = tmp_path / "out" / "embeddings.h5"
    ids, mean = read_embeddings(final)
    offsets, tok = _per_token(final)
    assert ids == [r for r, _ in recs]
    assert np.diff(offsets).tolist() == [min(len(s), 50) for _, s in recs]  # residues only, truncated like fair-esm
    lm = load_model("esm2_t6_8M_UR50D", random_init=True, truncation_seq_length=50)
    for i, (_, seq) in enumerate(recs):
        states = tok[offsets[i]:offsets[i + 1]]
        np.testing.assert_allclose(states.mean(0), mean[i], atol=1e-5)
        b = pack_token_arrays([lm.tokenizer.encode(seq)], [0])
        with torch.no_grad():
            h = lm.module(b.tokens, b.positions, b.seg, b.cu_seqlens, b.max_seqlen)
        np.testing.assert_allclose(states, h[1:-1].numpy(), atol=1e-5)
    np.testing.assert_array_equal(read_token_embeddings(final, 3), tok[offsets[3]:offsets[4]])


def test_per_token_resume_is_identical_and_include_is_part_of_the_run(tmp_path):
    recs = _proteins(seed=1)
    fa = write_fasta(tmp_path / "p.fa", recs) and tmp_path / "p.fa"
    out = tmp_path / "out"
    embed(_cfg(fa, out, flush_every=1, window_records=5, keep_shards=True))  # one commit per window of 5
    want = _per_token(out / "embeddings.h5")
    (out / "embeddings.h5").unlink()
    manifest = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**manifest, "complete": False}))  # as if killed before finalize
    cut = 10  # as if killed after the second window's commit
    shard = next((out / "shards").glob("shard-*.h5"))
    with h5py.File(shard, "r+") as f:
        f.attrs["committed"] = cut
        f.attrs["committed_ragged"] = int(f["lengths"][:cut].sum())
    rep = embed(_cfg(fa, out, flush_every=1, window_records=5)).report
    assert rep["summary"]["resumed_records"] == cut
    got = _per_token(out / "embeddings.h5")
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    with pytest.raises(UserError, match="per_token"):
        embed(_cfg(fa, out, include=("mean",)))


def test_dnabert_per_token_covers_all_tokens(tmp_path):
    model, tok = random_dnabert_s(1, config=DnaBertSConfig(num_hidden_layers=1))
    mdir = save_hf_dir(model, tmp_path / "dnabert")
    rng = np.random.default_rng(2)
    reads = [(f"r{i}", "".join(rng.choice(list("ACGT"), size=int(n)))) for i, n in enumerate(rng.integers(20, 300, 25))]
    fa = write_fasta(tmp_path / "r.fa", reads) and tmp_path / "r.fa"
    embed(_cfg(fa, tmp_path / "out", model=str(mdir), random_init=False))
    ids, mean = read_embeddings(tmp_path / "out" / "embeddings.h5")
    offsets, states = _per_token(tmp_path / "out" / "embeddings.h5")
    assert np.diff(offsets).tolist() == [len(tok.encode(s)) for _, s in reads]  # [CLS] ... [SEP] included
    for i in range(len(reads)):
        np.testing.assert_allclose(states[offsets[i]:offsets[i + 1]].mean(0), mean[i], atol=1e-5)
