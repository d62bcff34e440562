"""kill -9 of one rank, or of every rank, of a 2-rank torchrun, then the same command again: the final
files are byte-identical (same hash) to an uninterrupted 2-rank run's.

The windows and batches of a resumed run are planned from all the records, as in the uninterrupted
run, never from what is left: the same batches give the same bytes. Windows are by tokens (the
default, ramped at the start), not ``--window-records``, so that a replanned resume would differ.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from _predict_data import make_reads, tiny_models, write_fasta_wrapped

from virnucdist.data.fasta import write_fasta
from _helpers import AA, MODEL, sha256, torchrun

pytestmark = pytest.mark.torchrun


def _committed(out: Path) -> int:
    return sum(int(h5py.File(p, "r").attrs["committed"]) for p in (out / "shards").glob("shard-*.h5"))


@pytest.fixture(scope="module")
def embed_case(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume-bytes")
    rng = np.random.default_rng(5)
    recs = [(f"p{i:03d}", "".join(rng.choice(AA, size=int(rng.integers(20, 200))))) for i in range(80)]
    fasta = d / "p.fa"
    write_fasta(fasta, recs)
    args = [str(fasta), "--model", MODEL, "--random-init", "--num-workers", "0", "--device", "cpu",
            "--toks-per-batch", "256", "--flush-every", "1", "--quiet"]
    p = torchrun("virnucdist.embed", [*args, "-o", str(d / "ref")])
    assert p.returncode == 0, p.stderr[-3000:]
    return d, args, len(recs), sha256(d / "ref" / "embeddings.h5")


@pytest.mark.parametrize("kill", [{"VIRNUCDIST_TEST_KILL_AT": "batch:3", "VIRNUCDIST_TEST_KILL_RANK": "1"},
                                  {"VIRNUCDIST_TEST_KILL_AT": "batch:2"}], ids=["rank1", "all-ranks"])
def test_embed_killed_then_rerun_is_byte_identical(embed_case, kill):
    d, args, n, ref = embed_case
    out = d / f"killed-{len(kill)}"
    p = torchrun("virnucdist.embed", [*args, "-o", str(out)], **kill)
    assert p.returncode != 0 and not (out / "embeddings.h5").exists()
    committed = _committed(out)
    assert 0 < committed < n
    p = torchrun("virnucdist.embed", [*args, "-o", str(out)])
    assert p.returncode == 0, p.stderr[-3000:]
    assert sha256(out / "embeddings.h5") == ref


def test_predict_rank_killed_then_rerun_is_byte_identical(tmp_path):
    reads = make_reads(seed=2, n=20)
    fasta = write_fasta_wrapped(tmp_path / "reads.fa", reads)
    m = tiny_models()
    args = [str(fasta), "--chunk-size", "300", "--classifier", str(m["classifier"]), "--esm-model", str(m["esm"]),
            "--dnabert-model", str(m["dnabert"]), "--num-workers", "0", "--toks-per-batch", "300",
            "--device", "cpu", "--quiet"]
    p = torchrun("virnucdist.predict", [*args, "-o", str(tmp_path / "ref")])
    assert p.returncode == 0, p.stderr[-3000:]
    out = tmp_path / "killed"
    p = torchrun("virnucdist.predict", [*args, "-o", str(out)], VIRNUCDIST_TEST_KILL_AT="batch:2",
                  VIRNUCDIST_TEST_KILL_RANK="1")
    assert p.returncode != 0 and 0 < _committed(out) < len(reads)
    p = torchrun("virnucdist.predict", [*args, "-o", str(out)])
    assert p.returncode == 0, p.stderr[-3000:]
    for name in ("prediction_results.txt", "prediction_results_highestscore.csv"):
        assert sha256(out / name) == sha256(tmp_path / "ref" / name), name


def _processes_with(marker: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if marker in (d / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
def test_predict_workers_do_not_outlive_a_killed_rank(tmp_path):
    """kill -9 of one rank of a 2-rank predict with 2 DataLoader workers per rank: within 10 s of torchrun's
    exit no process of the run is left (the workers die with their rank: PR_SET_PDEATHSIG). These small
    windows do not fill the workers' result pipe, so torch's watchdog would end them too; the hang the
    signal prevents is reproduced in tests/unit/test_exits.py::test_loader_workers_die_with_a_killed_rank."""
    import time

    reads = make_reads(seed=3, n=24)
    fasta = write_fasta_wrapped(tmp_path / "reads.fa", reads)
    m = tiny_models()
    out = tmp_path / "orphans-run"
    args = [str(fasta), "--chunk-size", "300", "--classifier", str(m["classifier"]), "--esm-model", str(m["esm"]),
            "--dnabert-model", str(m["dnabert"]), "--num-workers", "2", "--toks-per-batch", "300",
            "--device", "cpu", "--quiet", "-o", str(out)]
    p = torchrun("virnucdist.predict", args, VIRNUCDIST_TEST_KILL_AT="batch:2", VIRNUCDIST_TEST_KILL_RANK="1")
    assert p.returncode != 0
    left = _processes_with(str(out))
    for _ in range(100):
        if not left:
            break
        time.sleep(0.1)
        left = _processes_with(str(out))
    assert not left, f"processes of the run still alive 10 s after torchrun exited: {left}"
