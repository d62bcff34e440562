"""A rank's shard: the background :class:`ShardWriter` (input order, commit protocol) and the resume scan."""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._testhooks import test_hook
from ..errors import UserError
from .durable import DiskFullError, _abandon, _fsync_fd, _is_disk_full, _open, fsync_dir
from .schema import STR, Column, Part, ShardSchema

_WRITE_CACHE = 1 << 20


def shard_path(shard_dir: Path, rank: int) -> Path:
    """A fresh shard name for this rank and process attempt (never one another process wrote)."""
    return Path(shard_dir) / f"shard-r{rank:05d}-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}.h5"


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

    def write(self, rows, parts: list[Part], keep=None) -> None:
        """Queue one window: ``rows`` = the window's record indices, strictly ascending (input order);
        ``parts`` cover every slot ``0..len(rows)-1`` exactly once, in any order. ``keep``: a boolean
        mask over ``rows``, the records to commit (a resumed window recomputed whole, so that its
        batches are those of an uninterrupted run, commits only what is not on disk yet)."""
        self._raise_if_failed()
        rows = _np(rows, np.int64).reshape(-1)
        if len(rows):
            if (np.diff(rows) <= 0).any() or rows[0] <= self._last_row:
                raise ValueError(f"shard windows must come in ascending record order: window {rows[0]}..{rows[-1]} "
                                 f"after record {self._last_row} (or not strictly ascending)")
            self._last_row = int(rows[-1])
        if keep is not None:
            keep = np.asarray(keep, dtype=bool).reshape(-1)
            if keep.shape != rows.shape:
                raise ValueError(f"keep mask of {keep.shape} for {len(rows)} rows")
        self._q.put((rows, list(parts), keep))

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
                e = DiskFullError(f"no space left on {self.dir}; free space and rerun the same command")
            self._error = e
            _abandon(self._f, self._fd)
            while True:  # drain so that the producer never blocks on a full queue
                if self._q.get() is None:
                    break

    def _assemble(self, rows: np.ndarray, parts: list[Part], keep: np.ndarray | None = None) -> _Window:
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
        if keep is not None and not keep.all():  # records already committed by an earlier attempt
            new_slot = np.cumsum(keep) - 1
            told = {int(new_slot[j]): why for j, why in told.items() if keep[j]}
            rows, cols = rows[keep], {k: v[keep] for k, v in cols.items()}
            if lengths is not None:
                ragged = {k: v[np.repeat(keep, lengths)] for k, v in ragged.items()}
                lengths = lengths[keep]
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
