"""Final HDF5 files: written durably from ordered windows (finalize), and read back."""

from __future__ import annotations

import os
import threading
from collections import abc
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from .._testhooks import test_hook
from . import durable
from .durable import _open, replace_durably
from .results import Results, Window
from .schema import STR, Column

class _Writeback:
    """Starts the disk write of a file being written, from a thread (``fdatasync`` every ``every`` bytes).

    Without it, the pages of a large output stay dirty in the page cache until the final fsync,
    and the disk write then follows the copy instead of overlapping it.
    """

    def __init__(self, path: Path, every: int = 256 << 20):
        self.fd = os.open(path, os.O_RDONLY)
        self.every, self.pending, self.error = every, 0, None
        self._wake, self._stop = threading.Event(), False
        self._thread = threading.Thread(target=self._run, name="writeback", daemon=True)
        self._thread.start()

    def wrote(self, nbytes: int) -> None:
        self.pending += nbytes
        if self.pending >= self.every:
            self.pending = 0
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stop:
                return
            try:
                os.fdatasync(self.fd)
            except OSError as e:  # raised by close(): the final fsync would fail the same way
                self.error = e
                return

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join()
        os.close(self.fd)
        if self.error is not None:
            raise self.error


ID_SLICE = 1 << 18


class RowIds(abc.Sequence):
    """The ids of ``rows`` (in that order) as a sequence whose slices are decoded on demand: what
    :func:`write_embeddings_h5` takes, so rank 0 never holds the ids of a whole run at once."""

    def __init__(self, ids: Sequence[str], rows):
        self.ids, self.rows = ids, np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.ids[r] for r in self.rows[i].tolist()]
        return self.ids[int(self.rows[i])]


