"""BAM input through the index: predict on an unaligned paired BAM gives the files of the same reads as
R1/R2 FASTQ (pysam writes the BAM)."""

from __future__ import annotations

import hashlib

import pytest
from _pairs_data import make_pairs, tiny, write_r1_r2

from virnucdist.tasks.predict import PredictConfig, predict

pysam = pytest.importorskip("pysam")

FILES = ("prediction_results.txt", "read_summary.tsv", "prediction_results_highestscore.csv", "pair_summary.tsv")


def write_unaligned_bam(path, pairs, apart=False, drop=()):
    """Mates one after the other, or (``apart``) every first mate, then every second mate; the records
    numbered in ``drop`` (0-based, in the written order) left out."""
    header = {"HD": {"VN": "1.6", "SO": "unsorted"}, "RG": [{"ID": "run42", "SM": "S1"}]}
    recs = [(rid, flag, seq) for rid, a, b in pairs for flag, seq in ((0x4D, a), (0x8D, b))]
    if apart:
        recs = recs[0::2] + recs[1::2]
    recs = [r for k, r in enumerate(recs) if k not in drop]
    with pysam.AlignmentFile(str(path), "wb", header=header) as f:
        for rid, flag, seq in recs:  # paired, unmapped, mate unmapped, first / second
            r = pysam.AlignedSegment()
            r.query_name, r.flag, r.query_sequence = rid, flag, seq
            r.query_qualities = pysam.qualitystring_to_array("F" * len(seq))
            r.reference_id = r.reference_start = r.next_reference_id = r.next_reference_start = -1
            f.write(r)
    return path


def digest(folder):
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in FILES}


def test_bam_gives_the_fastq_results(tmp_path):
    pairs = make_pairs(21, 8)
    bam = write_unaligned_bam(tmp_path / "reads.bam", pairs)
    r1, r2 = write_r1_r2(tmp_path / "reads", pairs)
    common = dict(num_workers=0, window_records=5, toks_per_batch=1000, **tiny())
    predict(PredictConfig(inputs=(str(bam),), output_dir=str(tmp_path / "bam"), **common))
    predict(PredictConfig(inputs=(str(r1), str(r2)), output_dir=str(tmp_path / "fq"), **common))
    assert digest(tmp_path / "bam") == digest(tmp_path / "fq")
    ids = [ln.split("\t")[0] for ln in (tmp_path / "bam" / "read_summary.tsv").read_text().splitlines()[1:]]
    assert ids == [f"{rid}/{m}" for rid, _, _ in pairs for m in (1, 2)]


def test_bam_with_mates_apart_gives_the_same_pairs(tmp_path):
    pairs = make_pairs(22, 6)
    bam = write_unaligned_bam(tmp_path / "apart.bam", pairs, apart=True)
    r1, r2 = write_r1_r2(tmp_path / "reads", pairs)
    common = dict(num_workers=0, window_records=5, toks_per_batch=1, **tiny())  # frames alone: equal bits
    predict(PredictConfig(inputs=(str(bam),), output_dir=str(tmp_path / "bam"), **common))
    predict(PredictConfig(inputs=(str(r1), str(r2)), output_dir=str(tmp_path / "fq"), **common))
    for name in ("read_summary.tsv", "pair_summary.tsv", "prediction_results.txt"):  # other order, same lines
        a, b = ((tmp_path / d / name).read_text().splitlines() for d in ("bam", "fq"))
        assert a[0] == b[0] and sorted(a) == sorted(b) and len(a) > 6


def test_a_mate_without_its_other_mate_is_counted_and_said(tmp_path, capsys):
    """A BAM that lost one read of a pair: that mate has its read line, no pair line, and a warning says so."""
    import json

    bam = write_unaligned_bam(tmp_path / "lost.bam", make_pairs(23, 4), drop=(3,))  # the second read of pair 2
    predict(PredictConfig(inputs=(str(bam),), output_dir=str(tmp_path / "o"), num_workers=0, **tiny()))
    assert "1 mate(s) without their other mate in the input" in capsys.readouterr().err
    report = json.loads((tmp_path / "o" / "run_report.json").read_text())
    assert report["counts"]["pairs"]["unpaired_mates"] == 1
    assert len((tmp_path / "o" / "pair_summary.tsv").read_text().splitlines()) == 1 + 3
    assert len((tmp_path / "o" / "read_summary.tsv").read_text().splitlines()) == 1 + 7
