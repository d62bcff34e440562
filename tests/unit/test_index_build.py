"""The index built in bounded memory (data/build.py, data/spool.py): the same directory, byte for byte,
as ``save`` of the same index held in memory; representatives and the duplicate check from hashes;
the build's temporary directory; one cache check for ``load_or_build`` and a run's index."""

import gzip
import os

import numpy as np
import pytest

from virnucdist.data import SequenceIndex
from virnucdist.data.build import representatives
from virnucdist.data.fasta import FastaError
from virnucdist.data.inputs import InputFile
from virnucdist.data.runindex import open_run_index
from virnucdist.data.spool import NpyWriter
from virnucdist.data.unique import check_unique


def _inputs(tmp_path):
    rng = np.random.default_rng(5)
    letters = np.frombuffer(b"ACGTacgtN", np.uint8)

    def seq(n):
        return rng.choice(letters, size=n).tobytes()

    fa = tmp_path / "a.fa"            # wrapped lines, empty records, a repeated sequence
    fa.write_bytes(b"".join(b">r%d d\n" % i + b"\n".join(s[j:j + 50] for j in range(0, len(s), 50)) + b"\n"
                            for i, s in enumerate(seq(int(rng.integers(0, 180))) for _ in range(2500)))
                   + b">same1\nACGTT\n>same2\nacgtt\n")
    r1, r2 = tmp_path / "r_1.fq", tmp_path / "r_2.fq"
    reads = [seq(int(rng.integers(1, 90))) for _ in range(1200)]
    r1.write_bytes(b"".join(b"@p%d/1\n%s\n+\n%s\n" % (i, s, b"I" * len(s)) for i, s in enumerate(reads)))
    r2.write_bytes(b"".join(b"@p%d/2\n%s\n+\n%s\n" % (i, s[::-1], b"I" * len(s)) for i, s in enumerate(reads)))
    il = tmp_path / "il.fa"
    il.write_bytes(b"".join(b">m%d/1\n%s\n>m%d/2\n%s\n" % (i, seq(40), i, seq(30)) for i in range(700)))
    gz = tmp_path / "g.fa.gz"
    gz.write_bytes(gzip.compress(b">g1\nACGT\n>g2\n\n>r0\nTT\n"))     # r0 again: another sample
    return [InputFile(str(fa), sample="s1"), InputFile(str(r1), sample="s1"), InputFile(str(r2), sample="s1"),
            InputFile(str(il), sample="s2", interleaved=True), InputFile(str(gz), sample="s2")]


def _in_memory(idx):
    """The same index held in memory (the columns and ids copied out of the built directory)."""
    return SequenceIndex(idx.files, np.array(idx.file_idx), np.array(idx.offset), np.array(idx.nbytes),
                         np.array(idx.length), list(idx.ids), header_line=np.array(idx.header_line),
                         sources=idx.sources, fingerprint=idx.fingerprint, file_digests=idx.file_digests,
                         file_sizes=idx.file_sizes, identity=idx.identity, content_hash=np.array(idx.content_hash),
                         file_letter_counts=np.array(idx.file_letter_counts), file_format=idx.file_format,
                         mate=np.array(idx.mate), sample=np.array(idx.sample), samples=idx.samples,
                         input_spec=idx.input_spec, gz=idx.gz)


@pytest.mark.parametrize("workers", [1, 3])
def test_streamed_build_equals_save_of_the_index_in_memory(tmp_path, workers):
    specs = _inputs(tmp_path)
    built = SequenceIndex.build(specs, workers=workers, min_range=20_000, spool_dir=tmp_path)
    assert len(built) == 2502 + 2400 + 1400 + 3 and built.samples == ["s1", "s2"]
    assert built.ids[2502:2506] == ["p0/1", "p0/2", "p1/1", "p1/2"] and built.mate[2502:2506].tolist() == [1, 2, 1, 2]
    assert built.file_idx[2502:2506].tolist() == [1, 2, 1, 2] and built.read(2503) == built.read(2502)[::-1]
    assert built.representatives()[2501] == 2500                  # ACGTT and acgtt: one sequence
    memory = _in_memory(built)
    np.testing.assert_array_equal(built.representatives(), memory.representatives())
    built.save(tmp_path / "streamed")
    memory.save(tmp_path / "memory")
    names = sorted(os.listdir(tmp_path / "memory"))
    assert sorted(os.listdir(tmp_path / "streamed")) == names and "representatives.npy" in names
    for name in names:
        assert (tmp_path / "streamed" / name).read_bytes() == (tmp_path / "memory" / name).read_bytes(), name
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".index-build-")]      # moved, nothing left
    assert SequenceIndex.load(tmp_path / "streamed").read(2503) == built.read(2503)


