"""Per-rank HDF5 shards in input order, the resume scan, the ordered read-back and finalize."""

from __future__ import annotations

import errno
import gc
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from virnucdist import writers
from virnucdist.errors import UserError
from virnucdist.writers import (Column, DiskFullError, Part, Results, ShardSchema, ShardWriter, finalize_embeddings,
                                iter_embeddings, read_embeddings, read_token_embeddings, scan_shards,
                                write_embeddings_h5)

N, DIM = 100, 8
IDS = [f"read_{i:03d}/ü" for i in range(N)]  # non-ASCII survives the UTF-8 round trip
EMBED = ShardSchema("embed", (Column("embedding", "f4", (DIM,)),), attrs={"model": "m", "layer": -1})
TOKENS = ShardSchema("embed", (Column("embedding", "f4", (DIM,)), Column("n_tok", "i4")),
                     (Column("tokens", "f4", (DIM,)),), attrs={"model": "m"})


def _vec(rows, salt: float = 0.0) -> np.ndarray:
    """A deterministic, row-specific vector, so a misplaced one is noticed."""
    rows = np.asarray(rows, dtype=np.float32)
    return rows[:, None] * 10.0 + np.arange(DIM, dtype=np.float32)[None, :] / 10.0 + salt


def _len(rows) -> np.ndarray:
    return np.asarray(rows, dtype=np.int64) % 4  # 0..3 ragged rows per record, zero included


def _tok(rows, salt: float = 0.0) -> np.ndarray:
    """Record r's ragged rows: r*1000 + j*10 + column/100 (+ salt): each row of each record distinct."""
    rows = np.asarray(rows, dtype=np.int64)
    ln = _len(rows)
    r = np.repeat(rows, ln).astype(np.float32)
    j = (np.arange(int(ln.sum())) - np.repeat(np.cumsum(ln) - ln, ln)).astype(np.float32)
    return (r * 1000 + j * 10)[:, None] + np.arange(DIM, dtype=np.float32)[None, :] / 100 + salt


def _parts(rows, schema=EMBED, n_parts=3, seed=0, salt=0.0, torch_parts=True) -> list[Part]:
    """The window's results split into parts in a shuffled (packing) order."""
    order = np.random.default_rng(seed).permutation(len(rows))
    parts = []
    for i, slots in enumerate(np.array_split(order, n_parts)):
        r = np.asarray(rows)[slots]
        conv = torch.from_numpy if torch_parts and i % 2 == 0 else (lambda a: a)  # torch and numpy both accepted
        values = {"embedding": conv(_vec(r, salt))}
        if schema.ragged:
            values["n_tok"] = conv(_len(r).astype(np.int32))
            parts.append(Part(conv(slots.astype(np.int64)), values, conv(_len(r)), {"tokens": conv(_tok(r, salt))}))
        else:
            parts.append(Part(conv(slots.astype(np.int64)), values))
    return parts


def _write(d, rank, windows, schema=EMBED, flush_every=16, fingerprint="fp", salt=0.0) -> ShardWriter:
    w = ShardWriter(d, rank, schema, flush_every=flush_every, fingerprint=fingerprint)
    for k, rows in enumerate(windows):
        w.write(np.asarray(rows, dtype=np.int64), _parts(rows, schema, seed=k, salt=salt))
    assert w.close() == sum(len(b) for b in windows)
    return w


def _wait(cond, timeout=5.0):
    for _ in range(int(timeout / 0.01)):
        if cond():
            return True
        threading.Event().wait(0.01)
    return cond()


# --------------------------------------------------------------------------- the writer


def test_out_of_order_parts_are_written_in_input_order(tmp_path):
    d = tmp_path / "shards"
    w = ShardWriter(d, 0, EMBED, flush_every=7, fingerprint="fp")
    windows = [np.array([3, 5, 9]), np.array([40, 41]), np.arange(60, 80), np.array([90])]

    def produce():  # the compute loop runs in another thread than the writer's
        for k, rows in enumerate(windows):
            w.write(torch.as_tensor(rows), _parts(rows, seed=k))

    t = threading.Thread(target=produce)
    t.start()
    t.join()
    assert w.close() == 26
    written = np.concatenate(windows)
    scan = scan_shards(d, N, "fp")
    assert scan.paths == [w.path] and scan.committed == [26] and scan.corrupt == [] and scan.schema == EMBED
    assert np.flatnonzero(scan.done).tolist() == written.tolist() and scan.n_done == 26
    with h5py.File(w.path, "r") as f:
        assert f.attrs["committed"] == 26 and f.attrs["kind"] == "embed" and f.attrs["fingerprint"] == "fp"
        assert ShardSchema.from_json(f.attrs["schema"]) == EMBED
        assert f["rows"][:].tolist() == written.tolist()  # input order, whatever the parts' order
        np.testing.assert_array_equal(f["embedding"][:], _vec(written))
        assert "ids" not in f and "lengths" not in f


