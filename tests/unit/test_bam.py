"""data/bam.py: BAM records (unaligned and aligned) read as the reads were sequenced."""

from __future__ import annotations

import gzip
import sys

import pytest

from virnucdist.data.bam import BAM_INSTALL_HINT, BamError, is_bam, mate_of_flag, read_bam, scan_bam

pysam = pytest.importorskip("pysam")


def revcomp(s: str) -> str:
    return s.translate(str.maketrans("ACGTN", "TGCAN"))[::-1]


def write_bam(path, records, aligned=False):
    """``records``: (name, seq as sequenced, flag). Aligned records on the reverse strand store the
    reverse complement, as an aligner writes them."""
    header = {"HD": {"VN": "1.6", "SO": "unsorted" if not aligned else "coordinate"}}
    if aligned:
        header["SQ"] = [{"SN": "chr1", "LN": 100000}]
    with pysam.AlignmentFile(str(path), "wb", header=header) as f:
        for k, (name, seq, flag) in enumerate(records):
            a = pysam.AlignedSegment()
            a.query_name, a.flag = name, flag
            a.query_sequence = revcomp(seq) if flag & 0x10 else seq
            a.query_qualities = pysam.qualitystring_to_array("I" * len(seq))
            if aligned and not flag & 0x4:
                a.reference_id, a.reference_start, a.cigarstring, a.mapping_quality = 0, 100 * k, f"{len(seq)}M", 60
            else:
                a.reference_id, a.reference_start = -1, -1
            f.write(a)
    return path


def test_unaligned_paired_bam_scans_and_reads_back(tmp_path):
    recs = [("p1", "ACGTACGTAA", 0x4D), ("p1", "TTTTGGGGCC", 0x8D), ("s1", "GATTACA", 0x4), ("p2", "CCCAAAGGGT", 0x4D),
            ("p2", "NNACGT", 0x8D), ("empty", "", 0x4)]
    bam = write_bam(tmp_path / "u.bam", recs)
    assert is_bam(bam)
    got = list(scan_bam(bam))
    assert [(n, s, m) for n, s, _, m in got] == [("p1", "ACGTACGTAA", 1), ("p1", "TTTTGGGGCC", 2),
                                                  ("s1", "GATTACA", 0), ("p2", "CCCAAAGGGT", 1),
                                                  ("p2", "NNACGT", 2), ("empty", "", 0)]
    offsets = [v for _, _, v, _ in got]
    assert len(set(offsets)) == len(offsets)
    for (_, seq, v, _) in reversed(got):  # random access, any order
        assert read_bam(bam, v) == seq


def test_aligned_bam_restored_to_read_orientation_secondary_skipped(tmp_path):
    recs = [("r1", "AACCGGTTAC", 0x0), ("r2", "AAAACCCCGT", 0x10), ("r2", "AAAACCCCGT", 0x110),
            ("r3", "GGGTTTAAAC", 0x800 | 0x10), ("r4", "ACACACGTGT", 0x4)]
    bam = write_bam(tmp_path / "a.bam", recs, aligned=True)
    got = list(scan_bam(bam))
    assert [(n, s) for n, s, _, _ in got] == [("r1", "AACCGGTTAC"), ("r2", "AAAACCCCGT"), ("r4", "ACACACGTGT")]
    assert read_bam(bam, got[1][2]) == "AAAACCCCGT"  # stored reverse-complemented, read back as sequenced


def test_not_bam_and_flags(tmp_path):
    fq = tmp_path / "r.fastq.gz"
    with gzip.open(fq, "wt") as fh:
        fh.write("@a\nACGT\n+\nIIII\n")
    assert not is_bam(fq) and not is_bam(tmp_path) and not is_bam(tmp_path / "missing")
    assert [mate_of_flag(f) for f in (0x4, 0x4D, 0x8D, 0x1 | 0x40 | 0x80)] == [0, 1, 2, 0]


def test_truncated_bam_is_one_line(tmp_path):
    recs = [(f"r{i}", "ACGT" * 30, 0x4) for i in range(2000)]
    data = write_bam(tmp_path / "t.bam", recs).read_bytes()
    (tmp_path / "cut.bam").write_bytes(data[: len(data) // 2])
    with pytest.raises(BamError) as e:
        list(scan_bam(tmp_path / "cut.bam"))
    assert "cut.bam" in str(e.value) and "\n" not in str(e.value)


def test_without_pysam_one_line_says_how_to_install(tmp_path, monkeypatch):
    bam = write_bam(tmp_path / "u.bam", [("a", "ACGT", 0x4)])
    monkeypatch.setitem(sys.modules, "pysam", None)  # as if the extra were not installed
    with pytest.raises(BamError, match="pip install \"virnucdist\\[bam\\]\"") as e:
        list(scan_bam(bam))
    assert str(e.value) == BAM_INSTALL_HINT
