import collections
import gzip
import hashlib
import json
import multiprocessing as mp
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virnucdist.data.fasta import FastaError, write_fasta
from virnucdist.data.index import read_fasta
from virnucdist.data import SequenceIndex
from virnucdist.data import index as index_module


def _rand_seq(rng, n):
    return "".join(rng.choice(list("ACGTN"), size=n)) if n else ""


@pytest.fixture
def inputs(tmp_path):
    """Several files: wrapped lines, CRLF, gzip, an empty record, descriptions."""
    rng = np.random.default_rng(0)
    a = tmp_path / "a.fa"
    write_fasta(a, [(f"a{i}", _rand_seq(rng, int(rng.integers(1, 300)))) for i in range(40)], width=60)
    b = tmp_path / "b.fa"
    recs = [(f"b{i} some description\twith tab", _rand_seq(rng, int(rng.integers(0, 120)))) for i in range(30)]
    recs[5] = ("b5 empty one", "")
    text = "".join(f">{h}\n{s[:50]}\n{s[50:]}\n" for h, s in recs)
    b.write_bytes(text.replace("\n", "\r\n").encode())
    c = tmp_path / "c.fa.gz"
    gz_recs = [(f"c{i}", _rand_seq(rng, int(rng.integers(1, 200)))) for i in range(25)]
    write_fasta(c, gz_recs, width=33)
    d = tmp_path / "d.fa"   # no trailing newline, empty last record
    d.write_bytes(b">d0\nAC\nGT\n>d1")
    return [a, b, c, d]


def _expected(paths):
    return [r for p in paths for r in read_fasta(p)]


def test_build_matches_read_fasta(inputs, tmp_path):
    idx = SequenceIndex.build(inputs, gzip_dir=tmp_path / "run", block_size=1000)
    want = _expected(inputs)
    assert len(idx) == len(want) == 40 + 30 + 25 + 2
    assert idx.ids == [r.id for r in want]
    assert idx.length.tolist() == [len(r.seq) for r in want]
    assert [idx.read(i) for i in range(len(idx))] == [r.seq for r in want]
    assert idx.read(-1) == ""
    assert idx.length[idx.position("b5")] == 0
    assert idx.file_idx.dtype == np.int32 and idx.offset.dtype == np.int64
    assert idx.sources[2] == str(inputs[2]) and idx.files[2] == str(inputs[2])     # gzip read in place
    assert not (tmp_path / "run").exists()                                           # no decompressed copy
    assert all(os.path.isabs(f) for f in idx.files)
    with pytest.raises(KeyError, match="nope"):
        idx.position("nope")


@pytest.mark.parametrize("block_size", [7, 64, 1 << 20])
def test_block_boundaries_do_not_matter(inputs, tmp_path, block_size):
    ref = SequenceIndex.build(inputs, gzip_dir=tmp_path)
    idx = SequenceIndex.build(inputs, gzip_dir=tmp_path, block_size=block_size)
    assert idx.ids == ref.ids and idx.fingerprint == ref.fingerprint
    for col in ("file_idx", "offset", "nbytes", "length", "header_line"):
        np.testing.assert_array_equal(getattr(idx, col), getattr(ref, col))


def test_gzip_needs_no_dir_and_leaves_no_copy(inputs, tmp_path):
    before = sorted(os.listdir(tmp_path))
    idx = SequenceIndex.build(inputs)
    assert sorted(os.listdir(tmp_path)) == before and idx.read(70) == list(read_fasta(inputs[2]))[0].seq


def _read_all(idx):
    return [idx.read(i) for i in range(len(idx))]


def test_pickle_and_other_processes(inputs, tmp_path):
    idx = SequenceIndex.build(inputs, gzip_dir=tmp_path)
    want = _read_all(idx)                      # opens handles in this process
    clone = pickle.loads(pickle.dumps(idx))
    assert clone._fds == {} and _read_all(clone) == want and clone.ids == idx.ids
    with mp.get_context("spawn").Pool(1) as pool:   # fresh interpreter, pickled index
        assert pool.map(idx.read, range(len(idx))) == want
    with mp.get_context("fork").Pool(2) as pool:    # forked with open handles
        assert pool.map(idx.read, range(len(idx))) == want


def test_torch_dataloader_workers(inputs, tmp_path):
    torch = pytest.importorskip("torch")
    idx = SequenceIndex.build(inputs, gzip_dir=tmp_path)
    want = _read_all(idx)
    got = list(torch.utils.data.DataLoader(_DS(idx), batch_size=None, num_workers=2))
    assert got == want