def test_two_ranks_two_files(tmp_path):
    a = _write(tmp_path, 0, [[1, 2]])
    b = _write(tmp_path, 1, [[3]])
    assert a.path != b.path and a.path.name.startswith("shard-r00000-") and b.path.name.startswith("shard-r00001-")
    assert np.flatnonzero(scan_shards(tmp_path, N, "fp").done).tolist() == [1, 2, 3]


@pytest.mark.parametrize("slots, what", [([0, 1, 1], "1 missing, 1 covered more than once"),
                                         ([0, 2], "1 missing, 0 covered"), ([0, 1, 2, 2], "0 missing, 1 covered")])
def test_a_window_not_covered_exactly_once_is_never_committed(tmp_path, slots, what):
    w = ShardWriter(tmp_path, 0, EMBED, flush_every=1)
    w.write(np.array([0, 1]), _parts([0, 1]))
    rows = np.array([5, 6, 7])
    w.write(rows, [Part(np.asarray(slots), {"embedding": _vec(rows[np.asarray(slots)])})])
    with pytest.raises(RuntimeError, match=f"window of records 5..7: 3 slots, {what}.*not committing it"):
        assert _wait(lambda: w._error is not None)
        w.write(np.array([10]), _parts([10]))
    with pytest.raises(RuntimeError, match="shard writer failed"):
        w.close()
    scan = scan_shards(tmp_path, N)
    assert np.flatnonzero(scan.done).tolist() == [0, 1]  # the earlier window only


def test_windows_must_come_in_ascending_order(tmp_path):
    w = ShardWriter(tmp_path, 0, EMBED)
    w.write(np.array([4, 5]), _parts([4, 5]))
    for rows in ([5, 6], [3], [8, 7]):
        with pytest.raises(ValueError, match="ascending record order"):
            w.write(np.array(rows), _parts(rows))
    assert w.close() == 2


def test_flush_every_commits_incrementally(tmp_path):
    """``committed`` rises per flush while the writer is open (what a kill -9 leaves behind)."""
    w = ShardWriter(tmp_path, 0, EMBED, flush_every=4, flush_seconds=1e9)
    w.write(np.arange(4), _parts(np.arange(4)))
    w.write(np.arange(4, 6), _parts(np.arange(4, 6)))
    assert _wait(lambda: w.committed == 4)
    assert w.committed == 4  # 4 reached the threshold; 2 still pending
    with h5py.File(w.path, "r", locking=False) as f:  # same process: HDF5 shares the open file
        assert int(f.attrs["committed"]) == 4
    assert w.close() == 6


def test_ragged_columns_in_input_order(tmp_path):
    windows = [np.arange(0, 9), np.arange(9, 10), np.arange(20, 33)]
    w = _write(tmp_path, 0, windows, TOKENS, flush_every=5)
    rows = np.concatenate(windows)
    with h5py.File(w.path, "r") as f:
        assert f["rows"][:].tolist() == rows.tolist()
        np.testing.assert_array_equal(f["lengths"][:], _len(rows))
        np.testing.assert_array_equal(f["n_tok"][:], _len(rows))
        np.testing.assert_array_equal(f["tokens"][:], _tok(rows))  # input order, parts were shuffled
        assert f.attrs["committed_ragged"] == _len(rows).sum() == f["tokens"].shape[0]


def test_keep_commits_only_the_records_not_yet_on_disk(tmp_path):
    """A resumed window is computed whole (the batches of an uninterrupted run) and commits only the
    records an earlier attempt did not: their values and ragged rows stay in their places."""
    rows = np.arange(10, 22)
    keep = np.isin(rows, [11, 12, 15, 20])
    w = ShardWriter(tmp_path, 0, TOKENS, flush_every=3, fingerprint="fp")
    parts = _parts(rows, TOKENS, seed=4)
    parts[0].skipped = {0: "out of memory"}  # a skip of a record not kept is dropped with it
    w.write(rows, parts, keep=keep)
    slot0 = int(parts[0].slots[0])
    kept = rows[keep & (np.arange(len(rows)) != slot0)]
    assert w.close() == len(kept)
    with h5py.File(w.path, "r") as f:
        assert f["rows"][:].tolist() == kept.tolist()
        np.testing.assert_array_equal(f["embedding"][:], _vec(kept))
        np.testing.assert_array_equal(f["tokens"][:], _tok(kept))
        assert f["bad_rows"][:].tolist() == ([int(rows[slot0])] if keep[slot0] else [])
    with pytest.raises(ValueError, match="keep mask"):
        ShardWriter(tmp_path / "b", 0, EMBED).write(rows, _parts(rows), keep=keep[:3])


