"""``virnucdist.embed`` with paired-end input: R1/R2 files, an interleaved file and a single-end file with
``/1``, ``/2`` ids give the same records (named ``{id}/1``, ``{id}/2``) and the same vectors."""

from __future__ import annotations

import h5py
import numpy as np
from _pairs_data import make_pairs, write_interleaved, write_r1_r2
from _predict_data import write_fasta_wrapped

from virnucdist.tasks.embed import EmbedConfig, embed


def test_paired_inputs_embed_each_mate(tmp_path):
    pairs = make_pairs(5, 9)
    r1, r2 = write_r1_r2(tmp_path / "p", pairs)
    inter = write_interleaved(tmp_path / "i.fq", pairs)
    single = write_fasta_wrapped(tmp_path / "s.fa", [(f"{rid}/{m}", seq) for rid, a, b in pairs
                                                     for m, seq in ((1, a), (2, b))])
    got = {}
    for name, inputs, kw in (("r1r2", (r1, r2), {}), ("inter", (inter,), {"interleaved": True}), ("single", (single,), {})):
        embed(EmbedConfig(inputs=tuple(map(str, inputs)), model="dnabert-s-tiny", random_init=True, device="cpu",
                          output_dir=str(tmp_path / name), num_workers=0, quiet=True, **kw))
        with h5py.File(tmp_path / name / "embeddings.h5", "r") as f:
            got[name] = (f["ids"].asstr()[:].tolist(), f["embeddings"][:])
    ids = [f"{rid}/{m}" for rid, _, _ in pairs for m in (1, 2)]
    for name in got:
        assert got[name][0] == ids, name
        np.testing.assert_array_equal(got[name][1], got["single"][1])
