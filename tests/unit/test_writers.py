"""Per-rank HDF5 shards, the resume scan, and the final merge."""

from __future__ import annotations

import threading

import h5py
import numpy as np
import pytest
import torch

from virnucdist.writers import ShardWriter, finalize_embeddings, iter_embeddings, read_embeddings, scan_shards

N, DIM = 100, 8
IDS = [f"read_{i:03d}/ü" for i in range(N)]  # non-ASCII survives the UTF-8 round trip


def _vec(rows) -> np.ndarray:
    """A deterministic, row-specific vector, so a misplaced one is noticed."""
    rows = np.asarray(rows, dtype=np.float32)
    return rows[:, None] * 10.0 + np.arange(DIM, dtype=np.float32)[None, :] / 10.0


def _write_shard(d, rank, blocks, flush_every=16, ids=IDS) -> ShardWriter:
    w = ShardWriter(d, rank, DIM, ids, flush_every=flush_every)
    for rows in blocks:
        w.write(torch.as_tensor(np.asarray(rows, dtype=np.int64)), torch.from_numpy(_vec(rows)), None)
    assert w.close() == sum(len(b) for b in blocks)
    return w


def test_write_from_threads_and_scan(tmp_path):
    d = tmp_path / "shards"
    w = ShardWriter(d, 0, DIM, IDS, flush_every=7)
    blocks = [np.array([5, 3, 9]), np.array([40, 41]), np.arange(60, 80)]

    def produce():  # the compute loop runs in another thread than the writer's
        for b in blocks:
            w.write(torch.as_tensor(b), torch.from_numpy(_vec(b)), None)
        w.write(np.array([90]), _vec([90]).astype(np.float64))  # numpy, other dtype

    t = threading.Thread(target=produce)
    t.start()
    t.join()
    assert w.close() == 26
    written = np.concatenate(blocks + [np.array([90])])
    scan = scan_shards(d, N, IDS)
    assert scan.paths == [w.path] and scan.committed == [26] and scan.corrupt == [] and scan.dim == DIM
    assert np.flatnonzero(scan.done).tolist() == sorted(written.tolist())
    assert scan.n_done == 26
    with h5py.File(w.path, "r") as f:
        assert f.attrs["committed"] == 26
        assert f["rows"][:].tolist() == written.tolist()  # arrival order kept, ids beside vectors
        assert f["ids"].asstr()[:].tolist() == [IDS[r] for r in written]
        np.testing.assert_array_equal(f["embeddings"][:], _vec(written))


def test_two_ranks_two_files(tmp_path):
    a = _write_shard(tmp_path, 0, [[1, 2]])
    b = _write_shard(tmp_path, 1, [[3]])
    assert a.path != b.path and a.path.name.startswith("shard-r00000-") and b.path.name.startswith("shard-r00001-")
    assert np.flatnonzero(scan_shards(tmp_path, N, IDS).done).tolist() == [1, 2, 3]


def test_flush_every_commits_incrementally(tmp_path):
    """``committed`` rises per flush while the writer is open (what a kill -9 leaves behind)."""
    w = ShardWriter(tmp_path, 0, DIM, IDS, flush_every=4, flush_seconds=1e9)
    w.write(np.arange(4), _vec(np.arange(4)))
    w.write(np.arange(4, 6), _vec(np.arange(4, 6)))
    for _ in range(200):
        if w.committed == 4:
            break
        threading.Event().wait(0.01)
    assert w.committed == 4  # 4 reached the threshold; 2 still pending
    with h5py.File(w.path, "r") as f:  # same process: HDF5 shares the open file
        assert int(f.attrs["committed"]) == 4
    assert w.close() == 6


def test_torn_tail_is_ignored(tmp_path):
    w = _write_shard(tmp_path, 0, [np.arange(10)])
    # a crash mid-flush: data appended past `committed`, the marker never raised
    with h5py.File(w.path, "a") as f:
        for name in ("rows", "ids", "embeddings"):
            f[name].resize(15, axis=0)
        f["rows"][10:15] = np.arange(50, 55)
        f["ids"][10:15] = [IDS[r] for r in range(50, 55)]
        f["embeddings"][10:15] = np.nan
    scan = scan_shards(tmp_path, N, IDS)
    assert np.flatnonzero(scan.done).tolist() == list(range(10))
    assert scan.committed == [10]
    out = tmp_path / "emb.h5"
    finalize_embeddings(tmp_path, out, IDS, np.arange(10), {})
    ids, emb = read_embeddings(out)
    np.testing.assert_array_equal(emb, _vec(np.arange(10)))
    with pytest.raises(RuntimeError, match="5 records have no embedding"):
        finalize_embeddings(tmp_path, out, IDS, np.arange(15), {})