def test_non_finite_record_is_a_counted_bad_row(tmp_path):
    w = ShardWriter(tmp_path, 0, TOKENS, flush_every=2, fingerprint="fp")
    w.write(np.array([0, 1]), _parts([0, 1], TOKENS))
    rows = np.array([2, 3, 5, 6, 7])
    parts = _parts(rows, TOKENS, n_parts=1, torch_parts=False)
    slot = {int(r): i for i, r in enumerate(rows[parts[0].slots])}
    parts[0].values["embedding"][slot[3], 3] = np.inf  # pooled vector of record 3
    off = np.concatenate([[0], np.cumsum(parts[0].lengths)])
    parts[0].ragged["tokens"][off[slot[7]] + 1, 0] = np.nan  # one token state of record 7 (3 tokens)
    w.write(rows, parts)
    assert w.close() == 5
    scan = scan_shards(tmp_path, N, "fp")
    assert scan.bad == [(3, "non-finite values in embedding"), (7, "non-finite values in tokens")]
    assert scan.done[[0, 1, 2, 3, 5, 6, 7]].all() and scan.n_done == 7  # bad rows are not redone
    with h5py.File(w.path, "r") as f:
        good = np.array([0, 1, 2, 5, 6])
        assert f["rows"][:].tolist() == good.tolist() and f.attrs["committed_bad"] == 2
        np.testing.assert_array_equal(f["embedding"][:], _vec(good))
        np.testing.assert_array_equal(f["tokens"][:], _tok(good))
    out = tmp_path / "e.h5"
    assert finalize_embeddings(tmp_path, out, IDS, np.arange(8)[[0, 1, 2, 3, 5, 6, 7]], fingerprint="fp",
                               per_token_column="tokens") == 5  # the bad ones left out, counted
    ids, emb = read_embeddings(out)
    assert ids == [IDS[r] for r in good]
    with pytest.raises(ValueError, match=r"record 3\).*skipped \(non-finite values in embedding\)"):
        Results(tmp_path, N, names=IDS).windows([3])


_KILL_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from virnucdist.writers import Column, Part, ShardSchema, ShardWriter
    s = ShardSchema("embed", (Column("embedding", "f4", (4,)),))
    w = ShardWriter(sys.argv[1], 0, s, flush_every=3)
    for a in range(0, 12, 3):
        rows = np.arange(a, a + 3)
        w.write(rows, [Part(np.arange(3), {"embedding": np.ones((3, 4), "f4")})])
    w.close()
