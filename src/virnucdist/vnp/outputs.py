"""VirNucPro's result files from scored reads in input order (what predict's finalize writes).

``blocks()`` is a callable that yields :class:`ReadBlock` s, consecutive reads in input order as
columns, every time it is called (the files are written one after the other, each from a fresh
pass). A block's lines are made with array operations and written at once. Every file is written
to a temporary name, fsync'd and renamed: a reader never sees a half-written file.
"""

from __future__ import annotations

import itertools
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import h5py
import numpy as np

from ..writers import STR, replace_durably
from .chunk import chunk_records
from .consensus import PREDICTION_HEADER, SUMMARY_HEADER, ChunkConsensus, format_scores, write_consensus
from .pairs import PairWriter
from .translate import FRAME_NAMES, translate_chunks

__all__ = ["ReadBlock", "atomic", "write_result_files", "write_stage_files", "write_frame_embeddings"]

_CALLS = ("empty", "no_frame", "others", "virus")
_MID = np.asarray([f"{name}\t{label}\t" for name in FRAME_NAMES for label in ("others", "virus")], dtype=object)


@dataclass
class ReadBlock:
    """Consecutive reads of the output as columns.

    Per read: ``ids``, ``n_chunks`` (0: an empty or skipped read), ``n_frames`` (kept frames),
    ``mate`` (0 single-end, 1 or 2 a mate of a pair). Per kept frame, read after read: ``chunk``
    (0-based), ``frame`` (index into ``FRAME_NAMES``), ``score1``, ``score2`` (float32).
    ``extra``: what a caller needs to reach the frames' other values (e.g. their embeddings)."""

    ids: list
    n_chunks: np.ndarray
    n_frames: np.ndarray
    chunk: np.ndarray
    frame: np.ndarray
    score1: np.ndarray
    score2: np.ndarray
    mate: np.ndarray
    extra: object = None

    def chunk_ids(self) -> list[str]:
        """Each frame's chunk id (``{read_id}_chunk_{k+1}``)."""
        rid = np.repeat(np.asarray(self.ids, dtype=object), np.asarray(self.n_frames, dtype=np.int64)).tolist()
        return [f"{r}_chunk_{k}" for r, k in zip(rid, (np.asarray(self.chunk, dtype=np.int64) + 1).tolist())]

    def frame_ids(self, chunk_ids: list[str] | None = None) -> list[str]:
        """Each frame's record id (chunk id and frame name, e.g. ``r1_chunk_1F2``)."""
        names = np.asarray(FRAME_NAMES, dtype=object)[np.asarray(self.frame, dtype=np.intp)].tolist()
        return [c + f for c, f in zip(self.chunk_ids() if chunk_ids is None else chunk_ids, names)]


@contextmanager
def atomic_files(out: Path, names: Sequence[str]) -> Iterator[dict[str, Path]]:
    """Temporary paths (``NAME.tmp``) for the files ``names`` of ``out``: each renamed durably onto its
    name when the block ends, all removed if it raises."""
    tmp = {n: out / (n + ".tmp") for n in names}
    try:
        yield tmp
    except BaseException:
        for t in tmp.values():
            t.unlink(missing_ok=True)
        raise
    for n in names:
        replace_durably(tmp[n], out / n)


