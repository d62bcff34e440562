"""Columns written chunk by chunk to files and read back in slices: how an index is built in bounded memory.

A scanner appends each chunk's columns to a :class:`Spool` (a directory of raw little-endian
arrays, ``<name>.raw``, and the ids as ``ids.bin`` with ``ids_off.raw``, int64 end offsets after
a leading 0) instead of keeping them; a worker process returns the spool, a few numbers, to the
parent. The parent reads the spools back in slices of rows (:meth:`Spool.read`, plain file
reads: no mapping stays resident) and streams them into the index's ``.npy`` columns
(:class:`NpyWriter`: the header of ``np.save``, rewritten with the row count at the end, so the
file is the one ``np.save`` writes, byte for byte).
"""

from __future__ import annotations

import mmap
import os

import numpy as np

from .store import IdColumn

__all__ = ["Spool", "NpyWriter", "PROBE", "id_hashes"]

#: ``hash(PROBE)`` in the parent equals the one in a worker when the worker was forked (same hash
#: secret): then the workers' id hashes are used, else the parent hashes the ids again.
PROBE = b"virnucdist id hash probe"


def id_hashes(blob: bytes, lens: np.ndarray) -> np.ndarray:
    """int64 ``hash()`` of each id's UTF-8 bytes (``blob``: the ids back to back; ``lens``: their lengths);
    equal ids have equal hashes within one process (and in processes forked from it)."""
    ends = np.cumsum(lens).tolist()
    starts = [0] + ends[:-1]
    return np.fromiter(map(hash, map(blob.__getitem__, map(slice, starts, ends))), dtype=np.int64, count=len(ends))


class Spool:
    """Append-only columns of one scan (a file, or a byte range of one) in directory ``path``.

    Picklable once :meth:`close` d: its path, the dtypes and row counts of its columns."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(path, exist_ok=True)
        self.dtypes: dict[str, tuple[str, tuple]] = {}
        self.rows: dict[str, int] = {}
        self.probe = hash(PROBE)
        self._fh: dict = {}
        self._id_end = 0

    def _file(self, name: str):
        fh = self._fh.get(name)
        if fh is None:
            fh = self._fh[name] = open(os.path.join(self.path, name + ".raw"), "wb")
        return fh

    def add(self, name: str, arr: np.ndarray) -> None:
        """Append rows to column ``name`` (its dtype and trailing shape fixed by the first call)."""
        arr = np.ascontiguousarray(arr)
        kind = (arr.dtype.newbyteorder("<").str, arr.shape[1:])
        if self.dtypes.setdefault(name, kind) != kind:
            raise ValueError(f"spool column {name}: {kind} after {self.dtypes[name]}")
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        if arr.size:
            self._file(name).write(arr.data)
        else:
            self._file(name)
        self.rows[name] = self.rows.get(name, 0) + len(arr)

    def add_ids(self, blob: bytes, lens: np.ndarray) -> None:
        """Append ids (``blob``: back to back; ``lens``: their byte lengths) and their hashes."""
        if "ids_off" not in self.rows:
            self.add("ids_off", np.zeros(1, np.int64))
        self._file("ids").write(blob)
        ends = np.cumsum(np.asarray(lens, dtype=np.int64)) + self._id_end
        if len(ends):
            self._id_end = int(ends[-1])
        self.add("ids_off", ends)
        self.add("idhash", id_hashes(blob, lens))

    def close(self) -> "Spool":
        if "ids_off" not in self.rows:         # no records: still an (empty) id column
            self.add("ids_off", np.zeros(1, np.int64))
            self._file("ids")
        for fh in self._fh.values():
            fh.close()
        self._fh = {}
        return self

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_fh"} | {"_fh": {}}

    def __len__(self) -> int:
        return self.rows.get("ids_off", 1) - 1

    def _raw(self, name: str) -> str:
        return os.path.join(self.path, name + ".raw")

    def read(self, name: str, lo: int, hi: int) -> np.ndarray:
        """Rows ``[lo, hi)`` of column ``name`` (a plain read into a new array)."""
        dtype, tail = self.dtypes[name]
        dt = np.dtype((dtype, tail)) if tail else np.dtype(dtype)
        hi = min(hi, self.rows[name])
        if hi <= lo:
            return np.empty((0, *tail), dtype=dtype)
        with open(self._raw(name), "rb") as fh:
            fh.seek(lo * dt.itemsize)
            out = np.fromfile(fh, dtype=dt, count=hi - lo)
        return out.reshape(-1, *tail) if tail else out

    def read_ids(self, lo: int, hi: int) -> tuple[bytes, np.ndarray]:
        """``(blob, offsets relative to the blob, hi - lo + 1 of them)`` of ids ``[lo, hi)``."""
        off = self.read("ids_off", lo, hi + 1)
        with open(self._raw("ids"), "rb") as fh:
            fh.seek(int(off[0]))
            blob = fh.read(int(off[-1] - off[0]))
        return blob, off - off[0]

    def array(self, name: str) -> np.ndarray:
        """Column ``name`` memory-mapped (read-only), for the few whole-column uses (pairs, BAM)."""
        dtype, tail = self.dtypes[name]
        n = self.rows.get(name, 0)
        if n == 0:
            return np.empty((0, *tail), dtype=dtype)
        return np.memmap(self._raw(name), dtype=dtype, mode="r", shape=(n, *tail))

    def ids(self) -> IdColumn:
        """The ids as an :class:`IdColumn` over the mapped blob (decoded on demand)."""
        path = self._raw("ids")
        blob = b""
        if os.path.getsize(path):
            with open(path, "rb") as fh:
                blob = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        return IdColumn(blob, self.array("ids_off"))

    def remove(self, *names: str) -> None:
        for name in names:
            try:
                os.remove(self._raw(name))
            except FileNotFoundError:
                pass


class NpyWriter:
    """An ``.npy`` file written in slices: the bytes of ``np.save`` of the whole array."""

    def __init__(self, path: str, dtype, tail: tuple = ()):
        self.dtype, self.tail, self.rows = np.dtype(dtype), tuple(tail), 0
        self.fh = open(path, "wb")
        self._header()
        self.start = self.fh.tell()

    def _header(self) -> None:
        np.lib.format.write_array_header_1_0(self.fh, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                        "fortran_order": False, "shape": (self.rows, *self.tail)})

    def write(self, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=self.dtype)
        if arr.shape[1:] != self.tail:
            raise ValueError(f"rows of shape {arr.shape[1:]} for a column of {self.tail}")
        if arr.size:
            self.fh.write(arr.data)
        self.rows += len(arr)

    def close(self) -> None:
        self.fh.seek(0)
        self._header()                      # the same length: np.save leaves room for the row count
        if self.fh.tell() != self.start:
            raise RuntimeError("npy header changed length")
        self.fh.close()