""")


def test_killed_between_data_and_commit_counts_nothing_of_that_flush(tmp_path):
    for kill_at, committed in (("flush", 0), ("flush:3", 6)):
        d = tmp_path / kill_at.replace(":", "_")
        env = {**os.environ, "VIRNUCDIST_TEST_KILL_AT": kill_at}
        p = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(d)], env=env, capture_output=True, text=True)
        assert p.returncode == -9, p.stderr
        (path,) = d.glob("shard-*.h5")
        with h5py.File(path, "r") as f:
            assert f.attrs["committed"] == committed
            assert f["rows"].shape[0] == committed + 3  # the killed flush's data is there, not counted
        scan = scan_shards(d, 12)
        assert np.flatnonzero(scan.done).tolist() == list(range(committed)) and scan.corrupt == []


def test_fsync_data_before_the_commit_marker_and_directories(tmp_path, monkeypatch):
    events = []
    real_fsync, real_attr, real_data = os.fsync, h5py.AttributeManager.__setitem__, h5py.Dataset.__setitem__

    def fsync(fd):
        import stat
        events.append(("fsync_dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync",))
        real_fsync(fd)

    def attr(self, name, value):
        events.append(("attr", name))
        real_attr(self, name, value)

    def data(self, key, value):
        events.append(("data", self.name))
        real_data(self, key, value)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(h5py.AttributeManager, "__setitem__", attr)
    monkeypatch.setattr(h5py.Dataset, "__setitem__", data)
    w = _write(tmp_path, 0, [np.arange(3), np.arange(3, 6), np.arange(6, 8)], flush_every=3)
    assert w.committed == 8
    creation = events.index(("attr", "committed"))
    assert events[creation + 3:creation + 6] == [("fsync",), ("fsync_dir",), ("data", "/rows")]
    commits = [i for i, e in enumerate(events) if e == ("attr", "committed") and i > creation]
    assert len(commits) == 3  # one per flush
    for i in commits:
        before = [e for e in events[:i] if e[0] != "attr"]
        assert before[-1] == ("fsync",) and before[-2][0] == "data"  # data, fsync, then the marker
        after = [e for e in events[i + 1:] if e[0] != "attr"]
        assert after[0] == ("fsync",)  # the marker itself is made durable
    events.clear()
    finalize_embeddings(tmp_path, tmp_path / "e.h5", IDS, np.arange(8), fingerprint="fp")
    assert events[-2:] == [("fsync",), ("fsync_dir",)]  # the final file, then its directory after the rename


def test_fsync_dir_and_replace_durably(tmp_path):
    tmp = tmp_path / "x.tmp"
    tmp.write_bytes(b"abc")
    writers.replace_durably(tmp, tmp_path / "x")
    assert not tmp.exists() and (tmp_path / "x").read_bytes() == b"abc"
    writers.fsync_dir(tmp_path)


# --------------------------------------------------------------------------- full disk


def test_disk_full_is_one_clean_error(tmp_path, monkeypatch, capfd):
    calls = []
    real = os.fsync

    def fsync(fd):
        calls.append(fd)
        if len(calls) > 4:  # creation (file, directory), the first commit (data, marker); then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    w = ShardWriter(tmp_path / "shards", 0, EMBED, flush_every=2)
    w.write(np.array([0, 1]), _parts([0, 1]))
    w.write(np.array([2, 3]), _parts([2, 3]))
    with pytest.raises(DiskFullError) as e:
        assert _wait(lambda: w._error is not None)
        w.write(np.array([4]), _parts([4]))
    msg = str(e.value)
    assert isinstance(e.value, UserError) and "\n" not in msg
    # no count of this rank's own: the entrypoint adds the job's count over all ranks (launch.entry)
    assert msg == f"no space left on {tmp_path / 'shards'}; free space and rerun the same command"
    assert e.value.say_safe_records
    with pytest.raises(DiskFullError):
        w.close()
    del w
    gc.collect()
    monkeypatch.setattr(os, "fsync", real)
    assert "Exception ignored" not in capfd.readouterr().err
    scan = scan_shards(tmp_path / "shards", N)
    assert scan.corrupt == [] and np.flatnonzero(scan.done).tolist() == [0, 1]  # what was safe is readable


def test_h5py_reports_enospc_inside_its_message():
    assert writers.durable._is_disk_full(RuntimeError("Can't flush cache (file write failed: ..., errno = 28, ...)"))
    assert writers.durable._is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert not writers.durable._is_disk_full(OSError(errno.EIO, "Input/output error"))


_FULL_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from virnucdist.writers import Column, DiskFullError, Part, ShardSchema, ShardWriter
    s = ShardSchema("embed", (Column("embedding", "f4", (256,)),))
    w = ShardWriter(sys.argv[1], 0, s, flush_every=256)
    try:
        for a in range(0, 100000, 256):
            rows = np.arange(a, a + 256)
            w.write(rows, [Part(np.arange(256), {"embedding": np.ones((256, 256), "f4")})])
        w.close()
    except DiskFullError as e:
        print(e)
        sys.exit(2)
""")


def test_disk_full_on_a_real_small_tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        p = subprocess.run([sys.executable, "-c", _FULL_SCRIPT, str(mnt / "shards")], capture_output=True, text=True,
                           timeout=120)
        lines = p.stdout.splitlines()
        assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)  # not -11 (SIGSEGV)
        assert "Exception ignored" not in p.stderr and "Traceback" not in p.stderr, p.stderr
        assert lines == [f"no space left on {mnt / 'shards'}; free space and rerun the same command"]
        scan = scan_shards(mnt / "shards", 100000)  # a rerun finds them (or redoes a torn shard)
        assert len(scan.paths) + len(scan.corrupt) == 1
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


# --------------------------------------------------------------------------- shared filesystems


_HOLD_SCRIPT = textwrap.dedent("""
    import sys, h5py
    f = h5py.File(sys.argv[1], sys.argv[2], **({} if sys.argv[3] == "default" else {"locking": False}))
    print("open", flush=True)
    sys.stdin.readline()
""")


