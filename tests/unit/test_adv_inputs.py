"""Paired-end, sample-sheet and BAM inputs that used to lose data silently or misname reads:
a sample named like a run-directory file, one file given as both mates, a first sheet line with a
missing file taken for a header, BAM names already ending /1 /2, one input file given twice, and
--overwrite leaving an earlier sheet's sample folders behind."""

from __future__ import annotations

import os

import pytest
from _pairs_data import make_pairs, tiny, write_r1_r2, write_sheet

from virnucdist.data import SequenceIndex
from virnucdist.data.runindex import check_input_files
from virnucdist.data.samples import SampleSheetError, read_sheet
from virnucdist.errors import UserError
from virnucdist.tasks.predict import PredictConfig, predict


@pytest.fixture
def files(tmp_path):
    for n in ("a_R1.fq", "b.fq"):
        (tmp_path / n).write_text("@r\nACGT\n+\nIIII\n")
    return tmp_path


@pytest.mark.parametrize("name", ["plan", "Plan", "index.tmp1", "index.old", "index.npz.tmp7"])
def test_names_the_run_removes_as_its_own_are_refused(files, name):
    # OUTDIR/plan is removed at the end of every run: a sample named so lost its results silently
    (files / "s.tsv").write_text(f"{name}\tb.fq\n")
    with pytest.raises(SampleSheetError, match="cannot be a folder name"):
        read_sheet(files / "s.tsv")


def test_one_file_as_both_mates_is_refused(files):
    (files / "s.tsv").write_text("S1\tb.fq\t./b.fq\n")
    with pytest.raises(SampleSheetError, match="line 1: sample 'S1': b.fq is given as both R1 and R2"):
        read_sheet(files / "s.tsv")


def test_a_missing_file_of_another_kind_on_the_first_line_is_not_a_header(files):
    (files / "s.tsv").write_text("S0\tgone_R1.fq.bz2\tgone_R2.fq.bz2\nS1\tb.fq\n")
    with pytest.raises(SampleSheetError, match="line 1: sample 'S0': file .*gone_R1.fq.bz2 does not exist"):
        read_sheet(files / "s.tsv")
    (files / "h.tsv").write_text("sample\tfastq_1\tfastq_2\nS1\tb.fq\n")  # a header still is one
    assert [s.name for s in read_sheet(files / "h.tsv")] == ["S1"]


def test_bam_names_ending_in_their_mate_number_are_not_suffixed_twice(tmp_path):
    pysam = pytest.importorskip("pysam")
    with pysam.AlignmentFile(str(tmp_path / "r.bam"), "wb", header={"HD": {"VN": "1.6"}}) as f:
        for name, flag in (("p0/1", 0x4D), ("p0/2", 0x8D), ("q0", 0x4D), ("q0", 0x8D)):
            a = pysam.AlignedSegment()
            a.query_name, a.flag, a.query_sequence = name, flag, "ACGTACGT"
            f.write(a)
    idx = SequenceIndex.build([tmp_path / "r.bam"])
    assert idx.ids == ["p0/1", "p0/2", "q0/1", "q0/2"] and idx.mate.tolist() == [1, 2, 1, 2]


def test_one_file_given_twice_is_one_line(files):
    os.link(files / "b.fq", files / "hard.fq")
    for second in (files / "b.fq", files / "hard.fq"):
        with pytest.raises(UserError, match="is given twice .*give each file once"):
            check_input_files([str(files / "b.fq"), str(second)])


def test_overwrite_removes_an_earlier_sheets_sample_folders(tmp_path):
    f1 = write_r1_r2(tmp_path / "s1", make_pairs(1, 3), gz=False)
    sheet = write_sheet(tmp_path / "sheet.tsv", [("S1", *f1)])
    out = tmp_path / "out"
    common = dict(output_dir=str(out), num_workers=0, **tiny())
    predict(PredictConfig(inputs=(), samples=str(sheet), **common))
    assert (out / "S1" / "read_summary.tsv").exists() and (out / "samples.tsv").exists()
    predict(PredictConfig(inputs=(str(f1[0]),), overwrite=True, **common))
    assert (out / "read_summary.tsv").exists()
    assert not (out / "S1").exists() and not (out / "samples.tsv").exists()  # the discarded run's results
