"""A rank that crashes under torchrun: restarted with --max-restarts, reported without.

The crash is real: ``VIRNUCDIST_TEST_CRASH_RANK``/``VIRNUCDIST_TEST_CRASH_AFTER_BATCHES``
(the test-only hook in ``virnucdist._testhooks``) make rank 1 raise after its 2nd batch
in the first attempt only (``TORCHELASTIC_RESTART_COUNT`` 0), so a restarted attempt
succeeds. gloo on CPU, a tiny random-init ESM-2, 2 ranks.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from virnucdist import EmbedConfig, embed
from virnucdist.data.fasta import write_fasta
from virnucdist.writers import read_embeddings
from _helpers import AA, MODEL, clean_env

pytestmark = pytest.mark.torchrun

TOKS, FLUSH = 128, 8
CRASH = {"VIRNUCDIST_TEST_CRASH_RANK": "1", "VIRNUCDIST_TEST_CRASH_AFTER_BATCHES": "2"}
FAIL_BOUND_S = 60  # a crash without restarts ends the whole torchrun within this


def _torchrun(fasta: Path, out: Path, *torchrun_flags: str, **env) -> tuple[subprocess.CompletedProcess, float]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *torchrun_flags,
           "-m", "virnucdist.embed", str(fasta), "--model", MODEL, "--random-init", "-o", str(out),
           "--num-workers", "0", "--device", "cpu", "--toks-per-batch", str(TOKS), "--flush-every", str(FLUSH),
           "--quiet"]
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, env=clean_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        stdout, stderr = p.communicate(timeout=180)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    return subprocess.CompletedProcess(cmd, p.returncode, stdout, stderr), time.monotonic() - t0


def _ok(p: subprocess.CompletedProcess) -> None:
    assert p.returncode == 0, f"rc {p.returncode}\nstderr:\n{p.stderr[-5000:]}"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("elastic")
    rng = np.random.default_rng(7)
    recs = [(f"e{i:03d}", "".join(rng.choice(AA, size=int(rng.integers(2, 40))))) for i in range(120)]
    fasta = d / "prot.fa"
    write_fasta(fasta, recs)
    ref = d / "ref"  # the uninterrupted run, one process
    embed(EmbedConfig(inputs=(str(fasta),), model=MODEL, output_dir=str(ref), random_init=True, num_workers=0,
                      device="cpu", toks_per_batch=TOKS, flush_every=FLUSH, quiet=True))
    return d, fasta, [r for r, _ in recs], read_embeddings(ref / "embeddings.h5")


def _assert_same(out: Path, data) -> dict:
    _, _, ids, (ref_ids, ref_emb) = data
    got_ids, emb = read_embeddings(out / "embeddings.h5")
    assert got_ids == ref_ids == ids  # exact ids, input order, each once
    np.testing.assert_allclose(emb, ref_emb, rtol=0, atol=2e-5)  # other batch compositions: fp32 rounding
    return json.loads((out / "run_report.json").read_text())


def _committed(out: Path, rank: int) -> int:
    n = 0
    for p in (out / "shards").glob(f"shard-r{rank:05d}-*.h5"):
        with h5py.File(p, "r") as f:
            n += int(f.attrs["committed"])
    return n


FAILED_LINE = re.compile(r"^virnucdist: rank (\d+) failed: RuntimeError: injected crash \(traceback in (.+)\)$")


def _failure_lines(stderr: str) -> list[re.Match]:
    return [m for m in map(FAILED_LINE.match, stderr.splitlines()) if m]


def test_crash_is_restarted_and_completes(data):
    d, fasta, ids, _ = data
    out = d / "restarted"
    p, _ = _torchrun(fasta, out, "--max-restarts=2", **CRASH)
    _ok(p)
    # the restarted ranks met in a store of their own, not at the first attempt's stale addresses
    # (torchrun keeps one store across restarts: pytorch/pytorch#135712; see launch.dist._restart_store)
    assert "connectFullMesh" not in p.stderr and "failed to connect" not in p.stderr
    [m] = _failure_lines(p.stderr)  # the first attempt's crash, reported once
    assert m.group(1) == "1"
    rep = _assert_same(out, data)
    assert rep["restart_count"] == 1
    # the restarted attempt went on from the first attempt's shards
    assert rep["summary"]["resumed_records"] > 0
    assert rep["summary"]["resumed_records"] + rep["summary"]["sequences"] == len(ids)
    assert "injected crash" in (out / "logs" / "rank1.log").read_text()


def test_crash_without_restarts_reports_the_rank_and_resumes(data):
    d, fasta, ids, _ = data
    out = d / "failed"
    p, wall = _torchrun(fasta, out, **CRASH)
    assert p.returncode != 0
    assert wall < FAIL_BOUND_S, f"torchrun took {wall:.0f} s to give up"
    # the crashed rank's line, then once more as the last line, after torchrun's own report
    first, m = _failure_lines(p.stderr)
    assert m.group(1) == "1" and first.group(0) == m.group(0), p.stderr[-3000:]
    assert [ln for ln in p.stderr.splitlines() if ln.strip()][-1] == m.group(0)
    assert f"traceback : {m.group(0)}" in p.stderr  # torchrun's root cause: our line, from the error file
    log = Path(m.group(2))
    assert log == (out / "logs" / "rank1.log").resolve() and log.is_file()
    text = log.read_text()
    assert "Traceback" in text and "RuntimeError: injected crash" in text
    # no traceback from any rank on the console (torchrun's own agent report may have one) ...
    assert not [ln for ln in p.stderr.splitlines() if ln.lstrip().startswith("File ") and "virnucdist" in ln]
    # ... and a survivor says at most that it stopped because another rank went away, or that torchrun's
    # SIGTERM (sent to the other ranks when one fails) interrupted it, resumable
    ours = [ln for ln in p.stderr.splitlines() if ln.startswith("virnucdist:")]
    assert all(ln == m.group(0) or ln.startswith("virnucdist: rank 0 stopped: lost another rank in a collective")
               or ln.startswith("virnucdist: interrupted (SIGTERM); rerun the same command to resume") for ln in ours), ours
    # partial shards stay, resumable; no final file was written
    assert not (out / "embeddings.h5").exists()
    crashed = _committed(out, 1)
    assert crashed > 0  # rank 1 committed its 2 batches before exiting
    _ok(_torchrun(fasta, out)[0])  # the same command, no crash
    rep = _assert_same(out, data)
    assert rep["restart_count"] == 0
    assert rep["summary"]["resumed_records"] >= crashed
    assert rep["summary"]["resumed_records"] + rep["summary"]["sequences"] == len(ids)
