"""A run's committed results read back in input order (:class:`Results`, :class:`Window`), duplicates stashed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import h5py
import numpy as np

from .durable import _open
from .schema import ShardSchema
from .shards import _merge_bad, _ranges, _scan

_READ_CACHE = 0  # chunk cache of shard readers: none, so that sequential slices go straight to the buffer


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
                pool = np.concatenate([got.ragged[c.name], stash.ragged(c.name, old_u)]) if len(old_u) \
                    else got.ragged[c.name]
                out.ragged[c.name] = pool[sel]
        return out


class _Stash:
    """Values of sources used again in later windows: record columns in a slot pool, ragged rows in a
    row pool (each slot's start and length), both vectorised. Rows of dropped sources are reclaimed
    when they outnumber the live ones (the live rows copied down: amortised, each row once per drop)."""

    def __init__(self, n_records: int, cols, rag):
        self.slot = np.full(n_records, -1, dtype=np.int64)
        self.cols, self.rag = cols, rag
        self.data = {c.name: np.empty((0, *c.shape), dtype=c.dtype) for c in cols}
        self.free = np.zeros(0, dtype=np.int64)
        self.cap = 0
        self.rows = {c.name: np.empty((0, *c.shape), dtype=c.dtype) for c in rag}  # the ragged row pool
        self.used = self.dead = 0  # pool rows written, of which dropped
        self.start = np.zeros(0, dtype=np.int64)  # per slot: its ragged rows in the pool
        self.length = np.zeros(0, dtype=np.int64)
        self.live = np.zeros(0, dtype=bool)

    def add(self, recs: np.ndarray, got: Window, mask: np.ndarray) -> None:
        need = len(recs)
        if len(self.free) < need:
            cap = self.cap
            grow = max(need - len(self.free), cap)
            for c in self.cols:
                self.data[c.name] = np.concatenate([self.data[c.name],
                                                    np.empty((grow, *c.shape), dtype=c.dtype)])
            self.start = np.concatenate([self.start, np.zeros(grow, dtype=np.int64)])
            self.length = np.concatenate([self.length, np.zeros(grow, dtype=np.int64)])
            self.live = np.concatenate([self.live, np.zeros(grow, dtype=bool)])
            self.free = np.concatenate([self.free, np.arange(cap, cap + grow)])
            self.cap = cap + grow
        slots, self.free = self.free[-need:], self.free[:-need]
        self.slot[recs] = slots
        self.live[slots] = True
        for c in self.cols:
            self.data[c.name][slots] = got.columns[c.name][mask]
        if self.rag:
            first = np.zeros(len(got.lengths) + 1, dtype=np.int64)
            np.cumsum(got.lengths, out=first[1:])
            keep = np.flatnonzero(mask)  # duplicates only
            lens = np.asarray(got.lengths, dtype=np.int64)[keep]
            sel = _ranges(first[keep], lens)
            self._reserve(len(sel))
            at = np.zeros(len(lens), dtype=np.int64)
            np.cumsum(lens[:-1], out=at[1:])
            self.start[slots], self.length[slots] = self.used + at, lens
            for c in self.rag:
                self.rows[c.name][self.used:self.used + len(sel)] = got.ragged[c.name][sel]
            self.used += len(sel)

    def _reserve(self, k: int) -> None:
        """Room for ``k`` more ragged rows at the end of the pool."""
        have = len(next(iter(self.rows.values())))
        if self.used + k <= have:
            return
        size = max(2 * have, self.used + k)
        for c in self.rag:
            grown = np.empty((size, *c.shape), dtype=c.dtype)
            grown[:self.used] = self.rows[c.name][:self.used]
            self.rows[c.name] = grown

    def _compact(self) -> None:
        """The live slots' rows copied to the front of the pool, in pool order."""
        live = np.flatnonzero(self.live)
        live = live[np.argsort(self.start[live], kind="stable")]
        lens = self.length[live]
        sel = _ranges(self.start[live], lens)
        for c in self.rag:
            self.rows[c.name][:len(sel)] = self.rows[c.name][sel]
        at = np.zeros(len(lens), dtype=np.int64)
        np.cumsum(lens[:-1], out=at[1:])
        self.start[live] = at
        self.used, self.dead = len(sel), 0

    def drop(self, recs: np.ndarray) -> None:
        if len(recs):
            slots = self.slot[recs]
            self.free = np.concatenate([self.free, slots])
            self.slot[recs] = -1
            self.live[slots] = False
            if self.rag:
                self.dead += int(self.length[slots].sum())
                if self.dead > self.used - self.dead:
                    self._compact()

    def values(self, name: str, recs: np.ndarray) -> np.ndarray:
        return self.data[name][self.slot[recs]]

    def ragged(self, name: str, recs: np.ndarray) -> np.ndarray:
        """The ragged rows of ``recs``, one after the other."""
        s = self.slot[recs]
        return self.rows[name][_ranges(self.start[s], self.length[s])]