def test_build_directory_removed_with_an_unsaved_index(tmp_path):
    p = tmp_path / "x.fa"
    p.write_bytes(b">a\nACGT\n>b\nGG\n")
    idx = SequenceIndex.build([p], spool_dir=tmp_path)
    [root] = [q for q in os.listdir(tmp_path) if q.startswith(".index-build-")]
    assert sorted(os.listdir(tmp_path / root)) == ["index"]         # the scans' spools are gone already
    assert idx.read(1) == "GG"
    del idx
    assert not (tmp_path / root).exists()
    p.write_bytes(b">a\nACGT\n>a\nGG\n")                              # a failed build leaves nothing either
    with pytest.raises(FastaError, match="duplicate sequence id 'a'"):
        SequenceIndex.build([p], spool_dir=tmp_path)
    assert os.listdir(tmp_path) == ["x.fa"]


def _reference_reps(h):
    order = np.lexsort((h[:, 1], h[:, 0]))
    hs = h[order]
    new = np.ones(len(h), bool)
    new[1:] = (hs[1:] != hs[:-1]).any(axis=1)
    reps = np.empty(len(h), np.int64)
    reps[order] = order[new][np.cumsum(new) - 1]
    return reps


def test_representatives_split_runs_of_equal_first_words(tmp_path):
    rng = np.random.default_rng(0)
    n = 5000
    h = np.stack([rng.integers(0, 40, n), rng.integers(0, 3, n)], axis=1).astype(np.uint64)   # many collisions
    h[::7, 1] = h[::7, 0]
    path = str(tmp_path / "content_hash.npy")
    w = NpyWriter(path, np.uint64, (2,))
    for lo in range(0, n, 999):
        w.write(h[lo:lo + 999])
    w.close()
    np.save(tmp_path / "ref.npy", h)
    assert (tmp_path / "ref.npy").read_bytes() == open(path, "rb").read()
    got = representatives([h[:, 0].copy()], path)
    np.testing.assert_array_equal(got, _reference_reps(h))
    assert (got <= np.arange(n)).all() and len(np.unique(got)) == len(np.unique(h, axis=0))


def test_duplicate_check_on_colliding_hashes(tmp_path):
    p = tmp_path / "x.fa"
    p.write_bytes(b">a\nA\n>b\nC\n>c\nG\n>b\nT\n>a\nT\n")
    idx = SequenceIndex(["x"], np.zeros(5, np.int32), np.arange(5), np.ones(5), np.ones(5), ["a", "b", "c", "d", "e"],
                        header_line=np.arange(1, 10, 2), sources=[str(p)])
    check_unique(idx, np.zeros(5, np.int64))                  # every hash equal, every id distinct: fine
    idx._ids = ["a", "b", "c", "b", "a"]
    with pytest.raises(FastaError, match=r"line 7: duplicate sequence id 'b': first at .*line 3"):
        check_unique(idx, np.zeros(5, np.int64))             # the first repeat in row order is named
    with pytest.raises(FastaError, match="duplicate sequence id 'b'"):
        check_unique(idx, np.array([1, 2, 3, 2, 1], np.int64))


def test_one_cache_check_for_load_or_build_and_the_run_index(tmp_path):
    p = tmp_path / "x.fa"
    p.write_bytes(b">a\nACGT\n>b\nGG\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / ".index-build-killed").mkdir()                    # what a killed build left
    first = SequenceIndex.load_or_build([p], out / "index")
    run = open_run_index(out, [p])
    assert not run.built and run.index.fingerprint == first.fingerprint      # the cache load_or_build wrote
    run.commit()
    assert sorted(os.listdir(out)) == ["index"]
    st = os.stat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    run = open_run_index(out, [p])
    assert run.built and [q for q in os.listdir(out) if q.startswith(".index-build-")]   # built beside it
    run.commit()
    assert sorted(os.listdir(out)) == ["index"] and SequenceIndex.load_or_build([p], out / "index").read(1) == "GG"


def test_disk_full_while_building_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    import errno

    from virnucdist.data.build import IndexSpaceError
    from virnucdist.data.spool import Spool
    from virnucdist.errors import UserError

    p = tmp_path / "x.fa"
    p.write_bytes(b">a\nACGT\n>b\nGG\n")
    out = tmp_path / "run"
    out.mkdir()
    real_add = Spool.add

    def full(self, name, arr):                     # the disk fills up as the scan writes its columns
        if name == "length":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_add(self, name, arr)

    monkeypatch.setattr(Spool, "add", full)
    with pytest.raises(IndexSpaceError, match=f"no space left on {out} while writing the sequence index") as e:
        open_run_index(out, [p])
    assert isinstance(e.value, UserError) and "\n" not in str(e.value)
    assert os.listdir(out) == []