def write_embeddings_h5(path: str | Path, ids: Sequence[str], windows: Iterable[Window], n: int,
                        datasets: dict[str, Column], *, ragged: dict[str, Column] | None = None,
                        ragged_lengths: np.ndarray | None = None, attrs: dict | None = None,
                        progress: Callable[[int], None] | None = None) -> int:
    """Write a final HDF5 file from ordered windows, durably: ``path.tmp``, fsync, atomic rename.

    ``ids`` [n] (UTF-8) go to dataset ``ids``. ``datasets``: output dataset name -> the window
    column it is filled from (e.g. ``{"embeddings": Column("embedding", "f4", (D,)),
    "embeddings_layer12": Column("layer12", "f4", (D,))}``): each a contiguous, unchunked [n, *shape]
    dataset written with sequential slices. ``ragged``: output dataset path -> window ragged column
    (e.g. ``{"per_token/embeddings": Column("tokens", "f4", (D,))}``), with ``ragged_lengths`` [n]
    given up front; each group gets ``offsets`` [n + 1] (record i's rows are
    ``[offsets[i], offsets[i+1])``). Returns ``n``.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    ragged = ragged or {}
    writeback = None
    try:
        with _open(tmp, "w") as out:
            writeback = _Writeback(tmp) if durable._FSYNC else None
            if len(ids) != n:
                raise ValueError(f"{len(ids)} ids for {n} records")
            names = out.create_dataset("ids", (n,), dtype=STR)
            for lo in range(0, n, ID_SLICE):  # in slices: never a list of all the ids (100M reads: ~10 GB)
                names[lo:lo + ID_SLICE] = np.asarray(ids[lo:lo + ID_SLICE], dtype=object).reshape(-1)
            dense = {name: (c.name, out.create_dataset(name, (n, *c.shape), dtype=c.dtype))
                     for name, c in datasets.items()}
            rdense = {}
            if ragged:
                lengths = np.asarray(ragged_lengths, dtype=np.int64)
                offsets = np.zeros(n + 1, dtype=np.int64)
                np.cumsum(lengths, out=offsets[1:])
                for name, c in ragged.items():
                    group = name.rpartition("/")[0]
                    if f"{group}/offsets" not in out:
                        out.create_dataset(f"{group}/offsets" if group else "offsets", data=offsets)
                    rdense[name] = (c.name, out.create_dataset(name, (int(offsets[-1]), *c.shape), dtype=c.dtype))
            a = 0
            for w in windows:
                b = a + len(w.rows)
                if b > n:
                    raise ValueError(f"windows hold more than {n} records")
                for col, ds in dense.values():
                    if b > a:
                        v = np.ascontiguousarray(w.columns[col])
                        ds.write_direct(v, dest_sel=np.s_[a:b])
                        if writeback is not None:
                            writeback.wrote(v.nbytes)
                if rdense:
                    if not np.array_equal(w.lengths, lengths[a:b]):
                        raise ValueError(f"ragged lengths of records {a}..{b - 1} differ from ragged_lengths")
                    t0, t1 = int(offsets[a]), int(offsets[b])
                    if t1 > t0:
                        for col, ds in rdense.values():
                            v = np.ascontiguousarray(w.ragged[col])
                            ds.write_direct(v, dest_sel=np.s_[t0:t1])
                            if writeback is not None:
                                writeback.wrote(v.nbytes)
                if progress is not None:
                    progress(b - a)
                a = b
            if a != n:
                raise RuntimeError(f"windows held {a} of {n} records")
            for k, v in (attrs or {}).items():
                out.attrs[k] = v
        if writeback is not None:
            writeback, wb = None, writeback
            wb.close()
        test_hook("finalize")
        replace_durably(tmp, path)
    except BaseException:  # no half-written .tmp left behind
        if writeback is not None:
            try:
                writeback.close()
            except OSError:
                pass
        tmp.unlink(missing_ok=True)
        raise
    return n


def finalize_embeddings(shard_dir: str | Path, out_path: str | Path, ids: Sequence[str], rows: np.ndarray,
                        source: np.ndarray | None = None, attrs: dict | None = None, *, column: str = "embedding",
                        per_token_column: str | None = None, progress: Callable[[int], None] | None = None,
                        fingerprint: str = "", window: int = 65536) -> int:
    """Merge the shards into ``out_path``: ``ids`` and ``embeddings`` [N, D] f4 in input order.

    ``ids``: the ids of all records (the index's); ``rows``: the records that belong in the
    output (ascending); ``source[i]``: the record whose result ``rows[i]`` takes (dedup; default
    ``rows``). Records set aside as bad (non-finite values) are left out: the return value is the
    number of records written. With ``per_token_column``, the group ``per_token`` holds
    ``offsets`` [N+1] and ``embeddings`` [offsets[-1], D]: record i's states are
    ``embeddings[offsets[i]:offsets[i+1]]``. Written to ``out_path.tmp``, fsync'd and renamed.
    """
    rows = np.asarray(rows, dtype=np.int64)
    src = rows if source is None else np.asarray(source, dtype=np.int64)
    res = Results(shard_dir, len(ids), fingerprint, names=ids)
    if res.schema is None:
        res.check_available(src)
        raise RuntimeError("finalize: no shards")
    skip = np.isin(src, res.bad_rows)
    if skip.any():
        rows, src = rows[~skip], src[~skip]
    col = res.schema.column(column)
    rag = {}
    if per_token_column is not None:
        if per_token_column not in {c.name for c in res.schema.ragged}:
            raise RuntimeError(f"{res.dir} holds no per-token states ({per_token_column}); rerun with --overwrite")
        rag = {"per_token/embeddings": res.schema.column(per_token_column)}
    res.check_available(src)
    wins = res.windows(rows, src, columns=[column], ragged=list(c.name for c in rag.values()), window=window)
    return write_embeddings_h5(out_path, RowIds(ids, rows), wins, len(rows), {"embeddings": col}, ragged=rag,
                               ragged_lengths=res.lengths[src] if rag else None, attrs=attrs, progress=progress)


def read_embeddings(path: str | Path) -> tuple[list[str], np.ndarray]:
    """``(ids, embeddings)`` of a finalized ``embeddings.h5`` (whole file in memory)."""
    with _open(path) as f:
        return f["ids"].asstr()[:].tolist(), f["embeddings"][:]


def read_token_embeddings(path: str | Path, i: int) -> np.ndarray:
    """Per-token states ``[L, D]`` of record ``i`` of an ``embeddings.h5`` written with ``--include per_tok``."""
    with _open(path) as f:
        if "per_token" not in f:
            raise KeyError(f"{path} has no per-token states (embed with --include mean per_tok)")
        a, b = f["per_token/offsets"][i:i + 2]
        return f["per_token/embeddings"][a:b]


def iter_embeddings(path: str | Path, block: int = 65536) -> Iterable[tuple[list[str], np.ndarray]]:
    """Stream ``(ids, embeddings)`` blocks of a file larger than memory."""
    with _open(path) as f:
        n = f["ids"].shape[0]
        for s in range(0, n, block):
            yield f["ids"].asstr()[s:s + block].tolist(), f["embeddings"][s:s + block]
