"""Per-rank HDF5 shards (appended from a background thread) and the final merge.

A shard holds ``rows`` (index positions), ``ids`` and ``embeddings`` side by side,
so an id can never drift from its vector. After every flush the shard's
``committed`` attribute is raised to the number of complete records; readers
trust nothing past it. Each process attempt writes a shard of its own
(``shard-r{rank}-{attempt}.h5``), so restarts and world-size changes never
write into a file another process left behind. A shard that cannot be opened
(killed mid-flush) is set aside as ``*.corrupt`` and its records are redone.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import h5py
import numpy as np
import torch

__all__ = ["ShardWriter", "scan_shards", "finalize_embeddings", "ShardScan", "read_embeddings", "iter_embeddings"]

STR = h5py.string_dtype("utf-8")


class ShardWriter:
    """Appends ``(rows, ids, embeddings)`` to this rank's shard from a background thread.

    :meth:`write` takes device tensors too: pass a CUDA event recorded after a
    non-blocking copy and the thread waits on it, so the compute loop never syncs.
    """

    def __init__(self, shard_dir: str | Path, rank: int, dim: int, ids: np.ndarray | list, *,
                 flush_every: int = 4096, flush_seconds: float = 10.0, attrs: dict | None = None):
        self.dir = Path(shard_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / f"shard-r{rank:05d}-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}.h5"
        self.dim, self.ids = dim, ids
        self.flush_every, self.flush_seconds = flush_every, flush_seconds
        self._f = h5py.File(self.path, "w")
        self._f.attrs["committed"] = 0
        self._f.attrs["dim"] = dim
        for k, v in (attrs or {}).items():
            self._f.attrs[k] = v
        chunk = max(1, min(1024, flush_every))
        self._rows = self._f.create_dataset("rows", (0,), maxshape=(None,), dtype="i8", chunks=(chunk * 4,))
        self._ids = self._f.create_dataset("ids", (0,), maxshape=(None,), dtype=STR, chunks=(chunk * 4,))
        self._emb = self._f.create_dataset("embeddings", (0, dim), maxshape=(None, dim), dtype="f4",
                                           chunks=(chunk, dim))
        self._f.flush()
        self.committed = 0
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_n = 0
        self._last_flush = time.monotonic()
        self._q: queue.Queue = queue.Queue(maxsize=64)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"shard-writer-{rank}", daemon=True)
        self._thread.start()

    # -- producer side
    def write(self, rows: np.ndarray | torch.Tensor, embeddings: np.ndarray | torch.Tensor, event=None) -> None:
        if self._error is not None:
            raise RuntimeError(f"shard writer failed: {self._error}") from self._error
        self._q.put((rows, embeddings, event))

    def close(self) -> int:
        """Flush everything, close the file; returns records committed."""
        self._q.put(None)
        self._thread.join()
        if self._error is not None:
            raise RuntimeError(f"shard writer failed: {self._error}") from self._error
        return self.committed

    # -- writer thread
    def _run(self) -> None:
        try:
            while True:
                try:
                    item = self._q.get(timeout=1.0)
                except queue.Empty:
                    if self._pending_n and time.monotonic() - self._last_flush > self.flush_seconds:
                        self._flush()
                    continue
                if item is None:
                    break
                rows, emb, event = item
                if event is not None:
                    event.synchronize()
                rows = rows.numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows)
                emb = emb.numpy() if isinstance(emb, torch.Tensor) else np.asarray(emb)
                self._pending.append((rows.astype(np.int64, copy=False), emb.astype(np.float32, copy=False)))
                self._pending_n += len(rows)
                if self._pending_n >= self.flush_every or time.monotonic() - self._last_flush > self.flush_seconds:
                    self._flush()
            self._flush()
            self._f.close()
        except BaseException as e:  # surfaced to the producer on its next call
            self._error = e
            while True:  # drain so the producer never blocks on a full queue
                if self._q.get() is None:
                    break

    def _flush(self) -> None:
        if not self._pending_n:
            return
        rows = np.concatenate([r for r, _ in self._pending])
        emb = np.concatenate([e for _, e in self._pending])
        if not np.isfinite(emb).all():
            bad = rows[~np.isfinite(emb).all(axis=1)]
            raise FloatingPointError(f"non-finite embeddings for rows {bad[:5].tolist()}")
        n0, n1 = self.committed, self.committed + len(rows)
        for ds in (self._rows, self._ids, self._emb):
            ds.resize(n1, axis=0)
        self._rows[n0:n1] = rows
        self._ids[n0:n1] = [self.ids[r] for r in rows]
        self._emb[n0:n1] = emb
        self._f.flush()  # data first, then the marker that makes it visible
        self._f.attrs["committed"] = n1
        self._f.flush()
        self.committed = n1
        self._pending, self._pending_n = [], 0
        self._last_flush = time.monotonic()


@dataclass
class ShardScan:
    """What the shards of a run directory hold."""

    paths: list[Path]
    committed: list[int]
    done: np.ndarray  # bool per index position
    corrupt: list[Path]
    dim: int | None

    @property
    def n_done(self) -> int:
        return int(self.done.sum())


def scan_shards(shard_dir: str | Path, n_records: int, ids: np.ndarray | list | None = None,
                quarantine: bool = True) -> ShardScan:
    """Which index positions already have a committed embedding.

    ``ids`` (the index's ids) are checked against the shard's stored ids: a
    shard from another input is an error, not silently reused.
    """
    shard_dir = Path(shard_dir)
    done = np.zeros(n_records, dtype=bool)
    paths, committed, corrupt, dim = [], [], [], None
    for path in sorted(shard_dir.glob("shard-*.h5")):
        try:
            with h5py.File(path, "r") as f:
                n = int(f.attrs.get("committed", 0))
                rows = f["rows"][:n]
                dim = int(f.attrs["dim"])
                if ids is not None and n:
                    stored = f["ids"][:n].astype(str) if n else []
                    want = np.asarray([ids[r] for r in rows])
                    if (rows >= n_records).any() or not np.array_equal(stored, want):
                        raise ValueError(f"{path} holds records of another input; use a fresh output directory "
                                         f"or --overwrite")
        except (OSError, KeyError):
            corrupt.append(path)
            if quarantine:
                os.replace(path, path.with_suffix(".h5.corrupt"))
            continue
        done[rows] = True
        paths.append(path)
        committed.append(n)
    return ShardScan(paths, committed, done, corrupt, dim)


def finalize_embeddings(shard_dir: str | Path, out_path: str | Path, ids: list | np.ndarray, rows: np.ndarray,
                        attrs: dict, block: int = 65536) -> int:
    """Merge shards into ``out_path`` with datasets ``ids`` and ``embeddings`` in index order.

    ``rows``: the index positions that belong in the output (ascending). Written
    to a temporary name and renamed, so a reader never sees a half-written file.
    Each vector is copied once: shard block -> its final position.
    """
    rows = np.asarray(rows, dtype=np.int64)
    where = np.full(len(ids), -1, dtype=np.int64)
    where[rows] = np.arange(len(rows))
    out_path = Path(out_path)
    tmp = out_path.with_name(out_path.name + ".tmp")
    scan = scan_shards(shard_dir, len(ids), quarantine=False)
    dim = scan.dim or 0
    filled = np.zeros(len(rows), dtype=bool)
    with h5py.File(tmp, "w") as out:
        out.create_dataset("ids", data=np.asarray([ids[r] for r in rows], dtype=object), dtype=STR)
        emb = out.create_dataset("embeddings", (len(rows), dim), dtype="f4",
                                 chunks=(max(1, min(len(rows), 4096)), dim) if len(rows) and dim else None)
        for path, n in zip(scan.paths, scan.committed):
            with h5py.File(path, "r") as f:
                for s in range(0, n, block):
                    r = f["rows"][s:min(n, s + block)]
                    pos = where[r]
                    keep = (pos >= 0) & ~filled[np.maximum(pos, 0)]
                    if not keep.any():
                        continue
                    vec = f["embeddings"][s:min(n, s + block)][keep]
                    pos = pos[keep]
                    order = np.argsort(pos)
                    emb[pos[order]] = vec[order]  # h5py wants increasing indices
                    filled[pos] = True
        if not filled.all():
            missing = [ids[r] for r in rows[~filled][:5]]
            raise RuntimeError(f"finalize: {int((~filled).sum())} records have no embedding (e.g. {missing}); "
                               f"rerun the same command to compute them")
        for k, v in attrs.items():
            out.attrs[k] = v
    os.replace(tmp, out_path)
    return len(rows)


def read_embeddings(path: str | Path) -> tuple[list[str], np.ndarray]:
    """``(ids, embeddings)`` of a finalized ``embeddings.h5`` (whole file in memory)."""
    with h5py.File(path, "r") as f:
        return f["ids"][:].astype(str).tolist(), f["embeddings"][:]


def iter_embeddings(path: str | Path, block: int = 65536) -> Iterable[tuple[list[str], np.ndarray]]:
    """Stream ``(ids, embeddings)`` blocks of a file larger than memory."""
    with h5py.File(path, "r") as f:
        n = f["ids"].shape[0]
        for s in range(0, n, block):
            yield f["ids"][s:s + block].astype(str).tolist(), f["embeddings"][s:s + block]
