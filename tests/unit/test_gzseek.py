"""Gzip inputs read in place (seek points, no copy), the memory-mapped index, pipes refused."""

import gzip
import zlib
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from virnucdist.data import SequenceIndex
from virnucdist.data import gzseek
from virnucdist.data.runindex import check_input_files
from virnucdist.data.fasta import FastaError
from virnucdist.errors import UserError


def _fasta(n, seed=0):
    rng = np.random.default_rng(seed)
    return b"".join(b">r%d desc\n" % i + rng.choice(np.frombuffer(b"ACGTacgt", np.uint8), size=int(rng.integers(0, 400))).tobytes()
                    + b"\n" for i in range(n))


def _variants(data):
    third = len(data) // 3
    return {
        "single": gzip.compress(data, 6),
        "multi": gzip.compress(data[:third]) + gzip.compress(data[third:2 * third]) + gzip.compress(data[2 * third:]),
        "bgzf": b"".join(gzip.compress(data[i:i + 65280]) for i in range(0, len(data), 65280)) + gzip.compress(b""),
        "padded": gzip.compress(data) + b"\0" * 64,
    }


@pytest.fixture
def small_span(monkeypatch):
    monkeypatch.setattr(gzseek, "SPAN", 64 << 10)      # many seek points in a small file


@pytest.mark.parametrize("kind", ["single", "multi", "bgzf", "padded"])
def test_gzip_in_place_equals_the_plain_file(tmp_path, small_span, kind):
    data = _fasta(3000)
    plain = tmp_path / "r.fa"
    plain.write_bytes(data)
    gz = tmp_path / f"r.{kind}.gz"
    gz.write_bytes(_variants(data)[kind])
    before = sorted(os.listdir(tmp_path))
    ref, idx = SequenceIndex.build([plain]), SequenceIndex.build([gz])
    assert sorted(os.listdir(tmp_path)) == before                        # nothing written beside the inputs
    assert len(idx.gz[0].out_off) > 5 and idx.files == [str(gz)]
    assert idx.fingerprint == ref.fingerprint and idx.ids == ref.ids
    for col in ("offset", "nbytes", "length", "header_line", "content_hash"):
        np.testing.assert_array_equal(getattr(idx, col), getattr(ref, col))
    order = np.random.default_rng(1).permutation(len(ref))[:400]         # random access, across seek points
    assert [idx.read(int(i)) for i in order] == [ref.read(int(i)) for i in order]
    assert [(r.id, r.description, r.seq) for r in idx.records()] == [(r.id, r.description, r.seq) for r in ref.records()]


def test_reader_inflates_only_from_the_nearest_point(tmp_path, small_span):
    data = _fasta(3000)
    gz = tmp_path / "r.fa.gz"
    gz.write_bytes(gzip.compress(data))
    idx = SequenceIndex.build([gz])
    pts = idx.gz[0]
    reader = gzseek.GzipReader(str(gz), pts)
    k = len(pts.out_off) - 2
    off = int(pts.out_off[k]) + 10
    assert reader.read(off, 100) == data[off:off + 100]
    assert reader._lo == int(pts.out_off[k]) and len(reader._buf) <= int(pts.out_off[k + 1] - pts.out_off[k]) + 100


def test_saved_index_is_memory_mapped_and_pickles_as_its_path(tmp_path, small_span):
    data = _fasta(2000)
    gz = tmp_path / "r.fa.gz"
    gz.write_bytes(_variants(data)["bgzf"])
    idx = SequenceIndex.build([gz])
    idx.save(tmp_path / "index")
    back = SequenceIndex.load(tmp_path / "index")
    assert isinstance(back.offset, np.memmap) or isinstance(back.offset.base, np.memmap)
    assert type(back.ids).__name__ == "IdColumn" and back.ids == idx.ids and back.ids[-1] == "r1999"
    np.testing.assert_array_equal(back.representatives(), idx.representatives())
    blob = pickle.dumps(back)
    assert len(blob) < 2000                                              # the path, not the columns
    code = ("import sys,pickle; i=pickle.loads(sys.stdin.buffer.read());"
            "pickle.dump([i.read(k) for k in range(len(i))], sys.stdout.buffer)")
    out = subprocess.run([sys.executable, "-c", code], input=blob, check=True, capture_output=True).stdout
    assert pickle.loads(out) == [idx.read(k) for k in range(len(idx))]


