"""BAM in the sequence index: the same records as the equivalent FASTQ, read back by virtual offset."""

import gzip
import subprocess
import sys

import numpy as np
import pytest

from virnucdist.data import SequenceIndex

pysam = pytest.importorskip("pysam")


def _bam(path, records):
    with pysam.AlignmentFile(str(path), "wb", header={"HD": {"VN": "1.6", "SO": "unsorted"}}) as f:
        for name, seq, flag in records:
            a = pysam.AlignedSegment()
            a.query_name, a.flag, a.query_sequence = name, flag, seq
            a.query_qualities = pysam.qualitystring_to_array("I" * len(seq))
            a.reference_id, a.reference_start = -1, -1
            f.write(a)
    return path


def _fq(recs):
    return "".join(f"@{h}\n{s}\n+\n{'I' * len(s)}\n" for h, s in recs).encode()


def test_paired_bam_indexes_like_r1_r2_fastq(tmp_path):
    rng = np.random.default_rng(0)
    pairs = [(f"p{i}", "".join(rng.choice(list("ACGT"), 30)), "".join(rng.choice(list("ACGT"), 25))) for i in range(50)]
    recs = [r for name, a, b in pairs for r in ((name, a, 0x4D), (name, b, 0x8D))] + [("single", "GATTACA", 0x4)]
    bam = _bam(tmp_path / "reads.unaligned", recs)                 # the content decides, not the name
    r1, r2 = tmp_path / "R1.fq.gz", tmp_path / "R2.fq"
    r1.write_bytes(gzip.compress(_fq([(f"{n} 1:N:0:X", a) for n, a, _ in pairs])))
    r2.write_bytes(_fq([(f"{n} 2:N:0:X", b) for n, _, b in pairs]))
    single = tmp_path / "single.fa"
    single.write_bytes(b">single\nGATTACA\n")
    ref = SequenceIndex.build([r1, r2, single])
    idx = SequenceIndex.build([bam])
    assert idx.file_format == ["bam"] and idx.ids == ref.ids and idx.ids[:2] == ["p0/1", "p0/2"]
    assert idx.mate.tolist() == ref.mate.tolist() == [1, 2] * 50 + [0]
    np.testing.assert_array_equal(idx.content_hash, ref.content_hash)
    np.testing.assert_array_equal(idx.letter_counts, ref.letter_counts)
    idx.save(tmp_path / "index")
    back = SequenceIndex.load(tmp_path / "index")
    order = np.random.default_rng(1).permutation(len(ref))
    assert [back.read(int(i)) for i in order] == [ref.read(int(i)) for i in order]
    assert [(r.id, r.seq) for r in back.records()] == [(r.id, r.seq) for r in ref.records()]


def test_pysam_not_imported_without_a_bam(tmp_path):
    fa = tmp_path / "x.fa.gz"
    fa.write_bytes(gzip.compress(b">a\nACGT\n"))
    code = ("import sys; from virnucdist.data import SequenceIndex; i = SequenceIndex.build([sys.argv[1]]);"
            "i.read(0); print('pysam' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(fa)], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "False"
