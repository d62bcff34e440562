"""Paired-end input at the index level: R1/R2 files, interleaved files, samples and mate numbers."""

import gzip

import numpy as np
import pytest

from virnucdist.data import InputFile, SequenceIndex
from virnucdist.data.fasta import FastaError


def _reads(n, seed=0):
    rng = np.random.default_rng(seed)
    return [("".join(rng.choice(list("ACGT"), size=int(rng.integers(20, 60)))),
             "".join(rng.choice(list("ACGT"), size=int(rng.integers(20, 60))))) for _ in range(n)]


def _fq(recs):
    """``recs``: (header, seq) -> FASTQ bytes."""
    return "".join(f"@{h}\n{s}\n+\n{'I' * len(s)}\n" for h, s in recs).encode()


def _illumina(i):
    return f"A00123:8:H7:1:1101:{1000 + i}:1000"


@pytest.fixture
def pairs(tmp_path):
    reads = _reads(7)
    r1 = tmp_path / "s_R1.fastq"
    r2 = tmp_path / "s_R2.fastq.gz"
    r1.write_bytes(_fq([(f"{_illumina(i)} 1:N:0:ATCACG", a) for i, (a, _) in enumerate(reads)]))
    r2.write_bytes(gzip.compress(_fq([(f"{_illumina(i)} 2:N:0:ATCACG", b) for i, (_, b) in enumerate(reads)])))
    return reads, r1, r2


def _rows(idx):
    return [(idx.ids[i], idx.read(i)) for i in range(len(idx))]


def test_r1_r2_files_are_interleaved_with_mate_ids(pairs, tmp_path):
    reads, r1, r2 = pairs
    idx = SequenceIndex.build([r1, r2], gzip_dir=tmp_path / "run")
    want = [x for i, (a, b) in enumerate(reads) for x in ((f"{_illumina(i)}/1", a), (f"{_illumina(i)}/2", b))]
    assert _rows(idx) == want
    assert idx.mate.tolist() == [1, 2] * 7 and idx.sample.tolist() == [0] * 14
    assert idx.file_idx.tolist() == [0, 1] * 7
    assert idx.where(5) == f"{r2}, line 9 (record 3 of that file)"      # row 5: the 3rd read of R2
    recs = list(idx.records())
    assert [(r.id, r.seq) for r in recs] == want and recs[1].description.endswith("2:N:0:ATCACG")
    # the same reads as one interleaved file, and as one single-end file with /1, /2 ids
    inter = tmp_path / "inter.fq"
    inter.write_bytes(_fq([(f"{_illumina(i)} {m}:N:0:X", s) for i, ab in enumerate(reads) for m, s in ((1, ab[0]), (2, ab[1]))]))
    single = tmp_path / "single.fq"
    single.write_bytes(_fq(want))
    for other in (SequenceIndex.build([inter], interleaved=True),
                  SequenceIndex.build([InputFile(inter, interleaved=True)]),
                  SequenceIndex.build([single])):
        assert _rows(other) == want
        np.testing.assert_array_equal(other.content_hash, idx.content_hash)
    assert SequenceIndex.build([single]).mate.tolist() == [0] * 14       # single-end: as today


def test_slash_suffix_ids_pair_and_explicit_mates(tmp_path):
    a, b = tmp_path / "a.fq", tmp_path / "b.fq"
    a.write_bytes(_fq([("x/1", "ACGT"), ("y/1", "GG")]))
    b.write_bytes(_fq([("x/2", "TTTT"), ("y/2", "CC")]))
    idx = SequenceIndex.build([a, b])
    assert idx.ids == ["x/1", "x/2", "y/1", "y/2"] and [idx.read(i) for i in range(4)] == ["ACGT", "TTTT", "GG", "CC"]
    same = SequenceIndex.build([InputFile(a, mate=1), InputFile(b, mate=2)])
    assert same.ids == idx.ids and same.fingerprint != idx.fingerprint    # said explicitly: another run identity
    with pytest.raises(FastaError, match="mate 1 of a pair"):
        SequenceIndex.build([InputFile(a, mate=1)])
    with pytest.raises(FastaError, match=r"b.fq: holds second reads of pairs \('x/2'\) and the next input, .*a.fq, "
                                         r"their first reads \('x/1'\): give the two files of a pair in order, R1 then R2"):
        SequenceIndex.build([b, a])   # was read as single-end reads, no pairs, without a word
    assert SequenceIndex.build([b]).ids == ["x/2", "y/2"]    # second reads alone stay single-end reads