class _DS:
    def __init__(self, idx):
        self.idx = idx

    def __len__(self):
        return len(self.idx)

    def __getitem__(self, i):
        return self.idx.read(i)


def test_fingerprint_is_content(tmp_path):
    p = tmp_path / "x.fa"
    p.write_bytes(b">r1\nACGT\n>r2\nGGCC\n")
    fp1 = SequenceIndex.build([p]).fingerprint
    st = os.stat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))      # touch
    assert SequenceIndex.build([p]).fingerprint == fp1
    p.write_bytes(b">r1\nACGT\n>r2\nGGCA\n")                        # same size, same path
    fp2 = SequenceIndex.build([p]).fingerprint
    assert fp2 != fp1
    q = tmp_path / "copy.fa"                                      # other path, same content
    q.write_bytes(p.read_bytes())
    assert SequenceIndex.build([q]).fingerprint == fp2


def test_duplicate_ids_name_both(tmp_path):
    a, b = tmp_path / "one.fa", tmp_path / "two.fa"
    a.write_bytes(b">x\nAC\n>dup first\nGG\n")
    b.write_bytes(b">y\nAC\n>z\nA\n>dup again\nTT\n")
    with pytest.raises(FastaError) as info:
        SequenceIndex.build([a, b])
    msg = str(info.value)
    assert "'dup'" in msg and "one.fa, line 3" in msg and "two.fa, line 5" in msg
    assert "unique" in msg


@pytest.mark.parametrize("content,line,needle", [
    (b"", 1, "no FASTA or FASTQ records"),
    (b"\n\n", 2, "no FASTA or FASTQ records"),
    (b"\nhello\n>r\nA\n", 2, "'>'"),
    (b">r\nAC\x00GT\n", 2, "binary"),
    (b">r\nACGT\n>\nAC\n", 3, "empty header"),
    (b">r\nACGT\n>  \r\nAC\n", 3, "empty header"),
    (b">r\xff x\nACGT\n", 1, "UTF-8"),      # in the id; in a description it is kept (test_line_ends)
    (b">r\nAC\n>s\nA\xc3\x89\n", 4, "ASCII"),
    (b">r\nAC\n>s\nA\xff\n", 4, "UTF-8"),
    (b"\x89PNG\r\n", 1, "UTF-8"),
])
def test_malformed(tmp_path, content, line, needle):
    p = tmp_path / "bad.fa"
    p.write_bytes(content)
    with pytest.raises(FastaError) as info:
        SequenceIndex.build([p])
    assert f"bad.fa, line {line}" in str(info.value) and needle in str(info.value)
    with pytest.raises(FastaError) as info2:     # same verdict as the streaming reader
        list(read_fasta(p))
    assert f"bad.fa, line {line}" in str(info2.value)


def test_save_load_roundtrip(inputs, tmp_path):
    idx = SequenceIndex.build(inputs, gzip_dir=tmp_path)
    cache = tmp_path / "index.npz"
    idx.save(cache)
    back = SequenceIndex.load(cache, expected_fingerprint=idx.fingerprint)
    assert back.ids == idx.ids and back.files == idx.files and back.sources == idx.sources
    assert back.fingerprint == idx.fingerprint
    for col in ("file_idx", "offset", "nbytes", "length", "header_line", "content_hash", "file_letter_counts"):
        np.testing.assert_array_equal(getattr(back, col), getattr(idx, col))
    assert back.file_format == idx.file_format == ["fasta"] * 4
    np.testing.assert_array_equal(back.representatives(), idx.representatives())
    assert _read_all(back) == _read_all(idx)
    with pytest.raises(ValueError, match="different inputs"):
        SequenceIndex.load(cache, expected_fingerprint="0" * 64)