def atomic(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` then a durable rename onto ``path``."""
    with atomic_files(path.parent, (path.name,)) as tmp:
        write(tmp[path.name])


def _lines(b: ReadBlock, acc: ChunkConsensus, pairs: PairWriter | None, counts: dict) -> tuple[str, str]:
    """The block's lines of ``prediction_results.txt`` and ``read_summary.tsv``; its chunks into ``acc``,
    its mates into ``pairs``; ``counts`` updated."""
    r = len(b.ids)
    nc = np.asarray(b.n_chunks, dtype=np.int64)
    nf = np.where(nc > 0, np.asarray(b.n_frames, dtype=np.int64), 0)  # an empty read has no frame
    s1, s2 = np.asarray(b.score1, dtype=np.float32), np.asarray(b.score2, dtype=np.float32)
    chunk = np.asarray(b.chunk, dtype=np.int64)
    f = len(s1)
    read_of = np.repeat(np.arange(r), nf)
    cids = b.chunk_ids()
    # frame name and prediction_label (virus when score2 > score1; a tie is others) in one lookup
    mid = _MID[np.asarray(b.frame, dtype=np.intp) * 2 + (s2 > s1)].tolist()
    text2 = format_scores(s2)
    pred = "".join([f"{c}{m}{a}\t{z}\n" for c, m, a, z in zip(cids, mid, format_scores(s1), text2)])
    # chunks: the frames of one (read, chunk), grouped (stable: in frame order within a chunk)
    key = read_of * (int(chunk.max()) + 1 if f else 1) + chunk
    o = np.arange(f) if f < 2 or (np.diff(key) >= 0).all() else np.argsort(key, kind="stable")
    ko = key[o]
    starts = np.flatnonzero(np.concatenate([[True], ko[1:] != ko[:-1]])) if f else np.zeros(0, np.int64)
    m1 = np.maximum.reduceat(s1[o], starts) if f else s1[:0]
    m2 = np.maximum.reduceat(s2[o], starts) if f else s2[:0]
    acc.add([cids[i] for i in o[starts].tolist()], m1, m2)
    virus = np.bincount(read_of[o[starts]], weights=m2 >= m1, minlength=r) > 0
    # reads: the best virus score over each read's frames
    has = nf > 0
    first = np.concatenate([[0], np.cumsum(nf)[:-1]])[has]
    best_v, max1 = (np.maximum.reduceat(s2, first), np.maximum.reduceat(s1, first)) if f else (s2[:0], s1[:0])
    best = np.full(r, "NA", dtype=object)
    if f:  # each read's best as written for its first frame holding it (max() keeps the first too)
        hit = np.flatnonzero(s2 == np.repeat(best_v, nf[has]))
        hit = hit[np.concatenate([[True], read_of[hit][1:] != read_of[hit][:-1]])]
        best[has] = [text2[i] for i in hit.tolist()] if len(hit) == len(best_v) else format_scores(best_v)
    call = np.where(nc == 0, 0, np.where(~has, 1, np.where(virus, 3, 2)))
    counts["frames"] += f
    counts["chunks"] += int(nc.sum())
    for k, n in enumerate(np.bincount(call, minlength=4).tolist()):
        counts[_CALLS[k]] += n
    calls = np.asarray(_CALLS, dtype=object)[call].tolist()
    best = best.tolist()
    summ = "".join([f"{i}\t{c}\t{n}\t{v}\t{k}\n"
                    for i, c, n, v, k in zip(b.ids, nc.tolist(), nf.tolist(), best, calls)])
    if pairs is not None:
        m1r, m2r = np.full(r, -np.inf, dtype=np.float32), np.full(r, -np.inf, dtype=np.float32)
        m1r[has], m2r[has] = max1, best_v
        pairs.add_reads(b.ids, b.mate, nc, nf, m1r, m2r, best, calls)
    return pred, summ


def write_result_files(out: Path, blocks: Callable[[], Iterable[ReadBlock]], paired: bool = False) -> dict:
    """``prediction_results.txt``, ``prediction_results_highestscore.csv`` and ``read_summary.tsv`` in ONE
    pass over the reads (the consensus keeps one pair of maxima per chunk); with ``paired`` also
    ``pair_summary.tsv`` (:mod:`virnucdist.vnp.pairs`, from the reads' mate numbers); returns counts."""
    names = ("prediction_results.txt", "read_summary.tsv", "prediction_results_highestscore.csv") + \
        (("pair_summary.tsv",) if paired else ())
    counts = {"frames": 0, "chunks": 0, "virus": 0, "others": 0, "no_frame": 0, "empty": 0}
    acc = ChunkConsensus()
    with atomic_files(out, names) as tmp:
        with ExitStack() as stack:
            pred = stack.enter_context(open(tmp[names[0]], "w", newline="\n"))
            summ = stack.enter_context(open(tmp[names[1]], "w", newline="\n"))
            pred.write("\t".join(PREDICTION_HEADER) + "\n")
            summ.write("\t".join(SUMMARY_HEADER) + "\n")
            pairs = PairWriter(stack.enter_context(open(tmp[names[3]], "w", newline="\n"))) if paired else None
            for b in blocks():
                p, s = _lines(b, acc, pairs, counts)
                pred.write(p)
                summ.write(s)
        if pairs is not None:
            counts["pairs"] = pairs.close()
        counts["chunks_scored"] = write_consensus(tmp[names[2]], acc.decisions())
    return counts


def write_stage_files(out: Path, records: Callable[[], Iterable[tuple[str, str]]], chunk_size: int,
                      batch: int = 4096) -> None:
    """``chunked.fa``, ``identified_nucleotide.fa`` and ``identified_protein.faa``: the stage CLI's files,
    in one pass over the reads, ``batch`` chunks at a time."""
    names = ("chunked.fa", "identified_nucleotide.fa", "identified_protein.faa")
    with atomic_files(out, names) as tmp, ExitStack() as stack:
        chunked, nuc, prot = (stack.enter_context(open(tmp[n], "w", encoding="utf-8", newline="\n"))
                              for n in names)
        it = chunk_records(records(), chunk_size)
        while chunks := list(itertools.islice(it, batch)):
            chunked.write("".join([f">{c}\n{seq}\n" for c, seq in chunks]))
            frames = translate_chunks(chunks)
            nuc.write("".join([f">{f.id}\n{f.nucleotide}\n" for f in frames]))
            prot.write("".join([f">{f.id}\n{f.protein}\n" for f in frames]))


def write_frame_embeddings(path: Path, blocks: Callable[[], Iterator[ReadBlock]], n_frames: int, dim: int,
                           vectors: Callable[[ReadBlock], object], attrs: dict) -> None:
    """One model's frame embeddings in embed's layout (``ids``, ``embeddings`` [frames, dim]);
    ``vectors(block)``: the block's frames' vectors [frames of the block, dim]."""
    def write(tmp):
        with h5py.File(tmp, "w", locking=False) as f:
            ids = f.create_dataset("ids", (n_frames,), dtype=STR)
            emb = f.create_dataset("embeddings", (n_frames, dim), dtype="f4")
            at = 0
            for b in blocks():
                k = len(b.score1)
                if k:
                    ids[at:at + k] = b.frame_ids()
                    emb[at:at + k] = vectors(b)
                    at += k
            f.attrs.update(attrs)

    atomic(path, write)
