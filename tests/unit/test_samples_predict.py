"""Paired-end reads and sample sheets through ``virnucdist.predict`` (one rank, in process).

Byte-identity across runs needs the frames batched alike: a frame's scores can differ in the last
float32 bit when its neighbours in a packed batch differ (as between 1 and 2 ranks), so the
comparisons between a sheet run and separate runs use ``toks_per_batch=1`` (every frame alone)."""

from __future__ import annotations

import hashlib
import json

import h5py
import numpy as np
import pytest
from _pairs_data import make_pairs, tiny, tiny_flags, write_interleaved, write_r1_r2, write_sheet
from _predict_data import write_fasta_wrapped

import virnucdist.tasks.predict as predict_mod
from virnucdist.data.fasta import FastaError
from virnucdist.errors import UserError
from virnucdist.launch.entry import run_entrypoint
from virnucdist.tasks.predict import PredictConfig, predict

PER_READ = ("prediction_results.txt", "read_summary.tsv", "prediction_results_highestscore.csv")


def run(out, inputs=(), **kw):
    base = dict(inputs=tuple(map(str, inputs)), output_dir=str(out), num_workers=0, window_records=5, **tiny())
    base.update(kw)
    return predict(PredictConfig(**base))


def digest(folder, names=PER_READ + ("pair_summary.tsv",)):
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in names if (folder / n).exists()}


@pytest.fixture(scope="module")
def sheet_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("samples")
    s1, s2 = make_pairs(1, 7), make_pairs(2, 5)
    s3 = make_pairs(3, 3, prefix="B") + [(f"copy{i}", a, b) for i, (_, a, b) in enumerate(s1[:4])]  # S1's reads again
    f1, f2 = write_r1_r2(d / "s1", s1), write_r1_r2(d / "s2", s2, gz=False)
    f3 = write_interleaved(d / "s3.fq", s3)
    sheet = write_sheet(d / "sheet.tsv", [("S1", *f1), ("S2", *f2), ("S3", f3)])
    out = d / "sheet_run"
    result = run(out, samples=str(sheet), interleaved=True, toks_per_batch=1, keep_intermediate=True)
    return {"dir": d, "pairs": (s1, s2, s3), "files": (f1, f2, f3), "sheet": sheet, "out": out, "result": result}


def test_r1_r2_equals_interleaved_equals_single_end_with_mate_ids(sheet_data, tmp_path):
    d, (s1, _, _) = sheet_data["dir"], sheet_data["pairs"]
    run(tmp_path / "r1r2", sheet_data["files"][0])
    run(tmp_path / "inter", [write_interleaved(tmp_path / "i.fq", s1)], interleaved=True)
    single = write_fasta_wrapped(tmp_path / "single.fa", [(f"{rid}/{m}", seq) for rid, a, b in s1
                                                         for m, seq in ((1, a), (2, b))])
    run(tmp_path / "single", [single])
    ids = [ln.split("\t")[0] for ln in (tmp_path / "r1r2" / "read_summary.tsv").read_text().splitlines()[1:]]
    assert ids == [f"{rid}/{m}" for rid, _, _ in s1 for m in (1, 2)]  # each mate a read, named {id}/1, {id}/2
    a, b, c = (digest(tmp_path / n) for n in ("r1r2", "inter", "single"))
    assert {n: a[n] for n in PER_READ} == {n: b[n] for n in PER_READ} == {n: c[n] for n in PER_READ}
    assert a["pair_summary.tsv"] == b["pair_summary.tsv"] and "pair_summary.tsv" not in c  # /1 /2 ids alone: no pairs
    pairs = [ln.split("\t") for ln in (tmp_path / "r1r2" / "pair_summary.tsv").read_text().splitlines()]
    assert pairs[0] == ["pair_id", "kept_frames", "best_virus_score", "call", "mate1_call", "mate2_call"]
    assert [p[0] for p in pairs[1:]] == [rid for rid, _, _ in s1]


def test_mismatched_mates_refused_in_one_line(sheet_data, tmp_path, capsys):
    s1 = sheet_data["pairs"][0]
    r1, _ = write_r1_r2(tmp_path / "a", s1, gz=False)
    _, r2 = write_r1_r2(tmp_path / "b", s1[:3] + s1[4:] + s1[3:4], gz=False)  # mate 4 moved to the end
    with pytest.raises(SystemExit) as e:
        run_entrypoint(predict_mod.main, [str(r1), str(r2), "-o", str(tmp_path / "out"), *tiny_flags()])
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert e.value.code == 2 and len(err) == 1
    assert str(r1) in err[0] and str(r2) in err[0] and "record 4" in err[0]


def test_sheet_outputs_equal_separate_runs(sheet_data, tmp_path):
    out, (f1, f2, f3) = sheet_data["out"], sheet_data["files"]
    stages = ("chunked.fa", "identified_nucleotide.fa", "identified_protein.faa")
    for name, files, kw in (("S1", f1, {}), ("S2", f2, {}), ("S3", (f3,), {"interleaved": True})):
        run(tmp_path / name, files, toks_per_batch=1, keep_intermediate=True, **kw)
        assert sorted(p.name for p in (out / name).iterdir()) == \
            sorted(p.name for p in (tmp_path / name).iterdir() if p.name in predict_mod.PredictTask.outputs)
        names = PER_READ + ("pair_summary.tsv",) + stages
        assert digest(out / name, names) == digest(tmp_path / name, names) and len(digest(out / name, names)) == 7
        for h5 in ("nucleotide_embeddings.h5", "protein_embeddings.h5"):  # attributes name the run's input
            with h5py.File(out / name / h5, "r") as a, h5py.File(tmp_path / name / h5, "r") as b:
                assert a["ids"].asstr()[:].tolist() == b["ids"].asstr()[:].tolist() and len(a["ids"])
                np.testing.assert_array_equal(a["embeddings"][:], b["embeddings"][:])


