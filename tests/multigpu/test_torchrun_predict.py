"""``torchrun -m virnucdist.predict`` with 1 and 2 processes (gloo on CPU): the same results."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest
from _predict_data import make_reads, tiny_models, write_fasta_wrapped

from virnucdist.vnp.chunk import chunk_records
from virnucdist.vnp.consensus import read_consensus, read_predictions
from virnucdist.vnp.translate import FRAME_NAMES, translate_records

pytestmark = pytest.mark.torchrun

def torchrun(nproc: int, args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "virnucdist.predict", *args]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("torchrun-predict")
    reads = make_reads(seed=1, n=60)
    fasta = write_fasta_wrapped(base / "reads.fa", reads)
    m = tiny_models()
    common = [str(fasta), "--chunk-size", "300", "--classifier", str(m["classifier"]), "--esm-model", str(m["esm"]),
              "--dnabert-model", str(m["dnabert"]), "--num-workers", "1", "--window-records", "6",
              "--toks-per-batch", "700", "--device", "cpu", "--keep-shards"]
    outs = {}
    for n in (1, 2):
        outs[n] = base / f"n{n}"
        p = torchrun(n, [*common, "-o", str(outs[n])])
        assert p.returncode == 0, p.stderr[-3000:]
        outs[f"stderr{n}"] = p.stderr
    outs["common"] = common
    return reads, outs


def _assert_same_predictions(a, b, reads):
    ra = list(read_predictions(a / "prediction_results.txt"))
    rb = list(read_predictions(b / "prediction_results.txt"))
    expected = [f.id for f in translate_records(chunk_records(reads, 300))]
    assert len(expected) > 20
    assert [r.seq_id for r in ra] == expected and [r.seq_id for r in rb] == expected
    np.testing.assert_allclose([[r.score1, r.score2] for r in rb], [[r.score1, r.score2] for r in ra], atol=1e-5, rtol=0)
    assert [r.prediction for r in ra] == [r.prediction for r in rb]
    assert read_consensus(a / "prediction_results_highestscore.csv") == \
        read_consensus(b / "prediction_results_highestscore.csv")
    sa = [ln.split("\t") for ln in (a / "read_summary.tsv").read_text().splitlines()]
    sb = [ln.split("\t") for ln in (b / "read_summary.tsv").read_text().splitlines()]
    assert [x[:3] + x[4:] for x in sa] == [x[:3] + x[4:] for x in sb]
    assert [x[0] for x in sb[1:]] == [rid for rid, _ in reads]


def test_two_ranks_give_the_one_rank_results(runs):
    reads, outs = runs
    _assert_same_predictions(outs[1], outs[2], reads)


def test_killed_with_sigkill_under_two_ranks_then_rerun_gives_the_uninterrupted_results(runs, tmp_path):
    reads, outs = runs
    out = tmp_path / "killed"
    env_kill = {"VIRNUCDIST_TEST_KILL_AT": "batch:2"}  # each rank dies (SIGKILL) after its 2nd window
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "virnucdist.predict", *outs["common"], "-o", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                       env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **env_kill})
    assert p.returncode != 0 and not (out / "prediction_results.txt").exists()
    shards = sorted((out / "shards").glob("shard-*.h5"))
    committed = sum(int(h5py.File(f, "r").attrs["committed"]) for f in shards)
    assert 0 < committed < len(reads)  # part of the work survived the kill
    again = torchrun(2, [*outs["common"], "-o", str(out)])
    assert again.returncode == 0, again.stderr[-3000:]
    rep = json.loads((out / "run_report.json").read_text())
    assert rep["summary"]["resumed_records"] == committed
    _assert_same_predictions(outs[2], out, reads)


def test_every_frame_scored_exactly_once_across_ranks(runs):
    reads, outs = runs
    out = outs[2]
    shards = sorted((out / "shards").glob("shard-*.h5"))
    assert {p.name[:12] for p in shards} == {"shard-r00000", "shard-r00001"}
    frame_ids, read_rows = [], []
    for p in shards:
        with h5py.File(p, "r") as f:
            n = int(f.attrs["committed"])
            assert n > 0  # both ranks did work
            rows, lengths = f["rows"][:n], f["lengths"][:n]
            chunk, frame = f["chunk"][:int(lengths.sum())], f["frame"][:int(lengths.sum())]
        read_rows += rows.tolist()
        owner = np.repeat(rows, lengths)
        frame_ids += [f"{reads[r][0]}_chunk_{k + 1}{FRAME_NAMES[c]}" for r, k, c in zip(owner, chunk, frame)]
    assert sorted(frame_ids) == sorted(f.id for f in translate_records(chunk_records(reads, 300)))
    assert sorted(read_rows) == [i for i, (_, seq) in enumerate(reads) if seq]  # empty reads are not computed
    rep = json.loads((out / "run_report.json").read_text())
    assert rep["world_size"] == 2 and [r["rank"] for r in rep["ranks"]] == [0, 1]
    assert sum(r["sequences"] for r in rep["ranks"]) == len(read_rows)
    assert len(frame_ids) == rep["counts"]["frames"] == rep["counters"]["frames"]
    assert rep["skipped"]["empty"] == ["empty_read"]
    assert (out / "logs" / "rank1.log").is_file()
    # rank 0's closing progress line: all of its reads, with a rate estimated for both ranks
    rank0_reads = 0
    for p in shards:
        if p.name.startswith("shard-r00000"):
            with h5py.File(p, "r") as f:
                rank0_reads += int(f.attrs["committed"])
    lines = [m for m in map(re.compile(r"^predicting: 100\.0% +(\d+)/(\d+) seqs on rank 0, ([\d,]+) bp/s "
                                       r"\(all ranks, est\.\)$").match, outs["stderr2"].splitlines()) if m]
    assert lines, outs["stderr2"][-3000:]
    done, total, rate = lines[-1].groups()
    assert int(done) == int(total) == rank0_reads > 0 and int(rate.replace(",", "")) > 0


def test_rerun_with_two_ranks_is_a_noop(runs):
    reads, outs = runs
    out = outs[2]
    before = {n: (out / n).read_bytes() for n in ("prediction_results.txt", "prediction_results_highestscore.csv",
                                                  "read_summary.tsv")}
    p = torchrun(2, [*outs["common"], "-o", str(out)])
    assert p.returncode == 0, p.stderr[-3000:]
    assert "nothing to do" in p.stderr
    assert {n: (out / n).read_bytes() for n in before} == before
