"""Old-Mac (CR-only) line endings and non-UTF-8 bytes in header descriptions."""

import logging

import pytest

from virnucdist.data import SequenceIndex
from virnucdist.data.fasta import FastaError
from virnucdist.data.index import read_fasta


@pytest.mark.parametrize("block_size", [5, 1 << 20])
def test_cr_only_fasta_and_fastq_read_like_lf(tmp_path, block_size):
    fa_lf = b">r1 first\nACGT\nAC\n>r2\nGGG\n>r3 empty\n>r4\nTT\n"
    fq_lf = b"@q1 x\nACGT\n+\nIIII\n@q2\nGG\n+\nII\n"
    for name, lf in (("a.fa", fa_lf), ("b.fq", fq_lf)):
        plain, cr = tmp_path / f"lf_{name}", tmp_path / f"cr_{name}"
        plain.write_bytes(lf)
        cr.write_bytes(lf.replace(b"\n", b"\r"))
        want = SequenceIndex.build([plain])
        got = SequenceIndex.build([cr], block_size=block_size)
        assert got.ids == want.ids and len(got) == len(want)          # never two records merged
        assert [got.read(i) for i in range(len(got))] == [want.read(i) for i in range(len(want))]
        assert got.header_line.tolist() == want.header_line.tolist()
        assert got.length.tolist() == want.length.tolist()
        assert [(r.id, r.description, r.seq) for r in read_fasta(cr)] == \
               [(r.id, r.description, r.seq) for r in read_fasta(plain)]
    assert [r.seq for r in read_fasta(tmp_path / "cr_a.fa")] == ["ACGTAC", "GGG", "", "TT"]


def test_crlf_is_not_taken_for_cr_only(tmp_path):
    p = tmp_path / "crlf.fa"
    p.write_bytes(b">r1\r\nAC\r\n>r2\r\nGT\r\n")
    idx = SequenceIndex.build([p], block_size=4)       # a block ending between CR and LF
    assert idx.ids == ["r1", "r2"] and idx.header_line.tolist() == [1, 3]


def test_non_utf8_description_kept_escaped_with_one_warning(tmp_path, caplog):
    p = tmp_path / "latin1.fa"
    p.write_bytes(b">r1 Escherichia coli souche \xe9t\xe9\nACGT\n>r2 caf\xe9\nGG\n>r3 ok\nA\n")
    q = tmp_path / "latin1.fq"
    q.write_bytes(b"@q1 \xe9\nAC\n+\nII\n")
    with caplog.at_level(logging.WARNING, logger="virnucdist"):
        idx = SequenceIndex.build([p, q])
    assert idx.ids == ["r1", "r2", "r3", "q1"]
    warnings = [r.getMessage() for r in caplog.records if "not valid UTF-8" in r.getMessage()]
    assert len(warnings) == 2                                    # one per file, not one per record
    assert "latin1.fa, line 1" in warnings[0] and "0xe9" in warnings[0]
    recs = list(read_fasta(p))
    assert recs[0].description == "r1 Escherichia coli souche \\xe9t\\xe9" and recs[1].description == "r2 caf\\xe9"
    assert [r.seq for r in recs] == ["ACGT", "GG", "A"]


def test_non_utf8_id_is_an_error_naming_file_and_line(tmp_path):
    p = tmp_path / "badid.fq"
    p.write_bytes(b"@q1\nAC\n+\nII\n@q\xe92 desc\nAC\n+\nII\n")
    with pytest.raises(FastaError, match=r"badid.fq, line 5: sequence id .* not valid UTF-8"):
        SequenceIndex.build([p])
