"""Per-rank HDF5 shards in input order, the resume scan, and the ordered read-back that finalize is made of.

Every task (embed, predict, a user's own) persists through one generic :class:`ShardWriter`.
A task describes its per-record output as a :class:`ShardSchema`: record columns (one value per
record: a pooled vector, two scores) and ragged columns (a variable number of rows per record:
per-token states, frames). A rank hands the writer one *window* at a time: the window's record
indices in ascending (input) order, and its results in :class:`Part`\\ s in whatever order the
batches were packed. The writer's thread scatters them back into input order, so each shard is a
run of ascending records, and the final merge (:class:`Results`) is a concatenation of contiguous
runs read with large sequential slices.

Shard file (one per rank and process attempt, :func:`shard_path`)::

    rows [n] i8              the records, strictly ascending
    <column> [n, *shape]     one per record column
    lengths [n] i8           ragged rows per record (when the schema has ragged columns)
    <ragged> [t, *shape]     one per ragged column, records' rows concatenated in record order
    bad_rows [b] i8, bad_reasons [b] str   records skipped (non-finite values), with why
    attrs: kind, schema (json), fingerprint (of the input), committed, committed_ragged, committed_bad

Commit protocol (one per flush): data written, ``flush``, ``fsync``; then the ``committed*``
attributes raised, ``flush``, ``fsync``. A reader trusts nothing past ``committed``, so a process
killed anywhere (or a node that loses power) leaves a shard whose committed prefix is on disk.
A shard that cannot be opened is set aside as ``*.corrupt`` and its records are redone.

Files are opened without HDF5 file locking (``locking=False``): one writer per file is guaranteed
by design, and HDF5's locks fail on many NFS and Lustre mounts. A full disk is one
:class:`DiskFullError` line and a clean close, never h5py's ``__dealloc__`` tracebacks.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import h5py
import numpy as np

from ._testhooks import test_hook
from .errors import UserError

__all__ = [
    "Column", "ShardSchema", "Part", "ShardWriter", "DiskFullError", "ShardScan", "scan_shards", "Results", "Window",
    "finalize_embeddings", "write_embeddings_h5", "read_embeddings", "iter_embeddings", "read_token_embeddings",
    "shard_path", "fsync_dir", "replace_durably", "STR",
]

STR = h5py.string_dtype("utf-8")
_RESERVED = {"rows", "lengths", "bad_rows", "bad_reasons"}
_READ_CACHE = 0  # chunk cache of shard readers: none, so that sequential slices go straight to the buffer
_WRITE_CACHE = 1 << 20
_FSYNC = True  # benchmarks/finalize.py turns it off to measure what fsync costs; nothing else may


# ----------------------------------------------------------------------------------------------
# files and durability


def _open(path: str | Path, mode: str = "r", **kw) -> h5py.File:
    """Every HDF5 file of this module: no HDF5 file locking (one writer per file by design; NFS/Lustre)."""
    return h5py.File(path, mode, locking=False, **kw)


def _fsync_fd(fd: int) -> None:
    if _FSYNC:
        os.fsync(fd)


def fsync_file(path: str | Path) -> None:
    """fsync a file's data to disk (after writing it through another handle)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        _fsync_fd(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """fsync a directory, so that names created or renamed in it survive a crash.

    Filesystems that cannot fsync a directory (some network mounts answer EINVAL) are skipped.
    """
    if not _FSYNC:
        return
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES):
            raise
    finally:
        os.close(fd)


def replace_durably(tmp: str | Path, final: str | Path) -> None:
    """Atomically rename a complete ``tmp`` to ``final``: fsync its data, rename, fsync the directory."""
    fsync_file(tmp)
    os.replace(tmp, final)
    fsync_dir(Path(final).parent)


def shard_path(shard_dir: Path, rank: int) -> Path:
    """A fresh shard name for this rank and process attempt (never one another process wrote)."""
    return Path(shard_dir) / f"shard-r{rank:05d}-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}.h5"


class DiskFullError(UserError):
    """The filesystem of the output directory is full; what was committed is safe."""


def _is_disk_full(e: BaseException) -> bool:
    return ((isinstance(e, OSError) and e.errno == errno.ENOSPC)
            or "errno = 28" in str(e) or "No space left on device" in str(e))


def _abandon(f: h5py.File, fd: int | None) -> None:
    """Close ``f`` after a failed write without h5py's ``__dealloc__`` tracebacks or a crash at exit.

    HDF5 cannot close a file whose dirty cache it cannot write (disk full): the close fails, the
    id stays open, and h5py later prints ``Exception ignored in __dealloc__`` and may segfault at
    interpreter exit. Everything committed is already on disk (flushed and fsync'd), so the
    unflushed rest is worthless: point the file descriptor at ``/dev/null`` and close normally.
    """
    if fd is not None:
        try:
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, fd)
            os.close(null)
        except OSError:
            pass
    try:
        f.close()
    except Exception:
        pass


# ----------------------------------------------------------------------------------------------
# schema


@dataclass(frozen=True, eq=False)
class Column:
    """One output column: ``dtype`` a numpy dtype string ("f4", "i4", "i8", "u1"), ``shape`` per row.

    Columns compare by numpy dtype ("f4" == "<f4" == "float32").
    """

    name: str
    dtype: str
    shape: tuple[int, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        np.dtype(self.dtype)  # a bad dtype string fails here

    def _key(self) -> tuple:
        return self.name, np.dtype(self.dtype).str, self.shape

    def __eq__(self, other) -> bool:
        return isinstance(other, Column) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @property
    def row_bytes(self) -> int:
        return int(np.dtype(self.dtype).itemsize * int(np.prod(self.shape, dtype=np.int64)))


@dataclass(frozen=True)
class ShardSchema:
    """What a task stores per record.

    ``columns``: exactly one value per record. ``ragged``: a variable number of rows per record.
    ``attrs``: json-able, stored on every shard (the model, its options): shards whose schema
    differs in anything (attrs included) belong to another run. ``finite``: names of float columns
    whose non-finite values make the record a counted skip (``None``: all float columns).
    """

    kind: str
    columns: tuple[Column, ...]
    ragged: tuple[Column, ...] = ()
    attrs: dict = field(default_factory=dict)
    finite: tuple[str, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "columns", tuple(self.columns))
        object.__setattr__(self, "ragged", tuple(self.ragged))
        names = [c.name for c in self.columns + self.ragged]
        if len(set(names)) != len(names) or _RESERVED & set(names):
            raise ValueError(f"column names must be unique and not one of {sorted(_RESERVED)}: {names}")
        if self.finite is not None:
            object.__setattr__(self, "finite", tuple(self.finite))
            unknown = set(self.finite) - set(names)
            if unknown:
                raise ValueError(f"finite names unknown columns {sorted(unknown)}")

    @property
    def finite_columns(self) -> tuple[str, ...]:
        if self.finite is not None:
            return self.finite
        return tuple(c.name for c in self.columns + self.ragged if np.dtype(c.dtype).kind == "f")

    def column(self, name: str) -> Column:
        for c in self.columns + self.ragged:
            if c.name == name:
                return c
        raise KeyError(f"no column {name!r} in the {self.kind} shards (have {[c.name for c in self.columns]}, "
                       f"ragged {[c.name for c in self.ragged]})")

    def to_json(self) -> str:
        def cols(cs):
            return [[c.name, np.dtype(c.dtype).str, list(c.shape)] for c in cs]

        return json.dumps({"kind": self.kind, "columns": cols(self.columns), "ragged": cols(self.ragged),
                           "attrs": self.attrs, "finite": None if self.finite is None else list(self.finite)},
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ShardSchema":
        d = json.loads(text)

        def cols(cs):
            return tuple(Column(n, t, tuple(s)) for n, t, s in cs)

        return cls(d["kind"], cols(d["columns"]), cols(d["ragged"]), d["attrs"],
                   None if d["finite"] is None else tuple(d["finite"]))


# ----------------------------------------------------------------------------------------------
# the writer


@dataclass
class Part:
    """Results for some slots of a window (one packed batch, typically).

    ``slots`` [b]: positions within the window's rows. ``values``: column name -> [b, *shape].
    ``lengths`` [b]: ragged rows per slot; ``ragged``: name -> [sum(lengths), *shape] in this part's
    slot order. ``event``: a ``torch.cuda.Event`` that the writer thread synchronizes before
    reading (the arrays may still be being filled by a non-blocking device->host copy).
    ``skipped``: slot -> reason for records that have no result (e.g. out of memory even alone):
    they are set aside as bad rows with that reason (their values are ignored).
    """

    slots: object
    values: dict
    lengths: object | None = None
    ragged: dict | None = None
    event: object | None = None
    skipped: dict | None = None


def _np(x, dtype=None) -> np.ndarray:
    if not isinstance(x, np.ndarray) and hasattr(x, "numpy"):  # a (CPU) torch tensor; no torch import here
        x = x.numpy()
    x = np.asarray(x)
    return x if dtype is None else x.astype(dtype, copy=False)


def _chunk_rows(col: Column, target: int = 1 << 20) -> int:
    return int(max(1, min(65536, target // max(1, col.row_bytes))))


@dataclass
class _Window:
    rows: np.ndarray
    cols: dict
    lengths: np.ndarray | None
    ragged: dict
    bad_rows: np.ndarray
    bad_reasons: list


class ShardWriter:
    """Appends windows of results to this rank's shard, in input order, from a background thread.

    :meth:`write` queues a window (bounded queue: the producer waits when the writer lags); the
    thread waits on each part's event, scatters the parts into input order, sets aside records
    with non-finite values as bad rows, and commits every ``flush_every`` records or
    ``flush_seconds`` (whole windows at a time). An error in the thread is raised to the producer
    on its next call: :class:`DiskFullError` as itself (a one-line user error), anything else as
    ``RuntimeError("shard writer failed: ...")``. The file is then closed cleanly; what was
    committed stays readable.
    """

    def __init__(self, shard_dir: str | Path, rank: int, schema: ShardSchema, *, flush_every: int = 4096,
                 flush_seconds: float = 10.0, fingerprint: str = "", max_queued: int = 16):
        self.dir = Path(shard_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = shard_path(self.dir, rank)
        self.schema, self.fingerprint = schema, fingerprint
        self.flush_every, self.flush_seconds = flush_every, flush_seconds
        self.committed = self.committed_ragged = self.committed_bad = 0
        self._last_row = -1
        self._fd: int | None = None
        self._f = f = _open(self.path, "w", rdcc_nbytes=_WRITE_CACHE)
        try:
            self._fd = f.id.get_vfd_handle()

            def ds(name, col: Column):
                return f.create_dataset(name, (0, *col.shape), maxshape=(None, *col.shape), dtype=col.dtype,
                                        chunks=(_chunk_rows(col), *col.shape))

            self._rows = ds("rows", Column("rows", "i8"))
            self._cols = {c.name: ds(c.name, c) for c in schema.columns}
            self._lengths = ds("lengths", Column("lengths", "i8")) if schema.ragged else None
            self._rag = {c.name: ds(c.name, c) for c in schema.ragged}
            self._bad_rows = ds("bad_rows", Column("bad_rows", "i8"))
            self._bad_reasons = f.create_dataset("bad_reasons", (0,), maxshape=(None,), dtype=STR, chunks=(1024,))
            f.attrs.update({"kind": schema.kind, "schema": schema.to_json(), "fingerprint": fingerprint,
                            "committed": 0, "committed_ragged": 0, "committed_bad": 0})
            f.flush()
            _fsync_fd(self._fd)
            fsync_dir(self.dir)
        except BaseException:
            _abandon(f, self._fd)
            raise
        self._pending: list[_Window] = []
        self._pending_n = 0
        self._last_flush = time.monotonic()
        self._q: queue.Queue = queue.Queue(maxsize=max_queued)
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"shard-writer-{rank}", daemon=True)
        self._thread.start()

    # -- producer side

    def write(self, rows, parts: list[Part]) -> None:
        """Queue one window: ``rows`` = the window's record indices, strictly ascending (input order);
        ``parts`` cover every slot ``0..len(rows)-1`` exactly once, in any order."""
        self._raise_if_failed()
        rows = _np(rows, np.int64).reshape(-1)
        if len(rows):
            if (np.diff(rows) <= 0).any() or rows[0] <= self._last_row:
                raise ValueError(f"shard windows must come in ascending record order: window {rows[0]}..{rows[-1]} "
                                 f"after record {self._last_row} (or not strictly ascending)")
            self._last_row = int(rows[-1])
        self._q.put((rows, list(parts)))

    def close(self) -> int:
        """Flush, fsync and close; returns the records committed (results, bad rows not included)."""
        if not self._closed:
            self._closed = True
            self._q.put(None)
            self._thread.join()
        self._raise_if_failed()
        return self.committed

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # keep the producer's error; still release the file
            try:
                self.close()
            except Exception:
                pass

    def _raise_if_failed(self) -> None:
        e = self._error
        if e is None:
            return
        if isinstance(e, UserError):
            raise e
        raise RuntimeError(f"shard writer failed: {e}") from e

    # -- writer thread

    def _run(self) -> None:
        try:
            while True:
                try:
                    item = self._q.get(timeout=min(1.0, self.flush_seconds))
                except queue.Empty:
                    if self._pending and time.monotonic() - self._last_flush > self.flush_seconds:
                        self._flush()
                    continue
                if item is None:
                    break
                w = self._assemble(*item)
                self._pending.append(w)
                self._pending_n += len(w.rows) + len(w.bad_rows)
                if self._pending_n >= self.flush_every or time.monotonic() - self._last_flush > self.flush_seconds:
                    self._flush()
            self._flush()
            self._f.close()
        except BaseException as e:  # surfaced to the producer on its next call
            if _is_disk_full(e):
                e = DiskFullError(f"no space left on {self.dir}; free space and rerun the same command: "
                                  f"{self.committed} records are safe")
            self._error = e
            _abandon(self._f, self._fd)
            while True:  # drain so that the producer never blocks on a full queue
                if self._q.get() is None:
                    break

    def _assemble(self, rows: np.ndarray, parts: list[Part]) -> _Window:
        """The window's results in input order (parts scattered by slot), non-finite records set aside."""
        schema, n = self.schema, len(rows)
        seen = np.zeros(n, dtype=np.int64)
        cols = {c.name: np.empty((n, *c.shape), dtype=c.dtype) for c in schema.columns}
        lengths = np.zeros(n, dtype=np.int64) if schema.ragged else None
        staged = []
        told: dict[int, str] = {}
        for p in parts:
            if p.event is not None:
                p.event.synchronize()
            s = _np(p.slots, np.int64).reshape(-1)
            for j, why in (p.skipped or {}).items():
                told[int(s[int(j)])] = why
            if len(s) and (s.min() < 0 or s.max() >= n):
                raise RuntimeError(f"window of records {rows[:1].tolist()}..{rows[-1:].tolist()}: slot out of "
                                   f"range 0..{n - 1}; not committing it")
            seen += np.bincount(s, minlength=n)
            for c in schema.columns:
                v = _np(p.values[c.name])
                if v.shape != (len(s), *c.shape):
                    raise RuntimeError(f"column {c.name}: got shape {v.shape} for {len(s)} slots of shape {c.shape}")
                cols[c.name][s] = v
            if schema.ragged:
                ln = _np(p.lengths, np.int64).reshape(-1)
                if len(ln) != len(s):
                    raise RuntimeError(f"ragged lengths: {len(ln)} for {len(s)} slots")
                lengths[s] = ln
                staged.append((s, ln, {c.name: _np(p.ragged[c.name]) for c in schema.ragged}))
        if n and not (seen == 1).all():
            raise RuntimeError(f"window of records {rows[0]}..{rows[-1]}: {n} slots, {int((seen == 0).sum())} missing, "
                               f"{int((seen > 1).sum())} covered more than once; not committing it")
        ragged = {}
        if schema.ragged:
            offsets = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            ragged = {c.name: np.empty((int(offsets[-1]), *c.shape), dtype=c.dtype) for c in schema.ragged}
            for s, ln, vals in staged:  # each part's rows to their records' places in input order
                dest = _ranges(offsets[s], ln)
                for c in schema.ragged:
                    v = vals[c.name]
                    if v.shape != (len(dest), *c.shape):
                        raise RuntimeError(f"ragged column {c.name}: got shape {v.shape} for {len(dest)} rows")
                    ragged[c.name][dest] = v
        return self._set_aside_bad(rows, cols, lengths, ragged, told)

    def _set_aside_bad(self, rows, cols, lengths, ragged, told: dict[int, str] | None = None) -> _Window:
        n = len(rows)
        bad_by = {}
        if told:
            b = np.zeros(n, dtype=bool)
            b[list(told)] = True
            bad_by[None] = b
        for name in self.schema.finite_columns:
            if name in cols:
                v = cols[name].reshape(n, int(np.prod(cols[name].shape[1:])))
                b = ~np.isfinite(v).all(axis=1)
            else:
                v = ragged[name].reshape(len(ragged[name]), int(np.prod(ragged[name].shape[1:])))
                bad_tok = ~np.isfinite(v).all(axis=1)
                b = np.zeros(n, dtype=bool)
                b[np.repeat(np.arange(n), lengths)[bad_tok]] = True
            if b.any():
                bad_by[name] = b
        if not bad_by:
            return _Window(rows, cols, lengths, ragged, rows[:0], [])
        bad = np.logical_or.reduce(list(bad_by.values()))
        good = ~bad
        reasons = [told[i] if told and i in told else
                   f"non-finite values in {', '.join(k for k, b in bad_by.items() if k is not None and b[i])}"
                   for i in np.flatnonzero(bad)]
        cols = {k: v[good] for k, v in cols.items()}
        if lengths is not None:
            ragged = {k: v[np.repeat(good, lengths)] for k, v in ragged.items()}
            lengths = lengths[good]
        return _Window(rows[good], cols, lengths, ragged, rows[bad], reasons)

    def _flush(self) -> None:
        """Commit the pending windows: data, flush, fsync; then the markers, flush, fsync."""
        if self._pending:
            pend = self._pending
            n0, t0, b0 = self.committed, self.committed_ragged, self.committed_bad
            n1 = n0 + sum(len(w.rows) for w in pend)
            t1 = t0 + sum(len(next(iter(w.ragged.values()))) if w.ragged else 0 for w in pend)
            b1 = b0 + sum(len(w.bad_rows) for w in pend)
            record_ds = [self._rows, *self._cols.values()] + ([self._lengths] if self._lengths is not None else [])
            for ds in record_ds:
                ds.resize(n1, axis=0)
            for ds in self._rag.values():
                ds.resize(t1, axis=0)
            a, t = n0, t0
            for w in pend:
                b = a + len(w.rows)
                if b > a:
                    self._rows[a:b] = w.rows
                    for k, ds in self._cols.items():
                        ds[a:b] = w.cols[k]
                    if self._lengths is not None:
                        self._lengths[a:b] = w.lengths
                        tn = t + int(w.lengths.sum())
                        if tn > t:
                            for k, ds in self._rag.items():
                                ds[t:tn] = w.ragged[k]
                        t = tn
                a = b
            if b1 > b0:
                self._bad_rows.resize(b1, axis=0)
                self._bad_reasons.resize(b1, axis=0)
                self._bad_rows[b0:b1] = np.concatenate([w.bad_rows for w in pend])
                self._bad_reasons[b0:b1] = [r for w in pend for r in w.bad_reasons]
            self._f.flush()  # the data first ...
            _fsync_fd(self._fd)
            test_hook("flush")
            self._f.attrs["committed_ragged"] = t1  # ... then the markers that make it visible
            self._f.attrs["committed_bad"] = b1
            self._f.attrs["committed"] = n1
            self._f.flush()
            _fsync_fd(self._fd)
            self.committed, self.committed_ragged, self.committed_bad = n1, t1, b1
            self._pending = []
        self._pending_n = 0
        self._last_flush = time.monotonic()


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + l)`` for each (s, l), vectorised."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    first = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=first[1:])
    return np.repeat(np.asarray(starts, dtype=np.int64) - first, lengths) + np.arange(total, dtype=np.int64)


