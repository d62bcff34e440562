"""FASTQ input: indexed like the equivalent FASTA, malformed records named by line."""

import gzip

import numpy as np
import pytest

from virnucdist.data.fasta import FastaError, FastaRecord, write_fasta
from virnucdist.data.index import read_fasta
from virnucdist.data import SequenceIndex

COLUMNS = ("file_idx", "nbytes", "length", "header_line", "offset")


def _records(rng, n):
    out = []
    for i in range(n):
        length = int(rng.integers(0, 260)) if i % 17 else 0        # some empty records
        seq = "".join(rng.choice(list("ACGTNacgt"), size=length)) if length else ""
        out.append((f"read_{i} lane=1 x:{i}", seq))
    return out


def fastq_bytes(records, newline=b"\n", plus_repeats_header=False) -> bytes:
    """Test-only FASTQ writer: 4 lines per record, qualities include '@' and '+'."""
    parts = []
    for k, (head, seq) in enumerate(records):
        qual = "".join("@+!I~"[(k + j) % 5] for j in range(len(seq)))
        plus = "+" + (head if plus_repeats_header else "")
        parts.append(f"@{head}\n{seq}\n{plus}\n{qual}\n".replace("\n", newline.decode()))
    return "".join(parts).encode()


@pytest.fixture
def pair(tmp_path):
    """The same records as FASTQ, FASTQ.gz (named .dat: content decides) and wrapped FASTA."""
    recs = _records(np.random.default_rng(3), 120)
    fq = tmp_path / "reads.fastq"
    fq.write_bytes(fastq_bytes(recs))
    gz = tmp_path / "reads.dat"
    gz.write_bytes(gzip.compress(fastq_bytes(recs, newline=b"\r\n", plus_repeats_header=True)))
    fa = tmp_path / "reads.fa"
    write_fasta(fa, recs, width=60)
    return recs, fq, gz, fa


def test_fastq_and_gz_index_like_fasta(pair, tmp_path):
    recs, fq, gz, fa = pair
    ref = SequenceIndex.build([fa])
    want_ids = [h.split()[0] for h, _ in recs]
    for path in (fq, gz):
        idx = SequenceIndex.build([path], gzip_dir=tmp_path / "run")
        assert idx.file_format == ["fastq"] and ref.file_format == ["fasta"]
        assert idx.ids == ref.ids == want_ids
        assert [idx.read(i) for i in range(len(idx))] == [s for _, s in recs]
        np.testing.assert_array_equal(idx.length, [len(s) for _, s in recs])
        np.testing.assert_array_equal(idx.content_hash, ref.content_hash)
        np.testing.assert_array_equal(idx.letter_counts, ref.letter_counts)   # qualities not counted
        assert idx.fingerprint != ref.fingerprint
        assert list(read_fasta(path)) == list(read_fasta(fa)) == [
            FastaRecord(h.split()[0], h, s) for h, s in recs]
    assert idx.header_line.tolist() == list(range(1, 4 * len(recs), 4))


@pytest.mark.parametrize("block_size", [5, 64, 1000])
def test_block_boundaries_do_not_matter(pair, tmp_path, block_size):
    _, fq, gz, _ = pair
    for path in (fq, gz):                      # LF; CRLF with the header repeated after '+'
        ref = SequenceIndex.build([path], gzip_dir=tmp_path)
        idx = SequenceIndex.build([path], gzip_dir=tmp_path, block_size=block_size)
        assert idx.ids == ref.ids and idx.fingerprint == ref.fingerprint
        for col in COLUMNS:
            np.testing.assert_array_equal(getattr(idx, col), getattr(ref, col))
        np.testing.assert_array_equal(idx.content_hash, ref.content_hash)
        np.testing.assert_array_equal(idx.file_letter_counts, ref.file_letter_counts)


def test_crlf_blank_ends_bom_and_empty_records(tmp_path):
    lf = tmp_path / "lf.fq"
    lf.write_bytes(b"@a x\nACGT\n+\nIIII\n@e\n\n+\n\n@b\nac\n+b\n@+\n")
    want = [FastaRecord("a", "a x", "ACGT"), FastaRecord("e", "e", ""), FastaRecord("b", "b", "ac")]
    variants = {
        "crlf.fq": lf.read_bytes().replace(b"\n", b"\r\n"),
        "blank_around.fq": b"\n \n" + lf.read_bytes() + b"\n\n\n\n\n",
        "no_final_newline.fq": lf.read_bytes()[:-1],
        "bom.fq": b"\xef\xbb\xbf" + lf.read_bytes(),
    }
    ref = SequenceIndex.build([lf])
    assert list(read_fasta(lf)) == want
    for name, data in variants.items():
        p = tmp_path / name
        p.write_bytes(data)
        for bs in (3, 1 << 20):
            idx = SequenceIndex.build([p], block_size=bs)
            assert idx.ids == ["a", "e", "b"], name
            assert [idx.read(i) for i in range(3)] == ["ACGT", "", "ac"], name
            np.testing.assert_array_equal(idx.content_hash, ref.content_hash)
        assert list(read_fasta(p)) == want, name
    empty_last = tmp_path / "empty_last.fq"            # an empty record whose quality line has no newline
    empty_last.write_bytes(b"@a\nAC\n+\nII\n@e\n\n+\n")
    assert [r.seq for r in read_fasta(empty_last)] == ["AC", ""]


