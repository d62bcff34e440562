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
from virnucdist.vnp.translate import translate_records

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
              "--dnabert-model", str(m["dnabert"]), "--num-workers", "1", "--reads-per-block", "6",
              "--toks-per-batch", "700", "--device", "cpu"]
    outs = {}
    for n in (1, 2):
        outs[n] = base / f"n{n}"
        p = torchrun(n, [*common, "-o", str(outs[n])])
        assert p.returncode == 0, p.stderr[-3000:]
        outs[f"stderr{n}"] = p.stderr
    return reads, outs


def test_two_ranks_give_the_one_rank_results(runs):
    reads, outs = runs
    a, b = outs[1], outs[2]
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


def test_every_frame_scored_exactly_once_across_ranks(runs):
    reads, outs = runs
    out = outs[2]
    shards = sorted((out / "shards").glob("shard-*.h5"))
    assert {p.name[:12] for p in shards} == {"shard-r00000", "shard-r00001"}
    frame_ids, read_rows = [], []
    for p in shards:
        with h5py.File(p, "r") as f:
            assert f.attrs["committed"] > 0  # both ranks did work
            frame_ids += f["frame_ids"].asstr()[:int(f.attrs["committed_frames"])].tolist()
            read_rows += f["rows"][:int(f.attrs["committed"])].tolist()
    assert sorted(frame_ids) == sorted(f.id for f in translate_records(chunk_records(reads, 300)))
    assert sorted(read_rows) == list(range(len(reads)))
    rep = json.loads((out / "run_report.json").read_text())
    assert rep["world_size"] == 2 and [r["rank"] for r in rep["ranks"]] == [0, 1]
    assert sum(r["sequences"] for r in rep["ranks"]) == len(frame_ids) == rep["counts"]["frames"]
    assert rep["skipped"]["empty_read"] == ["empty_read"]
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
    m = tiny_models()
    before = {n: (out / n).read_bytes() for n in ("prediction_results.txt", "prediction_results_highestscore.csv",
                                                  "read_summary.tsv")}
    fasta = out.parent / "reads.fa"
    p = torchrun(2, [str(fasta), "--chunk-size", "300", "--classifier", str(m["classifier"]), "--esm-model",
                     str(m["esm"]), "--dnabert-model", str(m["dnabert"]), "--num-workers", "1", "--reads-per-block",
                     "6", "--toks-per-batch", "700", "--device", "cpu", "-o", str(out)])
    assert p.returncode == 0, p.stderr[-3000:]
    assert {n: (out / n).read_bytes() for n in before} == before
    rep = json.loads((out / "run_report.json").read_text())
    assert rep["summary"]["resumed_records"] == len(reads) and rep["summary"]["sequences"] == 0