def test_files_are_opened_without_hdf5_locking(tmp_path):
    """HDF5's locks fail on NFS/Lustre: neither the writer nor the readers take one."""
    w = ShardWriter(tmp_path, 0, EMBED, flush_every=1)
    w.write(np.array([0, 1]), _parts([0, 1]))
    assert _wait(lambda: w.committed == 2)
    # the writer holds its shard open: a locking reader in another process still opens it (no lock taken)
    p = subprocess.run([sys.executable, "-c", _HOLD_SCRIPT, str(w.path), "r", "default"], input="\n",
                       capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.startswith("open"), p.stderr
    assert w.close() == 2
    # another process holds it for writing WITH a lock: a locking open fails, ours does not
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_SCRIPT, str(w.path), "a", "default"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().startswith("open")
        if os.environ.get("HDF5_USE_FILE_LOCKING", "").upper() != "FALSE":
            with pytest.raises(OSError, match="lock"):
                h5py.File(w.path, "r")
        assert scan_shards(tmp_path, N).n_done == 2
        np.testing.assert_array_equal(next(Results(tmp_path, N).windows([0, 1])).columns["embedding"], _vec([0, 1]))
    finally:
        holder.communicate("\n")


# --------------------------------------------------------------------------- the resume scan


def test_torn_tail_is_ignored(tmp_path):
    w = _write(tmp_path, 0, [np.arange(10)])
    # a crash mid-flush: data appended past `committed`, the marker never raised
    with h5py.File(w.path, "a") as f:
        for name in ("rows", "embedding"):
            f[name].resize(15, axis=0)
        f["rows"][10:15] = np.arange(50, 55)
        f["embedding"][10:15] = np.nan
    scan = scan_shards(tmp_path, N)
    assert np.flatnonzero(scan.done).tolist() == list(range(10))
    assert scan.committed == [10]
    out = tmp_path / "emb.h5"
    finalize_embeddings(tmp_path, out, IDS, np.arange(10))
    ids, emb = read_embeddings(out)
    np.testing.assert_array_equal(emb, _vec(np.arange(10)))
    with pytest.raises(RuntimeError, match="5 records have no committed result"):
        finalize_embeddings(tmp_path, out, IDS, np.arange(15))


def test_unreadable_shard_is_set_aside(tmp_path):
    good = _write(tmp_path, 0, [[0, 1, 2]])
    bad = _write(tmp_path, 1, [np.arange(10, 40)])
    data = bad.path.read_bytes()
    bad.path.write_bytes(data[: len(data) // 3])  # killed mid-write: truncated file
    scan = scan_shards(tmp_path, N, quarantine=False)
    assert scan.corrupt == [bad.path] and bad.path.exists()  # only reported
    scan = scan_shards(tmp_path, N)
    assert scan.corrupt == [bad.path] and scan.paths == [good.path]
    assert np.flatnonzero(scan.done).tolist() == [0, 1, 2]  # the corrupt shard's rows are NOT done
    assert not bad.path.exists()
    assert bad.path.with_name(bad.path.name + ".corrupt").exists()
    assert scan_shards(tmp_path, N).corrupt == []  # set aside: not looked at again


def test_shard_missing_datasets_is_corrupt(tmp_path):
    p = tmp_path / "shard-r00000-x.h5"
    with h5py.File(p, "w") as f:
        f.attrs["committed"] = 3
    scan = scan_shards(tmp_path, N)
    assert scan.corrupt == [p] and scan.n_done == 0


def test_shard_of_another_input_is_an_error(tmp_path):
    w = _write(tmp_path, 0, [[0, 1, 2]], fingerprint="input-A")
    with pytest.raises(ValueError, match="another input") as e:
        scan_shards(tmp_path, N, "input-B")
    assert str(w.path) in str(e.value) and "--overwrite" in str(e.value)
    assert w.path.exists()  # not set aside: the user decides
    assert scan_shards(tmp_path, N, "input-A").n_done == 3
    _write(tmp_path, 1, [[5]], fingerprint="input-B")
    with pytest.raises(ValueError, match="different inputs"):
        scan_shards(tmp_path, N)  # the shards disagree among themselves


def test_shard_with_rows_beyond_the_input_is_an_error(tmp_path):
    """A shard of a longer input: a clear error, not an IndexError."""
    _write(tmp_path, 0, [[0, 150]])
    with pytest.raises(ValueError, match="another input"):
        scan_shards(tmp_path, N)
    with pytest.raises(ValueError, match="another input"):
        Results(tmp_path, N)


def test_shard_of_other_results_is_an_error(tmp_path):
    _write(tmp_path, 0, [[0, 1]])
    other = ShardSchema("embed", EMBED.columns, attrs={"model": "m", "layer": 12})  # another layer
    with pytest.raises(ValueError, match="other results.*--overwrite"):
        scan_shards(tmp_path, N, schema=other)
    assert scan_shards(tmp_path, N, schema=ShardSchema("embed", (Column("embedding", "<f4", [DIM]),),
                                                        attrs={"model": "m", "layer": -1})).n_done == 2
    _write(tmp_path, 1, [[4]], schema=other)
    with pytest.raises(ValueError, match="other results"):
        scan_shards(tmp_path, N)


def test_empty_shard_dir(tmp_path):
    scan = scan_shards(tmp_path / "nothing", 5)
    assert scan.n_done == 0 and scan.paths == [] and scan.schema is None and scan.bad == []


# --------------------------------------------------------------------------- reading back in input order


def _collect(res: Results, rows, source=None, **kw):
    wins = list(res.windows(rows, source, **kw))
    cols = {k: np.concatenate([w.columns[k] for w in wins]) for k in wins[0].columns}
    rag = {k: np.concatenate([w.ragged[k] for w in wins]) for k in wins[0].ragged}
    lengths = np.concatenate([w.lengths for w in wins]) if wins[0].lengths is not None else None
    assert np.concatenate([w.rows for w in wins]).tolist() == list(rows)
    return wins, cols, lengths, rag


def test_results_two_ranks_contiguous_ranges_and_a_resumed_third_shard(tmp_path):
    # rank 0 got 0..49 and was killed after committing 0..29; rank 1 did 50..99; the rerun did 30..49
    _write(tmp_path, 0, [np.arange(0, 12), np.arange(12, 30)], TOKENS, flush_every=4)
    _write(tmp_path, 1, [np.arange(50, 75), np.arange(75, 100)], TOKENS)
    _write(tmp_path, 2, [np.arange(30, 41), np.arange(41, 50)], TOKENS)
    res = Results(tmp_path, N, "fp")
    assert res.done.all() and len(res.shards) == 3
    rows = np.arange(N)
    wins, cols, lengths, rag = _collect(res, rows, ragged=True, window=7)
    assert [len(w.rows) for w in wins] == [7] * 14 + [2]
    np.testing.assert_array_equal(cols["embedding"], _vec(rows))
    np.testing.assert_array_equal(lengths, _len(rows))
    np.testing.assert_array_equal(rag["tokens"], _tok(rows))
    some = np.array([1, 2, 3, 29, 30, 31, 49, 50, 98])  # a subset: runs with gaps across three shards
    _, cols, _, rag = _collect(res, some, columns=["embedding"], ragged=["tokens"], window=4)
    assert list(cols) == ["embedding"]
    np.testing.assert_array_equal(cols["embedding"], _vec(some))
    np.testing.assert_array_equal(rag["tokens"], _tok(some))


def test_a_record_committed_twice_is_taken_from_one_shard_consistently(tmp_path):
    """Records redone after a crash: the copies differ (salt), so the test sees which one is kept."""
    a = _write(tmp_path, 0, [np.arange(0, 10)], TOKENS)
    b = _write(tmp_path, 1, [np.arange(5, 20)], TOKENS, salt=0.5)
    first, second = sorted([(a.path, 0.0), (b.path, 0.5)])
    res = Results(tmp_path, N)
    rows = np.arange(20)
    _, cols, _, rag = _collect(res, rows, ragged=True, window=3)
    # 5..9 are in both: all of them, every column, from the first shard in name order
    dup_salt = first[1]
    only = {0.0: np.arange(0, 5), 0.5: np.arange(10, 20)}
    expect = np.concatenate([_vec(only[0.0]), _vec(np.arange(5, 10), dup_salt), _vec(only[0.5], 0.5)])
    np.testing.assert_array_equal(cols["embedding"], expect)
    np.testing.assert_array_equal(rag["tokens"], np.concatenate(
        [_tok(only[0.0]), _tok(np.arange(5, 10), dup_salt), _tok(only[0.5], 0.5)]))
    assert second[1] != dup_salt


def test_duplicates_fan_out_bit_identical_to_their_source(tmp_path):
    # identical sequences are computed once: only the first record of each group is in the shards
    rng = np.random.default_rng(1)
    rows = np.arange(N)
    source = rows.copy()
    dup = np.sort(rng.choice(np.arange(10, N), 40, replace=False))
    source[dup] = [rng.integers(0, r) for r in dup]  # any earlier record, windows and windows back
    source[dup] = source[source[dup]]  # ... whose own source is itself
    source[[60, 61, 97]] = 0  # reused many windows later
    computed = np.unique(source)
    _write(tmp_path, 0, [computed[computed < 50]], TOKENS)
    _write(tmp_path, 1, [computed[computed >= 50]], TOKENS)
    res = Results(tmp_path, N)
    for window in (1, 3, 16, 1000):
        _, cols, lengths, rag = _collect(res, rows, source, ragged=True, window=window)
        np.testing.assert_array_equal(cols["embedding"], _vec(source))
        assert cols["embedding"][97].tobytes() == cols["embedding"][0].tobytes()
        np.testing.assert_array_equal(lengths, _len(source))
        np.testing.assert_array_equal(rag["tokens"], _tok(source))
    with pytest.raises(ValueError, match="<= rows"):
        res.windows(rows[:3], np.array([0, 2, 1]) + 1)


def test_a_missing_source_names_the_record_and_says_rerun(tmp_path):
    _write(tmp_path, 0, [[0, 1, 2, 4]])
    res = Results(tmp_path, N, names=IDS)
    with pytest.raises(RuntimeError, match=r"1 records have no committed result \(e.g. 'read_003/ü' \(record 3\)\)"
                                           r".*rerun the same command"):
        res.windows(np.arange(5))
    assert [w.rows.tolist() for w in res.windows([0, 1, 2, 4], window=2)] == [[0, 1], [2, 4]]


# --------------------------------------------------------------------------- finalize


def _reference_finalize(shard_dir, ids, rows, per_token=False) -> dict:
    """The previous release's finalize, ported to the new shard layout: a scatter of each shard's
    blocks to their output positions (first shard wins), ragged states copied per record."""
    rows = np.asarray(rows)
    where = np.full(len(ids), -1)
    where[rows] = np.arange(len(rows))
    emb, filled = None, np.zeros(len(rows), dtype=bool)
    lengths, toks = np.zeros(len(rows), dtype=np.int64), [None] * len(rows)
    for path in sorted(Path(shard_dir).glob("shard-*.h5")):
        with h5py.File(path, "r") as f:
            n = int(f.attrs["committed"])
            r, e = f["rows"][:n], f["embedding"][:n]
            emb = np.zeros((len(rows), e.shape[1]), np.float32) if emb is None else emb
            pos = where[r]
            keep = (pos >= 0) & ~filled[np.maximum(pos, 0)]
            emb[pos[keep]] = e[keep]
            filled[pos[keep]] = True
            if per_token:
                off = np.concatenate([[0], np.cumsum(f["lengths"][:n])])
                t = f["tokens"][:]
                for j in np.flatnonzero(keep):
                    toks[pos[j]] = t[off[j]:off[j + 1]]
                    lengths[pos[j]] = off[j + 1] - off[j]
    assert filled.all()
    out = {"ids": np.array([ids[r] for r in rows], dtype=object), "embeddings": emb}
    if per_token:
        out["per_token/offsets"] = np.concatenate([[0], np.cumsum(lengths)])
        out["per_token/embeddings"] = np.concatenate(toks)
    return out


def _datasets(path) -> dict:
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = (obj.dtype.str if obj.dtype.kind != "O" else "str", obj[:])
        f.visititems(visit)
    return out


def test_finalize_equals_the_previous_finalize_and_keeps_the_layout(tmp_path):
    d = tmp_path / "shards"
    _write(d, 1, [np.arange(0, 30), np.arange(30, 45)], TOKENS, flush_every=8)
    _write(d, 0, [np.arange(45, N)], TOKENS, flush_every=1000)
    _write(d, 2, [np.arange(40, 50)], TOKENS, salt=0.25)  # a redone stretch, differing
    out = tmp_path / "embeddings.h5"
    keep = np.setdiff1d(np.arange(N), [7, 8])  # e.g. empty records left out
    attrs = {"model": "esm2_t6_8M_UR50D", "pooling": "mean", "repr_layer": -1, "dim": DIM}
    assert finalize_embeddings(d, out, IDS, keep, None, attrs, per_token_column="tokens", window=16,
                               fingerprint="fp") == N - 2
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    ref = _reference_finalize(d, IDS, keep, per_token=True)
    got = _datasets(out)
    assert sorted(got) == sorted(ref) == ["embeddings", "ids", "per_token/embeddings", "per_token/offsets"]
    assert got["embeddings"][0] == "<f4" and got["per_token/embeddings"][0] == "<f4"
    assert got["per_token/offsets"][0] == "<i8" and got["ids"][0] == "str"
    for k in ref:
        if k == "ids":
            assert [x.decode() for x in got[k][1]] == ref[k].tolist()
        else:
            np.testing.assert_array_equal(got[k][1], ref[k])
    ids, emb = read_embeddings(out)
    assert ids == [IDS[r] for r in keep]
    assert emb.dtype == np.float32 and emb.shape == (N - 2, DIM)
    with h5py.File(out, "r") as f:
        assert {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()} == attrs
        assert f["embeddings"].chunks is None and f["per_token/embeddings"].chunks is None  # contiguous
    for i in (0, 3, 50, N - 3):
        np.testing.assert_array_equal(read_token_embeddings(out, i), _tok([keep[i]]))
    blocks = list(iter_embeddings(out, block=7))
    assert len(blocks) == (N - 2 + 6) // 7
    assert [i for b, _ in blocks for i in b] == ids
    np.testing.assert_array_equal(np.concatenate([e for _, e in blocks]), emb)


def test_finalize_with_duplicates_fans_out(tmp_path):
    rows = np.arange(30)
    source = np.where(rows % 3 == 2, rows - 2, rows)  # every third record repeats an earlier sequence
    _write(tmp_path, 0, [np.unique(source)])
    out = tmp_path / "e.h5"
    assert finalize_embeddings(tmp_path, out, IDS, rows, source, window=4) == 30
    ids, emb = read_embeddings(out)
    assert ids == IDS[:30]  # each duplicate keeps its own id
    np.testing.assert_array_equal(emb, _vec(source))


def test_finalize_missing_rows_raises_and_leaves_nothing(tmp_path):
    d = tmp_path / "shards"
    _write(d, 0, [[0, 1, 2, 4]])
    out = tmp_path / "embeddings.h5"
    with pytest.raises(RuntimeError, match=r"1 records have no committed result .*read_003.*rerun"):
        finalize_embeddings(d, out, IDS, np.arange(5))
    assert not out.exists()
    assert list(tmp_path.glob("*.tmp")) == []


def test_write_embeddings_h5_several_datasets(tmp_path):
    """The engine's lower-level writer: several layers in one file, sequential windows."""
    schema = ShardSchema("embed", (Column("layer6", "f4", (DIM,)), Column("layer12", "f4", (DIM,))))
    w = ShardWriter(tmp_path / "s", 0, schema)
    rows = np.arange(20)
    w.write(rows, [Part(rows, {"layer6": _vec(rows), "layer12": _vec(rows, 1.0)})])
    w.close()
    res = Results(tmp_path / "s", 20)
    out = tmp_path / "e.h5"
    write_embeddings_h5(out, IDS[:20], res.windows(rows, window=6), 20,
                        {"embeddings": schema.column("layer12"), "embeddings_layer6": schema.column("layer6")},
                        attrs={"layers": [6, 12]})
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["embeddings"][:], _vec(rows, 1.0))
        np.testing.assert_array_equal(f["embeddings_layer6"][:], _vec(rows))
        assert f.attrs["layers"].tolist() == [6, 12]
    with pytest.raises(RuntimeError, match="windows held 6 of 20"):
        write_embeddings_h5(tmp_path / "f.h5", IDS[:20], res.windows(rows[:6]), 20,
                            {"embeddings": schema.column("layer12")})
    assert not (tmp_path / "f.h5").exists() and not (tmp_path / "f.h5.tmp").exists()


def test_ids_written_in_slices_from_row_ids(tmp_path, monkeypatch):
    """Rank 0 writes the ids of the rows taken, a slice at a time (never a list of all of them)."""
    import virnucdist.writers.final as final
    from virnucdist.writers import RowIds
    monkeypatch.setattr(final, "ID_SLICE", 7)          # several slices, the last one short
    schema = ShardSchema("embed", (Column("layer12", "f4", (DIM,)),))
    w = ShardWriter(tmp_path / "s", 0, schema)
    rows = np.arange(30)
    w.write(rows, [Part(rows, {"layer12": _vec(rows)})])
    w.close()
    taken = np.array([0, 2, 3, 5, 8, 9, 11, 12, 14, 17, 18, 20, 22, 25, 26, 27, 29])
    ids = RowIds(IDS[:30], taken)
    assert len(ids) == len(taken) and ids[3] == IDS[5] and ids[2:4] == [IDS[3], IDS[5]]
    out = tmp_path / "e.h5"
    write_embeddings_h5(out, ids, Results(tmp_path / "s", 30).windows(taken, window=5), len(taken),
                        {"embeddings": schema.column("layer12")})
    with h5py.File(out, "r") as f:
        assert f["ids"].asstr()[:].tolist() == [IDS[i] for i in taken]
        np.testing.assert_array_equal(f["embeddings"][:], _vec(taken))
    with pytest.raises(ValueError, match="16 ids for 17 records"):
        write_embeddings_h5(tmp_path / "f.h5", RowIds(IDS[:30], taken[1:]), Results(tmp_path / "s", 30).windows(taken),
                            len(taken), {"embeddings": schema.column("layer12")})
