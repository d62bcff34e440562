"""``torchrun -m virnucdist.train`` with 1 and 2 processes (gloo on CPU): the same embeddings, and the
same classifier (only rank 0 trains, with the same seed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from _train_data import tiny_models, two_sources

from virnucdist.models.classifier import load_classifier

pytestmark = pytest.mark.torchrun


def torchrun(nproc: int, args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "virnucdist.train", *args]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def _features(out) -> dict[int, np.ndarray]:
    """record -> its frames' features, from every rank's shard."""
    got = {}
    for p in sorted((out / "shards").glob("shard-*.h5")):
        with h5py.File(p, "r") as f:
            n = int(f.attrs["committed"])
            rows, lengths = f["rows"][:n], f["lengths"][:n]
            feats = f["features"][:int(lengths.sum())]
        for r, a, b in zip(rows, np.r_[0, np.cumsum(lengths)[:-1]], np.cumsum(lengths)):
            got[int(r)] = feats[a:b]
    return got


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("torchrun-train")
    viral, other = two_sources(d)
    esm, dna = tiny_models(d)
    common = ["--viral", str(viral), "--other", str(other), "--chunk-size", "90", "--esm-model", str(esm),
              "--dnabert-model", str(dna), "--num-workers", "0", "--window-records", "4", "--device", "cpu",
              "--keep-shards"]
    outs = {}
    for n in (1, 2):
        outs[n] = d / f"n{n}"
        p = torchrun(n, [*common, "-o", str(outs[n])])
        assert p.returncode == 0, p.stderr[-3000:]
        outs[f"stderr{n}"] = p.stderr
    return outs


def test_two_ranks_embed_the_same_frames(runs):
    a, b = _features(runs[1]), _features(runs[2])
    assert sorted(a) == sorted(b) == list(range(24))
    for r in a:
        np.testing.assert_allclose(b[r], a[r], rtol=0, atol=1e-5)
    rep = json.loads((runs[2] / "run_report.json").read_text())
    assert rep["world_size"] == 2 and all(r["sequences"] > 0 for r in rep["ranks"])  # both ranks embedded


def test_two_ranks_train_the_same_classifier(runs):
    ma, mb = (json.loads((runs[n] / "metrics.json").read_text()) for n in (1, 2))
    for k in ("frames", "held_out_rows", "confusion_matrix", "best_epoch", "epochs_run"):
        assert ma[k] == mb[k], k
    assert mb["auroc"] == pytest.approx(ma["auroc"], abs=1e-6)
    sa, sb = (load_classifier(runs[n] / "classifier.pth").state_dict() for n in (1, 2))
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=1e-4, atol=1e-5)
    epochs = [ln for ln in runs["stderr2"].splitlines() if ln.startswith("epoch ")]
    assert len(epochs) == ma["epochs_run"]  # one progress line per epoch, from rank 0 only