def test_mismatch_and_short_file_are_one_line_naming_both(pairs, tmp_path):
    reads, r1, _ = pairs
    bad = tmp_path / "bad_R2.fq"
    recs = [(f"{_illumina(i)} 2:N:0:X", b) for i, (_, b) in enumerate(reads)]
    recs[3] = ("other_read 2:N:0:X", recs[3][1])
    bad.write_bytes(_fq(recs))
    with pytest.raises(FastaError) as info:
        SequenceIndex.build([r1, bad])
    msg = str(info.value)
    assert "\n" not in msg and str(r1) in msg and str(bad) in msg and "record 4" in msg and "line 13" in msg
    short = tmp_path / "short_R2.fq"
    short.write_bytes(_fq(recs[:3]))
    with pytest.raises(FastaError) as info:
        SequenceIndex.build([r1, short])
    msg = str(info.value)
    assert "\n" not in msg and "holds 7 records" in msg and "holds 3" in msg and "record 4" in msg


def test_colliding_ids_not_in_order_keep_the_duplicate_error(tmp_path):
    a, b = tmp_path / "one.fq", tmp_path / "two.fq"
    a.write_bytes(_fq([("x", "AC"), ("dup", "GG")]))
    b.write_bytes(_fq([("y", "AC"), ("dup", "TT")]))
    with pytest.raises(FastaError, match="duplicate sequence id 'dup'"):
        SequenceIndex.build([a, b])
    with pytest.raises(FastaError, match="duplicate sequence id 'x'"):     # one file twice is not a pair
        SequenceIndex.build([a, a])


def test_interleaved_errors(tmp_path):
    p = tmp_path / "i.fq"
    p.write_bytes(_fq([("r1/1", "AC"), ("r1/2", "GG"), ("r2/1", "TT")]))
    with pytest.raises(FastaError, match="odd number of records.*'r2/1'"):
        SequenceIndex.build([p], interleaved=True)
    p.write_bytes(_fq([("r1/1", "AC"), ("r1/2", "GG"), ("r2/1", "TT"), ("r3/2", "AA")]))
    with pytest.raises(FastaError, match=r"i.fq, line 13: .*record 4 \('r3/2'\) is not the mate"):
        SequenceIndex.build([p], interleaved=True)


def test_samples_and_mates_survive_save_and_load(pairs, tmp_path):
    reads, r1, r2 = pairs
    other = tmp_path / "other.fa"
    other.write_bytes(b">o1\nACGT\n>o2\nGGCC\n")
    idx = SequenceIndex.build([InputFile(other, sample="B"), InputFile(r1, sample="A"), InputFile(r2, sample="A")],
                              gzip_dir=tmp_path / "run")
    assert idx.samples == ["B", "A"]
    assert idx.sample.tolist() == [0, 0] + [1] * 14 and idx.mate.tolist() == [0, 0] + [1, 2] * 7
    idx.save(tmp_path / "index.npz")
    back = SequenceIndex.load(tmp_path / "index.npz")
    assert back.samples == ["B", "A"] and back.input_spec == idx.input_spec
    np.testing.assert_array_equal(back.sample, idx.sample)
    np.testing.assert_array_equal(back.mate, idx.mate)
    assert back._stale_reason([other, r1, r2], None) == "samples, mates or interleaving changed"
    specs = [InputFile(other, sample="B"), InputFile(r1, sample="A"), InputFile(r2, sample="A")]
    assert back._stale_reason(specs, None) is None
    # the two files of a pair in different samples: two single-end samples (ids are unique per sample)
    apart = SequenceIndex.build([InputFile(r1, sample="A"), InputFile(r2, sample="C")], gzip_dir=tmp_path / "run")
    assert apart.samples == ["A", "C"] and not apart.mate.any() and apart.ids[:7] == apart.ids[7:]