@pytest.mark.parametrize("content,line,needles", [
    (b"@r1\nACGT\n+\nIII\n", 4, ("record 'r1' (header at line 1)", "4 sequence letters but 3 quality")),
    (b"@r1\nACGT\n+\nIIII\n@r2\nAC\nII\n@r3\nA\n+\nI\n", 7, ("expected the '+' line of record 'r2'",)),
    (b"@r1\nACGT\nACGT\n+\nIIIIIIII\n", 3, ("'+' line", "multi-line FASTQ is not supported")),
    (b"@r1\nACGT\n+\nIIII\n@r2\nACGT\n", 5, ("truncated FASTQ record 'r2'", "before its '+' line", "cut short")),
    (b"@r1\nACGT\n+\nIIII\n@r2\n", 5, ("truncated FASTQ record 'r2'", "before its sequence line")),
    (b"@r1\nACGT\n+\n", 4, ("4 sequence letters but 0 quality",)),
    (b"@r1\nACGT\n+\nII", 4, ("4 sequence letters but 2 quality",)),
    (b"@r1\nACGT\n+\nIIII\nr2\nAC\n+\nII\n", 5, ("expected a FASTQ header line starting with '@', found 'r2'",)),
    (b"@r1\nACGT\n+\nIIII\n\n@r2\nAC\n+\nII\n", 5, ("expected a FASTQ header line starting with '@', found ''",)),
    (b"\n  @r1\nACGT\n+\nIIII\n", 2, ("expected a FASTQ header line starting with '@'",)),
    (b"@r1\nACGT\n+\nIIII\n@\nAC\n+\nII\n", 5, ("empty header: '@' must be followed by a sequence id",)),
    (b"@r1\nAC\x00T\n+\nIIII\n", 2, ("binary data (NUL byte)", "FASTQ")),
    ("@r1\nACÉ\n+\nIIII\n".encode(), 2, ("non-ASCII character in sequence line",)),
    (b"@r1\nACGT\n+\nII\xc3\x89\n", 4, ("non-ASCII character in quality line",)),
    (b"@r1\nACGT\n+\nIIII\n@r2\xff\nAC\n+\nII\n", 5, ("UTF-8",)),
    (b"@r1\nACGT\n+\nIIII\n@r2\nACGT\n+\nIII\n@r1\nAA\n+\nII\n", 8, ("4 sequence letters but 3",)),
    (b"@r1\nACGT\n+\nIIII\n@r2\nAC\n+\nII\n@r1 again\nAA\n+\nII\n", 9,
     ("duplicate sequence id 'r1'", "line 1", "rename or remove one of them")),
])
def test_malformed(tmp_path, content, line, needles):
    p = tmp_path / "bad.fq"
    p.write_bytes(content)
    for bs in (1 << 20, 4):
        with pytest.raises(FastaError) as info:
            SequenceIndex.build([p], block_size=bs)
        msg = str(info.value)
        assert msg.startswith(f"{p}, line {line}: "), msg
        assert "\n" not in msg
        for needle in needles:
            assert needle in msg, (needle, msg)
    with pytest.raises(FastaError) as info2:       # the streaming reader: the same verdict
        list(read_fasta(p))
    assert str(info2.value) == msg


def test_quality_may_start_with_at_and_plus(tmp_path):
    p = tmp_path / "q.fq"
    p.write_bytes(b"@r1\nACGT\n+\n@@@@\n@r2\nAC\n+\n+I\n")
    idx = SequenceIndex.build([p], block_size=6)
    assert idx.ids == ["r1", "r2"] and idx.read(1) == "AC"


def test_mixed_fasta_and_fastq_inputs(pair, tmp_path):
    _, fq, _, fa = pair
    other = tmp_path / "other.fa"
    other.write_bytes(b">x1\nMKV\n")
    idx = SequenceIndex.build([other, fq])
    assert idx.file_format == ["fasta", "fastq"]
    assert idx.ids[0] == "x1" and idx.read(0) == "MKV" and len(idx) == 121
    with pytest.raises(FastaError, match="duplicate sequence id 'read_0'"):
        SequenceIndex.build([fa, fq])
