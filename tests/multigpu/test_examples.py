"""The README's quick start and examples/custom_pipeline.py, run as a user would (torchrun, gloo on CPU)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from virnucdist.writers import read_embeddings
from _helpers import clean_env

pytestmark = pytest.mark.torchrun

REPO = Path(__file__).resolve().parents[2]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    p = subprocess.run(args, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    return p


def test_quick_start_and_custom_pipeline(tmp_path):
    fasta = REPO / "examples" / "proteins.fa"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    # the README's first command, as written (relative paths, from the repo root)
    readme = (REPO / "README.md").read_text()
    quick = next(line for line in readme.splitlines() if line.startswith("torchrun --standalone"))
    assert "-o runs/demo" in quick
    _run(torchrun + quick.split()[3:-1] + [str(tmp_path / "demo"), "--num-workers", "0"], cwd=REPO)
    ids, emb = read_embeddings(tmp_path / "demo" / "embeddings.h5")
    assert ids == [f"protein_{i:04d}" for i in range(1, 257)] and emb.shape == (256, 320)

    _run(torchrun + [str(REPO / "examples" / "custom_pipeline.py"), str(fasta), "-o", str(tmp_path / "custom")],
         cwd=tmp_path)
    cids, cemb = read_embeddings(tmp_path / "custom" / "embeddings.h5")
    assert cids == ids and cemb.shape == (256, 321)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)  # same random model, its own post-processing
    np.testing.assert_allclose(cemb[:, :320], unit, atol=1e-5)
    assert np.isfinite(cemb[:, 320]).all() and (cemb[:, 320] >= 0).all()

    out = _run([sys.executable, "-m", "virnucdist.cli", "inspect", str(tmp_path / "demo")], cwd=tmp_path).stdout
    assert "finished" in out and "256 x 320" in out and "world size 2" in out


def test_readme_predict_demo_runs_on_the_bundled_reads(tmp_path):
    """The README's CPU predict demo, as written: small random models, a random classifier, 200 reads."""
    readme = (REPO / "README.md").read_text()
    line = next(ln for ln in readme.splitlines() if ln.startswith("python -m virnucdist.predict examples/reads.fa"))
    args = line.split()
    out = tmp_path / "predict-demo"
    args[args.index("-o") + 1] = str(out)
    p = _run([sys.executable, *args[1:], "--device", "cpu"], cwd=REPO)
    assert "RANDOM WEIGHTS" in p.stderr  # said loudly
    lines = (out / "read_summary.tsv").read_text().splitlines()
    assert len(lines) == 201 and lines[0].startswith("read_id")
    assert (out / "prediction_results.txt").read_text().startswith("Sequence_ID\tPrediction")

