"""Read ids are unique per sample: two samples of a sequencing run may hold the same read ids."""

from __future__ import annotations

import hashlib

import pytest
from _pairs_data import make_pairs, tiny, write_r1_r2, write_sheet

from virnucdist.data.fasta import FastaError
from virnucdist.data.index import SequenceIndex
from virnucdist.data.inputs import InputFile
from virnucdist.errors import UserError
from virnucdist.tasks.predict import PredictConfig, predict

FILES = ("prediction_results.txt", "read_summary.tsv", "prediction_results_highestscore.csv", "pair_summary.tsv")


def run(out, inputs=(), **kw):
    return predict(PredictConfig(inputs=tuple(map(str, inputs)), output_dir=str(out), num_workers=0,
                                 window_records=5, toks_per_batch=1, **tiny(), **kw))


def digest(folder):
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in FILES}


def _shared(tmp_path):
    a = make_pairs(11, 5)
    b = [(rid, x, y) for (rid, _, _), (_, x, y) in zip(a, make_pairs(12, 5))]   # a's ids, other reads
    return a, b, write_r1_r2(tmp_path / "s1", a, gz=False), write_r1_r2(tmp_path / "s2", b, gz=False)


def test_two_samples_sharing_read_ids_equal_separate_runs(tmp_path):
    a, b, f1, f2 = _shared(tmp_path)
    sheet = write_sheet(tmp_path / "sheet.tsv", [("S1", *f1), ("S2", *f2)])
    run(tmp_path / "sheet", samples=str(sheet))
    run(tmp_path / "one", f1)
    run(tmp_path / "two", f2)
    assert digest(tmp_path / "sheet" / "S1") == digest(tmp_path / "one")
    assert digest(tmp_path / "sheet" / "S2") == digest(tmp_path / "two")
    ids = [ln.split("\t")[0] for ln in (tmp_path / "two" / "read_summary.tsv").read_text().splitlines()[1:]]
    assert ids == [f"{rid}/{m}" for rid, _, _ in a for m in (1, 2)]     # the same ids in both samples


def test_position_names_the_sample_when_ids_repeat_across_samples(tmp_path):
    a, _, f1, f2 = _shared(tmp_path)
    idx = SequenceIndex.build([InputFile(str(f), sample=s, mate=m) for s, fs in (("S1", f1), ("S2", f2))
                               for m, f in enumerate(fs, 1)])
    rid = f"{a[2][0]}/2"
    i, j = idx.position(rid, "S1"), idx.position(rid, "S2")
    assert i != j and idx.ids[i] == idx.ids[j] == rid and idx.samples[idx.sample[j]] == "S2"
    assert idx.position(rid, 1) == j
    with pytest.raises(KeyError, match="2 samples"):
        idx.position(rid)
    with pytest.raises(KeyError, match="not in"):
        idx.position("nope", "S1")


def test_a_repeated_id_within_one_sample_is_still_refused(tmp_path):
    a = make_pairs(13, 4)
    f1 = write_r1_r2(tmp_path / "s1", a, gz=False)
    twice = write_r1_r2(tmp_path / "dup", a[:2] + a[1:3], gz=False)   # pair 2 twice in one sample
    sheet = write_sheet(tmp_path / "sheet.tsv", [("S1", *f1), ("D", *twice)])
    with pytest.raises(UserError) as e:
        run(tmp_path / "out", samples=str(sheet))
    msg = str(e.value)
    assert "duplicate sequence id" in msg and "within a sample" in msg and "'D'" in msg and "\n" not in msg
    with pytest.raises(FastaError, match="across all input files"):       # one sample: as before
        SequenceIndex.build([f1[0], f1[0]])