def test_truncated_and_garbage_gzip_are_one_line(tmp_path):
    z = gzip.compress(_fasta(500))
    bad = tmp_path / "cut.fa.gz"
    bad.write_bytes(z[: len(z) // 2])
    lines = zlib.decompressobj(31).decompress(z[: len(z) // 2]).count(b"\n")  # what can be read of it
    assert lines > 10
    with pytest.raises(UserError, match=rf"cut.fa.gz, line {lines + 1}: corrupt or truncated gzip file"):
        SequenceIndex.build([bad])   # (was line 1 for a file cut in its first 4 MB)
    bad.write_bytes(z + b"garbage after")
    with pytest.raises(UserError, match="trailing data after the last gzip member"):
        SequenceIndex.build([bad])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_pipe_input_refused_in_one_line(tmp_path):
    fifo = tmp_path / "stream"
    os.mkfifo(fifo)
    with pytest.raises(UserError) as info:
        check_input_files([fifo])
    msg = str(info.value)
    assert "\n" not in msg and "pipe or stream" in msg and "save the stream to a file" in msg
    with pytest.raises(UserError, match="does not exist"):
        check_input_files([tmp_path / "missing.fa"])
    with pytest.raises(UserError, match="is a directory"):
        check_input_files([tmp_path])


def _same(a, b):
    assert a.ids == b.ids and a.fingerprint == b.fingerprint and a.file_format == b.file_format
    for c in ("file_idx", "offset", "nbytes", "length", "header_line", "content_hash", "file_letter_counts", "mate"):
        np.testing.assert_array_equal(getattr(a, c), getattr(b, c))


def test_parallel_build_equals_serial_byte_for_byte(tmp_path):
    from virnucdist.data.parallel import cut_points

    rng = np.random.default_rng(2)
    fa = tmp_path / "a.fa"
    fa.write_bytes(b"".join(b">r%d x\n" % i + b"\n".join(rng.choice(np.frombuffer(b"ACGTn", np.uint8),
                   size=int(rng.integers(0, 250))).tobytes()[j:j + 60] for j in range(0, 250, 60)) + b"\n"
                   for i in range(6000)))
    fq = tmp_path / "a.fq"
    seqs = [rng.choice(np.frombuffer(b"ACGT", np.uint8), size=int(rng.integers(0, 150))).tobytes() for _ in range(6000)]
    fq.write_bytes(b"".join(b"@q%d\n%s\n+\n%s\n" % (i, s, b"@" * len(s)) for i, s in enumerate(seqs)))  # '@' qualities
    gz = tmp_path / "b.fa.gz"
    gz.write_bytes(gzip.compress(b">g1\nACGT\n>g2\nTT\n"))
    assert len(cut_points(str(fa), "fasta", 4)) == 3 and len(cut_points(str(fq), "fastq", 4)) == 3
    serial = SequenceIndex.build([fa, fq, gz], workers=1)
    parallel = SequenceIndex.build([fa, fq, gz], workers=4, min_range=50_000)
    _same(serial, parallel)
    serial.save(tmp_path / "s")
    parallel.save(tmp_path / "p")
    for name in sorted(os.listdir(tmp_path / "s")):
        assert (tmp_path / "s" / name).read_bytes() == (tmp_path / "p" / name).read_bytes(), name
    bad = tmp_path / "bad.fq"                                      # an error in one range: the serial message
    bad.write_bytes(fq.read_bytes()[:-40] + b"\n@broken\nACGT\n+\nII\n")
    with pytest.raises(FastaError) as one:
        SequenceIndex.build([bad], workers=1)
    with pytest.raises(FastaError) as many:
        SequenceIndex.build([bad], workers=4, min_range=50_000)
    assert str(one.value) == str(many.value)


def test_run_index_reused_rebuilt_and_old_files_removed(tmp_path):
    from virnucdist.data.runindex import INDEX_DIR, open_run_index

    fa = tmp_path / "r.fa"
    fa.write_bytes(_fasta(50))
    out = tmp_path / "run"
    out.mkdir()
    (out / "index.npz").write_bytes(b"an index of format 2")         # what an older version left
    (out / "inputs").mkdir()
    (out / "inputs" / "copy.fa").write_bytes(b"decompressed copy")
    (out / "index.tmp123").mkdir()                                   # a save killed before its rename
    first = open_run_index(out, [fa])
    assert first.built and not (out / INDEX_DIR).exists()            # nothing written before commit
    first.commit()
    assert (out / INDEX_DIR / "meta.json").exists()
    assert not any((out / n).exists() for n in ("index.npz", "inputs", "index.tmp123"))
    again = open_run_index(out, [fa])
    assert not again.built and again.index.ids == first.index.ids and again.index._store is not None
    fa.write_bytes(_fasta(51))                                       # changed input: rebuilt
    assert open_run_index(out, [fa]).built