def test_load_or_build(tmp_path, monkeypatch):
    p = tmp_path / "x.fa"
    p.write_bytes(b">r1\nACGT\n>r2\nGG\n")
    gz = tmp_path / "y.fa.gz"
    gz.write_bytes(gzip.compress(b">g1\nTTT\n"))
    cache = tmp_path / "run" / "index"
    cache.parent.mkdir()
    calls = []
    real_build = SequenceIndex.build.__func__

    def counting_build(cls, *a, **k):
        calls.append(1)
        return real_build(cls, *a, **k)

    monkeypatch.setattr(SequenceIndex, "build", classmethod(counting_build))
    first = SequenceIndex.load_or_build([p, gz], cache)
    assert len(calls) == 1 and first.ids == ["r1", "r2", "g1"] and first.read(2) == "TTT"
    again = SequenceIndex.load_or_build([p, gz], cache)
    assert len(calls) == 1 and again.fingerprint == first.fingerprint and again.read(2) == "TTT"
    st = os.stat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))      # touched: rebuild, same fp
    touched = SequenceIndex.load_or_build([p, gz], cache)
    assert len(calls) == 2 and touched.fingerprint == first.fingerprint
    p.write_bytes(b">r1\nACGT\n>r2\nGGA\n")                         # changed: rebuild, new fp
    changed = SequenceIndex.load_or_build([p, gz], cache)
    assert len(calls) == 3 and changed.fingerprint != first.fingerprint
    assert changed.read(1) == "GGA"
    assert changed.files[1] == str(gz) and sorted(os.listdir(cache.parent)) == ["index"]  # no gzip copy
    (cache / "meta.json").write_bytes(b"garbage")                   # corrupt cache
    assert SequenceIndex.load_or_build([p, gz], cache).ids == ["r1", "r2", "g1"]
    assert len(calls) == 4


def test_stale_file_detected_on_read(tmp_path):
    p = tmp_path / "x.fa"
    p.write_bytes(b">r1\nACGT\n>r2\nGG\n")
    idx = SequenceIndex.build([p])
    p.write_bytes(b">r1\nAC\n\n\n>r2\nGG\n")
    with pytest.raises(RuntimeError, match="changed after"):
        idx.read(0)


def test_fresh_interpreter_reads_loaded_index(inputs, tmp_path):
    idx = SequenceIndex.build(inputs, gzip_dir=tmp_path)
    idx.save(tmp_path / "i.npz")
    code = ("import sys,pickle; from virnucdist.data import SequenceIndex;"
            "i=SequenceIndex.load(sys.argv[1]); pickle.dump([i.read(k) for k in range(len(i))], sys.stdout.buffer)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "i.npz")], check=True,
                         capture_output=True).stdout
    assert pickle.loads(out) == _read_all(idx)


def test_utf8_bom_and_leading_blank_lines(tmp_path):
    p = tmp_path / "bom.fa"
    p.write_bytes(b"\xef\xbb\xbf>r1 x\nAC\n>r2\nG\n")
    q = tmp_path / "blank.fa"
    q.write_bytes(b"\n \n>q1\nAC\n")
    for f in (p, q):
        idx = SequenceIndex.build([f])
        want = list(read_fasta(f))
        assert idx.ids == [r.id for r in want]
        assert _read_all(idx) == [r.seq for r in want]


def _blake(seq: str) -> bytes:
    return hashlib.blake2b(seq.upper().encode(), digest_size=16).digest()


@pytest.mark.parametrize("block_size", [7, 64, 1 << 20])
def test_content_hash_is_blake2b_of_the_normalised_sequence(inputs, tmp_path, block_size):
    """Records spanning blocks, CRLF, wrapped lines, an empty record, gzip: each hash is blake2b-128
    of the sequence (whitespace removed) upper-cased."""
    idx = SequenceIndex.build(inputs, gzip_dir=tmp_path, block_size=block_size)
    h = idx.content_hash
    assert h.dtype == np.uint64 and h.shape == (len(idx), 2)
    assert [h[i].astype("<u8").tobytes() for i in range(len(idx))] == [_blake(s) for s in _read_all(idx)]


def test_same_sequence_same_hash_whatever_its_case_and_wrapping(tmp_path):
    seq = "ACGTNACGTTGCAacgtnnA" * 7
    a = tmp_path / "a.fa"
    write_fasta(a, [("one", seq), ("two", seq.upper()), ("three", seq.lower()), ("other", seq[:-1])], width=13)
    b = tmp_path / "b.fa"
    b.write_bytes(f">four desc\r\n{seq[:50]}\r\n {seq[50:]}\t\r\n>five\n{seq}".encode())
    idx = SequenceIndex.build([a, b])
    h = [tuple(x) for x in idx.content_hash.tolist()]
    assert h[0] == h[1] == h[2] == h[4] == h[5] and h[3] != h[0]
    assert idx.representatives().tolist() == [0, 0, 0, 3, 0, 0]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.text("ACGacg", max_size=6), st.integers(1, 4), st.booleans()), min_size=1, max_size=40),
       st.sampled_from([5, 17, 1 << 16]))
