"""kill -9 at the moments a file is half done, then rerun the same command: nothing lost.

Each test runs ``python -m virnucdist.embed`` with ``VIRNUCDIST_TEST_KILL_AT`` (the
test-only hook in ``virnucdist._testhooks``): the process SIGKILLs itself exactly
there. The rerun of the same job (in this process, to save a torch start-up; one
thread everywhere, so fp32 results are reproducible) must give a final file
bit-identical to an uninterrupted run, every id once, in input order.
Mid-inference kills of real torchrun ranks are in tests/multigpu/test_torchrun_embed.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from virnucdist import EmbedConfig, embed
from virnucdist.data.fasta import write_fasta
from virnucdist.writers import read_embeddings
from _helpers import AA, MODEL, clean_env

FLUSH = 8


def _embed(fasta: Path, out: Path, **env) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "virnucdist.embed", str(fasta), "--model", MODEL, "--random-init", "-o", str(out),
           "--num-workers", "0", "--device", "cpu", "--toks-per-batch", "512", "--flush-every", str(FLUSH),
           "--window-records", str(FLUSH), "--quiet"]
    return subprocess.run(cmd, check=False, env=clean_env(**env), capture_output=True, text=True, timeout=120)


def _rerun(fasta: Path, out: Path) -> None:
    """The same job as :func:`_embed` without the kill, in this process."""
    embed(EmbedConfig(inputs=(str(fasta),), model=MODEL, output_dir=str(out), random_init=True, num_workers=0,
                      device="cpu", toks_per_batch=512, flush_every=FLUSH, window_records=FLUSH, quiet=True))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The subprocesses run with OMP_NUM_THREADS=1; so does this process's share of the work."""
    n = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")  # else embed() picks a thread count per core
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(n)


def _killed(p: subprocess.CompletedProcess) -> None:
    assert p.returncode == -signal.SIGKILL, f"rc {p.returncode} (expected SIGKILL)\n{p.stderr[-3000:]}"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("kill")
    rng = np.random.default_rng(3)
    recs = [(f"k{i:03d}", "".join(rng.choice(AA, size=int(rng.integers(5, 120))))) for i in range(60)]
    fasta = d / "prot.fa"
    write_fasta(fasta, recs, width=60)
    ref = d / "ref"
    _rerun(fasta, ref)
    return d, fasta, [r for r, _ in recs], read_embeddings(ref / "embeddings.h5")


def _assert_identical(out: Path, data) -> dict:
    _, _, ids, (ref_ids, ref_emb) = data
    got_ids, emb = read_embeddings(out / "embeddings.h5")
    assert got_ids == ref_ids == ids  # every id once, input order
    np.testing.assert_array_equal(emb, ref_emb)  # bit-identical
    assert not list(out.glob("*.tmp*")), list(out.glob("*.tmp*"))
    return json.loads((out / "run_report.json").read_text())


def _committed(out: Path) -> list[tuple[int, int]]:
    """(committed marker, rows actually on disk) per readable shard."""
    got = []
    for p in sorted((out / "shards").glob("shard-*.h5")):
        with h5py.File(p, "r") as f:
            got.append((int(f.attrs["committed"]), int(f["rows"].shape[0])))
    return got


def test_kill_during_index_build(data, tmp_path):
    """Killed after index.tmp* is written, before the rename: no index, no shards; the rerun rebuilds."""
    _, fasta, ids, _ = data
    out = tmp_path / "run"
    _killed(_embed(fasta, out, VIRNUCDIST_TEST_KILL_AT="index"))
    assert list(out.glob("index.tmp*")) and not (out / "index").exists()
    assert not (out / "shards").exists() and not (out / "embeddings.h5").exists()
    _rerun(fasta, out)
    rep = _assert_identical(out, data)  # also: the stale index.tmp* was removed
    assert not list(out.glob("index.tmp*"))
    assert rep["summary"]["resumed_records"] == 0 and rep["summary"]["sequences"] == len(ids)


def test_kill_mid_flush(data, tmp_path):
    """Killed inside the 3rd shard flush: its rows are on disk but the committed marker still counts
    only the first two flushes. The rerun trusts only the marker: those records are resumed, the rest
    (the torn flush included) redone."""
    _, fasta, ids, _ = data
    out = tmp_path / "run"
    _killed(_embed(fasta, out, VIRNUCDIST_TEST_KILL_AT="flush:3"))
    [(committed, on_disk)] = _committed(out)
    assert 2 * FLUSH <= committed < on_disk < len(ids)
    assert not (out / "embeddings.h5").exists()
    _rerun(fasta, out)
    rep = _assert_identical(out, data)
    assert rep["summary"]["resumed_records"] == committed
    assert rep["summary"]["sequences"] == len(ids) - committed


def test_kill_during_finalize(data, tmp_path):
    """Killed with embeddings.h5.tmp complete but not renamed: the final name never shows a partial file;
    the rerun embeds nothing and finalizes again."""
    _, fasta, ids, _ = data
    out = tmp_path / "run"
    _killed(_embed(fasta, out, VIRNUCDIST_TEST_KILL_AT="finalize"))
    assert (out / "embeddings.h5.tmp").exists() and not (out / "embeddings.h5").exists()
    assert sum(c for c, _ in _committed(out)) == len(ids)
    _rerun(fasta, out)
    rep = _assert_identical(out, data)
    assert rep["summary"]["resumed_records"] == len(ids) and rep["summary"]["sequences"] == 0


def test_kill_during_refinalize_keeps_previous_output(data, tmp_path):
    """A run killed after its final rename but before it was marked complete finalizes again on the rerun;
    killed during that second finalize, the earlier embeddings.h5 is untouched."""
    _, fasta, _, _ = data
    out = tmp_path / "run"
    embed(EmbedConfig(inputs=(str(fasta),), model=MODEL, output_dir=str(out), random_init=True, num_workers=0,
                      device="cpu", toks_per_batch=512, flush_every=FLUSH, window_records=FLUSH, quiet=True,
                      keep_shards=True))
    manifest = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**manifest, "complete": False}))
    before = (out / "embeddings.h5").read_bytes()
    _killed(_embed(fasta, out, VIRNUCDIST_TEST_KILL_AT="finalize"))
    assert (out / "embeddings.h5").read_bytes() == before
