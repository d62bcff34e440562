"""``torchrun -m virnucdist.predict --samples`` with 2 processes (gloo on CPU): a sheet run's per-sample
files equal separate runs byte for byte, and a run killed with SIGKILL resumes to the same files.

Every frame is batched alone (``--toks-per-batch 1``) so that byte-identity does not depend on which
frames share a packed batch (see tests/unit/test_samples_predict.py)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import h5py
import pytest
from _pairs_data import make_pairs, tiny, tiny_flags, write_interleaved, write_r1_r2, write_sheet

from virnucdist.tasks.predict import PredictConfig, predict

pytestmark = pytest.mark.torchrun

FILES = ("prediction_results.txt", "read_summary.tsv", "prediction_results_highestscore.csv", "pair_summary.tsv")


def torchrun(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "virnucdist.predict", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})})


def hashes(out, names=("S1", "S2", "S3")) -> dict:
    return {(n, f): hashlib.sha256((out / n / f).read_bytes()).hexdigest() for n in names for f in FILES}


@pytest.fixture(scope="module")
def sheet_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("torchrun-samples")
    s1, s2 = make_pairs(11, 6), make_pairs(12, 4)
    s3 = make_pairs(13, 3, prefix="B") + [(f"copy{i}", a, b) for i, (_, a, b) in enumerate(s1[:2])]
    f1, f2, f3 = write_r1_r2(d / "s1", s1), write_r1_r2(d / "s2", s2, gz=False), write_interleaved(d / "s3.fq", s3)
    sheet = write_sheet(d / "sheet.tsv", [("S1", *f1), ("S2", *f2), ("S3", f3)])
    common = ["--samples", str(sheet), "--interleaved", *tiny_flags(), "--toks-per-batch", "1", "--window-records", "3",
              "--num-workers", "1"]
    p = torchrun([*common, "-o", str(d / "sheet")])
    assert p.returncode == 0, p.stderr[-3000:]
    return {"dir": d, "files": (f1, f2, f3), "common": common, "out": d / "sheet"}


def test_sheet_under_two_ranks_equals_three_separate_runs(sheet_run, tmp_path):
    out, (f1, f2, f3) = sheet_run["out"], sheet_run["files"]
    for name, files, kw in (("S1", f1, {}), ("S2", f2, {}), ("S3", (f3,), {"interleaved": True})):
        predict(PredictConfig(inputs=tuple(map(str, files)), output_dir=str(tmp_path / name), num_workers=0,
                              toks_per_batch=1, **kw, **tiny()))
    assert hashes(out) == hashes(tmp_path)
    rep = json.loads((out / "run_report.json").read_text())
    assert rep["world_size"] == 2 and all(r["sequences"] > 0 for r in rep["ranks"])  # one partition over the sheet
    assert rep["dedup"]["served_from_duplicate"] == 4  # S3's copies of two S1 pairs
    assert [ln.split("\t")[:3] for ln in (out / "samples.tsv").read_text().splitlines()[1:]] == \
        [["S1", "12", "6"], ["S2", "8", "4"], ["S3", "10", "5"]]


def test_sheet_killed_under_two_ranks_then_rerun_equals_uninterrupted(sheet_run, tmp_path):
    out = tmp_path / "killed"
    p = torchrun([*sheet_run["common"], "-o", str(out)], env={"VIRNUCDIST_TEST_KILL_AT": "batch:2"})
    assert p.returncode != 0 and not (out / "samples.tsv").exists()
    committed = sum(int(h5py.File(f, "r").attrs["committed"]) for f in (out / "shards").glob("shard-*.h5"))
    assert 0 < committed < 30  # part of the sheet survived the kill
    again = torchrun([*sheet_run["common"], "-o", str(out)])
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((out / "run_report.json").read_text())["summary"]["resumed_records"] == committed
    assert hashes(out) == hashes(sheet_run["out"])
    assert (out / "samples.tsv").read_bytes() == (sheet_run["out"] / "samples.tsv").read_bytes()