# ----------------------------------------------------------------------------------------------
# the resume scan


@dataclass
class _ShardInfo:
    path: Path
    committed: int
    committed_ragged: int
    rows: np.ndarray
    schema: ShardSchema
    bad_rows: np.ndarray
    bad_reasons: list
    fingerprint: str = ""


@dataclass
class ShardScan:
    """What the shards of a run directory hold.

    ``done``: per record, True when a shard committed its result or set it aside as bad (either
    way it is not redone). ``bad_rows``/``bad_reasons``: records skipped for non-finite values
    (and not committed with a result by another shard). ``corrupt``: unreadable shards (set aside
    as ``*.corrupt`` unless the scan was told not to). ``schema``: the shards' common schema.
    """

    paths: list[Path]
    committed: list[int]
    done: np.ndarray
    bad_rows: np.ndarray
    bad_reasons: list[str]
    corrupt: list[Path]
    schema: ShardSchema | None

    @property
    def n_done(self) -> int:
        return int(self.done.sum())

    @property
    def bad(self) -> list[tuple[int, str]]:
        return list(zip(self.bad_rows.tolist(), self.bad_reasons))


def _read_shard(path: Path, n_records: int) -> _ShardInfo:
    with _open(path) as f:
        n = int(f.attrs["committed"])
        nb = int(f.attrs.get("committed_bad", 0))
        fp = f.attrs.get("fingerprint", "")
        return _ShardInfo(path, n, int(f.attrs.get("committed_ragged", 0)), f["rows"][:n],
                          ShardSchema.from_json(f.attrs["schema"]), f["bad_rows"][:nb],
                          f["bad_reasons"].asstr()[:nb].tolist(), fp.decode() if isinstance(fp, bytes) else str(fp))