def test_representatives_match_a_dict(records, block_size):
    """Duplicates (after upper-casing), wrapped at random widths, CRLF or not, against a dict reference."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "r.fa")
        text = "".join(f">r{i}\n" + "".join(s[j:j + w] + "\n" for j in range(0, len(s), w)) for i, (s, w, _) in
                       enumerate(records))
        data = "".join(line + ("\r\n" if records[k % len(records)][2] else "\n")
                       for k, line in enumerate(text.split("\n")[:-1]))
        with open(path, "w", newline="") as fh:
            fh.write(data)
        idx = SequenceIndex.build([path], block_size=block_size)
        first: dict[str, int] = {}
        want = [first.setdefault(s.upper(), i) for i, (s, _, _) in enumerate(records)]
        reps = idx.representatives()
        assert reps.dtype == np.int64 and reps.tolist() == want
        assert [idx.read(i) for i in range(len(idx))] == [s for s, _, _ in records]


def test_letter_counts_match_a_python_count(inputs, tmp_path):
    idx = SequenceIndex.build(inputs, gzip_dir=tmp_path, block_size=100)
    per_file = [collections.Counter("".join(r.seq for r in read_fasta(p)).encode()) for p in inputs]
    assert idx.file_letter_counts.shape == (4, 256) and idx.letter_counts.shape == (256,)
    for f, counter in enumerate(per_file):
        want = np.zeros(256, np.int64)
        for byte, n in counter.items():
            want[byte] = n
        np.testing.assert_array_equal(idx.file_letter_counts[f], want)
    np.testing.assert_array_equal(idx.letter_counts, idx.file_letter_counts.sum(axis=0))
    p = tmp_path / "mixed.fa"                   # case kept; headers, digits in headers, whitespace not counted
    p.write_bytes(b">h1 ACGT 123\nAc g\tT\r\n*-\n>h2\n\n>h3 x\nxX\n")
    counts = SequenceIndex.build([p], block_size=3).letter_counts
    got = {chr(b): int(n) for b, n in enumerate(counts) if n}
    assert got == {"A": 1, "c": 1, "g": 1, "T": 1, "*": 1, "-": 1, "x": 1, "X": 1}


def test_old_cache_is_rebuilt_not_misread(tmp_path, monkeypatch):
    assert index_module.FORMAT_VERSION == 3
    p = tmp_path / "x.fa"
    p.write_bytes(b">r1\nACGT\n>r2\nacgt\n")
    cache = tmp_path / "index"
    # a format-2 cache (one .npz read whole) where the index now lives, the inputs unchanged
    meta = {"version": 2, "files": [str(p)], "sources": [str(p)], "fingerprint": "x", "file_digests": [],
            "file_sizes": [p.stat().st_size], "identity": index_module.quick_identity([p]), "file_format": ["fasta"]}
    with open(cache, "wb") as fh:
        np.savez(fh, file_idx=np.zeros(2, np.int32), offset=np.array([4, 13]), nbytes=np.array([5, 5]),
                 length=np.array([4, 4]), header_line=np.array([1, 3]), ids_blob=np.frombuffer(b"r1\nr2", np.uint8),
                 content_hash=np.zeros((2, 2), np.uint64), letter_counts=np.zeros((1, 256), np.int64),
                 meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    with pytest.raises(ValueError, match="format version 2 is not 3"):
        SequenceIndex.load(cache)
    calls = []
    real_build = SequenceIndex.build.__func__
    monkeypatch.setattr(SequenceIndex, "build",
                        classmethod(lambda cls, *a, **k: calls.append(1) or real_build(cls, *a, **k)))
    idx = SequenceIndex.load_or_build([p], cache)
    assert calls == [1] and idx.representatives().tolist() == [0, 0]
    assert cache.is_dir() and SequenceIndex.load(cache).representatives().tolist() == [0, 0]    # saved as 3
    meta3 = json.loads((cache / "meta.json").read_text())
    meta3["version"] = 4                                                       # a newer one: named, not misread
    (cache / "meta.json").write_text(json.dumps(meta3))
    with pytest.raises(ValueError, match="format version 4 is not 3"):
        SequenceIndex.load(cache)
