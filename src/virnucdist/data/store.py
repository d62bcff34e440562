"""The index on disk: a directory of ``.npy`` columns, memory-mapped on load, and an id blob.

::

    INDEX/meta.json          version, files, fingerprint, per-file digests/sizes/formats, samples
    INDEX/<column>.npy       file_idx, offset, nbytes, length, header_line, mate, sample,
                             content_hash [N, 2], representatives, letter_counts [files, 256]
    INDEX/ids.bin            the ids, UTF-8, back to back
    INDEX/ids_off.npy        int64 [N + 1]: id ``i`` is ``ids.bin[off[i]:off[i + 1]]``
    INDEX/gzip-<f>.npz       seek points of gzip input ``f`` (see :mod:`virnucdist.data.gzseek`)

Loading maps every file (``np.load(mmap_mode="r")``, ``mmap`` for the blob): nothing is read
until used, so a process's resident memory for the index grows with the rows it touches
(a rank's contiguous run), not with the file. Pages are shared by all processes of a node
through the page cache. :class:`IdColumn` gives the ids as a sequence decoded on demand.

Saving writes into ``INDEX.tmp<pid>`` and renames it into place; an older index (a
directory, or a single ``.npz`` file of format 2) is replaced. A ``.npz`` of an older
format is never read as this one: :func:`read_meta` names its version, and
``SequenceIndex.load_or_build`` rebuilds it.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
from collections.abc import Sequence

import numpy as np

from .._testhooks import test_hook

__all__ = ["FORMAT_VERSION", "IdColumn", "save_dir", "load_dir", "read_meta", "COLUMNS", "write_meta", "move_dir",
           "encode_ids", "decode_ids"]

#: 3: a directory of memory-mapped columns (2: one ``index.npz``, read whole).
FORMAT_VERSION = 3
COLUMNS = ("file_idx", "offset", "nbytes", "length", "header_line", "mate", "sample")


class IdColumn(Sequence):
    """The ids of an index as a read-only sequence of str, decoded from a UTF-8 blob on demand."""

    def __init__(self, blob, off: np.ndarray):
        self._blob, self._off = blob, off

    def __len__(self) -> int:
        return len(self._off) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            lo, hi, step = i.indices(len(self))
            if step == 1:
                return self._range(lo, hi) if hi > lo else []
            return [self[k] for k in range(lo, hi, step)]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"id {i} out of range for {n} records")
        return bytes(self._blob[int(self._off[i]):int(self._off[i + 1])]).decode("utf-8")

    def __iter__(self):
        n, step = len(self), 1 << 16
        for lo in range(0, n, step):
            yield from self._range(lo, min(n, lo + step))

    def _range(self, lo: int, hi: int) -> list[str]:
        """The ids ``lo:hi`` (``lo < hi``), one read of the blob."""
        off = np.asarray(self._off[lo:hi + 1])
        return decode_ids(bytes(self._blob[int(off[0]):int(off[-1])]), off - off[0])

    def __eq__(self, other) -> bool:
        if isinstance(other, (list, tuple, IdColumn)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __repr__(self) -> str:
        return f"IdColumn({len(self)} ids)"

    def __reduce__(self):
        return (IdColumn, (bytes(self._blob), np.asarray(self._off)))

    @classmethod
    def from_chunks(cls, chunks) -> "IdColumn":
        """``chunks``: ``(blob, lengths)`` pairs (ids back to back, their byte lengths)."""
        chunks = list(chunks)
        lens = np.concatenate([np.asarray(c[1], dtype=np.int64) for c in chunks]) if chunks else np.zeros(0, np.int64)
        off = np.zeros(len(lens) + 1, dtype=np.int64)
        np.cumsum(lens, out=off[1:])
        return cls(b"".join(c[0] for c in chunks), off)

    @classmethod
    def concat(cls, cols) -> "IdColumn":
        return cls.from_chunks((bytes(c._blob), np.diff(np.asarray(c._off))) for c in cols)


def decode_ids(blob: bytes, off) -> list[str]:
    """The ids in ``blob`` (UTF-8, back to back) at offsets ``off`` (``len(ids) + 1`` of them, ``off[0] == 0``)."""
    rel = np.asarray(off).tolist()
    if blob.isascii():  # byte offsets are character offsets: one decode, then slices
        text = blob.decode("ascii")
        return [text[a:b] for a, b in zip(rel[:-1], rel[1:])]
    return [blob[a:b].decode("utf-8") for a, b in zip(rel[:-1], rel[1:])]


def encode_ids(ids) -> tuple[bytes, np.ndarray]:
    """``(blob, offsets)`` of a list of ids."""
    enc = [s.encode("utf-8") for s in ids]
    off = np.zeros(len(enc) + 1, dtype=np.int64)
    if enc:
        np.cumsum(np.fromiter((len(b) for b in enc), dtype=np.int64, count=len(enc)), out=off[1:])
    return b"".join(enc), off


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def save_dir(path: str, meta: dict, columns: dict[str, np.ndarray], ids, extra: dict[str, bytes] | None = None) -> None:
    """Write the index directory ``path`` atomically (a temporary directory renamed into place)."""
    path = os.path.abspath(os.fspath(path))
    tmp = f"{path}.tmp{os.getpid()}"
    _remove(tmp)
    os.makedirs(tmp)
    for name, arr in columns.items():
        np.save(os.path.join(tmp, f"{name}.npy"), np.ascontiguousarray(arr))
    with open(os.path.join(tmp, "ids.bin"), "wb") as fh:
        if isinstance(ids, IdColumn):
            fh.write(ids._blob)
            off = np.asarray(ids._off)
        else:                             # in slices: never a second copy of all the ids
            off = np.zeros(len(ids) + 1, dtype=np.int64)
            step = 1 << 18
            for lo in range(0, len(ids), step):
                blob, o = encode_ids(ids[lo:lo + step])
                fh.write(blob)
                off[lo + 1:lo + 1 + len(o) - 1] = o[1:] + off[lo]
    np.save(os.path.join(tmp, "ids_off.npy"), off)
    write_extra(tmp, extra)
    write_meta(tmp, meta, len(off) - 1)       # last: a directory with meta.json is whole
    install_dir(tmp, path)


def write_extra(path: str, extra: dict[str, bytes] | None) -> None:
    for name, data in (extra or {}).items():
        with open(os.path.join(path, name), "wb") as fh:
            fh.write(data)


def write_meta(path: str, meta: dict, records: int) -> None:
    """``meta.json`` of the index directory ``path`` (with the format version and the row count)."""
    with open(os.path.join(path, "meta.json"), "w") as fh:
        json.dump({**meta, "version": FORMAT_VERSION, "records": int(records)}, fh)


def move_dir(src: str, path: str) -> None:
    """Put the whole index directory ``src`` at ``path`` (renamed; copied first if on another file system)."""
    path = os.path.abspath(os.fspath(path))
    tmp = f"{path}.tmp{os.getpid()}"
    _remove(tmp)
    try:
        os.rename(src, tmp)
    except OSError:                       # another file system
        shutil.copytree(src, tmp)
    install_dir(tmp, path)


def install_dir(tmp: str, path: str) -> None:
    """Rename the finished directory ``tmp`` to ``path``, replacing what is there."""
    test_hook("index")
    if os.path.lexists(path):
        old = f"{path}.old{os.getpid()}"
        _remove(old)
        os.replace(path, old)
        os.replace(tmp, path)
        _remove(old)
    else:
        os.replace(tmp, path)


def read_meta(path: str) -> dict:
    """``meta.json`` of an index directory; ValueError for an older format (e.g. a format-2 ``.npz``)."""
    path = os.fspath(path)
    if os.path.isfile(path):                   # format 2: one .npz; named, never read as this one
        try:
            with np.load(path, allow_pickle=False) as z:
                version = json.loads(z["meta"].tobytes().decode("utf-8")).get("version")
        except Exception:                      # noqa: BLE001 (any unreadable file: not an index of ours)
            version = "unknown"
        raise ValueError(f"{path}: index format version {version} is not {FORMAT_VERSION}; delete it to rebuild")
    with open(os.path.join(path, "meta.json")) as fh:
        meta = json.load(fh)
    if meta.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: index format version {meta.get('version')} is not {FORMAT_VERSION}; "
                         "delete it to rebuild")
    return meta


def load_dir(path: str) -> tuple[dict, dict[str, np.ndarray], IdColumn]:
    """``(meta, columns, ids)`` of an index directory, every column memory-mapped."""
    path = os.fspath(path)
    meta = read_meta(path)
    cols = {}
    for name in os.listdir(path):
        if name.endswith(".npy") and name != "ids_off.npy":
            cols[name[:-4]] = np.load(os.path.join(path, name), mmap_mode="r", allow_pickle=False)
    off = np.load(os.path.join(path, "ids_off.npy"), mmap_mode="r", allow_pickle=False)
    blob_path = os.path.join(path, "ids.bin")
    if os.path.getsize(blob_path):
        with open(blob_path, "rb") as fh:
            blob = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    else:
        blob = b""
    if len(off) - 1 != meta["records"] or int(off[-1]) != len(blob):
        raise ValueError(f"{path}: index is incomplete ({len(off) - 1} ids for {meta['records']} records); "
                         "delete it to rebuild")
    return meta, cols, IdColumn(blob, off)