def _scan(shard_dir: str | Path, n_records: int, fingerprint: str, quarantine: bool,
          schema: ShardSchema | None = None) -> tuple[list[_ShardInfo], list[Path]]:
    shard_dir = Path(shard_dir)
    infos, corrupt = [], []
    for path in sorted(shard_dir.glob("shard-*.h5")):
        try:
            info = _read_shard(path, n_records)
        except (OSError, KeyError, ValueError, json.JSONDecodeError, RuntimeError):
            corrupt.append(path)
            if quarantine:
                os.replace(path, path.with_name(path.name + ".corrupt"))
                fsync_dir(shard_dir)
            continue
        other = f"{path} holds records of another input; use a fresh output directory or --overwrite"
        for r in (info.rows, info.bad_rows):
            if len(r) and (r.min() < 0 or r.max() >= n_records):
                raise ValueError(other)
        if fingerprint and info.fingerprint != fingerprint:
            raise ValueError(other)
        if infos and info.fingerprint != infos[0].fingerprint:
            raise ValueError(f"{path} and {infos[0].path} hold records of different inputs; use a fresh output "
                             f"directory or --overwrite")
        want = schema or (infos[0].schema if infos else None)
        if want is not None and info.schema.to_json() != want.to_json():
            raise ValueError(f"{path} holds other results ({info.schema.kind}: {info.schema.to_json()}) than "
                             f"this run ({want.kind}: {want.to_json()}); use a fresh output directory or --overwrite")
        infos.append(info)
    return infos, corrupt


