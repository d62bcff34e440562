"""DNABERT-S through ``torchrun -m virnucdist.embed``: 2 ranks == 1 process (gloo on CPU), per-token states too."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from virnucdist.data.fasta import write_fasta
from virnucdist.models.dnabert_s import DnaBertSConfig
from virnucdist.models.random_init import random_dnabert_s
from _formats import save_hf_dir
from virnucdist.writers import read_embeddings
from _helpers import clean_env

pytestmark = pytest.mark.torchrun


def test_dnabert_two_ranks_equal_one(tmp_path):
    model, _ = random_dnabert_s(3, config=DnaBertSConfig(num_hidden_layers=2))
    model_dir = save_hf_dir(model, tmp_path / "dnabert-s", fmt="safetensors")
    rng = np.random.default_rng(0)
    reads = [(f"read_{i}", "".join(rng.choice(list("ACGTN"), p=[.24, .24, .24, .24, .04], size=int(n))))
             for i, n in enumerate(rng.integers(60, 700, size=60))]
    fasta = write_fasta(tmp_path / "reads.fa", reads) and tmp_path / "reads.fa"
    outs, per_tok = {}, {}
    for n in (1, 2):
        out = tmp_path / f"ws{n}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               "-m", "virnucdist.embed", str(fasta), "--model", str(model_dir), "-o", str(out), "--device", "cpu",
               "--num-workers", "0", "--toks-per-batch", "1024", "--quiet", "--include", "mean", "per_tok"]
        p = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-4000:]
        outs[n] = read_embeddings(out / "embeddings.h5")
        with h5py.File(out / "embeddings.h5") as f:
            per_tok[n] = f["per_token/offsets"][:], f["per_token/embeddings"][:]
        report = json.loads((out / "run_report.json").read_text())
        assert report["world_size"] == n and all(r["sequences"] > 0 for r in report["ranks"])
    (ids1, e1), (ids2, e2) = outs[1], outs[2]
    assert ids1 == ids2 == [r for r, _ in reads]
    assert e1.shape == (60, 768)
    cos = (e1 * e2).sum(1) / np.linalg.norm(e1, axis=1) / np.linalg.norm(e2, axis=1)
    assert cos.min() >= 0.9999
    np.testing.assert_array_equal(per_tok[1][0], per_tok[2][0])  # same ragged layout, input order
    np.testing.assert_allclose(per_tok[1][1], per_tok[2][1], atol=1e-4)
