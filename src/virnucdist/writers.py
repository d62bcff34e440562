"""Per-rank HDF5 shards (appended from a background thread) and the final merge.

A shard holds ``rows`` (index positions), ``ids`` and ``embeddings`` side by side,
so an id can never drift from its vector. After every flush the shard's
``committed`` attribute is raised to the number of complete records; readers
trust nothing past it. Each process attempt writes a shard of its own
(``shard-r{rank}-{attempt}.h5``), so restarts and world-size changes never
write into a file another process left behind. A shard that cannot be opened
(killed mid-flush) is set aside as ``*.corrupt`` and its records are redone.

``predict`` shards (:class:`PredictionShardWriter`) use the same naming, thread
and ``rows``/``ids``/``committed`` resume contract, plus per-read counts and
per-frame scores committed a whole block of reads at a time.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import h5py
import numpy as np
import torch

from ._testhooks import test_hook

__all__ = ["ShardWriter", "scan_shards", "finalize_embeddings", "ShardScan", "read_embeddings", "iter_embeddings",
           "read_token_embeddings",
           "PredictionShardWriter", "PredictionShard", "open_prediction_shards", "shard_path"]

STR = h5py.string_dtype("utf-8")


def shard_path(shard_dir: Path, rank: int) -> Path:
    """A fresh shard name for this rank and process attempt (never one another process wrote)."""
    return shard_dir / f"shard-r{rank:05d}-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}.h5"


class _BackgroundAppender:
    """The writer thread shared by the shard writers.

    Producers :meth:`_put` items on a bounded queue; the thread hands each to
    :meth:`_take` (which waits on CUDA events and stages the data, returning how
    many records it added), and calls :meth:`_flush` every ``flush_every``
    records or ``flush_seconds``. An error in the thread is raised to the
    producer on its next call. Subclasses open ``self._f`` and then call :meth:`_start`.
    """

    _f: h5py.File
    committed: int

    def _start(self, name: str, flush_every: int, flush_seconds: float) -> None:
        self.flush_every, self.flush_seconds = flush_every, flush_seconds
        self._pending_n = 0
        self._last_flush = time.monotonic()
        self._q: queue.Queue = queue.Queue(maxsize=64)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _take(self, item) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _flush(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _put(self, item) -> None:
        if self._error is not None:
            raise RuntimeError(f"shard writer failed: {self._error}") from self._error
        self._q.put(item)

    def close(self) -> int:
        """Flush everything, close the file; returns records committed."""
        self._q.put(None)
        self._thread.join()
        if self._error is not None:
            raise RuntimeError(f"shard writer failed: {self._error}") from self._error
        return self.committed

    def _run(self) -> None:
        try:
            while True:
                try:
                    item = self._q.get(timeout=1.0)
                except queue.Empty:
                    if self._pending_n and time.monotonic() - self._last_flush > self.flush_seconds:
                        self._flush_now()
                    continue
                if item is None:
                    break
                self._pending_n += self._take(item)
                if self._pending_n >= self.flush_every or time.monotonic() - self._last_flush > self.flush_seconds:
                    self._flush_now()
            self._flush_now()
            self._f.close()
        except BaseException as e:  # surfaced to the producer on its next call
            self._error = e
            try:  # what was committed stays readable; release the file
                self._f.close()
            except Exception:
                pass
            while True:  # drain so the producer never blocks on a full queue
                if self._q.get() is None:
                    break

    def _flush_now(self) -> None:
        if self._pending_n:
            self._flush()
        self._pending_n = 0
        self._last_flush = time.monotonic()


class ShardWriter(_BackgroundAppender):
    """Appends ``(rows, ids, embeddings)`` to this rank's shard from a background thread.

    :meth:`write` takes device tensors too: pass a CUDA event recorded after a
    non-blocking copy and the thread waits on it, so the compute loop never syncs.
    With ``per_token``, each record also carries its per-token states: ragged, as
    ``tok_lengths`` [n] and ``tok_embeddings`` [sum of lengths, D] (``committed_tokens`` valid).
    """

    def __init__(self, shard_dir: str | Path, rank: int, dim: int, ids: np.ndarray | list, *,
                 flush_every: int = 4096, flush_seconds: float = 10.0, attrs: dict | None = None,
                 per_token: bool = False):
        self.dir = Path(shard_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = shard_path(self.dir, rank)
        self.dim, self.ids = dim, ids
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
        self.per_token = per_token
        if per_token:
            self._f.attrs["committed_tokens"] = 0
            self._tok_len = self._f.create_dataset("tok_lengths", (0,), maxshape=(None,), dtype="i8",
                                                   chunks=(chunk * 4,))
            self._tok = self._f.create_dataset("tok_embeddings", (0, dim), maxshape=(None, dim), dtype="f4",
                                               chunks=(chunk, dim))
        self._f.flush()
        self.committed = self.committed_tokens = 0
        self._pending: list[tuple] = []
        self._start(f"shard-writer-{rank}", flush_every, flush_seconds)

    def write(self, rows: np.ndarray | torch.Tensor, embeddings: np.ndarray | torch.Tensor, event=None,
              tokens: np.ndarray | torch.Tensor | None = None,
              token_lengths: np.ndarray | torch.Tensor | None = None) -> None:
        if self.per_token and (tokens is None or token_lengths is None):
            raise ValueError("this shard stores per-token states: pass tokens and token_lengths")
        self._put((rows, embeddings, event, tokens, token_lengths))

    def _take(self, item) -> int:
        rows, emb, event, tok, tok_len = item
        if event is not None:
            event.synchronize()
        rows, emb = _np(rows, np.int64), _np(emb, np.float32)
        if self.per_token:
            tok, tok_len = _np(tok, np.float32), _np(tok_len, np.int64)
            if len(tok_len) != len(rows) or int(tok_len.sum()) != len(tok):
                raise ValueError(f"per-token states do not match their records ({len(tok)} rows for "
                                 f"{int(tok_len.sum())} tokens of {len(rows)} records)")
        self._pending.append((rows, emb, tok, tok_len))
        return len(rows)

    def _flush(self) -> None:
        rows = np.concatenate([p[0] for p in self._pending])
        emb = np.concatenate([p[1] for p in self._pending])
        if not np.isfinite(emb).all():
            bad = rows[~np.isfinite(emb).all(axis=1)]
            raise FloatingPointError(f"non-finite embeddings for rows {bad[:5].tolist()}")
        n0, n1 = self.committed, self.committed + len(rows)
        for ds in (self._rows, self._ids, self._emb):
            ds.resize(n1, axis=0)
        self._rows[n0:n1] = rows
        self._ids[n0:n1] = [self.ids[r] for r in rows]
        self._emb[n0:n1] = emb
        if self.per_token:
            tok = np.concatenate([p[2] for p in self._pending])
            t0, t1 = self.committed_tokens, self.committed_tokens + len(tok)
            self._tok_len.resize(n1, axis=0)
            self._tok.resize(t1, axis=0)
            self._tok_len[n0:n1] = np.concatenate([p[3] for p in self._pending])
            self._tok[t0:t1] = tok
        self._f.flush()  # data first, then the markers that make it visible
        test_hook("flush")
        if self.per_token:
            self._f.attrs["committed_tokens"] = t1
            self.committed_tokens = t1
        self._f.attrs["committed"] = n1
        self._f.flush()
        self.committed = n1
        self._pending = []


def _np(x, dtype) -> np.ndarray:
    x = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return x.astype(dtype, copy=False)


class PredictionShardWriter(_BackgroundAppender):
    """This rank's ``predict`` shard: whole blocks of reads with their scored frames.

    Read datasets (``committed`` rows valid): ``rows`` (index positions, ascending),
    ``ids``, ``n_chunks``, ``n_frames``, ``empty``. Frame datasets
    (``committed_frames`` rows valid, the frames of the committed reads in read
    order): ``frame_rows`` (the frame's read), ``frame_ids``, ``score1``,
    ``score2`` and, with ``embedding_dims=(nucleotide, protein)``,
    ``nucleotide_embeddings`` and ``protein_embeddings``. A block is committed
    only when all its frames are written, so a read is either done or absent;
    :func:`scan_shards` reads the ``rows``/``ids``/``committed`` part for resume.
    """

    def __init__(self, shard_dir: str | Path, rank: int, ids: np.ndarray | list, *,
                 embedding_dims: tuple[int, int] | None = None, flush_every: int = 8192,
                 flush_seconds: float = 10.0, attrs: dict | None = None):
        self.dir = Path(shard_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = shard_path(self.dir, rank)
        self.ids = ids
        self.emb_dims = embedding_dims
        self.width = 2 + (sum(embedding_dims) if embedding_dims else 0)
        f = self._f = h5py.File(self.path, "w")
        f.attrs.update({"committed": 0, "committed_frames": 0, "dim": 0, "kind": "predict", **(attrs or {})})
        ch = 4096

        def ds(name, dtype, dim=None):
            shape, maxshape = ((0,), (None,)) if dim is None else ((0, dim), (None, dim))
            return f.create_dataset(name, shape, maxshape=maxshape, dtype=dtype,
                                    chunks=(ch,) if dim is None else (max(1, min(256, ch)), dim))

        self._reads = {k: ds(k, t) for k, t in (("rows", "i8"), ("ids", STR), ("n_chunks", "i4"),
                                                 ("n_frames", "i4"), ("empty", "u1"))}
        self._frames = {k: ds(k, t) for k, t in (("frame_rows", "i8"), ("frame_ids", STR),
                                                  ("score1", "f4"), ("score2", "f4"))}
        if embedding_dims:
            self._frames["nucleotide_embeddings"] = ds("nucleotide_embeddings", "f4", embedding_dims[0])
            self._frames["protein_embeddings"] = ds("protein_embeddings", "f4", embedding_dims[1])
        f.flush()
        self.committed = self.committed_frames = 0
        self._last_row = -1
        self._pending: list[dict] = []
        self._start(f"predict-shard-writer-{rank}", flush_every, flush_seconds)

    def write_block(self, rows: np.ndarray, n_chunks: np.ndarray, n_frames: np.ndarray, frame_ids: list[str],
                    parts: list[tuple]) -> None:
        """Queue one block: its reads (ascending ``rows``) and ``parts`` of scored frames.

        ``parts``: ``(frame_index, values, event)`` with block-local frame indices
        ``[b]``, ``values [b, 2 (+ nucleotide dim + protein dim)]`` = (score1,
        score2, embeddings...) on the host (possibly still being copied: ``event``
        is waited on in the writer thread). Every frame of the block must be
        covered exactly once, or the writer fails instead of committing it.
        """
        self._put((rows, n_chunks, n_frames, frame_ids, parts))

    def _take(self, item) -> int:
        rows, n_chunks, n_frames, frame_ids, parts = item
        rows = np.asarray(rows, dtype=np.int64)
        n_frames = np.asarray(n_frames, dtype=np.int64)
        nf = len(frame_ids)
        vals = np.empty((nf, self.width), dtype=np.float32)
        seen = np.zeros(nf, dtype=np.int64)
        for idx, v, event in parts:
            if event is not None:
                event.synchronize()
            idx = idx.numpy() if isinstance(idx, torch.Tensor) else np.asarray(idx)
            v = v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
            vals[idx] = v
            seen += np.bincount(idx, minlength=nf)
        if int(n_frames.sum()) != nf or not (seen == 1).all():
            raise RuntimeError(f"block of reads {rows[:1].tolist()}..{rows[-1:].tolist()}: {nf} frames planned, "
                               f"{int(seen.sum())} scored ({int((seen == 0).sum())} missing, "
                               f"{int((seen > 1).sum())} duplicated); not committing it")
        if len(rows) and (rows[0] <= self._last_row or (np.diff(rows) <= 0).any()):
            raise RuntimeError("predict shard blocks must come in ascending read order")
        if not np.isfinite(vals).all():
            bad = np.repeat(rows, n_frames)[~np.isfinite(vals).all(axis=1)]
            raise FloatingPointError(f"non-finite scores or embeddings for reads {bad[:5].tolist()}")
        self._last_row = int(rows[-1]) if len(rows) else self._last_row
        self._pending.append({
            "rows": rows, "ids": [self.ids[r] for r in rows], "n_chunks": np.asarray(n_chunks, dtype=np.int32),
            "n_frames": n_frames.astype(np.int32), "empty": (np.asarray(n_chunks) == 0).astype(np.uint8),
            "frame_rows": np.repeat(rows, n_frames), "frame_ids": list(frame_ids),
            "values": vals,
        })
        return len(rows) + nf

    def _flush(self) -> None:
        p = self._pending

        def cat(key):
            return [x for b in p for x in b[key]] if key in ("ids", "frame_ids") else np.concatenate([b[key] for b in p])

        vals = np.concatenate([b["values"] for b in p])
        frame_cols = {"frame_rows": cat("frame_rows"), "frame_ids": cat("frame_ids"),
                      "score1": vals[:, 0], "score2": vals[:, 1]}
        if self.emb_dims:
            dn = self.emb_dims[0]
            frame_cols["nucleotide_embeddings"] = vals[:, 2:2 + dn]
            frame_cols["protein_embeddings"] = vals[:, 2 + dn:]
        f0, f1 = self.committed_frames, self.committed_frames + len(vals)
        r0 = self.committed
        read_cols = {k: cat(k) for k in self._reads}
        r1 = r0 + len(read_cols["rows"])
        for k, v in frame_cols.items():  # data first, then the markers that make it visible
            self._frames[k].resize(f1, axis=0)
            if f1 > f0:
                self._frames[k][f0:f1] = v
        for k, v in read_cols.items():
            self._reads[k].resize(r1, axis=0)
            self._reads[k][r0:r1] = v
        self._f.flush()
        test_hook("flush")
        self._f.attrs["committed_frames"] = f1
        self._f.attrs["committed"] = r1
        self._f.flush()
        self.committed, self.committed_frames = r1, f1
        self._pending = []


@dataclass
class PredictionShard:
    """The committed part of one ``predict`` shard: read arrays in memory, frames read on demand."""

    path: Path
    rows: np.ndarray
    n_chunks: np.ndarray
    n_frames: np.ndarray
    frame_start: np.ndarray  # [R + 1] offsets of each read's frames
    has_embeddings: bool

    def frames(self, start: int, stop: int, embeddings: bool = False) -> dict[str, np.ndarray]:
        """Frame columns ``[start, stop)``: frame_rows, frame_ids (str), score1, score2 (+ embeddings)."""
        with h5py.File(self.path, "r") as f:
            out = {"frame_rows": f["frame_rows"][start:stop], "frame_ids": f["frame_ids"].asstr()[start:stop],
                   "score1": f["score1"][start:stop], "score2": f["score2"][start:stop]}
            if embeddings:
                for k in ("nucleotide_embeddings", "protein_embeddings"):
                    out[k] = f[k][start:stop]
        return out


def open_prediction_shards(shard_dir: str | Path, n_records: int, ids: np.ndarray | list) -> list[PredictionShard]:
    """The readable ``predict`` shards of a run, in :func:`scan_shards` order (corrupt ones set aside)."""
    scan = scan_shards(shard_dir, n_records, ids)
    shards = []
    for path, n in zip(scan.paths, scan.committed):
        with h5py.File(path, "r") as f:
            if f.attrs.get("kind") != "predict":
                raise ValueError(f"{path} is not a predict shard; use a fresh output directory or --overwrite")
            nfr = int(f.attrs["committed_frames"])
            rows, n_chunks = f["rows"][:n], f["n_chunks"][:n].astype(np.int64)
            n_frames = f["n_frames"][:n].astype(np.int64)
            has_emb = "nucleotide_embeddings" in f
        start = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(n_frames, out=start[1:])
        if start[-1] != nfr or (np.diff(rows) <= 0).any():
            raise RuntimeError(f"{path}: inconsistent predict shard ({nfr} frames committed, reads list "
                               f"{int(start[-1])}); delete it and rerun the same command")
        shards.append(PredictionShard(path, rows, n_chunks, n_frames, start, has_emb))
    return shards


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
                other = ValueError(f"{path} holds records of another input; use a fresh output directory "
                                   f"or --overwrite")
                if n and ((rows < 0) | (rows >= n_records)).any():
                    raise other
                if ids is not None and n:
                    stored = f["ids"].asstr()[:n]  # UTF-8 ids (astype(str) would decode ASCII only)
                    if not np.array_equal(stored, np.asarray([ids[r] for r in rows])):
                        raise other
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
                        attrs: dict, block: int = 65536, progress: Callable[[int], None] | None = None,
                        per_token: bool = False) -> int:
    """Merge shards into ``out_path`` with datasets ``ids`` and ``embeddings`` in index order.

    ``rows``: the index positions that belong in the output (ascending). Written
    to a temporary name and renamed, so a reader never sees a half-written file.
    Each vector is copied once: shard block -> its final position. With ``per_token``,
    the group ``per_token`` holds ``offsets`` [N+1] and ``embeddings`` [offsets[-1], D]:
    record i's token states are ``embeddings[offsets[i]:offsets[i+1]]``.
    """
    rows = np.asarray(rows, dtype=np.int64)
    where = np.full(len(ids), -1, dtype=np.int64)
    where[rows] = np.arange(len(rows))
    out_path = Path(out_path)
    tmp = out_path.with_name(out_path.name + ".tmp")
    scan = scan_shards(shard_dir, len(ids), quarantine=False)
    dim = scan.dim or 0
    filled = np.zeros(len(rows), dtype=bool)
    src_shard = np.full(len(rows), -1, dtype=np.int64)  # which shard, and which record of it, fills each position
    src_rec = np.zeros(len(rows), dtype=np.int64)
    try:
        with h5py.File(tmp, "w") as out:
            out.create_dataset("ids", data=np.asarray([ids[r] for r in rows], dtype=object), dtype=STR)
            emb = out.create_dataset("embeddings", (len(rows), dim), dtype="f4",
                                     chunks=(max(1, min(len(rows), 4096)), dim) if len(rows) and dim else None)
            for i, (path, n) in enumerate(zip(scan.paths, scan.committed)):
                with h5py.File(path, "r") as f:
                    for s in range(0, n, block):
                        r = f["rows"][s:min(n, s + block)]
                        pos = where[r]
                        keep = (pos >= 0) & ~filled[np.maximum(pos, 0)]
                        if not keep.any():
                            continue
                        vec = f["embeddings"][s:min(n, s + block)][keep]
                        src_rec[pos[keep]] = s + np.flatnonzero(keep)
                        pos = pos[keep]
                        order = np.argsort(pos)
                        emb[pos[order]] = vec[order]  # h5py wants increasing indices
                        filled[pos] = True
                        src_shard[pos] = i
                        if progress is not None:
                            progress(len(pos))
            if not filled.all():
                missing = [ids[r] for r in rows[~filled][:5]]
                raise RuntimeError(f"finalize: {int((~filled).sum())} records have no embedding (e.g. {missing}); "
                                   f"rerun the same command to compute them")
            if per_token:
                _merge_per_token(out, scan, src_shard, src_rec, dim)
            for k, v in attrs.items():
                out.attrs[k] = v
    except BaseException:  # no half-written .tmp left behind
        tmp.unlink(missing_ok=True)
        raise
    test_hook("finalize")
    os.replace(tmp, out_path)
    return len(rows)


def _merge_per_token(out: h5py.File, scan: ShardScan, src_shard: np.ndarray, src_rec: np.ndarray, dim: int,
                     records_per_read: int = 4096) -> None:
    """Ragged per-token states into ``out['per_token']`` in output order (each state copied once)."""
    lengths = np.zeros(len(src_shard), dtype=np.int64)
    shard_offsets = []
    for i, (path, n) in enumerate(zip(scan.paths, scan.committed)):
        with h5py.File(path, "r") as f:
            if "tok_lengths" not in f:
                raise RuntimeError(f"{path} has no per-token states (written without --include per_tok); "
                                   f"rerun with --overwrite")
            tl = f["tok_lengths"][:n]
        shard_offsets.append(np.concatenate([[0], np.cumsum(tl)]))
        sel = src_shard == i
        lengths[sel] = tl[src_rec[sel]]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    g = out.create_group("per_token")
    g.create_dataset("offsets", data=offsets)
    te = g.create_dataset("embeddings", (int(offsets[-1]), dim), dtype="f4",
                          chunks=(max(1, min(int(offsets[-1]), 4096)), dim) if offsets[-1] and dim else None)
    for i, path in enumerate(scan.paths):
        mine = np.flatnonzero(src_shard == i)
        mine = mine[np.argsort(src_rec[mine])]  # read the shard sequentially
        so = shard_offsets[i]
        with h5py.File(path, "r") as f:
            ds = f["tok_embeddings"]
            for c in range(0, len(mine), records_per_read):
                part = mine[c:c + records_per_read]
                a, b = so[src_rec[part[0]]], so[src_rec[part[-1]] + 1]
                data = ds[a:b]
                for p in part:
                    r = src_rec[p]
                    te[offsets[p]:offsets[p + 1]] = data[so[r] - a:so[r + 1] - a]


def read_embeddings(path: str | Path) -> tuple[list[str], np.ndarray]:
    """``(ids, embeddings)`` of a finalized ``embeddings.h5`` (whole file in memory)."""
    with h5py.File(path, "r") as f:
        return f["ids"].asstr()[:].tolist(), f["embeddings"][:]


def read_token_embeddings(path: str | Path, i: int) -> np.ndarray:
    """Per-token states ``[L, D]`` of record ``i`` of an ``embeddings.h5`` written with ``--include per_tok``."""
    with h5py.File(path, "r") as f:
        if "per_token" not in f:
            raise KeyError(f"{path} has no per-token states (embed with --include mean per_tok)")
        a, b = f["per_token/offsets"][i:i + 2]
        return f["per_token/embeddings"][a:b]


def iter_embeddings(path: str | Path, block: int = 65536) -> Iterable[tuple[list[str], np.ndarray]]:
    """Stream ``(ids, embeddings)`` blocks of a file larger than memory."""
    with h5py.File(path, "r") as f:
        n = f["ids"].shape[0]
        for s in range(0, n, block):
            yield f["ids"].asstr()[s:s + block].tolist(), f["embeddings"][s:s + block]