def test_samples_tsv_sums_up_each_sample(sheet_data):
    out, pairs = sheet_data["out"], sheet_data["pairs"]
    table = [ln.split("\t") for ln in (out / "samples.tsv").read_text().splitlines()]
    assert table[0] == ["sample", "reads", "pairs", "reads_virus", "pairs_virus", "viral_fraction", "skipped"]
    assert [t[0] for t in table[1:]] == ["S1", "S2", "S3"]
    for t, p in zip(table[1:], pairs):
        calls = [ln.split("\t")[4] for ln in (out / t[0] / "read_summary.tsv").read_text().splitlines()[1:]]
        pcalls = [ln.split("\t")[3] for ln in (out / t[0] / "pair_summary.tsv").read_text().splitlines()[1:]]
        virus = calls.count("virus")
        assert t[1:] == [str(2 * len(p)), str(len(p)), str(virus), str(pcalls.count("virus")),
                         f"{virus / len(calls):.6f}", "0"]
    assert any(int(t[3]) for t in table[1:])


def test_identical_reads_across_samples_computed_once(sheet_data):
    rep = json.loads((sheet_data["out"] / "run_report.json").read_text())
    assert rep["dedup"]["served_from_duplicate"] == 8  # S3's 4 copied pairs: 8 reads served from S1's
    s3 = (sheet_data["out"] / "S3" / "prediction_results.txt").read_text().splitlines()
    s1 = (sheet_data["out"] / "S1" / "prediction_results.txt").read_text().splitlines()
    copies = [ln.split("\t", 1)[1] for ln in s3 if ln.startswith("copy")]
    assert copies and copies == [ln.split("\t", 1)[1] for ln in s1[1:len(copies) + 1]]  # the same scores, bit for bit
    assert rep["counters"]["frames"] == rep["counts"]["frames"] - len(copies)  # their frames were not computed again


def test_rerun_is_a_noop_and_a_changed_sheet_is_another_run(sheet_data, tmp_path):
    out, (f1, f2, f3) = sheet_data["out"], sheet_data["files"]
    before = digest(out / "S2")
    assert run(out, samples=str(sheet_data["sheet"]), interleaved=True, toks_per_batch=1,
               keep_intermediate=True).already_complete
    renamed = write_sheet(tmp_path / "renamed.tsv", [("S1", *f1), ("other", *f2), ("S3", f3)])
    with pytest.raises(UserError, match="different .*samples.*--overwrite"):
        run(out, samples=str(renamed), interleaved=True, toks_per_batch=1, keep_intermediate=True)
    assert digest(out / "S2") == before and not (out / "other").exists()


def test_a_bad_file_stops_the_sheet_in_one_line_naming_sample_file_record(sheet_data, tmp_path):
    s2 = sheet_data["pairs"][1]
    r1, _ = write_r1_r2(tmp_path / "x", s2, gz=False)
    _, r2 = write_r1_r2(tmp_path / "y", s2[:-1], gz=False)  # R2 cut short
    f1 = sheet_data["files"][0]
    sheet = write_sheet(tmp_path / "sheet.tsv", [("S1", *f1), ("cut", r1, r2)])
    with pytest.raises(UserError) as e:
        run(tmp_path / "out", samples=str(sheet))
    msg = str(e.value)
    assert "\n" not in msg and "'cut'" in msg and str(r2) in msg and "record 5" in msg
    assert not (tmp_path / "out" / "shards").exists()  # refused before any model work


def test_overwrite_with_single_end_reads_removes_the_pair_summary(sheet_data, tmp_path):
    f1, _, f3 = sheet_data["files"]
    run(tmp_path, f1)
    assert (tmp_path / "pair_summary.tsv").exists()
    run(tmp_path, [f3], overwrite=True)  # the same reads' file without --interleaved: single-end
    assert not (tmp_path / "pair_summary.tsv").exists() and (tmp_path / "read_summary.tsv").exists()


def test_an_empty_read_is_named_with_its_sample(tmp_path, capsys):
    """Ids repeat across samples: the empty-record warning and run_report.json say which sample."""
    one = write_fasta_wrapped(tmp_path / "one.fa", [("r0", "ACGT" * 40), ("gone", "")])
    two = write_fasta_wrapped(tmp_path / "two.fa", [("gone", "ACGT" * 40)])
    sheet = write_sheet(tmp_path / "sheet.tsv", [("S1", one), ("S2", two)])
    capsys.readouterr()
    run(tmp_path / "out", samples=str(sheet))
    assert "skipping 1 empty record(s), e.g. 'gone' (sample S1)" in capsys.readouterr().err
    rep = json.loads((tmp_path / "out" / "run_report.json").read_text())
    assert rep["skipped"]["empty"] == ["gone"] and rep["skipped"]["empty_samples"] == ["S1"]
