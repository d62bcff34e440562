import gzip

import pytest

from virnucdist.data.fasta import FastaError, FastaRecord, write_fasta
from virnucdist.data.index import read_fasta

PLAIN = b">r1 first read\nACGT\nAC\n>r2\nGGGG\n>r3 x y\n\n"


def _records(path):
    return list(read_fasta(path))


def _error(path) -> FastaError:
    with pytest.raises(FastaError) as info:
        _records(path)
    return info.value


def test_multiline_joined_and_ids_first_word(tmp_path):
    p = tmp_path / "a.fa"
    p.write_bytes(PLAIN)
    recs = _records(p)
    assert recs == [
        FastaRecord("r1", "r1 first read", "ACGTAC"),
        FastaRecord("r2", "r2", "GGGG"),
        FastaRecord("r3", "r3 x y", ""),
    ]


def test_crlf_and_gzip_same_as_plain(tmp_path):
    plain = tmp_path / "a.fa"
    plain.write_bytes(PLAIN)
    crlf = tmp_path / "b.fa"
    crlf.write_bytes(PLAIN.replace(b"\n", b"\r\n"))
    gz = tmp_path / "c.data"          # gzip by magic bytes, not by name
    gz.write_bytes(gzip.compress(PLAIN.replace(b"\n", b"\r\n")))
    want = _records(plain)
    assert _records(crlf) == want
    assert _records(gz) == want


def test_whitespace_inside_sequence_lines_removed(tmp_path):
    p = tmp_path / "a.fa"
    p.write_bytes(b"\n\n>r1\tdesc\n AC GT \t\nA\n")
    assert _records(p) == [FastaRecord("r1", "r1\tdesc", "ACGTA")]


def test_empty_file(tmp_path):
    p = tmp_path / "empty.fa"
    p.write_bytes(b"")
    err = _error(p)
    assert "empty.fa" in str(err) and "line 1" in str(err)
    assert "no FASTA or FASTQ records" in str(err)


def test_blank_only_file(tmp_path):
    p = tmp_path / "blank.fa"
    p.write_bytes(b"\n  \n\n")
    err = _error(p)
    assert "blank.fa, line 3" in str(err) and "no FASTA or FASTQ records" in str(err)


def test_not_fasta(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_bytes(b"\nhello world\n>r1\nACGT\n")
    err = _error(p)
    assert "notes.txt, line 2" in str(err)
    assert "'>'" in str(err) and "hello world" in str(err)
    assert err.line == 2


def test_fastq_is_read(tmp_path):
    """Once refused ("It looks like FASTQ"); now read like FASTA, whatever the file's name."""
    p = tmp_path / "reads.txt"
    p.write_bytes(b"\n@r1 first read\nACGT\n+\nIIII\n@r2\nac\n+r2\n!!\n")
    assert _records(p) == [FastaRecord("r1", "r1 first read", "ACGT"), FastaRecord("r2", "r2", "ac")]


def test_nul_bytes(tmp_path):
    p = tmp_path / "bin.fa"
    p.write_bytes(b">r1\nACGT\nAC\x00\x01GT\n")
    err = _error(p)
    assert "bin.fa, line 3" in str(err) and "binary" in str(err)


def test_undecodable_utf8(tmp_path):
    p = tmp_path / "garbage.fa"
    p.write_bytes(b">r1\nACGT\n>r2\xff\xfe\nAC\n")     # in the id (a description keeps it, escaped)
    err = _error(p)
    assert "garbage.fa, line 3" in str(err) and "UTF-8" in str(err)
    p.write_bytes(b"\x89PNG\r\n\x1a\n")
    err = _error(p)
    assert "garbage.fa, line 1" in str(err) and "UTF-8" in str(err)


def test_non_ascii_sequence(tmp_path):
    p = tmp_path / "u.fa"
    p.write_bytes(">r1 é ok in header\nACGT\nACÉ\n".encode())
    err = _error(p)
    assert "u.fa, line 3" in str(err) and "ASCII" in str(err)


@pytest.mark.parametrize("header", [b">", b">   ", b">\r"])
def test_empty_header(tmp_path, header):
    p = tmp_path / "h.fa"
    p.write_bytes(b">r1\nACGT\n" + header + b"\nACGT\n")
    err = _error(p)
    assert "h.fa, line 3" in str(err) and "empty header" in str(err)


def test_corrupt_gzip(tmp_path):
    p = tmp_path / "t.fa.gz"
    data = gzip.compress(PLAIN * 200)
    p.write_bytes(data[: len(data) // 2])
    err = _error(p)
    assert "t.fa.gz" in str(err) and "line" in str(err) and "gzip" in str(err)


def test_write_roundtrip_wrapped_and_gz(tmp_path):
    recs = [("a", "ACGT" * 10), ("b", ""), ("c", "M")]
    for name in ("w.fa", "w.fa.gz"):
        assert write_fasta(tmp_path / name, recs, width=7) == 3
        assert [(r.id, r.seq) for r in read_fasta(tmp_path / name)] == recs