def test_unreadable_shard_is_quarantined(tmp_path):
    good = _write_shard(tmp_path, 0, [[0, 1, 2]])
    bad = _write_shard(tmp_path, 1, [np.arange(10, 40)])
    data = bad.path.read_bytes()
    bad.path.write_bytes(data[: len(data) // 3])  # killed mid-write: truncated file
    scan = scan_shards(tmp_path, N, IDS, quarantine=False)
    assert scan.corrupt == [bad.path] and bad.path.exists()  # only reported
    scan = scan_shards(tmp_path, N, IDS)
    assert scan.corrupt == [bad.path] and scan.paths == [good.path]
    assert np.flatnonzero(scan.done).tolist() == [0, 1, 2]  # the corrupt shard's rows are NOT done
    assert not bad.path.exists()
    assert bad.path.with_name(bad.path.name + ".corrupt").exists()
    assert scan_shards(tmp_path, N, IDS).corrupt == []  # set aside: not looked at again


def test_shard_missing_datasets_is_corrupt(tmp_path):
    p = tmp_path / "shard-r00000-x.h5"
    with h5py.File(p, "w") as f:
        f.attrs["committed"] = 3
    scan = scan_shards(tmp_path, N, IDS)
    assert scan.corrupt == [p] and scan.n_done == 0


def test_shard_of_another_input_is_an_error(tmp_path):
    w = _write_shard(tmp_path, 0, [[0, 1, 2]])
    other = [f"other_{i}" for i in range(N)]
    with pytest.raises(ValueError, match="another input") as e:
        scan_shards(tmp_path, N, other)
    assert str(w.path) in str(e.value) and "--overwrite" in str(e.value)
    assert w.path.exists()  # not quarantined: the user decides


def test_shard_with_rows_beyond_the_input_is_an_error(tmp_path):
    """A shard of a longer input: a clear error, not an IndexError."""
    _write_shard(tmp_path, 0, [[0, 150]], ids=[f"x{i}" for i in range(200)])
    with pytest.raises(ValueError, match="another input"):
        scan_shards(tmp_path, N, IDS)
    with pytest.raises(ValueError, match="another input"):
        scan_shards(tmp_path, N)


def test_finalize_input_order_and_attrs(tmp_path):
    d = tmp_path / "shards"
    rng = np.random.default_rng(0)
    rows = rng.permutation(N)
    _write_shard(d, 1, [rows[:30], rows[30:45]], flush_every=8)
    _write_shard(d, 0, [rows[45:]], flush_every=1000)
    out = tmp_path / "embeddings.h5"
    keep = np.setdiff1d(np.arange(N), [7, 8])  # e.g. empty records left out
    attrs = {"model": "esm2_t6_8M_UR50D", "pooling": "mean", "repr_layer": -1, "dim": DIM}
    assert finalize_embeddings(d, out, IDS, keep, attrs, block=16) == N - 2
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    ids, emb = read_embeddings(out)
    assert ids == [IDS[r] for r in keep]
    assert emb.dtype == np.float32 and emb.shape == (N - 2, DIM)
    np.testing.assert_array_equal(emb, _vec(keep))
    with h5py.File(out, "r") as f:
        assert {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()} == attrs
    blocks = list(iter_embeddings(out, block=7))
    assert len(blocks) == (N - 2 + 6) // 7
    assert [i for b, _ in blocks for i in b] == ids
    np.testing.assert_array_equal(np.concatenate([e for _, e in blocks]), emb)


def test_finalize_duplicate_rows_across_shards(tmp_path):
    """A row in two shards (e.g. redone after a crash) appears once."""
    _write_shard(tmp_path, 0, [[0, 1, 2]])
    _write_shard(tmp_path, 1, [[2, 3]])
    out = tmp_path / "e.h5"
    finalize_embeddings(tmp_path, out, IDS, np.arange(4), {})
    ids, emb = read_embeddings(out)
    assert ids == IDS[:4]
    np.testing.assert_array_equal(emb, _vec(range(4)))


def test_finalize_missing_rows_raises_and_leaves_nothing(tmp_path):
    d = tmp_path / "shards"
    _write_shard(d, 0, [[0, 1, 2, 4]])
    out = tmp_path / "embeddings.h5"
    with pytest.raises(RuntimeError, match=r"1 records have no embedding .*read_003.*rerun"):
        finalize_embeddings(d, out, IDS, np.arange(5), {})
    assert not out.exists()
    assert list(tmp_path.glob("*.tmp")) == []


def test_non_finite_embeddings_raise(tmp_path):
    w = ShardWriter(tmp_path, 0, DIM, IDS, flush_every=2)
    w.write(np.array([0, 1]), _vec([0, 1]))
    bad = _vec([2, 3])
    bad[1, 3] = np.inf
    w.write(np.array([2, 3]), bad)
    with pytest.raises(RuntimeError, match=r"non-finite embeddings for rows \[3\]"):
        for _ in range(500):  # the error surfaces on the producer's next call or at close
            w.write(np.array([4]), _vec([4]))
            threading.Event().wait(0.01)
        w.close()
    scan = scan_shards(tmp_path, N, IDS)
    assert scan.done[[0, 1]].all() and not scan.done[[2, 3]].any()


def test_empty_shard_dir(tmp_path):
    scan = scan_shards(tmp_path / "nothing", 5, IDS[:5])
    assert scan.n_done == 0 and scan.paths == [] and scan.dim is None