def scan_shards(shard_dir: str | Path, n_records: int, fingerprint: str = "", *, quarantine: bool = True,
                schema: ShardSchema | None = None) -> ShardScan:
    """Which records already have a committed result (or were set aside as bad), for resume.

    A shard of another input (its ``fingerprint`` differs from the given one when one is given, or
    from the other shards'; or its rows lie outside ``0..n_records-1``) or of other results (its
    schema differs from ``schema`` when given, or from the other shards') is a ``ValueError``:
    never silently reused. Unreadable shards are set aside as ``*.corrupt`` (``quarantine``).
    """
    infos, corrupt = _scan(shard_dir, n_records, fingerprint, quarantine, schema)
    done = np.zeros(n_records, dtype=bool)
    for i in infos:
        done[i.rows] = True
    bad_rows, bad_reasons = _merge_bad(infos, done)
    done[bad_rows] = True
    return ShardScan([i.path for i in infos], [i.committed for i in infos], done, bad_rows, bad_reasons,
                     corrupt, infos[0].schema if infos else None)


def _merge_bad(infos: list[_ShardInfo], has_result: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Bad rows of all shards, ascending, once each, leaving out records another shard committed."""
    rows = np.concatenate([i.bad_rows for i in infos]) if infos else np.zeros(0, dtype=np.int64)
    reasons = [r for i in infos for r in i.bad_reasons]
    rows, first = np.unique(rows, return_index=True)
    keep = ~has_result[rows]
    return rows[keep], [reasons[j] for j in first[keep]]


# ----------------------------------------------------------------------------------------------
# reading committed results in input order


@dataclass
class Window:
    """Results of consecutive output rows: ``columns`` name -> [n, *shape]; ``lengths`` [n] and
    ``ragged`` name -> [sum(lengths), *shape] (input order) when ragged columns were asked for."""

    rows: np.ndarray
    columns: dict
    lengths: np.ndarray | None
    ragged: dict


class Results:
    """The committed results of a run's shards, read back in input order.

    Each record's result is taken from one shard: when a record was committed by two shards
    (an earlier attempt redone), the first shard in name order that holds it (consistently, for
    every column). Raises ``ValueError`` like :func:`scan_shards` when the shards disagree.
    """

    def __init__(self, shard_dir: str | Path, n_records: int, fingerprint: str = "", *,
                 names: Sequence[str] | None = None):
        self.dir, self.n_records, self.names = Path(shard_dir), n_records, names
        infos, self.corrupt = _scan(shard_dir, n_records, fingerprint, quarantine=False)
        self.shards = infos
        self.schema: ShardSchema | None = infos[0].schema if infos else None
        self.owner = np.full(n_records, -1, dtype=np.int32)  # which shard holds each record's result
        self.pos = np.zeros(n_records, dtype=np.int64)  # ... and where in it
        for k in reversed(range(len(infos))):  # the first shard wins
            self.owner[infos[k].rows] = k
            self.pos[infos[k].rows] = np.arange(len(infos[k].rows))
        self.done = self.owner >= 0
        self.bad_rows, self.bad_reasons = _merge_bad(infos, self.done)
        self.done[self.bad_rows] = True
        self._rag_start: list[np.ndarray] = []  # per shard: [committed + 1] offsets of each record's ragged rows
        self.lengths = None
        if self.schema is not None and self.schema.ragged:
            self.lengths = np.zeros(n_records, dtype=np.int64)
            for k, info in enumerate(infos):
                with _open(info.path) as f:
                    ln = f["lengths"][:info.committed]
                start = np.zeros(len(ln) + 1, dtype=np.int64)
                np.cumsum(ln, out=start[1:])
                self._rag_start.append(start)
                mine = self.owner[info.rows] == k
                self.lengths[info.rows[mine]] = ln[mine]

    def _name(self, r: int) -> str:
        return f"{self.names[r]!r} (record {r})" if self.names is not None else f"record {r}"

    def check_available(self, sources: np.ndarray) -> None:
        """Raise unless every record of ``sources`` has a committed result."""
        miss = sources[self.owner[sources] < 0]
        if not len(miss):
            return
        bad = np.isin(miss, self.bad_rows)
        if bad.any():
            r = int(miss[bad][0])
            why = self.bad_reasons[int(np.searchsorted(self.bad_rows, r))]
            raise ValueError(f"{self._name(r)} was skipped ({why}); leave it out of the output rows")
        raise RuntimeError(f"{len(np.unique(miss))} records have no committed result (e.g. {self._name(int(miss[0]))}); "
                           f"rerun the same command to compute them")

    def windows(self, rows, source=None, *, columns: Iterable[str] | None = None, ragged: bool | Iterable[str] = False,
                window: int = 65536, max_bytes: int = 24 << 20) -> Iterator[Window]:
        """Yield the results of output ``rows`` in order, ``window`` records (at most ``max_bytes``) at a time.

        ``rows``: ascending output record indices; ``source[i]``: the record whose result row
        ``rows[i]`` takes (dedup: the first record with the same sequence, ``source[i] <= rows[i]``;
        default: ``rows`` itself). ``columns``: record columns to read (default all); ``ragged``:
        True for all ragged columns, or their names.

        Each distinct source is read from its shard once, in long sequential slices (runs of
        consecutive positions of one shard; gaps of up to 64 records are read through and
        dropped); no fancy-indexed HDF5 reads. Windows of at most ``max_bytes`` keep the buffers
        under glibc's mmap threshold, so they are reused instead of page-faulted in afresh
        (measured: 24 MB windows read 1.5-2x faster than 256 MB ones).

        Memory: besides about two copies of the current window, a stash holds each source that
        is used again in a later window, from the window that reads it until its last use (then
        it is freed): one row of every asked-for column (plus its ragged rows) per source whose
        first and last uses lie in different windows. Duplicates near their first occurrence
        cost little; at worst (every duplicate at the very end) it is every distinct source
        that has a duplicate.
        """
        if self.schema is None:
            schema_cols, schema_rag = (), ()
        else:
            schema_cols, schema_rag = self.schema.columns, self.schema.ragged
        cols = list(schema_cols) if columns is None else [self.schema.column(c) for c in columns]
        if ragged is True:
            rag = list(schema_rag)
        elif ragged is False or ragged is None:
            rag = []
        else:
            rag = [self.schema.column(c) for c in ragged]
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        src = rows if source is None else np.asarray(source, dtype=np.int64).reshape(-1)
        if len(src) != len(rows):
            raise ValueError(f"source has {len(src)} entries for {len(rows)} rows")
        if len(rows) and ((np.diff(rows) <= 0).any() or rows[0] < 0 or rows[-1] >= self.n_records):
            raise ValueError("rows must be strictly ascending record indices of the input")
        if len(src) and ((src > rows).any() or src.min() < 0):
            raise ValueError("source[i] must be a record index <= rows[i]")
        self.check_available(src)
        row_bytes = sum(c.row_bytes for c in cols) + 8
        if rag:
            avg = float(self.lengths[src].mean()) if len(src) else 0.0
            row_bytes += int(avg * sum(c.row_bytes for c in rag))
        window = int(max(1, min(window, max_bytes // max(1, row_bytes))))
        return self._windows(rows, src, cols, rag, window)

    def _windows(self, rows, src, cols, rag, window) -> Iterator[Window]:
        n = len(rows)
        uniq, first = np.unique(src, return_index=True)
        last = n - 1 - np.unique(src[::-1], return_index=True)[1]
        by_first = np.argsort(first, kind="stable")
        first_sorted = first[by_first]
        # sources read in one window and used again in a later one: stashed until their last use
        spans = (first // window) != (last // window)
        expire = uniq[spans][np.argsort(last[spans], kind="stable")]
        expire_at = np.sort(last[spans])
        stash = _Stash(self.n_records, cols, rag)
        files: dict[int, h5py.File] = {}
        try:
            for a in range(0, n, window):
                b = min(n, a + window)
                lo, hi = np.searchsorted(first_sorted, [a, b])
                new = np.sort(uniq[by_first[lo:hi]])  # the sources first used here: read now
                got = self._read(new, cols, rag, files)
                w_src = src[a:b]
                if len(new) == b - a and np.array_equal(new, w_src):  # no duplicates: as read
                    out = Window(rows[a:b], got.columns, got.lengths, got.ragged)
                else:
                    out = self._gather(rows[a:b], w_src, new, got, stash, cols, rag)
                keep = last[np.searchsorted(uniq, new)] >= b
                if keep.any():
                    stash.add(new[keep], got, keep)
                e0, e1 = np.searchsorted(expire_at, [a, b])
                stash.drop(expire[e0:e1])
                yield out
        finally:
            for f in files.values():
                f.close()

    def _read(self, recs: np.ndarray, cols, rag, files, gap: int = 64) -> Window:
        """Results of ``recs`` (ascending) by sequential slices of their shards."""
        m = len(recs)
        out = Window(recs, {c.name: np.empty((m, *c.shape), dtype=c.dtype) for c in cols}, None, {})
        if rag:
            out.lengths = self.lengths[recs]
            uoff = np.zeros(m + 1, dtype=np.int64)
            np.cumsum(out.lengths, out=uoff[1:])
            out.ragged = {c.name: np.empty((int(uoff[-1]), *c.shape), dtype=c.dtype) for c in rag}
        if not m:
            return out
        own, pos = self.owner[recs], self.pos[recs]
        brk = np.flatnonzero((own[1:] != own[:-1]) | (pos[1:] - pos[:-1] > gap) | (pos[1:] <= pos[:-1])) + 1
        bounds = np.concatenate([[0], brk, [m]])
        for i0, i1 in zip(bounds[:-1], bounds[1:]):
            k = int(own[i0])
            f = files.get(k)
            if f is None:
                f = files[k] = _open(self.shards[k].path, rdcc_nbytes=_READ_CACHE)
            p0, p1 = int(pos[i0]), int(pos[i1 - 1]) + 1
            exact = p1 - p0 == i1 - i0
            for c in cols:
                ds = f[c.name]
                if exact:
                    ds.read_direct(out.columns[c.name], np.s_[p0:p1], np.s_[i0:i1])
                else:
                    out.columns[c.name][i0:i1] = ds[p0:p1][pos[i0:i1] - p0]
            if rag:
                rs = self._rag_start[k]
                t0, t1 = int(rs[p0]), int(rs[p1])
                u0, u1 = int(uoff[i0]), int(uoff[i1])
                for c in rag:
                    ds = f[c.name]
                    if exact:
                        if t1 > t0:
                            ds.read_direct(out.ragged[c.name], np.s_[t0:t1], np.s_[u0:u1])
                    else:
                        sel = _ranges(rs[pos[i0:i1]] - t0, out.lengths[i0:i1])
                        out.ragged[c.name][u0:u1] = ds[t0:t1][sel]
        return out

    def _gather(self, rows, w_src, new, got: Window, stash: "_Stash", cols, rag) -> Window:
        """A window's results from the sources read for it (``new``, ``got``) and the stash."""
        k = np.searchsorted(new, w_src)
        is_new = k < len(new)
        is_new[is_new] = new[k[is_new]] == w_src[is_new]
        old = w_src[~is_new]
        columns = {}
        for c in cols:
            v = np.empty((len(rows), *c.shape), dtype=c.dtype)
            v[is_new] = got.columns[c.name][k[is_new]]
            if len(old):
                v[~is_new] = stash.values(c.name, old)
            columns[c.name] = v
        out = Window(rows, columns, None, {})
        if rag:
            out.lengths = self.lengths[w_src]
            # one pool: the rows read for this window, then the stashed sources this window uses
            old_u = np.unique(old)
            pool_len = np.concatenate([got.lengths, self.lengths[old_u]])
            pool_start = np.zeros(len(pool_len), dtype=np.int64)
            np.cumsum(pool_len[:-1], out=pool_start[1:])
            idx = np.where(is_new, k, len(new) + np.searchsorted(old_u, w_src))
            sel = _ranges(pool_start[idx], out.lengths)
            for c in rag:
                pool = np.concatenate([got.ragged[c.name], *stash.ragged(c.name, old_u)]) if len(old_u) \
                    else got.ragged[c.name]
                out.ragged[c.name] = pool[sel]
        return out


class _Stash:
    """Values of sources used again in later windows: record columns in a slot pool (vectorised),
    ragged rows per source."""

    def __init__(self, n_records: int, cols, rag):
        self.slot = np.full(n_records, -1, dtype=np.int64)
        self.cols, self.rag = cols, rag
        self.data = {c.name: np.empty((0, *c.shape), dtype=c.dtype) for c in cols}
        self.free = np.zeros(0, dtype=np.int64)
        self.cap = 0
        self.rag_data: dict[int, dict] = {}

    def add(self, recs: np.ndarray, got: Window, mask: np.ndarray) -> None:
        need = len(recs)
        if len(self.free) < need:
            cap = self.cap
            grow = max(need - len(self.free), cap)
            for c in self.cols:
                self.data[c.name] = np.concatenate([self.data[c.name],
                                                    np.empty((grow, *c.shape), dtype=c.dtype)])
            self.free = np.concatenate([self.free, np.arange(cap, cap + grow)])
            self.cap = cap + grow
        slots, self.free = self.free[-need:], self.free[:-need]
        self.slot[recs] = slots
        for c in self.cols:
            self.data[c.name][slots] = got.columns[c.name][mask]
        if self.rag:
            start = np.zeros(len(got.lengths) + 1, dtype=np.int64)
            np.cumsum(got.lengths, out=start[1:])
            for j in np.flatnonzero(mask):  # duplicates only
                self.rag_data[int(got.rows[j])] = {c.name: got.ragged[c.name][start[j]:start[j + 1]].copy()
                                                   for c in self.rag}

    def drop(self, recs: np.ndarray) -> None:
        if len(recs):
            self.free = np.concatenate([self.free, self.slot[recs]])
            self.slot[recs] = -1
            for r in recs.tolist():
                self.rag_data.pop(r, None)

    def values(self, name: str, recs: np.ndarray) -> np.ndarray:
        return self.data[name][self.slot[recs]]

    def ragged(self, name: str, recs: np.ndarray) -> list[np.ndarray]:
        return [self.rag_data[r][name] for r in recs.tolist()]


# ----------------------------------------------------------------------------------------------
# final files


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
            writeback = _Writeback(tmp) if _FSYNC else None
            out.create_dataset("ids", data=np.asarray(list(ids), dtype=object).reshape(-1), dtype=STR)
            if out["ids"].shape[0] != n:
                raise ValueError(f"{out['ids'].shape[0]} ids for {n} records")
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
    return write_embeddings_h5(out_path, [ids[r] for r in rows], wins, len(rows), {"embeddings": col}, ragged=rag,
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
